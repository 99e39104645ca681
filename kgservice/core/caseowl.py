"""OWL 2 RL for one case at a time, compiled once per ontology version from its closure.

The ontology's closure is the same for every case, so it is computed once by a real OWL 2 RL
engine (see :class:`kgservice.reasoning.Reasoner`); what is left per case is the W3C OWL 2 RL/RDF
rules that apply to instance data. :class:`CompiledRules` turns the closure into lookup tables,
one per rule family; :class:`CaseClosure` runs them forward over a case's few dozen facts, each
new fact joined with the closure and with what the case has derived so far. The fixpoint takes
more facts later (a later stratum's conclusions) and goes on from where it stopped.

Rules compiled (names as in the OWL 2 RL/RDF tables): cax-sco, cax-eqc1/2, prp-dom, prp-rng,
prp-spo1, prp-spo2, prp-eqp1/2, prp-inv1/2, prp-symp, prp-trp, cls-int1/2, cls-uni, cls-hv1/2,
cls-svf1/2, cls-avf. Rules whose conclusion is an equality (prp-fp, prp-ifp) or an
inconsistency (cax-dw, cls-com, cls-nothing2) are watched: when one would fire, the case is
:class:`Unsupported` and goes to the real engine. An ontology with any other construct
(cardinalities, keys, property disjointness, a datatype restriction, …) is refused whole by
:meth:`CompiledRules.compile`: it never loses an inference silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from rdflib import OWL, RDF, RDFS, Literal, URIRef
from rdflib.term import Node

from .terms import Triple

# rdflib makes a new term at every attribute access of a namespace: the hot paths use these
TYPE, THING, NOTHING, SAME_AS, NAMED = RDF.type, OWL.Thing, OWL.Nothing, OWL.sameAs, OWL.NamedIndividual
#: Predicates of the closure the compiler reads (or knows carry nothing for instance data).
_READ = {RDFS.subClassOf, OWL.equivalentClass, RDFS.domain, RDFS.range, RDFS.subPropertyOf,
         OWL.equivalentProperty, OWL.inverseOf, OWL.propertyChainAxiom, OWL.onProperty, OWL.hasValue,
         OWL.someValuesFrom, OWL.allValuesFrom, OWL.intersectionOf, OWL.unionOf, OWL.complementOf,
         OWL.disjointWith, RDF.first, RDF.rest, TYPE, OWL.sameAs, OWL.differentFrom, OWL.oneOf,
         OWL.members, OWL.distinctMembers}
#: Types of the closure that say something the compiler acts on or that carry nothing per case.
_META_TYPES = {OWL.Class, RDFS.Class, OWL.Restriction, OWL.ObjectProperty, OWL.DatatypeProperty,
               OWL.AnnotationProperty, RDF.Property, OWL.NamedIndividual, OWL.Thing, OWL.Ontology,
               OWL.TransitiveProperty, OWL.SymmetricProperty, OWL.FunctionalProperty,
               OWL.InverseFunctionalProperty, RDFS.Datatype, OWL.AllDifferent, RDF.List, RDFS.Resource}
_NAMESPACES = (str(OWL), str(RDFS), str(RDF))
_XSD = "http://www.w3.org/2001/XMLSchema#"
_TYPE_IRI = str(TYPE)


def _vocabulary(node: Node) -> bool:
    """Whether a term is RDF's, RDFS's or OWL's (rdflib's own ``startswith`` takes no tuple)."""
    return isinstance(node, URIRef) and str.startswith(node, _NAMESPACES)


class Unsupported(Exception):
    """What the compiled rules cannot conclude: an equality, an inconsistency, a schema fact."""


@dataclass
class CompiledRules:
    """The instance-level OWL 2 RL rules of one ontology closure, as lookup tables."""

    supers: dict[Node, set[Node]] = field(default_factory=dict)  # cax-sco/eqc, cls-int2, cls-uni
    domains: dict[Node, list[Node]] = field(default_factory=dict)
    ranges: dict[Node, list[Node]] = field(default_factory=dict)
    superprops: dict[Node, set[Node]] = field(default_factory=dict)
    inverses: dict[Node, set[Node]] = field(default_factory=dict)
    symmetric: set[Node] = field(default_factory=set)
    transitive: set[Node] = field(default_factory=set)
    functional: set[Node] = field(default_factory=set)
    inverse_functional: set[Node] = field(default_factory=set)
    chains: dict[Node, list[tuple[tuple[Node, ...], int, Node]]] = field(default_factory=dict)
    has_value: dict[Node, tuple[Node, Node]] = field(default_factory=dict)  # R → (p, v)
    by_value: dict[tuple[Node, Node], list[Node]] = field(default_factory=dict)  # (p, v) → [R]
    some_by_prop: dict[Node, list[tuple[Node, Node]]] = field(default_factory=dict)  # p → [(R, C)]
    some_by_class: dict[Node, list[tuple[Node, Node]]] = field(default_factory=dict)  # C → [(R, p)]
    all_by_class: dict[Node, list[tuple[Node, Node]]] = field(default_factory=dict)  # R → [(p, C)]
    all_by_prop: dict[Node, list[tuple[Node, Node]]] = field(default_factory=dict)  # p → [(R, C)]
    intersections: dict[Node, list[tuple[Node, tuple[Node, ...]]]] = field(default_factory=dict)
    disjoint: dict[Node, set[Node]] = field(default_factory=dict)
    #: the predicates some rule reads; a fact with another one (but rdf:type) concludes nothing
    active: set[Node] = field(default_factory=set)
    #: the predicates whose subjects some rule looks up by object
    backward: set[Node] = field(default_factory=set)
    # the closure's facts about individuals, which a case's facts join with
    types: dict[Node, set[Node]] = field(default_factory=dict)
    objects: dict[tuple[Node, Node], set[Node]] = field(default_factory=dict)
    subjects: dict[tuple[Node, Node], set[Node]] = field(default_factory=dict)
    #: every term of the tables, as the one object the tables hold (see :meth:`CaseClosure.add`)
    canon: dict[Node, Node] = field(default_factory=dict)

    @classmethod
    def compile(cls, closure: Iterable[Triple]) -> CompiledRules | None:
        """The rules of ``closure``, or None if it holds a construct they cannot follow."""
        try:
            return _Compiler(list(closure)).run()
        except Unsupported:
            return None

    def refuses(self, triple: Triple) -> bool:
        """Whether a case fact would be schema (an axiom, a list, an equality): not instance data."""
        s, p, o = triple
        if str(p) == _TYPE_IRI:  # a predicate is an IRI: compared as text, in C
            return _vocabulary(o) and o != THING and o != NAMED
        return _vocabulary(p)


#: The terms the rules name in code: each table holds these very objects (compared with ``is``).
_CONSTANTS = (TYPE, THING, NOTHING, SAME_AS, NAMED)


class _Compiler:
    def __init__(self, closure: list[Triple]) -> None:
        self.rules = CompiledRules()
        canon = self.rules.canon
        canon.update((c, c) for c in _CONSTANTS)
        closure = [(canon.setdefault(s, s), canon.setdefault(p, p), canon.setdefault(o, o)) for s, p, o in closure]
        self.by_sp: dict[tuple[Node, Node], list[Node]] = {}
        for s, p, o in closure:
            self.by_sp.setdefault((s, p), []).append(o)
        self.closure = closure

    def one(self, s: Node, p: Node) -> Node | None:
        found = set(self.by_sp.get((s, p), ()))
        if len(found) > 1:
            raise Unsupported(f"{s} has {len(found)} values for {p}")
        return next(iter(found), None)

    def items(self, head: Node) -> tuple[Node, ...]:
        """The members of an RDF list."""
        out: list[Node] = []
        seen: set[Node] = set()
        while head != RDF.nil:
            first, rest = self.one(head, RDF.first), self.one(head, RDF.rest)
            if head in seen or first is None or rest is None:
                raise Unsupported("a malformed RDF list")
            seen.add(head)
            out.append(first)
            head = rest
        return tuple(out)

    def run(self) -> CompiledRules:
        r = self.rules
        for s, p, o in self.closure:
            if isinstance(s, Literal):
                continue
            if p not in _READ and _vocabulary(p):
                raise Unsupported(f"the compiled rules do not read {p}")
            if p == TYPE and _vocabulary(o) and o not in _META_TYPES:
                raise Unsupported(f"the compiled rules do not read {o}")
            if p == OWL.sameAs and s != o:
                raise Unsupported("the ontology states an equality of individuals")
            self.axiom(s, p, o)
        for restriction in {s for (s, p) in self.by_sp if p == OWL.onProperty}:
            self.restriction(restriction)
        for (s, p), objects in self.by_sp.items():
            if p == OWL.intersectionOf:
                members = self.items(objects[0])
                for m in members:
                    r.intersections.setdefault(m, []).append((s, members))
                    r.supers.setdefault(s, set()).add(m)  # cls-int2
            elif p == OWL.unionOf:
                for m in self.items(objects[0]):
                    r.supers.setdefault(m, set()).add(s)  # cls-uni
            elif p == OWL.propertyChainAxiom:
                for head in objects:
                    chain = self.items(head)
                    for i, link in enumerate(chain):
                        r.chains.setdefault(link, []).append((chain, i, s))
            elif p == OWL.complementOf:
                for c in objects:
                    r.disjoint.setdefault(s, set()).add(c)
                    r.disjoint.setdefault(c, set()).add(s)
            elif p in (OWL.members, OWL.distinctMembers) and (s, TYPE) in self.by_sp:
                if OWL.AllDifferent not in self.by_sp[(s, TYPE)]:
                    raise Unsupported(f"the compiled rules do not read {self.by_sp[(s, TYPE)]}")
        r.active = {SAME_AS, *r.domains, *r.ranges, *r.superprops, *r.inverses, *r.symmetric, *r.transitive,
                    *r.functional, *r.inverse_functional, *r.chains, *(p for p, _ in r.by_value),
                    *r.some_by_prop, *r.all_by_prop}
        r.backward = {*r.inverse_functional, *r.transitive,
                      *(link for chain, _, _ in (c for cs in r.chains.values() for c in cs) for link in chain),
                      *(p for pairs in r.some_by_class.values() for _, p in pairs)}
        r.supers = _transitive(r.supers)
        r.superprops = _transitive(r.superprops)
        if OWL.Thing in r.supers or any(OWL.Thing in ms for _, ms in r.intersections.get(OWL.Thing, ())):
            raise Unsupported("owl:Thing has superclasses or is part of an intersection")
        return r

    def axiom(self, s: Node, p: Node, o: Node) -> None:
        r = self.rules
        if p in (RDFS.subClassOf, OWL.equivalentClass):
            if s != o:
                r.supers.setdefault(s, set()).add(o)
                if p == OWL.equivalentClass:
                    r.supers.setdefault(o, set()).add(s)
        elif p == RDFS.domain:
            r.domains.setdefault(s, []).append(o)
        elif p == RDFS.range:
            r.ranges.setdefault(s, []).append(o)
        elif p in (RDFS.subPropertyOf, OWL.equivalentProperty):
            if s != o:
                r.superprops.setdefault(s, set()).add(o)
                if p == OWL.equivalentProperty:
                    r.superprops.setdefault(o, set()).add(s)
        elif p == OWL.inverseOf:
            r.inverses.setdefault(s, set()).add(o)
            r.inverses.setdefault(o, set()).add(s)
        elif p == OWL.disjointWith:
            r.disjoint.setdefault(s, set()).add(o)
            r.disjoint.setdefault(o, set()).add(s)
        elif p == TYPE:
            characteristic: dict[Node, set[Node]] = {
                OWL.TransitiveProperty: r.transitive, OWL.SymmetricProperty: r.symmetric,
                OWL.FunctionalProperty: r.functional, OWL.InverseFunctionalProperty: r.inverse_functional}
            characteristic.get(o, set()).add(s)
            if not _vocabulary(o) or o == OWL.Thing:
                r.types.setdefault(s, set()).add(o)
        if not _vocabulary(p):
            r.objects.setdefault((s, p), set()).add(o)
            r.subjects.setdefault((o, p), set()).add(s)

    def restriction(self, node: Node) -> None:
        r = self.rules
        prop = self.one(node, OWL.onProperty)
        assert prop is not None
        kinds = [p for p in (OWL.hasValue, OWL.someValuesFrom, OWL.allValuesFrom) if (node, p) in self.by_sp]
        if len(kinds) != 1:
            raise Unsupported(f"restriction {node} is not one the compiled rules read")
        kind = kinds[0]
        value = self.one(node, kind)
        assert value is not None
        if kind == OWL.hasValue:
            r.has_value[node] = (prop, value)
            r.by_value.setdefault((prop, value), []).append(node)
        elif kind == OWL.someValuesFrom:
            if (_vocabulary(value) and value != OWL.Thing or str(value).startswith(_XSD)
                    or RDFS.Datatype in self.by_sp.get((value, TYPE), ())):
                raise Unsupported(f"restriction {node} is on a datatype")
            r.some_by_prop.setdefault(prop, []).append((node, value))
            r.some_by_class.setdefault(value, []).append((node, prop))
        else:
            r.all_by_class.setdefault(node, []).append((prop, value))
            r.all_by_prop.setdefault(prop, []).append((node, value))


def _transitive(edges: dict[Node, set[Node]]) -> dict[Node, set[Node]]:
    out: dict[Node, set[Node]] = {}
    for start in edges:
        seen: set[Node] = set()
        todo = list(edges[start])
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(edges.get(n, ()))
        seen.discard(start)
        out[start] = seen
    return out


class CaseClosure:
    """The OWL 2 RL closure of one case's facts over the compiled ontology, grown fact by fact.

    Each index of the case starts, the first time the case touches a key, as a copy of the
    closure's entry for it: a rule then asks one set, not two (and builds no union of them),
    and subjects are indexed only for the predicates a rule reads backwards."""

    def __init__(self, rules: CompiledRules) -> None:
        self.rules = rules
        self.derived: list[Triple] = []  # every fact of the case, given or derived, in order
        self._types: dict[Node, set[Node]] = {}
        self._objects: dict[tuple[Node, Node], set[Node]] = {}
        self._subjects: dict[tuple[Node, Node], set[Node]] = {}
        self._kept: dict[tuple[Node, Node], set[Node]] = {}  # facts no rule looks up
        self._local: dict[Node, Node] = {c: c for c in _CONSTANTS}  # the case's own terms, one object each

    def add(self, facts: Iterable[Triple]) -> None:
        """Add facts and everything they lead to. Raises :class:`Unsupported` (then the closure is
        unusable) for a fact the compiled rules cannot follow.

        Every term is first replaced by the one object the tables (or this case) hold for it,
        so that lookups find their key by identity and the rules compare terms with ``is``:
        rdflib compares two equal terms in Python, a microsecond each, thousands a case."""
        r = self.rules
        term = self._term
        todo = [(term(s), term(p), term(o)) for s, p, o in facts]
        for t in todo:
            if r.refuses(t):
                raise Unsupported(f"{t} is not instance data")
        active, derived, kept = r.active, self.derived, self._kept
        while todo:
            s, p, o = t = todo.pop()
            if p is TYPE:
                types = self._types_of(s)
                if o not in types:
                    types.add(o)
                    derived.append(t)
                    self._on_type(s, o, types, todo)
            elif p not in active:  # never looked up by a rule: kept, not indexed
                values = kept.get((s, p))
                if values is None:
                    values = kept[(s, p)] = set()
                if o not in values:
                    values.add(o)
                    derived.append(t)
            elif self._put(t):
                self._on_fact(s, p, o, todo)

    def _term(self, term: Node) -> Node:
        found = self.rules.canon.get(term)
        return found if found is not None else self._local.setdefault(term, term)

    def _types_of(self, node: Node) -> set[Node]:
        """The node's types so far (the closure's and the case's): the case's own set."""
        types = self._types.get(node)
        if types is None:
            types = self._types[node] = set(self.rules.types.get(node, ()))
        return types

    def has_type(self, node: Node, cls: Node) -> bool:
        types = self._types.get(node)
        return cls in (types if types is not None else self.rules.types.get(node, ()))

    def objects(self, s: Node, p: Node) -> set[Node]:
        found = self._objects.get((s, p))
        return found if found is not None else self.rules.objects.get((s, p), _NONE)

    def subjects(self, p: Node, o: Node) -> set[Node]:
        found = self._subjects.get((o, p))
        return found if found is not None else self.rules.subjects.get((o, p), _NONE)

    def _put(self, t: Triple) -> bool:
        """Record a fact whose predicate some rule reads; False if it was known."""
        s, p, o = t
        objects = self._objects.get((s, p))
        if objects is None:
            objects = self._objects[(s, p)] = set(self.rules.objects.get((s, p), ()))
        if o in objects:
            return False
        objects.add(o)
        if p in self.rules.backward:
            subjects = self._subjects.get((o, p))
            if subjects is None:
                subjects = self._subjects[(o, p)] = set(self.rules.subjects.get((o, p), ()))
            subjects.add(s)
        self.derived.append(t)
        return True

    def _on_type(self, x: Node, c: Node, types: set[Node], todo: list[Triple]) -> None:
        self._type_rules(x, c, types, todo)
        # cax-sco, cax-eqc, cls-int2, cls-uni: the superclasses are closed, so theirs are among them
        for d in self.rules.supers.get(c, ()):
            if d not in types:
                types.add(d)
                self.derived.append((x, TYPE, d))
                self._type_rules(x, d, types, todo)

    def _type_rules(self, x: Node, c: Node, types: set[Node], todo: list[Triple]) -> None:
        r = self.rules
        if c is NOTHING or not types.isdisjoint(r.disjoint.get(c, ())):
            raise Unsupported(f"{x} is inconsistent")  # cls-nothing2, cax-dw, cls-com
        for whole, members in r.intersections.get(c, ()):  # cls-int1
            if all(m in types for m in members):
                todo.append((x, TYPE, whole))
        if (hv := r.has_value.get(c)) is not None:  # cls-hv1
            todo.append((x, hv[0], hv[1]))
        for p, d in r.all_by_class.get(c, ()):  # cls-avf
            todo.extend((y, TYPE, d) for y in self.objects(x, p))
        for restriction, p in r.some_by_class.get(c, ()):  # cls-svf1
            todo.extend((s, TYPE, restriction) for s in self.subjects(p, x))

    def _on_fact(self, s: Node, p: Node, o: Node, todo: list[Triple]) -> None:
        r = self.rules
        if p is SAME_AS:
            if s is not o:
                raise Unsupported("an equality")
            return
        if p in r.functional and len(self.objects(s, p)) > 1:  # prp-fp
            raise Unsupported(f"{s} has two values of functional {p}")
        if p in r.inverse_functional and len(self.subjects(p, o)) > 1:  # prp-ifp
            raise Unsupported(f"{o} is the value of inverse-functional {p} for two subjects")
        # prp-dom, prp-rng (most facts repeat a type their node has: not queued again)
        if (domains := r.domains.get(p)) is not None:
            types = self._types_of(s)
            todo.extend((s, TYPE, c) for c in domains if c not in types)
        if (ranges := r.ranges.get(p)) is not None:
            types = self._types_of(o)
            todo.extend((o, TYPE, c) for c in ranges if c not in types)
        if (supers := r.superprops.get(p)) is not None:  # prp-spo1, prp-eqp
            todo.extend((s, q, o) for q in supers)
        if (inverses := r.inverses.get(p)) is not None:  # prp-inv
            todo.extend((o, q, s) for q in inverses)
        if p in r.symmetric:  # prp-symp
            todo.append((o, p, s))
        if p in r.transitive:  # prp-trp
            todo.extend((s, p, z) for z in self.objects(o, p))
            todo.extend((w, p, o) for w in self.subjects(p, s))
        for chain, i, whole in r.chains.get(p, ()):  # prp-spo2
            starts, ends = {s}, {o}
            for link in reversed(chain[:i]):
                starts = {w for n in starts for w in self.subjects(link, n)}
            for link in chain[i + 1:]:
                ends = {z for n in ends for z in self.objects(n, link)}
            todo.extend((a, whole, b) for a in starts for b in ends)
        for restriction in r.by_value.get((p, o), ()):  # cls-hv2
            todo.append((s, TYPE, restriction))
        for restriction, c in r.some_by_prop.get(p, ()):  # cls-svf1, cls-svf2
            if c is THING or self.has_type(o, c):
                todo.append((s, TYPE, restriction))
        for restriction, c in r.all_by_prop.get(p, ()):  # cls-avf
            if self.has_type(s, restriction):
                todo.append((o, TYPE, c))


_NONE: set[Node] = set()  # what an index holds for a key nothing has (never changed)
