"""The service's use cases, independent of HTTP: answer, store, read, list and delete cases.

``Service`` joins the knowledge base (one ontology version) to the case stores. The API
and the command line call it; it calls down the pipeline and never back up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rdflib import Graph

from . import cases
from .cases import RDF_FORMATS, CaseGraph
from .config import Settings
from .errors import InvalidCase, NotFound, UnsupportedMediaType, Violation
from .kb import KnowledgeBase, Reasoned
from .ontology import ESI
from .reasoning import ENGINES
from .store import CaseGraphs, OxigraphSite, Stores

JSON = "application/json"
CASE_MEDIA_TYPES = (JSON, *RDF_FORMATS)


@dataclass
class Stored:
    case_id: str
    created: bool
    answer: dict[str, Any]


class Service:
    def __init__(self, settings: Settings, kb: KnowledgeBase | None = None, stores: Stores | None = None) -> None:
        self.settings = settings
        self.kb = kb or KnowledgeBase.from_settings(settings)
        self.stores = stores or Stores(settings.data_dir)

    # -- reading input ---------------------------------------------------------------------

    def read_case(self, body: bytes, media_type: str | None, site: str, case_id: str | None = None) -> CaseGraph:
        """A case from a request body, by its media type; raises 400/415/422 errors."""
        kind = (media_type or "").split(";", 1)[0].strip().lower()
        if kind == JSON:
            return self.kb.read_json(cases.load_json(body), case_id=case_id, site=site)
        if kind in RDF_FORMATS:
            return self.kb.read_rdf(body, kind, case_id=case_id, site=site)
        if not kind:
            raise UnsupportedMediaType(f"send a Content-Type: one of {', '.join(CASE_MEDIA_TYPES)}")
        raise UnsupportedMediaType(f"{kind} is not accepted; send one of {', '.join(CASE_MEDIA_TYPES)}")

    def reason(self, case: CaseGraph) -> Reasoned:
        if problems := self.kb.check(case):
            raise InvalidCase(problems)
        return self.kb.reason_valid([case])[0]

    # -- use cases ---------------------------------------------------------------------------

    def pathway(self, body: bytes, media_type: str | None, site: str) -> dict[str, Any]:
        """Answer a case without storing it."""
        return self.reason(self.read_case(body, media_type, site)).answer

    def create(self, body: bytes, media_type: str | None, site: str) -> Stored:
        reasoned = self.reason(self.read_case(body, media_type, site))
        self._site(site).create(reasoned.case.id, reasoned.case.graph, reasoned.inferred)
        return Stored(reasoned.case.id, True, reasoned.answer)

    def replace(self, case_id: str, body: bytes, media_type: str | None, site: str) -> Stored:
        reasoned = self.reason(self.read_case(body, media_type, site, case_id=case_id))
        created = self._site(site).replace(case_id, reasoned.case.graph, reasoned.inferred)
        return Stored(case_id, created, reasoned.answer)

    def delete(self, case_id: str, site: str) -> None:
        self._site(site).delete(_checked_id(case_id))

    def case_graph(self, case_id: str, site: str, inferred: bool = False) -> Graph:
        asserted, derived = self._site(site).read(_checked_id(case_id))
        graph = Graph()
        for t in (*asserted, *(derived if inferred else ())):
            graph.add(t)
        return graph

    def case_json(self, case_id: str, site: str) -> dict[str, Any]:
        return cases.to_json(self.case_graph(case_id, site), cases.case_iri(case_id, site))

    def stored_answer(self, case_id: str, site: str) -> dict[str, Any]:
        store = self._site(site)
        if not store.exists(_checked_id(case_id)):
            raise NotFound(f"no case {case_id!r}")
        graphs = CaseGraphs.of(site, case_id)
        return self.kb.answers.answer(store.store, cases.case_iri(case_id, site), case_id,
                                      graphs=[graphs.asserted, graphs.inferred])

    def list_cases(self, site: str, category: str | None, pathway: str | None, page: int,
                   per_page: int) -> tuple[list[str], int]:
        for name, value, kind in (("category", category, ESI.ResponseCategory),
                                  ("pathway", pathway, ESI.CarePathway)):
            if value is not None and self.kb.ontology.coded_term(value) not in self.kb.ontology.members(kind):
                raise InvalidCase([Violation(name, f"{value!r} is not a {name} code; see GET /vocabulary",
                                                   value=value)])
        return self._site(site).case_ids(category, pathway, per_page, (page - 1) * per_page)

    # -- curators -------------------------------------------------------------------------------

    @property
    def vocabulary(self) -> dict[str, dict[str, list[dict[str, str]]]]:
        return self.kb.vocabulary

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "ontology_version": self.kb.version, "engine": self.kb.reasoner.engine,
                "engines": sorted(ENGINES)}

    # -- plumbing ----------------------------------------------------------------------------------

    def _site(self, site: str) -> OxigraphSite:
        store = self.stores.site(site)
        store.set_ontology(self.kb.version, self.kb.ontology.graph, self.kb.reasoner.tbox_closure)
        return store

    def site_store(self, site: str) -> OxigraphSite:
        return self._site(site)

    def close(self) -> None:
        self.stores.close()


def _checked_id(case_id: str) -> str:
    if not cases.ID_PATTERN.match(case_id):
        raise NotFound(f"no case {case_id!r}")
    return case_id
