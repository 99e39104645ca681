"""The OWL 2 RL profile, as far as ESI-KG's rules use it: which class expressions may stand
on which side of an axiom (https://www.w3.org/TR/owl2-profiles/#OWL_2_RL), and class
expressions in Manchester-like words for messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from rdflib import OWL, RDFS, BNode, Graph, Literal, URIRef
from rdflib.collection import Collection
from rdflib.term import Node

SUB, SUPER = "subclass", "superclass"

#: Axioms between class expressions: predicate → (sides of the subject, sides of the object).
_AXIOMS: dict[URIRef, tuple[tuple[str, ...], tuple[str, ...]]] = {
    RDFS.subClassOf: ((SUB,), (SUPER,)),
    OWL.equivalentClass: ((SUB, SUPER), (SUB, SUPER)),  # each side is both
    OWL.disjointWith: ((SUB,), (SUB,)),
    RDFS.domain: ((), (SUPER,)),
    RDFS.range: ((), (SUPER,)),
}


def profile_problems(g: Graph) -> Iterator[tuple[Node, str]]:
    """``(its named class, or a blank node, message)`` for every axiom with a class expression outside OWL 2 RL."""
    for pred, (subject_sides, object_sides) in _AXIOMS.items():
        for s, o in sorted(g.subject_objects(pred)):
            reasons = [not_rl(g, node, side) for node, sides in ((s, subject_sides), (o, object_sides))
                       for side in sides]
            reason = _first(reasons)
            if reason and pred == OWL.equivalentClass:
                reason += " (owl:equivalentClass makes each side both a subclass and a superclass)"
            if reason:
                named = next((n for n in (s, o) if isinstance(n, URIRef)), s)
                yield named, f"{show(g, s)} {_q(g, pred)} {show(g, o)}: {reason}"


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




def _q(g: Graph, iri: URIRef) -> str:
    """``prefix:local`` where the graph binds the namespace, else ``<iri>``."""
    return g.namespace_manager.normalizeUri(iri)
