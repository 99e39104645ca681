"""The named queries rewritten for speed give the rows they gave before, in the same order.

``tests/data/queries-before/`` holds each rewritten query as it was; both versions run on sites
of generated cases (none, a few, more; several sites in one store), on the embedded store and
on a real Virtuoso, for every value of their parameter, and must give the same list of rows.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyoxigraph as ox
import pytest

from kgservice.bulk import load
from kgservice.config import Settings
from kgservice.http.queries import Catalog, parse_query_file
from kgservice.stores.base import open_stores

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from generator import CaseGenerator  # noqa: E402

BEFORE = Path(__file__).parent / "data" / "queries-before"
REWRITTEN = sorted(p.stem for p in BEFORE.glob("*.rq"))
ESI = "https://w3id.org/esi-kg/ontology#"
#: Sites of the store and how many generated cases each holds.
SITES = {"empty": 0, "few": 12, "more": 70}


def _values(kb: Any, name: str) -> list[dict[ox.Variable, ox.NamedNode]]:
    """Every value of the query's parameter that the vocabulary has (one empty binding when it has none)."""
    vocabulary = kb.vocabulary
    codes = {"category": vocabulary["answer"]["response.category"], "pathway": vocabulary["answer"]["pathways"],
             "cause": vocabulary["answer"]["failure_causes"]}
    flags = [ox.NamedNode(e["iri"]) for e in vocabulary["input"]["red_flags"]] + \
        [ox.NamedNode(ESI + c) for c in ("RedFlag", "MotorWeakness", "SphincterDysfunction")]
    params = parse_query_file(BEFORE / f"{name}.rq").params
    if not params:
        return [{}]
    (param,) = params
    if param.name == "flag":
        return [{ox.Variable("flag"): flag} for flag in flags]
    return [{ox.Variable(param.name): ox.NamedNode(ESI + e["code"])} for e in codes[param.name]]


@pytest.fixture(scope="module", params=["oxigraph", "sparql"])
def sites(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          kb: Any) -> Iterator[tuple[str, Any, dict[str, str]]]:
    """A store (embedded, or a real Virtuoso) with the sites of SITES, loaded by ``kgservice load``."""
    data_dir = tmp_path_factory.mktemp("rewrites")
    settings = Settings(data_dir=data_dir, auth_required=False)
    if request.param == "sparql":
        settings = settings.with_(store="sparql", sparql_endpoint=request.getfixturevalue("sparql_endpoint"))
    names = {site: f"rw-{site}-{uuid.uuid4().hex[:8]}" for site in SITES}
    for seed, (site, n) in enumerate(SITES.items()):
        source = data_dir / f"{site}.jsonl"
        cases = CaseGenerator(kb.vocabulary["input"], seed=20 + seed).cases(n, prefix=f"c{seed}")
        source.write_text("".join(json.dumps(case) + "\n" for case in cases))
        assert load(settings, source, site=names[site], workers=0, progress=None).loaded == n
    stores = open_stores(settings)
    yield request.param, stores, names
    stores.close()


def _rows(store: Any, text: str, binding: dict[ox.Variable, ox.NamedNode]) -> list[dict[str, str | None]]:
    solutions = store.select(text, binding)
    variables = [v.value for v in solutions.variables]
    return [{v: (row[v].value if row[v] is not None else None) for v in variables} for row in solutions]


@pytest.mark.parametrize("name", REWRITTEN)
def test_a_rewritten_query_gives_the_rows_it_gave_before(sites: tuple[str, Any, dict[str, str]], name: str,
                                                         kb: Any) -> None:
    kind, stores, names = sites
    before = (BEFORE / f"{name}.rq").read_text()
    now = Catalog.load(Settings().queries_dir).queries[name].text
    assert now != before, "not rewritten: remove it from tests/data/queries-before"
    found = 0
    for site in names.values():
        store = stores.site(site)
        for binding in _values(kb, name):
            expected = _rows(store, before, binding)
            assert _rows(store, now, binding) == expected, (site, binding)
            found += len(expected)
    # The generated cases exercise the query (on Virtuoso, case-versions's GRAPH ?case finds nothing
    # through the store's select, before as after the rewrite).
    assert found > 0 or (kind, name) == ("sparql", "case-versions")
