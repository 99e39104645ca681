"""The HTTP API through Flask's test client: every endpoint, every media type, every error status.

Tests that only read share one app per module (``stored``: the public vignettes, stored once),
as do the many tests of input that must store nothing (``empty``); tests that write get a fresh
app over an empty data directory (``client``, from conftest).
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pyoxigraph as ox
import pytest
from flask.testing import FlaskClient
from serverutil import unordered
from werkzeug.test import TestResponse

from kgservice.api import create_app
from kgservice.config import Settings
from kgservice.core.cases import case_iri
from kgservice.stores.base import ONTOLOGY_GRAPH

DATA = Path(__file__).parent / "data"
VIGNETTES = {v["name"]: v for v in (json.loads(p.read_text(encoding="utf-8"))
                                    for p in sorted((DATA / "vignettes").glob("*.json")))}
CONTRACT_CODES: dict[str, list[str]] = json.loads((DATA / "api" / "contract-codes.json").read_text(encoding="utf-8"))
INVALID = json.loads((DATA / "api" / "invalid-case.json").read_text(encoding="utf-8"))

ESI = "https://w3id.org/esi-kg/ontology#"
RDF_TYPE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#type"
SUBCLASS_OF = "http://www.w3.org/2000/01/rdf-schema#subClassOf"
PROBLEM = "application/problem+json"
RESULTS_JSON = "application/sparql-results+json"
RDF_MEDIA = {"text/turtle": ox.RdfFormat.TURTLE, "application/ld+json": ox.RdfFormat.JSON_LD,
             "application/n-triples": ox.RdfFormat.N_TRIPLES}
ONTOLOGY_MEDIA = {**RDF_MEDIA, "application/rdf+xml": ox.RdfFormat.RDF_XML}  # RDF/XML out, never in
ANSWER_KEYS = {"case", "ontology_version", "stale", "response", "pain_sources", "failure_causes", "pathways",
               "red_flags"}
RESPONSE_KEYS = {"category", "baseline_score", "best_relief_percent", "days_since_injection"}


def case_of(name: str, **changes: Any) -> dict[str, Any]:
    return {**json.loads(json.dumps(VIGNETTES[name]["case"])), **changes}


def codes(items: list[dict[str, Any]]) -> list[str]:
    return [item["code"] for item in items]


def triples(response: TestResponse) -> list[ox.Triple]:
    """The response body parsed by its own Content-Type."""
    return [q.triple for q in ox.parse(response.get_data(), format=RDF_MEDIA[response.mimetype])]


def triple(s: str, p: str, o: str) -> ox.Triple:
    return ox.Triple(ox.NamedNode(s), ox.NamedNode(p), ox.NamedNode(o))


def assert_problem(response: TestResponse, status: int) -> dict[str, Any]:
    """An RFC 9457 answer with this status, and no Python internals in it."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and 'File "' not in text
    body = json.loads(text)
    assert body["status"] == status
    assert body["type"].startswith("https://") and body["title"] and body["detail"]
    return body  # type: ignore[no-any-return]


def total(client: FlaskClient) -> int:
    return client.get("/cases").get_json()["total"]  # type: ignore[no-any-return]


def ask(client: FlaskClient, query: str, **dataset: str) -> bool:
    prefixes = f"PREFIX esi: <{ESI}> PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#> "
    response = client.get("/sparql", query_string={"query": prefixes + query, **dataset})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["boolean"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    """An app holding every vignette, for tests that only read."""
    app = create_app(Settings(auth_required=False, data_dir=tmp_path_factory.mktemp("api")))
    client = app.test_client()
    for vignette in VIGNETTES.values():
        assert client.post("/cases", json=vignette["case"]).status_code == 201
    return client


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    """An app that must stay without cases: for the many tests of input that stores nothing."""
    return create_app(Settings(auth_required=False, data_dir=tmp_path_factory.mktemp("empty"))).test_client()


# -- POST /pathway --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VIGNETTES)
def test_pathway_answers_a_vignette_by_the_contract(stored: FlaskClient, name: str) -> None:
    expect = VIGNETTES[name]["expect"]
    response = stored.post("/pathway", json=case_of(name))
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    answer = response.get_json()
    assert set(answer) == ANSWER_KEYS
    assert RESPONSE_KEYS <= set(answer["response"])
    assert answer["case"] == VIGNETTES[name]["case"]["id"]
    assert answer["response"]["category"] == expect["category"]
    assert codes(answer["pathways"]) == expect["pathways"]  # the ontology's order of care
    assert set(codes(answer["failure_causes"])) == set(expect["failure_causes"])
    assert set(codes(answer["pain_sources"])) == set(expect["pain_sources"])
    for pathway in answer["pathways"]:
        assert {"code", "label", "urgency", "because", "rule"} <= set(pathway)
        assert pathway["rule"] is None or set(pathway["rule"]) == {"iri", "label", "source"}


def test_pathway_stores_nothing(client: FlaskClient) -> None:
    assert client.post("/pathway", json=case_of("p02-secondary-stenosis-mild")).status_code == 200
    assert total(client) == 0


@pytest.mark.parametrize("media_type", RDF_MEDIA)
def test_pathway_reads_a_case_in_rdf(stored: FlaskClient, media_type: str) -> None:
    """A stored case read back as RDF and posted in that form gets the same answer."""
    rdf = stored.get("/cases/p08", headers={"Accept": media_type})
    response = stored.post("/pathway", data=rdf.get_data(), content_type=media_type)
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == stored.get("/cases/p08/pathway").get_json()


# -- POST /cases, GET /cases/{id} -----------------------------------------------------------------


def test_create_answers_201_with_location_and_stores_the_case(client: FlaskClient) -> None:
    case = case_of("p02-secondary-stenosis-mild")
    response = client.post("/cases", json=case)
    assert response.status_code == 201
    assert response.headers["Location"] == "/cases/p02"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.get_json()["response"]["category"] == "secondary-non-responder"
    stored = client.get(response.headers["Location"])
    assert stored.status_code == 200 and stored.headers["Cache-Control"] == "no-store"
    assert unordered(stored.get_json()) == unordered(case)


def test_create_assigns_an_id_when_none_is_given(client: FlaskClient) -> None:
    case = case_of("p01-primary-non-responder")
    del case["id"]
    response = client.post("/cases", json=case)
    assert response.status_code == 201
    case_id = response.get_json()["case"]
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", case_id)
    assert response.headers["Location"] == f"/cases/{case_id}"
    assert client.get(f"/cases/{case_id}").get_json()["id"] == case_id


def test_create_with_an_existing_id_is_a_conflict_and_changes_nothing(client: FlaskClient) -> None:
    first = case_of("p01-primary-non-responder")
    assert client.post("/cases", json=first).status_code == 201
    second = case_of("p03-responder", id=first["id"])
    assert_problem(client.post("/cases", json=second), 409)
    assert unordered(client.get(f"/cases/{first['id']}").get_json()) == unordered(first)
    assert client.get(f"/cases/{first['id']}/pathway").get_json()["response"]["category"] == "primary-non-responder"
    assert total(client) == 1


@pytest.mark.parametrize("media_type", RDF_MEDIA)
def test_get_case_as_rdf_by_accept(stored: FlaskClient, media_type: str) -> None:
    response = stored.get("/cases/p02", headers={"Accept": media_type})
    assert response.status_code == 200
    assert response.mimetype == media_type
    assert triple(str(case_iri("p02")), RDF_TYPE, ESI + "PatientCase") in triples(response)


def test_get_case_inferred_adds_the_conclusions(stored: FlaskClient) -> None:
    concluded = triple(str(case_iri("p02")), ESI + "hasResponseCategory", ESI + "secondary-non-responder")
    asserted = triples(stored.get("/cases/p02", headers={"Accept": "application/n-triples"}))
    inferred = triples(stored.get("/cases/p02?inferred=true", headers={"Accept": "application/n-triples"}))
    assert concluded not in asserted
    assert concluded in inferred
    assert set(asserted) < set(inferred)


@pytest.mark.parametrize("name", VIGNETTES)
def test_get_case_pathway_is_the_answer_given_when_stored(client: FlaskClient, name: str) -> None:
    """Identical, reasons in the same order: the stored graphs are read as the fresh ones were."""
    created = client.post("/cases", json=case_of(name)).get_json()
    response = client.get(f"/cases/{VIGNETTES[name]['case']['id']}/pathway")
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    assert response.get_json() == created


@pytest.mark.parametrize("path", ["/cases/p02", "/cases/p02?inferred=true"])
def test_get_case_in_an_unavailable_media_type_is_406(stored: FlaskClient, path: str) -> None:
    assert_problem(stored.get(path, headers={"Accept": "image/png"}), 406)


@pytest.mark.parametrize("path", ["/cases/nobody", "/cases/nobody/pathway", "/cases/a%20b"])
def test_get_an_unknown_case_is_404(stored: FlaskClient, path: str) -> None:
    assert_problem(stored.get(path), 404)


# -- PUT and DELETE /cases/{id} -------------------------------------------------------------------


def test_put_replaces_the_case_and_reasons_again(client: FlaskClient, make_case: Any) -> None:
    assert client.post("/cases", json=make_case(id="c1", scores=[(0, 8), (14, 8)])).status_code == 201
    changed = make_case(id="c1", scores=[(0, 8), (3, 8)])  # too early to judge
    response = client.put("/cases/c1", json=changed)
    assert response.status_code == 200
    assert "Location" not in response.headers
    assert response.get_json()["response"]["category"] == "assessment-pending"
    assert response.get_json()["pathways"] == []
    assert client.get("/cases/c1/pathway").get_json() == response.get_json()
    assert unordered(client.get("/cases/c1").get_json()) == unordered(changed)
    # the old conclusions went with the old facts
    assert client.get("/cases?category=primary-non-responder").get_json()["total"] == 0
    assert client.get("/cases?category=assessment-pending").get_json()["total"] == 1


def test_put_of_a_new_id_creates_it(client: FlaskClient, make_case: Any) -> None:
    response = client.put("/cases/new-1", json=make_case(id="new-1"))
    assert response.status_code == 201
    assert response.headers["Location"] == "/cases/new-1"
    assert client.get("/cases/new-1").status_code == 200


def test_put_without_an_id_in_the_body_takes_the_path_id(client: FlaskClient, make_case: Any) -> None:
    case = make_case()
    del case["id"]
    assert client.put("/cases/from-path", json=case).status_code == 201
    assert client.get("/cases/from-path").get_json()["id"] == "from-path"


def test_put_with_another_id_in_the_body_is_422(client: FlaskClient, make_case: Any) -> None:
    body = assert_problem(client.put("/cases/c1", json=make_case(id="c2")), 422)
    assert [v["path"] for v in body["violations"]] == ["id"]
    assert total(client) == 0


@pytest.mark.parametrize("case_id", ["a%20b", "a%3Cb", "x" * 65])
def test_put_rejects_an_id_outside_the_pattern(client: FlaskClient, make_case: Any, case_id: str) -> None:
    case = make_case()
    del case["id"]
    response = client.put(f"/cases/{case_id}", json=case)
    assert response.status_code in (400, 404, 422)
    assert_problem(response, response.status_code)
    assert total(client) == 0


def test_delete_removes_the_case_and_its_inferences(client: FlaskClient) -> None:
    iri = str(case_iri("p02"))
    client.post("/cases", json=case_of("p02-secondary-stenosis-mild"))
    inferred = f"ASK {{ GRAPH <{iri}/inferred> {{ ?s ?p ?o }} }}"
    about = f"ASK {{ GRAPH ?g {{ <{iri}> ?p ?o }} }}"
    assert ask(client, inferred) and ask(client, about)
    response = client.delete("/cases/p02")
    assert response.status_code == 204 and response.get_data() == b""
    assert_problem(client.get("/cases/p02"), 404)
    assert_problem(client.get("/cases/p02/pathway"), 404)
    assert not ask(client, inferred) and not ask(client, about)
    assert_problem(client.delete("/cases/p02"), 404)


# -- GET /cases -----------------------------------------------------------------------------------


def test_list_pages_through_every_case_once_in_a_stable_order(client: FlaskClient, make_case: Any) -> None:
    ids = [f"case-{n}" for n in range(5)]
    for case_id in reversed(ids):
        assert client.post("/cases", json=make_case(id=case_id)).status_code == 201

    def walk() -> list[dict[str, Any]]:
        pages, url = [], "/cases?per_page=2"
        while url:
            page = client.get(url).get_json()
            pages.append(page)
            url = page.get("next")
        return pages

    pages = walk()
    seen = [i["id"] for p in pages for i in p["items"]]
    assert sorted(seen) == ids  # every case once: pages neither overlap nor skip
    assert [len(p["items"]) for p in pages] == [2, 2, 1]
    assert [(p["page"], p["per_page"], p["total"]) for p in pages] == [(1, 2, 5), (2, 2, 5), (3, 2, 5)]
    assert [i["id"] for p in walk() for i in p["items"]] == seen  # the store's order is stable
    first = pages[0]["items"][0]
    assert first["href"] == f"/cases/{first['id']}"
    assert client.get(first["href"]).status_code == 200


@pytest.mark.parametrize("category", ["primary-non-responder", "secondary-non-responder", "responder",
                                      "assessment-pending", "provisional-responder"])
def test_list_filters_by_category(stored: FlaskClient, category: str) -> None:
    expected = {v["case"]["id"] for v in VIGNETTES.values() if v["expect"]["category"] == category}
    page = stored.get(f"/cases?category={category}").get_json()
    assert {i["id"] for i in page["items"]} == expected and page["total"] == len(expected)


@pytest.mark.parametrize("pathway", ["discectomy", "urgent-spine-surgeon-consultation", "radiofrequency-ablation",
                                     "laminectomy"])
def test_list_filters_by_pathway(stored: FlaskClient, pathway: str) -> None:
    expected = {v["case"]["id"] for v in VIGNETTES.values() if pathway in v["expect"]["pathways"]}
    page = stored.get(f"/cases?pathway={pathway}").get_json()
    assert {i["id"] for i in page["items"]} == expected and page["total"] == len(expected)


def test_list_filters_combine_and_the_next_link_keeps_them(stored: FlaskClient) -> None:
    query = "category=primary-non-responder&pathway=discectomy"
    expected = sorted(v["case"]["id"] for v in VIGNETTES.values() if v["expect"]["category"] == "primary-non-responder"
                      and "discectomy" in v["expect"]["pathways"])
    assert len(expected) >= 2
    first = stored.get(f"/cases?{query}&per_page=1").get_json()
    second = stored.get(first["next"]).get_json()
    assert [first["items"][0]["id"], second["items"][0]["id"]] == expected[:2]
    assert second["total"] == len(expected)


def test_list_totals_stay_exact_through_writes(client: FlaskClient) -> None:
    """The totals GET /cases keeps per filter follow every create, replace and delete."""
    filters = ["", "category=primary-non-responder", "category=responder", "pathway=discectomy",
               "category=primary-non-responder&pathway=discectomy", "pathway=radiofrequency-ablation"]

    def counted(query: str) -> int:  # what the store holds, counted afresh by SPARQL
        binds = dict(part.split("=") for part in query.split("&") if part)
        pattern = "?case esi:hasResponseCategory " + (f"esi:{binds['category']}" if "category" in binds else "?c")
        pattern += f" ; esi:hasApplicablePathway esi:{binds['pathway']}" if "pathway" in binds else ""
        rows = client.get("/sparql", query_string={
            "query": f"PREFIX esi: <{ESI}> SELECT (COUNT(*) AS ?n) WHERE {{ GRAPH ?g {{ {pattern} }} }}"}).get_json()
        return int(rows["results"]["bindings"][0]["n"]["value"])

    def check() -> None:
        assert {q: client.get(f"/cases?{q}").get_json()["total"] for q in filters} == {q: counted(q) for q in filters}

    check()  # every total is kept from here on
    names = sorted(VIGNETTES)
    for name in names:
        assert client.post("/cases", json=case_of(name)).status_code == 201
    check()
    first, second = VIGNETTES[names[0]]["case"], VIGNETTES[names[1]]["case"]
    assert client.put(f"/cases/{first['id']}", json={**second, "id": first["id"]}).status_code == 200
    check()
    assert client.put("/cases/new-one", json={**first, "id": "new-one"}).status_code == 201
    check()
    assert client.delete(f"/cases/{second['id']}").status_code == 204
    check()
    assert client.get("/cases").get_json()["total"] == len(names)


@pytest.mark.parametrize("query, path", [("category=nonsense", "category"), ("category=discectomy", "category"),
                                         ("pathway=responder", "pathway"), ("page=0", "page"),
                                         ("per_page=many", "per_page"), ("per_page=1001", "per_page")])
def test_list_with_an_unknown_filter_or_bad_paging_is_422(stored: FlaskClient, query: str, path: str) -> None:
    body = assert_problem(stored.get(f"/cases?{query}"), 422)
    assert [v["path"] for v in body["violations"]] == [path]


# -- GET /vocabulary, /ontology, /health ----------------------------------------------------------


def test_vocabulary_has_every_contract_code_with_label_iri_and_definition(stored: FlaskClient) -> None:
    vocabulary = stored.get("/vocabulary").get_json()["input"]
    for field, expected in CONTRACT_CODES.items():
        entries = {e["code"]: e for e in vocabulary[field]}
        assert set(expected) <= set(entries), field
        for code in expected:
            assert entries[code]["label"] and entries[code]["definition"], (field, code)
            assert entries[code]["iri"] == ESI + code


#: Codes the service accepts beyond the contract table (an addition, documented in the README):
#: a case may record a surgeon consultation as done, for the red-flag safety worklist.
ADDED_CODES = {"treatments_tried": {"spine-surgeon-consultation", "urgent-spine-surgeon-consultation"}}


@pytest.mark.parametrize("field", list(CONTRACT_CODES))
def test_vocabulary_accepts_exactly_the_contract_codes(stored: FlaskClient, field: str) -> None:
    vocabulary = stored.get("/vocabulary").get_json()["input"]
    expected = set(CONTRACT_CODES[field]) | ADDED_CODES.get(field, set())
    assert sorted(e["code"] for e in vocabulary[field]) == sorted(expected)


@pytest.mark.parametrize("media_type", ONTOLOGY_MEDIA)
def test_ontology_in_each_rdf_format(stored: FlaskClient, media_type: str) -> None:
    response = stored.get("/ontology", headers={"Accept": media_type})
    assert response.status_code == 200 and response.mimetype == media_type
    parsed = [q.triple for q in ox.parse(response.get_data(), format=ONTOLOGY_MEDIA[media_type])]
    assert triple(ESI + "foot-drop", SUBCLASS_OF, ESI + "MotorWeakness") in parsed
    assert any(t.object == ox.NamedNode("http://www.w3.org/2002/07/owl#Ontology") for t in parsed)
    assert response.headers["ETag"]


def test_ontology_etag_gives_304(stored: FlaskClient) -> None:
    etag = stored.get("/ontology").headers["ETag"]
    assert etag.startswith(f'"{stored.get("/health").get_json()["ontology_version"]}.')
    unchanged = stored.get("/ontology", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.get_data() == b""
    assert unchanged.headers["ETag"] == etag
    assert stored.get("/ontology", headers={"If-None-Match": '"0.0.0-old"'}).status_code == 200


def test_each_representation_of_the_ontology_has_its_own_etag(stored: FlaskClient) -> None:
    """A cache that stored the Turtle must not be told its copy is the JSON-LD (issue #11)."""
    etags = {m: stored.get("/ontology", headers={"Accept": m}).headers["ETag"] for m in ONTOLOGY_MEDIA}
    assert len(set(etags.values())) == len(ONTOLOGY_MEDIA), etags
    turtle = stored.get("/ontology", headers={"Accept": "application/ld+json", "If-None-Match": etags["text/turtle"]})
    assert turtle.status_code == 200 and turtle.headers["ETag"] == etags["application/ld+json"]


def test_ontology_in_an_unavailable_media_type_is_406(stored: FlaskClient) -> None:
    assert_problem(stored.get("/ontology", headers={"Accept": "text/html"}), 406)


def test_health(stored: FlaskClient) -> None:
    response = stored.get("/health")
    assert response.status_code == 200
    health = response.get_json()
    assert health["status"] == "ok"
    assert health["ontology_version"] == stored.get("/cases/p02/pathway").get_json()["ontology_version"]


# -- errors on case input -------------------------------------------------------------------------

CASE_WRITES = [("post", "/pathway"), ("post", "/cases"), ("put", "/cases/c1")]
by_write = pytest.mark.parametrize("method, path", CASE_WRITES, ids=[f"{m} {p}" for m, p in CASE_WRITES])


@by_write
@pytest.mark.parametrize("body", ['{"age": 60,', "[1, 2]", '"a case"', "", '{"age": NaN}', b"\xff\xfe"])
def test_malformed_or_non_object_json_is_400(empty: FlaskClient, method: str, path: str, body: str) -> None:
    assert_problem(empty.open(path, method=method, data=body, content_type="application/json"), 400)
    assert total(empty) == 0


@by_write
@pytest.mark.parametrize("media_type", ["text/turtle", "application/n-triples", "application/ld+json"])
def test_malformed_rdf_is_400(empty: FlaskClient, method: str, path: str, media_type: str) -> None:
    assert_problem(empty.open(path, method=method, data="<a> <b", content_type=media_type), 400)


@by_write
@pytest.mark.parametrize("media_type", ["text/plain", "application/rdf+xml", "application/x-www-form-urlencoded",
                                        None])
def test_unsupported_content_type_is_415(empty: FlaskClient, method: str, path: str, media_type: str | None) -> None:
    body = json.dumps(case_of("p01-primary-non-responder", id="c1"))
    assert_problem(empty.open(path, method=method, data=body, content_type=media_type), 415)
    assert total(empty) == 0


@by_write
def test_body_over_the_limit_is_413(tmp_path: Path, method: str, path: str) -> None:
    client = create_app(Settings(auth_required=False, data_dir=tmp_path, max_body_bytes=1000)).test_client()
    small = case_of("p03-responder", id="c1")
    big = {**small, "pain_scores": small["pain_scores"] * 20}
    assert len(json.dumps(big)) > 1000 > len(json.dumps(small))
    assert_problem(client.open(path, method=method, json=big), 413)
    assert total(client) == 0
    assert client.open(path, method=method, json=small).status_code in (200, 201)


@by_write
def test_invalid_case_lists_every_violation_and_stores_nothing(empty: FlaskClient, method: str, path: str) -> None:
    case = {**INVALID["case"], "id": "c1"}
    body = assert_problem(empty.open(path, method=method, json=case), 422)
    assert sorted(v["path"] for v in body["violations"]) == sorted(INVALID["violations"])
    assert all(v["message"] for v in body["violations"])
    assert total(empty) == 0


def test_sparql_body_over_the_limit_is_413(tmp_path: Path) -> None:
    client = create_app(Settings(auth_required=False, data_dir=tmp_path, max_body_bytes=1000)).test_client()
    query = "ASK { ?s ?p ?o } #" + "x" * 1000
    assert_problem(client.post("/sparql", data=query, content_type="application/sparql-query"), 413)


def test_unknown_route_is_404(stored: FlaskClient) -> None:
    assert_problem(stored.get("/nowhere"), 404)


@pytest.mark.parametrize("method, path, allowed", [
    ("delete", "/cases", {"GET", "POST"}), ("get", "/pathway", {"POST"}), ("post", "/health", {"GET"}),
    ("post", "/cases/p02", {"GET", "PUT", "DELETE"}), ("put", "/sparql", {"GET", "POST"}),
    ("delete", "/ontology", {"GET"}),
])
def test_wrong_method_is_405_with_allow(stored: FlaskClient, method: str, path: str, allowed: set[str]) -> None:
    response = stored.open(path, method=method)
    assert_problem(response, 405)
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


# -- /sparql --------------------------------------------------------------------------------------

SELECT_CATEGORIES = f"PREFIX esi: <{ESI}> SELECT ?case ?category WHERE {{ ?case esi:hasResponseCategory ?category }}"


def bindings(response: TestResponse) -> set[tuple[str, str]]:
    assert response.status_code == 200 and response.mimetype == RESULTS_JSON
    return {(b["case"]["value"], b["category"]["value"]) for b in response.get_json()["results"]["bindings"]}


def test_sparql_by_get_post_form_and_post_query_agree(stored: FlaskClient) -> None:
    expected = {(str(case_iri(v["case"]["id"])), ESI + v["expect"]["category"]) for v in VIGNETTES.values()}
    assert bindings(stored.get("/sparql", query_string={"query": SELECT_CATEGORIES})) == expected
    assert bindings(stored.post("/sparql", data={"query": SELECT_CATEGORIES})) == expected
    assert bindings(stored.post("/sparql", data=SELECT_CATEGORIES, content_type="application/sparql-query")) == expected


def test_sparql_default_graph_uri_limits_the_dataset(stored: FlaskClient) -> None:
    ontology = {"default-graph-uri": ONTOLOGY_GRAPH.value}
    assert ask(stored, "ASK { ?case a esi:PatientCase }")
    assert not ask(stored, "ASK { ?case a esi:PatientCase }", **ontology)
    assert not ask(stored, "ASK { ?case esi:hasResponseCategory ?category }", **ontology)
    assert ask(stored, "ASK { esi:foot-drop rdfs:subClassOf esi:MotorWeakness }", **ontology)


def test_sparql_named_graph_uri_limits_the_named_graphs(stored: FlaskClient) -> None:
    query = "SELECT DISTINCT ?g WHERE { GRAPH ?g { ?s ?p ?o } }"
    every = stored.get("/sparql", query_string={"query": query}).get_json()["results"]["bindings"]
    assert len(every) > 2
    only = stored.get("/sparql", query_string={"query": query, "named-graph-uri": str(case_iri("p02"))})
    assert [b["g"]["value"] for b in only.get_json()["results"]["bindings"]] == [str(case_iri("p02"))]


@pytest.mark.parametrize("accept", [RESULTS_JSON, "application/sparql-results+xml", "text/csv",
                                    "text/tab-separated-values", "application/json"])
def test_sparql_select_in_each_results_format(stored: FlaskClient, accept: str) -> None:
    query = SELECT_CATEGORIES + " ORDER BY ?case LIMIT 2"
    response = stored.get("/sparql", query_string={"query": query}, headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    text = response.get_data(as_text=True)
    first = (str(case_iri("p01")), ESI + "primary-non-responder")
    if accept in (RESULTS_JSON, "application/json"):
        assert response.mimetype == RESULTS_JSON
        assert response.get_json()["head"]["vars"] == ["case", "category"]
        assert sorted(bindings(response))[0] == first
    elif accept.endswith("xml"):
        assert response.mimetype == accept
        ns = {"r": "http://www.w3.org/2005/sparql-results#"}
        results = ET.fromstring(text).findall("r:results/r:result", ns)
        assert len(results) == 2
        assert [u.text for u in results[0].findall("r:binding/r:uri", ns)] == list(first)
    elif accept == "text/csv":
        rows = list(csv.reader(io.StringIO(text)))
        assert rows[0] == ["case", "category"] and tuple(rows[1]) == first and len(rows) == 3
    else:
        rows = [line.split("\t") for line in text.splitlines()]
        assert rows[0] == ["?case", "?category"] and tuple(rows[1]) == tuple(f"<{v}>" for v in first)


@pytest.mark.parametrize("accept, body", [(RESULTS_JSON, '"boolean":true'),
                                          ("application/sparql-results+xml", "<boolean>true</boolean>"),
                                          ("text/csv", "true")])
def test_sparql_ask(stored: FlaskClient, accept: str, body: str) -> None:
    query = f"PREFIX esi: <{ESI}> ASK {{ ?case esi:hasApplicablePathway esi:discectomy }}"
    response = stored.get("/sparql", query_string={"query": query}, headers={"Accept": accept})
    assert response.status_code == 200 and body in response.get_data(as_text=True)


@pytest.mark.parametrize("media_type", RDF_MEDIA)
@pytest.mark.parametrize("form", ["CONSTRUCT", "DESCRIBE"])
def test_sparql_graph_results_in_each_rdf_format(stored: FlaskClient, form: str, media_type: str) -> None:
    iri = str(case_iri("p08"))
    query = {"CONSTRUCT": f"CONSTRUCT {{ <{iri}> ?p ?o }} WHERE {{ <{iri}> ?p ?o }}", "DESCRIBE": f"DESCRIBE <{iri}>"}
    response = stored.get("/sparql", query_string={"query": query[form]}, headers={"Accept": media_type})
    assert response.status_code == 200 and response.mimetype == media_type
    parsed = triples(response)
    assert triple(iri, RDF_TYPE, ESI + "PatientCase") in parsed
    assert triple(iri, ESI + "hasApplicablePathway", ESI + "discectomy") in parsed


def test_sparql_malformed_query_is_400_with_the_parser_message(stored: FlaskClient) -> None:
    body = assert_problem(stored.get("/sparql", query_string={"query": "SELECT ?s WHERE { ?s ?p"}), 400)
    assert re.search(r"error at 1:\d+", body["detail"])


@pytest.mark.parametrize("request_kwargs", [
    {"method": "POST", "data": {"update": "CLEAR ALL"}},
    {"method": "POST", "data": "CLEAR ALL", "content_type": "application/sparql-update"},
    {"method": "GET", "query_string": {"update": "CLEAR ALL"}},
], ids=["form", "sparql-update", "get"])
def test_sparql_update_is_refused(stored: FlaskClient, request_kwargs: dict[str, Any]) -> None:
    assert_problem(stored.open("/sparql", **request_kwargs), 403)
    assert total(stored) == len(VIGNETTES)
    assert ask(stored, "ASK { ?case a esi:PatientCase }")


@pytest.mark.parametrize("media_type", RDF_MEDIA)
def test_sparql_without_a_query_describes_the_service(stored: FlaskClient, media_type: str) -> None:
    response = stored.get("/sparql", headers={"Accept": media_type})
    assert response.status_code == 200 and response.mimetype == media_type
    sd = "http://www.w3.org/ns/sparql-service-description#"
    assert any(t.predicate.value == RDF_TYPE and t.object == ox.NamedNode(sd + "Service") for t in triples(response))


def test_sparql_with_two_queries_is_400(stored: FlaskClient) -> None:
    assert_problem(stored.get("/sparql?" + urlencode([("query", "ASK {}"), ("query", "ASK {}")])), 400)
    assert_problem(stored.post("/sparql?query=ASK%20%7B%7D", data={"query": "ASK {}"}), 400)


def test_sparql_post_in_another_media_type_is_415(stored: FlaskClient) -> None:
    assert_problem(stored.post("/sparql", data="ASK {}", content_type="text/plain"), 415)


def test_sparql_result_over_the_row_limit_is_422(tmp_path: Path) -> None:
    client = create_app(Settings(auth_required=False, data_dir=tmp_path, query_max_rows=5)).test_client()
    body = assert_problem(client.get("/sparql", query_string={"query": "SELECT * WHERE { ?s ?p ?o }"}), 422)
    assert "LIMIT" in body["detail"]
    assert client.get("/sparql", query_string={"query": "SELECT * WHERE { ?s ?p ?o } LIMIT 5"}).status_code == 200


def test_sparql_in_an_unavailable_media_type_is_406(stored: FlaskClient) -> None:
    assert_problem(stored.get("/sparql", query_string={"query": "ASK {}"}, headers={"Accept": "image/png"}), 406)


@pytest.mark.parametrize("parameter", ["default-graph-uri", "named-graph-uri"])
@pytest.mark.parametrize("value", ["", "not an iri"])
def test_sparql_rejects_a_dataset_iri_that_is_not_an_iri(stored: FlaskClient, parameter: str, value: str) -> None:
    assert_problem(stored.get("/sparql", query_string={"query": "ASK {}", parameter: value}), 400)


# -- /queries -------------------------------------------------------------------------------------


def test_queries_list_and_run(stored: FlaskClient) -> None:
    listed = {q["name"]: q for q in stored.get("/queries").get_json()}
    assert [p["name"] for p in listed["cases-by-category"]["params"]] == ["category"]
    response = stored.get(listed["cases-by-category"]["href"], query_string={"category": "responder"})
    assert response.status_code == 200
    rows = response.get_json()["results"]["bindings"]
    assert [r["case"]["value"] for r in rows] == [str(case_iri("p03"))]


@pytest.mark.parametrize("path, status", [("/queries/no-such-query", 404),
                                          ("/queries/cases-by-category", 422),
                                          ("/queries/cases-by-category?category=nonsense", 422),
                                          ("/queries/cases-by-category?category=responder&extra=1", 422)])
def test_queries_errors(stored: FlaskClient, path: str, status: int) -> None:
    assert_problem(stored.get(path), status)


def test_named_query_in_an_unavailable_media_type_is_406(stored: FlaskClient) -> None:
    response = stored.get("/queries/cases-by-category?category=responder", headers={"Accept": "text/turtle"})
    assert_problem(response, 406)
