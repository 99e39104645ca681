"""Nothing goes out: every way a request could make the service fetch a URL reaches a local
listener zero times.

The listener (``conftest.Listener``) counts the TCP connections it accepts. Two positive
controls show that it would notice: a plain connection, and Oxigraph's own HTTP client
running a ``SERVICE`` clause when nothing stops it (the fetch happens in Rust, where the
process-wide network guard cannot see it, so ``guard.check_query`` is what stops it).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pyoxigraph as ox
import pytest
from flask.testing import FlaskClient

from .conftest import ESI, Apps, Listener, Site, assert_problem, issue, settings_of, vignette

TWIN_TTL = """@prefix esi: <https://w3id.org/esi-kg/ontology#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
<{case}> a esi:PatientCase ;
    esi:ageInYears 58 ; esi:hasSex esi:male ; esi:hasPainRegion esi:lower-back , esi:leg ;
    esi:hasDiagnosis <{node}diagnosis> ;
    esi:hadPriorSpinalSurgery false ;
    esi:hasInjection <{node}injection> ;
    esi:hasPainScore <{node}score0> , <{node}score1> .
<{node}diagnosis> a esi:herniated-disc .
<{node}injection> a esi:EpiduralSteroidInjection ; esi:performedOn "2026-06-10"^^xsd:date ;
    esi:hasApproach esi:interlaminar ; esi:atSpinalRegion esi:lumbar .
<{node}score0> a esi:PainScoreObservation ; esi:observedOn "2026-06-10"^^xsd:date ; esi:scoreValue 8 .
<{node}score1> a esi:PainScoreObservation ; esi:observedOn "2026-06-24"^^xsd:date ; esi:scoreValue 8 .
"""

JSONLD_CONTEXT = {
    "esi": ESI,
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "@vocab": ESI,
}


def jsonld_case(context: Any) -> bytes:
    return json.dumps({
        "@context": context,
        "@id": "https://w3id.org/esi-kg/case/jsonld-1",
        "@type": "PatientCase",
        "ageInYears": 58,
        "hasSex": {"@id": "esi:male"},
    }).encode()


def stored_ids(client: FlaskClient, who: Site) -> list[str]:
    response = client.get("/cases", headers=who.headers)
    assert response.status_code == 200
    return [item["id"] for item in response.get_json()["items"]]


@pytest.fixture(scope="module")
def shared_app(module_apps: Apps) -> tuple[FlaskClient, Site]:
    """One app for the tests whose requests must all be refused: site north, holding p01."""
    app = module_apps()
    who = issue(settings_of(app), "north", "pathway:run", "cases:read", "cases:write")
    client = app.test_client()
    assert client.post("/cases", json=vignette("p01"), headers=who.headers).status_code == 201
    return client, who


@pytest.fixture
def shared_client(shared_app: tuple[FlaskClient, Site]) -> FlaskClient:
    return shared_app[0]


@pytest.fixture
def shared_north(shared_app: tuple[FlaskClient, Site]) -> Site:
    return shared_app[1]


# -- positive controls -------------------------------------------------------------------------------


def test_the_listener_counts_a_connection(listener: Listener) -> None:
    with socket.create_connection(("127.0.0.1", listener.port), timeout=2):
        pass
    assert listener.hits == 1


def test_oxigraph_fetches_a_service_clause_when_nothing_stops_it(listener: Listener) -> None:
    """The reason for check_query: Oxigraph's engine does call a SERVICE endpoint."""
    query = f"SELECT * WHERE {{ SERVICE <{listener.url('/sparql')}> {{ ?s ?p ?o }} }}"
    with pytest.raises(OSError):  # the listener hangs up without an answer
        list(ox.Store().query(query))  # type: ignore[arg-type]
    assert listener.hits == 1
    assert listener.requests[0].startswith(b"POST /sparql")


# -- SPARQL ---------------------------------------------------------------------------------------------

#: Queries that would make Oxigraph fetch (SERVICE), and updates that would (LOAD); ``{url}``
#: is the listener. The last SERVICE ones hid it from check_query's tokenizer before it read
#: comments, IRIs and prefixed names as SPARQL does (tests/security/test_query_check.py has more).
OUTBOUND_QUERIES = {
    "service": "SELECT * WHERE { SERVICE <{url}sparql> { ?s ?p ?o } }",
    "service-silent": "SELECT * WHERE { VALUES ?q { 1 } SERVICE SILENT <{url}sparql> { ?s ?p ?o } }",
    "service-lower-case": "select * where { values ?q { 1 } service <{url}sparql> { ?s ?p ?o } }",
    "service-prefixed-name": "PREFIX r: <{url}> SELECT * WHERE { VALUES ?q { 1 } SERVICE r:sparql { ?s ?p ?o } }",
    "service-variable": "SELECT * WHERE { BIND(<{url}sparql> AS ?e) SERVICE ?e { ?s ?p ?o } }",
    "service-in-subquery": "SELECT * WHERE { { SELECT * WHERE { VALUES ?q { 1 } SERVICE <{url}x> { ?s ?p ?o } } } }",
    "service-after-cr-comment": "SELECT * WHERE { VALUES ?q { 1 } # note\rSERVICE <{url}a> { ?x ?y ?z } }",
    "service-after-escaped-hash": "PREFIX ex: <http://example.org/>\n"
                                  "SELECT * WHERE { VALUES ?q { ex:a\\# } SERVICE <{url}b> { ?x ?y ?z } }",
    "service-after-escaped-quote": "PREFIX ex: <http://example.org/>\n"
                                   "SELECT * WHERE { VALUES ?q { ex:a\\' } SERVICE <{url}c> { ?x ?y ?z } } #'",
    "service-after-uchar-iri": "SELECT * WHERE { VALUES ?q { <http://x/\\u0041#> } SERVICE <{url}d> { ?x ?y ?z } }",
    "service-after-nbsp-iri": "SELECT * WHERE { VALUES ?q { <http://x/\u00a0#> } SERVICE <{url}e> { ?x ?y ?z } }",
    "load": "LOAD <{url}data.ttl>",
    "load-into": "LOAD SILENT <file:///etc/passwd> INTO GRAPH <https://w3id.org/esi-kg/graph/x>",
}


def _send(client: FlaskClient, who: Site, transport: str, query: str) -> Any:
    if transport == "get":
        return client.get("/sparql", query_string={"query": query}, headers=who.headers)
    if transport == "post-form":
        return client.post("/sparql", data={"query": query}, headers=who.headers)
    return client.post("/sparql", data=query.encode(), content_type="application/sparql-query", headers=who.headers)


@pytest.mark.parametrize("transport", ["get", "post-form", "post-query"])
@pytest.mark.parametrize("name", sorted(OUTBOUND_QUERIES))
def test_sparql_cannot_reach_out(shared_client: FlaskClient, shared_north: Site, listener: Listener, name: str,
                                 transport: str) -> None:
    query = OUTBOUND_QUERIES[name].replace("{url}", listener.url())
    assert_problem(_send(shared_client, shared_north, transport, query), 400)
    listener.assert_untouched(name)


@pytest.mark.parametrize("update", ["LOAD <{url}data.ttl>", "LOAD <file:///etc/passwd>",
                                    "INSERT DATA { <urn:a> <urn:b> <urn:c> }"])
@pytest.mark.parametrize("transport", ["get", "post-form", "post-update"])
def test_sparql_updates_are_refused(shared_client: FlaskClient, shared_north: Site, listener: Listener, update: str,
                                    transport: str) -> None:
    text = update.replace("{url}", listener.url())
    if transport == "get":
        response = shared_client.get("/sparql", query_string={"update": text}, headers=shared_north.headers)
    elif transport == "post-form":
        response = shared_client.post("/sparql", data={"update": text}, headers=shared_north.headers)
    else:
        response = shared_client.post("/sparql", data=text.encode(), content_type="application/sparql-update",
                                      headers=shared_north.headers)
    assert_problem(response, 403)
    listener.assert_untouched(update)


#: Datasets naming graphs outside ESI-KG's: allowed, and empty (Oxigraph looks a graph name up in
#: the site's store; it never fetches one).
OUTSIDE_DATASETS = {
    "from": "SELECT * FROM <{url}g> WHERE { ?s ?p ?o }",
    "from-named": "SELECT * FROM NAMED <{url}g> WHERE { GRAPH ?g { ?s ?p ?o } }",
    "from-prefixed-name": "PREFIX r: <{url}> SELECT * FROM r:g WHERE { ?s ?p ?o }",
    "from-relative-to-base": "BASE <{url}> SELECT * FROM <g> WHERE { ?s ?p ?o }",
    "from-file": "SELECT * FROM <file:///etc/passwd> WHERE { ?s ?p ?o }",
    "from-named-file": "SELECT * FROM NAMED <file:///etc/passwd> WHERE { GRAPH ?g { ?s ?p ?o } }",
}


@pytest.mark.parametrize("transport", ["get", "post-form", "post-query"])
@pytest.mark.parametrize("name", sorted(OUTSIDE_DATASETS))
def test_a_graph_outside_the_site_is_empty_and_never_fetched(shared_client: FlaskClient, shared_north: Site,
                                                             listener: Listener, name: str, transport: str) -> None:
    query = OUTSIDE_DATASETS[name].replace("{url}", listener.url())
    response = _send(shared_client, shared_north, transport, query)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json()["results"]["bindings"] == []
    listener.assert_untouched(name)


@pytest.mark.parametrize("parameter", ["default-graph-uri", "named-graph-uri"])
@pytest.mark.parametrize("target", ["{url}g", "file:///etc/passwd", "ftp://127.0.0.1/x"])
@pytest.mark.parametrize("transport", ["get", "post-form"])
def test_a_protocol_dataset_outside_the_site_is_empty_and_never_fetched(
        shared_client: FlaskClient, shared_north: Site, listener: Listener, parameter: str, target: str,
        transport: str) -> None:
    fields = {"query": "SELECT * WHERE { { ?s ?p ?o } UNION { GRAPH ?g { ?s ?p ?o } } } LIMIT 1",
              parameter: target.replace("{url}", listener.url())}
    if transport == "get":
        response = shared_client.get("/sparql", query_string=fields, headers=shared_north.headers)
    else:
        response = shared_client.post("/sparql", data=fields, headers=shared_north.headers)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json()["results"]["bindings"] == []
    listener.assert_untouched(parameter)


def test_the_word_service_in_a_string_or_comment_is_not_a_fetch(shared_client: FlaskClient, shared_north: Site,
                                                                listener: Listener) -> None:
    """No false alarm, and no fetch either: SERVICE inside a literal or a comment is text."""
    url = listener.url()
    query = f'SELECT ?x WHERE {{ BIND("SERVICE <{url}>" AS ?x) }} # SERVICE <{url}>'
    response = shared_client.get("/sparql", query_string={"query": query}, headers=shared_north.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["results"]["bindings"][0]["x"]["value"] == f"SERVICE <{url}>"
    listener.assert_untouched("SERVICE in a literal")


# -- case input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("context", [
    "{url}context.jsonld",
    ["{url}context.jsonld", JSONLD_CONTEXT],
    "file:///etc/passwd",
    {"@import": "{url}context.jsonld", "@version": 1.1, "@vocab": ESI},
    {"@import": "file:///etc/passwd", "@version": 1.1, "@vocab": ESI},
    {**JSONLD_CONTEXT, "sub": {"@id": "esi:x", "@context": "{url}scoped.jsonld"}},
    {**JSONLD_CONTEXT, "@base": "{url}"},
], ids=["remote", "remote-in-array", "file", "import", "import-file", "scoped-remote", "base"])
@pytest.mark.parametrize("endpoint", ["POST /pathway", "POST /cases", "PUT /cases/jsonld-1"])
def test_jsonld_contexts_are_never_fetched(shared_client: FlaskClient, shared_north: Site, listener: Listener,
                                          context: Any, endpoint: str) -> None:
    context = json.loads(json.dumps(context).replace("{url}", listener.url()))
    if isinstance(context, dict) and "sub" in context:
        body = json.loads(jsonld_case(context))
        body["sub"] = {"@id": "https://w3id.org/esi-kg/case/jsonld-1/n", "ageInYears": 1}
        data = json.dumps(body).encode()
    else:
        data = jsonld_case(context)
    method, path = endpoint.split(" ")
    response = shared_client.open(path, method=method, data=data, content_type="application/ld+json",
                                  headers=shared_north.headers)
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)[:300]
    assert_problem(response, response.status_code)
    listener.assert_untouched(f"{endpoint} with @context {context!r}")
    assert stored_ids(shared_client, shared_north) == ["p01"]


@pytest.mark.parametrize("media_type", ["text/turtle", "application/n-triples"])
@pytest.mark.parametrize("endpoint", ["POST /pathway", "POST /cases"])
def test_iris_in_a_case_are_not_dereferenced(secure_client: FlaskClient, north: Site, listener: Listener,
                                             media_type: str, endpoint: str) -> None:
    """A case whose every node is named by an IRI on the listener is read, never fetched."""
    ttl = TWIN_TTL.format(case=listener.url("/case/twin-1"), node=listener.url("/node/"))
    body = ox.serialize(ox.parse(ttl.encode(), format=ox.RdfFormat.TURTLE),
                        format=ox.RdfFormat.TURTLE if media_type == "text/turtle" else ox.RdfFormat.N_TRIPLES)
    method, path = endpoint.split(" ")
    response = secure_client.open(path, method=method, data=body, content_type=media_type, headers=north.headers)
    assert response.status_code in (200, 201), response.get_data(as_text=True)[:500]
    assert response.get_json()["case"] == "twin-1"
    listener.assert_untouched(endpoint)


@pytest.mark.parametrize("extra", [
    "<{case}> <http://www.w3.org/2002/07/owl#imports> <{url}ontology.ttl> .",
    "<{case}> <http://www.w3.org/2000/01/rdf-schema#seeAlso> <{url}more.ttl> .",
    "<{case}> <http://www.w3.org/2000/01/rdf-schema#isDefinedBy> <file:///etc/passwd> .",
    "<{case}> <http://www.w3.org/ns/shacl#shapesGraph> <{url}shapes.ttl> .",
], ids=["owl-imports", "rdfs-seeAlso", "isDefinedBy-file", "sh-shapesGraph"])
def test_links_to_more_data_are_not_followed(secure_client: FlaskClient, north: Site, listener: Listener,
                                             extra: str) -> None:
    case = "https://w3id.org/esi-kg/case/twin-2"
    ttl = TWIN_TTL.format(case=case, node=case + "/") + extra.format(case=case, url=listener.url())
    response = secure_client.post("/cases", data=ttl.encode(), content_type="text/turtle", headers=north.headers)
    assert response.status_code in (201, 422), response.get_data(as_text=True)[:500]
    listener.assert_untouched(extra)


def test_a_json_case_with_urls_in_its_fields_fetches_nothing(shared_client: FlaskClient, shared_north: Site,
                                                             listener: Listener) -> None:
    url = listener.url("/x")
    case = vignette("p01", id="url-fields", sex=url, diagnoses=[url], treatments_tried=[url])
    response = shared_client.post("/pathway", json=case, headers=shared_north.headers)
    assert_problem(response, 422)
    listener.assert_untouched("JSON case")


# -- named queries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,parameter", [
    ("case-explanations", "case"),
    ("cases-by-red-flag", "flag"),
    ("class-hierarchy", "term"),
    ("cases-by-category", "category"),
    ("cases-by-pathway", "pathway"),
    ("non-responders-by-failure-cause", "cause"),
])
@pytest.mark.parametrize("value", ["{url}case/north/p01", "file:///etc/passwd", "{url}x> } SERVICE <{url}y> { "])
def test_named_query_parameters_are_never_fetched(shared_client: FlaskClient, shared_north: Site, listener: Listener,
                                                  name: str, parameter: str, value: str) -> None:
    value = value.replace("{url}", listener.url())
    response = shared_client.get(f"/queries/{name}", query_string={parameter: value}, headers=shared_north.headers)
    if response.status_code == 200:  # an http(s) IRI parameter: bound as a term, matching nothing
        assert response.get_json()["results"]["bindings"] == []
    else:
        assert_problem(response, 422)
    listener.assert_untouched(f"{name}?{parameter}={value}")


# -- the process-wide guard ----------------------------------------------------------------------

GUARD_SCRIPT = textwrap.dedent("""
    import http.client, json, socket, sys, urllib.request
    port, guarded = int(sys.argv[1]), sys.argv[2] == "guarded"
    if guarded:
        from kgservice.security.guard import install_network_guard
        install_network_guard()
    attempts = {
        "urlopen": lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=2).close(),
        "urlopen-by-name": lambda: urllib.request.urlopen(f"http://localhost:{port}/x", timeout=2).close(),
        "create_connection": lambda: socket.create_connection(("127.0.0.1", port), timeout=2).close(),
        "socket.connect": lambda: socket.socket().connect(("127.0.0.1", port)),
        "http.client": lambda: http.client.HTTPConnection("127.0.0.1", port, timeout=2).connect(),
        "getaddrinfo": lambda: socket.getaddrinfo("localhost", port),
        "udp-sendto": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", port)),
    }
    out = {}
    for name, attempt in attempts.items():
        try:
            attempt()
            out[name] = "done"
        except PermissionError:
            out[name] = "PermissionError"
        except Exception as exc:
            out[name] = type(exc).__name__
    a, b = socket.socketpair()  # Unix-domain plumbing (multiprocessing) still works
    a.sendall(b"ok"); out["socketpair"] = b.recv(2).decode(); a.close(); b.close()
    print(json.dumps(out))
""")


def _run_guard_script(listener: Listener, mode: str) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", GUARD_SCRIPT, str(listener.port), mode], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_without_the_guard_the_same_calls_connect(listener: Listener) -> None:
    """Positive control for the next test: unguarded, these calls reach the listener."""
    out = _run_guard_script(listener, "open")
    assert out["create_connection"] == "done" and out["socket.connect"] == "done"
    assert listener.hits >= 3


def test_the_network_guard_refuses_every_connection_from_python(listener: Listener) -> None:
    out = _run_guard_script(listener, "guarded")
    assert out == {
        "urlopen": "PermissionError",
        "urlopen-by-name": "PermissionError",
        "create_connection": "PermissionError",
        "socket.connect": "PermissionError",
        "http.client": "PermissionError",
        "getaddrinfo": "PermissionError",
        "udp-sendto": "PermissionError",
        "socketpair": "ok",
    }, out
    listener.assert_untouched("guarded process")
