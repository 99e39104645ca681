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


#: Terms converted so far, each way (bounded: a case's own IRIs never come back once it is stored).
_TO_OX: dict[Node, ox.NamedNode | ox.BlankNode | ox.Literal] = {}
_FROM_OX: dict[ox.NamedNode | ox.BlankNode | ox.Literal, URIRef | BNode | Literal] = {}
_CACHED = 50_000


def to_ox(term: Node) -> ox.NamedNode | ox.BlankNode | ox.Literal:
    """The Oxigraph term of an rdflib term, built once for each term that recurs (the ontology's
    terms, the usual scores and dates, a case's nodes from stage to stage): each case converts
    hundreds, and one built from a term brought back by :func:`from_ox` is that very term."""
    found = _TO_OX.get(term)
    if found is not None:
        return found
    if isinstance(term, URIRef):
        found = _named(str(term))
    elif isinstance(term, Literal):
        datatype = term.datatype
        found = _literal(str(term), term.language, str(datatype) if datatype is not None else None)
    elif isinstance(term, BNode):
        found = ox.BlankNode(_safe_bnode_id(str(term)))
    else:
        raise TypeError(f"not an RDF term: {term!r}")
    if len(_TO_OX) >= _CACHED:
        _TO_OX.clear()
    _TO_OX[term] = found
    return found


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
    """The rdflib term of an Oxigraph term, built once for each term that recurs (rdflib checks
    every IRI and parses every literal it builds: the rules' numbers and statements repeat)."""
    found = _FROM_OX.get(term)  # type: ignore[arg-type]
    if found is not None:
        return found
    found = _build_from_ox(term)
    if len(_FROM_OX) >= _CACHED:
        _FROM_OX.clear()
    _FROM_OX[term] = found  # type: ignore[index]
    if len(_TO_OX) < _CACHED and (not isinstance(found, Literal) or _converts_back(found, term)):
        _TO_OX.setdefault(found, term)  # type: ignore[arg-type]
    return found


def _converts_back(literal: Literal, term: object) -> bool:
    """Whether ``literal`` converts back to ``term`` exactly (rdflib may normalise a lexical form)."""
    datatype = literal.datatype
    return term == _literal(str(literal), literal.language, str(datatype) if datatype is not None else None)


def _build_from_ox(term: ox.NamedNode | ox.BlankNode | ox.Literal | ox.Triple | ox.DefaultGraph
                   ) -> URIRef | BNode | Literal:
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
