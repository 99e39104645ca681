"""Huge cases are counted before they are built: refused in milliseconds, and one client sending
them cannot slow a normal ``/pathway`` down.

Issue 9, item 5: a 0.87 MB case with 27,000 pain scores cost about 5 s of worker CPU before the
triple cap refused it, and four clients repeating it made a normal ``/pathway`` take 18-24 s.
Reasoning also grows faster than the number of scores (200 valid scores: seconds), so each JSON
list (and each property of a node, in RDF) holds at most ``max_case_list_items`` values.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from kgservice.config import Settings
from kgservice.core import cases
from kgservice.core.kb import KnowledgeBase

from .conftest import VIGNETTES, Apps, Site, assert_problem, issue, settings_of, vignette

LIST_ITEMS = Settings().max_case_list_items


def scores(n: int) -> list[dict[str, Any]]:
    return [{"date": "2026-06-10", "score": 5}] * n


def huge_case() -> bytes:
    return json.dumps(vignette("p01", pain_scores=scores(27_000))).encode()


@pytest.fixture(scope="module")
def shared(module_apps: Apps) -> tuple[FlaskClient, Site]:
    app = module_apps()
    return app.test_client(), issue(settings_of(app), "north", "pathway:run", "cases:write")


def test_a_list_over_the_limit_is_refused_by_its_path(shared: tuple[FlaskClient, Site]) -> None:
    client, north = shared
    response = client.post("/pathway", json=vignette("p01", pain_scores=scores(LIST_ITEMS + 1)),
                           headers=north.headers)
    body = assert_problem(response, 422)
    assert body["violations"] == [{"path": "pain_scores",
                                   "message": f"pain_scores may hold at most {LIST_ITEMS} items, not {LIST_ITEMS + 1}"}]


def test_a_list_at_the_limit_is_not_refused_for_its_length(shared: tuple[FlaskClient, Site]) -> None:
    client, north = shared
    response = client.post("/pathway", json=vignette("p01", pain_scores=scores(LIST_ITEMS)), headers=north.headers)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]


def test_many_small_lists_over_the_triple_cap_are_refused_before_mapping(make_app: Apps) -> None:
    app = make_app(max_case_triples=40)
    client = app.test_client()
    north = issue(settings_of(app), "north", "pathway:run")
    case = vignette("p01", pain_scores=scores(12))  # 12 x 4 triples > 40, yet each list is short
    body = assert_problem(client.post("/pathway", json=case, headers=north.headers), 422)
    assert body["violations"][0]["path"] == "$" and "at most 40 triples" in body["violations"][0]["message"]


@pytest.mark.parametrize("key", sorted(VIGNETTES))
def test_the_count_never_exceeds_the_triples_a_valid_case_maps_to(kb: KnowledgeBase, key: str) -> None:
    """The count is a lower bound: a case it refuses could never have fitted under the cap."""
    case = VIGNETTES[key]
    assert cases.count_values(case, 10**6) <= len(kb.read_json(case).graph)


def test_an_rdf_case_with_too_many_values_of_one_property_is_refused(shared: tuple[FlaskClient, Site]) -> None:
    client, north = shared
    node = "https://w3id.org/esi-kg/case/fan"
    ttl = (f"@prefix esi: <https://w3id.org/esi-kg/ontology#> .\n<{node}> a esi:PatientCase ;\n  esi:hasPainScore "
           + ", ".join(f"<{node}/s{i}>" for i in range(LIST_ITEMS + 1)) + " .\n")
    body = assert_problem(client.post("/pathway", data=ttl.encode(), content_type="text/turtle",
                                      headers=north.headers), 422)
    assert f"at most {LIST_ITEMS} values" in body["violations"][0]["message"]


def test_a_27000_score_case_is_refused_in_milliseconds_in_process(shared: tuple[FlaskClient, Site]) -> None:
    client, north = shared
    body = huge_case()
    times = []
    for _ in range(3):
        start = time.monotonic()
        response = client.post("/pathway", data=body, content_type="application/json", headers=north.headers)
        times.append(time.monotonic() - start)
        assert_problem(response, 422)
    assert min(times) < 0.25, times


# -- the real server ----------------------------------------------------------------------------------


def _timed(server: Any, body: bytes) -> tuple[int, float]:
    start = time.monotonic()
    reply = server.request("POST", "/pathway", body, headers={"Content-Type": "application/json"})
    return reply.status, time.monotonic() - start


@pytest.mark.slow
def test_the_real_server_refuses_huge_cases_at_once_and_stays_fast_for_others(tmp_path: Path) -> None:
    from serverutil import RealServer

    huge, normal = huge_case(), json.dumps(vignette("p08")).encode()
    with RealServer(tmp_path / "data", auth_required=False, reasoning_workers=1) as server:
        assert _timed(server, normal)[0] == 200  # warm
        refused = [_timed(server, huge) for _ in range(3)]
        assert {status for status, _ in refused} == {422}
        assert statistics.median(t for _, t in refused) < 0.5, refused  # was about 5 s

        alone = [_timed(server, normal)[1] for _ in range(5)]
        stop = threading.Event()
        sent = [0] * 4

        def hammer(i: int) -> None:
            deadline = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < deadline:
                assert _timed(server, huge)[0] == 422
                sent[i] += 1

        clients = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(4)]
        for thread in clients:
            thread.start()
        time.sleep(0.5)
        try:
            during = []
            for _ in range(10):
                status, elapsed = _timed(server, normal)
                assert status == 200
                during.append(elapsed)
        finally:
            stop.set()
            for thread in clients:
                thread.join(30)
        assert sum(sent) >= 8, sent  # the four clients did keep the server busy
        assert statistics.median(during) < 1.0 and max(during) < 2.5, (alone, during)  # was 18-24 s
