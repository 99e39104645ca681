"""The SPARQL 1.1 Protocol endpoint (queries only), answered by Oxigraph's engine.

The dataset is the caller's site: the ontology, its closure and every stored case with its
inferences. With no dataset in the request or the query, the default graph is the union of
all graphs, so ``?case esi:hasApplicablePathway ?p`` works without ``GRAPH``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import pyoxigraph as ox
from flask import Blueprint, Response, request

from .access import note, query_hash, requires
from .errors import ESIError, NotAcceptable, QueryError, UnsupportedMediaType
from .guard import check_query
from .media import GRAPH_FORMATS, RDF_FORMATS
from .store import QueryScope
from .terms import QueryResult, serialized
from .web import negotiate, service, site

bp = Blueprint("sparql", __name__)

RESULTS_JSON = "application/sparql-results+json"
RESULTS_XML = "application/sparql-results+xml"
CSV = "text/csv"
TSV = "text/tab-separated-values"
SELECT_FORMATS = [RESULTS_JSON, RESULTS_XML, CSV, TSV, "application/json"]


class UpdateRefused(ESIError):
    status = 403
    type_slug = "update-refused"
    title = "Updates are refused"


class RowLimit(ESIError):
    status = 422
    type_slug = "too-many-results"
    title = "Too many results"


@bp.route("/sparql", methods=["GET", "POST"])
@requires("cases:read")
def endpoint() -> Response:
    query, default_graphs, named_graphs = _read_request()
    if query is None:
        return _service_description(negotiate(GRAPH_FORMATS))
    note(query_sha256=query_hash(query, *default_graphs, "|", *named_graphs))
    check_query(query, default_graphs, named_graphs)
    return run_limited(query, QueryScope(tuple(default_graphs), tuple(named_graphs)))


def run_limited(query: str, scope: QueryScope) -> Response:
    """Run a query on the caller's site under the time limit and row cap (the store isolates it)."""
    svc = service()
    select_media, graph_media = _acceptable(SELECT_FORMATS), _acceptable(GRAPH_FORMATS)
    max_rows = svc.settings.query_max_rows
    media, body = svc.site_store(site()).run_limited(
        query, scope, svc.settings.query_timeout_s,
        lambda result: execute(result, select_media, graph_media, max_rows))
    return Response(body, mimetype=media)


def _acceptable(offers: list[str]) -> str | None:
    try:
        return negotiate(offers)
    except NotAcceptable:
        return None


def execute(result: QueryResult, select_media: str | None, graph_media: str | None,
            max_rows: int) -> tuple[str, bytes]:
    """Evaluate and serialize a query's result: ``(media type, body)``. Runs where the store runs the query."""
    if isinstance(result, ox.QuerySolutions | ox.QueryBoolean):
        if select_media is None:
            raise NotAcceptable(f"a SELECT or ASK result can be sent as {', '.join(SELECT_FORMATS)}")
        if isinstance(result, ox.QueryBoolean):
            return _mime(select_media), _boolean(bool(result), select_media).encode()
        variables = [v.value for v in result.variables]
        rows = _capped(result, max_rows)
        return _mime(select_media), _solutions(variables, rows, select_media).encode()
    if graph_media is None:
        raise NotAcceptable(f"a CONSTRUCT or DESCRIBE result can be sent as {', '.join(GRAPH_FORMATS)}")
    triples = _capped(result, max_rows)
    return graph_media, serialized(triples, format=RDF_FORMATS[graph_media])


def _read_request() -> tuple[str | None, list[str], list[str]]:
    """The query and the protocol dataset, from GET, POST form or POST application/sparql-query."""
    args = request.args
    if "update" in args:
        raise UpdateRefused("this endpoint answers queries only")
    queries = args.getlist("query")
    default_graphs = args.getlist("default-graph-uri")
    named_graphs = args.getlist("named-graph-uri")
    if request.method == "POST":
        kind = (request.mimetype or "").lower()
        if kind == "application/x-www-form-urlencoded":
            form = request.form
            if "update" in form:
                raise UpdateRefused("this endpoint answers queries only")
            queries += form.getlist("query")
            default_graphs += form.getlist("default-graph-uri")
            named_graphs += form.getlist("named-graph-uri")
        elif kind == "application/sparql-query":
            queries.append(request.get_data(as_text=True))
        elif kind == "application/sparql-update":
            raise UpdateRefused("this endpoint answers queries only")
        else:
            raise UnsupportedMediaType(
                "POST a query as application/x-www-form-urlencoded or application/sparql-query")
        if not queries:
            raise QueryError("no query in the request")
    if len(queries) > 1:
        raise QueryError("send exactly one query")
    return (queries[0] if queries else None), default_graphs, named_graphs


def _capped(items: Iterable[Any], limit: int) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if len(out) >= limit:
            raise RowLimit(f"the result has more than {limit} rows; add LIMIT or narrow the query")
        out.append(item)
    return out


def _mime(media: str) -> str:
    return RESULTS_JSON if media == "application/json" else media


# -- result serializations -------------------------------------------------------------------


def _term_json(term: Any) -> dict[str, str]:
    if isinstance(term, ox.NamedNode):
        return {"type": "uri", "value": term.value}
    if isinstance(term, ox.BlankNode):
        return {"type": "bnode", "value": term.value}
    out = {"type": "literal", "value": term.value}
    if term.language:
        out["xml:lang"] = term.language
    elif term.datatype.value != "http://www.w3.org/2001/XMLSchema#string":
        out["datatype"] = term.datatype.value
    return out


def _term_xml(term: Any) -> str:
    if isinstance(term, ox.NamedNode):
        return f"<uri>{escape(term.value)}</uri>"
    if isinstance(term, ox.BlankNode):
        return f"<bnode>{escape(term.value)}</bnode>"
    if term.language:
        return f"<literal xml:lang={quoteattr(term.language)}>{escape(term.value)}</literal>"
    if term.datatype.value != "http://www.w3.org/2001/XMLSchema#string":
        return f"<literal datatype={quoteattr(term.datatype.value)}>{escape(term.value)}</literal>"
    return f"<literal>{escape(term.value)}</literal>"


def _solutions(variables: list[str], rows: list[Any], media: str) -> str:
    if media in (RESULTS_JSON, "application/json"):
        bindings = [{v: _term_json(row[v]) for v in variables if row[v] is not None} for row in rows]
        return json.dumps({"head": {"vars": variables}, "results": {"bindings": bindings}}, ensure_ascii=False)
    if media == RESULTS_XML:
        head = "".join(f"<variable name={quoteattr(v)}/>" for v in variables)
        body = "".join(
            "<result>" + "".join(f"<binding name={quoteattr(v)}>{_term_xml(row[v])}</binding>"
                                 for v in variables if row[v] is not None) + "</result>"
            for row in rows
        )
        return (f'<?xml version="1.0"?>\n<sparql xmlns="http://www.w3.org/2005/sparql-results#">'
                f"<head>{head}</head><results>{body}</results></sparql>\n")
    if media == CSV:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(variables)
        for row in rows:
            writer.writerow(["" if row[v] is None else (f"_:{row[v].value}" if isinstance(row[v], ox.BlankNode)
                                                         else row[v].value) for v in variables])
        return buffer.getvalue()
    lines = ["\t".join(f"?{v}" for v in variables)]
    lines += ["\t".join("" if row[v] is None else str(row[v]) for v in variables) for row in rows]
    return "\n".join(lines) + "\n"


def _boolean(value: bool, media: str) -> str:
    if media == RESULTS_XML:
        return (f'<?xml version="1.0"?>\n<sparql xmlns="http://www.w3.org/2005/sparql-results#"><head/>'
                f"<boolean>{'true' if value else 'false'}</boolean></sparql>\n")
    if media in (CSV, TSV):
        return ("true" if value else "false") + "\n"
    return json.dumps({"head": {}, "boolean": value})


def _service_description(media: str) -> Response:
    endpoint = request.base_url
    sd = "http://www.w3.org/ns/sparql-service-description#"
    ttl = f"""@prefix sd: <{sd}> .
@prefix fmt: <http://www.w3.org/ns/formats/> .
[] a sd:Service ;
   sd:endpoint <{endpoint}> ;
   sd:supportedLanguage sd:SPARQL11Query ;
   sd:resultFormat fmt:SPARQL_Results_JSON , fmt:SPARQL_Results_XML , fmt:SPARQL_Results_CSV ,
                   fmt:SPARQL_Results_TSV , fmt:Turtle , fmt:N-Triples , fmt:JSON-LD ;
   sd:feature sd:UnionDefaultGraph ;
   sd:defaultDataset [ a sd:Dataset ; sd:defaultGraph [ a sd:Graph ] ] .
"""
    graph = ox.parse(ttl, format=ox.RdfFormat.TURTLE)
    return Response(serialized(graph, format=RDF_FORMATS[media]), mimetype=media)
