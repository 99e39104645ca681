"""SHACL validation of cases (and of the ontology): returns a value, never raises on bad data."""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyoxigraph as ox
from pyshacl import validate as shacl_validate
from rdflib import OWL, RDF, RDFS, SKOS, Graph, Literal, URIRef
from rdflib.namespace import SH
from rdflib.term import Node

from ..config import SHACL_ENGINES
from ..errors import OntologyError, Violation
from . import shacl
from .cases import CaseGraph
from .ontology import Ontology
from .shaclsparql import SparqlConstraints, value_of
from .terms import Triple, from_ox, triples_to_ox

CASE_SHAPES = "case.ttl"
ONTOLOGY_SHAPES = "ontology-qc.ttl"

log = logging.getLogger(__name__)
_TYPE, _VIOLATION = RDF.type, SH.Violation  # rdflib builds a term per attribute access


@dataclass
class Report:
    """What validation found: ``conforms`` is true when ``violations`` is empty."""

    violations: list[Violation] = field(default_factory=list)

    @property
    def conforms(self) -> bool:
        return not self.violations


def load_shapes(path: Path) -> Graph:
    try:
        return Graph().parse(path, format="turtle")
    except Exception as exc:  # rdflib raises many parser exception types
        raise OntologyError(f"shapes file {path} cannot be read: {exc}") from exc


class CaseValidator:
    """Validates case graphs against ``shapes/case.ttl``.

    The data graph is the case plus the ontology's type, subclass and notation triples
    (a few hundred), so that ``sh:class`` sees the hierarchy without copying the whole
    ontology into every validation.

    SHACL Core is checked by one of two engines (``engine``): ``builtin``, the shapes
    compiled once by :mod:`kgservice.core.shacl` (0.3 ms a case), or ``pyshacl``, the
    reference (4 ms a case). Shapes that use a feature the built-in engine lacks are
    checked by pyshacl, with a warning in the log. The shapes' SHACL-SPARQL constraints
    (``sh:sparql``) are run here on Oxigraph, with the same semantics (``$this`` pre-bound
    to each focus node of the shape's targets, one violation per solution), because pyshacl
    parses such a query again for every focus node: 37 ms each, measured, against 0.1 ms.
    """

    def __init__(self, ontology: Ontology, shapes: Graph, engine: str = "builtin", sparql_at_once: bool = True) -> None:
        if engine not in SHACL_ENGINES:
            raise ValueError(f"unknown SHACL engine {engine!r}; choose one of {', '.join(SHACL_ENGINES)}")
        self.ontology = ontology
        self.shapes = shapes
        self._core = Graph()
        for t in shapes:
            if t[1] != SH.sparql:
                self._core.add(t)
        self._compiled: shacl.Shapes | None = None
        if engine == "builtin":
            try:
                self._compiled = shacl.Shapes(self._core)
            except shacl.Unsupported as exc:
                log.warning("case shapes use %s, which the built-in SHACL engine lacks: using pyshacl", exc)
        self.engine = "builtin" if self._compiled is not None else "pyshacl"
        self._sparql = SparqlConstraints(shapes, at_once=sparql_at_once)
        self._support = _type_support(ontology.graph)

    @property
    def sparql_at_once(self) -> bool:
        """Whether every SHACL-SPARQL constraint runs once for all its focus nodes."""
        return self._sparql.all_at_once

    def support_for(self, case: Iterable[Triple]) -> set[Triple]:
        """The ontology triples ``sh:class`` needs for this case: the types of the terms it
        uses and their superclass chains (a few dozen triples, not the whole ontology)."""
        needed: set[Triple] = set()
        for _, p, o in case:
            if isinstance(o, URIRef) and (p == _TYPE or o in self._support):
                needed.update(self._support.get(o, ()))
        return needed

    def validate(self, case: CaseGraph) -> Report:
        return self.validate_many([case])[0]

    def validate_many(self, cases: Sequence[CaseGraph]) -> list[Report]:
        """Validate cases together, in one pyshacl run (the per-run cost is shared), and
        report each case's violations on its own."""
        support: set[Triple] = set()
        for case in cases:
            support |= self.support_for(case.triples)
        owner = _Owners(cases)
        found = [list(case.problems) for case in cases]
        for focus, path, value, shape, message in self._core_results(support, cases):
            index = owner.of(focus)
            if index is None:
                # A term of the ontology checked through sh:node (e.g. a code without a notation):
                # the case's own node or field that points at it reports the violation.
                continue
            case = cases[index]
            where = case.path_of(focus, path, value)
            found[index].append(Violation(where, message, _named_shape(self.shapes, shape), _shown(case, where, value)))
        quads = [q for case in cases for q in case.quads]
        store = ox.Store()
        store.extend(quads)
        for focus_ox, row, message, shape_iri in self._sparql.results(store, quads):
            focus = from_ox(focus_ox)
            index = owner.of(focus)
            if index is None:
                continue
            case = cases[index]
            ox_path, ox_value = value_of(row, "path"), value_of(row, "value")
            rdf_value = from_ox(ox_value) if ox_value is not None else None
            where = case.path_of(focus, from_ox(ox_path) if ox_path is not None else None, rdf_value)
            found[index].append(Violation(where, message, shape_iri, _shown(case, where, rdf_value)))
        return [Report(_unique(f)) for f in found]


    def _core_results(self, support: set[Triple], cases: Sequence[CaseGraph]
                      ) -> Iterator[tuple[Node, Node | None, Node | None, Node | None, str]]:
        """``(focus, path, value, source shape, message)`` of each SHACL Core violation."""
        if self._compiled is not None:
            data = shacl.Data(itertools.chain(support, *(case.triples for case in cases)))
            for r in self._compiled.validate(data):
                if r.severity == _VIOLATION:
                    yield r.focus, r.path, r.value, r.shape, r.message
            return
        graph = Graph()
        for t in support:
            graph.add(t)
        for case in cases:
            graph += case.graph
        _conforms, results, _text = shacl_validate(
            graph, shacl_graph=self._core, inference="none", inplace=True, advanced=True, allow_warnings=True
        )
        yield from _results(results)  # type: ignore[arg-type]


class _Owners:
    """Which case of a batch a node belongs to: its own nodes, or IRIs named under it."""

    def __init__(self, cases: Sequence[CaseGraph]) -> None:
        self._nodes: dict[Node, int] = {}
        self._iris: dict[str, int] = {}
        for index, case in enumerate(cases):
            self._iris[str(case.iri)] = index
            for node in case.node_paths:
                self._nodes.setdefault(node, index)

    def of(self, node: Node) -> int | None:
        if node in self._nodes:
            return self._nodes[node]
        text = str(node).split("#", 1)[0]
        while "/" in text:
            if text in self._iris:
                return self._iris[text]
            text = text.rsplit("/", 1)[0]
        return None


def _type_support(ontology: Graph) -> dict[URIRef, tuple[Triple, ...]]:
    """For every term: its ``rdf:type`` triples and the ``rdfs:subClassOf`` chains above it
    and above its types."""

    def chain(cls: URIRef, seen: set[URIRef]) -> list[Triple]:
        out: list[Triple] = []
        for sup in ontology.objects(cls, RDFS.subClassOf):
            if isinstance(sup, URIRef) and sup not in seen:
                seen.add(sup)
                out.append((cls, RDFS.subClassOf, sup))
                out.extend(chain(sup, seen))
        return out

    support: dict[URIRef, tuple[Triple, ...]] = {}
    terms = {s for s in ontology.subjects() if isinstance(s, URIRef)}
    for term in terms:
        found = chain(term, {term})
        found.extend((term, SKOS.notation, n) for n in ontology.objects(term, SKOS.notation))
        for cls in ontology.objects(term, RDF.type):
            if isinstance(cls, URIRef) and not cls.startswith(str(OWL)):
                found.append((term, RDF.type, cls))
                found.extend(chain(cls, {cls}))
        if found:
            support[term] = tuple(found)
    return support


def _results(results: Graph) -> Iterator[tuple[Node, Node | None, Node | None, Node | None, str]]:
    """``(focus, path, value, source shape, message)`` of each top-level violation.

    Nested ``sh:detail`` results restate their parent's violation and are left out."""
    for result in results.objects(None, SH.result):
        if results.value(result, SH.resultSeverity) != SH.Violation:
            continue
        focus = results.value(result, SH.focusNode)
        if focus is None:
            continue
        message = results.value(result, SH.resultMessage) or "constraint not met"
        yield (focus, results.value(result, SH.resultPath), results.value(result, SH.value),
               results.value(result, SH.sourceShape), str(message))


def _shown(case: CaseGraph, path: str, value: Node | None) -> Any:
    """The offending value as the client wrote it (JSON), or the RDF literal's text."""
    if path in case.json_values:
        return case.json_values[path]
    return str(value) if isinstance(value, Literal) else None


def _named_shape(shapes: Graph, shape: Node | None) -> str | None:
    """The IRI of a shape, or of the named node shape an anonymous property shape belongs to."""
    if shape is None:
        return None
    if isinstance(shape, URIRef):
        return str(shape)
    parent = shapes.value(None, SH.property, shape)
    return str(parent) if isinstance(parent, URIRef) else None


def _unique(violations: list[Violation]) -> list[Violation]:
    """One violation per path and message, in that order; where several say the same (a
    count and a datatype on one field), the one that shows the offending value wins."""
    kept: dict[tuple[str, str], Violation] = {}
    for v in violations:
        key = (v.path, v.message)
        if key not in kept or (kept[key].value is None and v.value is not None):
            kept[key] = v
    return [kept[k] for k in sorted(kept)]


def validate_ontology(ontology: Ontology, shapes: Graph) -> Report:
    """Check the ontology against its quality shapes (labels, definitions, sources, order of care).

    As for cases, pyshacl checks SHACL Core and Oxigraph runs the ``sh:sparql`` constraints;
    their messages may name any projected variable as ``{?name}`` (or ``{$this}``).
    """
    core = Graph()
    for t in shapes:
        if t[1] != SH.sparql:
            core.add(t)
    _conforms, results, _text = shacl_validate(
        ontology.graph, shacl_graph=core, inference="none", advanced=True, allow_warnings=True
    )
    out = []
    for result in results.subjects(RDF.type, SH.ValidationResult):  # type: ignore[union-attr]
        focus = results.value(result, SH.focusNode)  # type: ignore[union-attr]
        message = results.value(result, SH.resultMessage)  # type: ignore[union-attr]
        path = results.value(result, SH.resultPath)  # type: ignore[union-attr]
        where = f"<{focus}>" + (f" {path}" if path is not None else "")
        out.append(Violation(path=where, message=str(message), shape=_named_shape(shapes, results.value(
            result, SH.sourceShape))))  # type: ignore[union-attr]
    store = ox.Store()
    store.extend(triples_to_ox(ontology.graph, ox.DefaultGraph()))
    for focus, row, message, shape in SparqlConstraints(shapes).results(store):
        path = value_of(row, "path")
        where = f"<{from_ox(focus)}>" + (f" {from_ox(path)}" if path is not None else "")
        out.append(Violation(path=where, message=_filled(message, focus, row), shape=shape))
    return Report(_unique(out))


def _filled(message: str, focus: ox.NamedNode | ox.BlankNode, row: ox.QuerySolution) -> str:
    """A SHACL-SPARQL message with ``{?var}`` / ``{$var}`` replaced by the solution's values."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        term = focus if name == "this" else value_of(row, name)
        return match.group(0) if term is None else str(from_ox(term))

    return re.sub(r"\{[?$](\w+)\}", value, message)
