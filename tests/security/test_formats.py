"""Formats and sizes: only the contract's formats are parsed, and no body is too big, too deep,
too long or too clever to be answered quickly with a 4xx (or a valid answer).
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from .conftest import DATA, ESI, Apps, Site, assert_problem, issue, settings_of, vignette

MAX_BODY = 1_000_000  # Settings().max_body_bytes
PREFIXES = f"@prefix esi: <{ESI}> .\n@prefix : <{ESI}> .\n@prefix owl: <http://www.w3.org/2002/07/owl#> .\n"
CASE = "<https://w3id.org/esi-kg/case/hostile>"
TWIN_TTL = (DATA / "cases" / "rdf-twin.ttl").read_bytes()
TWIN_CASE = "<https://w3id.org/esi-kg/case/rdf-twin>"

BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + "".join(f' <!ENTITY lol{i} "{("&lol;" if i == 1 else f"&lol{i - 1};") * 10}">\n' for i in range(1, 10))
    + ']>\n<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
      f'xmlns:esi="{ESI}"><esi:PatientCase rdf:about="https://w3id.org/esi-kg/case/lol">'
      "<esi:note>&lol9;</esi:note></esi:PatientCase></rdf:RDF>\n"
).encode()

WRITES = ["POST /pathway", "POST /cases", "PUT /cases/hostile"]


@pytest.fixture(scope="module")
def shared(module_apps: Apps) -> tuple[FlaskClient, Site]:
    """One app for the requests that must all be refused (nothing is stored by any of them)."""
    app = module_apps()
    return app.test_client(), issue(settings_of(app), "north", "pathway:run", "cases:read", "cases:write")


def send(client: FlaskClient, who: Site, endpoint: str, body: bytes, content_type: str | None,
         **options: Any) -> Any:
    method, path = endpoint.split(" ")
    return client.open(path, method=method, data=body, content_type=content_type, headers=who.headers, **options)


def timed(call: Any) -> tuple[Any, float]:
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def assert_nothing_stored(client: FlaskClient, who: Site) -> None:
    listing = client.get("/cases", headers=who.headers)
    assert listing.status_code == 200 and listing.get_json()["total"] == 0, listing.get_json()


# -- only the contract's formats -------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [
    "application/rdf+xml", "text/plain", "application/xml", "text/xml", "text/n3", "application/trig",
    "application/n-quads", "text/html", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
    "application/octet-stream", None,
])
@pytest.mark.parametrize("endpoint", WRITES)
def test_other_formats_are_refused_unread(shared: tuple[FlaskClient, Site], endpoint: str,
                                          content_type: str | None) -> None:
    client, who = shared
    response, elapsed = timed(lambda: send(client, who, endpoint, BILLION_LAUGHS, content_type))
    assert_problem(response, 415)
    assert elapsed < 1
    assert_nothing_stored(client, who)


@pytest.mark.parametrize("content_type", ["text/turtle; charset=utf-8", "application/json; charset=utf-8",
                                          "TEXT/TURTLE"])
def test_parameters_and_case_of_a_media_type_do_not_open_another_parser(shared: tuple[FlaskClient, Site],
                                                                         content_type: str) -> None:
    client, who = shared
    response = send(client, who, "POST /pathway", BILLION_LAUGHS, content_type)
    assert_problem(response, 400)  # read by the named parser, which finds no Turtle / JSON in it


# -- sizes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [*WRITES, "POST /sparql"])
def test_a_body_over_the_limit_is_refused(shared: tuple[FlaskClient, Site], endpoint: str) -> None:
    client, who = shared
    content_type = "application/sparql-query" if endpoint.endswith("sparql") else "application/json"
    response, elapsed = timed(lambda: send(client, who, endpoint, b" " * (MAX_BODY + 1), content_type))
    assert_problem(response, 413)
    assert elapsed < 1


def _chunked(client: FlaskClient, who: Site, endpoint: str, body: bytes, content_type: str) -> Any:
    """A body without Content-Length, as a server that handles chunked requests (gunicorn) passes it."""
    method, path = endpoint.split(" ")
    return client.open(path, method=method, input_stream=io.BytesIO(body), content_type=content_type,
                       headers={**who.headers, "Transfer-Encoding": "chunked"},
                       environ_overrides={"wsgi.input_terminated": True})


@pytest.mark.parametrize("endpoint", [*WRITES, "POST /sparql"])
def test_a_chunked_body_over_the_limit_is_refused_not_cut(shared: tuple[FlaskClient, Site], endpoint: str) -> None:
    """Werkzeug cuts a streamed body at the limit; cut, this one would be a valid case (or query)."""
    client, who = shared
    if endpoint.endswith("sparql"):
        body, content_type = b"SELECT * WHERE { ?s ?p ?o } LIMIT 1" + b" " * MAX_BODY, "application/sparql-query"
    else:
        case = json.dumps(vignette("p01", id="hostile")).encode()
        body, content_type = case + b" " * (MAX_BODY + 1 - len(case)), "application/json"
    assert_problem(_chunked(client, who, endpoint, body, content_type), 413)
    assert_nothing_stored(client, who)


def test_a_chunked_body_within_the_limit_is_read_whole(make_app: Apps) -> None:
    app = make_app()
    who = issue(settings_of(app), "north", "pathway:run", "cases:read", "cases:write")
    case = json.dumps(vignette("p01", id="streamed")).encode()
    body = case + b" " * (MAX_BODY - len(case))  # exactly at the limit
    response = _chunked(app.test_client(), who, "POST /cases", body, "application/json")
    assert response.status_code == 201, response.get_data(as_text=True)[:300]
    assert response.get_json()["case"] == "streamed"


# -- depth -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,depth", [
    ("arrays", 17), ("arrays", 1_000), ("arrays", 450_000),
    ("objects", 17), ("objects", 1_000), ("objects", 160_000),
    ("in-a-field", 17), ("in-a-field", 1_000), ("in-a-field", 450_000),
])
def test_deeply_nested_json_is_malformed(shared: tuple[FlaskClient, Site], shape: str, depth: int) -> None:
    client, who = shared
    if shape == "arrays":
        body = "[" * depth + "]" * depth
    elif shape == "objects":
        body = '{"a":' * depth + "1" + "}" * depth
    else:
        body = json.dumps(vignette("p01"))[:-1] + ', "findings": ' + "[" * depth + "]" * depth + "}"
    assert len(body) <= MAX_BODY
    response, elapsed = timed(lambda: send(client, who, "POST /pathway", body.encode(), "application/json"))
    assert_problem(response, 400)
    assert elapsed < 2


def _nested_turtle(depth: int, kind: str) -> bytes:
    if kind == "blank-nodes":
        inner = "[ :p " * depth + "1" + " ]" * depth
    elif kind == "collections":
        inner = "(" * depth + ")" * depth
    else:  # named nodes in a chain
        return (PREFIXES + f"{CASE} a esi:PatientCase ; :hasInjection <urn:n0> .\n"
                + "".join(f"<urn:n{i}> :p <urn:n{i + 1}> .\n" for i in range(depth))).encode()
    return (PREFIXES + f"{CASE} a esi:PatientCase ; :hasInjection {inner} .\n").encode()


@pytest.mark.parametrize("kind,depth", [
    ("blank-nodes", 17), ("blank-nodes", 200), ("blank-nodes", 1_900), ("blank-nodes", 140_000),
    ("collections", 17), ("collections", 1_900), ("collections", 490_000),
    ("named-chain", 17), ("named-chain", 200), ("named-chain", 1_900),
])
def test_deeply_nested_turtle_is_refused_never_500(shared: tuple[FlaskClient, Site], kind: str, depth: int) -> None:
    client, who = shared
    body = _nested_turtle(depth, kind)
    assert len(body) <= MAX_BODY
    response, elapsed = timed(lambda: send(client, who, "POST /cases", body, "text/turtle"))
    assert_problem(response, (400, 422))
    assert elapsed < 2
    assert_nothing_stored(client, who)


@pytest.mark.parametrize("kind", ["objects", "lists", "contexts"])
def test_deeply_nested_jsonld_is_refused_never_500(shared: tuple[FlaskClient, Site], kind: str) -> None:
    client, who = shared
    head = f'{{"@context":{{"@vocab":"{ESI}"}},"@id":"https://w3id.org/esi-kg/case/hostile","@type":"PatientCase",'
    if kind == "objects":
        body = head + '"hasInjection":' + '{"p":' * 150_000 + "1" + "}" * 150_001
    elif kind == "lists":
        body = head + '"hasInjection":{"@list":' + "[" * 300_000 + "1" + "]" * 300_000 + "}}"
    else:
        body = '{"@context":' * 70_000 + "{}" + "}" * 70_000 + "}"
    assert len(body) <= MAX_BODY
    response, elapsed = timed(lambda: send(client, who, "POST /cases", body.encode(), "application/ld+json"))
    assert_problem(response, (400, 422))
    assert elapsed < 2


# -- the size of a case --------------------------------------------------------------------------------------


@pytest.mark.parametrize("media_type", ["text/turtle", "application/json"])
def test_a_case_over_max_case_triples_is_refused(shared: tuple[FlaskClient, Site], media_type: str) -> None:
    client, who = shared
    if media_type == "text/turtle":
        body = TWIN_TTL + f"\n{TWIN_CASE} esi:hasPainRegion ".encode() + b", ".join(
            f"<urn:region:{i}>".encode() for i in range(2_100)) + b" ."
    else:
        case = vignette("p01", id="many", pain_scores=[{"date": "2026-06-10", "score": i % 11} for i in range(2_100)])
        body = json.dumps(case).encode()
    response, elapsed = timed(lambda: send(client, who, "POST /cases", body, media_type))
    body_json = assert_problem(response, 422)
    assert any("at most" in v["message"] for v in body_json["violations"]), body_json
    assert elapsed < 2
    assert_nothing_stored(client, who)


def test_a_smaller_max_case_triples_is_enforced(make_app: Apps) -> None:
    app = make_app(max_case_triples=20)
    who = issue(settings_of(app), "north", "pathway:run")
    response = app.test_client().post("/pathway", data=TWIN_TTL, content_type="text/turtle", headers=who.headers)
    assert_problem(response, 422)


# -- schema in a case ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [
    "esi:herniated-disc <http://www.w3.org/2000/01/rdf-schema#subClassOf> esi:facet-joint-arthritis .",
    "esi:NonResponder owl:equivalentClass esi:PatientCase .",
    f"{TWIN_CASE} esi:hasDiagnosis <https://example.org/d> . <https://example.org/d> a owl:Class .",
    f"{TWIN_CASE} owl:sameAs <https://w3id.org/esi-kg/case/another> .",
    "esi:foot-drop esi:urgencyRank 0 .",
    f"{TWIN_CASE} <http://www.w3.org/2000/01/rdf-schema#label> \"x\" .",
    "owl:Thing a owl:Class .",
    f"{TWIN_CASE} a owl:TransitiveProperty .",
], ids=["subClassOf", "equivalentClass", "owl-Class", "sameAs", "about-a-term", "rdfs-label", "owl-Thing",
        "TransitiveProperty"])
@pytest.mark.parametrize("endpoint", WRITES)
def test_schema_triples_are_refused(shared: tuple[FlaskClient, Site], endpoint: str, extra: str) -> None:
    client, who = shared
    body = TWIN_TTL + b"\n@prefix owl: <http://www.w3.org/2002/07/owl#> .\n" + extra.encode()
    response = send(client, who, endpoint, body, "text/turtle")
    assert_problem(response, 422)
    assert_nothing_stored(client, who)


def _same_as_chain(n: int, attached: str) -> bytes:
    links = "".join(f"<urn:same:{i}> owl:sameAs <urn:same:{i + 1}> .\n" for i in range(n - 1))
    if attached == "from-the-case":
        head = f"{TWIN_CASE} owl:sameAs <urn:same:0> .\n"
    elif attached == "from-a-node":
        head = f"{TWIN_CASE} esi:hasDiagnosis <urn:same:0> . <urn:same:0> a esi:herniated-disc .\n"
    else:
        head = ""
    return TWIN_TTL + b"\n@prefix owl: <http://www.w3.org/2002/07/owl#> .\n" + (head + links).encode()


@pytest.mark.parametrize("attached", ["from-the-case", "from-a-node", "detached"])
@pytest.mark.parametrize("endpoint", ["POST /pathway", "POST /cases"])
def test_an_owl_same_as_chain_of_80_nodes_is_refused_fast(shared: tuple[FlaskClient, Site], endpoint: str,
                                                          attached: str) -> None:
    client, who = shared
    body = _same_as_chain(80, attached)
    response, elapsed = timed(lambda: send(client, who, endpoint, body, "text/turtle"))
    assert_problem(response, 422)
    assert elapsed < 2
    assert_nothing_stored(client, who)


# -- long literals ----------------------------------------------------------------------------------------


def _long_literal(size: int, line_break: str, quotes: str) -> bytes:
    head = TWIN_TTL + f"\n{TWIN_CASE} esi:note {quotes}".encode()
    tail = f"{quotes} .\n".encode()
    unit = line_break.encode()
    return head + unit * ((size - len(head) - len(tail)) // len(unit)) + tail


@pytest.mark.parametrize("line_break,quotes", [("\n", '"""'), ("\r\n", '"""'), ("a\n", "'''"), ("\\n", '"')],
                         ids=["lf-long", "crlf-long", "text-lines-long", "escaped-short"])
def test_a_one_mib_turtle_literal_is_refused_at_the_door(shared: tuple[FlaskClient, Site], line_break: str,
                                                         quotes: str) -> None:
    client, who = shared
    body = _long_literal(1 << 20, line_break, quotes)
    response, elapsed = timed(lambda: send(client, who, "POST /cases", body, "text/turtle"))
    assert_problem(response, 413)
    assert elapsed < 2


@pytest.mark.parametrize("line_break,quotes", [("\n", '"""'), ("\r\n", '"""'), ("a\n", "'''"), ("\\n", '"')],
                         ids=["lf-long", "crlf-long", "text-lines-long", "escaped-short"])
def test_a_one_mib_turtle_literal_is_answered_fast_when_let_in(make_app: Apps, line_break: str,
                                                               quotes: str) -> None:
    """With a body limit that lets it in, the parser reads 1 MiB of line breaks in well under 2 s."""
    app = make_app(max_body_bytes=4 << 20)
    who = issue(settings_of(app), "north", "pathway:run", "cases:read", "cases:write")
    body = _long_literal(1 << 20, line_break, quotes)
    response, elapsed = timed(lambda: app.test_client().post("/pathway", data=body, content_type="text/turtle",
                                                             headers=who.headers))
    assert elapsed < 2
    if response.status_code != 200:
        assert_problem(response, (400, 422))


# -- reasoning time limit ------------------------------------------------------------------------------------


def test_reasoning_past_its_time_limit_is_503_and_the_pool_recovers(tmp_path: Any) -> None:
    from kgservice.api import create_app
    from kgservice.config import Settings

    settings = Settings(reasoning_workers=1, reasoning_timeout_s=0.001, auth_required=False, data_dir=tmp_path)
    app: Flask = create_app(settings)
    try:
        client = app.test_client()
        response = client.post("/pathway", json=vignette("p01"))
        body = assert_problem(response, 503)
        assert "time" in body["title"].lower()
        pool = app.extensions["esi"].pool
        assert pool is not None
        pool.settings = settings.with_(reasoning_timeout_s=30)  # the limit of the next request: a normal one
        response = client.post("/pathway", json=vignette("p01"))
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
        assert response.get_json()["response"]["category"] == "primary-non-responder"
    finally:
        app.extensions["esi"].close()
        app.extensions["esi-audit"].close()
