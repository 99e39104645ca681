"""SPARQL rules run on each case's graph, and what a rule needs to find there before it can fire.

Each case's facts are a graph of their own in a shared in-memory rule store, beside the
ontology facts the rules read (the *support*); :class:`RuleGraphs` runs a rule on one case
with ``$this`` bound to it, seeing that graph and the support only.

Parsing and planning a rule costs Oxigraph 30–200 µs each time (no prepared queries), about
as much on an empty graph as on a case, and most rules conclude nothing for most cases (one
response category rule fires; the others find one already there). :func:`needs_of` reads
the parts of a rule's WHERE that every solution must match — triple patterns outside
OPTIONAL, UNION, MINUS's right side, EXISTS and sub-queries — and the top-level
``FILTER NOT EXISTS { $this p ?x }`` tests whose ``?x`` nothing else binds. A case whose facts
(with the rule support) lack a required predicate or class, or have one of those excluded
facts, would get no solution: :meth:`RuleNeeds.met_by` says so before the query is run.

Anything the reading does not know (a variable predicate, an alternative path, ``GRAPH``,
``VALUES``, an aggregate) adds no need: the rule then simply runs.

In a batch of cases, a rule is one query for all of them where that is sure to conclude what
it concludes on each case alone (:func:`batched_rule`): each case graph then holds a copy of
the support and a quad naming its case, and the query reads each graph on its own.

>>> needs = needs_of('''PREFIX ex: <http://example.org/>
... CONSTRUCT { $this ex:flagged true } WHERE {
...   $this ex:hasScore/ex:value ?v . ?c a ex:Threshold . OPTIONAL { $this ex:note ?n }
...   FILTER NOT EXISTS { $this ex:flag ?any } }''')
>>> sorted(needs.this_props), sorted(needs.props), sorted(needs.excluded)
(['http://example.org/hasScore'], ['http://example.org/value'], ['http://example.org/flag'])
>>> sorted(needs.classes)
['http://example.org/Threshold']
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyoxigraph as ox
from pyparsing import ParseResults
from rdflib import RDF, URIRef, Variable
from rdflib.paths import AlternativePath, InvPath, MulPath, OneOrMore, SequencePath
from rdflib.term import Node

from .. import querytext
from ..files import write_atomically
from .ontology import SparqlRule
from .terms import Triple, constructed, from_ox, to_ox

#: Where the rule store keeps the ontology facts every rule run sees; each run adds a graph.
RULE_SUPPORT_GRAPH = ox.NamedNode("urn:esi-kg:rule-support")
_THIS_VAR = ox.Variable("this")
OxTerm = ox.NamedNode | ox.BlankNode | ox.Literal
THIS = Variable("this")
_ONLY_TRIPLES = "esi_only_triples"
_TYPE = str(RDF.type)
#: Algebra nodes whose every solution extends a solution of the child named here.
_REQUIRED_CHILDREN = {"ConstructQuery": ("p",), "SelectQuery": ("p",), "AskQuery": ("p",), "Project": ("p",),
                      "Distinct": ("p",), "Reduced": ("p",), "OrderBy": ("p",), "Slice": ("p",),
                      "Extend": ("p",), "Join": ("p1", "p2"), "LeftJoin": ("p1",), "Minus": ("p1",)}


@dataclass(frozen=True)
class RuleNeeds:
    """Predicates and classes (as IRI strings) a rule's every solution rests on."""

    this_props: frozenset[str] = frozenset()  # $this p ?x
    props: frozenset[str] = frozenset()  # ?s p ?x
    classes: frozenset[str] = frozenset()  # ?s a C
    excluded: frozenset[str] = frozenset()  # FILTER NOT EXISTS { $this p ?x }, ?x bound nowhere else
    #: the predicates of all its patterns, and the classes of its rdf:type ones (None: it may read any)
    reads: frozenset[str] | None = None
    read_classes: frozenset[str] | None = None

    def met_by(self, facts: FactShape, support: FactShape) -> bool:
        """Whether a case (``facts``) with the rule support might give the rule a solution;
        False means it surely gives none."""
        if not self.excluded.isdisjoint(facts.this_props):
            return False
        return (all(p in facts.this_props or p in support.props for p in self.this_props)
                and all(p in facts.props or p in support.props for p in self.props)
                and all(c in facts.classes or c in support.classes for c in self.classes))


@dataclass
class FactShape:
    """The predicates and classes some facts use, and the predicates of their case node."""

    this: str = ""
    this_props: set[str] = field(default_factory=set)
    props: set[str] = field(default_factory=set)
    classes: set[str] = field(default_factory=set)

    def add(self, s: str, p: str, o: str) -> None:
        """A fact, as the strings of its terms (a literal's lexical form will do for ``o``)."""
        self.props.add(p)
        if s == self.this:
            self.this_props.add(p)
        if p == _TYPE:
            self.classes.add(o)

    def add_ox(self, t: ox.Triple | ox.Quad) -> None:
        self.add(_text(t.subject), t.predicate.value, _text(t.object))


NO_NEEDS = RuleNeeds()


@dataclass(frozen=True)
class Reads:
    """Which facts some rules can see: a pattern with a fixed predicate matches no other one, so
    a fact no rule names is left out of the rule graphs (most of an OWL closure, for stratum 2)."""

    props: frozenset[str] | None
    classes: frozenset[str] | None

    @classmethod
    def of(cls, rules: Iterable[RuleNeeds]) -> Reads:
        props: set[str] | None = set()
        classes: set[str] | None = set()
        for needs in rules:
            props = None if props is None or needs.reads is None else props | needs.reads
            classes = None if classes is None or needs.read_classes is None else classes | needs.read_classes
        return cls(None if props is None else frozenset(props), None if classes is None else frozenset(classes))

    def wants(self, t: Triple) -> bool:
        if self.props is None:
            return True
        p = str(t[1])
        if p == _TYPE:
            return self.classes is None or str(t[2]) in self.classes
        return p in self.props


ALL = Reads(None, None)


def _text(term: ox.NamedNode | ox.BlankNode | ox.Literal | ox.Triple) -> str:
    return str(term) if isinstance(term, ox.Triple) else term.value


class Terms:
    """rdflib terms and their Oxigraph twins, the ontology's converted once (read-only, shared),
    a batch's own as they come."""

    def __init__(self, known: Iterable[Node] = ()) -> None:
        self.ox: dict[Node, OxTerm] = {t: to_ox(t) for t in known}
        self.rdf: dict[Any, Node] = {o: t for t, o in self.ox.items()}

    def batch(self) -> Terms:
        """A cache for one batch: the shared one, then the batch's own terms."""
        mine = Terms()
        mine.ox, mine.rdf = _Layered(self.ox, to_ox), _Layered(self.rdf, from_ox)  # type: ignore[assignment]
        return mine


class _Layered(dict):  # type: ignore[type-arg]
    """A dict in front of a shared one, filling itself from ``convert`` on a miss."""

    def __init__(self, shared: dict[Any, Any], convert: Any) -> None:
        super().__init__()
        self.shared, self.convert = shared, convert

    def __missing__(self, key: Any) -> Any:
        found = self.shared.get(key)
        value = self[key] = found if found is not None else self.convert(key)
        return value


class RuleGraphs:
    """Each case's graph in the rule store while its strata run: what it holds is never added twice.

    Writes wait until a query needs them: each write to the in-memory store is a transaction,
    30–70 µs however few its quads (measured), so the quads of one stratum's facts go in one
    write, and what a rule constructs for every case goes in one write before the next rule
    reads any of those cases' graphs."""

    def __init__(self, store: ox.Store, support: FactShape, cases: Sequence[URIRef], terms: Terms) -> None:
        self.store, self.support = store, support
        self.graph = {iri: ox.BlankNode() for iri in cases}
        self._this = {iri: to_ox(iri) for iri in cases}
        self._held: dict[URIRef, set[Triple]] = {iri: set() for iri in cases}
        #: what each case's graph holds, as the rules' needs are checked against it
        self.shape = {iri: FactShape(str(iri)) for iri in cases}
        self.terms = terms.batch()
        self._pending: list[ox.Quad] = []  # quads not written yet, and the cases they are about
        self._pending_cases: set[URIRef] = set()
        #: whether each case graph holds the rule support too (see add_support)
        self.support_copied = False

    def add_support(self, support: Sequence[ox.Triple]) -> None:
        """Put ``support`` (what the rules read of it) in each case graph, and the quad that
        names the graph's case, for the rules' batched queries (see :class:`BatchedRule`),
        in the write of the cases' first facts."""
        for iri, graph in self.graph.items():
            self._pending.extend([ox.Quad(t.subject, t.predicate, t.object, graph) for t in support])
            self._pending.append(ox.Quad(RULE_CASE_MARKER, RULE_CASE_MARKER, self._this[iri], graph))
            self._pending_cases.add(iri)
        self.support_copied = True

    def add(self, facts: dict[URIRef, list[Triple]], reads: Reads = ALL) -> None:
        """Add to each case's graph those of its ``facts`` the rules to come ``reads``."""
        to_ox = self.terms.ox
        quads = self._pending
        for iri, graph in self.graph.items():
            held, shape = self._held[iri], self.shape[iri]
            new = [t for t in dict.fromkeys(facts.get(iri, ())) if t not in held and reads.wants(t)]
            if not new:
                continue
            held.update(new)
            for s, p, o in new:
                shape.add(str(s), str(p), str(o))
            quads.extend([ox.Quad(to_ox[s], to_ox[p], to_ox[o], graph) for s, p, o in new])  # type: ignore[arg-type]
            self._pending_cases.add(iri)

    def add_ox(self, iri: URIRef, new: list[ox.Triple]) -> list[Triple]:
        """Add what a rule constructed; returns it as rdflib triples."""
        graph, shape, rdf = self.graph[iri], self.shape[iri], self.terms.rdf
        triples = []
        for t in new:
            s, p, o = t.subject, t.predicate, t.object
            self._pending.append(ox.Quad(s, p, o, graph))
            shape.add(_text(s), p.value, _text(o))
            triples.append((rdf[s], rdf[p], rdf[o]))
        self._pending_cases.add(iri)
        self._held[iri].update(triples)
        return triples

    def run(self, rule: SparqlRule, needs: RuleNeeds, iri: URIRef) -> list[ox.Triple]:
        """What ``rule`` constructs for case ``iri`` now; nothing, unasked, when its needs are unmet."""
        if not needs.met_by(self.shape[iri], self.support):
            return []
        if iri in self._pending_cases:
            self._write()
        # a case graph with its own copy of the support is read alone: the union of the two
        # would give each support fact twice
        graphs: list[ox.NamedNode | ox.BlankNode | ox.DefaultGraph] = (
            [self.graph[iri]] if self.support_copied else [RULE_SUPPORT_GRAPH, self.graph[iri]])
        return list(constructed(self.store.query(
            rule.query, default_graph=graphs, named_graphs=[], substitutions={_THIS_VAR: self._this[iri]})))

    def run_batched(self, rule: BatchedRule, iris: Sequence[URIRef]) -> dict[URIRef, list[ox.Triple]]:
        """What a rule constructs for each of the cases ``iris`` now, in one query (their graphs
        must hold the support: :meth:`add_support`); the cases it constructs nothing for are left out."""
        if not iris:
            return {}
        if not self._pending_cases.isdisjoint(iris):
            self._write()
        by_this = {self._this[iri]: iri for iri in iris}
        solutions = self.store.query(rule.query, named_graphs=[self.graph[iri] for iri in iris])
        return {by_this[this]: new for this, new in rule.constructed(solutions).items()}  # type: ignore[arg-type]

    def _write(self) -> None:
        self.store.extend(self._pending)
        self._pending, self._pending_cases = [], set()

    def close(self) -> None:
        self._pending, self._pending_cases = [], set()
        for graph in self.graph.values():
            self.store.remove_graph(graph)


#: Who read the needs kept in a cache: this module's text, so that needs read by another version
#: of the reading (a fixed bug, a new SPARQL form) are read again, never trusted.
_READER = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def needs_of_rules(queries: Iterable[str], cache: Path | None = None) -> dict[str, RuleNeeds]:
    """The needs of each rule text, kept in ``cache`` (JSON, written whole or not at all): reading
    the 16 shipped rules costs rdflib 0.4 s, a third of loading the knowledge base. An entry is
    keyed by the rule's text and by the code that read it."""
    kept: dict[str, Any] = {}
    if cache is not None and cache.exists():
        kept = json.loads(cache.read_bytes())
    out, missing = {}, False
    for query in queries:
        key = hashlib.sha256(f"{_READER}\n{query}".encode()).hexdigest()
        if key in kept:
            read: dict[str, Any] = {name: None if values is None else frozenset(values)
                                    for name, values in kept[key].items()}
            out[query] = RuleNeeds(**read)
        else:
            out[query], missing = needs_of(query), True
            kept[key] = {f.name: None if (v := getattr(out[query], f.name)) is None else sorted(v)
                         for f in fields(RuleNeeds)}
    if cache is not None and missing:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(cache, json.dumps(kept, sort_keys=True).encode())
    return out


@lru_cache(maxsize=256)
def needs_of(query: str) -> RuleNeeds:
    """The needs of a rule's SPARQL text (read by rdflib's parser, 25 ms a rule: once per process)."""
    from rdflib.plugins.sparql.algebra import translateQuery
    from rdflib.plugins.sparql.parser import parseQuery

    try:
        parsed = parseQuery(query)
        hidden = _mark_exists_groups(parsed)
        algebra = translateQuery(parsed).algebra
    except Exception:  # a text rdflib cannot read is still run by Oxigraph, just never skipped
        return NO_NEEDS
    reading = _Reading()
    reading.walk(algebra)
    seen = _Seen()
    reads: frozenset[str] | None
    read_classes: frozenset[str] | None
    if not hidden and seen.walk(algebra):
        reads, read_classes = frozenset(seen.props), None if seen.any_class else frozenset(seen.classes)
    else:
        reads = read_classes = None
    return RuleNeeds(frozenset(reading.this_props), frozenset(reading.props), frozenset(reading.classes),
                     frozenset(reading.excluded), reads, read_classes)


class _Reading:
    def __init__(self) -> None:
        self.this_props: set[str] = set()
        self.props: set[str] = set()
        self.classes: set[str] = set()
        self.excluded: set[str] = set()

    def walk(self, node: Any) -> None:
        name = getattr(node, "name", None)
        if name == "BGP":
            for s, p, o in node["triples"]:
                self.pattern(s, p, o)
        elif name == "Filter":
            self.walk(node["p"])
            scope = set(getattr(node["p"], "_vars", ()))
            for test in _conjuncts(node["expr"]):
                if (p := _absent(test, scope)) is not None:
                    self.excluded.add(p)
        for child in _REQUIRED_CHILDREN.get(name or "", ()):
            self.walk(node[child])

    def pattern(self, s: Any, p: Any, o: Any) -> None:
        if isinstance(p, URIRef) and str(p) == _TYPE and isinstance(o, URIRef):
            self.classes.add(str(o))
        elif isinstance(p, URIRef):
            (self.this_props if s == THIS else self.props).add(str(p))
        elif isinstance(p, SequencePath):
            for i, link in enumerate(p.args):
                self.pattern(s if i == 0 else None, link, None)
        elif isinstance(p, InvPath):
            self.pattern(o, p.arg, s)
        elif isinstance(p, MulPath) and p.mod == OneOrMore:
            self.pattern(s, p.path, None)


class _Seen:
    """Every pattern of a rule, wherever it is; ``walk`` is False if one may match any predicate."""

    def __init__(self) -> None:
        self.props: set[str] = set()
        self.classes: set[str] = set()
        self.any_class = False

    def walk(self, node: Any) -> bool:
        name = getattr(node, "name", None)
        if name in ("Graph", "GraphGraphPattern", "ServiceGraphPattern"):
            return False
        if name in ("BGP", "TriplesBlock"):
            flat = [term for row in node["triples"] for term in row]
            if len(flat) % 3 or not all(self.pattern(flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)):
                return False
        return all(self.walk(child) for child in _children(node))

    def pattern(self, p: Any, o: Any) -> bool:
        if isinstance(p, URIRef):
            self.props.add(str(p))
            if str(p) == _TYPE:
                if isinstance(o, URIRef):
                    self.classes.add(str(o))
                else:
                    self.any_class = True
            return True
        if isinstance(p, SequencePath | AlternativePath):
            return all(self.pattern(link, None) for link in p.args)
        if isinstance(p, InvPath):
            return self.pattern(p.arg, None)
        if isinstance(p, MulPath) and p.mod == OneOrMore:
            return self.pattern(p.path, None)
        return False  # a variable, a negated or a possibly empty path: any fact may match


def _children(node: Any) -> Iterable[Any]:
    if isinstance(node, dict):
        return node.values()
    if isinstance(node, list | tuple | ParseResults):
        return list(node)
    return ()


def _mark_exists_groups(node: Any) -> bool:
    """Mark each (NOT) EXISTS group made of triple patterns only. rdflib's translation takes the
    FILTERs out of such a group and leaves it untranslated, so afterwards a group with a FILTER
    looks like one without. True if such a FILTER held an EXISTS of its own: its patterns are
    then out of sight."""
    hidden = False
    if getattr(node, "name", None) in ("Builtin_EXISTS", "Builtin_NOTEXISTS"):
        group = node["graph"]
        if getattr(group, "name", None) == "GroupGraphPatternSub":
            parts = list(group.get("part") or ())
            group[_ONLY_TRIPLES] = all(getattr(part, "name", None) == "TriplesBlock" for part in parts)
            hidden = any(getattr(part, "name", None) == "Filter" and _has_exists(part) for part in parts)
    for child in _children(node):
        hidden = _mark_exists_groups(child) or hidden
    return hidden


def _has_exists(node: Any) -> bool:
    return getattr(node, "name", None) in ("Builtin_EXISTS", "Builtin_NOTEXISTS") or any(
        _has_exists(child) for child in _children(node))


def _conjuncts(expr: Any) -> Iterable[Any]:
    if getattr(expr, "name", None) == "ConditionalAndExpression":
        for part in (expr["expr"], *(expr.get("other") or ())):
            yield from _conjuncts(part)
    else:
        yield expr


def _absent(test: Any, scope: set[Any]) -> str | None:
    """``p`` of a ``NOT EXISTS { $this p ?x }`` whose ``?x`` no solution of ``scope`` binds."""
    if getattr(test, "name", None) != "Builtin_NOTEXISTS":
        return None
    triples = _only_triples(test["graph"])
    if triples is None or len(triples) != 1:
        return None
    s, p, o = triples[0]
    if s == THIS and isinstance(p, URIRef) and isinstance(o, Variable) and o != THIS and o not in scope:
        return str(p)
    return None


def _only_triples(graph: Any) -> list[tuple[Any, Any, Any]] | None:
    """The triple patterns of a group made of triple patterns only (parsed or translated)."""
    name = getattr(graph, "name", None)
    if name == "BGP":
        return list(graph["triples"])
    if name != "GroupGraphPatternSub" or graph.get(_ONLY_TRIPLES) is not True:
        return None
    flat: list[Any] = []
    for part in graph.get("part") or ():
        if getattr(part, "name", None) != "TriplesBlock":
            return None
        for row in part["triples"]:
            flat.extend(row)
    if len(flat) % 3:
        return None
    return [tuple(flat[i:i + 3]) for i in range(0, len(flat), 3)]  # type: ignore[misc]


# -- one query per rule for a whole batch ---------------------------------------------------

#: The graph variable and the marker of the batched form of a rule (see :func:`batched_rule`).
BATCH_GRAPH_VAR = "esi_rule_graph"
#: A quad ``<marker> <marker> case`` in each case graph of a batch names the graph's case.
RULE_CASE_MARKER = ox.NamedNode("urn:esi-kg:rule-case")
# Strings, IRIs and variables as the query checker reads them (kgservice/querytext.py).
_SPARQL_TOKEN = re.compile("|".join((
    r"(?P<ws>\s+|#[^\n\r]*)",
    f"(?P<str>{'|'.join(pattern.pattern for _, pattern in querytext.STRINGS)})",
    f"(?P<iri>{querytext.IRI.pattern})",
    f"(?P<var>{querytext.VAR.pattern})",
    r"(?P<word>[A-Za-z_][A-Za-z0-9_\-.:]*|:[A-Za-z0-9_\-.:]*)",  # keywords and prefixed names
    r"(?P<open>\{)|(?P<close>\})",
    r"(?P<other>.)",
)), re.S)
#: Words that make a rule's WHERE read other graphs, or whose meaning changes with $this a
#: variable joined in rather than a constant (MINUS: a shared variable decides what it removes).
_NOT_BATCHED = {"graph", "service", "from", "named", "minus"}
_TemplateTerm = ox.NamedNode | ox.BlankNode | ox.Literal | ox.Variable


@dataclass(frozen=True)
class BatchedRule:
    """A rule as one SELECT over a batch's case graphs, and its CONSTRUCT template.

    Each case graph of the batch also holds the rule support and a quad naming its case; the
    query's ``GRAPH ?g { <marker> <marker> ?this . <the rule's WHERE, inline> }`` evaluates the
    rule's WHERE once per graph, with ``$this`` bound to the graph's case before anything else
    of the group is evaluated (one query over the union of the graphs instead would let a
    pattern not tied to ``$this`` match another case's facts, and was 7x slower as VALUES rows
    over all of them, measured). The rule's CONSTRUCT template is then instantiated here."""

    query: str
    template: tuple[tuple[_TemplateTerm, _TemplateTerm, _TemplateTerm], ...]

    def constructed(self, solutions: Iterable[ox.QuerySolution]) -> dict[ox.NamedNode, list[ox.Triple]]:
        """What the rule constructs for each case (a solution's ``?this``), as CONSTRUCT would:
        a template blank node is fresh for each solution, a triple with an unbound variable or
        that is no RDF triple (a literal subject, a predicate that is no IRI) is left out, and
        each case's triples are a set (kept in the order first constructed)."""
        out: dict[ox.NamedNode, dict[ox.Triple, None]] = {}
        for solution in solutions:
            this = solution[_THIS_VAR]
            if not isinstance(this, ox.NamedNode):
                continue
            mine = out.setdefault(this, {})
            fresh: dict[ox.BlankNode, ox.BlankNode] = {}
            for pattern in self.template:
                s, p, o = (_instance(term, solution, fresh) for term in pattern)
                if (s is None or p is None or o is None or isinstance(s, ox.Literal)
                        or not isinstance(p, ox.NamedNode)):
                    continue
                mine[ox.Triple(s, p, o)] = None
        return {this: list(triples) for this, triples in out.items()}


def _instance(term: _TemplateTerm, solution: ox.QuerySolution,
              fresh: dict[ox.BlankNode, ox.BlankNode]) -> Any:
    if isinstance(term, ox.Variable):
        return solution[term]
    if isinstance(term, ox.BlankNode):
        if (node := fresh.get(term)) is None:
            node = fresh[term] = ox.BlankNode()
        return node
    return term


def _tokens(text: str) -> list[tuple[str, str, int, int]] | None:
    """The tokens of a SPARQL text as (kind, text, start, end), whitespace and comments left
    out; None where the text has what the lexer does not know (an unclosed string)."""
    out = []
    for m in _SPARQL_TOKEN.finditer(text):
        kind = m.lastgroup or "other"
        if kind == "ws":
            continue
        if kind == "other" and m.group() in "'\"":
            return None
        out.append((kind, m.group(), m.start(), m.end()))
    return out


def _closing(tokens: list[tuple[str, str, int, int]], i: int) -> int | None:
    """The index of the ``}`` that closes the ``{`` at ``i``."""
    depth = 0
    for j in range(i, len(tokens)):
        if tokens[j][0] == "open":
            depth += 1
        elif tokens[j][0] == "close":
            depth -= 1
            if depth == 0:
                return j
    return None


@lru_cache(maxsize=256)
def batched_rule(query: str) -> BatchedRule | None:
    """A rule's batched form (see :class:`BatchedRule`), or None when it cannot be sure to be
    exactly the rule run on each case with ``$this`` bound: a WHERE that names graphs,
    services or MINUS, anything after the WHERE (solution modifiers), the ``CONSTRUCT WHERE``
    short form, a variable of the reserved name, or a ``$this`` that the rewrite leaves
    unbound where the rule reads it — the groups it is bound in are the WHERE's own and
    (NOT) EXISTS groups directly in it (the EXISTS pattern is given the solution's ``$this``),
    not an OPTIONAL, UNION, nested group or sub-query, which are evaluated before the join.
    The caller also keeps per case a rule with no pattern of its own binding ``$this``: the
    per-case run leaves it unbound in places where this form binds it (see
    :class:`~kgservice.reasoning.Reasoner`).

    >>> rule = batched_rule('''PREFIX ex: <http://example.org/>
    ... CONSTRUCT { $this ex:flagged ?v } WHERE { $this ex:score ?v FILTER NOT EXISTS { $this ex:ok "}#" } }''')
    >>> print(rule.query[rule.query.index("SELECT"):])
    SELECT * WHERE { GRAPH ?esi_rule_graph { <urn:esi-kg:rule-case> <urn:esi-kg:rule-case> ?this .
    $this ex:score ?v FILTER NOT EXISTS { $this ex:ok "}#" }
    } }
    >>> batched_rule("CONSTRUCT { $this <urn:p> ?x } WHERE { OPTIONAL { $this <urn:q> ?x } }") is None
    True
    """
    tokens = _tokens(query)
    if tokens is None or RULE_CASE_MARKER.value in query:
        return None
    start = next((i for i, t in enumerate(tokens) if t[0] == "word" and t[1].lower() == "construct"), None)
    if start is None or start + 1 >= len(tokens) or tokens[start + 1][0] != "open":
        return None  # no CONSTRUCT, or its WHERE short form
    if not all(kind == "iri" or (kind == "word" and (text.lower() in ("prefix", "base") or text.endswith(":")))
               for kind, text, _, _ in tokens[:start]):
        return None
    end_template = _closing(tokens, start + 1)
    if end_template is None:
        return None
    where = end_template + 1
    if where < len(tokens) and tokens[where][0] == "word" and tokens[where][1].lower() == "where":
        where += 1
    if where >= len(tokens) or tokens[where][0] != "open":
        return None
    end = _closing(tokens, where)
    if end is None or end != len(tokens) - 1:
        return None
    if not _binds_this_everywhere(tokens[where:end + 1]):
        return None
    template = _template(query[:tokens[start][2]], query[tokens[start + 1][2]:tokens[end_template][3]])
    if template is None:
        return None
    body = query[tokens[where][3]:tokens[end][2]].strip()  # on lines of its own: it may end in a comment
    marker = f"<{RULE_CASE_MARKER.value}>"
    text = (f"{query[:tokens[start][2]]}SELECT * WHERE {{ GRAPH ?{BATCH_GRAPH_VAR} {{ {marker} {marker} ?this .\n"
            f"{body}\n}} }}")
    try:  # a text Oxigraph cannot read (a lexer mistake) is no batched rule
        ox.Store().query(text)
    except (SyntaxError, ValueError, OSError):
        return None
    return BatchedRule(text, template)


def _binds_this_everywhere(group: list[tuple[str, str, int, int]]) -> bool:
    """Whether every ``$this`` of a WHERE group is where its batched form binds it (see
    :func:`batched_rule`), and the group has none of the words that keep a rule per case."""
    stack: list[str] = []  # the kind of each group open here: where, exists, other, values
    values = False
    for i, (kind, text, _, _) in enumerate(group):
        if kind == "word":
            word = text.lower()
            if word in _NOT_BATCHED:
                return False
            values = values or word == "values"
        elif kind == "var" and text[1:] == BATCH_GRAPH_VAR:
            return False
        elif kind == "var" and text[1:] == "this":
            if any(open_kind != "exists" for open_kind in stack[1:]):  # an OPTIONAL in an EXISTS too
                return False
        elif kind == "open":
            before = group[i - 1][1].lower() if i else ""
            if values:
                stack.append("values")
                values = False
            elif not stack:
                stack.append("where")
            else:
                stack.append("exists" if before == "exists" else "other")
        elif kind == "close":
            if not stack:
                return False
            stack.pop()
    return not stack


def _template(prologue: str, template: str) -> tuple[tuple[_TemplateTerm, _TemplateTerm, _TemplateTerm], ...] | None:
    """The triples of a CONSTRUCT template as Oxigraph reads them: the template is constructed
    once with each variable bound to an IRI standing for it (rdflib's parse would normalise
    literals, ``01`` to ``1``, which Oxigraph keeps as written)."""
    tokens = _tokens(template)
    if tokens is None:
        return None
    names = sorted({text[1:] for kind, text, _, _ in tokens if kind == "var"})
    stand_in = {ox.NamedNode(f"urn:esi-kg:template-variable:{name}"): ox.Variable(name) for name in names}
    row = " ".join(f"<{iri.value}>" for iri in stand_in)
    where = f"VALUES ({' '.join('?' + n for n in names)}) {{ ({row}) }}" if names else ""
    try:
        triples = list(constructed(ox.Store().query(f"{prologue}CONSTRUCT {template} WHERE {{ {where} }}")))
    except (SyntaxError, ValueError, OSError):
        return None
    # each template blank node is one blank node of this one solution: a new one per solution later
    return tuple((stand_in.get(t.subject, t.subject), stand_in.get(t.predicate, t.predicate),  # type: ignore[misc]
                  stand_in.get(t.object, t.object)) for t in triples)
