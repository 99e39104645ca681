"""Conversion between rdflib terms (reasoners, pyshacl) and pyoxigraph terms (parsing, store).

Also the types pyoxigraph's stubs leave wide: what ``Store.query`` returns for one query
form, and what ``ox.serialize`` returns when it writes to memory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any, Protocol, cast

import pyoxigraph as ox
from rdflib import BNode, Literal, URIRef
from rdflib.term import Node

XSD_STRING = "http://www.w3.org/2001/XMLSchema#string"

#: An RDF triple of rdflib terms, as the reasoners, pyshacl and the case mapping take them.
Triple = tuple[Node, Node, Node]

#: What ``Store.query(substitutions=...)`` binds variables to.
Substitutions = dict[ox.Variable, ox.NamedNode | ox.BlankNode | ox.Literal | ox.Triple]
QueryResult = ox.QuerySolutions | ox.QueryBoolean | ox.QueryTriples
_Subject = ox.NamedNode | ox.BlankNode


class Selects(Protocol):
    """Something SPARQL SELECTs run on: a site's store, a case's graphs, a case just reasoned."""

    def select(self, query: str, substitutions: Substitutions | None = None) -> ox.QuerySolutions: ...


def to_ox(term: Node) -> ox.NamedNode | ox.BlankNode | ox.Literal:
    """The Oxigraph term of an rdflib term, built once for the IRIs and literals that recur
    (the ontology's terms, the usual scores and dates): each case converts hundreds."""
    if isinstance(term, URIRef):
        return _named(str(term))
    if isinstance(term, Literal):
        datatype = term.datatype
        return _literal(str(term), term.language, str(datatype) if datatype is not None else None)
    if isinstance(term, BNode):
        return ox.BlankNode(_safe_bnode_id(str(term)))
    raise TypeError(f"not an RDF term: {term!r}")


@lru_cache(maxsize=8192)
def _named(iri: str) -> ox.NamedNode:
    return ox.NamedNode(iri)


@lru_cache(maxsize=8192)
def _literal(text: str, language: str | None, datatype: str | None) -> ox.Literal:
    if language:
        return ox.Literal(text, language=language)
    if datatype is not None:
        return ox.Literal(text, datatype=_named(datatype))
    return ox.Literal(text)


def from_ox(term: ox.NamedNode | ox.BlankNode | ox.Literal | ox.Triple | ox.DefaultGraph) -> URIRef | BNode | Literal:
    if isinstance(term, ox.NamedNode):
        return URIRef(term.value)
    if isinstance(term, ox.BlankNode):
        return BNode(term.value)
    if isinstance(term, ox.Literal):
        if term.language:
            return Literal(term.value, lang=term.language)
        datatype = term.datatype.value
        if datatype == XSD_STRING:
            return Literal(term.value)
        return Literal(term.value, datatype=URIRef(datatype))
    raise TypeError(f"unsupported RDF term: {term!r}")


def triple_to_ox(triple: Triple) -> ox.Triple:
    # RDF puts IRIs or blank nodes in subject position and IRIs in predicate position;
    # the casts say so to the type checker, and Oxigraph still raises TypeError on anything else.
    s, p, o = triple
    return ox.Triple(cast(_Subject, to_ox(s)), cast(ox.NamedNode, to_ox(p)), to_ox(o))


def triples_to_ox(triples: Iterable[Triple],
                  graph: ox.NamedNode | ox.BlankNode | ox.DefaultGraph) -> Iterator[ox.Quad]:
    """rdflib triples as Oxigraph quads in ``graph``."""
    if isinstance(graph, ox.DefaultGraph):
        # Without a graph argument: pyoxigraph tries each kind of graph name in turn, and a
        # default graph, tried last, made a quad cost twice as much to build.
        for s, p, o in triples:
            yield ox.Quad(cast(_Subject, to_ox(s)), cast(ox.NamedNode, to_ox(p)), to_ox(o))
        return
    for s, p, o in triples:
        yield ox.Quad(cast(_Subject, to_ox(s)), cast(ox.NamedNode, to_ox(p)), to_ox(o), graph)


def triple_from_ox(triple: ox.Triple | ox.Quad) -> Triple:
    """An Oxigraph triple (or a quad's triple) as rdflib terms."""
    return (from_ox(triple.subject), from_ox(triple.predicate), from_ox(triple.object))


def triples_from_ox(triples: Iterable[ox.Triple | ox.Quad]) -> list[Triple]:
    return [triple_from_ox(t) for t in triples]


def solutions(result: QueryResult) -> ox.QuerySolutions:
    """The result of a query known to be a SELECT."""
    return cast(ox.QuerySolutions, result)


def constructed(result: QueryResult) -> ox.QueryTriples:
    """The result of a query known to be a CONSTRUCT."""
    return cast(ox.QueryTriples, result)


def serialized(triples: Iterable[ox.Triple], format: ox.RdfFormat, prefixes: dict[str, str] | None = None) -> bytes:
    """``ox.serialize`` into memory, which returns bytes (None is for when it is given an output)."""
    return cast(bytes, ox.serialize(triples, format=format, prefixes=prefixes))


_BNODE_ID = re.compile(r"[A-Za-z0-9_-]+\Z")


def _safe_bnode_id(value: str) -> str:
    # Oxigraph blank node ids must be letters, digits, "_" or "-"; rdflib's already are.
    if _BNODE_ID.match(value):
        return value
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in value) or "b"


class GraphView:
    """SELECTs over some graphs of an Oxigraph store: named ones, or its default graph."""

    def __init__(self, store: ox.Store, graphs: Sequence[ox.NamedNode] | None = None) -> None:
        self.store = store
        self.graphs = list(graphs) if graphs is not None else None

    @classmethod
    def of(cls, quads: Iterable[ox.Quad]) -> GraphView:
        """Quads in a store of their own, in memory, as its default graph (a case just reasoned)."""
        store = ox.Store()
        store.extend(quads)
        return cls(store)

    def select(self, query: str, substitutions: Substitutions | None = None) -> ox.QuerySolutions:
        options: dict[str, Any] = {"substitutions": substitutions or {}}
        if self.graphs is not None:
            options["default_graph"] = self.graphs
        return solutions(self.store.query(query, **options))
