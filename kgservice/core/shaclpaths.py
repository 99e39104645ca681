"""The data graph of the built-in SHACL engine, indexed both ways, and SHACL paths over it (SHACL 2.3.1).

See :mod:`.shacl` for the shapes compiled against them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from rdflib import RDF, RDFS, Graph, URIRef
from rdflib.collection import Collection
from rdflib.namespace import SH
from rdflib.term import Node

from .terms import Triple

# rdflib builds a new term at every attribute access of a namespace: the hot paths use these.
_TYPE, _SUBCLASS_OF = RDF.type, RDFS.subClassOf


class Unsupported(Exception):
    """The shapes graph uses a SHACL feature this engine does not implement."""


class Data:
    """A data graph indexed both ways, built from triples in one pass."""

    def __init__(self, triples: Iterable[Triple]) -> None:
        self.out: dict[Node, dict[Node, list[Node]]] = {}
        self.into: dict[Node, dict[Node, list[Node]]] = {}
        seen: set[Triple] = set()
        for t in triples:
            if t in seen:
                continue
            seen.add(t)
            s, p, o = t
            self.out.setdefault(s, {}).setdefault(p, []).append(o)
            self.into.setdefault(o, {}).setdefault(p, []).append(s)

    def objects(self, s: Node, p: Node) -> list[Node]:
        return self.out.get(s, {}).get(p, [])

    def subjects(self, p: Node, o: Node) -> list[Node]:
        return self.into.get(o, {}).get(p, [])

    def subjects_of(self, p: Node) -> list[Node]:
        return [s for s, props in self.out.items() if p in props]

    def is_instance(self, node: Node, cls: Node) -> bool:
        """SHACL instance (SHACL 1.4): a type of ``node`` is ``cls`` or one of its subclasses."""
        todo = list(self.objects(node, _TYPE))
        seen: set[Node] = set()
        while todo:
            c = todo.pop()
            if c == cls:
                return True
            if c not in seen:
                seen.add(c)
                todo.extend(self.objects(c, _SUBCLASS_OF))
        return False

    def instances(self, cls: Node) -> list[Node]:
        classes, todo = {cls}, [cls]
        while todo:
            for sub in self.subjects(_SUBCLASS_OF, todo.pop()):
                if sub not in classes:
                    classes.add(sub)
                    todo.append(sub)
        found: dict[Node, None] = {}
        for c in classes:
            found.update(dict.fromkeys(self.subjects(_TYPE, c)))
        return list(found)


Path = Callable[[Data, Node], list[Node]]


def compile_path(shapes: Graph, node: Node) -> Path:
    if isinstance(node, URIRef):
        return lambda data, focus: data.objects(focus, node)
    if (inverse := shapes.value(node, SH.inversePath)) is not None:
        pred = inverse
        if not isinstance(pred, URIRef):
            raise Unsupported("sh:inversePath of a complex path")
        return lambda data, focus: data.subjects(pred, focus)
    if (alternatives := shapes.value(node, SH.alternativePath)) is not None:
        parts = [compile_path(shapes, p) for p in Collection(shapes, alternatives)]
        return lambda data, focus: distinct(v for part in parts for v in part(data, focus))
    for kind, zero, many in ((SH.zeroOrMorePath, True, True), (SH.oneOrMorePath, False, True),
                             (SH.zeroOrOnePath, True, False)):
        if (inner := shapes.value(node, kind)) is not None:
            return _repeat(compile_path(shapes, inner), zero, many)
    if shapes.value(node, RDF.first) is not None:  # a sequence path
        steps = [compile_path(shapes, p) for p in Collection(shapes, node)]

        def sequence(data: Data, focus: Node) -> list[Node]:
            current = [focus]
            for step in steps:
                current = distinct(v for n in current for v in step(data, n))
            return current

        return sequence
    raise Unsupported(f"path {node} is not a SHACL path")


def _repeat(step: Path, zero: bool, many: bool) -> Path:
    def walk(data: Data, focus: Node) -> list[Node]:
        found: dict[Node, None] = {focus: None} if zero else {}
        frontier = [focus]
        while frontier:
            nxt = []
            for n in frontier:
                for v in step(data, n):
                    if v not in found:
                        found[v] = None
                        nxt.append(v)
            frontier = nxt if many else []
        return list(found)

    return walk


def distinct(values: Iterable[Node]) -> list[Node]:
    return list(dict.fromkeys(values))
