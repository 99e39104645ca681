"""Query limits: a query that never ends is stopped at its time limit, its process is gone
afterwards, and a result larger than the row cap is refused.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from kgservice.config import Settings

from .conftest import Apps, Site, assert_problem, children_of, issue, settings_of, vignette

LIMIT_S = 1.0
CROSS_PRODUCT = "SELECT (COUNT(*) AS ?n) WHERE { ?a ?b ?c . ?d ?e ?f . ?g ?h ?i }"
SLOW_QUERY_FILE = f"""#+ summary: A three-way cross product of every triple (never ends)
#+ description: For the time limit test only.
{CROSS_PRODUCT}
"""


def app_with_cases(make_app: Apps, **settings: Any) -> tuple[Flask, FlaskClient, Site]:
    app = make_app(**settings)
    who = issue(settings_of(app), "north", "cases:read", "cases:write")
    client = app.test_client()
    for key in ("p01", "p02", "p03", "p08"):
        assert client.post("/cases", json=vignette(key), headers=who.headers).status_code == 201
    return app, client, who


def assert_stopped_in_time(call: Any) -> None:
    """The request ends with 503 within the limit (plus slack), and leaves no child process."""
    before = children_of()
    start = time.monotonic()
    response = call()
    elapsed = time.monotonic() - start
    body = assert_problem(response, 503)
    assert body["type"].endswith("/time-limit"), body
    assert LIMIT_S <= elapsed < LIMIT_S + 1.5, elapsed
    left = {pid: state for pid, state in children_of(warm=False).items() if pid not in before}
    assert left == {}, f"child processes left after the time limit: {left}"


@pytest.mark.parametrize("transport", ["get", "post-form", "post-query"])
def test_a_cross_product_is_stopped_at_the_time_limit(make_app: Apps, transport: str) -> None:
    _, client, who = app_with_cases(make_app, query_timeout_s=LIMIT_S)
    if transport == "get":
        assert_stopped_in_time(lambda: client.get("/sparql", query_string={"query": CROSS_PRODUCT},
                                                  headers=who.headers))
    elif transport == "post-form":
        assert_stopped_in_time(lambda: client.post("/sparql", data={"query": CROSS_PRODUCT}, headers=who.headers))
    else:
        assert_stopped_in_time(lambda: client.post("/sparql", data=CROSS_PRODUCT,
                                                   content_type="application/sparql-query", headers=who.headers))
    # and the service answers the next query as usual
    after = client.get("/sparql", query_string={"query": "ASK { ?s ?p ?o }"}, headers=who.headers)
    assert after.status_code == 200 and after.get_json()["boolean"] is True


def test_a_slow_named_query_is_stopped_at_the_time_limit(make_app: Apps, tmp_path: Path) -> None:
    queries = tmp_path / "queries"
    shutil.copytree(Settings().queries_dir, queries)
    (queries / "slow-cross-product.rq").write_text(SLOW_QUERY_FILE, encoding="utf-8")
    _, client, who = app_with_cases(make_app, query_timeout_s=LIMIT_S, queries_dir=queries)
    listed = client.get("/queries", headers=who.headers)
    assert "slow-cross-product" in {q["name"] for q in listed.get_json()}
    assert_stopped_in_time(lambda: client.get("/queries/slow-cross-product", headers=who.headers))
    after = client.get("/queries/cases-by-category", query_string={"category": "primary-non-responder"},
                       headers=who.headers)
    assert after.status_code == 200


def test_several_slow_queries_in_a_row_leave_nothing_behind(make_app: Apps) -> None:
    _, client, who = app_with_cases(make_app, query_timeout_s=0.3)
    before = children_of()
    for _ in range(3):
        response = client.get("/sparql", query_string={"query": CROSS_PRODUCT}, headers=who.headers)
        assert_problem(response, 503)
    assert {pid for pid in children_of(warm=False) if pid not in before} == set()


# -- the row cap -------------------------------------------------------------------------------------------


@pytest.fixture
def capped(make_app: Apps) -> tuple[FlaskClient, Site]:
    _, client, who = app_with_cases(make_app, query_max_rows=5)
    return client, who


@pytest.mark.parametrize("query", [
    "SELECT * WHERE { ?s ?p ?o }",
    "SELECT * WHERE { ?s ?p ?o } LIMIT 6",
    "CONSTRUCT WHERE { ?s ?p ?o }",
    "DESCRIBE ?s WHERE { ?s a ?type }",
    "SELECT * WHERE { GRAPH ?g { ?s ?p ?o } }",
])
def test_results_over_the_row_cap_are_refused(capped: tuple[FlaskClient, Site], query: str) -> None:
    client, who = capped
    response = client.get("/sparql", query_string={"query": query}, headers=who.headers)
    body = assert_problem(response, 422)
    assert body["type"].endswith("/too-many-results"), body


def test_a_result_at_the_row_cap_is_answered(capped: tuple[FlaskClient, Site]) -> None:
    client, who = capped
    response = client.get("/sparql", query_string={"query": "SELECT * WHERE { ?s ?p ?o } LIMIT 5"},
                          headers=who.headers)
    assert response.status_code == 200
    assert len(response.get_json()["results"]["bindings"]) == 5


def test_a_named_query_over_the_row_cap_is_refused(capped: tuple[FlaskClient, Site]) -> None:
    client, who = capped
    response = client.get("/queries/class-hierarchy", query_string={"term": "https://w3id.org/esi-kg/ontology#RedFlag"},
                          headers=who.headers)
    body = assert_problem(response, 422)
    assert body["type"].endswith("/too-many-results"), body


# -- forks and RocksDB ---------------------------------------------------------------------------------------


def test_queries_are_answered_while_the_store_flushes_and_compacts(make_app: Apps) -> None:
    """On the on-disk store, queries run while another thread writes, flushes and compacts.

    A query child forked while a RocksDB thread holds the database mutex inherits it locked
    and would wait for ever in ``GetSnapshotImpl``: it must be replaced (``run_forked`` forks
    again when a child has not taken its snapshot within ``START_GRACE_S``), not answered 503.
    Without that, about one query in ten fails here.
    """
    app = make_app(disk=True, query_timeout_s=5)
    who = issue(settings_of(app), "north", "cases:read", "cases:write")
    client = app.test_client()
    keys = ("p01", "p02", "p03")
    for key in keys:
        assert client.post("/cases", json=vignette(key), headers=who.headers).status_code == 201
    service = app.extensions["esi"]
    site = service.site_store("north")
    outcomes = [service.reason(json.dumps(vignette(k)).encode(), "application/json", "north") for k in keys]
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            outcome = outcomes[n % len(outcomes)]
            site.replace(outcome.case_id, outcome.asserted, outcome.inferred)
            site.flush()
            if n % 3 == 0:
                site.compact()
            n += 1

    worker = threading.Thread(target=churn, name="churn")
    worker.start()
    statuses: list[int] = []
    try:
        for _ in range(25):
            response = client.get("/sparql", query_string={"query": "ASK { ?s ?p ?o }"}, headers=who.headers)
            statuses.append(response.status_code)
            if response.status_code != 200:
                break
    finally:
        stop.set()
        worker.join(30)
    assert statuses.count(200) == len(statuses), f"query {len(statuses)} answered {statuses[-1]}"
