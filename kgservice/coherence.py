"""Is the ontology coherent? Unsatisfiable classes, and combinations the rules can infer for a
case that the ontology makes inconsistent. Part of ``kgservice check``.

OWL 2 RL engines do not report inconsistency in one way (owlrl and reasonable differ), so the
check is made on their closures: a node is inconsistent when it is typed ``owl:Nothing``, typed
by two classes the ontology declares disjoint (``owl:disjointWith``, ``owl:AllDisjointClasses``,
``owl:complementOf``), or has two values of a functional property.

1. *Classes*: one probe individual per named class of the ontology, closed with the ontology.
2. *Cases*: a family of generated cases, from the ontology's own value sets, that between them
   fire the rules in many combinations (every category, with and without red flags, blocks
   positive and negative, treatments tried or not); each is reasoned as the service reasons it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import combinations, product
from typing import TYPE_CHECKING

from rdflib import OWL, RDF, BNode, Literal, URIRef
from rdflib.collection import Collection
from rdflib.term import Node

from .core.ontology import ESI, Ontology, Triple

if TYPE_CHECKING:
    from .core.kb import KnowledgeBase

PROBE = "urn:esi-kg:probe:"
#: Pain score series (day, score) that give every response category under any sensible thresholds.
SCORE_SERIES = ([(0, 8), (3, 8)], [(0, 8), (14, 8)], [(0, 8), (5, 1), (20, 8)], [(0, 8), (10, 1)], [(0, 8), (40, 1)])


@dataclass(frozen=True)
class Incoherence:
    subject: str
    message: str


def disjoint_pairs(ontology: Ontology) -> set[frozenset[Node]]:
    """Pairs of classes that share no member, as the ontology states them."""
    g = ontology.graph
    pairs: set[frozenset[Node]] = {frozenset(pair) for pair in g.subject_objects(OWL.disjointWith)}
    for axiom in g.subjects(RDF.type, OWL.AllDisjointClasses):
        for members in g.objects(axiom, OWL.members):
            pairs.update(frozenset(p) for p in combinations(Collection(g, members), 2))
    pairs.update(frozenset(pair) for pair in g.subject_objects(OWL.complementOf))
    return {p for p in pairs if len(p) == 2}


def clashes(types: set[Node], pairs: set[frozenset[Node]], ontology: Ontology) -> str | None:
    """Why a node with these types cannot exist, or None."""
    if OWL.Nothing in types:
        return "it is inferred to be an owl:Nothing"
    for pair in sorted(pairs, key=lambda p: sorted(map(str, p))):
        if pair <= types:
            a, b = sorted(pair, key=str)
            return f"it is inferred to be both {_name(ontology, a)} and {_name(ontology, b)}, declared disjoint"
    return None


def unsatisfiable_classes(ontology: Ontology, engine: str) -> Iterator[Incoherence]:
    """Each named class that no individual can belong to, and each inconsistent named individual."""
    from .reasoning import ENGINES, TBoxFile, closing_engine

    classes = sorted(c for c in ontology.graph.subjects(RDF.type, OWL.Class)
                     if isinstance(c, URIRef) and c.startswith(str(ESI)))
    probes = [(URIRef(PROBE + str(i)), RDF.type, c) for i, c in enumerate(classes)]
    session = ENGINES[closing_engine(engine)]
    closure = list(session(TBoxFile(ontology.tbox, ontology.digest, "coherence"), probes).close())
    types: dict[Node, set[Node]] = {}
    for s, p, o in closure:
        if p == RDF.type:
            types.setdefault(s, set()).add(o)
    pairs = disjoint_pairs(ontology)
    for (probe, _, cls) in probes:
        if (why := clashes(types.get(probe, set()), pairs, ontology)) is not None:
            yield Incoherence(str(cls), f"{_name(ontology, cls)} is unsatisfiable: a member of it is impossible, as "
                                        f"{why}. Remove the axiom that puts it under both")
    for node in sorted((n for n in types if isinstance(n, URIRef) and n.startswith(str(ESI))), key=str):
        if (why := clashes(types[node], pairs, ontology)) is not None:
            yield Incoherence(str(node), f"{_name(ontology, node)} is inconsistent: {why}")


def inconsistent_cases(kb: KnowledgeBase, ontology: Ontology) -> Iterator[Incoherence]:
    """Combinations of conclusions that the rules infer for a generated case and the ontology forbids."""
    pairs = disjoint_pairs(ontology)
    functional = {p for p in ontology.graph.subjects(RDF.type, OWL.FunctionalProperty)}
    seen: set[str] = set()
    for description, case in generated_cases(kb):
        graph = kb.read_json(case)
        if kb.check(graph):
            continue  # a combination the contract refuses cannot reach the rules
        reasoned = kb.reason_valid([graph], answers=False)[0]
        triples: list[Triple] = [*graph.triples, *reasoned.inferred]
        for node, why in _clashing_nodes(triples, pairs, functional, ontology):
            key = f"{node}|{why}"
            if key in seen:
                continue
            seen.add(key)
            yield Incoherence(_rule_of(why, ontology), f"a case that {description} is inconsistent: its {node} "
                                                      f"{why}. The rules infer a combination the ontology forbids")


def generated_cases(kb: KnowledgeBase) -> Iterator[tuple[str, dict[str, object]]]:
    """Cases from the ontology's value sets that fire the rules in many combinations."""
    vocabulary = kb.vocabulary["input"]
    codes = {field: [entry["code"] for entry in entries] for field, entries in vocabulary.items()}
    injected = dt.date(2026, 1, 5)

    def day(n: int) -> str:
        return (injected + dt.timedelta(days=n)).isoformat()

    for series, red_flag, blocks, tried in product(SCORE_SERIES, (False, True), ("none", "positive", "negative"),
                                                  (False, True)):
        case: dict[str, object] = {
            "id": "coherence-probe", "age": 50, "pain_regions": codes.get("pain_regions", [])[:1],
            "diagnoses": codes.get("diagnoses", []), "findings": codes.get("findings", []),
            "prior_spinal_surgery": True,
            "injection": {"date": day(0)},
            "pain_scores": [{"date": day(d), "score": s} for d, s in series],
            "red_flags": codes.get("red_flags", [])[:1] if red_flag else [],
            "treatments_tried": codes.get("treatments_tried", []) if tried else [],
            "diagnostic_blocks": [] if blocks == "none" else [
                {"target": t, "date": day(60), "relief_percent": 100 if blocks == "positive" else 0}
                for t in codes.get("diagnostic_blocks.target", [])],
        }
        description = (f"has pain scores {series}, {'a red flag' if red_flag else 'no red flag'}, "
                       f"{blocks} blocks and {'every' if tried else 'no'} treatment tried")
        yield description, case


def _clashing_nodes(triples: Iterable[Triple], pairs: set[frozenset[Node]], functional: set[Node],
                    ontology: Ontology) -> Iterator[tuple[str, str]]:
    types: dict[Node, set[Node]] = {}
    values: dict[tuple[Node, Node], set[Node]] = {}
    for s, p, o in triples:
        if p == RDF.type:
            types.setdefault(s, set()).add(o)
        elif p in functional:
            values.setdefault((s, p), set()).add(o)
    for node, ts in sorted(types.items(), key=lambda kv: str(kv[0])):
        if (why := clashes(ts, pairs, ontology)) is not None:
            yield _part(node), why
    for (node, prop), found in sorted(values.items(), key=lambda kv: str(kv[0])):
        named = {v for v in found if isinstance(v, URIRef)}
        literals = {v.toPython() for v in found if isinstance(v, Literal)}
        if len(named) > 1 or len(literals) > 1:
            shown = ", ".join(sorted(_name(ontology, v) for v in found))
            yield _part(node), f"has {shown} for the functional property {_name(ontology, prop)}"


def _rule_of(why: str, ontology: Ontology) -> str:
    """The first ontology term a clash names: the term a curator should look at first."""
    for word in why.replace(",", " ").split():
        if word.startswith("esi:"):
            return str(ESI[word[4:]])
    return str(ontology.iri)


def _part(node: Node) -> str:
    """``case`` for the case node, else the part's path under it (``pain-scores/0``)."""
    tail = str(node).split("/coherence-probe", 1)[-1].strip("/")
    return f"part {tail}" if tail else "case"


def _name(ontology: Ontology, node: Node) -> str:
    if isinstance(node, URIRef) and node.startswith(str(ESI)):
        return "esi:" + node[len(str(ESI)):]
    if isinstance(node, BNode):
        inner = ontology.graph.value(node, OWL.complementOf)
        return f"(not {_name(ontology, inner)})" if inner is not None else "an anonymous class"
    return f"<{node}>" if isinstance(node, URIRef) else str(node)
