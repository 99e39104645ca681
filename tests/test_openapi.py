"""The OpenAPI document: valid OpenAPI 3.1, and true of the running app (checked by schemathesis)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

import kgservice
from kgservice.api import create_app
from kgservice.config import Settings
from kgservice.http.openapi import document as openapi_document
from kgservice.service import Service

# Turtle goes as text on its own; these two are text too, whatever their major type says.
schemathesis.serializer.alias(["application/n-triples", "application/sparql-query"], "text/plain")

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, unsupported_method, allow_header_conformance]
#: Deterministic and bounded: the coverage phase's boundary values, then a few examples per mode.
CONFIG = schemathesis.Config.from_dict({
    "seed": 20261124,
    "generation": {"mode": "all", "max-examples": 30, "deterministic": True},
    "phases": {"stateful": {"enabled": False}},
})
#: The operations are collected from the document, which needs the ontology but no stored data;
#: each test then sends its requests to the module's app, over a temporary data directory.
#: (schemathesis.pytest.from_fixture would build the schema inside a test, but it fails on pytest 9.)
DOCUMENT = openapi_document(Service(Settings()))
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)

VIGNETTES = [json.loads(p.read_text(encoding="utf-8"))["case"]
             for p in sorted((Path(__file__).parent / "data" / "vignettes").glob("*.json"))]
ESI = "https://w3id.org/esi-kg/ontology#"


@pytest.fixture(scope="module")
def api_app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return create_app(Settings(auth_required=False, data_dir=tmp_path_factory.mktemp("openapi")))


@pytest.fixture(scope="module")
def served(api_app: Flask) -> dict[str, Any]:
    response = api_app.test_client().get("/openapi.json")
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def test_document_is_valid_openapi_3_1(served: dict[str, Any]) -> None:
    validate(served)
    assert served["openapi"] == "3.1.0"


def test_served_document_is_the_one_tested(served: dict[str, Any]) -> None:
    assert served == DOCUMENT


def test_document_names_the_package_and_ontology_versions(api_app: Flask, served: dict[str, Any]) -> None:
    assert served["info"]["version"] == kgservice.__version__
    assert served["info"]["x-ontology-version"] == api_app.test_client().get("/health").get_json()["ontology_version"]


HYPOTHESIS = settings(max_examples=30, deadline=None, derandomize=True)


@schema.exclude(operation_id=["sparqlGet", "sparqlPost", "replaceCase"]).parametrize()
@HYPOTHESIS
def test_app_conforms_to_its_document(case: schemathesis.Case, api_app: Flask) -> None:
    case.call_and_validate(app=api_app, checks=CHECKS)


@schema.include(operation_id=["sparqlGet", "sparqlPost"]).parametrize()
@HYPOTHESIS
def test_sparql_conforms_to_its_document(case: schemathesis.Case, api_app: Flask) -> None:
    case.call_and_validate(app=api_app, checks=CHECKS)


@schema.include(operation_id="replaceCase").parametrize()
@HYPOTHESIS
def test_put_case_conforms_to_its_document(case: schemathesis.Case, api_app: Flask) -> None:
    case.call_and_validate(app=api_app, checks=CHECKS)


def test_answers_to_valid_requests_match_the_document(tmp_path: Path) -> None:
    """Generated requests rarely make a valid case; these do, and each answer is checked like theirs."""
    app = create_app(Settings(auth_required=False, data_dir=tmp_path, query_max_rows=100))

    def call(method: str, path: str, status: int, **request: Any) -> Any:
        response = schema[path][method].Case(**request).call_and_validate(app=app, checks=CHECKS)
        assert response.status_code == status, response.text
        return response

    case_id = {"path_parameters": {"id": "p02"}}
    for case in VIGNETTES:
        call("POST", "/pathway", 200, body=case, media_type="application/json")
        call("POST", "/cases", 201, body=case, media_type="application/json")
    call("POST", "/cases", 409, body=VIGNETTES[1], media_type="application/json")
    for accept in ("application/json", "text/turtle", "application/ld+json", "application/n-triples"):
        call("GET", "/cases/{id}", 200, headers={"Accept": accept}, **case_id)
    call("GET", "/cases/{id}", 200, query={"inferred": True}, headers={"Accept": "application/ld+json"}, **case_id)
    call("GET", "/cases/{id}/pathway", 200, **case_id)
    call("PUT", "/cases/{id}", 200, body=VIGNETTES[1], media_type="application/json", **case_id)
    call("PUT", "/cases/{id}", 201, body={**VIGNETTES[1], "id": "p02-copy"}, media_type="application/json",
         path_parameters={"id": "p02-copy"})
    call("DELETE", "/cases/{id}", 204, **case_id)
    call("GET", "/cases", 200, query={"per_page": 2, "category": "primary-non-responder"})
    call("GET", "/cases", 200, query={"pathway": "discectomy"})
    etag = call("GET", "/ontology", 200).headers["etag"][0]
    call("GET", "/ontology", 304, headers={"If-None-Match": etag})
    for query in (f"SELECT ?c WHERE {{ ?c <{ESI}hasResponseCategory> ?x }}", "ASK { ?s ?p ?o }",
                  "CONSTRUCT WHERE { ?s ?p ?o } LIMIT 3"):
        call("GET", "/sparql", 200, query={"query": query})
        call("POST", "/sparql", 200, body={"query": query}, media_type="application/x-www-form-urlencoded")
    call("GET", "/sparql", 422, query={"query": "SELECT * WHERE { ?s ?p ?o }"})
    call("GET", "/queries/cases-by-category", 200, query={"category": "responder"})
