"""The knowledge base: one ontology version with its validator, reasoner and answer builder.

:meth:`KnowledgeBase.process` is the pipeline every entry point calls (the API, the command
line, the bulk loader, the reasoning workers):
media type → reader (:mod:`cases`) → :mod:`validation` → :mod:`reasoning` → :mod:`pathways`.
A new input format is one entry in :data:`READERS`. Built once per ontology version; every
method is safe to call from many threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pyoxigraph as ox
from rdflib import Graph, Literal, URIRef

from ..config import Settings
from ..errors import ESIError, InvalidCase, MalformedInput, Problem, UnsupportedMediaType, Violation
from ..reasoning import DEFAULT_ENGINE, CaseInput, Reasoner
from . import cases, fhir, rdfcases
from .cases import CaseGraph
from .codes import CodeMap
from .contract import Contract
from .media import JSON, RDF_FORMATS, essence
from .ontology import ESI, Ontology
from .pathways import AnswerBuilder
from .terms import GraphView, Triple, triples_to_ox
from .validation import CASE_SHAPES, CaseValidator, load_shapes


@dataclass(frozen=True)
class Reader:
    """How cases arrive in one media type.

    ``decode`` turns a request body into what ``read`` takes (for JSON: the parsed value),
    ``read(kb, decoded, case_id, site)`` that into the case's RDF. Both raise an
    :class:`~kgservice.errors.ESIError` for input they cannot read.
    """

    decode: Callable[[bytes], Any]
    read: Callable[[KnowledgeBase, Any, str | None, str], CaseGraph]


def _rdf_reader(media_type: str) -> Reader:
    def read(kb: KnowledgeBase, body: Any, case_id: str | None, site: str) -> CaseGraph:
        if not isinstance(body, bytes):
            raise MalformedInput(f"a {media_type} case must be sent as a body")
        return kb.read_rdf(body, media_type, case_id=case_id, site=site)

    return Reader(lambda body: body, read)


#: Every media type a case may be sent in, JSON first: the pipeline's one media dispatch.
READERS: dict[str, Reader] = {
    JSON: Reader(cases.load_json, lambda kb, data, case_id, site: kb.read_json(data, case_id, site)),
    **{media_type: _rdf_reader(media_type) for media_type in RDF_FORMATS},
    fhir.FHIR_JSON: Reader(cases.load_json, lambda kb, data, case_id, site: kb.read_fhir(data, case_id, site)),
}


def _apart(indices: range, read: Sequence[CaseGraph | Problem]) -> list[list[int]]:
    """The inputs of one batch in parts where no two cases share an IRI, in order: validation and
    reasoning key a case by its IRI, so two inputs naming the same case (two clients sending the
    same id at once) go to different parts, each reasoned as if alone."""
    parts: list[list[int]] = []
    seen: dict[URIRef, int] = {}
    for i in indices:
        item = read[i]
        layer = 0
        if isinstance(item, CaseGraph):
            layer = seen.get(item.iri, 0)
            seen[item.iri] = layer + 1
        if layer == len(parts):
            parts.append([])
        parts[layer].append(i)
    return parts


def _invalid(case: CaseGraph, violations: list[Violation]) -> InvalidCase:
    """The case's violations, each traced to its origin when the case came from another format."""
    for v in violations:
        v.source = case.origin_of(v.path)
    invalid = InvalidCase(violations)
    invalid.extra.update(case.report)
    return invalid


@dataclass
class Outcome:
    """A reasoned case: its id, the contract answer and (when asked for) its two graphs.

    ``answer`` is empty when the caller asked for none (bulk loading); ``asserted`` and
    ``inferred`` are empty unless the caller asked for the graphs (to store them).
    """

    case_id: str
    answer: dict[str, Any]
    asserted: list[ox.Triple]
    inferred: list[ox.Triple]


@dataclass
class Reasoned:
    """A valid case after reasoning: asserted graph, inferred graph, answer."""

    case: CaseGraph
    inferred: set[Triple]
    answer: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def quads(self) -> list[ox.Quad]:
        """The inferred graph as Oxigraph quads in the default graph (to answer from)."""
        return list(triples_to_ox(self.inferred, ox.DefaultGraph()))

    @cached_property
    def ox_inferred(self) -> list[ox.Triple]:
        """The inferred graph as Oxigraph triples (to store it)."""
        return [q.triple for q in self.quads]


class KnowledgeBase:
    def __init__(self, ontology: Ontology, case_shapes: Graph, engine: str = DEFAULT_ENGINE,
                 max_case_triples: int = 2_000, cache_dir: Path | None = None,
                 shacl_engine: str = "builtin", max_batch: int = 1_000, max_case_list_items: int = 50) -> None:
        self.ontology = ontology
        self.contract = Contract.from_shapes(case_shapes)
        self.validator = CaseValidator(ontology, case_shapes, shacl_engine)
        self.reasoner = Reasoner(ontology, engine, cache_dir=cache_dir)
        self.answers = AnswerBuilder(ontology)
        self._version_fact = (ESI.ontologyVersion, Literal(ontology.version))
        self.max_case_triples = max_case_triples
        self.max_batch = max_batch
        self.max_case_list_items = max_case_list_items

    @classmethod
    def from_settings(cls, settings: Settings) -> KnowledgeBase:
        return cls(
            Ontology.load(settings.ontology_path),
            load_shapes(settings.shapes_dir / CASE_SHAPES),
            engine=settings.engine,
            max_case_triples=settings.max_case_triples,
            cache_dir=settings.cache_dir,
            shacl_engine=settings.shacl_engine,
            max_batch=settings.max_batch,
            max_case_list_items=settings.max_case_list_items,
        )

    @property
    def version(self) -> str:
        return self.ontology.version

    # -- the pipeline ----------------------------------------------------------------------

    def process(self, inputs: Sequence[Any], media_type: str | None = JSON, site: str = cases.DEFAULT_SITE, *,
                case_id: str | None = None, answers: bool = True, graphs: bool = False) -> list[Outcome | Problem]:
        """Read, check, reason and answer cases: one :class:`Outcome` or :class:`Problem` per input, in order.

        An input is a body (``bytes``, decoded by the media type's reader) or what that reader
        decodes bodies to (for JSON: a parsed value, as the loader and the command line have
        them). Cases are validated and reasoned together, ``max_batch`` at a time; a case that
        cannot be read or breaks the contract gets its problem and costs the others nothing.
        ``case_id`` names the one input's case (``PUT /cases/{id}``); ``answers=False`` skips
        the answers, ``graphs=True`` returns the asserted and inferred graphs (to store them).
        """
        if case_id is not None and len(inputs) != 1:
            raise ValueError("case_id names the case of a single input")
        kind = essence(media_type)
        reader = READERS.get(kind)
        if reader is None:
            accepted = ", ".join(READERS)
            refused = UnsupportedMediaType(f"{kind} is not accepted; send one of {accepted}" if kind
                                           else f"send a Content-Type: one of {accepted}")
            return [Problem.of(refused) for _ in inputs]
        read: list[CaseGraph | Problem] = []
        for item in inputs:
            try:
                read.append(reader.read(self, reader.decode(item) if isinstance(item, bytes) else item, case_id, site))
            except ESIError as exc:
                read.append(Problem.of(exc))
        out: dict[int, Outcome | Problem] = {}
        for start in range(0, len(read), self.max_batch):
            for part in _apart(range(start, min(start + self.max_batch, len(read))), read):
                out.update(zip(part, self._reason_part([read[i] for i in part], answers, graphs), strict=True))
        return [out[i] for i in range(len(read))]

    def _reason_part(self, read: list[CaseGraph | Problem], answers: bool, graphs: bool) -> list[Outcome | Problem]:
        """Check the read cases of one batch in one SHACL run, then reason over the valid ones together."""
        cases_read = [c for c in read if isinstance(c, CaseGraph)]
        violations = dict(zip(map(id, cases_read), self.check_many(cases_read), strict=True))
        checked = [Problem.of(_invalid(c, violations[id(c)]), c.id) if isinstance(c, CaseGraph) and violations[id(c)]
                   else c for c in read]
        reasoned = iter(self.reason_valid([c for c in checked if isinstance(c, CaseGraph)], answers))
        out: list[Outcome | Problem] = []
        for item in checked:
            if isinstance(item, Problem):
                out.append(item)
                continue
            done = next(reasoned)
            out.append(Outcome(item.id, {**done.answer, **item.report} if answers else done.answer,
                               list(item.ox_triples) if graphs else [],
                               done.ox_inferred if graphs else []))
        return out

    def answer_json(self, data: Any) -> dict[str, Any]:
        """JSON case in, contract answer out; raises the case's problem."""
        result = self.process([data])[0]
        if isinstance(result, Problem):
            raise result.error
        return result.answer

    # -- the stages ------------------------------------------------------------------------

    def read_json(self, data: Any, case_id: str | None = None, site: str = cases.DEFAULT_SITE) -> CaseGraph:
        return cases.from_json(data, self.contract, case_id=case_id, site=site, max_triples=self.max_case_triples,
                               max_list_items=self.max_case_list_items)

    def read_rdf(self, body: bytes, media_type: str, case_id: str | None = None,
                 site: str = cases.DEFAULT_SITE) -> CaseGraph:
        return rdfcases.from_rdf(body, media_type, self.contract, case_id=case_id, max_triples=self.max_case_triples,
                              site=site, max_list_items=self.max_case_list_items)

    @cached_property
    def fhir_codes(self) -> CodeMap:
        """The contract codes FHIR codings stand for, read from the ontology and its SKOS matches."""
        return CodeMap.from_kb(self)

    def read_fhir(self, bundle: Any, case_id: str | None = None, site: str = cases.DEFAULT_SITE) -> CaseGraph:
        """A FHIR Bundle (decoded JSON) as a case, each value traced to its resource.

        Raises InvalidFHIR for invalid FHIR, InvalidCase when the record lacks what a case needs.
        """
        mapped = fhir.to_case(fhir.read_bundle(bundle), self.fhir_codes)
        report = {"fhir": mapped.report()}
        if mapped.problems:
            invalid = InvalidCase([Violation(p["location"], p["message"]) for p in mapped.problems])
            invalid.extra.update(report)
            raise invalid
        case = self.read_json(mapped.case, case_id=case_id, site=site)
        case.origins, case.report = mapped.sources, report
        return case

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
        """Reason over read cases together and answer each. Raises on the first invalid case."""
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
            graph.add((case.iri, *self._version_fact))
            reasoned = Reasoned(case, graph)
            if answers:
                facts = GraphView.of([*case.quads, *reasoned.quads])
                reasoned.answer = self.answers.answer(facts, case.iri, case.id)
            out.append(reasoned)
        return out

    @staticmethod
    def reasoner_input(case: CaseGraph) -> CaseInput:
        """A valid case as the reasoner takes it: asserted triples plus computed observations."""
        return CaseInput(case.iri, case.triples, tuple(cases.observations(case.triples, case.iri)))

    @cached_property
    def vocabulary(self) -> dict[str, dict[str, list[dict[str, str]]]]:
        """Every accepted code by contract field, then the codes answers use."""
        onto = self.ontology
        groups = {field: [self._entry(t) for t in onto.members(cls)]
                  for field, cls in self.contract.coded_fields().items() if onto.members(cls)}
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
