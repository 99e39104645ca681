"""The case contract, read from the case shapes (``shapes/case.ttl``) at start-up.

The shapes are the one source of the contract: each property shape with an ``sh:name`` is
a JSON field. From it come the JSON ↔ RDF mapping (:mod:`kgservice.core.cases`), the OpenAPI
case schema (:mod:`kgservice.http.openapi`) and the vocabulary's groups, so that a curator who
adds a field or changes a range changes one Turtle file. What a field is follows from its
constraints:

- ``sh:datatype xsd:date``: a ``date``; ``xsd:decimal`` (alone or in an ``sh:or`` of
  datatypes): a ``number``; any other datatype: a ``scalar`` (integer, boolean, string);
- ``sh:class C``: a ``code`` (``sh:maxCount 1``) or ``codes``, the members of ``C``;
- a node (``sh:nodeKind``) whose own shape (``sh:targetObjectsOf`` the path) has an
  ``sh:class C``: ``instances``, the case's own instance of a coded subclass of ``C``;
- a node whose own shape has named property shapes: an ``object`` (``sh:maxCount 1``) or
  ``objects``, typed by that shape's ``rdf:type`` ``sh:in`` value.

``sh:minCount`` ≥ 1 makes a field required (and a list's least length), ``sh:minInclusive``
and ``sh:maxInclusive`` its range, ``sh:defaultValue`` what it reads as when absent,
``sh:description`` its description, and ``sh:order`` its place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rdflib import RDF, XSD, Graph, Literal, URIRef
from rdflib.collection import Collection
from rdflib.namespace import SH
from rdflib.term import Node

from ..errors import OntologyError
from .ontology import ESI

#: The kinds of field that are JSON arrays.
LIST_KINDS = ("codes", "instances", "objects")
_NODE_KINDS = (SH.BlankNodeOrIRI, SH.IRI, SH.BlankNode)


@dataclass(frozen=True)
class Spec:
    """How one JSON field maps to RDF, and what it accepts.

    ``kind``: ``scalar`` (a typed literal), ``date``, ``number``, ``code`` (a coded
    individual), ``codes`` (a list of them), ``instances`` (a list of codes, each becoming
    the case's own instance of the coded class), ``object`` / ``objects`` (nested nodes of
    ``node_type`` with ``fields`` of their own).
    """

    prop: URIRef
    kind: str
    node_type: URIRef | None = None
    fields: dict[str, Spec] = field(default_factory=dict)
    required: bool = False
    datatype: URIRef | None = None
    minimum: Any = None
    maximum: Any = None
    codes_of: URIRef | None = None
    default: Any = None
    description: str | None = None

    @property
    def is_list(self) -> bool:
        return self.kind in LIST_KINDS


@dataclass(frozen=True)
class Contract:
    """The case's fields, by JSON name, in their order; nested fields under their object."""

    fields: dict[str, Spec]
    case_type: URIRef

    @classmethod
    def from_shapes(cls, shapes: Graph, case_type: URIRef = ESI.PatientCase) -> Contract:
        roots = list(shapes.subjects(SH.targetClass, case_type))
        if len(roots) != 1:
            raise OntologyError(f"the case shapes need exactly one shape targeting {case_type}, not {len(roots)}")
        return cls(_Reader(shapes).fields(roots[0]), case_type)

    def field_name(self, prop: Node) -> str | None:
        """The JSON name of a property, searched level by level (the case's fields first)."""
        level = [self.fields]
        while level:
            for specs in level:
                for name, spec in specs.items():
                    if spec.prop == prop:
                        return name
            level = [spec.fields for specs in level for spec in specs.values() if spec.fields]
        return None

    def coded_fields(self) -> dict[str, URIRef]:
        """Every field whose values are codes, by its dotted path (``injection.approach``), with
        the class whose members are the codes."""
        out: dict[str, URIRef] = {}
        todo = [("", self.fields)]
        while todo:
            prefix, specs = todo.pop(0)
            for name, spec in specs.items():
                if spec.codes_of is not None:
                    out[prefix + name] = spec.codes_of
                if spec.fields:
                    todo.append((f"{prefix}{name}.", spec.fields))
        return out


class _Reader:
    """Reads the fields of node shapes; shapes are RDF, so every lookup is a graph lookup."""

    def __init__(self, shapes: Graph) -> None:
        self.g = shapes

    def fields(self, node_shape: Node) -> dict[str, Spec]:
        named = [(p, self.g.value(p, SH.name)) for p in self.g.objects(node_shape, SH.property)]
        ordered = sorted(((p, str(n)) for p, n in named if n is not None),
                         key=lambda pn: (_number(self.g.value(pn[0], SH.order), 1e9), pn[1]))
        return {name: self.spec(shape) for shape, name in ordered}

    def spec(self, shape: Node) -> Spec:
        g = self.g
        prop = g.value(shape, SH.path)
        if not isinstance(prop, URIRef):
            raise OntologyError(f"the property shape of field {g.value(shape, SH.name)} needs an IRI as sh:path")
        single = _number(g.value(shape, SH.maxCount), 0) == 1
        common: dict[str, Any] = {
            "required": _number(g.value(shape, SH.minCount), 0) >= 1,
            "minimum": _value(g.value(shape, SH.minInclusive)),
            "maximum": _value(g.value(shape, SH.maxInclusive)),
            "default": _value(g.value(shape, SH.defaultValue)),
            "description": _text(g.value(shape, SH.description)),
        }
        datatypes = self.datatypes(shape)
        if datatypes:
            kind = "date" if XSD.date in datatypes else "number" if XSD.decimal in datatypes else "scalar"
            return Spec(prop, kind, datatype=datatypes[0], **common)
        if isinstance(cls := g.value(shape, SH["class"]), URIRef):
            return Spec(prop, "code" if single else "codes", codes_of=cls, **common)
        if g.value(shape, SH.nodeKind) in _NODE_KINDS:
            parts = list(g.subjects(SH.targetObjectsOf, prop))
            coded = [c for part in parts if isinstance(c := g.value(part, SH["class"]), URIRef)]
            if coded:
                return Spec(prop, "instances", codes_of=coded[0], **common)
            for part in parts:
                if fields := self.fields(part):
                    return Spec(prop, "object" if single else "objects", self.node_type(part), fields, **common)
        raise OntologyError(f"field {g.value(shape, SH.name)}: its shape says neither a datatype, a class, "
                            "nor a node shape with fields of its own")

    def datatypes(self, shape: Node) -> list[URIRef]:
        found = [d for d in self.g.objects(shape, SH.datatype) if isinstance(d, URIRef)]
        for alternatives in self.g.objects(shape, SH["or"]):
            for member in Collection(self.g, alternatives):
                found.extend(d for d in self.g.objects(member, SH.datatype) if isinstance(d, URIRef))
        return found

    def node_type(self, node_shape: Node) -> URIRef | None:
        for prop_shape in self.g.objects(node_shape, SH.property):
            if self.g.value(prop_shape, SH.path) == RDF.type and (allowed := self.g.value(prop_shape, SH["in"])):
                members = list(Collection(self.g, allowed))
                if len(members) == 1 and isinstance(members[0], URIRef):
                    return members[0]
        return None


def _number(node: Node | None, default: float) -> float:
    return float(node.toPython()) if isinstance(node, Literal) else default


def _value(node: Node | None) -> Any:
    return node.toPython() if isinstance(node, Literal) else None


def _text(node: Node | None) -> str | None:
    return str(node) if node is not None else None
