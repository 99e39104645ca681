"""``kgservice check``: is the ontology fit to serve? Header, quality shapes, OWL 2 RL, rules.

No check raises on a bad ontology: each yields the problems it finds, so that a curator
sees all of them at once, one line each, naming the term to edit and the check it fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pyoxigraph as ox
from rdflib import OWL, RDFS, BNode, Graph, Literal, URIRef
from rdflib.collection import Collection
from rdflib.namespace import DCTERMS, SH
from rdflib.term import Node

from .config import Settings
from .errors import OntologyError
from .ontology import CASE_BASE, Ontology
from .terms import Substitutions
from .validation import ONTOLOGY_SHAPES, load_shapes, validate_ontology

#: What the ``owl:Ontology`` header must state.
HEADER = (DCTERMS.title, DCTERMS.description, DCTERMS.license, OWL.versionIRI, OWL.versionInfo)


@dataclass(frozen=True)
class Problem:
    """One error: the term (or file) to edit, the check that failed, and what to do."""

    term: str
    check: str
    message: str

    def line(self) -> str:
        return f"{self.term} [{self.check}] {self.message}"


@dataclass
class QualityReport:
    """What ``kgservice check`` found; ``ok`` when there is no problem."""

    subject: str
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """One line per problem, then a summary.

        >>> QualityReport("ontology 1.0.0+abc").lines()
        ['ontology 1.0.0+abc: 0 errors']
        """
        n = len(self.problems)
        return [p.line() for p in self.problems] + [f"{self.subject}: {n} error{'' if n == 1 else 's'}"]


def check_ontology(settings: Settings) -> QualityReport:
    try:
        ontology = Ontology.load(settings.ontology_path)
    except OntologyError as exc:
        failed = Problem(str(settings.ontology_path), "load", _one_line(exc.detail))
        return QualityReport(f"ontology {settings.ontology_path}", [failed])
    problems = [
        *header_problems(ontology),
        *shape_problems(ontology, settings),
        *profile_problems(ontology.graph),
        *sparql_rule_problems(ontology),
        *owl_rule_problems(ontology),
    ]
    return QualityReport(f"ontology {_version(ontology)}", problems)


# -- header ----------------------------------------------------------------------------


def header_problems(ontology: Ontology) -> Iterator[Problem]:
    g = ontology.graph
    try:
        iri = ontology.iri
    except OntologyError:
        yield Problem(str(ontology.path), "header", "no owl:Ontology header: state `<ontology IRI> a owl:Ontology` "
                      f"with {', '.join(_q(g, p) for p in HEADER)}")
        return
    for p in HEADER:
        if g.value(iri, p) is None:
            yield Problem(f"<{iri}>", "header", f"the owl:Ontology header needs {_q(g, p)}")


def _version(ontology: Ontology) -> str:
    try:
        return ontology.version
    except OntologyError:  # no header: reported by header_problems
        return f"0+{ontology.digest[:12]}"


# -- quality shapes --------------------------------------------------------------------


def shape_problems(ontology: Ontology, settings: Settings) -> Iterator[Problem]:
    path = settings.shapes_dir / ONTOLOGY_SHAPES
    try:
        shapes = load_shapes(path)
        report = validate_ontology(ontology, shapes)
    except OntologyError as exc:
        yield Problem(str(path), "load", _one_line(exc.detail))
        return
    for v in report.violations:
        focus, _, prop = v.path.partition(" ")
        where = f"{_q(ontology.graph, URIRef(prop))}: " if prop else ""
        check = f"shape {_q(shapes, URIRef(v.shape))}" if v.shape else "shapes"
        yield Problem(focus, check, where + v.message)


# -- OWL 2 RL profile --------------------------------------------------------------------
#
# The subset of OWL 2 RL (https://www.w3.org/TR/owl2-profiles/#OWL_2_RL) that ESI-KG uses:
# a class expression is allowed or not depending on the side of the axiom it stands on.

SUB, SUPER = "subclass", "superclass"

#: Axioms between class expressions: predicate → (sides of the subject, sides of the object).
_AXIOMS: dict[URIRef, tuple[tuple[str, ...], tuple[str, ...]]] = {
    RDFS.subClassOf: ((SUB,), (SUPER,)),
    OWL.equivalentClass: ((SUB, SUPER), (SUB, SUPER)),  # each side is both
    OWL.disjointWith: ((SUB,), (SUB,)),
    RDFS.domain: ((), (SUPER,)),
    RDFS.range: ((), (SUPER,)),
}


def profile_problems(g: Graph) -> Iterator[Problem]:
    """Every axiom with a class expression outside OWL 2 RL, named by its named class."""
    for pred, (subject_sides, object_sides) in _AXIOMS.items():
        for s, o in sorted(g.subject_objects(pred)):
            reasons = [not_rl(g, node, side) for node, sides in ((s, subject_sides), (o, object_sides))
                       for side in sides]
            reason = _first(reasons)
            if reason and pred == OWL.equivalentClass:
                reason += " (owl:equivalentClass makes each side both a subclass and a superclass)"
            if reason:
                named = next((str(n) for n in (s, o) if isinstance(n, URIRef)), None)
                yield Problem(f"<{named}>" if named else "(anonymous axiom)", "OWL 2 RL",
                              f"{show(g, s)} {_q(g, pred)} {show(g, o)}: {reason}")


def not_rl(g: Graph, node: Node, side: str) -> str | None:
    """Why ``node`` is not an OWL 2 RL class expression on the ``side`` of an axiom; None if it is."""
    if isinstance(node, URIRef):
        return f"owl:Thing cannot be a {side} in OWL 2 RL" if node == OWL.Thing else None
    if not isinstance(node, BNode):
        return f"{show(g, node)} is not a class expression"
    if (members := g.value(node, OWL.intersectionOf)) is not None:
        return _first(not_rl(g, m, side) for m in Collection(g, members))
    if (members := g.value(node, OWL.unionOf)) is not None:
        if side == SUPER:
            return "owl:unionOf cannot be a superclass in OWL 2 RL (state one axiom per member instead)"
        return _first(not_rl(g, m, side) for m in Collection(g, members))
    if g.value(node, OWL.oneOf) is not None:
        return None if side == SUB else "owl:oneOf cannot be a superclass in OWL 2 RL"
    if (inner := g.value(node, OWL.complementOf)) is not None:
        return not_rl(g, inner, SUB) if side == SUPER else "owl:complementOf cannot be a subclass in OWL 2 RL"
    if g.value(node, OWL.onProperty) is None:
        return "a blank node that is no class expression (a restriction needs owl:onProperty)"
    return _restriction_not_rl(g, node, side)


def _restriction_not_rl(g: Graph, node: BNode, side: str) -> str | None:
    if g.value(node, OWL.hasValue) is not None:
        return None
    if (filler := g.value(node, OWL.someValuesFrom)) is not None:
        if side == SUPER:
            return "owl:someValuesFrom cannot be a superclass in OWL 2 RL (use owl:hasValue or a named class)"
        return None if filler == OWL.Thing else not_rl(g, filler, SUB)
    if (filler := g.value(node, OWL.allValuesFrom)) is not None:
        return not_rl(g, filler, SUPER) if side == SUPER else "owl:allValuesFrom cannot be a subclass in OWL 2 RL"
    for card in (OWL.maxCardinality, OWL.maxQualifiedCardinality):
        if (n := g.value(node, card)) is not None:
            if side == SUB:
                return f"{_q(g, card)} cannot be a subclass in OWL 2 RL"
            if str(n) not in ("0", "1"):
                return f"{_q(g, card)} must be 0 or 1 in OWL 2 RL, not {n}"
            on_class = g.value(node, OWL.onClass)
            return None if on_class in (None, OWL.Thing) else not_rl(g, on_class, SUB)
    used = sorted(_q(g, p) for p in set(g.predicates(node))
                  if isinstance(p, URIRef) and p.startswith(str(OWL)) and p != OWL.onProperty)
    return f"{', '.join(used) or 'an empty restriction'} is outside OWL 2 RL"


def _first(reasons: Iterable[str | None]) -> str | None:
    return next((r for r in reasons if r), None)


_CARDINALITIES = {OWL.maxCardinality: "max", OWL.minCardinality: "min", OWL.cardinality: "exactly",
                  OWL.maxQualifiedCardinality: "max", OWL.minQualifiedCardinality: "min",
                  OWL.qualifiedCardinality: "exactly"}
_SHOWN = {OWL.someValuesFrom: "some", OWL.allValuesFrom: "only", OWL.hasValue: "value", **_CARDINALITIES}


def show(g: Graph, node: Node) -> str:
    """A class expression in Manchester-like words, e.g. ``(esi:hasDiagnosis some esi:muscle-strain)``."""
    if isinstance(node, URIRef):
        return _q(g, node)
    if isinstance(node, Literal):
        return node.n3(g.namespace_manager)
    for op, word in ((OWL.intersectionOf, " and "), (OWL.unionOf, " or ")):
        if (members := g.value(node, op)) is not None:
            return "(" + word.join(show(g, m) for m in Collection(g, members)) + ")"
    if (members := g.value(node, OWL.oneOf)) is not None:
        return "{" + ", ".join(show(g, m) for m in Collection(g, members)) + "}"
    if (inner := g.value(node, OWL.complementOf)) is not None:
        return f"(not {show(g, inner)})"
    if (prop := g.value(node, OWL.onProperty)) is not None:
        for p, word in _SHOWN.items():
            if (value := g.value(node, p)) is not None:
                shown = str(value) if p in _CARDINALITIES else show(g, value)
                if (on_class := g.value(node, OWL.onClass)) is not None:
                    shown += f" {show(g, on_class)}"
                return f"({show(g, prop)} {word} {shown})"
    return "[ ]"


# -- rules -------------------------------------------------------------------------------


def sparql_rule_problems(ontology: Ontology) -> Iterator[Problem]:
    """Every SPARQL rule must parse and run as the reasoner runs it: a CONSTRUCT with ``$this`` bound."""
    try:
        rules = ontology.sparql_rules
    except (OntologyError, ValueError) as exc:  # no sh:construct, or a stratum or order that is no number
        yield Problem(str(ontology.path), "SPARQL rule",
                      f"the SPARQL rules cannot be read, so none was parsed: {_one_line(str(exc))}")
        return
    store = ox.Store()
    for rule in rules:
        construct = str(ontology.graph.value(rule.term.iri, SH.construct) or "")
        if (error := _rule_error(store, rule.query, prefix_lines=rule.query.count("\n") - construct.count("\n"))):
            yield Problem(f"<{rule.term.iri}>", "SPARQL rule", error)


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
                yield Problem(f"<{rule.term.iri}>", "OWL rule",
                              f"concludes {_q(g, prop)} {_q(g, value)} but has no condition: add "
                              f"`<class expression> rdfs:subClassOf {_q(g, rule.term.iri)}`")
    for cls in sorted({o for o in g.objects(None, RDFS.subClassOf) if isinstance(o, URIRef)}):
        stated = sum(1 for s in g.subjects(RDFS.subClassOf, cls) if s != cls)
        unreadable = stated - len(ontology.conditions_of(cls))
        if unreadable:
            yield Problem(f"<{cls}>", "OWL rule",
                          f"{unreadable} of its {stated} sufficient conditions cannot be explained: use named "
                          "classes, owl:intersectionOf, owl:unionOf, owl:hasValue and owl:someValuesFrom a named class")


# -- helpers -------------------------------------------------------------------------------


def _q(g: Graph, iri: URIRef) -> str:
    """``prefix:local`` where the graph binds the namespace, else ``<iri>``."""
    return g.namespace_manager.normalizeUri(iri)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"

