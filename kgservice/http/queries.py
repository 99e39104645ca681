"""Named queries: one SPARQL query per ``queries/*.rq`` file, described by its ``#+`` header.

Header format (one ``#+`` line each; parameters as a list)::

    #+ summary: Cases by response category
    #+ description: Stored cases whose inferred category is the one given.
    #+ params:
    #+   - name: category
    #+     type: code
    #+     description: a response category code (GET /vocabulary)
    #+     example: primary-non-responder

Parameter types: ``code`` (an ontology code, bound as its IRI), ``iri``, ``string``,
``integer``. Values are bound by Oxigraph (``substitutions``), never pasted into the query
text; Oxigraph binds only variables the query projects, so a parameter must appear in
``SELECT``. Use each parameter in a required pattern outside sub-SELECTs: a value bound
to a variable that only an OPTIONAL or a sub-SELECT uses filters nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyoxigraph as ox
from flask import Blueprint, Response, current_app, request

from ..core.ontology import ESI
from ..errors import InvalidCase, NotFound, OntologyError, Violation
from ..security.access import note, query_hash, requires
from .sparql import SELECT_FORMATS, answer
from .web import negotiate, service

bp = Blueprint("queries", __name__)

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]*$")
PARAM_TYPES = ("code", "iri", "string", "integer")


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    description: str = ""
    example: str = ""
    required: bool = True


@dataclass(frozen=True)
class NamedQuery:
    name: str
    summary: str
    description: str
    params: tuple[Param, ...]
    text: str

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "description": self.description,
            "params": [p.__dict__ for p in self.params],
            "href": f"/queries/{self.name}",
        }

    def bindings(self, args: dict[str, str], known_codes: frozenset[Any]) -> dict[ox.Variable, Any]:
        """Engine bindings for the request's arguments; every problem reported at once."""
        problems = [Violation(k, f"unknown parameter {k!r}") for k in args if k not in {p.name for p in self.params}]
        bound: dict[ox.Variable, Any] = {}
        for p in self.params:
            raw = args.get(p.name)
            if raw is None:
                if p.required:
                    problems.append(Violation(p.name, f"parameter {p.name!r} ({p.type}) is required"))
                continue
            try:
                bound[ox.Variable(p.name)] = _term(p, raw, known_codes)
            except ValueError as exc:
                problems.append(Violation(p.name, str(exc), value=raw))
        if problems:
            raise InvalidCase(problems)
        return bound


def _term(p: Param, raw: str, known_codes: frozenset[Any]) -> Any:
    if p.type == "code":
        iri = ESI[raw]
        if iri not in known_codes:
            raise ValueError(f"{raw!r} is not a code of the ontology (GET /vocabulary)")
        return ox.NamedNode(str(iri))
    if p.type == "iri":
        if not re.match(r"^https?://[^\s<>\"{}|\\^`]+$", raw):
            raise ValueError(f"{raw!r} is not an http(s) IRI")
        return ox.NamedNode(raw)
    if p.type == "integer":
        if not re.fullmatch(r"-?\d{1,18}", raw):
            raise ValueError(f"{raw!r} is not an integer")
        return ox.Literal(raw, datatype=ox.NamedNode("http://www.w3.org/2001/XMLSchema#integer"))
    return ox.Literal(raw)


def parse_query_file(path: Path) -> NamedQuery:
    text = path.read_text(encoding="utf-8")
    header: dict[str, Any] = {}
    params: list[dict[str, str]] = []
    in_params = False
    for line in text.splitlines():
        if not line.startswith("#+"):
            continue
        body = line[2:]
        stripped = body.strip()
        if not stripped:
            continue
        if in_params and stripped.startswith("- "):
            params.append({})
            stripped = stripped[2:]
        if in_params and body.startswith("   ") and params:
            key, _, value = stripped.partition(":")
            params[-1][key.strip()] = value.strip()
            continue
        key, _, value = stripped.partition(":")
        in_params = key.strip() == "params"
        if not in_params:
            header[key.strip()] = value.strip()
    name = path.stem
    if not NAME_PATTERN.match(name):
        raise OntologyError(f"query file name {path.name} must be lower-case letters, digits and dashes")
    parsed = []
    for p in params:
        if not p.get("name"):
            raise OntologyError(f"{path.name}: every parameter needs a name (keys indented under '- name:')")
        if p.get("type", "string") not in PARAM_TYPES:
            raise OntologyError(f"{path.name}: parameter {p.get('name')} has unknown type {p.get('type')}")
        parsed.append(Param(name=p["name"], type=p.get("type", "string"), description=p.get("description", ""),
                            example=p.get("example", ""),
                            required=p.get("required", "true").lower() != "false"))
    if "summary" not in header:
        raise OntologyError(f"{path.name}: the #+ header needs a summary")
    return NamedQuery(name, header["summary"], header.get("description", ""), tuple(parsed), text)


@dataclass
class Catalog:
    queries: dict[str, NamedQuery] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> Catalog:
        return cls({q.name: q for q in (parse_query_file(p) for p in sorted(folder.glob("*.rq")))})


def catalog() -> Catalog:
    found = current_app.extensions.get("esi-queries")
    if found is None:
        found = current_app.extensions["esi-queries"] = Catalog.load(service().settings.queries_dir)
    return found  # type: ignore[no-any-return]


@bp.get("/queries")
@requires("cases:read")
def list_queries() -> Response:
    return Response(json.dumps([q.describe() for q in catalog().queries.values()]), mimetype="application/json")


@bp.get("/queries/<name>")
@requires("cases:read")
def run_query(name: str) -> Response:
    query = catalog().queries.get(name)
    if query is None:
        raise NotFound(f"no named query {name!r}; GET /queries lists them")
    svc = service()
    repeated = [Violation(k, f"parameter {k!r} is given more than once")
                for k in request.args if len(request.args.getlist(k)) > 1]
    if repeated:
        raise InvalidCase(repeated)
    args = dict(request.args.items())
    bindings = query.bindings(args, svc.kb.ontology.codes)
    note(query=name, query_sha256=query_hash(query.text, *(f"{k}={v}" for k, v in sorted(args.items()))))
    negotiate(SELECT_FORMATS)  # 406 before running anything
    return answer(query.text, substitutions=bindings)
