"""Headers and error bodies: patient data is never cached, no server version is announced, no
traceback leaves the service, and the web stack is at releases that fixed its known advisories.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from packaging.version import Version

from kgservice.security.auth import TokenStore

from .conftest import Site, assert_problem, vignette

#: The first releases with the fixes: CVE-2025-47278 (Flask 3.1.1); CVE-2024-49766, CVE-2024-49767
#: (Werkzeug 3.0.6) and CVE-2025-66221 (Werkzeug 3.1.4); CVE-2024-1135 (gunicorn 22.0) and
#: CVE-2024-6827 (gunicorn 23.0).
MINIMUM = {"flask": "3.1.1", "werkzeug": "3.1.4", "gunicorn": "23.0"}


@pytest.fixture
def stocked(secure_app: Flask, north: Site) -> tuple[FlaskClient, Site]:
    client = secure_app.test_client()
    assert client.post("/cases", json=vignette("p01"), headers=north.headers).status_code == 201
    return client, north


#: Requests whose answers carry patient data (or errors about it): (method, path, extra request options).
PATIENT_DATA: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/pathway", {"json": vignette("p08")}),
    ("POST", "/cases", {"json": vignette("p02")}),
    ("GET", "/cases/p01", {}),
    ("GET", "/cases/p01", {"headers": {"Accept": "text/turtle"}}),
    ("GET", "/cases/p01?inferred=true", {"headers": {"Accept": "application/ld+json"}}),
    ("GET", "/cases/p01/pathway", {}),
    ("GET", "/cases", {}),
    ("GET", "/sparql?query=SELECT%20*%20WHERE%20%7B%20%3Fs%20%3Fp%20%3Fo%20%7D%20LIMIT%205", {}),
    ("POST", "/sparql", {"data": {"query": "CONSTRUCT WHERE { ?s ?p ?o } LIMIT 5"}}),
    ("GET", "/queries", {}),
    ("GET", "/queries/cases-by-category?category=primary-non-responder", {}),
    ("PUT", "/cases/p01", {"json": vignette("p01", age=56)}),
    ("DELETE", "/cases/p01", {}),
    ("GET", "/cases/missing", {}),  # 404
    ("POST", "/cases", {"json": vignette("p01", age=-1)}),  # 422
]


@pytest.mark.parametrize("method,path,options", PATIENT_DATA, ids=[f"{m} {p}" for m, p, _ in PATIENT_DATA])
def test_patient_data_is_never_cached(stocked: tuple[FlaskClient, Site], method: str, path: str,
                                      options: dict[str, Any]) -> None:
    client, north = stocked
    headers = {**north.headers, **options.get("headers", {})}
    response = client.open(path, method=method, **{**options, "headers": headers})
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    assert response.headers.get("Cache-Control") == "no-store", (response.status_code, response.headers)
    assert response.headers.get("X-Content-Type-Options") == "nosniff"


@pytest.mark.parametrize("path", ["/cases", "/cases/p01", "/sparql?query=ASK%7B%7D", "/pathway"])
def test_refusals_about_patient_data_are_not_cached_either(secure_client: FlaskClient, path: str) -> None:
    response = secure_client.get(path)
    assert response.status_code in (401, 405)
    assert response.headers.get("Cache-Control") == "no-store"


def test_the_app_announces_no_server(secure_client: FlaskClient) -> None:
    for path in ("/health", "/cases", "/nowhere"):
        response = secure_client.get(path)
        assert "Server" not in response.headers and "X-Powered-By" not in response.headers


# -- no traceback leaves ---------------------------------------------------------------------------------


SECRET_DETAIL = "simulated failure in /srv/secret/path.py line 42"


def _raise(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError(SECRET_DETAIL)


@pytest.mark.parametrize("method,path,target,options", [
    ("POST", "/pathway", "pathway_json", {"json": vignette("p01")}),
    ("POST", "/cases", "create", {"json": vignette("p02")}),
    ("GET", "/cases/p01", "case_json", {}),
    ("GET", "/cases/p01/pathway", "stored_answer", {}),
    ("GET", "/cases", "list_cases", {}),
    ("DELETE", "/cases/p01", "delete", {}),
    ("GET", "/health", "health", {}),
])
def test_an_unexpected_error_is_a_bare_500(stocked: tuple[FlaskClient, Site], monkeypatch: pytest.MonkeyPatch,
                                           method: str, path: str, target: str, options: dict[str, Any]) -> None:
    client, north = stocked
    service = client.application.extensions["esi"]
    monkeypatch.setattr(type(service), target, _raise)
    response = client.open(path, method=method, headers=north.headers, **options)
    body = assert_problem(response, 500)
    text = response.get_data(as_text=True)
    assert SECRET_DETAIL not in text and "secret" not in text
    assert set(body) <= {"type", "title", "status", "detail"}


def test_an_unexpected_error_in_the_query_process_is_a_bare_500(stocked: tuple[FlaskClient, Site],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import kgservice.stores.oxigraph

    client, north = stocked
    monkeypatch.setattr(kgservice.stores.oxigraph, "execute", _raise)
    response = client.get("/sparql", query_string={"query": "ASK { ?s ?p ?o }"}, headers=north.headers)
    assert_problem(response, 500)
    assert SECRET_DETAIL not in response.get_data(as_text=True)


def test_an_unexpected_error_while_reasoning_is_a_bare_500(stocked: tuple[FlaskClient, Site],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    client, north = stocked
    kb = client.application.extensions["esi"].kb
    monkeypatch.setattr(kb, "reason_valid", _raise)
    response = client.post("/pathway", json=vignette("p01"), headers=north.headers)
    assert_problem(response, 500)
    assert SECRET_DETAIL not in response.get_data(as_text=True)


# -- the web stack -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("package", sorted(MINIMUM))
def test_the_web_stack_has_its_security_fixes(package: str) -> None:
    assert Version(version(package)) >= Version(MINIMUM[package]), (package, version(package))


# -- the real server --------------------------------------------------------------------------------------


def _chunked_post(port: int, path: str, body: bytes, token: str) -> tuple[int, dict[str, str], bytes]:
    """POST ``body`` with Transfer-Encoding: chunked (no Content-Length), as a streaming client does."""

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start:start + 64 * 1024]

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=chunks(), encode_chunked=True,
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_the_real_server(tmp_path: Path) -> None:
    """gunicorn: no version in Server, no traceback, no-store, and the body limit on chunked bodies."""
    from serverutil import RealServer, http_request

    data_dir = tmp_path / "data"
    _, secret = TokenStore(data_dir / "tokens.json").create("north", ["pathway:run", "cases:read"])
    with RealServer(data_dir, auth_required=True, reasoning_workers=1) as server:
        replies = {
            "health": http_request(server.base_url, "GET", "/health"),
            "no token": http_request(server.base_url, "GET", "/cases"),
            "not found": http_request(server.base_url, "GET", "/nowhere"),
            "bad json": http_request(server.base_url, "POST", "/pathway", b"{", token=secret,
                                     headers={"Content-Type": "application/json"}),
            "listing": http_request(server.base_url, "GET", "/cases", token=secret),
        }
        assert [r.status for r in replies.values()] == [200, 401, 404, 400, 200]
        for name, reply in replies.items():
            announced = reply.header("Server") or ""
            assert not re.search(r"\d", announced) and "/" not in announced, (name, announced)
            assert "Traceback" not in reply.body.decode("utf-8", "replace"), name
        for name in ("no token", "not found", "bad json"):
            assert replies[name].header("Content-Type") == "application/problem+json", name
        for name in ("no token", "bad json", "listing"):
            assert replies[name].header("Cache-Control") == "no-store", name

        case = json.dumps(vignette("p01")).encode()
        status, headers, body = _chunked_post(server.port, "/pathway", case, secret)
        assert status == 200, body[:300]
        assert json.loads(body)["case"] == "p01"
        status, headers, body = _chunked_post(server.port, "/pathway", case + b" " * 1_000_000, secret)
        assert status == 413, body[:300]
        assert headers.get("Content-Type") == "application/problem+json"
