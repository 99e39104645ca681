"""The HTTP API: an app factory, the case and pathway endpoints, and the problem+json errors.

Nothing is built at import time: ``create_app(settings)`` loads the ontology, the shapes
and the stores. Domain exceptions become RFC 9457 problems in one place (``_problem``).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable
from typing import Any

import pyoxigraph as ox
from flask import Blueprint, Flask, Response, current_app, request, url_for
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from .config import Settings
from .core.media import JSON, JSONLD, NTRIPLES, PROBLEM, RDF_OUT, RDFXML, TURTLE
from .core.terms import triple_to_ox
from .errors import ESIError, InternalError, InvalidCase, Violation, problem_json
from .http import cds
from .http.web import negotiate, service, site
from .security import access, headers
from .security.access import note, requires
from .service import Service

log = logging.getLogger(__name__)

#: ``GET /ontology``'s representations, each with the suffix that makes its ETag its own.
ONTOLOGY_FORMATS = {TURTLE: "ttl", JSONLD: "jsonld", NTRIPLES: "nt", RDFXML: "rdf"}
PREFIXES = {
    "esi": "https://w3id.org/esi-kg/ontology#",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "owl": "http://www.w3.org/2002/07/owl#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "dcterms": "http://purl.org/dc/terms/",
}

bp = Blueprint("esi", __name__)


def create_app(settings: Settings | None = None, service: Service | None = None) -> Flask:
    """Build the WSGI app. ``settings`` default to the environment (``ESI_*``)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["esi"] = service or Service(settings)
    headers.install(app, settings.cors_origins)  # first: a CORS preflight needs no token
    access.install(app, settings)
    app.before_request(_bounded_stream)

    from .curation.docs import bp as docs_bp
    from .http.pages import bp as pages_bp
    from .http.pages import clinician_bp
    from .http.queries import bp as queries_bp
    from .http.sparql import bp as sparql_bp

    app.register_blueprint(bp)
    app.register_blueprint(sparql_bp)
    app.register_blueprint(queries_bp)
    app.register_blueprint(docs_bp)
    app.register_blueprint(pages_bp)
    app.register_blueprint(clinician_bp)
    cds.install(app, settings)
    app.register_error_handler(ESIError, _domain_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _bounded_stream() -> None:
    """``before_request``: a body streamed without Content-Length (chunked) over the limit gets 413.

    Werkzeug cuts such a body at ``MAX_CONTENT_LENGTH`` without a word, so a view would read a
    truncated case or query. Read it here, up to one byte past the limit, and hand the views
    the whole body with its length.
    """
    environ = request.environ
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None or "wsgi.input_terminated" not in environ or limit is None:
        return
    data = get_input_stream(environ, max_content_length=limit + 1).read()
    if len(data) > limit:
        raise RequestEntityTooLarge()
    environ["wsgi.input"] = io.BytesIO(data)
    environ["CONTENT_LENGTH"] = str(len(data))
    environ.pop("HTTP_TRANSFER_ENCODING", None)


# -- errors ----------------------------------------------------------------------------------


def problem_response(body: dict[str, Any]) -> Response:
    """ASCII JSON: whatever a client sent (a lone surrogate too) can be quoted back in it."""
    return Response(json.dumps(body, ensure_ascii=True, default=str), status=body["status"], mimetype=PROBLEM)


def _domain_error(exc: ESIError) -> Response:
    if exc.status >= 500:  # the service's fault, not the client's: the log must say what happened
        log.error("%s %s answered %d: %s", request.method, request.path, exc.status, exc, exc_info=exc)
    response = problem_response(exc.problem())
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="esi-kg"'
    response.headers.extend(getattr(exc, "headers", {}))  # e.g. Retry-After of a busy store
    return response


def _http_error(exc: HTTPException) -> Response:
    if (exc.code or 500) >= 500:
        log.error("%s %s answered %s", request.method, request.path, exc.code,
                  exc_info=getattr(exc, "original_exception", None) or exc)
    title = exc.name
    response = problem_response(problem_json(exc.code or 500, title.lower().replace(" ", "-"), title,
                                             exc.description or ""))
    if exc.code == 405 and hasattr(exc, "valid_methods") and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _unexpected_error(exc: Exception) -> Response:
    log.exception("unexpected error")
    return problem_response(InternalError().problem())


# -- negotiation ------------------------------------------------------------------------------


def rdf_response(triples: Iterable[ox.Triple], media_type: str, status: int = 200) -> Response:
    prefixes = PREFIXES if media_type == TURTLE else None
    body = ox.serialize(triples, format=RDF_OUT[media_type], prefixes=prefixes)
    return Response(body, status=status, mimetype=media_type)


def _body() -> bytes:
    return request.get_data(cache=False)


# -- endpoints --------------------------------------------------------------------------------


@bp.post("/pathway")
@requires("pathway:run")
def pathway() -> Response:
    return Response(service().pathway_json(_body(), request.content_type, site()), mimetype=JSON)


@bp.post("/cases")
@requires("cases:write")
def create_case() -> Response:
    stored = service().create(_body(), request.content_type, site())
    note(case=stored.case_id)
    response = Response(json.dumps(stored.answer, ensure_ascii=False), status=201, mimetype=JSON)
    response.headers["Location"] = url_for("esi.get_case", case_id=stored.case_id)
    return response


@bp.put("/cases/<case_id>")
@requires("cases:write")
def replace_case(case_id: str) -> Response:
    stored = service().replace(case_id, _body(), request.content_type, site())
    response = Response(json.dumps(stored.answer, ensure_ascii=False), status=201 if stored.created else 200,
                        mimetype=JSON)
    if stored.created:
        response.headers["Location"] = url_for("esi.get_case", case_id=stored.case_id)
    return response


@bp.get("/cases/<case_id>")
@requires("cases:read")
def get_case(case_id: str) -> Response:
    media_type = negotiate([JSON, *RDF_OUT])
    if media_type == JSON:
        return Response(json.dumps(service().case_json(case_id, site()), ensure_ascii=False), mimetype=JSON)
    inferred = request.args.get("inferred", "false").lower() in ("1", "true", "yes")
    return rdf_response(service().case_triples(case_id, site(), inferred=inferred), media_type)


@bp.delete("/cases/<case_id>")
@requires("cases:write")
def delete_case(case_id: str) -> Response:
    service().delete(case_id, site())
    return Response(status=204)


@bp.get("/cases/<case_id>/pathway")
@requires("cases:read")
def stored_pathway(case_id: str) -> Response:
    answer = service().stored_answer(case_id, site())
    response = Response(json.dumps(answer, ensure_ascii=False), mimetype=JSON)
    # Also in headers, for clients and proxies that do not read the body's new fields.
    response.headers["ESI-Ontology-Version"] = answer["ontology_version"]
    response.headers["ESI-Stale"] = "true" if answer["stale"] else "false"
    return response


@bp.get("/cases")
@requires("cases:read")
def list_cases() -> Response:
    settings = service().settings
    page = _int_arg("page", 1, 1, 1_000_000)
    per_page = _int_arg("per_page", settings.page_size, 1, 1_000)
    category, pathway_code = request.args.get("category"), request.args.get("pathway")
    ids, total = service().list_cases(site(), category, pathway_code, page, per_page)
    body: dict[str, Any] = {
        "items": [{"id": i, "href": url_for("esi.get_case", case_id=i)} for i in ids],
        "page": page, "per_page": per_page, "total": total,
    }
    if page * per_page < total:
        body["next"] = url_for("esi.list_cases", page=page + 1, per_page=per_page, category=category,
                               pathway=pathway_code)
    return Response(json.dumps(body), mimetype=JSON)


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidCase([Violation(name, f"{name} must be an integer from {low} to {high}", value=raw)])
    return value


@bp.get("/vocabulary")
def vocabulary() -> Response:
    return Response(json.dumps(service().vocabulary, ensure_ascii=False), mimetype=JSON)


@bp.get("/ontology")
def ontology() -> Response:
    kb = service().kb
    media_type = negotiate(list(ONTOLOGY_FORMATS))
    etag = f'"{kb.version}.{ONTOLOGY_FORMATS[media_type]}"'  # each representation's bytes differ
    held = {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}
    if etag in held or f"W/{etag}" in held or "*" in held:
        response = Response(status=304)
    elif media_type == TURTLE and kb.ontology.path is not None:
        response = Response(kb.ontology.path.read_bytes(), mimetype=TURTLE)
    else:
        response = rdf_response((triple_to_ox(t) for t in kb.ontology.graph), media_type)
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["Vary"] = "Accept"
    return response


@bp.get("/health")
def health() -> Response:
    return Response(json.dumps(service().health()), mimetype=JSON)


@bp.get("/openapi.json")
def openapi() -> Response:
    from .http.openapi import document

    return Response(json.dumps(document(service())), mimetype=JSON)

