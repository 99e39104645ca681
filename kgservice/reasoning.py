"""Reasoning over one case, or one batch of cases, at a time: SPARQL rules and OWL 2 RL.

The pipeline is stratified, as the ontology's rules declare (``esi:stratum``):

1. stratum-1 SPARQL rules run on the asserted case and its observations (numbers,
   dates and closed-world absences, which OWL cannot express);
2. an OWL 2 RL engine closes the ontology's axioms plus the case;
3. stratum-2 SPARQL rules run on that closure (absences of inferred facts), and the
   closure is brought up to date: closed again for the cases whose new facts could
   complete an OWL rule, extended by the new facts alone for the others.

Then every conclusion gets a derivation (see :mod:`kgservice.core.explain`). The result per
case is its *inferred graph*: observations, conclusions, inferred types and derivations.

Two OWL 2 RL engines sit behind one interface: ``reasonable`` (Rust, fast) and ``owlrl``
(the pure-Python reference).
"""

from __future__ import annotations

import atexit
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import owlrl
import pyoxigraph as ox
from rdflib import OWL, RDF, RDFS, BNode, Graph, Literal, URIRef
from rdflib.collection import Collection
from rdflib.term import Node

from .core.explain import Facts, derivations, satisfied
from .core.ontology import CASE_BASE, ESI, AllOf, AnyOf, Expr, HasValue, Ontology, SomeValues
from .core.terms import Triple, constructed, serialized, triple_to_ox, triples_from_ox, triples_to_ox
from .files import write_atomically

#: Cases whose rules run on one in-memory rule store before it is replaced (see _rule_store_for).
RULE_STORE_RUNS = 500
#: Where the rule store keeps the ontology facts every rule run sees; each run adds a graph.
RULE_SUPPORT_GRAPH = ox.NamedNode("urn:esi-kg:rule-support")
_DROP_TYPES = {OWL.Thing, OWL.NamedIndividual}


# -- OWL 2 RL engines ------------------------------------------------------------------------


class Session(Protocol):
    """One reasoning run: the ontology's axioms plus some facts, closed once."""

    def close(self) -> Iterable[Triple]: ...


class ReasonableSession:
    """reasonable reads the TBox from a Turtle file in Rust: twice as fast as handing it
    over triple by triple from Python (1.0 ms against 2.2 ms, measured)."""

    def __init__(self, tbox: TBoxFile, triples: Sequence[Triple]) -> None:
        import reasonable

        self._reasoner = reasonable.PyReasoner()
        self._reasoner.load_file(str(tbox.path()))
        self._reasoner.from_graph(list(triples))

    def close(self) -> Iterable[Triple]:
        return self._reasoner.reason()  # type: ignore[no-any-return]


class OwlrlSession:
    def __init__(self, tbox: TBoxFile, triples: Sequence[Triple]) -> None:
        self._graph = Graph()
        for t in (*tbox.triples, *triples):
            self._graph.add(t)

    def close(self) -> Iterable[Triple]:
        owlrl.DeductiveClosure(owlrl.OWLRL_Semantics, axiomatic_triples=False, datatype_axioms=False).expand(
            self._graph
        )
        return self._graph  # type: ignore[return-value]


ENGINES: dict[str, Callable[[TBoxFile, Sequence[Triple]], Session]] = {
    "reasonable": ReasonableSession, "owlrl": OwlrlSession,
}


class TBoxFile:
    """The ontology's logical axioms, kept as a Turtle file for engines that read files."""

    def __init__(self, triples: Sequence[Triple], digest: str, name: str = "tbox") -> None:
        self.triples = tuple(triples)
        self._path = Path(tempfile.gettempdir()) / f"esi-kg-{name}-{digest[:16]}-{os.getpid()}.ttl"
        self._lock = threading.Lock()

    def path(self) -> Path:
        if not self._path.exists():  # written once; again only if a temp cleaner removed it
            with self._lock:
                if not self._path.exists():
                    graph = Graph()
                    for t in self.triples:
                        graph.add(t)
                    partial = self._path.with_suffix(f".{threading.get_ident()}.part")
                    graph.serialize(partial, format="turtle", encoding="utf-8")
                    os.replace(partial, self._path)
                    atexit.register(self._path.unlink, missing_ok=True)
        return self._path


# -- the reasoner --------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseInput:
    """A validated case: its IRI, its asserted triples and the observations computed on them."""

    iri: URIRef
    asserted: tuple[Triple, ...]
    observations: tuple[Triple, ...] = ()


class Reasoner:
    """Infers conclusions for cases. Build once per ontology version; thread-safe.

    ``reference=True`` reasons the plain way: each case with the whole TBox, and an OWL pass
    after every stratum. The tests check that the shortcuts (a case TBox without the
    ontology's declarations, stratum-2 passes skipped when they cannot add anything) infer
    exactly what it infers.
    """

    def __init__(self, ontology: Ontology, engine: str = "reasonable", cache_dir: Path | None = None,
                 reference: bool = False) -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        self.ontology = ontology
        self.engine = engine
        self._tbox = TBoxFile(ontology.tbox, ontology.digest)
        self._case_tbox = self._tbox if reference else TBoxFile(ontology.case_tbox, ontology.digest, "case-tbox")
        self.reference = reference
        self._session = ENGINES[engine]
        tbox_closure = self._closed_tbox(cache_dir)
        self.tbox_closure = tuple(t for t in tbox_closure if _keep(t))
        # What SPARQL rules see besides the case: the ontology's individuals with their
        # inferred types and their values (parameters, order of care, urgency).
        support: set[Triple] = {
            (s, p, o) for s, p, o in tbox_closure
            if isinstance(s, URIRef) and p == RDF.type and isinstance(o, URIRef) and o not in _DROP_TYPES
        }
        support.update(
            t for t in ontology.graph
            if isinstance(t[0], URIRef) and isinstance(t[1], URIRef) and t[1].startswith(str(ESI))
        )
        self._rule_support = list(triples_to_ox(support, RULE_SUPPORT_GRAPH))
        self._rule_lock = threading.Lock()
        self._rule_runs = 0
        self._rule_store = self._new_rule_store()
        self._individual_types = Facts(t for t in support if t[1] == RDF.type)
        self._guard = _rule_guard(ontology)
        self._rules = {
            stratum: [rule for rule in ontology.sparql_rules if rule.stratum == stratum] for stratum in ontology.strata
        }

    def _closed_tbox(self, cache_dir: Path | None) -> list[Triple]:
        """The OWL 2 RL closure of the ontology alone, computed once per ontology version and
        engine, and kept in ``cache_dir`` (N-Triples, written whole or not at all)."""
        cache = cache_dir / f"tbox-closure-{self.ontology.digest[:16]}-{self.engine}.nt" if cache_dir else None
        if cache is not None and cache.exists():
            return triples_from_ox(ox.parse(path=str(cache), format=ox.RdfFormat.N_TRIPLES))
        # owlrl also derives generalised triples (a literal as subject); RDF has no place for them.
        closure = [t for t in self._session(self._tbox, ()).close() if not isinstance(t[0], Literal)]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            body = serialized([triple_to_ox(t) for t in closure], format=ox.RdfFormat.N_TRIPLES)
            write_atomically(cache, body)
        return closure

    def infer(self, cases: Sequence[CaseInput]) -> dict[URIRef, set[Triple]]:
        """The inferred triples of each case. Cases are reasoned together, never with the store."""
        if not cases:
            return {}
        strata = self.ontology.strata
        iris = {c.iri for c in cases}
        # What the OWL engine is given per case (and, rarely, about no case in particular).
        given: dict[URIRef, list[Triple]] = {c.iri: [*c.asserted, *c.observations] for c in cases}
        shared: list[Triple] = []
        _add_by_owner(self._run_rules(strata[0], cases, given), iris, given, shared)
        session = self._session(self._case_tbox, [*shared, *(t for ts in given.values() for t in ts)])
        owned = _by_owner(session.close(), iris)
        for stratum in strata[1:]:
            more: dict[URIRef, list[Triple]] = {}
            unowned: list[Triple] = []
            _add_by_owner(self._run_rules(stratum, cases, owned), iris, more, unowned)
            # A case whose new facts may complete an OWL rule is closed again, in a session of
            # its own: one such case no longer costs its whole batch a second pass.
            again = {iri for iri, new in more.items() if unowned or self.reference
                     or self._may_complete_a_rule(new, {iri: owned.get(iri, [])}, {iri})}
            for iri, new in more.items():
                given[iri].extend(new)
                if iri not in again:  # the closure cannot grow but by these facts themselves
                    owned.setdefault(iri, []).extend(new)
            shared.extend(unowned)
            if again:
                rerun = self._session(self._case_tbox, [*shared, *(t for iri in again for t in given[iri])])
                owned.update(_by_owner(rerun.close(), again))
        out: dict[URIRef, set[Triple]] = {}
        for case in cases:
            asserted = set(case.asserted)
            inferred = {t for t in owned.get(case.iri, ()) if t not in asserted and _keep(t)}
            known = Facts(asserted, inferred, base=self._individual_types)
            inferred.update(derivations(self.ontology, case.iri, known))
            out[case.iri] = inferred
        return out

    @property
    def rule_store(self) -> ox.Store:
        """The in-memory store the SPARQL rules run on: the ontology's support, and each run's
        facts in a graph of their own while it lasts."""
        return self._rule_store

    def _new_rule_store(self) -> ox.Store:
        store = ox.Store()  # in memory; thread-safe (each run has its own graph)
        store.extend(self._rule_support)
        return store

    def _rule_store_for(self, cases: int) -> ox.Store:
        """The shared rule store, replaced after RULE_STORE_RUNS case runs: pyoxigraph's
        in-memory store keeps the space of removed quads (~40 KB a case, measured: 2 GB after
        50k cases), and only a new store gives it back. Runs on the old one finish there."""
        with self._rule_lock:
            self._rule_runs += cases
            if self._rule_runs > RULE_STORE_RUNS:
                self._rule_store, self._rule_runs = self._new_rule_store(), cases
            return self._rule_store

    def _may_complete_a_rule(self, new: list[Triple], owned: dict[URIRef, list[Triple]], iris: set[URIRef]) -> bool:
        """Whether OWL reasoning could derive anything from ``new`` beyond ``new`` itself.

        Sound, and cheap next to a second OWL pass: a new fact ``(s p o)`` can only lead
        somewhere through an axiom about ``p`` (then: yes, unless it is a domain or range whose
        type ``s`` or ``o`` already has) or through a class expression that mentions ``p``
        (then: yes if that expression now holds for ``s``). Ontologies using constructs the
        check cannot read always get the second pass.
        """
        if self._guard is None:
            return True
        property_axioms, domains, ranges, mentioning = self._guard
        facts = Facts([t for ts in owned.values() for t in ts], new, base=self._individual_types)
        for s, p, o in new:
            if p in property_axioms:
                return True
            if any((s, RDF.type, d) not in facts for d in domains.get(p, ())):
                return True
            if any((o, RDF.type, r) not in facts for r in ranges.get(p, ())):
                return True
            if any(satisfied(self.ontology, expr, s, facts) for expr in mentioning.get(p, ())):
                return True
        return False

    def _run_rules(self, stratum: int, cases: Sequence[CaseInput], facts: dict[URIRef, list[Triple]]
                   ) -> list[Triple]:
        """Run one stratum's SPARQL rules, in order, on each case (``$this`` pre-bound).

        Each case's facts are a graph of their own, and a rule run on a case sees only that
        graph and the ontology's support: a rule's OPTIONAL or NOT EXISTS part is evaluated
        before ``$this`` is joined in, so over a whole batch it grew with the batch (a batch
        of 200 cost 1.8 ms a case; alone, 0.7 ms). The support stays loaded in the rule
        store: loading it again for every run cost 0.17 ms, measured.
        """
        rules = self._rules.get(stratum, [])
        if not rules:
            return []
        store = self._rule_store_for(len(cases))
        graphs = {case.iri: ox.BlankNode() for case in cases}
        for iri, graph in graphs.items():
            store.extend(triples_to_ox(facts.get(iri, ()), graph))
        try:
            produced: list[Triple] = []
            for rule in rules:
                for iri, graph in graphs.items():
                    new = list(constructed(store.query(
                        rule.query, default_graph=[RULE_SUPPORT_GRAPH, graph], named_graphs=[],
                        substitutions={ox.Variable("this"): ox.NamedNode(str(iri))})))
                    if not new:
                        continue
                    store.extend(ox.Quad(t.subject, t.predicate, t.object, graph) for t in new)
                    triples = triples_from_ox(new)
                    produced.extend(triples)
                    produced.extend(_record_rule(rule.term.iri, iri, triples))
            return produced
        finally:
            for graph in graphs.values():
                store.remove_graph(graph)


def _record_rule(rule: URIRef, case: URIRef, triples: list[Triple]) -> list[Triple]:
    """A SPARQL rule states what it concludes (``?why esi:concludes X``); record which rule it was."""
    out: list[Triple] = []
    for s, p, _ in triples:
        if p == ESI.concludes and _owner(s, {str(case): case}) is not None:
            out += [(case, ESI.hasDerivation, s), (s, RDF.type, ESI.Derivation), (s, ESI.byRule, rule)]
    return out


_PROPERTY_AXIOMS = (RDFS.subPropertyOf, OWL.inverseOf, OWL.propertyChainAxiom, OWL.equivalentProperty,
                    OWL.propertyDisjointWith)
_PROPERTY_TYPES = (OWL.TransitiveProperty, OWL.SymmetricProperty, OWL.FunctionalProperty,
                   OWL.InverseFunctionalProperty, OWL.AsymmetricProperty, OWL.IrreflexiveProperty)


def _rule_guard(ontology: Ontology) -> tuple[set[Node], dict[Node, list[Node]], dict[Node, list[Node]],
                                                  dict[Node, list[Expr]]] | None:
    """What :meth:`Reasoner._may_complete_a_rule` needs, or None when the ontology uses a
    construct it cannot read (then every stratum gets its OWL pass)."""
    g = ontology.graph
    if (None, OWL.equivalentClass, None) in g or any(
            isinstance(c, URIRef) for p in (OWL.intersectionOf, OWL.unionOf) for c in g.subjects(p, None)):
        return None
    property_axioms: set[Node] = set()
    for p in _PROPERTY_AXIOMS:
        for a, b in g.subject_objects(p):
            property_axioms.update((a, b))
    for chain_list in g.objects(None, OWL.propertyChainAxiom):
        property_axioms.update(Collection(g, chain_list))
    for t in _PROPERTY_TYPES:
        property_axioms.update(g.subjects(RDF.type, t))
    domains: dict[Node, list[Node]] = {}
    ranges: dict[Node, list[Node]] = {}
    for prop, domain in g.subject_objects(RDFS.domain):
        domains.setdefault(prop, []).append(domain)
    for prop, range_ in g.subject_objects(RDFS.range):
        ranges.setdefault(prop, []).append(range_)
    mentioning: dict[Node, list[Expr]] = {}
    for sub, _sup in g.subject_objects(RDFS.subClassOf):
        if isinstance(sub, URIRef):
            continue  # a named class's membership is already in the closure
        expr = ontology.parse_expression(sub)
        if expr is None:
            return None
        for prop in _properties_in(expr):
            mentioning.setdefault(prop, []).append(expr)
    return property_axioms, domains, ranges, mentioning


def _properties_in(expr: Expr) -> set[Node]:
    if isinstance(expr, HasValue | SomeValues):
        return {expr.prop}
    if isinstance(expr, AllOf | AnyOf):
        return set().union(*(_properties_in(part) for part in expr.parts))
    return set()


def _add_by_owner(triples: Iterable[Triple], cases: set[URIRef], into: dict[URIRef, list[Triple]],
                  unowned: list[Triple] | None = None) -> None:
    """Sort triples by the case their subject belongs to; the rest go to ``unowned`` (if given)."""
    by_text = {str(iri): iri for iri in cases}
    for t in triples:
        if (owner := _owner(t[0], by_text)) is not None:
            into.setdefault(owner, []).append(t)
        elif unowned is not None:
            unowned.append(t)


def _by_owner(closure: Iterable[Triple], cases: set[URIRef]) -> dict[URIRef, list[Triple]]:
    """The closure's triples about each case's nodes (the TBox closure is left out)."""
    owned: dict[URIRef, list[Triple]] = {}
    _add_by_owner(closure, cases, owned)
    return owned


def _owner(node: Node, cases: dict[str, URIRef]) -> URIRef | None:
    """The case a node belongs to (the case itself, or a node named under its IRI), looked up
    by string: most nodes are the ontology's and fail the first test, no rdflib hashing."""
    if not isinstance(node, URIRef) or not node.startswith(CASE_BASE):
        return None
    text = str(node).split("#", 1)[0]
    while len(text) > len(CASE_BASE):
        if (iri := cases.get(text)) is not None:
            return iri
        text = text.rsplit("/", 1)[0]
    return None


def _keep(t: Triple) -> bool:
    s, p, o = t
    if p == OWL.sameAs:
        return False
    return not (p == RDF.type and (isinstance(o, BNode) or o in _DROP_TYPES))
