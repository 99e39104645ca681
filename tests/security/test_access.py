"""Who may do what: tokens and scopes, open endpoints, two sites that never see each other's
cases, and injection attempts through parameters and case ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient

from kgservice.security.auth import TokenStore

from .conftest import CASE_BASE, Apps, Site, assert_problem, issue, settings_of, vignette

OPEN = {"/vocabulary", "/ontology", "/health", "/openapi.json", "/", "/sign-in", "/query", "/clinician", "/docs",
        "/docs/ontology-docs.css"}
#: Open for one method only: GET /sparql without a query is the service description (a query needs a token).
OPEN_REQUESTS = {("GET", "/sparql")}
#: The clinician's form posts: refused with the form's page (401, with a link to sign in), not problem+json.
PAGE_POSTS = {"/clinician/assess", "/clinician/store"}
#: Every protected endpoint, with the scope it needs and a request that exercises it.
PROTECTED: list[tuple[str, str, str]] = [
    ("POST", "/pathway", "pathway:run"),
    ("POST", "/cases", "cases:write"),
    ("PUT", "/cases/p01", "cases:write"),
    ("DELETE", "/cases/p01", "cases:write"),
    ("GET", "/cases/p01", "cases:read"),
    ("GET", "/cases/p01/pathway", "cases:read"),
    ("GET", "/cases", "cases:read"),
    ("GET", "/sparql?query=ASK%20%7B%7D", "cases:read"),
    ("POST", "/sparql", "cases:read"),
    ("GET", "/queries", "cases:read"),
    ("GET", "/queries/cases-by-category?category=primary-non-responder", "cases:read"),
]
INJECTIONS = ['111" || "a"="a', "primary-non-responder> } ?x ?y ?z {", "p01' OR '1'='1", "../north/p01",
              "p01/../../north/p01", "*", "%", "p01%00", "p01\n"]


def call(client: FlaskClient, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
    """One request as a client would send it, with a body where the endpoint reads one."""
    body: dict[str, Any] = {}
    if method in ("POST", "PUT") and path.startswith(("/pathway", "/cases")):
        body = {"json": vignette("p01")}
    elif method == "POST" and path == "/sparql":
        body = {"data": {"query": "ASK {}"}}
    return client.open(path, method=method, headers=headers or {}, **body)


def ids(client: FlaskClient, who: Site, **filters: str) -> list[str]:
    response = client.get("/cases", query_string={"per_page": 1000, **filters}, headers=who.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return [item["id"] for item in response.get_json()["items"]]


# -- tokens and scopes -----------------------------------------------------------------------------------


def test_every_endpoint_but_the_open_ones_needs_a_token(secure_app: Flask) -> None:
    """Checked over the app's own URL map, so that a new endpoint without a scope shows up here."""
    client = secure_app.test_client()
    seen_open = set()
    for rule in secure_app.url_map.iter_rules():
        if rule.rule.startswith("/static/"):
            continue
        path = rule.rule.replace("<case_id>", "p01").replace("<name>", "cases-by-category")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = call(client, method, path)
            if path in OPEN or (method, path) in OPEN_REQUESTS:
                assert response.status_code == 200, (method, path, response.status_code)
                seen_open.add(path if path in OPEN else (method, path))
            elif path in PAGE_POSTS:
                assert response.status_code == 401 and response.mimetype == "text/html", (path, response.status_code)
                assert response.headers["WWW-Authenticate"].lower().startswith("bearer")
            else:
                assert_problem(response, 401)
    assert seen_open == OPEN | OPEN_REQUESTS


@pytest.mark.parametrize("method,path,scope", PROTECTED)
def test_no_token_is_401_with_what_a_client_needs(secure_client: FlaskClient, method: str, path: str,
                                                 scope: str) -> None:
    response = call(secure_client, method, path)
    body = assert_problem(response, 401)
    assert "Bearer" in body["detail"]
    assert response.headers["WWW-Authenticate"].lower().startswith("bearer")  # RFC 6750
    assert "no-store" in response.headers.get("Cache-Control", "")


@pytest.mark.parametrize("authorization", [
    "Bearer esi_000000000000_" + "A" * 43,  # well formed, unknown id
    "Bearer nonsense",
    "Bearer ",
    "Basic dXNlcjpwYXNz",
    "bearer",
    "Token {secret}",
    "Bearer {secret}x",  # the right token with a character more
    "Bearer {wrong_secret}",  # the right id with another token's secret
], ids=["unknown-id", "nonsense", "empty", "basic", "no-value", "other-scheme", "extended", "swapped-secret"])
@pytest.mark.parametrize("method,path,scope", PROTECTED[:3] + PROTECTED[6:8])
def test_a_wrong_token_is_401(shared_sites: tuple[FlaskClient, Site, Site], method: str, path: str, scope: str,
                              authorization: str) -> None:
    client, north, south = shared_sites
    wrong_secret = f"esi_{north.token_id}_{south.secret.split('_', 2)[2]}"
    header = authorization.format(secret=north.secret, wrong_secret=wrong_secret)
    response = call(client, method, path, {"Authorization": header})
    assert_problem(response, 401)


def test_a_revoked_token_is_401_at_once(secure_app: Flask, north: Site) -> None:
    client = secure_app.test_client()
    assert client.get("/cases", headers=north.headers).status_code == 200
    assert TokenStore(settings_of(secure_app).tokens_path).revoke(north.token_id)
    for method, path, _ in PROTECTED:
        assert_problem(call(client, method, path, north.headers), 401)


@pytest.mark.parametrize("method,path,scope", PROTECTED)
def test_a_token_without_the_scope_is_403(secure_app: Flask, method: str, path: str, scope: str) -> None:
    client = secure_app.test_client()
    others = sorted({"ontology:read", "pathway:run", "cases:read", "cases:write"} - {scope})
    for granted in [["ontology:read"], others]:
        who = issue(settings_of(secure_app), "north", *granted)
        response = call(client, method, path, who.headers)
        assert_problem(response, 403)


@pytest.mark.parametrize("method,path,scope", PROTECTED)
def test_the_scope_alone_or_admin_lets_the_request_in(secure_app: Flask, method: str, path: str,
                                                      scope: str) -> None:
    client = secure_app.test_client()
    for granted in (scope, "admin"):
        who = issue(settings_of(secure_app), "north", granted)
        response = call(client, method, path, who.headers)
        assert response.status_code not in (401, 403), (granted, response.get_data(as_text=True)[:300])


@pytest.mark.parametrize("path", sorted(OPEN))
@pytest.mark.parametrize("authorization", [None, "Bearer nonsense"])
def test_open_endpoints_need_no_token(secure_client: FlaskClient, path: str, authorization: str | None) -> None:
    response = secure_client.get(path, headers={"Authorization": authorization} if authorization else {})
    assert response.status_code == 200


def test_auth_required_false_opens_everything(make_app: Apps) -> None:
    client = make_app(auth_required=False).test_client()
    for method, path, _ in PROTECTED:
        response = call(client, method, path)
        assert response.status_code not in (401, 403), (method, path, response.get_data(as_text=True)[:300])


def test_tokens_are_stored_hashed(secure_app: Flask, north: Site) -> None:
    path = settings_of(secure_app).tokens_path
    text = path.read_text(encoding="utf-8")
    secret_part = north.secret.split("_", 2)[2]
    assert north.secret not in text and secret_part not in text
    stored = {t["id"]: t for t in json.loads(text)["tokens"]}[north.token_id]
    assert stored["digest"] == hashlib.sha256(secret_part.encode()).hexdigest()
    assert stored["site"] == "north"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# -- two sites -----------------------------------------------------------------------------------------------


def populate(app: Flask) -> tuple[FlaskClient, Site, Site]:
    """Sites north (holding p01 and p08) and south (holding p03), with a token each."""
    scopes = ("pathway:run", "cases:read", "cases:write")
    north, south = issue(settings_of(app), "north", *scopes), issue(settings_of(app), "south", *scopes)
    client = app.test_client()
    for key in ("p01", "p08"):
        assert client.post("/cases", json=vignette(key), headers=north.headers).status_code == 201
    assert client.post("/cases", json=vignette("p03"), headers=south.headers).status_code == 201
    return client, north, south


@pytest.fixture
def two_sites(secure_app: Flask) -> tuple[FlaskClient, Site, Site]:
    """For the tests that write."""
    return populate(secure_app)


@pytest.fixture(scope="module")
def shared_sites(module_apps: Apps) -> tuple[FlaskClient, Site, Site]:
    """For the tests that only read (or whose every write must be refused)."""
    return populate(module_apps())


def north_snapshot(client: FlaskClient, north: Site) -> tuple[Any, Any, list[str]]:
    return (client.get("/cases/p01", headers=north.headers).get_json(),
            client.get("/cases/p01/pathway", headers=north.headers).get_json(), ids(client, north))


def test_a_site_cannot_read_another_sites_case(shared_sites: tuple[FlaskClient, Site, Site]) -> None:
    client, north, south = shared_sites
    for path in ("/cases/p01", "/cases/p01/pathway", "/cases/p01?inferred=true"):
        for accept in ("application/json", "text/turtle", "application/ld+json", "application/n-triples"):
            response = client.get(path, headers={**south.headers, "Accept": accept})
            assert_problem(response, 404)
    assert ids(client, south) == ["p03"]
    assert ids(client, south, category="primary-non-responder") == []
    assert sorted(ids(client, north)) == ["p01", "p08"]


@pytest.mark.parametrize("attempt", [
    {"headers": {"X-Site": "north"}}, {"query_string": {"site": "north"}},
])
def test_the_site_comes_from_the_token_only(shared_sites: tuple[FlaskClient, Site, Site],
                                            attempt: dict[str, Any]) -> None:
    client, north, south = shared_sites
    options = {**attempt, "headers": {**south.headers, **attempt.get("headers", {})}}
    assert_problem(client.get("/cases/p01", **options), 404)
    listing = client.get("/cases", **options)
    assert [item["id"] for item in listing.get_json()["items"]] == ["p03"]


def test_a_site_cannot_change_or_delete_another_sites_case(two_sites: tuple[FlaskClient, Site, Site]) -> None:
    client, north, south = two_sites
    before = north_snapshot(client, north)
    assert_problem(client.delete("/cases/p01", headers=south.headers), (403, 404))
    changed = vignette("p03", id="p01", age=71)
    response = client.put("/cases/p01", json=changed, headers=south.headers)
    assert response.status_code in (201, 403, 404), response.get_data(as_text=True)[:300]
    assert north_snapshot(client, north) == before
    if response.status_code == 201:  # south made a p01 of its own, which south alone sees
        assert client.get("/cases/p01", headers=south.headers).get_json()["age"] == changed["age"]
        assert client.delete("/cases/p01", headers=south.headers).status_code == 204
    assert north_snapshot(client, north) == before


def test_the_same_case_id_lives_in_both_sites_independently(two_sites: tuple[FlaskClient, Site, Site]) -> None:
    client, north, south = two_sites
    south_p01 = vignette("p03", id="p01", age=71)
    assert client.post("/cases", json=south_p01, headers=south.headers).status_code == 201
    north_case = client.get("/cases/p01", headers=north.headers).get_json()
    south_case = client.get("/cases/p01", headers=south.headers).get_json()
    assert north_case["age"] == vignette("p01")["age"] and south_case["age"] == south_p01["age"]
    assert client.get("/cases/p01/pathway", headers=north.headers).get_json()["response"]["category"] \
        == "primary-non-responder"
    assert client.get("/cases/p01/pathway", headers=south.headers).get_json()["response"]["category"] == "responder"
    assert client.delete("/cases/p01", headers=south.headers).status_code == 204
    assert client.get("/cases/p01", headers=north.headers).status_code == 200


def sparql(client: FlaskClient, who: Site, query: str) -> Any:
    response = client.get("/sparql", query_string={"query": query}, headers=who.headers)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return response


def test_sparql_sees_only_the_callers_site(shared_sites: tuple[FlaskClient, Site, Site]) -> None:
    client, north, south = shared_sites
    graphs = sparql(client, south, "SELECT DISTINCT ?g WHERE { GRAPH ?g { ?s ?p ?o } }").get_json()
    names = {b["g"]["value"] for b in graphs["results"]["bindings"]}
    assert f"{CASE_BASE}south/p03" in names
    assert not any("/north/" in name for name in names), names
    north_iri = f"<{CASE_BASE}north/p01>"
    for query in (f"SELECT * WHERE {{ {north_iri} ?p ?o }}",
                  f"SELECT * WHERE {{ GRAPH {north_iri} {{ ?s ?p ?o }} }}",
                  f"SELECT * WHERE {{ ?s ?p {north_iri} }}",
                  f"SELECT * FROM NAMED {north_iri} WHERE {{ GRAPH ?g {{ ?s ?p ?o }} }}",
                  f"SELECT * FROM {north_iri} WHERE {{ ?s ?p ?o }}",
                  "SELECT ?case WHERE { ?case a <https://w3id.org/esi-kg/ontology#PatientCase> }"):
        text = sparql(client, south, query).get_data(as_text=True)
        assert "/north/" not in text, (query, text[:300])
    ask = sparql(client, south, f"ASK {{ {north_iri} ?p ?o }}").get_json()
    assert ask["boolean"] is False
    construct = client.get("/sparql", query_string={"query": "CONSTRUCT WHERE { ?s ?p ?o }"},
                           headers={**south.headers, "Accept": "application/n-triples"})
    assert construct.status_code == 200 and b"/north/" not in construct.data
    dataset = client.get("/sparql", query_string={"query": "SELECT * WHERE { ?s ?p ?o }",
                                                  "default-graph-uri": f"{CASE_BASE}north/p01"},
                         headers=south.headers)
    assert dataset.status_code == 200 and dataset.get_json()["results"]["bindings"] == []


@pytest.mark.parametrize("name,params", [
    ("case-explanations", {"case": f"{CASE_BASE}north/p01"}),
    ("cases-by-category", {"category": "primary-non-responder"}),
    ("cases-by-pathway", {"pathway": "urgent-spine-surgeon-consultation"}),
    ("cases-by-red-flag", {"flag": "https://w3id.org/esi-kg/ontology#RedFlag"}),
    ("pathway-counts", {}),
    ("red-flags-without-urgent-consultation", {}),
    ("rule-usage", {}),
    ("non-responders-by-failure-cause", {"cause": "structural-severity"}),
])
def test_named_queries_see_only_the_callers_site(shared_sites: tuple[FlaskClient, Site, Site], name: str,
                                                 params: dict[str, str]) -> None:
    client, north, south = shared_sites
    response = client.get(f"/queries/{name}", query_string=params, headers=south.headers)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert "/north/" not in response.get_data(as_text=True)
    if name in ("case-explanations", "cases-by-category"):  # the control: north does see its case
        seen = client.get(f"/queries/{name}", query_string=params, headers=north.headers)
        assert f"{CASE_BASE}north/p01" in seen.get_data(as_text=True)


# -- injection -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize("name,parameter", [
    ("cases-by-category", "category"), ("cases-by-pathway", "pathway"), ("non-responders-by-failure-cause", "cause"),
    ("case-explanations", "case"), ("cases-by-red-flag", "flag"), ("class-hierarchy", "term"),
])
def test_injection_through_named_query_parameters(shared_sites: tuple[FlaskClient, Site, Site], name: str,
                                                  parameter: str, value: str) -> None:
    client, north, _ = shared_sites
    response = client.get(f"/queries/{name}", query_string={parameter: value}, headers=north.headers)
    assert_problem(response, 422)
    assert "/case/" not in response.get_data(as_text=True)


@pytest.mark.parametrize("value", INJECTIONS)
@pytest.mark.parametrize("parameter", ["category", "pathway", "page", "per_page"])
def test_injection_through_list_filters(shared_sites: tuple[FlaskClient, Site, Site], parameter: str,
                                        value: str) -> None:
    client, north, _ = shared_sites
    response = client.get("/cases", query_string={parameter: value}, headers=north.headers)
    body = assert_problem(response, 422)
    assert "items" not in body and "p08" not in response.get_data(as_text=True)


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_through_case_ids(shared_sites: tuple[FlaskClient, Site, Site], value: str) -> None:
    client, north, south = shared_sites
    path = "/cases/" + quote(value, safe="")
    before = north_snapshot(client, north)
    for who in (north, south):
        for method, suffix in (("GET", ""), ("GET", "/pathway"), ("DELETE", "")):
            response = client.open(path + suffix, method=method, headers=who.headers)
            assert 400 <= response.status_code < 500, (method, value, response.status_code)
            assert "p08" not in response.get_data(as_text=True)
        response = client.put(path, json=vignette("p01", id=value), headers=who.headers)
        assert 400 <= response.status_code < 500, (value, response.status_code)
        response = client.post("/cases", json=vignette("p01", id=value), headers=who.headers)
        assert_problem(response, 422)
    assert north_snapshot(client, north) == before
    assert ids(client, south) == ["p03"]


@pytest.mark.parametrize("value", INJECTIONS[:2])
def test_injection_in_a_query_is_only_text(shared_sites: tuple[FlaskClient, Site, Site], value: str) -> None:
    """A caller's own SPARQL may hold any string: it stays a literal and reaches no other site."""
    client, _, south = shared_sites
    literal = value.replace("\\", "\\\\").replace('"', '\\"')
    query = f'SELECT ?case WHERE {{ ?case <https://w3id.org/esi-kg/ontology#hasResponseCategory> ?c . ' \
            f'FILTER (STR(?c) = "{literal}") }}'
    response = client.get("/sparql", query_string={"query": query}, headers=south.headers)
    assert response.status_code == 200
    assert response.get_json()["results"]["bindings"] == []
