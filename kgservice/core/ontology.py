"""The ontology, loaded once per version, and everything the pipeline derives from it.

Nothing here knows a clinical fact: it reads the Turtle and indexes what the rules,
the answers and the vocabulary need, so that no request parses or walks the ontology.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import cast

from rdflib import OWL, RDF, RDFS, SKOS, BNode, Graph, Literal, Namespace, URIRef
from rdflib.collection import Collection
from rdflib.namespace import DCTERMS, SH
from rdflib.term import Node

from ..errors import OntologyError
from .terms import Triple

ESI = Namespace("https://w3id.org/esi-kg/ontology#")
CASE_BASE = "https://w3id.org/esi-kg/case/"

#: Properties whose values are the answer's conclusions (the contract's facets).
CONCLUSION_PROPERTIES = (ESI.hasSuspectedPainSource, ESI.hasSuspectedFailureCause, ESI.hasApplicablePathway)

#: Predicates an OWL 2 RL reasoner needs; labels, definitions and SHACL rules are left out.
_LOGICAL = {RDF.type, RDFS.subClassOf, RDFS.subPropertyOf, RDFS.domain, RDFS.range, RDF.first, RDF.rest}
_NOT_LOGICAL_OWL = {OWL.versionInfo, OWL.versionIRI, OWL.imports, OWL.priorVersion}
_DECLARATIONS = frozenset({OWL.Class, OWL.ObjectProperty, OWL.DatatypeProperty, OWL.AnnotationProperty,
                           OWL.NamedIndividual, OWL.Ontology, OWL.Restriction})


# Class expressions, parsed once, as the explanation of a rule walks them per case.
@dataclass(frozen=True)
class Named:
    iri: URIRef


@dataclass(frozen=True)
class HasValue:
    prop: URIRef
    value: Node


@dataclass(frozen=True)
class SomeValues:
    prop: URIRef
    cls: URIRef


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Expr, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Expr, ...]


Expr = Named | HasValue | SomeValues | AllOf | AnyOf


@dataclass(frozen=True)
class Term:
    """A term of the ontology as the answers and the vocabulary show it."""

    iri: URIRef
    code: str
    label: str
    definition: str
    source: str

    def ref(self) -> dict[str, str]:
        return {"iri": str(self.iri), "label": self.label, "source": self.source}


@dataclass(frozen=True)
class OwlRule:
    """A named class whose membership concludes ``prop value`` (see the ontology header)."""

    term: Term
    prop: URIRef
    value: URIRef
    conditions: tuple[Expr, ...]


@dataclass(frozen=True)
class SparqlRule:
    """A SHACL-AF ``sh:SPARQLRule`` of the ontology, with its stratum and order."""

    term: Term
    stratum: int
    order: float
    query: str


@dataclass(frozen=True)
class PathwayInfo:
    order: int
    urgency: URIRef | None
    urgency_follows: URIRef | None


@dataclass
class Ontology:
    """A parsed ontology plus the indexes derived from it. Build with :meth:`load`."""

    graph: Graph
    path: Path | None = None
    digest: str = ""
    terms: dict[URIRef, Term] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | str) -> Ontology:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise OntologyError(f"cannot read ontology {path}: {exc.strerror}") from exc
        return cls.from_turtle(data, path=path)

    @classmethod
    def from_turtle(cls, data: bytes, path: Path | None = None) -> Ontology:
        graph = Graph()
        try:
            graph.parse(data=data, format="turtle")
        except Exception as exc:  # rdflib raises many parser exception types
            raise OntologyError(f"ontology {path or ''} is not valid Turtle: {exc}") from exc
        onto = cls(graph=graph, path=path, digest=hashlib.sha256(data).hexdigest())
        onto.terms = onto._index_terms()
        return onto

    # -- identity -----------------------------------------------------------------

    @cached_property
    def iri(self) -> URIRef:
        for s in self.graph.subjects(RDF.type, OWL.Ontology):
            if isinstance(s, URIRef):
                return s
        raise OntologyError("the ontology has no owl:Ontology header")

    @cached_property
    def version(self) -> str:
        """``owl:versionInfo`` plus a digest of the file, so any edit changes it."""
        info = self.graph.value(self.iri, OWL.versionInfo)
        return f"{info or '0'}+{self.digest[:12]}"

    # -- terms --------------------------------------------------------------------

    def _index_terms(self) -> dict[URIRef, Term]:
        terms: dict[URIRef, Term] = {}
        for s in set(self.graph.subjects(RDFS.label, None)):
            if not isinstance(s, URIRef):
                continue
            label = self.graph.value(s, RDFS.label)
            notation = self.graph.value(s, SKOS.notation)
            terms[s] = Term(
                iri=s,
                code=str(notation) if notation is not None else local_name(s),
                label=str(label),
                definition=str(self.graph.value(s, SKOS.definition) or ""),
                source=str(self.graph.value(s, DCTERMS.source) or ""),
            )
        return terms

    def term(self, iri: Node) -> Term:
        found = self.terms.get(iri)  # type: ignore[call-overload]
        if found is None:
            name = local_name(iri)
            return Term(iri=URIRef(str(iri)), code=name, label=name, definition="", source="")
        return found

    @cached_property
    def codes(self) -> frozenset[URIRef]:
        """Every term with a ``skos:notation``: the values a contract field can take."""
        return frozenset(s for s in self.graph.subjects(SKOS.notation, None) if isinstance(s, URIRef))

    def is_code(self, node: Node) -> bool:
        return node in self.codes

    def is_subclass(self, sub: Node, sup: Node) -> bool:
        """Whether ``sub`` is a (direct or indirect) subclass of ``sup`` in the ontology as written."""
        return sup in self._superclasses.get(sub, frozenset())

    @cached_property
    def _superclasses(self) -> dict[Node, frozenset[Node]]:
        return {c: frozenset(o for o in self.graph.transitive_objects(c, RDFS.subClassOf) if o is not None) - {c}
                for c in set(self.graph.subjects(RDFS.subClassOf, None))}

    def coded_term(self, code: str) -> URIRef:
        """The IRI a contract code stands for (codes are local names in the ESI namespace)."""
        return ESI[code]

    def label(self, node: Node) -> str:
        if isinstance(node, Literal):
            return str(node)
        return self.term(node).label

    # -- reasoning inputs -----------------------------------------------------------

    @cached_property
    def tbox(self) -> tuple[Triple, ...]:
        """The logical axioms only: what an OWL 2 RL reasoner needs, nothing it would copy."""
        keep: list[Triple] = []
        for s, p, o in self.graph:
            if p == RDF.type and isinstance(o, URIRef) and o.startswith(str(SH)):
                continue
            if p in _LOGICAL or (isinstance(p, URIRef) and p.startswith(str(OWL)) and p not in _NOT_LOGICAL_OWL):
                keep.append((s, p, o))
        return tuple(keep)

    @cached_property
    def case_tbox(self) -> tuple[Triple, ...]:
        """The axioms reasoning about a case needs: :attr:`tbox` without declarations.

        A declaration (``C a owl:Class``, ``p a owl:ObjectProperty``, ``x a owl:NamedIndividual``)
        feeds only the OWL 2 RL schema rules that make a term its own subclass, subproperty or
        equivalent, or a subclass of ``owl:Thing``: nothing about a case's nodes but ``owl:Thing``,
        which answers leave out; ``_:r a owl:Restriction`` feeds no rule at all (a restriction
        is read from ``owl:onProperty``). Without them the engine parses and re-derives a quarter
        less for each case (0.8 ms, measured); the closure of the ontology itself is still
        computed from :attr:`tbox`.
        """
        return tuple(t for t in self.tbox if not (t[1] == RDF.type and t[2] in _DECLARATIONS))

    @cached_property
    def sparql_rules(self) -> tuple[SparqlRule, ...]:
        rules = []
        for rule in self.graph.subjects(RDF.type, SH.SPARQLRule):
            query = self.graph.value(rule, SH.construct)
            if query is None:
                raise OntologyError(f"SPARQL rule {rule} has no sh:construct")
            stratum = self.graph.value(rule, ESI.stratum)
            order = self.graph.value(rule, SH.order)
            text = self._prefixes_for(rule) + str(query)
            rules.append(
                SparqlRule(
                    term=self.term(rule),
                    stratum=int(cast(Literal, stratum)) if stratum is not None else 1,
                    order=float(cast(Literal, order)) if order is not None else 0.0,
                    query=text,
                )
            )
        return tuple(sorted(rules, key=lambda r: (r.stratum, r.order, str(r.term.iri))))

    def _prefixes_for(self, rule: Node) -> str:
        lines = []
        for decl_set in self.graph.objects(rule, SH.prefixes):
            for decl in self.graph.objects(decl_set, SH.declare):
                prefix = self.graph.value(decl, SH.prefix)
                ns = self.graph.value(decl, SH.namespace)
                lines.append(f"PREFIX {prefix}: <{ns}>")
        return "\n".join(sorted(set(lines))) + "\n"

    @cached_property
    def strata(self) -> tuple[int, ...]:
        return tuple(sorted({r.stratum for r in self.sparql_rules} | {1}))

    # -- OWL rules, for explanations --------------------------------------------------

    @cached_property
    def owl_rules(self) -> dict[tuple[URIRef, URIRef], tuple[OwlRule, ...]]:
        """Conclusion ``(property, value)`` → the named rule classes that conclude it."""
        found: dict[tuple[URIRef, URIRef], list[OwlRule]] = {}
        for rule_cls, restriction in self.graph.subject_objects(RDFS.subClassOf):
            if not isinstance(rule_cls, URIRef) or not isinstance(restriction, BNode):
                continue
            prop = self.graph.value(restriction, OWL.onProperty)
            value = self.graph.value(restriction, OWL.hasValue)
            if prop not in CONCLUSION_PROPERTIES or not isinstance(value, URIRef):
                continue
            conditions = self.conditions_of(rule_cls)
            found.setdefault((URIRef(str(prop)), value), []).append(
                OwlRule(term=self.term(rule_cls), prop=URIRef(str(prop)), value=value, conditions=conditions)
            )
        return {k: tuple(v) for k, v in found.items()}

    def conditions_of(self, cls: URIRef) -> tuple[Expr, ...]:
        """The sufficient conditions of a class: every expression stated as its subclass."""
        return self._conditions.get(cls, ())

    @cached_property
    def _conditions(self) -> dict[URIRef, tuple[Expr, ...]]:
        found: dict[URIRef, list[Expr]] = {}
        for sub, sup in self.graph.subject_objects(RDFS.subClassOf):
            if isinstance(sup, URIRef) and sub != sup:
                try:
                    found.setdefault(sup, []).append(self._expr(sub))
                except OntologyError:
                    continue  # reported by `kgservice check`; never fatal for explanations
        return {k: tuple(sorted(v, key=repr)) for k, v in found.items()}

    def parse_expression(self, node: Node) -> Expr | None:
        """A class expression as ESI-KG's rules use them, or None if it is outside that set."""
        try:
            return self._expr(node)
        except OntologyError:
            return None

    def _expr(self, node: Node) -> Expr:
        g = self.graph
        if isinstance(node, URIRef):
            return Named(node)
        if (members := g.value(node, OWL.intersectionOf)) is not None:
            return AllOf(tuple(self._expr(m) for m in Collection(g, members)))
        if (members := g.value(node, OWL.unionOf)) is not None:
            return AnyOf(tuple(self._expr(m) for m in Collection(g, members)))
        prop = g.value(node, OWL.onProperty)
        if prop is not None and (value := g.value(node, OWL.hasValue)) is not None:
            return HasValue(URIRef(str(prop)), value)
        if prop is not None and isinstance(cls := g.value(node, OWL.someValuesFrom), URIRef):
            return SomeValues(URIRef(str(prop)), cls)
        raise OntologyError(f"class expression {node} is outside what ESI-KG rules may use")

    # -- answers ---------------------------------------------------------------------

    @cached_property
    def pathways(self) -> dict[URIRef, PathwayInfo]:
        info = {}
        for pw, order in self.graph.subject_objects(ESI.careOrder):
            if isinstance(pw, URIRef):
                urgency = self.graph.value(pw, ESI.hasUrgency)
                follows = self.graph.value(pw, ESI.urgencyFollows)
                info[pw] = PathwayInfo(
                    order=int(cast(Literal, order)),
                    urgency=URIRef(str(urgency)) if urgency is not None else None,
                    urgency_follows=URIRef(str(follows)) if follows is not None else None,
                )
        return info

    @cached_property
    def explanation_order(self) -> tuple[tuple[str, int], ...]:
        """``(reason prefix, esi:explanationOrder)``, longest first: a reason that begins with a
        property's label (``"diagnosis: …"``) states a fact with that property, one that begins
        ``"is a <class label>"`` a case's membership of that class."""
        found = []
        for term, n in self.graph.subject_objects(ESI.explanationOrder):
            is_class = (term, RDF.type, OWL.Class) in self.graph
            found.append((f"is a {self.label(term)}" if is_class else f"{self.label(term)}:", int(cast(Literal, n))))
        return tuple(sorted(found, key=lambda pair: (-len(pair[0]), pair[0])))

    def reason_key(self, reason: str) -> tuple[int, str]:
        """Where a reason goes among its conclusion's reasons: clinical order, then text.

        >>> from kgservice.config import Settings
        >>> Ontology.load(Settings().ontology_path).reason_key("red flag: foot drop")
        (20, 'red flag: foot drop')
        """
        rank = next((n for prefix, n in self.explanation_order if reason.startswith(prefix)), 0)
        return rank, reason

    @cached_property
    def evidence_properties(self) -> dict[URIRef, tuple[URIRef, ...]]:
        """Property → the properties leading to the case records that a fact with it rests on."""
        found: dict[URIRef, list[URIRef]] = {}
        for prop, via in self.graph.subject_objects(ESI.evidenceProperty):
            found.setdefault(URIRef(str(prop)), []).append(URIRef(str(via)))
        return {k: tuple(sorted(v)) for k, v in found.items()}

    def reason_template(self, term: URIRef) -> str | None:
        template = self.graph.value(term, ESI.reasonTemplate)
        return str(template) if template is not None else None

    @cached_property
    def _urgency_sources(self) -> dict[URIRef, frozenset[URIRef]]:
        """For each pathway whose urgency follows a kind of pathway: the pathways of that kind."""
        return {pw: frozenset(self.members(info.urgency_follows)) for pw, info in self.pathways.items()
                if info.urgency_follows is not None}

    def inherited_urgency(self, pathway: URIRef, applicable: Iterable[Node]) -> tuple[URIRef, URIRef] | None:
        """``(urgency, source)`` for a pathway that takes its urgency from an applicable pathway of
        the kind it follows (``esi:urgencyFollows``): the most pressing one; None if none applies."""
        found = sorted(((own, source) for source in self._urgency_sources.get(pathway, frozenset()) & set(applicable)
                        if (own := self.pathways[source].urgency) is not None),
                       key=lambda pair: (-self.urgency_rank.get(pair[0], 0), str(pair[1])))
        return found[0] if found else None

    @cached_property
    def urgency_rank(self) -> dict[URIRef, int]:
        return {URIRef(str(u)): int(cast(Literal, r)) for u, r in self.graph.subject_objects(ESI.urgencyRank)}

    # -- value sets ------------------------------------------------------------------

    def members(self, cls: URIRef) -> list[URIRef]:
        """Coded terms allowed where the shapes say ``sh:class cls``: instances or subclasses."""
        found: set[URIRef] = set()
        for c in self.graph.transitive_subjects(RDFS.subClassOf, cls):
            for candidate in (*self.graph.subjects(RDF.type, c), *self.graph.subjects(RDFS.subClassOf, c)):
                if isinstance(candidate, URIRef) and candidate in self.codes:
                    found.add(candidate)
        return sorted(found, key=lambda t: self.term(t).code)


def local_name(iri: Node) -> str:
    text = str(iri)
    for sep in ("#", "/"):
        if sep in text:
            text = text.rsplit(sep, 1)[1]
            break
    return text
