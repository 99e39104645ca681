"""Conversion between rdflib terms (reasoners, pyshacl) and pyoxigraph terms (parsing, store)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyoxigraph as ox
from rdflib import BNode, Literal, URIRef
from rdflib.term import Node

XSD_STRING = "http://www.w3.org/2001/XMLSchema#string"
RDF_LANG_STRING = "http://www.w3.org/1999/02/22-rdf-syntax-ns#langString"


def to_ox(term: Node) -> ox.NamedNode | ox.BlankNode | ox.Literal:
    if isinstance(term, URIRef):
        return ox.NamedNode(str(term))
    if isinstance(term, BNode):
        return ox.BlankNode(_safe_bnode_id(str(term)))
    if isinstance(term, Literal):
        if term.language:
            return ox.Literal(str(term), language=term.language)
        if term.datatype is not None:
            return ox.Literal(str(term), datatype=ox.NamedNode(str(term.datatype)))
        return ox.Literal(str(term))
    raise TypeError(f"not an RDF term: {term!r}")


def from_ox(term: ox.NamedNode | ox.BlankNode | ox.Literal | ox.Triple | ox.DefaultGraph) -> Node:
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


def triples_to_ox(triples: Iterable[tuple[Node, Node, Node]], graph: ox.NamedNode) -> Iterator[ox.Quad]:
    for s, p, o in triples:
        yield ox.Quad(to_ox(s), to_ox(p), to_ox(o), graph)  # type: ignore[arg-type]


def _safe_bnode_id(value: str) -> str:
    # Oxigraph blank node ids must be ASCII letters, digits, '_' or '-'.
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in value) or "b"
