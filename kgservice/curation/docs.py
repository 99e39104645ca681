"""``kgservice docs`` and ``GET /docs``: the ontology as a page a clinician or curator can read.

Generated from the ontology alone (Jinja2, Flask's own template engine): the version and its
change note, the value sets of the case contract, each pathway in order of care with the
rules that conclude it in words, the response-category rules, the parameters with their
values, every other term, the article sections cited, and the cross-references (SKOS
mappings). Every term of the ontology has an element whose ``id`` is its local name, so a
rule IRI in an answer (``…#rule-primary-non-responder``) is followed by ``/docs#rule-primary-non-responder``.
The page has no script and no inline style: its one style sheet is a file of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from flask import Blueprint, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from rdflib import OWL, RDF, RDFS, SKOS, URIRef
from rdflib.namespace import DCTERMS, SH

from ..core.ontology import ESI, AllOf, AnyOf, Expr, HasValue, Named, Ontology, SomeValues, local_name
from ..http.web import service

CSS_NAME = "ontology-docs.css"
#: SKOS mapping properties, as the page names them.
MAPPINGS = {SKOS.exactMatch: "same as", SKOS.closeMatch: "close to", SKOS.broadMatch: "broader",
            SKOS.narrowMatch: "narrower", SKOS.relatedMatch: "related to"}
#: Known prefixes of cross-references, to show ``HP:0003416`` rather than the whole IRI.
_CURIES = (("http://purl.obolibrary.org/obo/", r"^([A-Za-z]+)_(.*)$"), ("http://snomed.info/id/", "SNOMED CT"))


@dataclass
class Entry:
    """One term as the page shows it."""

    id: str
    label: str
    iri: str
    kind: str
    definition: str = ""
    source: str = ""
    comment: str = ""
    mappings: list[dict[str, str]] = field(default_factory=list)
    facts: list[tuple[str, Any]] = field(default_factory=list)  # (what, text or a link dict)


def condition_tree(onto: Ontology, expr: Expr) -> dict[str, Any]:
    """A class expression as nested terms and groups; every group is shown in parentheses."""
    if isinstance(expr, Named):
        return {"kind": "term", **_link(onto, expr.iri)}
    if isinstance(expr, HasValue):
        value = _link(onto, expr.value) if isinstance(expr.value, URIRef) else {"label": str(expr.value)}
        return {"kind": "value", "property": onto.label(expr.prop), **value}
    if isinstance(expr, SomeValues):
        return {"kind": "value", "property": onto.label(expr.prop), "some": True, **_link(onto, expr.cls)}
    op = "AND" if isinstance(expr, AllOf) else "OR"
    assert isinstance(expr, AllOf | AnyOf)
    return {"kind": "group", "op": op, "parts": [condition_tree(onto, p) for p in expr.parts]}


def in_words(tree: dict[str, Any]) -> str:
    """A condition tree as plain text, groups in parentheses.

    >>> in_words({"kind": "group", "op": "OR", "parts": [{"kind": "term", "label": "a"},
    ...     {"kind": "group", "op": "AND", "parts": [{"kind": "term", "label": "b"}, {"kind": "term", "label": "c"}]}]})
    '(a OR (b AND c))'
    """
    if tree["kind"] == "term":
        return str(tree["label"])
    if tree["kind"] == "value":
        return f"{tree['property']}: {'some ' if tree.get('some') else ''}{tree['label']}"
    return "(" + f" {tree['op']} ".join(in_words(p) for p in tree["parts"]) + ")"


def _link(onto: Ontology, iri: URIRef) -> dict[str, Any]:
    own = str(iri).startswith(str(ESI))
    return {"label": onto.label(iri), "href": f"#{local_name(iri)}" if own else str(iri)}


def _curie(iri: str) -> str:
    for base, form in _CURIES:
        if iri.startswith(base):
            rest = iri[len(base):]
            match = re.match(form, rest) if form.startswith("^") else None
            return f"{match.group(1)}:{match.group(2)}" if match else f"{form} {rest}"
    return iri


class DocsBuilder:
    """Everything the page shows, read from one ontology (and the contract's value sets)."""

    def __init__(self, onto: Ontology, vocabulary: dict[str, dict[str, list[dict[str, str]]]]) -> None:
        self.onto = onto
        self.vocabulary = vocabulary
        self.shown: set[str] = set()

    def entry(self, iri: URIRef, kind: str) -> Entry:
        g, term = self.onto.graph, self.onto.term(iri)
        self.shown.add(local_name(iri))
        mappings = [{"relation": name, "iri": str(o), "text": _curie(str(o))}
                    for prop, name in MAPPINGS.items() for o in sorted(g.objects(iri, prop), key=str)]
        comment = " ".join(str(c) for c in g.objects(iri, RDFS.comment))
        return Entry(local_name(iri), term.label, str(iri), kind, term.definition, term.source, comment, mappings)

    def context(self) -> dict[str, Any]:
        onto, g = self.onto, self.onto.graph
        header = onto.iri
        pathways = [self.pathway(pw) for pw in sorted(onto.pathways, key=lambda p: onto.pathways[p].order)]
        rules = self.rules()
        parameters = [self.parameter(p) for p in sorted(g.subjects(ESI.parameterValue, None), key=str)
                      if isinstance(p, URIRef)]
        value_sets = [{"field": name, "terms": [_link(self.onto, URIRef(e["iri"])) | {"code": e["code"]}
                                                for e in entries]}
                      for part in ("input", "answer") for name, entries in self.vocabulary[part].items()]
        others = [self.entry(t, self.kind_of(t)) for t in sorted(onto.terms, key=lambda t: local_name(t).lower())
                  if str(t).startswith(str(ESI)) and local_name(t) not in self.shown]
        everything = [*pathways, *rules, *parameters, *others]
        sources: dict[str, list[Entry]] = {}
        for item in everything:
            if item.source:
                sources.setdefault(item.source, []).append(item)
        return {
            "title": str(g.value(header, DCTERMS.title) or "ESI-KG ontology"),
            "iri": str(header), "version": onto.version,
            "version_info": str(g.value(header, OWL.versionInfo) or ""),
            "version_iri": str(g.value(header, OWL.versionIRI) or ""),
            "prior_version": str(g.value(header, OWL.priorVersion) or ""),
            "description": str(g.value(header, DCTERMS.description) or ""),
            "change_notes": [str(n) for n in g.objects(header, SKOS.changeNote)],
            "comment": str(g.value(header, RDFS.comment) or ""),
            "value_sets": value_sets, "pathways": pathways, "rules": rules, "parameters": parameters,
            "others": others, "sources": sorted(sources.items()),
            "source_ids": {name: "source-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
                           for name in sources},
        }

    def pathway(self, iri: URIRef) -> Entry:
        info = self.onto.pathways[iri]
        item = self.entry(iri, "care pathway")
        item.facts.append(("order of care", str(info.order)))
        if info.urgency is not None:
            item.facts.append(("urgency", _link(self.onto, info.urgency)))
        elif info.urgency_follows is not None:
            follows = info.urgency_follows
            item.facts.append(("urgency", {"label": f"as urgent as the applicable {self.onto.label(follows)}",
                                           "href": f"#{local_name(follows)}"}))
        for rule in self.onto.owl_rules.get((ESI.hasApplicablePathway, iri), ()):
            item.facts.append(("concluded by", _link(self.onto, rule.term.iri)))
        return item

    def rules(self) -> list[Entry]:
        out = []
        for (prop, value), found in sorted(self.onto.owl_rules.items(), key=lambda kv: str(kv[0])):
            for rule in found:
                item = self.entry(rule.term.iri, "rule (OWL)")
                item.facts.append(("concludes", {**_link(self.onto, value),
                                                 "prefix": f"{self.onto.label(prop)}: "}))
                trees = [condition_tree(self.onto, c) for c in rule.conditions]
                item.facts.append(("when", {"conditions": trees}))
                out.append(item)
        for sparql in self.onto.sparql_rules:
            item = self.entry(sparql.term.iri, "rule (SPARQL)")
            concludes = re.findall(r"\$this\s+esi:(\w+)\s+esi:([\w-]+)", sparql.query)
            for prop, value in concludes:
                item.facts.append(("concludes", {**_link(self.onto, ESI[value]),
                                                 "prefix": f"{self.onto.label(ESI[prop])}: "}))
            item.facts.append(("stratum, order", f"{sparql.stratum}, {sparql.order:g}"))
            item.facts.append(("query", {"code": str(self.onto.graph.value(sparql.term.iri, SH.construct)).strip()}))
            out.append(item)
        return out

    def parameter(self, iri: URIRef) -> Entry:
        item = self.entry(iri, "rule parameter")
        g = self.onto.graph
        value, unit = g.value(iri, ESI.parameterValue), g.value(iri, ESI.unit)
        item.facts.append(("value", f"{value}{' ' + str(unit) if unit is not None else ''}"))
        return item

    def kind_of(self, iri: URIRef) -> str:
        types = set(self.onto.graph.objects(iri, RDF.type))
        for owl_type, name in ((OWL.Class, "class"), (OWL.ObjectProperty, "property"),
                               (OWL.DatatypeProperty, "property"), (OWL.AnnotationProperty, "annotation property")):
            if owl_type in types:
                return name
        kinds = [self.onto.label(t) for t in types if isinstance(t, URIRef) and str(t).startswith(str(ESI))]
        return ", ".join(sorted(kinds)) or "individual"


def _environment() -> Environment:
    return Environment(loader=PackageLoader("kgservice", "templates"), autoescape=select_autoescape(["html"]),
                       trim_blocks=True, lstrip_blocks=True)


def render(onto: Ontology, vocabulary: dict[str, dict[str, list[dict[str, str]]]], css_href: str = CSS_NAME) -> str:
    """The documentation page of ``onto``; ``css_href`` is where the page finds its style sheet."""
    context = DocsBuilder(onto, vocabulary).context()
    return _environment().get_template("ontology-docs.html").render(css_href=css_href, **context)


def stylesheet() -> bytes:
    return (resources.files("kgservice") / "static" / CSS_NAME).read_bytes()


def write(out_dir: Path, onto: Ontology, vocabulary: dict[str, dict[str, list[dict[str, str]]]]) -> list[Path]:
    """Write ``index.html`` and its style sheet into ``out_dir``; the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    page, css = out_dir / "index.html", out_dir / CSS_NAME
    page.write_text(render(onto, vocabulary), encoding="utf-8")
    css.write_bytes(stylesheet())
    return [page, css]


# -- GET /docs -------------------------------------------------------------------------------------

bp = Blueprint("docs", __name__)
#: The page needs nothing but its own style sheet (and links): no script at all.
DOCS_CSP = "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; " \
    "frame-ancestors 'none'"
_pages: dict[str, str] = {}  # by ontology version: the page is made once per version


@bp.get("/docs")
def docs_page() -> Response:
    kb = service().kb
    page = _pages.get(kb.version)
    if page is None:
        page = _pages[kb.version] = render(kb.ontology, kb.vocabulary, css_href=f"/docs/{CSS_NAME}")
    return _open_page(Response(page, mimetype="text/html"), kb.version)


@bp.get(f"/docs/{CSS_NAME}")
def docs_stylesheet() -> Response:
    return _open_page(Response(stylesheet(), mimetype="text/css"), service().kb.version)


def _open_page(response: Response, version: str) -> Response:
    response.headers.setdefault("Content-Security-Policy", DOCS_CSP)
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["ETag"] = f'"{version}"'
    return response
