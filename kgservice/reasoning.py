"""Reasoning over one case, or one batch of cases, at a time: SPARQL rules and OWL 2 RL.

The pipeline is stratified, as the ontology's rules declare (``esi:stratum``):

1. stratum-1 SPARQL rules run on the asserted case and its observations (numbers,
   dates and closed-world absences, which OWL cannot express);
2. an OWL 2 RL engine closes the ontology's axioms plus the case;
3. stratum-2 SPARQL rules run on that closure (absences of inferred facts), and the
   closure is brought up to date with their conclusions.

Then every conclusion gets a derivation (see :mod:`kgservice.core.explain`). The result per
case is its *inferred graph*: observations, conclusions, inferred types and derivations.

Three OWL 2 RL engines sit behind one interface: ``compiled`` (the default: the ontology's
closure, computed once by ``reasonable``, compiled into the instance rules of
:mod:`kgservice.core.caseowl`, which then close each case alone and grow with each stratum),
``reasonable`` (Rust) and ``owlrl`` (the pure-Python reference), which close the ontology's
axioms with the cases every time.
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
from rdflib import OWL, RDF, BNode, Graph, Literal, URIRef
from rdflib.term import Node

from .core.caseowl import CaseClosure, CompiledRules, Unsupported
from .core.caserules import (
    RULE_SUPPORT_GRAPH,
    BatchedRule,
    FactShape,
    Reads,
    RuleGraphs,
    RuleNeeds,
    Terms,
    batched_rule,
    needs_of_rules,
)
from .core.explain import Facts, derivations
from .core.ontology import CASE_BASE, ESI, Ontology, SparqlRule
from .core.terms import Triple, serialized, triple_to_ox, triples_from_ox, triples_to_ox
from .files import write_atomically

#: Cases whose rules run on one in-memory rule store before it is replaced (see _rule_store_for).
RULE_STORE_RUNS = 20
#: From how many cases a batch runs each rule once for all its cases (see Reasoner._run_rules).
BATCHED_RULES_FROM = 2
_DROP_TYPES = {OWL.Thing, OWL.NamedIndividual}
_CONCLUDES = ESI.concludes  # rdflib builds a term per attribute access
_TYPE_IRI, _SAME_AS_IRI = str(RDF.type), str(OWL.sameAs)


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
#: The engine name of :mod:`kgservice.core.caseowl`'s rules, compiled from ``reasonable``'s closure.
COMPILED = "compiled"
DEFAULT_ENGINE = COMPILED


def closing_engine(engine: str) -> str:
    """The real engine that closes the ontology for ``engine`` (the compiled rules' is ``reasonable``)."""
    return "reasonable" if engine == COMPILED else engine


class TBoxFile:
    """The ontology's logical axioms, kept as a Turtle file for engines that read files.

    With a ``directory`` (the data dir's cache) the file is named by the ontology's digest and
    kept there, shared by every process of that data dir, like the other things derived once
    per ontology version. Without one it is a temporary file of this process, removed at its
    exit: a process killed, or a forked worker leaving by ``os._exit``, would leave one behind
    in the temporary directory each time."""

    def __init__(self, triples: Sequence[Triple], digest: str, name: str = "tbox",
                 directory: Path | None = None) -> None:
        self.triples = tuple(triples)
        self._kept = directory is not None
        self._path = (directory / f"{name}-{digest[:16]}.ttl" if directory is not None
                      else Path(tempfile.gettempdir()) / f"esi-kg-{name}-{digest[:16]}-{os.getpid()}.ttl")
        self._lock = threading.Lock()

    def path(self) -> Path:
        if not self._path.exists():  # written once; again only if a temp cleaner removed it
            with self._lock:
                if not self._path.exists():
                    graph = Graph()
                    for t in self.triples:
                        graph.add(t)
                    self._path.parent.mkdir(parents=True, exist_ok=True)
                    partial = self._path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
                    graph.serialize(partial, format="turtle", encoding="utf-8")
                    os.replace(partial, self._path)  # whole or not at all, for the other processes too
                    if not self._kept:
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

    ``engine`` is ``compiled`` (the default: the ontology's closure computed once by
    ``reasonable``, then :mod:`kgservice.core.caseowl` per case), ``reasonable`` or ``owlrl``
    (the ontology and the cases closed together by that engine). ``reference=True`` reasons
    the plain way: the real engine, each case with the whole TBox. The tests check that the
    shortcuts (compiled rules, a case TBox without the ontology's declarations) infer exactly
    what it infers.
    """

    #: whether a batch runs each rule once for all its cases (False: once per case, as a
    #: single case does; the tests and the bench compare the two)
    batch_rules = True

    def __init__(self, ontology: Ontology, engine: str = DEFAULT_ENGINE, cache_dir: Path | None = None,
                 reference: bool = False) -> None:
        if engine not in (COMPILED, *ENGINES):
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join((COMPILED, *ENGINES))}")
        self.ontology = ontology
        self.engine = engine
        #: the engine that closes the ontology (and the cases the compiled rules cannot follow)
        self.closing_engine = closing_engine(engine)
        self._tbox = TBoxFile(ontology.tbox, ontology.digest, directory=cache_dir)
        self._case_tbox = self._tbox if reference else TBoxFile(ontology.case_tbox, ontology.digest, "case-tbox",
                                                                directory=cache_dir)
        self.reference = reference
        self._session = ENGINES[self.closing_engine]
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
        support_triples = list(support)
        self._rule_support = list(triples_to_ox(support_triples, RULE_SUPPORT_GRAPH))
        self._rule_lock = threading.Lock()
        self._rule_runs = 0
        self._rule_store = self._new_rule_store()
        self._individual_types = Facts(t for t in support if t[1] == RDF.type)
        #: the instance rules compiled from the closure; None when the real engine reasons every case
        # (from the axioms as written too: an engine may leave out of its closure what it does not read)
        self.compiled = (CompiledRules.compile([*ontology.tbox, *tbox_closure]) if engine == COMPILED and not reference
                         else None)
        needs = needs_of_rules((rule.query for rule in ontology.sparql_rules),
                               cache_dir / f"rule-needs-{ontology.digest[:16]}.json" if cache_dir else None)
        self._rules: dict[int, list[tuple[SparqlRule, RuleNeeds]]] = {
            stratum: [(rule, needs[rule.query]) for rule in ontology.sparql_rules if rule.stratum == stratum]
            for stratum in ontology.strata
        }
        # the ontology's terms as Oxigraph's, once (the compiled rules' very objects, when there are any)
        known = self.compiled.canon if self.compiled is not None else {t: t for tr in tbox_closure for t in tr}
        self._terms = Terms(t for t in known if not isinstance(t, Literal))
        self._reads = {stratum: Reads.of(needs for later, rules in self._rules.items() if later >= stratum
                                         for _, needs in rules) for stratum in self._rules}
        self._support_shape = FactShape()
        for q in self._rule_support:
            self._support_shape.add_ox(q)
        # Each rule's batched form (one query for a batch's cases), where it is sure to be exact;
        # none if some rule may read any predicate: it would see the quad naming a graph's case.
        # Only a rule that binds $this with a pattern of its own (this_props): where nothing does,
        # Oxigraph's substitutions leave $this unbound in a BIND or an EXISTS (measured), and
        # the batched form, binding it there, could conclude more than the rule does per case.
        every = Reads.of(needs for rules in self._rules.values() for _, needs in rules)
        self._batched: dict[str, BatchedRule] = {}
        if every.props is not None:
            self._batched = {rule.query: batched for rules in self._rules.values() for rule, needs in rules
                             if needs.this_props and (batched := batched_rule(rule.query)) is not None}
        #: the support quads some rule reads, copied into each case graph of a batch
        self._batch_support = [ox.Triple(q.subject, q.predicate, q.object) for q, t in
                               zip(self._rule_support, support_triples, strict=True) if every.wants(t)]

    def _closed_tbox(self, cache_dir: Path | None) -> list[Triple]:
        """The OWL 2 RL closure of the ontology alone, computed once per ontology version and
        engine, and kept in ``cache_dir`` (N-Triples, written whole or not at all)."""
        cache = cache_dir / f"tbox-closure-{self.ontology.digest[:16]}-{self.closing_engine}.nt" if cache_dir else None
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
        graphs = RuleGraphs(self._rule_store_for(len(cases)), self._support_shape, [c.iri for c in cases],
                            self._terms)
        try:
            _add_by_owner(self._run_rules(strata[0], cases, graphs, given), iris, given, shared)
            closed = (CompiledClosures(self, given, shared) if self.compiled is not None
                      else EngineClosures(self, given, shared))
            for stratum in strata[1:]:
                more: dict[URIRef, list[Triple]] = {}
                unowned: list[Triple] = []
                _add_by_owner(self._run_rules(stratum, cases, graphs, closed.owned), iris, more, unowned)
                closed.extend(more, unowned)
        finally:
            graphs.close()
        out: dict[URIRef, set[Triple]] = {}
        owned = closed.owned
        for case in cases:
            asserted = set(case.asserted)
            inferred = {t for t in owned.get(case.iri, ()) if t not in asserted and _keep(t)}
            known = Facts(asserted, inferred, base=self._individual_types)
            inferred.update(derivations(self.ontology, case.iri, known))
            out[case.iri] = inferred
        return out

    @property
    def case_tbox_file(self) -> Path:
        """The Turtle file of the axioms the real engine reads for each case."""
        return self._case_tbox.path()

    def close(self, triples: Sequence[Triple]) -> Iterable[Triple]:
        """The real engine's closure of the case TBox plus ``triples``."""
        return self._session(self._case_tbox, triples).close()

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
        50k cases), and only a new store gives it back. Runs on the old one finish there. The
        removed quads also slow every rule's scans of the support: a rule run cost 2.9 ms a case
        after 500 cases, 2.1 after 20, measured; a new store costs 0.33 ms."""
        with self._rule_lock:
            self._rule_runs += cases
            if self._rule_runs > RULE_STORE_RUNS:
                self._rule_store, self._rule_runs = self._new_rule_store(), cases
            return self._rule_store

    def _run_rules(self, stratum: int, cases: Sequence[CaseInput], graphs: RuleGraphs,
                   facts: dict[URIRef, list[Triple]]) -> list[Triple]:
        """Run one stratum's SPARQL rules, in order, on each case (``$this`` pre-bound), after
        adding to each case's graph those of ``facts`` it lacks.

        Each case's facts are a graph of their own, and a rule run on a case sees only that
        graph and the ontology's support: a rule's OPTIONAL or NOT EXISTS part is evaluated
        before ``$this`` is joined in, so over a whole batch it grew with the batch (a batch
        of 200 cost 1.8 ms a case; alone, 0.7 ms). The support stays loaded in the rule
        store: loading it again for every run cost 0.17 ms, measured. A rule whose needs (see
        :mod:`kgservice.core.caserules`) a case's facts do not meet is not run on it.

        In a batch, a rule whose batched form is exact (:func:`~kgservice.core.caserules.batched_rule`)
        is one query for all the cases that meet its needs, each case's graph then holding a copy
        of the support: Oxigraph parses and plans a query every time (30–130 µs), and that was
        29 % of a loader's CPU. Rules still run in order, each on every case before the next.
        """
        rules = self._rules.get(stratum, [])
        if not rules:
            return []
        batched = self._batched if self.batch_rules and len(cases) >= BATCHED_RULES_FROM else {}
        if batched and not graphs.support_copied:
            graphs.add_support(self._batch_support)
        graphs.add(facts, self._reads[stratum])
        produced: list[Triple] = []
        for rule, needs in rules:
            by_case: dict[URIRef, list[ox.Triple]] = {}
            if (batch := batched.get(rule.query)) is not None:
                met = [c.iri for c in cases if needs.met_by(graphs.shape[c.iri], graphs.support)]
                by_case = graphs.run_batched(batch, met)
            for case in cases:
                new = by_case.get(case.iri) if batch is not None else graphs.run(rule, needs, case.iri)
                if not new:
                    continue
                triples = graphs.add_ox(case.iri, new)
                produced.extend(triples)
                produced.extend(_record_rule(rule.term.iri, case.iri, triples))
        return produced


class EngineClosures:
    """Cases closed by the real engine together; a stratum's new facts close their cases again."""

    def __init__(self, reasoner: Reasoner, given: dict[URIRef, list[Triple]], shared: list[Triple]) -> None:
        self._reasoner, self._shared = reasoner, list(shared)
        self._given: dict[URIRef, list[Triple]] = {}
        self.owned: dict[URIRef, list[Triple]] = {}
        self.add(given)

    def add(self, given: dict[URIRef, list[Triple]]) -> None:
        """Close more cases (each with every fact it has so far)."""
        self._given.update((iri, list(facts)) for iri, facts in given.items())
        if given:
            facts = [*self._shared, *(t for iri in given for t in self._given[iri])]
            self.owned.update(_by_owner(self._reasoner.close(facts), set(given)))

    def extend(self, more: dict[URIRef, list[Triple]], unowned: list[Triple]) -> None:
        self._shared.extend(unowned)
        self.add({iri: [*self._given[iri], *new] for iri, new in more.items()})


class CompiledClosures:
    """Each case closed on its own by the compiled rules; a stratum's new facts extend its
    fixpoint. A case they cannot follow (an equality, an inconsistency) goes to the real engine."""

    def __init__(self, reasoner: Reasoner, given: dict[URIRef, list[Triple]], shared: list[Triple]) -> None:
        assert reasoner.compiled is not None
        self._reasoner, self._shared = reasoner, list(shared)
        self._given = {iri: list(facts) for iri, facts in given.items()}
        self._closures: dict[URIRef, CaseClosure] = {}
        self._fallback: EngineClosures | None = None
        self._owned: dict[URIRef, tuple[list[Triple], list[int]]] = {}  # sorted so far, and up to where
        for iri, facts in self._given.items():
            self._closures[iri] = CaseClosure(reasoner.compiled)
            self._follow(iri, [*self._shared, *facts])

    @property
    def owned(self) -> dict[URIRef, list[Triple]]:
        """Each case's facts about its own nodes; the facts derived since the last call are sorted now."""
        owned = {}
        for iri, closure in self._closures.items():
            mine, done = self._owned.setdefault(iri, ([], [0]))
            _add_by_owner(closure.derived[done[0]:], {iri}, {iri: mine})
            done[0] = len(closure.derived)
            owned[iri] = mine
        if self._fallback is not None:
            owned.update((iri, self._fallback.owned[iri]) for iri in self._given if iri not in self._closures)
        return owned

    def _follow(self, iri: URIRef, facts: list[Triple]) -> None:
        """Extend a case's fixpoint, or hand the case to the real engine if the rules cannot follow."""
        try:
            self._closures[iri].add(facts)
        except Unsupported:
            del self._closures[iri]
            if self._fallback is None:
                self._fallback = EngineClosures(self._reasoner, {}, self._shared)
            self._fallback.add({iri: self._given[iri]})

    def extend(self, more: dict[URIRef, list[Triple]], unowned: list[Triple]) -> None:
        self._shared.extend(unowned)
        fallen = {iri: new for iri, new in more.items() if iri not in self._closures}
        if self._fallback is not None:
            self._fallback.extend(fallen, unowned)
        for iri in list(self._closures if unowned else more.keys() - fallen.keys()):
            self._given[iri].extend(more.get(iri, ()))
            self._follow(iri, [*unowned, *more.get(iri, ())])
        for iri, new in fallen.items():
            self._given[iri].extend(new)


def _record_rule(rule: URIRef, case: URIRef, triples: list[Triple]) -> list[Triple]:
    """A SPARQL rule states what it concludes (``?why esi:concludes X``); record which rule it was."""
    out: list[Triple] = []
    for s, p, _ in triples:
        if p == _CONCLUDES and _owner(s, {str(case): case}) is not None:
            out += [(case, ESI.hasDerivation, s), (s, RDF.type, ESI.Derivation), (s, ESI.byRule, rule)]
    return out


def _add_by_owner(triples: Iterable[Triple], cases: set[URIRef], into: dict[URIRef, list[Triple]],
                  unowned: list[Triple] | None = None) -> None:
    """Sort triples by the case their subject belongs to; the rest go to ``unowned`` (if given).
    A subject is looked up once: most triples share theirs (the case, its records)."""
    by_text = {str(iri): iri for iri in cases}
    seen: dict[Node, list[Triple] | None] = {}
    for t in triples:
        if (mine := seen.get(t[0], _UNSEEN)) is _UNSEEN:
            owner = _owner(t[0], by_text)
            mine = seen[t[0]] = into.setdefault(owner, []) if owner is not None else unowned
        if mine is not None:
            mine.append(t)


_UNSEEN: list[Triple] = []


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
    if str(p) == _SAME_AS_IRI:  # a predicate is an IRI: compared as text, not by rdflib in Python
        return False
    return not (str(p) == _TYPE_IRI and (isinstance(o, BNode) or o in _DROP_TYPES))
