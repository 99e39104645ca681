"""What keeps ``kgservice load``'s memory bounded changes nothing it stores.

The loader bounds its spool (``ingest_quads``) and flushes its site's memtables every
``BULK_FLUSH_AFTER_QUADS`` quads, and the reasoner replaces its in-memory rule store after
``RULE_STORE_RUNS`` cases. Here the spool is stored after every batch, the store flushed after
every write and the rule store renewed after every case: the store must still hold every valid
case whole (its asserted and inferred graphs), the same triples as a load in one ingestion that
does none of this, and report the invalid lines (a duplicate of a case stored by an earlier
ingestion as well as of one still in the spool).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import kgservice.bulk as bulk
import kgservice.reasoning as reasoning
import kgservice.stores.oxigraph as store
from kgservice.config import Settings
from kgservice.core.ontology import Triple
from kgservice.stores.oxigraph import OxigraphSite, Stores

VIGNETTES = sorted((Path(__file__).parent / "data" / "vignettes").glob("*.json"))
CASES = [json.loads(p.read_text())["case"] for p in VIGNETTES]

Contents = dict[str, tuple[set[str], set[str]]]


def _as_text(asserted: list[Triple], inferred: list[Triple]) -> tuple[set[str], set[str]]:
    return {" ".join(map(str, t)) for t in asserted}, {" ".join(map(str, t)) for t in inferred}


def _load(data_dir: Path, source: Path, ingest_quads: int = bulk.INGEST_QUADS) -> tuple[bulk.Summary, Contents]:
    summary = bulk.load(Settings(data_dir=data_dir, auth_required=False), source, batch_size=3, workers=0,
                        progress=None, ingest_quads=ingest_quads)
    stores = Stores(data_dir)
    try:
        site = stores.site("default")
        return summary, {case["id"]: _as_text(*site.read(case["id"])) for case in CASES}
    finally:
        stores.close()


def test_flushing_and_renewing_mid_ingest_keeps_every_case_whole(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [json.dumps(c) for c in CASES] + ['{"id": "bad one"}', json.dumps(CASES[0]), json.dumps(CASES[-1])]
    source = tmp_path / "cases.jsonl"
    source.write_text("\n".join(lines) + "\n")
    plain_summary, plain = _load(tmp_path / "plain", source)

    flushes: list[str] = []
    ingestions: list[int] = []
    real_flush, real_load = OxigraphSite.flush, OxigraphSite.load_nquads

    def counted(site: OxigraphSite) -> None:
        flushes.append(site.site)
        real_flush(site)

    def ingested(site: OxigraphSite, data: bytes | Path, cases: int) -> None:
        ingestions.append(cases)
        real_load(site, data, cases)

    monkeypatch.setattr(store, "FLUSH_AFTER_QUADS", 1)
    monkeypatch.setattr(bulk, "BULK_FLUSH_AFTER_QUADS", 1)
    monkeypatch.setattr(reasoning, "RULE_STORE_RUNS", 1)
    monkeypatch.setattr(OxigraphSite, "flush", counted)
    monkeypatch.setattr(OxigraphSite, "load_nquads", ingested)
    shutil.copytree(tmp_path / "plain" / "cache", tmp_path / "churned" / "cache")  # computed once: faster
    summary, churned = _load(tmp_path / "churned", source, ingest_quads=1)

    batches = -(-len(CASES) // 3)
    assert len(ingestions) == batches and sum(ingestions) == len(CASES)  # the spool stored after every batch
    assert len(flushes) >= 2  # after the ontology graphs, and at the end
    assert (summary.loaded, summary.rejected) == (plain_summary.loaded, plain_summary.rejected) == (len(CASES), 3)
    assert [r["problem"]["status"] for r in summary.rejections] == [422, 409, 409]
    assert [r["problem"]["status"] for r in plain_summary.rejections] == [422, 409, 409]  # both in the spool
    assert all(asserted and inferred for asserted, inferred in churned.values())
    assert churned == plain
