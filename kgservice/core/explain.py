"""Why a case got each conclusion: the rule that produced it and the case facts it rests on.

SPARQL rules state their own reasons (``?why esi:concludes X ; esi:because "…"``). For
OWL rules the reasons are found here by walking the rule class's sufficient conditions
(see the ontology header) against the case's facts; named classes with conditions of
their own are opened in turn, so "non-responder" reads as the category behind it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from rdflib import RDF, XSD, Literal, URIRef
from rdflib.term import Node

from .ontology import CONCLUSION_PROPERTIES, ESI, AllOf, AnyOf, Expr, HasValue, Named, Ontology, SomeValues
from .terms import Triple

# rdflib builds a new term at every attribute access of a namespace: the loops use these
_TYPE, _HAS_DERIVATION, _DERIVATION, _CONCLUDES = RDF.type, ESI.hasDerivation, ESI.Derivation, ESI.concludes
_BY_RULE, _BECAUSE, _PATHWAY, _STATEMENT = ESI.byRule, ESI.because, ESI.hasApplicablePathway, ESI.statement
#: Reasons in words, as literals: most repeat from case to case, and rdflib takes ~20 µs to make one.
_SAID: dict[str, Literal] = {}


class Facts:
    """A small read-only triple index: membership and ``objects(s, p)``, nothing else.

    Explanations ask a few hundred such questions per case; an rdflib Graph would cost
    more to build than the questions cost to answer.
    """

    def __init__(self, *sources: Iterable[Triple], base: Facts | None = None) -> None:
        self._objects: dict[tuple[Node, Node], set[Node]] = {}
        self._values: dict[Node, set[Node]] = {}
        self._base = base
        for source in sources:
            for s, p, o in source:
                self._objects.setdefault((s, p), set()).add(o)
                self._values.setdefault(s, set()).add(o)

    def points_to(self, subject: Node, value: Node) -> bool:
        """Whether ``subject`` has ``value`` as the object of any of its triples."""
        if value in self._values.get(subject, ()):
            return True
        return self._base is not None and self._base.points_to(subject, value)

    def __contains__(self, triple: Triple) -> bool:
        s, p, o = triple
        if o in self._objects.get((s, p), ()):
            return True
        return self._base is not None and triple in self._base

    def objects(self, subject: Node, predicate: Node) -> list[Node]:
        """The objects, sorted, so that explanations never depend on hash order."""
        found = set(self._objects.get((subject, predicate), ()))
        if self._base is not None:
            found.update(self._base.objects(subject, predicate))
        return sorted(found, key=str)


def derivations(ontology: Ontology, case: URIRef, facts: Facts) -> Iterator[Triple]:
    """Derivation triples for every OWL-derived conclusion of ``case``.

    ``facts`` holds the case's asserted and inferred triples and the inferred types of
    the ontology's individuals (so that ``someValuesFrom`` can be checked on them).
    """
    for prop in CONCLUSION_PROPERTIES:
        for value in sorted(facts.objects(case, prop), key=str):
            if not isinstance(value, URIRef):
                continue  # OWL rules conclude named terms only
            for rule in ontology.owl_rules.get((prop, value), ()):
                if (case, _TYPE, rule.term.iri) not in facts:
                    continue
                matched: list[Triple] = []
                for condition in rule.conditions:
                    matched.extend(_match(ontology, condition, case, facts, set()) or [])
                why = URIRef(f"{case}#why-{ontology.term(value).code}")
                yield case, _HAS_DERIVATION, why
                yield why, _TYPE, _DERIVATION
                yield why, _CONCLUDES, value
                yield why, _BY_RULE, rule.term.iri
                for text in dict.fromkeys(text for t in matched for text in reasons(ontology, t, facts)):
                    yield why, _BECAUSE, _literal(text)
                if prop == _PATHWAY and (said := _inherited_urgency(ontology, case, value, facts)):
                    yield why, _BECAUSE, _literal(said)
                break


def _literal(text: str) -> Literal:
    found = _SAID.get(text)
    if found is None:
        if len(_SAID) >= 20_000:  # bounded: texts with a case's numbers in them do not repeat
            _SAID.clear()
        found = _SAID[text] = Literal(text)
    return found


def _inherited_urgency(ontology: Ontology, case: URIRef, pathway: URIRef, facts: Facts) -> str | None:
    """The urgency a pathway takes on from the pathway it follows, in the ontology's words."""
    inherited = ontology.inherited_urgency(pathway, facts.objects(case, _PATHWAY))
    template = ontology.reason_template(ESI.urgencyFollows)
    if inherited is None or template is None:
        return None
    urgency, source = inherited
    return template.format(urgency=ontology.label(urgency), source=ontology.label(source))


def satisfied(ontology: Ontology, expr: Expr, node: Node, facts: Facts) -> bool:
    """Whether the class expression holds for ``node`` given ``facts``."""
    return _match(ontology, expr, node, facts, set()) is not None


def _match(ontology: Ontology, expr: Expr, case: Node, facts: Facts, opened: set[URIRef]) -> list[Triple] | None:
    """The facts that satisfy ``expr`` for ``case``, or None if it is not satisfied."""
    if isinstance(expr, Named):
        if (case, _TYPE, expr.iri) not in facts:
            return None
        if expr.iri not in opened:
            for sub in ontology.conditions_of(expr.iri):
                found = _match(ontology, sub, case, facts, opened | {expr.iri})
                if found is not None:
                    return found
        return [(case, _TYPE, expr.iri)]
    if isinstance(expr, HasValue):
        t = (case, expr.prop, expr.value)
        return [t] if t in facts else None
    if isinstance(expr, SomeValues):
        hits: list[Triple] = [
            (case, expr.prop, o) for o in facts.objects(case, expr.prop) if (o, _TYPE, expr.cls) in facts
        ]
        return hits or None
    if isinstance(expr, AllOf):
        out: list[Triple] = []
        for part in expr.parts:
            found = _match(ontology, part, case, facts, opened)
            if found is None:
                return None
            out.extend(found)
        return out
    if isinstance(expr, AnyOf):
        matched = [f for part in expr.parts if (f := _match(ontology, part, case, facts, opened)) is not None]
        return [t for f in matched for t in f] if matched else None
    raise TypeError(f"unknown class expression {expr!r}")


def reasons(ontology: Ontology, fact: Triple, facts: Facts) -> list[str]:
    """A case fact in words, with the numbers of the records it rests on (``esi:evidenceProperty``),
    e.g. ``positive diagnostic block at: facet joint (block on day 20, relief 80 %, at least the
    50 % positive-block threshold)``."""
    case, prop, value = fact
    said = [statement for via in ontology.evidence_properties.get(prop, ())  # type: ignore[call-overload]
            for record in facts.objects(case, via) if facts.points_to(record, value)
            for statement in facts.objects(record, _STATEMENT)]
    text = render(ontology, fact, facts)
    return [f"{text} ({'; '.join(str(s) for s in said)})" if said else text]


def render(ontology: Ontology, fact: Triple, facts: Facts) -> str:
    """One case fact in words, e.g. ``diagnosis: facet joint arthritis``."""
    _, prop, value = fact
    if prop == _TYPE:
        return f"is a {ontology.label(value)}"
    if isinstance(value, Literal):
        text = ("yes" if value.toPython() else "no") if value.datatype == XSD.boolean else str(value)
        return f"{ontology.label(prop)}: {text}"
    codes = [t for t in facts.objects(value, _TYPE) if ontology.is_code(t)]
    # The node's own code, not an inferred broader one (lumbar-spinal-stenosis, not spinal-stenosis).
    specific = [c for c in codes if not any(o != c and ontology.is_subclass(o, c) for o in codes)]
    shown = (specific or codes or [value])[0]
    return f"{ontology.label(prop)}: {ontology.label(shown)}"
