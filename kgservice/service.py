"""The service's use cases, independent of HTTP: answer, store, read, list and delete cases.

``Service`` joins the knowledge base (one ontology version) to the case stores. The API
and the command line call it; it calls down the pipeline and never back up.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyoxigraph as ox
from rdflib import Graph

from .config import ENGINES, Settings
from .core import cases
from .core.ontology import ESI
from .core.terms import triples_from_ox
from .errors import InvalidCase, NotFound, Problem, Violation
from .stores.base import SiteStore, SiteStores, open_stores
from .workers import ReasoningPool, Reply

if TYPE_CHECKING:
    from .core.kb import KnowledgeBase, Outcome


@dataclass
class Stored:
    case_id: str
    created: bool
    answer: dict[str, Any]


class Service:
    """``pool``: reasoning workers started by the caller (``kgservice serve``: before it imported
    the web stack); then this process's own knowledge base, which answers everything but the
    reasoning, is loaded on first use (or by :meth:`load_kb`), not before the first answer."""

    def __init__(self, settings: Settings, kb: KnowledgeBase | None = None, stores: SiteStores | None = None,
                 guard: bool = False, pool: ReasoningPool | None = None) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._kb = kb
        self._kb_lock = threading.Lock()
        workers = settings.reasoning_workers or 0
        if pool is None and workers > 0:
            # Before any store is open or thread started: the pool forks its first workers from the knowledge base.
            pool = ReasoningPool(settings, workers, guard, kb=self.kb)
        self.pool = pool
        if pool is None:
            self.load_kb()
        try:
            self.stores: SiteStores = stores or open_stores(settings)
        except BaseException:
            if self.pool is not None:
                self.pool.close()
            raise
        self._current: set[str] = set()  # sites whose ontology graphs this process has brought up to date
        self._current_lock = threading.Lock()

    @property
    def kb(self) -> KnowledgeBase:
        return self._kb or self.load_kb()

    def load_kb(self) -> KnowledgeBase:
        """This process's knowledge base, loaded now if it was not yet (once, whoever asks first)."""
        with self._kb_lock:
            if self._kb is None:
                from .core.kb import KnowledgeBase

                self._kb = KnowledgeBase.from_settings(self.settings)
            return self._kb

    def reason(self, body: bytes, media_type: str | None, site: str, case_id: str | None = None,
               graphs: bool = True) -> Outcome | Reply:
        """The pipeline for one body, in a worker process when there is a pool; raises its problem."""
        result: Outcome | Reply | Problem
        if self.pool is not None:
            result = self.pool.process(body, media_type, site, case_id, graphs)
        else:
            result = self.kb.process([body], media_type, site, case_id=case_id, graphs=graphs)[0]
        if isinstance(result, Problem):
            raise result.error
        return result

    # -- use cases ---------------------------------------------------------------------------

    def pathway(self, body: bytes, media_type: str | None, site: str) -> dict[str, Any]:
        """Answer a case without storing it."""
        return self.reason(body, media_type, site, graphs=False).answer

    def pathway_json(self, body: bytes, media_type: str | None, site: str) -> bytes:
        """:meth:`pathway`'s answer as JSON, as a reasoning worker serialised it."""
        outcome = self.reason(body, media_type, site, graphs=False)
        if isinstance(outcome, Reply):
            return outcome.answer_json
        return json.dumps(outcome.answer, ensure_ascii=False).encode()

    def create(self, body: bytes, media_type: str | None, site: str) -> Stored:
        outcome = self.reason(body, media_type, site)
        self.site_store(site).create(outcome.case_id, outcome.asserted, outcome.inferred)
        return Stored(outcome.case_id, True, outcome.answer)

    def replace(self, case_id: str, body: bytes, media_type: str | None, site: str) -> Stored:
        if not cases.ID_PATTERN.match(case_id):
            raise InvalidCase([Violation("id", cases.ID_RULE, value=case_id)])
        outcome = self.reason(body, media_type, site, case_id=case_id)
        created = self.site_store(site).replace(case_id, outcome.asserted, outcome.inferred)
        return Stored(case_id, created, outcome.answer)

    def delete(self, case_id: str, site: str) -> None:
        self.site_store(site).delete(_checked_id(case_id))

    def case_triples(self, case_id: str, site: str, inferred: bool = False) -> list[ox.Triple]:
        """A stored case as asserted, and with ``inferred`` its inferences too."""
        asserted, derived = self.site_store(site).read(_checked_id(case_id))
        return [*asserted, *derived] if inferred else asserted

    def case_json(self, case_id: str, site: str) -> dict[str, Any]:
        graph = Graph()
        for t in triples_from_ox(self.case_triples(case_id, site)):
            graph.add(t)
        return cases.to_json(graph, cases.case_iri(case_id, site), self.kb.contract)

    def stored_answer(self, case_id: str, site: str) -> dict[str, Any]:
        store = self.site_store(site)
        if not store.exists(_checked_id(case_id)):
            raise NotFound(f"no case {case_id!r}")
        return self.kb.answers.answer(store.case_graphs(case_id), cases.case_iri(case_id, site), case_id)

    def list_cases(self, site: str, category: str | None, pathway: str | None, page: int,
                   per_page: int) -> tuple[list[str], int]:
        for name, value, kind in (("category", category, ESI.ResponseCategory),
                                  ("pathway", pathway, ESI.CarePathway)):
            if value is not None and self.kb.ontology.coded_term(value) not in self.kb.ontology.members(kind):
                raise InvalidCase([Violation(name, f"{value!r} is not a {name} code; see GET /vocabulary",
                                                   value=value)])
        return self.site_store(site).case_ids(category, pathway, per_page, (page - 1) * per_page)

    # -- curators -------------------------------------------------------------------------------

    @property
    def vocabulary(self) -> dict[str, dict[str, list[dict[str, str]]]]:
        return self.kb.vocabulary

    def health(self) -> dict[str, Any]:
        """Answered without this process's knowledge base while it loads: the workers say the version."""
        kb = self._kb
        if kb is None and self.pool is not None and self.pool.version is not None:
            return {"status": "ok", "ontology_version": self.pool.version, "engine": self.settings.engine,
                    "engines": sorted(ENGINES)}
        kb = kb or self.kb
        return {"status": "ok", "ontology_version": kb.version, "engine": kb.reasoner.engine,
                "engines": sorted(ENGINES)}

    # -- plumbing ----------------------------------------------------------------------------------

    def site_store(self, site: str) -> SiteStore:
        """The site's dataset, holding the current ontology version (checked once per site and process)."""
        store = self.stores.site(site)
        if site not in self._current:
            with self._current_lock:
                if site not in self._current:
                    store.set_ontology(self.kb.version, self.kb.ontology.graph, self.kb.reasoner.tbox_closure)
                    self._current.add(site)
        return store

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.stores.close()


def _checked_id(case_id: str) -> str:
    if not cases.ID_PATTERN.match(case_id):
        raise NotFound(f"no case {case_id!r}")
    return case_id
