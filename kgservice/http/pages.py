"""The web pages: a landing page, the clinician's form, the query page and sign-in.

Server-rendered with Jinja2; small scripts under ``static/`` add the token header and update
the page in place, but the clinician's form also works without them. The pages themselves
hold no case data and are open; what they send goes through the same scopes as the API.
They load only this server's script and style files: the strict default policy of
``headers.py`` (no inline script or style, never framed) is all they need.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, render_template, request

from ..core.cases import case_iri
from ..core.ontology import local_name
from ..errors import Conflict, ESIError, Violation
from ..security.access import accepts_form_token, requires
from . import forms
from .web import service, site

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
bp = Blueprint("pages", __name__, template_folder=TEMPLATES)
#: The clinician's views: their errors are drawn on the form, not sent as problem+json.
clinician_bp = Blueprint("clinician", __name__, template_folder=TEMPLATES)

VENDOR = Path(__file__).resolve().parent.parent / "static" / "vendor"


def form_fields() -> list[forms.Field]:
    from .openapi import case_schema

    vocabulary = service().vocabulary["input"]
    return forms.build(case_schema(service().kb.contract, vocabulary), vocabulary)


def _labels(group: str) -> dict[str, str]:
    return {e["code"]: e["label"] for e in service().vocabulary["answer"][group]}


def _render(template: str, status: int = 200, **context: Any) -> Response:
    context.setdefault("auth_required", service().settings.auth_required)
    return Response(render_template(template, **context), status=status, mimetype="text/html")


@bp.app_template_filter("docs_anchor")
def docs_anchor(rule: dict[str, Any] | None) -> str:
    """The documentation's anchor for a rule of an answer: ``/docs#rule-primary-non-responder``."""
    return f"/docs#{local_name(rule['iri'])}" if rule and rule.get("iri") else "/docs"


@bp.get("/")
def landing() -> Response:
    return _render("index.html")


@bp.get("/sign-in")
def sign_in() -> Response:
    return _render("signin.html")


@bp.get("/query")
def query_page() -> Response:
    from .queries import catalog

    examples = [{**q.describe(), "text": q.text} for q in catalog().queries.values()]
    return _render("query.html", examples=examples, editor=(VENDOR / "editor.js").is_file())


# -- the clinician's page -------------------------------------------------------------------------


@clinician_bp.route("/clinician", methods=["GET", "POST"])
def clinician() -> Response:
    """The form; a POST only redraws it, with a row added or removed (for browsers without scripts)."""
    if request.method == "GET":
        return _clinician_page({})
    intent = request.form.get("intent", "")
    verb, _, target = intent.partition(":")
    case = forms.read(form_fields(), request.form, remove=target if verb == "remove" else None)
    return _clinician_page(case, add=target if verb == "add" else None)


@clinician_bp.post("/clinician/assess")
@requires("pathway:run")
@accepts_form_token
def clinician_assess() -> Response:
    case = forms.read(form_fields(), request.form)
    answer = service().pathway(json.dumps(case).encode("utf-8"), "application/json", site())
    return _clinician_page(case, answer=answer)


@clinician_bp.post("/clinician/store")
@requires("cases:write")
@accepts_form_token
def clinician_store() -> Response:
    case = forms.read(form_fields(), request.form)
    stored = service().create(json.dumps(case).encode("utf-8"), "application/json", site())
    explain = "/query?" + urlencode({"example": "case-explanations", "case": str(case_iri(stored.case_id, site()))})
    return _clinician_page({**case, "id": stored.case_id}, answer=stored.answer, stored=stored.case_id,
                           explain=explain, status=201)


@clinician_bp.errorhandler(ESIError)
def page_error(exc: ESIError) -> Response:
    """A refused case is shown on the form: each violation at its input, the rest above the form."""
    case = forms.read(form_fields(), request.form) if request.method == "POST" else {}
    problem = exc.problem()  # from a reasoning worker, the error arrives as its problem JSON
    violations = [Violation(v.get("path", ""), v.get("message", "")) for v in problem.get("violations", [])]
    if exc.status == Conflict.status:
        violations = [Violation("id", exc.detail or "a case with this id is stored already")]
    response = _clinician_page(case, violations=violations, problem=problem, status=exc.status)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="esi-kg"'
    return response


def _clinician_page(case: dict[str, Any], answer: dict[str, Any] | None = None, stored: str | None = None,
                    violations: list[Violation] | None = None, problem: dict[str, Any] | None = None,
                    add: str | None = None, explain: str | None = None, status: int = 200) -> Response:
    fields = form_fields()
    errors, elsewhere = forms.errors_by_input(fields, case, violations or [])
    rows = {f.name: _rows(case.get(f.name), add == f.name) for f in fields if f.kind == "rows"}
    return _render("clinician.html", status, fields=fields, values=case, rows=rows, errors=errors,
                   elsewhere=elsewhere, problem=problem, answer=answer, stored=stored, explain=explain,
                   categories=_labels("response.category"), urgencies=_labels("pathways.urgency"),
                   input_id=forms.input_id, spoken=lambda path: forms.spoken(fields, path))


def _rows(values: Any, add: bool) -> list[dict[str, Any]]:
    """The rows to draw for a block: the case's, an empty one when there are none, one more on request."""
    rows = [r for r in values if isinstance(r, dict)] if isinstance(values, list) else []
    if not rows or add:
        rows.append({})
    return rows[: forms.MAX_ROWS]
