"""The OpenAPI 3.1 description of the service, built from the running service.

The case schema's enums are the codes ``GET /vocabulary`` lists, so they come from the
ontology through the shapes; the named queries come from ``queries/*.rq``. An operation lists
a status only when the code can answer it. A method a path does not list is answered 405 with
an ``Allow`` header (``components.responses.MethodNotAllowed``): OpenAPI has no place to
attach it to an operation.
"""

from __future__ import annotations

from typing import Any

from rdflib import XSD

from .. import __version__
from ..api import ONTOLOGY_FORMATS
from ..core.cases import CODE_PATTERN, ID_PATTERN
from ..core.contract import Contract, Spec
from ..core.kb import READERS
from ..core.media import RDF_OUT
from ..queryrun import RESULTS_JSON
from ..service import Service
from .queries import NAME_PATTERN, Catalog, NamedQuery
from .sparql import CONSTRUCT_FORMATS, SELECT_FORMATS

Schema = dict[str, Any]

JSON = "application/json"
PROBLEM = "application/problem+json"
# application/json and application/xml are answered as the SPARQL results formats, as RDF/XML for graphs
_ALIASES = (JSON, "application/xml", "text/xml")
RESULT_FORMATS = [m for m in SELECT_FORMATS if m not in _ALIASES]
GRAPH_FORMATS = [m for m in CONSTRUCT_FORMATS if m not in _ALIASES]
STRING: Schema = {"type": "string"}
DATE: Schema = {"type": "string", "format": "date"}
STRINGS: Schema = {"type": "array", "items": STRING}

ERRORS = {  # status: (component name, description, schema)
    400: ("BadRequest", "The body or the query cannot be read (malformed JSON, RDF or SPARQL; not a JSON object)",
          "Problem"),
    403: ("UpdateRefused", "A SPARQL update was sent: this endpoint answers queries only", "Problem"),
    404: ("NotFound", "No such case or named query", "Problem"),
    406: ("NotAcceptable", "None of the media types in Accept can be produced", "Problem"),
    409: ("Conflict", "A case with this id exists already; PUT replaces it", "Problem"),
    413: ("PayloadTooLarge", "The body is over the size limit", "Problem"),
    415: ("UnsupportedMediaType", "The Content-Type is not one this operation reads", "Problem"),
    422: ("InvalidInput", "The input breaks the contract; every violation is listed", "ValidationProblem"),
}
TOO_MANY_RESULTS = ("TooManyResults", "The answer is over a limit of the service (rows, bytes or memory), or the "
                    "query stopped the engine: add LIMIT or narrow it", "Problem")


def ref(name: str, kind: str = "schemas") -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def obj(properties: dict[str, Schema], required: list[str] | None = None, closed: bool = False) -> Schema:
    """An object schema; answers stay open (the contract grows by adding fields), input is closed."""
    out: Schema = {"type": "object", "properties": properties, "required": required or list(properties)}
    if closed:
        out["additionalProperties"] = False
    return out


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def codes_of(entries: list[dict[str, str]]) -> Schema:
    return {"type": "string", "enum": [e["code"] for e in entries]}


# -- schemas ------------------------------------------------------------------------------------


def case_schema(contract: Contract, vocabulary: dict[str, list[dict[str, str]]]) -> Schema:
    """The contract's case as JSON Schema 2020-12, from the case shapes: types, ranges, codes."""
    schema = _object_schema(contract.fields, vocabulary, "", {
        "id": {"type": "string", "pattern": ID_PATTERN.pattern,
               "description": "assigned by the server when absent; in PUT, equal to the id in the path"}})
    schema["description"] = "A patient case after an epidural steroid injection; codes are listed by GET /vocabulary."
    return schema


_TYPES = {XSD.integer: "integer", XSD.boolean: "boolean", XSD.decimal: "number", XSD.string: "string"}


def _object_schema(fields: dict[str, Spec], vocabulary: dict[str, list[dict[str, str]]], prefix: str,
                   extra: dict[str, Schema] | None = None) -> Schema:
    properties = {**(extra or {}), **{name: _field_schema(spec, vocabulary, prefix + name)
                                      for name, spec in fields.items()}}
    return obj(properties, [name for name, spec in fields.items() if spec.required], closed=True)


def _field_schema(spec: Spec, vocabulary: dict[str, list[dict[str, str]]], path: str) -> Schema:
    if spec.kind in ("code", "codes", "instances"):
        item = codes_of(vocabulary.get(path, []))
    elif spec.kind in ("object", "objects"):
        item = _object_schema(spec.fields, vocabulary, path + ".")
    elif spec.kind == "date":
        item = dict(DATE)
    else:
        item = {"type": _TYPES.get(spec.datatype or XSD.string, "string") if spec.kind == "scalar" else "number"}
        item.update({k: v for k, v in (("minimum", spec.minimum), ("maximum", spec.maximum)) if v is not None})
    if spec.is_list:
        item = {"type": "array", "items": item, **({"minItems": 1} if spec.required else {})}
    if spec.default is not None:
        item["default"] = spec.default
    if spec.description:
        item["description"] = spec.description
    return item


def answer_schema(vocabulary: dict[str, list[dict[str, str]]]) -> Schema:
    why = {"because": STRINGS, "rule": nullable(ref("Rule"))}

    def concluded(field: str, **extra: Schema) -> Schema:
        return {"type": "array", "items": obj({"code": codes_of(vocabulary[field]), "label": STRING, **extra, **why})}

    category = nullable(codes_of(vocabulary["response.category"]))
    number = nullable({"type": "number"})
    response = obj({"category": category, "baseline_score": nullable({"type": "integer"}),
                    "best_relief_percent": number, "days_since_injection": nullable({"type": "integer"}), **why},
                   ["category", "baseline_score", "best_relief_percent", "days_since_injection"])
    response["description"] = "because and rule are given when a category was concluded"
    properties: dict[str, Schema] = {
        "case": STRING, "ontology_version": STRING,
        "stale": {"type": "boolean", "description": "a stored answer that another ontology version than the running "
                                                    "one reasoned; `kgservice reason --stale` re-reasons it"},
        "current_ontology_version": {**STRING, "description": "the running version, given when stale"},
        "response": response,
        "pain_sources": concluded("pain_sources"),
        "failure_causes": concluded("failure_causes"),
        "pathways": {**concluded("pathways", urgency=nullable(codes_of(vocabulary["pathways.urgency"]))),
                     "description": "in the ontology's order of care: the urgent consultation first, surgery last"},
        "red_flags": {"type": "array", "items": obj({"code": STRING, "label": STRING})},
    }
    return obj(properties, [p for p in properties if p != "current_ontology_version"])


def schemas(service: Service) -> dict[str, Schema]:
    vocabulary = service.vocabulary
    entries = {"type": "array", "items": ref("VocabularyEntry")}
    problem = obj({"type": {"type": "string", "format": "uri"}, "title": STRING, "status": {"type": "integer"},
                   "detail": STRING}, ["type", "title", "status"])
    violation = obj({"path": STRING, "message": STRING, "shape": STRING, "value": {}}, ["path", "message"])
    return {
        "Case": case_schema(service.kb.contract, vocabulary["input"]),
        "Answer": answer_schema(vocabulary["answer"]),
        "Rule": obj({"iri": {"type": "string", "format": "iri"}, "label": STRING, "source": STRING}),
        "CaseList": obj({
            "items": {"type": "array", "items": obj({"id": STRING, "href": STRING})},
            "page": {"type": "integer", "minimum": 1}, "per_page": {"type": "integer", "minimum": 1},
            "total": {"type": "integer", "minimum": 0},
            "next": {"type": "string", "format": "uri-reference", "description": "absent on the last page"},
        }, ["items", "page", "per_page", "total"]),
        "VocabularyEntry": obj({"code": STRING, "label": STRING, "iri": {"type": "string", "format": "iri"},
                                "definition": STRING}),
        "Vocabulary": obj({
            part: obj({field: entries for field in groups}) for part, groups in vocabulary.items()
        }),
        "Health": obj({"status": {"const": "ok"}, "ontology_version": STRING, "engine": STRING,
                       "engines": STRINGS}),
        "NamedQuery": obj({"name": STRING, "summary": STRING, "description": STRING, "href": STRING,
                           "params": {"type": "array", "items": obj({
                               "name": STRING, "type": {"enum": ["code", "iri", "string", "integer"]},
                               "description": STRING, "example": STRING, "required": {"type": "boolean"}})}}),
        "SparqlResults": {"type": "object", "description": "SPARQL 1.1 Query Results JSON Format",
                          "properties": {"head": {"type": "object", "properties": {"vars": STRINGS}},
                                         "results": obj({"bindings": {"type": "array", "items": {"type": "object"}}}),
                                         "boolean": {"type": "boolean"}},
                          "required": ["head"]},
        "Problem": {**problem, "description": "RFC 9457 problem details"},
        "ValidationProblem": {"allOf": [ref("Problem"), obj({"violations": {"type": "array", "items": violation}})]},
    }


# -- responses and operations --------------------------------------------------------------------


def errors(*statuses: int) -> dict[str, Schema]:
    return {str(s): ref(ERRORS[s][0], "responses") for s in statuses}


def error_responses() -> dict[str, Schema]:
    out = {name: {"description": text, "content": content({PROBLEM: ref(schema)})}
           for name, text, schema in (*ERRORS.values(), TOO_MANY_RESULTS)}
    out["MethodNotAllowed"] = {"description": "The path does not answer this method",
                               "headers": {"Allow": {"schema": STRING, "description": "the methods it answers"}},
                               "content": content({PROBLEM: ref("Problem")})}
    return out


def content(schemas: dict[str, Schema]) -> Schema:
    """A content map: media type → its schema."""
    return {media_type: {"schema": schema} for media_type, schema in schemas.items()}


def ok(description: str, media: dict[str, Schema], **headers: str) -> Schema:
    out: Schema = {"description": description, "content": content(media)}
    if headers:
        out["headers"] = {name: {"schema": STRING, "description": text} for name, text in headers.items()}
    return out


def rdf(*media_types: str) -> dict[str, Schema]:
    return {m: {"type": ["array", "object"]} if m.endswith("json") else STRING for m in media_types}


def operation(op_id: str, tag: str, summary: str, responses: dict[str, Schema], parameters: list[Schema] | None = None,
              body: Schema | None = None, description: str = "") -> Schema:
    out: Schema = {"operationId": op_id, "tags": [tag], "summary": summary}
    if description:
        out["description"] = description
    if parameters:
        out["parameters"] = list(parameters)
    if body is not None:
        out["requestBody"] = body
    out["responses"] = responses
    return out


def query_param(name: str, schema: Schema, description: str, required: bool = False, **extra: Any) -> Schema:
    return {"name": name, "in": "query", "schema": schema, "description": description, "required": required, **extra}


CASE_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": ID_PATTERN.pattern}}
CASE_BODY = {"required": True, "description": "A case as contract JSON, or as RDF describing one esi:PatientCase",
             "content": content({JSON: ref("Case"), **rdf(*(m for m in READERS if m != JSON))})}
ANSWER = {JSON: ref("Answer")}
CASE_WRITE_ERRORS = (400, 413, 415, 422)
GRAPH_URIS = [
    query_param("default-graph-uri", {"type": "array", "items": {"type": "string", "format": "iri"}},
                "graphs merged into the default graph (default: the union of all graphs)", explode=True),
    query_param("named-graph-uri", {"type": "array", "items": {"type": "string", "format": "iri"}},
                "the graphs GRAPH may address", explode=True),
]
RESULTS = {m: ref("SparqlResults") if m == RESULTS_JSON else STRING for m in RESULT_FORMATS}
ROWS = ok("The query's rows", RESULTS)
SPARQL_ERRORS = {**errors(400, 403, 406, 413), "422": ref(TOO_MANY_RESULTS[0], "responses")}
SPARQL_OK = ok("SELECT and ASK results, CONSTRUCT and DESCRIBE graphs; with no query, the service description",
               {**RESULTS, **rdf(*GRAPH_FORMATS)})
SPARQL_DESCRIPTION = ("The SPARQL 1.1 Protocol, queries only, over the ontology, its closure and every stored case "
                      "of the caller's site with its inferences. Without FROM, FROM NAMED, default-graph-uri or "
                      "named-graph-uri the default graph is the union of all graphs; with them, they make the "
                      "dataset. Updates (update=, application/sparql-update) are refused with 403. Without a query, "
                      "GET answers the service description, open without a token.")


def named_query_path(query: NamedQuery) -> Schema:
    kinds = {"code": {"type": "string", "pattern": CODE_PATTERN.pattern}, "iri": {"type": "string", "format": "iri"},
             "integer": {"type": "integer"}, "string": STRING}
    params = [query_param(p.name, kinds[p.type], p.description, p.required,
                          **({"example": p.example} if p.example else {})) for p in query.params]
    return {"get": operation(f"query-{query.name}", "queries", query.summary,
                             {"200": ROWS, **errors(406, 422)}, params, description=query.description)}


def paths(service: Service) -> dict[str, Schema]:
    vocabulary = service.vocabulary["answer"]
    settings = service.settings
    location = {"Location": "the case's URL"}
    out: dict[str, Schema] = {
        "/pathway": {"post": operation(
            "answer", "pathways", "The pathway answer for a case, without storing it",
            {"200": ok("The answer", ANSWER), **errors(*CASE_WRITE_ERRORS)}, body=CASE_BODY)},
        "/cases": {
            "post": operation("createCase", "cases", "Store a case and answer it",
                              {"201": ok("Stored; the answer", ANSWER, **location), **errors(*CASE_WRITE_ERRORS, 409)},
                              body=CASE_BODY),
            "get": operation("listCases", "cases", "Stored case ids, by id, a page at a time", {
                "200": ok("A page of cases", {JSON: ref("CaseList")}), **errors(422)}, [
                query_param("page", {"type": "integer", "minimum": 1, "maximum": 1_000_000, "default": 1}, "page"),
                query_param("per_page", {"type": "integer", "minimum": 1, "maximum": 1_000,
                                         "default": settings.page_size}, "cases per page"),
                query_param("category", codes_of(vocabulary["response.category"]), "only cases of this category"),
                query_param("pathway", codes_of(vocabulary["pathways"]), "only cases offered this pathway")]),
        },
        "/cases/{id}": {
            "parameters": [CASE_ID],
            "get": operation("getCase", "cases", "A stored case: contract JSON, or its RDF", {
                "200": ok("The case as asserted (with inferred=true, RDF also holds the inferences)",
                          {JSON: ref("Case"), **rdf(*RDF_OUT)}),
                **errors(404, 406)}, [query_param("inferred", {"type": "boolean", "default": False},
                                                  "RDF only: add the inferred graph")]),
            "put": operation("replaceCase", "cases", "Store or replace a case and answer it", {
                "200": ok("Replaced; the answer", ANSWER), "201": ok("Created; the answer", ANSWER, **location),
                **errors(*CASE_WRITE_ERRORS)}, body=CASE_BODY),
            "delete": operation("deleteCase", "cases", "Delete a case and its inferences", {
                "204": {"description": "Deleted"}, **errors(404)}),
        },
        "/cases/{id}/pathway": {"parameters": [CASE_ID], "get": operation(
            "getCasePathway", "cases", "The answer for a stored case", {
                "200": ok("The answer as stored, with the ontology version that reasoned it",
                          ANSWER,
                          **{"ESI-Ontology-Version": "the version that reasoned the answer",
                             "ESI-Stale": "true when that is not the running version"}),
                **errors(404)})},
        "/vocabulary": {"get": operation("vocabulary", "ontology", "Every accepted code, and the codes answers use", {
            "200": ok("Codes with label, IRI and definition, by contract field", {JSON: ref("Vocabulary")})})},
        "/ontology": {"get": operation("ontology", "ontology", "The ontology", {
            "200": ok("The ontology", rdf(*ONTOLOGY_FORMATS), ETag="the ontology version and the format"),
            "304": {"description": "Not modified", "headers": {"ETag": {"schema": STRING}}},
            **errors(406)}, [{"name": "If-None-Match", "in": "header", "schema": STRING,
                               "description": "the ETag of a copy already held"}])},
        "/health": {"get": operation("health", "service", "Liveness and the ontology version", {
            "200": ok("Up", {JSON: ref("Health")})})},
        "/openapi.json": {"get": operation("openapi", "service", "This document", {
            "200": ok("OpenAPI 3.1", {JSON: {"type": "object"}})})},
        "/sparql": {
            "get": operation("sparqlGet", "sparql", "SPARQL query (GET)", {
                "200": SPARQL_OK, **SPARQL_ERRORS}, [
                query_param("query", STRING, "a SPARQL 1.1 query; absent: the service description"), *GRAPH_URIS],
                description=SPARQL_DESCRIPTION),
            "post": operation("sparqlPost", "sparql", "SPARQL query (POST)", {
                "200": SPARQL_OK, **SPARQL_ERRORS, **errors(415)}, GRAPH_URIS, {
                "required": True, "content": content({
                    "application/x-www-form-urlencoded": obj({
                        "query": STRING, "default-graph-uri": STRINGS, "named-graph-uri": STRINGS}, ["query"]),
                    "application/sparql-query": STRING})}, description=SPARQL_DESCRIPTION),
        },
        "/queries": {"get": operation("listQueries", "queries", "The named queries", {
            "200": ok("Each with its parameters", {JSON: {"type": "array", "items": ref("NamedQuery")}})})},
        "/queries/{name}": {"get": operation("runQuery", "queries", "Run a named query (GET /queries lists them)", {
            "200": ROWS, **errors(404, 406, 422)}, [
            {"name": "name", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": NAME_PATTERN.pattern}},
            {"name": "arguments", "in": "query", "style": "form", "explode": True,
             "schema": {"type": "object", "additionalProperties": STRING},
             "description": "the query's parameters, by name; a missing, unknown or invalid one is a 422"}])},
    }
    for query in Catalog.load(settings.queries_dir).queries.values():
        out[f"/queries/{query.name}"] = named_query_path(query)
    return out


def document(service: Service) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``service``'s API."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ESI-KG",
            "summary": "What comes after a failed epidural steroid injection: pathways from a knowledge graph",
            "description": "Errors are RFC 9457 problem details (application/problem+json). A method a path does "
                           "not list is answered 405 with an Allow header.",
            "version": __version__,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
            "x-ontology-version": service.kb.version,
        },
        "tags": [{"name": t} for t in ("pathways", "cases", "ontology", "sparql", "queries", "service")],
        "paths": paths(service),
        "components": {"schemas": schemas(service), "responses": error_responses()},
    }
