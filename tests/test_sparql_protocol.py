"""The SPARQL 1.1 Protocol against the real server: the cases in tests/data/sparql/protocol.json.

Each case says what is sent (method, query string, body and its charset, Accept) and what must
come back (status, media type, the values of one variable, a boolean, triples). They pin the
dataset a query sees (the union by default; FROM, FROM NAMED and the protocol's parameters
replacing it), the site boundary, the formats and the base IRI. One server for the module:
site north holds p01 and p02, site south p03.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pyoxigraph as ox
import pytest
from serverutil import RealServer, Reply, create_token, http_request

from kgservice.queryrun import GRAPH_FORMATS

DATA = Path(__file__).parent / "data"
PROTOCOL = json.loads((DATA / "sparql" / "protocol.json").read_text(encoding="utf-8"))
CASE_BASE, BASE = "https://w3id.org/esi-kg/case/", "https://w3id.org/esi-kg/"
RESULTS = "{http://www.w3.org/2005/sparql-results#}"


def vignette(key: str) -> bytes:
    path = next((DATA / "vignettes").glob(f"{key}-*.json"))
    return json.dumps(json.loads(path.read_text(encoding="utf-8"))["case"]).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RealServer, str]]:
    data_dir = tmp_path_factory.mktemp("protocol") / "data"
    with RealServer(data_dir) as running:
        north = create_token(data_dir, "north", "cases:read", "cases:write")
        south = create_token(data_dir, "south", "cases:write")
        for key, token in (("p01", north), ("p02", north), ("p03", south)):
            reply = running.request("POST", "/cases", vignette(key), token=token,
                                    headers={"Content-Type": "application/json"})
            assert reply.status == 201, reply.body[:300]
        yield running, north


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("{case}", CASE_BASE).replace("{base}", BASE)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def send(server: RealServer, token: str, spec: dict[str, Any]) -> Reply:
    spec = _expand(spec)
    path = "/sparql"
    if "raw_query" in spec:
        path += "?" + spec["raw_query"]
    elif spec.get("query"):
        path += "?" + urlencode([tuple(pair) for pair in spec["query"]])
    headers: dict[str, str] = {}
    if "accept" in spec:
        headers["Accept"] = spec["accept"]
    body = None
    if "form" in spec:
        body = urlencode([tuple(pair) for pair in spec["form"]]).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif "raw" in spec:
        body = spec["raw"].encode("ascii")
    elif "body" in spec:
        body = spec["body"].encode(spec.get("encoding", "utf-8"))
    if "content_type" in spec:
        headers["Content-Type"] = spec["content_type"]
    return http_request(server.base_url, spec["method"], path, body, headers=headers,
                        token=token if spec.get("token", True) else None)


def values(reply: Reply, media: str, var: str) -> list[str]:
    """The values of ``var`` in a SELECT result, read by its own format."""
    if media.endswith("json"):
        rows = reply.json()["results"]["bindings"]
        return [row[var]["value"] for row in rows if var in row]
    if media.endswith("xml"):
        root = ET.fromstring(reply.body)
        return [b[0].text or "" for b in root.iter(f"{RESULTS}binding") if b.get("name") == var]
    if media == "text/csv":
        rows = list(csv.DictReader(io.StringIO(reply.body.decode("utf-8"), newline="")))
        return [row[var] for row in rows if row[var]]
    lines = reply.body.decode("utf-8").splitlines()
    column = lines[0].split("\t").index(f"?{var}")
    return [line.split("\t")[column].strip("<>") for line in lines[1:] if line.split("\t")[column]]


@pytest.mark.parametrize("case", PROTOCOL["tests"], ids=[t["name"] for t in PROTOCOL["tests"]])
def test_protocol_case(server: tuple[RealServer, str], case: dict[str, Any]) -> None:
    running, token = server
    expect = _expand(case["expect"])
    reply = send(running, token, case["send"])
    media = (reply.header("Content-Type") or "").split(";")[0].strip()
    context = (case["about"], reply.status, reply.body[:400])
    assert reply.status == expect["status"], context
    if reply.status >= 400:
        assert media == "application/problem+json", context
        if "problem" in expect:
            assert reply.json()["type"].endswith("/" + expect["problem"]), context
        return
    if "media" in expect:
        assert media == expect["media"], context
    if "var" in expect:
        assert sorted(values(reply, media, expect["var"])) == sorted(expect["values"]), context
    if "boolean" in expect:
        if media.endswith("xml"):
            assert ET.fromstring(reply.body).find(f"{RESULTS}boolean").text == str(expect["boolean"]).lower()  # type: ignore[union-attr]
        else:
            assert reply.json()["boolean"] is expect["boolean"], context
    if "body" in expect:
        assert reply.body.decode("utf-8") == expect["body"], context
    if "triples" in expect or "count" in expect:
        got = {(q.subject.value, q.predicate.value,  # type: ignore[union-attr]
                str(q.object) if isinstance(q.object, ox.Literal) else q.object.value)  # type: ignore[union-attr]
               for q in ox.parse(reply.body, format=GRAPH_FORMATS[media])}
        for triple in expect.get("triples", []):
            assert tuple(triple) in got, (triple, sorted(got)[:10])
        if "count" in expect:
            assert len(got) == expect["count"], sorted(got)[:10]


def test_the_service_description_is_open_and_built_from_settings(server: tuple[RealServer, str]) -> None:
    """No token needed; the endpoint named is the server's own, whatever Host the client sent."""
    running, _ = server
    reply = http_request(running.base_url, "GET", "/sparql", headers={"Host": "attacker.example"})
    assert reply.status == 200 and (reply.header("Content-Type") or "").startswith("text/turtle")
    graph = {(q.subject, q.predicate, q.object) for q in ox.parse(reply.body, format=ox.RdfFormat.TURTLE)}
    sd = "http://www.w3.org/ns/sparql-service-description#"
    endpoint = ox.NamedNode(f"{running.base_url}/sparql")
    assert (endpoint, ox.NamedNode(sd + "endpoint"), endpoint) in graph
    assert b"attacker.example" not in reply.body
    features = {o for s, p, o in graph if p == ox.NamedNode(sd + "feature")}
    assert ox.NamedNode(sd + "UnionDefaultGraph") in features
    limits = {p.value.rsplit("#", 1)[1]: o for s, p, o in graph if p.value.startswith(BASE + "service#")}
    assert {"maxResultRows", "queryTimeLimit", "maxQueryLength", "maxResponseBytes", "baseIRI"} <= set(limits)
    assert limits["baseIRI"] == ox.NamedNode(BASE)
    for media, fmt in (("application/rdf+xml", ox.RdfFormat.RDF_XML), ("application/ld+json", ox.RdfFormat.JSON_LD)):
        other = http_request(running.base_url, "GET", "/sparql", headers={"Accept": media})
        assert other.status == 200
        assert len(list(ox.parse(other.body, format=fmt))) == len(graph)


# -- real clients, with their defaults -------------------------------------------------------------

ESI_PREFIX = "PREFIX esi: <https://w3id.org/esi-kg/ontology#> "
QUERIES = {
    "select": ESI_PREFIX + "SELECT ?case WHERE { ?case a esi:PatientCase }",
    "ask": ESI_PREFIX + "ASK { ?case a esi:PatientCase }",
    "construct": ESI_PREFIX + "CONSTRUCT { ?case a esi:PatientCase } WHERE { ?case a esi:PatientCase }",
    "describe": f"DESCRIBE <{CASE_BASE}north/p01>",
}


@pytest.mark.parametrize("form", sorted(QUERIES))
@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.filterwarnings("ignore:ConjunctiveGraph is deprecated:DeprecationWarning")  # SPARQLWrapper's doing
def test_sparqlwrapper_with_its_defaults(server: tuple[RealServer, str], form: str, method: str) -> None:
    """SPARQLWrapper's default return format is XML: SPARQL XML results, and RDF/XML for graphs."""
    from rdflib import Graph
    from SPARQLWrapper import SPARQLWrapper

    running, token = server
    client = SPARQLWrapper(f"{running.base_url}/sparql")
    client.setMethod(method)
    client.addCustomHttpHeader("Authorization", f"Bearer {token}")
    client.setQuery(QUERIES[form])
    result = client.queryAndConvert()
    if form == "select":
        found = [b.firstChild.firstChild.data for b in result.getElementsByTagName("binding")]  # type: ignore[union-attr]
        assert sorted(found) == [f"{CASE_BASE}north/p01", f"{CASE_BASE}north/p02"]
    elif form == "ask":
        assert result.getElementsByTagName("boolean")[0].firstChild.data == "true"  # type: ignore[union-attr]
    else:
        assert isinstance(result, Graph)
        subjects = {str(s) for s in result.subjects()}
        assert f"{CASE_BASE}north/p01" in subjects
        assert len(result) == 2 if form == "construct" else len(result) > 2


def test_rdflib_sparqlstore_reads_the_site(server: tuple[RealServer, str]) -> None:
    """rdflib's SPARQLStore, read-only, with a token header: SELECT, ASK, CONSTRUCT and triple patterns."""
    from rdflib import RDF, Graph, URIRef
    from rdflib.plugins.stores.sparqlstore import SPARQLStore

    running, token = server
    graph = Graph(SPARQLStore(f"{running.base_url}/sparql", headers={"Authorization": f"Bearer {token}"}))
    patient = URIRef("https://w3id.org/esi-kg/ontology#PatientCase")
    cases = sorted(str(row[0]) for row in graph.query(QUERIES["select"]))  # type: ignore[index]
    assert cases == [f"{CASE_BASE}north/p01", f"{CASE_BASE}north/p02"]
    assert bool(graph.query(QUERIES["ask"]).askAnswer) is True
    constructed = graph.query(QUERIES["construct"]).graph
    assert constructed is not None and len(constructed) == 2
    described = graph.query(QUERIES["describe"]).graph
    assert described is not None and (URIRef(f"{CASE_BASE}north/p01"), RDF.type, patient) in described
    assert {str(s) for s in graph.subjects(RDF.type, patient)} == set(cases)


def _curl(*args: str) -> tuple[int, str, str]:
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    done = subprocess.run(["curl", "-s", "-S", "--max-time", "20", "-o", "-", "-w", "\n%{http_code} %{content_type}",
                           *args], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    code, _, media = status.partition(" ")
    return int(code), media, body


def test_curl_without_accept_gets_json_results_and_turtle(server: tuple[RealServer, str]) -> None:
    """The README's commands: curl with a token and --data-urlencode, no Accept (curl sends */*)."""
    running, token = server
    auth = f"Authorization: Bearer {token}"
    code, media, body = _curl("-H", auth, f"{running.base_url}/sparql", "--data-urlencode",
                              f"query={QUERIES['select']}")
    assert code == 200 and media.startswith("application/sparql-results+json"), (code, media, body[:200])
    assert len(json.loads(body)["results"]["bindings"]) == 2
    code, media, body = _curl("-G", "-H", auth, f"{running.base_url}/sparql", "--data-urlencode",
                              f"query={QUERIES['construct']}")
    assert code == 200 and media.startswith("text/turtle"), (code, media, body[:200])
    assert len(list(ox.parse(body.encode(), format=ox.RdfFormat.TURTLE))) == 2
    code, media, body = _curl(f"{running.base_url}/sparql")  # the service description: no token needed
    assert code == 200 and media.startswith("text/turtle") and "sd:Service" in body
