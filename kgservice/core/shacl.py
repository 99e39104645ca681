"""SHACL Core for small data graphs: the shapes compiled once, each case checked in microseconds.

A case is a few dozen triples, checked against a few dozen shapes. pyshacl builds its
shape objects and walks rdflib's store again for every run: about 4 ms a case, measured,
which was half of the time of a whole pathway answer. This module reads the shapes graph
once into plain Python objects and evaluates them over a dictionary index of the data
graph (about 0.3 ms a case).

It implements the SHACL Core constraint components and paths listed in
:data:`COMPONENTS` and :func:`compile_path`, with the semantics of the W3C SHACL
Recommendation (section numbers below). A shapes graph that uses anything else (SHACL-AF
rules or functions, ``sh:qualifiedValueShape``, an unknown ``sh:`` term) raises
:class:`Unsupported` at compile time, and the caller falls back to pyshacl, which stays
the reference: the tests check that both report the same violations.

SHACL-SPARQL constraints (``sh:sparql``) are not handled here; see
:class:`kgservice.core.shaclsparql.SparqlConstraints`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rdflib import RDF, RDFS, XSD, BNode, Graph, Literal, URIRef
from rdflib.collection import Collection
from rdflib.namespace import SH
from rdflib.term import Node

from .shaclpaths import Data, Path, Unsupported, compile_path


@dataclass(frozen=True)
class Result:
    """One validation result (SHACL 3.6): where, what, which shape, and its message."""

    focus: Node
    path: Node | None
    value: Node | None
    shape: Node
    component: URIRef
    message: str
    severity: URIRef = SH.Violation


# -- the data graph ------------------------------------------------------------------------


#: What a constraint finds wrong: ``(result path, value node, component)`` per result.
Found = Iterator[tuple[Node | None, Node | None, URIRef]]
#: A compiled constraint: data graph, focus node and its value nodes in; results out.
Check = Callable[[Data, Node, list[Node]], Found]


# -- paths (SHACL 2.3.1) ---------------------------------------------------------------------


# -- shapes ----------------------------------------------------------------------------------

_TARGETS = (SH.targetClass, SH.targetNode, SH.targetObjectsOf, SH.targetSubjectsOf)
_DESCRIPTIVE = {SH.name, SH.description, SH.order, SH.group, SH.defaultValue, SH.message, SH.severity,
                SH.deactivated, SH.path, SH.property, SH.ignoredProperties, SH.flags, SH.prefixes,
                SH.declare, SH.sparql, *_TARGETS}

#: Constraint components (SHACL 4), by parameter, in the order they are checked.
COMPONENTS = (
    SH["class"], SH.datatype, SH.nodeKind, SH.minCount, SH.maxCount, SH.minExclusive, SH.minInclusive,
    SH.maxExclusive, SH.maxInclusive, SH.minLength, SH.maxLength, SH.pattern, SH.languageIn,
    SH.uniqueLang, SH.equals, SH.disjoint, SH.lessThan, SH.lessThanOrEquals, SH["not"], SH["and"], SH["or"],
    SH.xone, SH.node, SH.hasValue, SH["in"], SH.closed,
)


@dataclass
class Shape:
    node: Node
    path_node: Node | None = None
    path: Path | None = None
    targets: list[tuple[Node, Node]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    properties: list[Shape] = field(default_factory=list)
    refs: list[Shape] = field(default_factory=list)  # every shape this one checks against
    message: str | None = None
    severity: URIRef = SH.Violation
    deactivated: bool = False

    def values(self, data: Data, focus: Node) -> list[Node]:
        return self.path(data, focus) if self.path is not None else [focus]


class Shapes:
    """A shapes graph compiled for :meth:`validate`. Immutable once built; thread-safe."""

    def __init__(self, shapes: Graph) -> None:
        self._g = shapes
        self._shapes: dict[Node, Shape] = {}
        roots: set[Node] = set()
        for kind in (SH.NodeShape, SH.PropertyShape):
            roots.update(shapes.subjects(RDF.type, kind))
        for kind in _TARGETS:
            roots.update(shapes.subjects(kind, None))
        for root in roots:
            self._shape(root)
        self._refuse_cycles()
        self.targeted = [s for s in self._shapes.values() if s.targets and not s.deactivated]

    # -- compiling --

    def _shape(self, node: Node) -> Shape:
        if node in self._shapes:
            return self._shapes[node]
        g = self._g
        shape = Shape(node)
        self._shapes[node] = shape  # before the parts: shapes may refer to each other
        for p in set(g.predicates(node, None)):
            if str(p).startswith(str(SH)) and p not in COMPONENTS and p not in _DESCRIPTIVE:
                raise Unsupported(f"{p} (on shape {node})")
        if (path := g.value(node, SH.path)) is not None:
            shape.path_node, shape.path = path, compile_path(g, path)
        shape.targets = [(kind, t) for kind in _TARGETS for t in g.objects(node, kind)]
        if (node, RDF.type, RDFS.Class) in g:  # an implicit class target (SHACL 2.1.3.3)
            shape.targets.append((SH.targetClass, node))
        messages = sorted(g.objects(node, SH.message), key=lambda m: (getattr(m, "language", None) or "", str(m)))
        shape.message = str(messages[0]) if messages else None
        shape.severity = g.value(node, SH.severity) or SH.Violation  # type: ignore[assignment]
        shape.deactivated = g.value(node, SH.deactivated) == Literal(True)
        shape.properties = [self._shape(p) for p in g.objects(node, SH.property)]
        shape.refs.extend(shape.properties)
        for param in COMPONENTS:
            for value in g.objects(node, param):
                shape.checks.append(self._component(shape, param, value))
        return shape

    def _component(self, shape: Shape, param: URIRef, arg: Node) -> Check:
        g = self._g
        component = _COMPONENT_IRI[param]

        def each(test: Callable[[Data, Node], bool]) -> Check:
            """A value-based component: one result per value node that fails ``test``."""
            def run(data: Data, focus: Node, values: list[Node]) -> Found:
                for v in values:
                    if not test(data, v):
                        yield shape.path_node, v, component
            return run

        if param == SH["class"]:
            return each(lambda data, v: data.is_instance(v, arg))
        if param == SH.datatype:
            return each(lambda data, v: _has_datatype(v, arg))
        if param == SH.nodeKind:
            kinds = _NODE_KINDS.get(arg)
            if kinds is None:
                raise Unsupported(f"sh:nodeKind {arg}")
            return each(lambda data, v: isinstance(v, kinds))
        if param in (SH.minCount, SH.maxCount):
            bound = int(arg)  # type: ignore[call-overload]
            too_few = param == SH.minCount

            def count(data: Data, focus: Node, values: list[Node]) -> Found:
                if (len(values) < bound) if too_few else (len(values) > bound):
                    yield shape.path_node, None, component
            return count
        if param in _RANGES:
            holds = _RANGES[param]
            return each(lambda data, v: _compare(v, arg, holds))
        if param in (SH.minLength, SH.maxLength):
            n = int(arg)  # type: ignore[call-overload]
            longest = param == SH.maxLength
            return each(lambda data, v: not isinstance(v, BNode)
                        and (len(str(v)) <= n if longest else len(str(v)) >= n))
        if param == SH.pattern:
            flags = g.value(shape.node, SH.flags)
            regex = re.compile(str(arg), _regex_flags(str(flags) if flags is not None else ""))
            return each(lambda data, v: not isinstance(v, BNode) and regex.search(str(v)) is not None)
        if param == SH.languageIn:
            ranges = [str(x).lower() for x in Collection(g, arg)]
            return each(lambda data, v: isinstance(v, Literal) and v.language is not None
                        and any(_lang_matches(v.language, r) for r in ranges))
        if param == SH.uniqueLang:
            if arg != Literal(True):
                return lambda data, focus, values: iter(())

            def unique(data: Data, focus: Node, values: list[Node]) -> Found:
                langs: dict[str, int] = {}
                for v in values:
                    if isinstance(v, Literal) and v.language:
                        langs[v.language.lower()] = langs.get(v.language.lower(), 0) + 1
                for _lang in (k for k, n in langs.items() if n > 1):
                    yield shape.path_node, None, component
            return unique
        if param in (SH.equals, SH.disjoint, SH.lessThan, SH.lessThanOrEquals):
            return self._pair(shape, param, arg, component)
        if param in (SH["not"], SH["and"], SH["or"], SH.xone, SH.node):
            return self._logical(shape, param, arg, component)
        if param == SH.hasValue:
            def has(data: Data, focus: Node, values: list[Node]) -> Found:
                if arg not in values:
                    yield shape.path_node, None, component
            return has
        if param == SH["in"]:
            allowed = set(Collection(g, arg))
            return each(lambda data, v: v in allowed)
        if param == SH.closed:
            if arg != Literal(True):
                return lambda data, focus, values: iter(())
            allowed_props: set[Node] = {p.path_node for p in shape.properties if isinstance(p.path_node, URIRef)}
            for ignored in g.objects(shape.node, SH.ignoredProperties):
                allowed_props.update(Collection(g, ignored))

            def closed(data: Data, focus: Node, values: list[Node]) -> Found:
                for v in values:
                    for p, objects in data.out.get(v, {}).items():
                        if p not in allowed_props:
                            for o in objects:
                                yield p, o, component
            return closed
        raise Unsupported(str(param))  # pragma: no cover: COMPONENTS and this list agree

    def _pair(self, shape: Shape, param: URIRef, other: Node, component: URIRef) -> Check:
        def run(data: Data, focus: Node, values: list[Node]) -> Found:
            others = data.objects(focus, other)
            if param == SH.equals:
                yield from ((shape.path_node, v, component) for v in values if v not in others)
                yield from ((shape.path_node, o, component) for o in others if o not in values)
            elif param == SH.disjoint:
                yield from ((shape.path_node, v, component) for v in values if v in others)
            else:
                strict = param == SH.lessThan
                for v in values:
                    for o in others:
                        if not _compare(v, o, _RANGES[SH.maxExclusive if strict else SH.maxInclusive]):
                            yield shape.path_node, v, component
        return run

    def _logical(self, shape: Shape, param: URIRef, arg: Node, component: URIRef) -> Check:
        g = self._g
        members = [self._shape(m) for m in Collection(g, arg)] if param in (SH["and"], SH["or"], SH.xone) \
            else [self._shape(arg)]
        shape.refs.extend(members)

        def test(data: Data, v: Node) -> bool:
            ok = [self.conforms(data, v, m) for m in members]
            if param == SH["not"]:
                return not ok[0]
            if param == SH["or"]:
                return any(ok)
            if param == SH.xone:
                return sum(ok) == 1
            return all(ok)  # sh:and, sh:node

        def run(data: Data, focus: Node, values: list[Node]) -> Found:
            for v in values:
                if not test(data, v):
                    yield shape.path_node, v, component
        return run

    def _refuse_cycles(self) -> None:
        """A shape that refers back to itself (through sh:node, sh:property, sh:or…) is
        recursive, which SHACL leaves undefined; such shapes are left to pyshacl."""
        state: dict[Node, int] = {}  # 1: being visited, 2: done

        def visit(shape: Shape) -> None:
            state[shape.node] = 1
            for ref in shape.refs:
                if state.get(ref.node) == 1:
                    raise Unsupported(f"recursive shapes ({shape.node} refers back to {ref.node})")
                if ref.node not in state:
                    visit(ref)
            state[shape.node] = 2

        for shape in list(self._shapes.values()):
            if shape.node not in state:
                visit(shape)

    # -- validating --

    def conforms(self, data: Data, focus: Node, shape: Shape) -> bool:
        return next(iter(self._check(data, focus, shape)), None) is None

    def validate(self, data: Data) -> list[Result]:
        """Every result of every targeted shape on ``data``."""
        out: list[Result] = []
        for shape in self.targeted:
            for focus in _focus_nodes(data, shape.targets):
                out.extend(self._check(data, focus, shape))
        return out

    def _check(self, data: Data, focus: Node, shape: Shape) -> Iterator[Result]:
        if shape.deactivated:
            return
        values = shape.values(data, focus)
        for check in shape.checks:
            for path, value, component in check(data, focus, values):
                yield Result(focus, path, value, shape.node, component,
                             shape.message or _default_message(component, path), shape.severity)
        for prop in shape.properties:
            for v in values:
                yield from self._check(data, v, prop)


_TARGET_NODE, _TARGET_CLASS, _TARGET_OBJECTS_OF, _TARGET_SUBJECTS_OF = (
    SH.targetNode, SH.targetClass, SH.targetObjectsOf, SH.targetSubjectsOf)
_LANG_STRING, _STRING = RDF.langString, XSD.string


def _focus_nodes(data: Data, targets: list[tuple[Node, Node]]) -> list[Node]:
    found: dict[Node, None] = {}
    for kind, value in targets:
        if kind == _TARGET_NODE:
            found[value] = None
        elif kind == _TARGET_CLASS:
            found.update(dict.fromkeys(data.instances(value)))
        elif kind == _TARGET_OBJECTS_OF:
            found.update(dict.fromkeys(o for s in data.subjects_of(value) for o in data.objects(s, value)))
        elif kind == _TARGET_SUBJECTS_OF:
            found.update(dict.fromkeys(data.subjects_of(value)))
    return list(found)


_COMPONENT_IRI = {param: SH[str(param).split("#")[1][0].upper() + str(param).split("#")[1][1:] + "ConstraintComponent"]
                  for param in COMPONENTS}
_NODE_KINDS: dict[Node, tuple[type, ...]] = {
    SH.IRI: (URIRef,), SH.BlankNode: (BNode,), SH.Literal: (Literal,), SH.BlankNodeOrIRI: (BNode, URIRef),
    SH.BlankNodeOrLiteral: (BNode, Literal), SH.IRIOrLiteral: (URIRef, Literal),
}
_RANGES: dict[Node, Callable[[object, object], bool]] = {
    SH.minInclusive: lambda v, bound: v >= bound,  # type: ignore[operator]
    SH.minExclusive: lambda v, bound: v > bound,  # type: ignore[operator]
    SH.maxInclusive: lambda v, bound: v <= bound,  # type: ignore[operator]
    SH.maxExclusive: lambda v, bound: v < bound,  # type: ignore[operator]
}


def _has_datatype(v: Node, datatype: Node) -> bool:
    """SHACL 4.1.2: a literal of that datatype whose lexical form is valid for it."""
    if not isinstance(v, Literal):
        return False
    actual = v.datatype or (_LANG_STRING if v.language else _STRING)
    return actual == datatype and not v.ill_typed


def _compare(v: Node, bound: Node, holds: Callable[[object, object], bool]) -> bool:
    """Compare two literals by value (SPARQL's ``<`` family); incomparable values fail."""
    if not isinstance(v, Literal) or not isinstance(bound, Literal) or v.ill_typed:
        return False
    a, b = v.toPython(), bound.toPython()
    if isinstance(a, Literal) or isinstance(b, Literal) or isinstance(a, bool) != isinstance(b, bool):
        return False  # no Python value: not a number, date or string rdflib knows
    try:
        return bool(holds(a, b))
    except TypeError:  # e.g. a date against a number
        return False


def _regex_flags(flags: str) -> int:
    out = 0
    for f, value in (("i", re.IGNORECASE), ("s", re.DOTALL), ("m", re.MULTILINE), ("x", re.VERBOSE)):
        if f in flags:
            out |= value
    return out


def _lang_matches(tag: str, lang_range: str) -> bool:
    """Basic language-range matching (RFC 4647, 3.3.1), as SPARQL's ``langMatches``."""
    tag = tag.lower()
    return lang_range == "*" or tag == lang_range or tag.startswith(lang_range + "-")


def _default_message(component: URIRef, path: Node | None) -> str:
    name = str(component).split("#")[1].removesuffix("ConstraintComponent")
    where = f" on {path}" if isinstance(path, URIRef) else ""
    return f"{name} constraint not met{where}"
