"""Input that used to make a 500 is a 4xx problem, and every 500 that remains is logged with why.

Lone surrogates, RDF-star cases and unsafe ids are refused; a child or worker that dies while
working for a request gives the client a clear problem and the log its cause. The corpus at the
end is sent to a real ``kgservice serve``: no 5xx, no traceback.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from kgservice import isolation
from kgservice.config import Settings
from kgservice.isolation import ProcessCrashed, run_forked
from kgservice.workers import ReasoningPool

from .conftest import Apps, Site, assert_problem, issue, settings_of, vignette

PREFIX = "@prefix esi: <https://w3id.org/esi-kg/ontology#> .\n"
CASE = "<https://w3id.org/esi-kg/case/star>"


@pytest.fixture(scope="module")
def shared(module_apps: Apps) -> tuple[FlaskClient, Site]:
    app = module_apps()
    return app.test_client(), issue(settings_of(app), "north", "pathway:run", "cases:read", "cases:write")


# -- lone surrogates -----------------------------------------------------------------------------------

SURROGATES = {
    "id": b'{"id": "\\ud800"}',
    "key": b'{"\\udfff": 1}',
    "nested-value": b'{"id": "s1", "age": 50, "diagnoses": ["\\udbff"]}',
    "low-then-high": b'{"id": "s2", "sex": "\\udc00\\ud800"}',
}


@pytest.mark.parametrize("endpoint", ["POST /pathway", "POST /cases", "PUT /cases/s1"])
@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_a_lone_surrogate_is_malformed_input(shared: tuple[FlaskClient, Site], endpoint: str, name: str) -> None:
    client, north = shared
    method, path = endpoint.split(" ")
    response = client.open(path, method=method, data=SURROGATES[name], content_type="application/json",
                           headers=north.headers)
    body = assert_problem(response, 400)
    assert "surrogate" in body["detail"]


def test_a_surrogate_pair_is_a_character_and_fine(shared: tuple[FlaskClient, Site]) -> None:
    client, north = shared
    case = json.dumps(vignette("p01", id="pair", sex="\U0001f600")).encode("ascii")  # "\ud83d\ude00"
    response = client.post("/pathway", data=case, content_type="application/json", headers=north.headers)
    body = assert_problem(response, 422)
    assert any(v["path"] == "sex" for v in body["violations"]) and "\\ud83d\\ude00" in response.get_data(as_text=True)


# -- RDF-star --------------------------------------------------------------------------------------------

STAR = {
    "subject": f"{PREFIX}{CASE} a esi:PatientCase .\n<< {CASE} a esi:PatientCase >> esi:ageInYears 3 .\n",
    "object": f"{PREFIX}{CASE} a esi:PatientCase ; esi:ageInYears << <a:b> <a:c> <a:d> >> .\n",
    "annotation": f"{PREFIX}{CASE} a esi:PatientCase ; esi:ageInYears 58 {{| esi:source <a:x> |}} .\n",
}


@pytest.mark.parametrize("endpoint", ["POST /pathway", "POST /cases", "PUT /cases/star"])
@pytest.mark.parametrize("name", sorted(STAR))
def test_an_rdf_star_case_is_refused(shared: tuple[FlaskClient, Site], endpoint: str, name: str) -> None:
    client, north = shared
    method, path = endpoint.split(" ")
    response = client.open(path, method=method, data=STAR[name].encode(), content_type="text/turtle",
                           headers=north.headers)
    body = assert_problem(response, 422)
    assert "triple terms" in body["violations"][0]["message"]
    assert client.get("/cases/star", headers=north.headers).status_code == 404


# -- ids that are no safe path segment ---------------------------------------------------------------------


@pytest.mark.parametrize("case_id", [".", "..", "a/b", "", "p01\n", "x" * 65, "%2e%2e"])
def test_an_id_that_is_not_a_safe_path_segment_is_refused(shared: tuple[FlaskClient, Site], case_id: str) -> None:
    client, north = shared
    response = client.post("/cases", json=vignette("p01", id=case_id), headers=north.headers)
    body = assert_problem(response, 422)
    assert any(v["path"] == "id" for v in body["violations"]), body
    assert "Location" not in response.headers


@pytest.mark.parametrize("case_id", [".", ".."])
def test_put_to_a_dot_id_is_refused(shared: tuple[FlaskClient, Site], case_id: str) -> None:
    client, north = shared
    response = client.put(f"/cases/{case_id}", json=vignette("p01", id=None), headers=north.headers)
    assert_problem(response, (404, 422))
    assert "Location" not in response.headers


def test_ids_with_dots_inside_are_still_fine(shared: tuple[FlaskClient, Site]) -> None:
    client, north = shared
    for case_id in ("...", "a.b", ".hidden", "p01."):
        response = client.post("/pathway", json=vignette("p01", id=case_id), headers=north.headers)
        assert response.status_code == 200, (case_id, response.get_data(as_text=True)[:300])


# -- processes that die, and the log -----------------------------------------------------------------------


def test_a_query_child_that_crashes_is_a_clear_problem_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    def crash(started: Any) -> None:
        started()
        faulthandler.disable()  # pytest's dump of the child's stack would only be noise here
        os.kill(os.getpid(), signal.SIGSEGV)

    with caplog.at_level(logging.ERROR, logger="kgservice.isolation"):
        with pytest.raises(ProcessCrashed) as caught:
            run_forked(crash, timeout=10)
    assert 400 <= caught.value.status < 500 and "SIGSEGV" in caught.value.problem()["detail"]
    assert "SIGSEGV" in caplog.text


def test_a_worker_that_dies_mid_case_is_a_clear_problem_and_the_pool_recovers(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pool = ReasoningPool(Settings(data_dir=tmp_path, reasoning_timeout_s=30), 1)
    case = json.dumps(vignette("p01")).encode()
    try:
        worker = pool._all[0]
        timer = threading.Timer(0.0, os.kill, (worker.process.pid, signal.SIGSEGV))
        with caplog.at_level(logging.ERROR, logger="kgservice.isolation"):
            timer.start()
            timer.join()
            with pytest.raises(ProcessCrashed) as caught:
                pool.process(case, "application/json", "north", None)
        assert caught.value.status == 422 and "SIGSEGV" in caught.value.problem()["detail"]
        assert "SIGSEGV" in caplog.text
        outcome = pool.process(case, "application/json", "north", None)
        assert outcome.answer["case"] == "p01"  # type: ignore[union-attr]
    finally:
        pool.close()


def test_an_unexpected_error_in_the_query_child_is_logged_with_its_traceback(
        shared: tuple[FlaskClient, Site], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import kgservice.stores.oxigraph

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated failure deep in the child")

    client, north = shared
    monkeypatch.setattr(kgservice.stores.oxigraph, "execute", broken)
    with caplog.at_level(logging.ERROR):
        response = client.get("/sparql", query_string={"query": "ASK { ?s ?p ?o }"}, headers=north.headers)
    assert_problem(response, 500)
    assert "simulated failure deep in the child" not in response.get_data(as_text=True)
    assert "Traceback" in caplog.text and "simulated failure deep in the child" in caplog.text


def test_every_500_in_the_server_process_is_logged(shared: tuple[FlaskClient, Site], monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    client, north = shared
    service = client.application.extensions["esi"]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("simulated failure in the server")

    monkeypatch.setattr(type(service), "list_cases", broken)
    with caplog.at_level(logging.ERROR):
        response = client.get("/cases", headers=north.headers)
    assert_problem(response, 500)
    assert "Traceback" in caplog.text and "simulated failure in the server" in caplog.text


def test_the_worker_failure_format_carries_the_traceback_to_the_log() -> None:
    try:
        raise KeyError("inside a worker")
    except KeyError as exc:
        kind, problem, trace = isolation.failure(exc)
    assert (kind, problem["status"]) == ("failed", 500) and "inside a worker" not in json.dumps(problem)
    assert "Traceback" in trace and "inside a worker" in trace


# -- the real server ------------------------------------------------------------------------------------

#: (method, path, content type, body): each used to be a 500, or is of the same kind.
CORPUS: list[tuple[str, str, str, bytes]] = [
    *[("POST", path, "application/json", body) for body in SURROGATES.values() for path in ("/pathway", "/cases")],
    *[("POST", path, "text/turtle", body.encode()) for body in STAR.values() for path in ("/pathway", "/cases")],
    ("POST", "/cases", "application/json", json.dumps(vignette("p01", id="..")).encode()),
    ("PUT", "/cases/..", "application/json", json.dumps(vignette("p01", id=None)).encode()),
    ("PUT", "/cases/.", "application/json", json.dumps(vignette("p01", id=None)).encode()),
    ("POST", "/pathway", "application/json", b'{"id": "\\u2028", "age": "\\u0085"}'),
    ("POST", "/pathway", "application/json", b"\xff\xfe{}"),
    ("POST", "/pathway", "application/ld+json", b'{"@context": {"@vocab": "\\ud800"}, "@type": "x"}'),
    ("POST", "/pathway", "application/n-triples", b"<< <a:b> <a:c> <a:d> >> <a:e> <a:f> .\n"),
    ("GET", "/cases/%ED%A0%80", "", b""),
    ("GET", "/cases?category=%ED%A0%80", "", b""),
]


@pytest.mark.slow
def test_the_real_server_answers_the_corpus_with_4xx(tmp_path: Path) -> None:
    from serverutil import RealServer

    with RealServer(tmp_path / "data", auth_required=False, reasoning_workers=1) as server:
        for method, path, content_type, body in CORPUS:
            headers = {"Content-Type": content_type} if content_type else {}
            reply = server.request(method, path, body or None, headers=headers)
            text = reply.body.decode("utf-8", "replace")
            assert 400 <= reply.status < 500, (method, path, body[:80], reply.status, text[:300])
            assert reply.header("Content-Type") == "application/problem+json", (path, reply.header("Content-Type"))
            assert "Traceback" not in text
            json.loads(reply.body)
        assert server.request("GET", "/cases").json()["total"] == 0
        assert "Traceback" not in server.stderr()
