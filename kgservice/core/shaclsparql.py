"""SHACL-SPARQL constraints (``sh:sparql``) run on Oxigraph, with SHACL's semantics.

``$this`` is pre-bound to each focus node of the shape's targets, one violation per solution;
where that gives the same solutions, a constraint runs once for all its focus nodes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pyoxigraph as ox
from rdflib import RDFS, Graph, Literal, URIRef
from rdflib.namespace import SH
from rdflib.term import Node

from ..errors import OntologyError
from .terms import solutions, to_ox


class SparqlConstraints:
    """The ``sh:sparql`` constraints of a shapes graph, run with Oxigraph.

    ``at_once``: run each constraint once for all its focus nodes where that gives the same
    solutions (see :func:`_all_at_once`); False runs it once per focus node, as SHACL words it.
    """

    def __init__(self, shapes: Graph, at_once: bool = True) -> None:
        self._checks: list[tuple[str, list[tuple[URIRef, Node]], str, str, str | None, str | None]] = []
        for shape, constraint in shapes.subject_objects(SH.sparql):
            select = shapes.value(constraint, SH.select)
            if select is None:
                raise OntologyError(f"SPARQL constraint {constraint} has no sh:select")
            prefixes = _prefix_block(shapes, constraint)
            targets: list[tuple[URIRef, Node]] = [
                (kind, value) for kind in _TARGET_KINDS for value in shapes.objects(shape, kind)
            ]
            for target in shapes.objects(shape, SH.target):  # SHACL-AF SPARQL-based targets
                if (target_select := shapes.value(target, SH.select)) is not None:
                    targets.append((SH.target, Literal(_prefix_block(shapes, target) + str(target_select))))
            message = str(shapes.value(constraint, SH.message) or shapes.value(shape, SH.message) or
                          "constraint not met")
            query = prefixes + str(select)
            self._checks.append((query, targets, message, str(shape), _iri(constraint),
                                 _all_at_once(query, targets) if at_once else None))

    @property
    def all_at_once(self) -> bool:
        """Whether every constraint runs once for all its focus nodes."""
        return all(check[5] is not None for check in self._checks)

    def results(self, store: ox.Store) -> Iterator[tuple[ox.NamedNode | ox.BlankNode, ox.QuerySolution, str, str]]:
        """Every solution of every constraint: ``(focus node, solution, message, shape IRI)``."""
        this = ox.Variable("this")
        for query, targets, message, shape, _constraint, at_once in self._checks:
            if at_once is not None:
                for row in solutions(store.query(at_once)):
                    yield row["this"], row, message, shape
                continue
            for focus in _focus_nodes(store, targets):
                for row in solutions(store.query(query, substitutions={this: focus})):
                    yield focus, row, message, shape


def _all_at_once(query: str, targets: list[tuple[URIRef, Node]]) -> str | None:
    """The constraint run once for all its focus nodes, or None where that could differ.

    SHACL-SPARQL pre-binds ``$this`` to each focus node in turn. Opening the WHERE clause
    with a subquery that selects the focus nodes binds ``$this`` for the whole group
    instead: the same solutions when ``$this`` is projected and the query has no nested
    SELECT (whose scope a pre-bound ``$this`` would reach but a joined one does not).
    One query in place of one per focus node: 0.1 ms a case in place of 0.5 ms, measured.
    """
    selects = re.findall(r"\bSELECT\b", query, re.IGNORECASE)
    projection = re.search(r"\bSELECT\b(.*?)\bWHERE\s*\{", query, re.IGNORECASE | re.DOTALL)
    if len(selects) != 1 or projection is None or not targets:
        return None
    if not re.search(r"[?$]this\b|\*", projection.group(1)):
        return None
    patterns = []
    for kind, value in targets:
        if kind == SH.targetClass:
            patterns.append(f"$this a/<{RDFS.subClassOf}>* <{value}>")
        elif kind == SH.targetObjectsOf:
            patterns.append(f"[] <{value}> $this")
        elif kind == SH.targetSubjectsOf:
            patterns.append(f"$this <{value}> []")
        elif kind == SH.targetNode and isinstance(value, URIRef):
            patterns.append(f"VALUES $this {{ <{value}> }}")
        else:  # a literal target node, a SPARQL-based target
            return None
    focus = " UNION ".join(f"{{ {p} }}" for p in patterns)
    return f"{query[:projection.end()]} {{ SELECT DISTINCT $this WHERE {{ {focus} }} }} {query[projection.end():]}"


_TARGET_KINDS = (SH.targetClass, SH.targetObjectsOf, SH.targetSubjectsOf, SH.targetNode)


_TARGET_QUERIES = {
    SH.targetClass: "SELECT DISTINCT ?f WHERE { ?f a/<http://www.w3.org/2000/01/rdf-schema#subClassOf>* $t }",
    SH.targetObjectsOf: "SELECT DISTINCT ?f WHERE { ?s $t ?f }",
    SH.targetSubjectsOf: "SELECT DISTINCT ?f WHERE { ?f $t ?o }",
}


def _focus_nodes(store: ox.Store, targets: list[tuple[URIRef, Node]]) -> list[ox.NamedNode | ox.BlankNode]:
    found: dict[str, ox.NamedNode | ox.BlankNode] = {}
    for kind, value in targets:
        if kind == SH.targetNode:
            found[str(value)] = to_ox(value)  # type: ignore[assignment]
            continue
        if kind == SH.target:  # a SPARQL-based target: the query selects ?this
            for row in solutions(store.query(str(value))):
                found[str(row["this"])] = row["this"]
            continue
        query = _TARGET_QUERIES[kind].replace("$t", f"<{value}>")
        for row in solutions(store.query(query)):
            found[str(row["f"])] = row["f"]
    return list(found.values())


def value_of(row: ox.QuerySolution, name: str) -> ox.NamedNode | ox.BlankNode | ox.Literal | None:
    try:
        return row[name]  # type: ignore[no-any-return]
    except KeyError:  # the query does not project it
        return None


def _iri(node: Node) -> str | None:
    return str(node) if isinstance(node, URIRef) else None


def _prefix_block(shapes: Graph, constraint: Node) -> str:
    lines = set()
    for decl_set in shapes.objects(constraint, SH.prefixes):
        for decl in shapes.objects(decl_set, SH.declare):
            lines.add(f"PREFIX {shapes.value(decl, SH.prefix)}: <{shapes.value(decl, SH.namespace)}>")
    return "\n".join(sorted(lines)) + "\n"
