"""``kgservice reason --stale``: re-reason the stored cases that an older ontology version answered.

Every stored case's inferred graph names the version it was reasoned with
(``<case> esi:ontologyVersion "1.1.0+<digest>"``). A case whose version is not the running
one is *stale*: the API says so, and this module brings it up to date. The stale cases are
listed once, read from the store in batches (their asserted graphs, as N-Quads), validated and
reasoned by one process per core, and each batch is switched in one transaction. A case is
switched only if it still has the version it was read at, so a crash (even ``kill -9``) loses
nothing and a rerun carries on where it stopped: what was switched is no longer stale.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import pyoxigraph as ox
from rdflib import URIRef

from ..batches import Progress, chunked, map_batches
from ..config import Settings
from ..core.cases import CaseGraph, case_id_of
from ..core.contract import Contract
from ..core.kb import KnowledgeBase
from ..core.terms import Triple, serialized, triple_from_ox, triple_to_ox
from ..errors import InvalidCase
from ..stores.base import Reinferred, SiteStore, open_stores

Batch = tuple[str, bytes]  # (site, the asserted graphs of some cases as N-Quads)


@dataclass
class SiteUpgrade:
    site: str
    stale: int = 0
    switched: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)  # no longer valid under the new shapes

    def as_json(self) -> dict[str, Any]:
        return {"site": self.site, "stale": self.stale, "switched": self.switched,
                "rejected": len(self.rejected), "rejections": self.rejections_shown}

    @property
    def rejections_shown(self) -> list[dict[str, Any]]:
        return self.rejected[:100]


def stale_cases(store: SiteStore, version: str) -> list[tuple[str, str | None]]:
    """The site's cases not reasoned with ``version``, each with the version it was (None: unknown)."""
    return [(case_id, seen) for case_id, seen in store.case_versions() if seen != version]


def cases_from_nquads(data: bytes, contract: Contract) -> Iterator[CaseGraph]:
    """The cases whose asserted graphs ``data`` holds (each graph is named by its case's IRI;
    inferred graphs, named ``<case IRI>/inferred``, are left out)."""
    graphs: dict[str, dict[Triple, None]] = {}
    for quad in ox.parse(data, format=ox.RdfFormat.N_QUADS):
        name = quad.graph_name
        if not isinstance(name, ox.NamedNode) or name.value.endswith("/inferred"):
            continue
        graphs.setdefault(name.value, {})[triple_from_ox(quad)] = None
    for iri, statements in graphs.items():
        yield CaseGraph(iri=URIRef(iri), id=case_id_of(URIRef(iri)), statements=statements, contract=contract)


# -- worker side -------------------------------------------------------------------------------

_kb: KnowledgeBase | None = None


def _init_worker(settings: Settings) -> None:
    global _kb
    _kb = KnowledgeBase.from_settings(settings)


def reason_stored(batch: Batch) -> list[tuple[str, bytes | dict[str, Any]]]:
    """For each case of the batch: (id, its new inferred graph as N-Triples) or (id, its problem)."""
    assert _kb is not None, "the worker was not initialised"
    _site, data = batch
    read = list(cases_from_nquads(data, _kb.contract))
    out: list[tuple[str, bytes | dict[str, Any]]] = []
    valid = []
    for case, problems in zip(read, _kb.check_many(read), strict=True):
        if problems:
            out.append((case.id, InvalidCase(problems).problem()))
        else:
            valid.append(case)
    for case, reasoned in zip(valid, _kb.reason_valid(valid, answers=False), strict=True):
        body = serialized((triple_to_ox(t) for t in reasoned.inferred), format=ox.RdfFormat.N_TRIPLES)
        out.append((case.id, body))
    return out


# -- main side ---------------------------------------------------------------------------------


def reason_stale(settings: Settings, sites: Sequence[str] | None = None, batch_size: int = 200,
                 workers: int | None = None, everything: bool = False,
                 progress: TextIO | None = sys.stderr, scheduler: str | None = None) -> list[SiteUpgrade]:
    """Re-reason every stale case of ``sites`` (default: all) with the ontology of ``settings``.

    ``everything`` re-reasons every case, stale or not."""
    kb = KnowledgeBase.from_settings(settings)
    stores = open_stores(settings)
    n_workers = workers if workers is not None else (settings.reasoning_workers or 2)
    try:
        results = []
        for site in sites if sites is not None else stores.names():
            store = stores.site(site)
            store.set_ontology(kb.version, kb.ontology.graph, kb.reasoner.tbox_closure)
            todo = store.case_versions() if everything else stale_cases(store, kb.version)
            results.append(_upgrade_site(settings, store, site, todo, batch_size, n_workers, progress,
                                         scheduler))
        return results
    finally:
        stores.close()


def _upgrade_site(settings: Settings, store: SiteStore, site: str, todo: list[tuple[str, str | None]],
                  batch_size: int, workers: int, progress: TextIO | None,
                  scheduler: str | None = None) -> SiteUpgrade:
    summary = SiteUpgrade(site, stale=len(todo))
    if not todo:
        return summary
    read_at = dict(todo)
    bar = Progress(len(todo), f"{site}: re-reasoned", progress)

    def batches() -> Iterable[Batch]:
        for ids in chunked([case_id for case_id, _ in todo], max(1, batch_size)):
            yield site, store.export(ids, inferred=False)

    for results in map_batches(reason_stored, batches(), workers, _init_worker, (settings,), scheduler=scheduler):
        updates = []
        for case_id, outcome in results:
            if isinstance(outcome, dict):
                summary.rejected.append({"id": case_id, "problem": outcome})
                continue
            triples = [q.triple for q in ox.parse(outcome, format=ox.RdfFormat.N_TRIPLES)]
            updates.append(Reinferred(case_id, read_at[case_id], triples))
        summary.switched += len(store.reinfer(updates))  # one transaction per batch
        bar.advance(len(results))
    bar.finish()
    return summary
