"""The store seam: what the service, the loader and the query endpoints need of a site's dataset.

A site's dataset holds

- ``<…/graph/ontology>``: the ontology as written, and ``<…/graph/ontology-closure>``:
  its OWL 2 RL closure, both replaced when the ontology version changes;
- for each case, ``<case IRI>``: the facts as asserted, and ``<case IRI/inferred>``:
  observations, conclusions, inferred types and derivations.

Keeping each site in its own dataset makes tenancy a property of the data, not of query
rewriting: a site's SPARQL query (``GRAPH ?g`` included) cannot see another site's cases.
Every case write is all or nothing. :class:`SiteStore` is the seam: nothing outside
``kgservice.stores`` opens a store. :mod:`.oxigraph` implements it on an embedded store,
:mod:`.remote` on a SPARQL 1.1 store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyoxigraph as ox

from ..core.cases import case_iri
from ..core.ontology import ESI
from ..core.terms import Selects, Substitutions, Triple
from ..queryrun import Answer, QueryLimits, QueryRun

GRAPH_BASE = "https://w3id.org/esi-kg/graph/"


ONTOLOGY_GRAPH = ox.NamedNode(GRAPH_BASE + "ontology")


CLOSURE_GRAPH = ox.NamedNode(GRAPH_BASE + "ontology-closure")


@dataclass(frozen=True)
class CaseGraphs:
    """The names of a case's two graphs."""

    asserted: ox.NamedNode
    inferred: ox.NamedNode

    @classmethod
    def of(cls, site: str, case_id: str) -> CaseGraphs:
        iri = str(case_iri(case_id, site))
        return cls(ox.NamedNode(iri), ox.NamedNode(iri + "/inferred"))


@dataclass(frozen=True)
class QueryScope:
    """What a query sees on the remote store (:mod:`kgservice.stores.sitequery`): the protocol's dataset (IRIs),
    and values bound by the engine.

    No default graph named: the default graph is the union of all graphs. No named graph
    named: ``GRAPH`` reaches every graph of the site.
    """

    default_graphs: tuple[str, ...] = ()
    named_graphs: tuple[str, ...] = ()
    substitutions: Substitutions = field(default_factory=dict)


class SiteStore(Protocol):
    """One site's dataset: every operation the service, the loader and the query endpoints need.

    Case writes are all-or-nothing; a case's graphs are triples of pyoxigraph terms (which a
    remote store serializes as N-Triples). Errors are the domain's: :class:`Conflict`,
    :class:`NotFound`, :class:`QueryError`, and ``TimeLimit`` for a query past its limit.
    """

    site: str

    def ontology_version(self) -> str | None: ...

    def set_ontology(self, version: str, ontology: Iterable[Triple], closure: Iterable[Triple]) -> None:
        """Replace the ontology graphs unless they hold ``version`` already."""

    def create(self, case_id: str, asserted: Sequence[ox.Triple], inferred: Sequence[ox.Triple]) -> None:
        """Store a new case; :class:`Conflict` if it exists."""

    def replace(self, case_id: str, asserted: Sequence[ox.Triple], inferred: Sequence[ox.Triple]) -> bool:
        """Store or replace a case; True when it did not exist before."""

    def delete(self, case_id: str) -> None:
        """Remove a case's two graphs; :class:`NotFound` if there is no such case."""

    def exists(self, case_id: str) -> bool: ...

    def read(self, case_id: str) -> tuple[list[ox.Triple], list[ox.Triple]]:
        """The asserted and the inferred graph of a case; :class:`NotFound` if there is none."""

    def load_nquads(self, data: bytes | Path, cases: int) -> None:
        """Store ``cases`` whole cases given as N-Quads (bytes, or a file) in the store's graph names,
        all or none."""

    def case_ids(self, category: str | None, pathway: str | None, limit: int, offset: int) -> tuple[list[str], int]:
        """One page of the ids of cases with a category (and the pathway, if given), and how many match."""

    def case_graphs(self, case_id: str) -> Selects:
        """SELECTs over one case's two graphs (the stored answer is read so)."""

    def select(self, query: str, substitutions: Substitutions | None = None) -> ox.QuerySolutions:
        """A SELECT over the whole dataset (the union of its graphs), evaluated in this process."""

    def run_limited(self, run: QueryRun, limits: QueryLimits) -> Answer:
        """Run a caller's query on this site's dataset, and only on it, under ``limits``: its answer, serialized.

        The dataset is :meth:`QueryRun.options`'s (the union of the site's graphs unless the query or
        the protocol names one; a name the site does not hold is an empty graph, never fetched).
        Raises :class:`QueryError` if the query does not parse, ``NotAcceptable`` if the answer
        cannot be sent as asked, ``RowLimit``/``ResponseTooLarge``/``MemoryLimit`` past a limit,
        ``TimeLimit`` past the time limit and ``StoreBusy`` if the store cannot be read now."""

    def flush(self) -> None: ...

    # -- versions: what ``kgservice reason --stale`` and ``kgservice impact`` need -----------------

    def case_versions(self) -> list[tuple[str, str | None]]:
        """Every stored case's id with the ontology version that reasoned it (None: none recorded)."""

    def export(self, case_ids: Sequence[str], inferred: bool = True) -> bytes:
        """The asserted (and inferred) graphs of these cases as N-Quads, in the store's graph names."""

    def reinfer(self, updates: Sequence[Reinferred]) -> list[str]:
        """Give re-reasoned cases their new inferred graphs, all in one transaction, each only if
        it still has the version it was read at; the ids switched."""


@dataclass(frozen=True)
class Reinferred:
    """A stored case re-reasoned: its new inferred graph, for the version it was read at."""

    case_id: str
    read_at: str | None  # the ontology version the case had when it was read (None: none recorded)
    inferred: Sequence[ox.Triple]


class SiteStores(Protocol):
    """The datasets of every site, opened on first use."""

    def site(self, site: str) -> SiteStore: ...

    def names(self) -> list[str]:
        """The sites that have a dataset."""

    def close(self) -> None: ...


def list_pattern(category: str | None, pathway: str | None) -> tuple[str, str, Substitutions]:
    """The graph pattern of listed cases, its filter variables, and their values."""
    binds: Substitutions = {}
    if category is not None:
        binds[ox.Variable("category")] = ox.NamedNode(str(ESI[category]))
    if pathway is not None:
        binds[ox.Variable("pathway")] = ox.NamedNode(str(ESI[pathway]))
    pattern = "GRAPH ?g { ?case esi:hasResponseCategory ?category ." + (
        " ?case esi:hasApplicablePathway ?pathway ." if pathway is not None else "") + " }"
    return pattern, " ".join(f"?{v.value}" for v in binds), binds


def open_stores(settings: Any) -> SiteStores:
    """The sites' stores the settings choose: embedded Oxigraph (default) or a remote SPARQL store."""
    if settings.store == "sparql":
        from .remote import SparqlStores

        return SparqlStores(settings)
    from .oxigraph import Stores

    return Stores(settings.data_dir)
