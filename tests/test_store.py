"""The store contract, on both implementations: embedded Oxigraph and a real Virtuoso (``store_settings``).

The service reaches a site's dataset only through the ``SiteStore`` protocol. Tests that store
cases use sites of their own (``site``), so that on the shared Virtuoso they never see each
other's cases.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyoxigraph as ox
import pytest

from kgservice.api import create_app
from kgservice.config import Settings
from kgservice.core.kb import KnowledgeBase
from kgservice.errors import Conflict, ESIError, NotFound, QueryError
from kgservice.isolation import TimeLimit
from kgservice.queryrun import RESULTS_JSON, Dataset, QueryLimits, QueryRun
from kgservice.querytext import read
from kgservice.service import Service
from kgservice.stores.base import QueryScope, SiteStore, SiteStores, open_stores

CASE_BASE = "https://w3id.org/esi-kg/case/"
ESI = "https://w3id.org/esi-kg/ontology#"
PROTOCOL = {name for name in dir(SiteStore) if not name.startswith("_")} | {"site"}
CASE = json.loads((Path(__file__).parent / "data" / "vignettes" / "p01-primary-non-responder.json").read_text(
    encoding="utf-8"))["case"]


class OnlyTheProtocol:
    """A site store that offers nothing but the protocol's operations, and counts their calls."""

    def __init__(self, inner: SiteStore, calls: Counter[str]) -> None:
        self._inner = inner
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        if name not in PROTOCOL:
            raise AttributeError(f"{name} is not an operation of SiteStore")
        self._calls[name] += 1
        return getattr(self._inner, name)


class SpyStores:
    def __init__(self, inner: SiteStores) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def site(self, site: str) -> OnlyTheProtocol:
        return OnlyTheProtocol(self.inner.site(site), self.calls)

    def close(self) -> None:
        self.inner.close()


def test_every_endpoint_reaches_the_store_through_the_protocol_and_the_ontology_is_set_once(
        store_settings: Settings) -> None:
    settings = store_settings
    stores = SpyStores(open_stores(settings))
    service = Service(settings, stores=stores)
    client = create_app(settings, service).test_client()
    try:
        case_id = CASE["id"]
        client.delete(f"/cases/{case_id}")  # the shared Virtuoso may hold it from an earlier run
        stores.calls.clear()
        requests = [
            client.post("/cases", json=CASE),
            client.get(f"/cases/{case_id}"),
            client.get(f"/cases/{case_id}", headers={"Accept": "text/turtle"}, query_string={"inferred": "true"}),
            client.get(f"/cases/{case_id}/pathway"),
            client.get("/cases"),
            client.put(f"/cases/{case_id}", json=CASE),
            client.get("/sparql", query_string={"query": "ASK { ?s ?p ?o }"}),
            client.get("/queries/pathway-counts"),
            client.delete(f"/cases/{case_id}"),
        ]
        assert [r.status_code for r in requests] == [201, 200, 200, 200, 200, 200, 200, 200, 204], \
            [r.get_json() for r in requests if r.status_code >= 400]
        assert stores.calls["set_ontology"] <= 1  # once for the site, not on every request
        assert {"create", "read", "case_ids", "replace", "run_limited", "delete"} <= set(stores.calls)
    finally:
        service.close()


@pytest.fixture
def service(store_settings: Settings, kb: KnowledgeBase) -> Iterator[Service]:
    svc = Service(store_settings, kb=kb)
    yield svc
    svc.close()


@pytest.fixture
def site() -> str:
    return "s" + uuid.uuid4().hex[:12]


@pytest.fixture
def other() -> str:
    return "o" + uuid.uuid4().hex[:12]


def body(case: dict[str, Any]) -> bytes:
    return json.dumps(case).encode()


def run(service: Service, site: str, query: str, scope: QueryScope | None = None, timeout_s: float = 10) -> Any:
    """A caller's query through ``SiteStore.run_limited``, its answer as plain values (rows, a boolean or triples)."""
    scope = scope or QueryScope()
    dataset = Dataset(scope.default_graphs, scope.named_graphs) if scope.default_graphs or scope.named_graphs else None
    request = QueryRun(query, RESULTS_JSON, "application/n-triples", dataset=dataset,
                       own_dataset=read(query).has_dataset, substitutions=scope.substitutions)
    answer = service.site_store(site).run_limited(request, QueryLimits(timeout_s, 10_000, 1 << 24, 512 << 20))
    if answer.media_type == "application/n-triples":
        return [str(q.triple) for q in ox.parse(answer.body, format=ox.RdfFormat.N_TRIPLES)]
    parsed = json.loads(answer.body)
    if "boolean" in parsed:
        return parsed["boolean"]
    return [{k: v["value"] for k, v in row.items()} for row in parsed["results"]["bindings"]]


def test_a_case_is_stored_read_replaced_and_deleted(service: Service, site: str, make_case: Any) -> None:
    case = make_case(id="c1", scores=[(0, 8), (14, 8)])
    stored = service.create(body(case), "application/json", site)
    assert stored.created and stored.case_id == "c1"
    assert service.case_json("c1", site)["pain_scores"] == case["pain_scores"]
    assert service.stored_answer("c1", site)["response"] == stored.answer["response"]
    assert len(service.case_triples("c1", site, inferred=True)) > len(service.case_triples("c1", site))

    better = make_case(id="c1", scores=[(0, 8), (14, 2)])
    replaced = service.replace("c1", body(better), "application/json", site)
    assert not replaced.created
    assert service.stored_answer("c1", site)["response"]["category"] == replaced.answer["response"]["category"]
    assert replaced.answer["response"]["category"] != stored.answer["response"]["category"]
    assert service.case_json("c1", site)["pain_scores"] == better["pain_scores"]  # nothing of the old left

    service.delete("c1", site)
    with pytest.raises(NotFound):
        service.case_json("c1", site)
    with pytest.raises(NotFound):
        service.delete("c1", site)
    assert service.list_cases(site, None, None, 1, 10) == ([], 0)
    assert service.replace("c1", body(case), "application/json", site).created


def test_creating_an_existing_case_is_a_conflict_and_changes_nothing(service: Service, site: str,
                                                                     make_case: Any) -> None:
    first = make_case(id="dup", scores=[(0, 8), (14, 8)])
    service.create(body(first), "application/json", site)
    with pytest.raises(Conflict):
        service.create(body(make_case(id="dup", scores=[(0, 8), (14, 1)])), "application/json", site)
    assert service.case_json("dup", site)["pain_scores"] == first["pain_scores"]


def test_listing_pages_counts_and_filters(service: Service, site: str, make_case: Any) -> None:
    for i in range(5):
        service.create(body(make_case(id=f"n{i}", scores=[(0, 8), (14, 8 if i < 3 else 1)])), "application/json",
                       site)
    pages = [service.list_cases(site, None, None, page, 2) for page in (1, 2, 3, 4)]
    assert [len(ids) for ids, _ in pages] == [2, 2, 1, 0] and {total for _, total in pages} == {5}
    assert sorted(i for ids, _ in pages for i in ids) == [f"n{i}" for i in range(5)]
    assert service.list_cases(site, "primary-non-responder", None, 1, 10)[1] == 3


def test_concurrent_creates_of_one_id_store_exactly_one(service: Service, site: str, make_case: Any) -> None:
    outcomes: list[str] = []
    cases = [make_case(id="race", scores=[(0, 8), (14, score)]) for score in (8, 7, 6, 5, 4, 3)]

    def create(case: dict[str, Any]) -> None:
        try:
            service.create(body(case), "application/json", site)
            outcomes.append(f"won {case['pain_scores'][1]['score']}")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=create, args=(c,)) for c in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(outcomes) == len(cases) and len(winners) == 1, outcomes
    stored = service.case_json("race", site)["pain_scores"]
    assert len(stored) == 2 and f"won {stored[1]['score']}" == winners[0]  # the winner's case, whole, alone


# -- each site sees its own graphs only -------------------------------------------------------------

ATTACKS = {
    "union default graph": "SELECT ?case WHERE { ?case a <{esi}PatientCase> }",
    "GRAPH ?g": "SELECT ?case WHERE { GRAPH ?g { ?case a <{esi}PatientCase> } }",
    "GRAPH <their graph>": "SELECT ?case WHERE { GRAPH <{theirs}> { ?case ?p ?o } }",
    "FROM their graph": "SELECT ?case FROM <{theirs}> WHERE { ?case ?p ?o }",
    "FROM NAMED their graph": "SELECT ?case FROM NAMED <{theirs}> WHERE { GRAPH ?g { ?case ?p ?o } }",
    "FROM theirs and mine": "SELECT ?case FROM <{theirs}> FROM <{mine}> WHERE { ?case a <{esi}PatientCase> }",
    "FROM by a prefixed name": "PREFIX c: <{base}{other}/> SELECT ?case FROM c:x1 WHERE { ?case ?p ?o }",
    "nested GRAPH in EXISTS": "SELECT ?g WHERE { VALUES ?g { <{theirs}> } FILTER EXISTS { GRAPH ?g { ?s ?p ?o } } }",
    "GRAPH in a subquery": "SELECT ?case WHERE { { SELECT ?case WHERE { GRAPH ?g { ?case ?p ?o } } } }",
    "comment hides a brace": "SELECT ?case WHERE { GRAPH ?g { ?case ?p ?o # }\n } }",
    "string holds a brace": 'SELECT ?case WHERE { GRAPH ?g { ?case ?p ?o FILTER(?o != "}") } }',
    "DESCRIBE their case": "DESCRIBE <{theirs}>",
    "CONSTRUCT over GRAPH": "CONSTRUCT { ?s ?p ?o } WHERE { GRAPH ?g { ?s ?p ?o } }",
    "ASK about theirs": "ASK { GRAPH ?g { <{theirs}> ?p ?o } }",
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_a_query_never_reaches_another_sites_graphs(service: Service, site: str, other: str, make_case: Any,
                                                    attack: str) -> None:
    service.create(body(make_case(id="x1")), "application/json", other)
    service.create(body(make_case(id="m1")), "application/json", site)
    text = ATTACKS[attack].replace("{esi}", ESI).replace("{theirs}", f"{CASE_BASE}{other}/x1") \
        .replace("{mine}", f"{CASE_BASE}{site}/m1").replace("{base}", CASE_BASE).replace("{other}", other)
    result = run(service, site, text)
    assert result is False or other not in json.dumps(result), result


def test_the_protocol_dataset_is_cut_to_the_sites_graphs(service: Service, site: str, other: str,
                                                         make_case: Any) -> None:
    service.create(body(make_case(id="x1")), "application/json", other)
    service.create(body(make_case(id="m1")), "application/json", site)
    theirs, mine = (f"{CASE_BASE}{s}/{c}" for s, c in ((other, "x1"), (site, "m1")))
    found = run(service, site, "SELECT DISTINCT ?s WHERE { ?s ?p ?o }", QueryScope((theirs, mine)))
    assert found and all(site in r["s"] for r in found)
    named = run(service, site, "SELECT DISTINCT ?g WHERE { GRAPH ?g { ?s ?p ?o } }", QueryScope((), (theirs, mine)))
    assert named == [{"g": mine}]


# -- the remote store's own guards ----------------------------------------------------------------------


@pytest.fixture
def remote(sparql_endpoint: str, tmp_path: Path) -> Settings:
    """Settings for the remote store alone."""
    return Settings(data_dir=tmp_path, store="sparql", sparql_endpoint=sparql_endpoint, auth_required=False)


@pytest.fixture
def remote_service(remote: Settings, kb: KnowledgeBase) -> Iterator[Service]:
    svc = Service(remote, kb=kb)
    yield svc
    svc.close()


@pytest.mark.parametrize("query", [
    "define input:default-graph-uri <https://w3id.org/esi-kg/case/x/1> SELECT * WHERE { ?s ?p ?o }",
    "SELECT (<bif:sprintf>('%s', 'x') AS ?x) WHERE { }",
    "PREFIX b: <bif:> SELECT (b:sprintf('%s', 'x') AS ?x) WHERE { }",
    "SELECT (sql:whatever(1) AS ?x) WHERE { }",
    "SELECT * WHERE { SERVICE <http://127.0.0.1:9/sparql> { ?s ?p ?o } }",
])
def test_engine_extensions_are_refused(remote_service: Service, site: str, query: str) -> None:
    with pytest.raises(QueryError):
        run(remote_service, site, query)


def test_a_query_past_the_engines_time_limit_is_refused_not_cut_short(remote_service: Service, site: str,
                                                                      make_case: Any) -> None:
    """Virtuoso answers 200 with the rows found so far (X-SQL-State: S1TAT): that is a 503, not a result."""
    for i in range(3):
        remote_service.create(body(make_case(id=f"t{i}")), "application/json", site)
    heavy = ("SELECT (COUNT(*) AS ?n) WHERE { ?a ?b ?c . ?d ?e ?f . ?g ?h ?i . ?j ?k ?l . "
             "FILTER(STR(?a) != STR(?l)) }")
    with pytest.raises(TimeLimit) as raised:
        run(remote_service, site, heavy, timeout_s=0.3)
    assert isinstance(raised.value, ESIError) and raised.value.status == 503


def test_the_network_guard_lets_the_server_reach_its_store_and_nothing_else(remote: Settings) -> None:
    """In a process guarded as ``kgservice serve`` guards itself with ESI_STORE=sparql."""
    import subprocess
    import sys

    from serverutil import free_port

    script = f"""
import socket
from kgservice.config import Settings
from kgservice.security.guard import install_network_guard
from kgservice.stores.remote import SparqlStores
from kgservice.stores.sparqlclient import store_addresses
settings = Settings(store="sparql", sparql_endpoint={remote.sparql_endpoint!r})
install_network_guard(store_addresses(settings))
print(SparqlStores(settings).site("guarded").exists("nothing"))
for host, port in (("127.0.0.1", {free_port()}), ("localhost", 80)):
    try:
        socket.create_connection((host, port), timeout=2)
        print("reached", host, port)
    except PermissionError:
        print("refused")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.split() == ["False", "refused", "refused"], done.stderr[-2000:]
