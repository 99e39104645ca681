"""The real server over HTTP: ``kgservice serve`` (gunicorn) in a process of its own, on a fresh data dir.

One case goes the whole way: answered by ``POST /pathway``, stored by ``POST /cases`` with a
token made by ``kgservice token create``, found again after the server is stopped and started
on the same data directory, and seen by a SPARQL client (SPARQLWrapper) at ``/sparql``.
"""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path
from typing import Any

import pytest
from serverutil import FORK_DEADLOCK, RealServer, Reply, create_token, unordered
from SPARQLWrapper import JSON, POST, SPARQLWrapper
from SPARQLWrapper.SPARQLExceptions import Unauthorized

from kgservice.core.kb import KnowledgeBase

pytestmark = pytest.mark.slow

VIGNETTES = Path(__file__).parent / "data" / "vignettes"
CASE_BASE = "https://w3id.org/esi-kg/case/"
PROBLEM = "application/problem+json"
SITE = "clinic-a"


def vignette(name: str) -> dict[str, Any]:
    return json.loads((VIGNETTES / f"{name}.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def assert_no_server_version(reply: Reply) -> None:
    server = reply.header("Server") or ""
    assert not any(ch.isdigit() for ch in server), f"Server header gives a version away: {server!r}"


def assert_no_store(reply: Reply) -> None:
    assert reply.header("Cache-Control") == "no-store", reply.headers


def select(url: str, query: str, method: str, token: str, known_bug: list[str]) -> dict[str, Any]:
    """SELECT with SPARQLWrapper; a 503 time-limit (the known fork deadlock) is recorded and retried once."""
    for attempt in (1, 2):
        sparql = SPARQLWrapper(url)
        sparql.setQuery(query)
        sparql.setReturnFormat(JSON)
        sparql.setMethod(method)
        sparql.addCustomHttpHeader("Authorization", f"Bearer {token}")
        try:
            results = sparql.queryAndConvert()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            exc.close()
            if exc.code == 503 and attempt == 1 and b"time-limit" in body:
                known_bug.append(f"503 time-limit on SPARQLWrapper {method}")
                continue
            raise
        assert isinstance(results, dict)
        return results
    raise AssertionError("unreachable")


def test_open_server_answers_a_public_vignette(tmp_path: Path, kb: KnowledgeBase) -> None:
    """With auth off, POST /pathway answers with the contract answer, exactly as the library does."""
    public = vignette("p08-red-flag-foot-drop")
    with RealServer(tmp_path / "data", auth_required=False) as server:
        health = server.request("GET", "/health")
        assert health.status == 200
        assert_no_server_version(health)

        reply = server.request("POST", "/pathway", public["case"])
        assert reply.status == 200, reply.body
        assert reply.header("Content-Type") == "application/json"
        assert_no_store(reply)
        assert_no_server_version(reply)
        answer = reply.json()
        assert answer == kb.answer_json(public["case"])
        assert answer["ontology_version"] == health.json()["ontology_version"]
        assert answer["response"]["category"] == public["expect"]["category"]
        assert [p["code"] for p in answer["pathways"]] == public["expect"]["pathways"]

        stored = server.request("GET", "/cases")  # open: no token needed, nothing stored
        assert stored.status == 200
        assert stored.json()["total"] == 0


def test_case_is_stored_with_a_token_and_found_after_a_restart(tmp_path: Path) -> None:
    public = vignette("p08-red-flag-foot-drop")
    case, case_id = public["case"], public["case"]["id"]
    case_iri = f"{CASE_BASE}{SITE}/{case_id}"
    data = tmp_path / "data"
    token = create_token(data, SITE, "pathway:run", "cases:read", "cases:write")
    reader = create_token(data, SITE, "cases:read")
    assert token.startswith("esi_") and reader.startswith("esi_") and token != reader

    server = RealServer(data, auth_required=True, env={"ESI_QUERY_TIMEOUT_S": "3"})
    known_bug: list[str] = []
    with server:
        # Without a token, or with a wrong one: 401, as problem+json, for every case endpoint.
        for method, path, body in [("POST", "/pathway", case), ("POST", "/cases", case), ("GET", "/cases", None),
                                   ("GET", f"/cases/{case_id}", None), ("GET", "/sparql?query=ASK%7B%7D", None)]:
            for presented in (None, token[:-2] + "xx", "esi_nothing_here"):
                refused = server.request(method, path, body, token=presented)
                assert refused.status == 401, (method, path, presented, refused.body)
                assert refused.header("Content-Type") == PROBLEM
                assert_no_server_version(refused)
        assert_no_store(server.request("GET", "/cases"))
        assert server.request("GET", "/health").status == 200  # open without a token

        answered = server.request("POST", "/pathway", case, token=token)
        assert answered.status == 200, answered.body
        assert answered.json()["response"]["category"] == public["expect"]["category"]

        # A read-only token may read but not write.
        forbidden = server.request("POST", "/cases", case, token=reader)
        assert forbidden.status == 403, forbidden.body

        created = server.request("POST", "/cases", case, token=token)
        assert created.status == 201, created.body
        assert created.header("Location") == f"/cases/{case_id}"
        assert_no_store(created)
        assert_no_server_version(created)
        assert created.json() == answered.json()

        again = server.request("POST", "/cases", case, token=token)
        assert again.status == 409, again.body
        assert_no_store(again)

        before = server.request("GET", f"/cases/{case_id}", token=reader)
        assert before.status == 200, before.body
        assert_no_store(before)
        assert unordered(before.json()) == unordered(case)
        pathway_before = server.request("GET", f"/cases/{case_id}/pathway", token=reader)
        assert pathway_before.status == 200, pathway_before.body
        assert_no_store(pathway_before)
        assert pathway_before.json() == created.json()

    # Stopped; started again on the same data directory, on another port.
    with server:
        after = server.request("GET", f"/cases/{case_id}", token=reader)
        assert after.status == 200, after.body
        assert_no_store(after)
        assert_no_server_version(after)
        assert after.json() == before.json()
        pathway_after = server.request("GET", f"/cases/{case_id}/pathway", token=reader)
        assert pathway_after.status == 200, pathway_after.body
        assert pathway_after.json() == pathway_before.json() == created.json()

        listed = server.request("GET", "/cases", token=reader)
        assert listed.status == 200
        assert_no_store(listed)
        assert [item["id"] for item in listed.json()["items"]] == [case_id]
        assert server.request("POST", "/cases", case, token=token).status == 409  # still there

        # A SPARQL client finds the case in the union default graph.
        query = """PREFIX esi: <https://w3id.org/esi-kg/ontology#>
            SELECT ?case ?category WHERE { ?case esi:hasResponseCategory ?category }"""
        sparql = SPARQLWrapper(f"{server.base_url}/sparql")
        sparql.setQuery(query)
        sparql.setReturnFormat(JSON)
        with pytest.raises(Unauthorized):
            sparql.query()
        for method in ("GET", POST):
            results = select(f"{server.base_url}/sparql", query, method, reader, known_bug)
            rows = {(b["case"]["value"], b["category"]["value"]) for b in results["results"]["bindings"]}
            assert (case_iri, "https://w3id.org/esi-kg/ontology#" + public["expect"]["category"]) in rows
            assert {c for c, _ in rows} == {case_iri}

        # A token made while the server runs, for another site, sees nothing of clinic-a's.
        other = create_token(data, "clinic-b", "cases:read")
        assert server.request("GET", f"/cases/{case_id}", token=other).status == 404
        assert server.request("GET", "/cases", token=other).json()["total"] == 0
    assert not known_bug, f"{FORK_DEADLOCK} Here: {known_bug}"
