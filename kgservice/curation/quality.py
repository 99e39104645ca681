"""``kgservice check``: is the ontology fit to serve? A QC report in the manner of ROBOT's ``report``.

One row per problem: severity, rule, subject, property, value and a message a curator can act
on. The checks are, in order: the header; the quality shapes (``shapes/ontology-qc.ttl``); the
violation queries (``shapes/qc/*-violation.rq``, each a SELECT that must return nothing); the
terms named inside the SPARQL rules' text; the OWL 2 RL profile; the SPARQL rules' syntax; the
OWL rules' readability; and coherence (unsatisfiable classes, inconsistent combinations, see
:mod:`kgservice.coherence`). No check raises on a bad ontology: each yields its rows, so that a
curator sees every problem at once.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyoxigraph as ox
from rdflib import OWL, RDF, RDFS, BNode, Graph, URIRef
from rdflib.namespace import DCTERMS, SH
from rdflib.term import Node

from ..config import Settings
from ..core.ontology import CASE_BASE, ESI, Ontology
from ..core.terms import Substitutions, from_ox, triples_to_ox
from ..core.validation import ONTOLOGY_SHAPES, load_shapes, validate_ontology
from ..errors import OntologyError
from ..owlprofile import profile_problems

#: What the ``owl:Ontology`` header must state.
HEADER = (DCTERMS.title, DCTERMS.description, DCTERMS.license, OWL.versionIRI, OWL.versionInfo)
SEVERITIES = ("error", "warn", "info")
FORMATS = ("text", "json", "tsv", "md")
COLUMNS = ("severity", "rule", "subject", "property", "value", "message")
#: An esi: term named in a SPARQL rule's text, as a prefixed name or a full IRI.
_MENTION = re.compile(r"(?<![\w<])esi:([A-Za-z0-9_][A-Za-z0-9_.-]*[A-Za-z0-9_]|[A-Za-z0-9_])|<"
                      + re.escape(str(ESI)) + r"([^>\s]+)>")
_PAIR = re.compile(r"esi:([A-Za-z0-9_-]+)\s+esi:([A-Za-z0-9_-]+)")


@dataclass(frozen=True)
class Problem:
    """One row of the report. ``subject``, ``property`` and ``value`` are CURIEs or text."""

    severity: str
    rule: str
    subject: str
    message: str
    property: str = ""
    value: str = ""

    def line(self) -> str:
        where = " ".join(part for part in (self.subject, self.property, self.value) if part)
        return f"{self.severity.upper():5} {self.rule}  {where}: {self.message}"


@dataclass
class QualityReport:
    """What ``kgservice check`` found."""

    subject: str
    problems: list[Problem] = field(default_factory=list)

    def count(self, severity: str) -> int:
        return sum(1 for p in self.problems if p.severity == severity)

    def fails(self, fail_on: str = "error") -> bool:
        """Whether the report fails at ``fail_on`` (``error``: errors only; ``warn``: warnings too)."""
        levels = SEVERITIES[: SEVERITIES.index(fail_on) + 1]
        return any(p.severity in levels for p in self.problems)

    @property
    def ok(self) -> bool:
        return not self.fails("error")

    def summary(self) -> str:
        """
        >>> QualityReport("ontology 1.0.0+abc").summary()
        'ontology 1.0.0+abc: 0 errors, 0 warnings'
        """
        errors, warnings = self.count("error"), self.count("warn")
        return f"{self.subject}: {errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"

    def render(self, fmt: str = "text") -> str:
        if fmt == "json":
            return json.dumps({"ontology": self.subject, "errors": self.count("error"), "warnings": self.count("warn"),
                               "problems": [asdict(p) for p in self.problems]}, indent=2, ensure_ascii=False)
        if fmt == "tsv":
            out = io.StringIO()
            writer = csv.writer(out, delimiter="\t", lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows([_one_line(getattr(p, c)) for c in COLUMNS] for p in self.problems)
            return out.getvalue().rstrip("\n")
        if fmt == "md":
            rows = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
            rows += ["| " + " | ".join(_one_line(getattr(p, c)).replace("|", "\\|") for c in COLUMNS) + " |"
                     for p in self.problems]
            return "\n".join([f"**{self.summary()}**", "", *rows])
        return "\n".join([*(p.line() for p in self.problems), self.summary()])


def check_ontology(settings: Settings) -> QualityReport:
    try:
        ontology = Ontology.load(settings.ontology_path)
    except OntologyError as exc:
        failed = Problem("error", "load", str(settings.ontology_path), _one_line(exc.detail))
        return QualityReport(f"ontology {settings.ontology_path}", [failed])
    problems = [
        *header_problems(ontology),
        *shape_problems(ontology, settings),
        *violation_problems(ontology, settings.shapes_dir / "qc"),
        *rule_text_problems(ontology),
        *(Problem("error", "owl2-rl-profile", _subject(ontology.graph, named), message)
          for named, message in profile_problems(ontology.graph)),
        *sparql_rule_problems(ontology),
        *owl_rule_problems(ontology),
    ]
    if not any(p.rule in ("load", "sparql-rule-syntax") for p in problems):
        problems += coherence_problems(ontology, settings)
    return QualityReport(f"ontology {_version(ontology)}", problems)


# -- header and shapes --------------------------------------------------------------------


def header_problems(ontology: Ontology) -> Iterator[Problem]:
    g = ontology.graph
    try:
        iri = ontology.iri
    except OntologyError:
        yield Problem("error", "header", str(ontology.path), "no owl:Ontology header: state `<ontology IRI> a "
                      f"owl:Ontology` with {', '.join(curie(g, p) for p in HEADER)}")
        return
    for p in HEADER:
        if g.value(iri, p) is None:
            yield Problem("error", "header", f"<{iri}>", f"the owl:Ontology header needs {curie(g, p)}",
                          property=curie(g, p))


def _version(ontology: Ontology) -> str:
    try:
        return ontology.version
    except OntologyError:  # no header: reported by header_problems
        return f"0+{ontology.digest[:12]}"


def shape_problems(ontology: Ontology, settings: Settings) -> Iterator[Problem]:
    path = settings.shapes_dir / ONTOLOGY_SHAPES
    try:
        shapes = load_shapes(path)
        report = validate_ontology(ontology, shapes)
    except OntologyError as exc:
        yield Problem("error", "load", str(path), _one_line(exc.detail))
        return
    g = ontology.graph
    for v in report.violations:
        focus, _, prop = v.path.partition(" ")
        node: Node = URIRef(focus.strip("<>")) if focus.startswith("<") else BNode(focus)
        rule = curie(shapes, URIRef(v.shape)) if v.shape else "shapes"
        message = v.message.replace(str(ESI), "esi:")  # a term a message names, as the curator writes it
        yield Problem("error", rule, _subject(g, node), message, property=curie(g, URIRef(prop)) if prop else "")


# -- violation queries ----------------------------------------------------------------------


@dataclass(frozen=True)
class ViolationQuery:
    """A ``*-violation.rq`` file: its rule name, severity, message template and query."""

    rule: str
    severity: str
    message: str
    suggest: str | None
    query: str

    @classmethod
    def load(cls, path: Path) -> ViolationQuery:
        text = path.read_text(encoding="utf-8")
        header = dict(line[2:].strip().partition(":")[::2] for line in text.splitlines() if line.startswith("#+"))
        header = {k.strip(): v.strip() for k, v in header.items()}
        severity = header.get("severity", "error")
        if severity not in SEVERITIES:
            raise OntologyError(f"{path.name}: severity must be one of {', '.join(SEVERITIES)}, not {severity!r}")
        return cls(path.name.removesuffix("-violation.rq"), severity, header.get("message", "violates " + path.stem),
                   header.get("suggest"), text)


def violation_problems(ontology: Ontology, folder: Path) -> Iterator[Problem]:
    """One row per solution of each violation query, run on the ontology as written."""
    store = ox.Store()
    store.extend(triples_to_ox(ontology.graph, ox.DefaultGraph()))
    g = ontology.graph
    declared = _declared(g)
    for path in sorted(folder.glob("*-violation.rq")):
        try:
            check = ViolationQuery.load(path)
            solutions = store.query(check.query)
        except (OntologyError, SyntaxError, OSError) as exc:
            yield Problem("error", "load", str(path), _one_line(str(exc)))
            continue
        if not isinstance(solutions, ox.QuerySolutions):
            yield Problem("error", "load", str(path), "a violation query must be a SELECT")
            continue
        variables = solutions.variables
        for row in solutions:
            bound = {v.value: from_ox(row[v]) for v in variables if row[v] is not None}
            shown = {name: _subject(g, node) if name == "subject" else _shown(g, node) for name, node in bound.items()}
            message = _filled(check.message, shown)
            if check.suggest and isinstance(suggested := bound.get(check.suggest), URIRef):
                message += _did_you_mean(suggested, declared)
            yield Problem(check.severity, check.rule, shown.get("subject", ""), message,
                          property=shown.get("property", ""), value=shown.get("value", ""))


def _filled(template: str, shown: dict[str, str]) -> str:
    """
    >>> _filled("{value} is not a {range}", {"value": "esi:rutine", "range": "esi:Urgency"})
    'esi:rutine is not a esi:Urgency'
    """
    return re.sub(r"\{(\w+)\}", lambda m: shown.get(m.group(1), "?"), template)


# -- terms named inside SPARQL rules --------------------------------------------------------


def rule_text_problems(ontology: Ontology) -> Iterator[Problem]:
    """Every esi: term a SPARQL rule's text names is declared, and of the kind its property takes."""
    g = ontology.graph
    declared = _declared(g)
    for rule in sorted(g.subjects(RDF.type, SH.SPARQLRule), key=str):
        text = str(g.value(rule, SH.construct) or "")
        subject = _subject(g, rule)
        for name in sorted({m.group(1) or m.group(2) for m in _MENTION.finditer(text)}):
            term = ESI[name]
            if term not in declared:
                yield Problem("error", "undeclared-term", subject,
                              f"its sh:construct names {curie(g, term)}, which is never declared: the rule matches "
                              f"nothing, or concludes a term no one knows{_did_you_mean(term, declared)}",
                              property="sh:construct", value=curie(g, term))
        for prop_name, value_name in sorted(set(_PAIR.findall(text))):
            prop, value = ESI[prop_name], ESI[value_name]
            for range_ in g.objects(prop, RDFS.range):
                if (range_, RDF.type, OWL.Class) in g and value in declared and not _is_a(g, value, range_):
                    yield Problem("error", "wrong-kind", subject,
                                  f"its sh:construct gives {curie(g, prop)} the value {curie(g, value)}, which is not "
                                  f"a {curie(g, URIRef(str(range_)))} (the range of {curie(g, prop)})",
                                  property="sh:construct", value=curie(g, value))


def _declared(g: Graph) -> set[URIRef]:
    return {s for s in g.subjects(RDF.type, None) if isinstance(s, URIRef)}


def _is_a(g: Graph, value: Node, cls: Node) -> bool:
    return any(cls in set(g.transitive_objects(t, RDFS.subClassOf)) for t in g.objects(value, RDF.type)) or \
        cls in set(g.transitive_objects(value, RDFS.subClassOf))


def _did_you_mean(term: URIRef, declared: set[URIRef]) -> str:
    names = [str(d)[len(str(ESI)):] for d in declared if d.startswith(str(ESI))]
    close = difflib.get_close_matches(str(term)[len(str(ESI)):], names, n=1, cutoff=0.75)
    return f" (did you mean esi:{close[0]}?)" if close else ""


# -- SPARQL and OWL rules ---------------------------------------------------------------------


def sparql_rule_problems(ontology: Ontology) -> Iterator[Problem]:
    """Every SPARQL rule must parse and run as the reasoner runs it: a CONSTRUCT with ``$this`` bound."""
    try:
        rules = ontology.sparql_rules
    except (OntologyError, ValueError) as exc:  # no sh:construct, or a stratum or order that is no number
        yield Problem("error", "sparql-rule-syntax", str(ontology.path),
                      f"the SPARQL rules cannot be read, so none was parsed: {_one_line(str(exc))}")
        return
    store = ox.Store()
    for rule in rules:
        construct = str(ontology.graph.value(rule.term.iri, SH.construct) or "")
        if (error := _rule_error(store, rule.query, prefix_lines=rule.query.count("\n") - construct.count("\n"))):
            yield Problem("error", "sparql-rule-syntax", curie(ontology.graph, rule.term.iri), error,
                          property="sh:construct")


def _rule_error(store: ox.Store, query: str, prefix_lines: int) -> str | None:
    this: Substitutions = {ox.Variable("this"): ox.NamedNode(CASE_BASE + "check")}
    try:
        result = store.query(query, substitutions=this)
    except SyntaxError as exc:
        return f"sh:construct does not parse: {_construct_position(str(exc), prefix_lines)}"
    except RuntimeError as exc:  # e.g. a query that never uses $this
        return f"sh:construct cannot run with $this bound to a case: {_one_line(str(exc))}"
    return None if isinstance(result, ox.QueryTriples) else "sh:construct must be a CONSTRUCT query"


def _construct_position(message: str, prefix_lines: int) -> str:
    """The parser's message, its ``error at LINE:COL`` counted within the rule's sh:construct."""

    def shifted(m: re.Match[str]) -> str:
        line = int(m.group(1)) - prefix_lines
        return f"error at line {line}, column {m.group(2)} of sh:construct" if line > 0 else m.group(0)

    return _one_line(re.sub(r"error at (\d+):(\d+)", shifted, message, count=1))


def owl_rule_problems(ontology: Ontology) -> Iterator[Problem]:
    """Every OWL rule class has a condition, and every condition is one the explanations can read."""
    g = ontology.graph
    for (prop, value), rules in sorted(ontology.owl_rules.items()):
        for rule in rules:
            if not any(s != rule.term.iri for s in g.subjects(RDFS.subClassOf, rule.term.iri)):
                yield Problem("error", "owl-rule", curie(g, rule.term.iri),
                              f"concludes {curie(g, prop)} {curie(g, value)} but has no condition: add "
                              f"`<class expression> rdfs:subClassOf {curie(g, rule.term.iri)}`")
    for cls in sorted({o for o in g.objects(None, RDFS.subClassOf) if isinstance(o, URIRef)}):
        stated = sum(1 for s in g.subjects(RDFS.subClassOf, cls) if s != cls)
        unreadable = stated - len(ontology.conditions_of(cls))
        if unreadable:
            yield Problem("error", "owl-rule", curie(g, cls),
                          f"{unreadable} of its {stated} sufficient conditions cannot be explained: use named "
                          "classes, owl:intersectionOf, owl:unionOf, owl:hasValue and owl:someValuesFrom a named class")


def coherence_problems(ontology: Ontology, settings: Settings) -> list[Problem]:
    """Unsatisfiable classes, inconsistent individuals and inconsistent inferred combinations."""
    from ..coherence import inconsistent_cases, unsatisfiable_classes
    from ..core.kb import KnowledgeBase

    g = ontology.graph
    out = [Problem("error", "unsatisfiable", _subject(g, URIRef(i.subject)), i.message)
           for i in unsatisfiable_classes(ontology, settings.engine)]
    if out:
        return out  # every case would be inconsistent too
    try:
        kb = KnowledgeBase(ontology, load_shapes(settings.shapes_dir / "case.ttl"), engine=settings.engine)
    except OntologyError as exc:
        return [Problem("error", "load", str(settings.shapes_dir / "case.ttl"), _one_line(exc.detail))]
    return [Problem("error", "inconsistent-combination", _subject(g, URIRef(i.subject)), i.message)
            for i in inconsistent_cases(kb, ontology)]


# -- helpers -------------------------------------------------------------------------------


def curie(g: Graph, iri: Node) -> str:
    """``prefix:local`` where the graph binds the namespace, else ``<iri>``."""
    return g.namespace_manager.normalizeUri(iri) if isinstance(iri, URIRef) else str(iri)


def _shown(g: Graph, node: Node) -> str:
    return curie(g, node) if isinstance(node, URIRef) else _subject(g, node) if isinstance(node, BNode) else str(node)


def _subject(g: Graph, node: Node) -> str:
    """A term as CURIE; a blank node (a class expression) as the named class it belongs to."""
    if isinstance(node, URIRef):
        return curie(g, node)
    named = _named_owner(g, node, set())
    return f"(a class expression of {curie(g, named)})" if named is not None else "(anonymous axiom)"


def _named_owner(g: Graph, node: Node, seen: set[Node]) -> URIRef | None:
    if isinstance(node, URIRef):
        return node
    if node in seen:
        return None
    seen.add(node)
    for p in (RDFS.subClassOf, OWL.equivalentClass):
        for other in (*g.objects(node, p), *g.subjects(p, node)):
            if isinstance(other, URIRef):
                return other
    for parent in g.subjects(None, node):  # list cells, restrictions inside intersections
        if (found := _named_owner(g, parent, seen)) is not None:
            return found
    return None


def _one_line(text: Iterable[str] | str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
