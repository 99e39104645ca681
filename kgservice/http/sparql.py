"""The SPARQL 1.1 Protocol endpoint (queries only), answered by Oxigraph's engine.

The dataset is the caller's site, and nothing else: the ontology, its closure and every stored
case with its inferences (other sites live in other stores). A query without ``FROM``/``FROM
NAMED`` and without the protocol's ``default-graph-uri``/``named-graph-uri`` sees the union of
all the site's graphs as its default graph, so ``?case esi:hasApplicablePathway ?p`` works
without ``GRAPH``. With them, they replace that dataset as SPARQL 1.1 says (the protocol's
parameters over the query's clauses); a graph name the site does not hold is an empty graph,
and nothing is ever fetched. Relative IRIs resolve against ``ESI_BASE_IRI``.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import pyoxigraph as ox
from flask import Blueprint, Response, request

from ..errors import ESIError, NotAcceptable, QueryError, UnsupportedMediaType
from ..queryrun import GRAPH_FORMATS, RESULT_FORMATS, Dataset, QueryLimits, QueryRun
from ..querytext import MAX_NESTING
from ..security.access import note, query_hash, requires
from ..security.guard import check_query
from .web import negotiate, service, site

bp = Blueprint("sparql", __name__)

#: Offered in this order: the first is the answer to a client that does not say.
SELECT_FORMATS = list(RESULT_FORMATS)
CONSTRUCT_FORMATS = ["text/turtle", "application/n-triples", "application/ld+json", "application/rdf+xml",
                     "application/trig", "application/n-quads", "application/xml", "text/xml"]
DESCRIPTION_FORMATS = ["text/turtle", "application/n-triples", "application/ld+json", "application/rdf+xml"]
_MAX_FIELDS = 100


class UpdateRefused(ESIError):
    status = 403
    type_slug = "update-refused"
    title = "Updates are refused"


def _asks_a_query() -> bool:
    """The service description (GET without a query) is open; a query needs ``cases:read``."""
    return request.method == "POST" or "query" in request.args or "update" in request.args


@bp.route("/sparql", methods=["GET", "POST"])
@requires("cases:read", when=_asks_a_query)
def endpoint() -> Response:
    query, default_graphs, named_graphs = _read_request()
    if query is None:
        return _service_description(negotiate(DESCRIPTION_FORMATS))
    note(query_sha256=query_hash(query, *default_graphs, "|", *named_graphs))
    reading = check_query(query, service().settings.query_max_length)
    dataset = None
    if default_graphs or named_graphs:
        dataset = Dataset(tuple(_graph_name(g) for g in default_graphs), tuple(_graph_name(g) for g in named_graphs))
    return answer(query, dataset=dataset, own_dataset=reading.has_dataset)


def answer(query: str, dataset: Dataset | None = None, own_dataset: bool = False,
           substitutions: dict[ox.Variable, Any] | None = None) -> Response:
    """Run a checked query on the caller's site, under the service's limits, and send its answer."""
    settings = service().settings
    run = QueryRun(query, _acceptable(SELECT_FORMATS), _acceptable(CONSTRUCT_FORMATS), dataset=dataset,
                   own_dataset=own_dataset, base_iri=settings.base_iri, substitutions=substitutions or {})
    limits = QueryLimits(settings.query_timeout_s, settings.query_max_rows, settings.query_max_response_bytes,
                         settings.query_max_memory_mb * 1024 * 1024)
    found = service().site_store(site()).run_limited(run, limits)
    return Response(found.body, mimetype=found.media_type)


def _acceptable(offers: list[str]) -> str | None:
    try:
        return negotiate(offers)
    except NotAcceptable:
        return None


def _graph_name(iri: str) -> str:
    try:
        return ox.NamedNode(iri).value
    except ValueError:
        raise QueryError(f"{iri!r} in the request's dataset is not an absolute IRI") from None


# -- the request -------------------------------------------------------------------------------


def _read_request() -> tuple[str | None, list[str], list[str]]:
    """The query and the protocol dataset, from GET, POST form or POST application/sparql-query."""
    fields = _fields(request.query_string, "utf-8")
    if request.method == "POST":
        kind = (request.mimetype or "").lower()
        if kind == "application/x-www-form-urlencoded":
            fields += _fields(request.get_data(cache=True), _charset())
        elif kind == "application/sparql-query":
            fields.append(("query", _decoded(request.get_data(cache=True), _charset())))
        elif kind == "application/sparql-update":
            raise UpdateRefused("this endpoint answers queries only")
        else:
            raise UnsupportedMediaType(
                "POST a query as application/x-www-form-urlencoded or application/sparql-query")
    if any(name == "update" for name, _ in fields):
        raise UpdateRefused("this endpoint answers queries only")
    queries = [value for name, value in fields if name == "query"]
    if request.method == "POST" and not queries:
        raise QueryError("no query in the request")
    if len(queries) > 1:
        raise QueryError("send exactly one query")
    return ((queries[0] if queries else None), [v for n, v in fields if n == "default-graph-uri"],
            [v for n, v in fields if n == "named-graph-uri"])


def _charset() -> str:
    charset = request.mimetype_params.get("charset", "utf-8")
    try:
        "a".encode(charset)  # LookupError for an unknown name and for codecs that are not text (rot13, base64)
    except LookupError:
        raise UnsupportedMediaType(f"charset {charset!r} is not known; send UTF-8") from None
    return charset


def _decoded(body: bytes, charset: str) -> str:
    try:
        return body.decode(charset)
    except UnicodeDecodeError as exc:
        raise QueryError(f"the request body is not valid {charset}: {exc.reason} at byte {exc.start}") from None


def _fields(raw: bytes, charset: str) -> list[tuple[str, str]]:
    """URL-encoded fields, decoded strictly: a byte sequence that is not ``charset`` is a 400."""
    try:
        return parse_qsl(_decoded(raw, charset), keep_blank_values=True, encoding=charset, errors="strict",
                         max_num_fields=_MAX_FIELDS)
    except UnicodeDecodeError as exc:
        raise QueryError(f"a field of the request is not valid {charset}: {exc.reason}") from None
    except ValueError as exc:
        raise QueryError(f"the request's fields cannot be read: {exc}") from None


# -- the service description ---------------------------------------------------------------------

_DESCRIPTION = """@prefix sd: <http://www.w3.org/ns/sparql-service-description#> .
@prefix fmt: <http://www.w3.org/ns/formats/> .
@prefix ent: <http://www.w3.org/ns/entailment/> .
@prefix dcterms: <http://purl.org/dc/terms/> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
@prefix lim: <https://w3id.org/esi-kg/service#> .

<{endpoint}> a sd:Service ;
    sd:endpoint <{endpoint}> ;
    sd:supportedLanguage sd:SPARQL11Query ;
    sd:resultFormat fmt:SPARQL_Results_JSON , fmt:SPARQL_Results_XML , fmt:SPARQL_Results_CSV ,
        fmt:SPARQL_Results_TSV , fmt:Turtle , fmt:N-Triples , fmt:JSON-LD , fmt:RDF_XML , fmt:TriG , fmt:N-Quads ;
    sd:feature sd:UnionDefaultGraph ;
    sd:defaultEntailmentRegime ent:Simple ;
    sd:defaultDataset <{endpoint}#dataset> ;
    dcterms:description {about_service} ;
    lim:baseIRI <{base}> ;
    lim:queryTimeLimit "{timeout}"^^xsd:decimal ;
    lim:maxResultRows {rows} ;
    lim:maxQueryLength {length} ;
    lim:maxResponseBytes {response} ;
    lim:maxQueryMemoryBytes {memory} ;
    lim:maxNesting {nesting} .

<{endpoint}#dataset> a sd:Dataset ;
    sd:defaultGraph [ a sd:Graph ; dcterms:description "The union of every graph of the caller's site." ] ;
    sd:namedGraph [ a sd:NamedGraph ; sd:name <https://w3id.org/esi-kg/graph/ontology> ;
                    dcterms:description "The ontology as written." ] ,
                  [ a sd:NamedGraph ; sd:name <https://w3id.org/esi-kg/graph/ontology-closure> ;
                    dcterms:description "The ontology's OWL 2 RL closure." ] ;
    dcterms:description {about_dataset} .

lim:baseIRI rdfs:comment "The IRI relative IRIs in a query are resolved against." .
lim:queryTimeLimit rdfs:comment "Seconds a query may run; it is then stopped and answered 503." .
lim:maxResultRows rdfs:comment "Rows (or triples) an answer may have; more is answered 422." .
lim:maxQueryLength rdfs:comment "Characters a query may have; more is answered 413." .
lim:maxResponseBytes rdfs:comment "Bytes a serialized answer may have; more is answered 422." .
lim:maxQueryMemoryBytes rdfs:comment "Memory a query may take; more stops it, answered 422." .
lim:maxNesting rdfs:comment "Levels of brackets or unary operators a query may nest; more is answered 400." .
"""


_ABOUT_SERVICE = (
    "SPARQL 1.1 queries (no updates, no SERVICE) over the caller's site only. A query without FROM, FROM NAMED, "
    "default-graph-uri or named-graph-uri has the union of the site's graphs as its default graph; with them, they "
    "make its dataset (the protocol's parameters over the query's clauses). A graph name the site does not hold is "
    "an empty graph; nothing is ever fetched.")
_ABOUT_DATASET = (
    "Each stored case has two named graphs: <https://w3id.org/esi-kg/case/SITE/ID> as asserted and "
    "<https://w3id.org/esi-kg/case/SITE/ID/inferred> with its inferences. A token sees its own site's graphs only.")


def _service_description(media: str) -> Response:
    """Built from the settings (``ESI_PUBLIC_URL``), never from the request's Host header."""
    settings = service().settings
    text = _DESCRIPTION.format(
        endpoint=settings.base_url + "/sparql", base=settings.base_iri, timeout=settings.query_timeout_s,
        rows=settings.query_max_rows, length=settings.query_max_length, response=settings.query_max_response_bytes,
        memory=settings.query_max_memory_mb * 1024 * 1024, nesting=MAX_NESTING,
        about_service=json.dumps(_ABOUT_SERVICE), about_dataset=json.dumps(_ABOUT_DATASET))
    body = text.encode() if media == "text/turtle" else ox.serialize(
        ox.parse(text, format=ox.RdfFormat.TURTLE), format=GRAPH_FORMATS[media])
    return Response(body, mimetype=media)
