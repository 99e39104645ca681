"""Media types the service reads and writes, and the Oxigraph format of each RDF one."""

from __future__ import annotations

import pyoxigraph as ox

JSON = "application/json"
PROBLEM = "application/problem+json"
TURTLE = "text/turtle"
JSONLD = "application/ld+json"
NTRIPLES = "application/n-triples"

#: The RDF serializations a case, a stored graph or a query result may be sent in; Turtle first.
RDF_FORMATS = {
    TURTLE: ox.RdfFormat.TURTLE,
    JSONLD: ox.RdfFormat.JSON_LD,
    NTRIPLES: ox.RdfFormat.N_TRIPLES,
}
GRAPH_FORMATS = list(RDF_FORMATS)
RDFXML = "application/rdf+xml"
#: What the service writes RDF in: the above, and RDF/XML (never read: its parsers can fetch and expand entities).
RDF_OUT = {**RDF_FORMATS, RDFXML: ox.RdfFormat.RDF_XML}


def essence(content_type: str | None) -> str:
    """The media type without parameters, lower-cased.

    >>> essence("Application/JSON; charset=utf-8")
    'application/json'
    """
    return (content_type or "").split(";", 1)[0].strip().lower()
