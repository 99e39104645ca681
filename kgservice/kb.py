"""The knowledge base: one ontology version with its validator, reasoner and answer builder.

This is the pipeline the command line and the API share:
case (JSON or RDF) → :mod:`cases` → :mod:`validation` → :mod:`reasoning` → :mod:`pathways`.
Built once per ontology version; every method is safe to call from many threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pyoxigraph as ox
from rdflib import Graph, Literal, URIRef
from rdflib.namespace import SH
from rdflib.term import Node

from . import cases
from .cases import CASE_FIELDS, CaseGraph
from .config import Settings
from .errors import InvalidCase, Violation
from .ontology import ESI, Ontology, Triple
from .pathways import AnswerBuilder
from .reasoning import CaseInput, Reasoner
from .terms import triples_to_ox
from .validation import CASE_SHAPES, CaseValidator, load_shapes


@dataclass
class Reasoned:
    """A valid case after reasoning: asserted graph, inferred graph, answer."""

    case: CaseGraph
    inferred: set[Triple]
    answer: dict[str, Any]


class KnowledgeBase:
    def __init__(self, ontology: Ontology, case_shapes: Graph, engine: str = "reasonable",
                 max_case_triples: int = 2_000, cache_dir: Path | None = None,
                 shacl_engine: str = "builtin") -> None:
        self.ontology = ontology
        self.validator = CaseValidator(ontology, case_shapes, shacl_engine)
        self.reasoner = Reasoner(ontology, engine, cache_dir=cache_dir)
        self.answers = AnswerBuilder(ontology)
        self.max_case_triples = max_case_triples

    @classmethod
    def from_settings(cls, settings: Settings) -> KnowledgeBase:
        return cls(
            Ontology.load(settings.ontology_path),
            load_shapes(settings.shapes_dir / CASE_SHAPES),
            engine=settings.engine,
            max_case_triples=settings.max_case_triples,
            cache_dir=settings.cache_dir,
            shacl_engine=settings.shacl_engine,
        )

    @property
    def version(self) -> str:
        return self.ontology.version

    # -- input ---------------------------------------------------------------------------

    def read_json(self, data: Any, case_id: str | None = None, site: str = cases.DEFAULT_SITE) -> CaseGraph:
        return cases.from_json(data, case_id=case_id, site=site)

    def read_rdf(self, body: bytes, media_type: str, case_id: str | None = None,
                 site: str = cases.DEFAULT_SITE) -> CaseGraph:
        return cases.from_rdf(body, media_type, case_id=case_id, max_triples=self.max_case_triples, site=site)

    def check(self, case: CaseGraph) -> list[Violation]:
        """Every violation of the contract; empty when the case is valid."""
        return self.check_many([case])[0]

    def check_many(self, batch: Sequence[CaseGraph]) -> list[list[Violation]]:
        """The violations of each case, validated together (one SHACL run for the batch)."""
        too_big = {i for i, case in enumerate(batch) if len(case.triples) > self.max_case_triples}
        rest = [case for i, case in enumerate(batch) if i not in too_big]
        reports = iter(self.validator.validate_many(rest) if rest else [])
        return [[Violation("$", f"a case may hold at most {self.max_case_triples} triples, "
                                f"this one has {len(case.triples)}")] if i in too_big else next(reports).violations
                for i, case in enumerate(batch)]

    # -- reasoning -------------------------------------------------------------------------

    def reason(self, batch: Sequence[CaseGraph]) -> list[Reasoned]:
        """Reason over valid cases together and answer each. Raises on the first invalid case."""
        for case in batch:
            if problems := self.check(case):
                raise InvalidCase(problems)
        return self.reason_valid(batch)

    def reason_valid(self, batch: Sequence[CaseGraph], answers: bool = True) -> list[Reasoned]:
        """Reason over valid cases together; ``answers=False`` skips the answers (bulk loading)."""
        inferred = self.reasoner.infer([self.reasoner_input(c) for c in batch])
        out = []
        for case in batch:
            graph = inferred[case.iri]
            graph.add((case.iri, ESI.ontologyVersion, Literal(self.version)))
            out.append(Reasoned(case, graph, self.answer_from_graphs(case, graph) if answers else {}))
        return out

    @staticmethod
    def reasoner_input(case: CaseGraph) -> CaseInput:
        """A valid case as the reasoner takes it: asserted triples plus computed observations."""
        return CaseInput(case.iri, case.triples, tuple(cases.observations(case.graph, case.iri)))

    def answer_from_graphs(self, case: CaseGraph, inferred: set[Triple]) -> dict[str, Any]:
        store = ox.Store()
        store.extend(case.ox_quads(ox.DefaultGraph()))
        store.extend(triples_to_ox(inferred, ox.DefaultGraph()))
        return self.answers.answer(store, case.iri, case.id)

    def answer_json(self, data: Any) -> dict[str, Any]:
        """JSON case in, contract answer out (the ``POST /pathway`` path)."""
        return self.reason([self.read_json(data)])[0].answer

    @cached_property
    def vocabulary(self) -> dict[str, dict[str, list[dict[str, str]]]]:
        """Every accepted code by contract field, then the codes answers use."""
        onto = self.ontology
        shapes = self.validator.shapes
        parents: dict[Node, str] = {spec.prop: name for name, spec in CASE_FIELDS.items() if spec.fields}
        groups: dict[str, list[dict[str, str]]] = {}
        for prop_shape, name in shapes.subject_objects(SH.name):
            path = shapes.value(prop_shape, SH.path)
            cls = shapes.value(prop_shape, SH["class"]) or next(  # or on the shape of the values themselves
                (shapes.value(v, SH["class"]) for v in shapes.subjects(SH.targetObjectsOf, path)
                 if shapes.value(v, SH["class"]) is not None), None)
            if cls is None or not onto.members(URIRef(str(cls))):
                continue
            owner = shapes.value(None, SH.property, prop_shape)
            target = shapes.value(owner, SH.targetObjectsOf) if owner is not None else None
            parent = parents.get(target) if target is not None else None
            field = f"{parent}.{name}" if parent else str(name)
            groups[field] = [self._entry(t) for t in onto.members(URIRef(str(cls)))]
        answers = {
            "response.category": ESI.ResponseCategory, "pain_sources": ESI.AnatomicalPainSource,
            "failure_causes": ESI.FailureCause, "pathways": ESI.CarePathway, "pathways.urgency": ESI.Urgency,
        }
        out = {"input": dict(sorted(groups.items())),
               "answer": {k: [self._entry(t) for t in onto.members(c)] for k, c in answers.items()}}
        return out

    def _entry(self, iri: URIRef) -> dict[str, str]:
        term = self.ontology.term(iri)
        return {"code": term.code, "label": term.label, "iri": str(iri), "definition": term.definition}

    def case_iri(self, case_id: str, site: str = cases.DEFAULT_SITE) -> URIRef:
        return cases.case_iri(case_id, site)
