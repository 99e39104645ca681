"""Headers a browser-facing service needs: a strict CSP, no framing, no referrer, no sniffing, and
CORS off by default, on only for the origins ``ESI_CORS_ORIGINS`` names, preflights included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from kgservice.security.headers import DEFAULT_CSP

from .conftest import Apps, Site, assert_problem, issue, settings_of, vignette

EHR = "https://ehr.example.org"
OTHER = "https://evil.example.net"


@pytest.fixture(scope="module")
def closed(module_apps: Apps) -> tuple[FlaskClient, Site]:
    app = module_apps()
    return app.test_client(), issue(settings_of(app), "north", "pathway:run", "cases:read", "cases:write")


@pytest.fixture(scope="module")
def open_to_ehr(module_apps: Apps) -> tuple[FlaskClient, Site]:
    app = module_apps(cors_origins=f"{EHR}, http://localhost:3000")
    return app.test_client(), issue(settings_of(app), "north", "pathway:run", "cases:read", "cases:write")


def _csp(value: str | None) -> dict[str, str]:
    return {part.split()[0]: part.strip() for part in (value or "").split(";") if part.strip()}


REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/health", {}),
    ("GET", "/openapi.json", {}),
    ("GET", "/cases", {"token": False}),  # 401
    ("GET", "/nowhere", {}),  # 404
    ("POST", "/pathway", {"json": vignette("p08")}),
    ("POST", "/pathway", {"data": b"{", "content_type": "application/json"}),  # 400
    ("GET", "/sparql", {"query_string": {"query": "ASK { ?s ?p ?o }"}}),
]


@pytest.mark.parametrize("method,path,options", REQUESTS, ids=[f"{m} {p}" for m, p, _ in REQUESTS])
def test_every_answer_carries_the_browser_headers(closed: tuple[FlaskClient, Site], method: str, path: str,
                                                  options: dict[str, Any]) -> None:
    client, north = closed
    options = dict(options)
    headers = north.headers if options.pop("token", True) else {}
    response = client.open(path, method=method, headers=headers, **options)
    policy = _csp(response.headers.get("Content-Security-Policy"))
    assert policy["default-src"] == "default-src 'self'" and policy["frame-ancestors"] == "frame-ancestors 'none'"
    assert policy["script-src"] == "script-src 'self'" and "unsafe-inline" not in str(policy)
    assert response.headers.get("X-Frame-Options") == "DENY"
    assert response.headers.get("Referrer-Policy") == "no-referrer"
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert "Access-Control-Allow-Origin" not in response.headers


def test_a_page_keeps_its_own_policy_and_is_never_framed(closed: tuple[FlaskClient, Site]) -> None:
    client, _ = closed
    response = client.get("/")
    assert response.status_code == 200
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers.get("X-Frame-Options") == "DENY"


# -- CORS -------------------------------------------------------------------------------------------------


def _preflight(client: FlaskClient, path: str, origin: str, method: str = "POST",
               headers: str = "authorization, content-type") -> Any:
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": headers})


def test_cors_is_off_by_default(closed: tuple[FlaskClient, Site]) -> None:
    client, north = closed
    body = assert_problem(_preflight(client, "/pathway", EHR), 403)
    assert "CORS is off" in body["detail"]
    response = client.post("/pathway", json=vignette("p08"), headers={**north.headers, "Origin": EHR})
    assert response.status_code == 200 and "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("path,method", [("/pathway", "POST"), ("/cases", "POST"), ("/cases/p01", "PUT"),
                                         ("/cases/p01", "DELETE"), ("/sparql", "GET"), ("/sparql", "POST")])
def test_a_listed_origin_gets_its_preflight_without_a_token(open_to_ehr: tuple[FlaskClient, Site], path: str,
                                                            method: str) -> None:
    client, _ = open_to_ehr
    response = _preflight(client, path, EHR, method)
    assert response.status_code == 204, response.get_data(as_text=True)
    assert response.headers["Access-Control-Allow-Origin"] == EHR
    assert method in response.headers["Access-Control-Allow-Methods"].split(", ")
    assert {"authorization", "content-type"} <= {h.strip().lower() for h in
                                                 response.headers["Access-Control-Allow-Headers"].split(",")}
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in response.headers.get("Vary", "")
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_a_listed_origin_reads_the_answer(open_to_ehr: tuple[FlaskClient, Site]) -> None:
    client, north = open_to_ehr
    response = client.post("/cases", json=vignette("p01", id="cors-1"), headers={**north.headers, "Origin": EHR})
    assert response.status_code == 201
    assert response.headers["Access-Control-Allow-Origin"] == EHR
    assert "Location" in response.headers["Access-Control-Expose-Headers"]
    assert "Origin" in response.headers["Vary"]
    refused = client.get("/cases/cors-1", headers={"Origin": EHR})  # CORS does not replace the token
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == EHR


@pytest.mark.parametrize("origin", [OTHER, "https://ehr.example.org.evil.net", "http://ehr.example.org", "null",
                                    "https://EHR.example.org:443"])
def test_any_other_origin_is_refused(open_to_ehr: tuple[FlaskClient, Site], origin: str) -> None:
    client, north = open_to_ehr
    response = _preflight(client, "/pathway", origin)
    assert_problem(response, 403)
    assert "Access-Control-Allow-Origin" not in response.headers
    answer = client.post("/pathway", json=vignette("p08"), headers={**north.headers, "Origin": origin})
    assert "Access-Control-Allow-Origin" not in answer.headers and "Origin" in answer.headers["Vary"]


@pytest.mark.parametrize("method,headers", [("PATCH", "content-type"), ("DELETE", "content-type"),
                                            ("POST", "x-api-key"), ("POST", "cookie")])
def test_a_preflight_for_what_is_not_allowed_is_refused(open_to_ehr: tuple[FlaskClient, Site], method: str,
                                                        headers: str) -> None:
    client, _ = open_to_ehr
    response = _preflight(client, "/pathway", EHR, method, headers)
    assert_problem(response, 403)


@pytest.mark.parametrize("value", ["*", "ehr.example.org", "https://ehr.example.org/path", "ftp://x"])
def test_an_origin_list_that_is_no_list_of_origins_stops_the_start(make_app: Apps, value: str) -> None:
    with pytest.raises(ValueError, match="ESI_CORS_ORIGINS"):
        make_app(cors_origins=value)


@pytest.mark.slow
def test_the_real_server_sends_the_headers_and_answers_preflights(tmp_path: Path) -> None:
    from serverutil import RealServer

    with RealServer(tmp_path / "data", auth_required=True, env={"ESI_CORS_ORIGINS": EHR}) as server:
        health = server.request("GET", "/health", headers={"Origin": EHR})
        assert health.header("X-Frame-Options") == "DENY" and health.header("Access-Control-Allow-Origin") == EHR
        assert health.header("Content-Security-Policy") == DEFAULT_CSP
        preflight = server.request("OPTIONS", "/pathway", headers={
            "Origin": EHR, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type"})
        assert preflight.status == 204 and preflight.header("Access-Control-Allow-Origin") == EHR
        other = server.request("OPTIONS", "/pathway",
                               headers={"Origin": OTHER, "Access-Control-Request-Method": "POST"})
        assert other.status == 403 and other.header("Access-Control-Allow-Origin") is None
