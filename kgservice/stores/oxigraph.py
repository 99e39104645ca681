"""The embedded store: one Oxigraph (RocksDB) dataset per site, under ``data_dir/sites/<site>``.

Implements :class:`~kgservice.stores.base.SiteStore`. Every write is one Oxigraph transaction: a
case is stored with its inferences, or not at all. This module is the only one that opens
pyoxigraph's ``Store`` for a site.
"""

from __future__ import annotations

import io
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import pyoxigraph as ox

from ..core.cases import SITE_PATTERN
from ..core.ontology import ESI
from ..core.terms import GraphView, Substitutions, Triple, solutions, triples_to_ox
from ..errors import Conflict, NotFound
from ..isolation import no_fork
from ..querypool import QueryPool
from ..queryrun import Answer, QueryLimits, QueryRun, execute, warm_up
from .base import CLOSURE_GRAPH, ONTOLOGY_GRAPH, CaseGraphs, Reinferred, list_pattern
from .memory import release_freed_memory

_VERSION = ox.NamedNode(str(ESI.ontologyVersion))
_CATEGORY = ox.NamedNode(str(ESI.hasResponseCategory))
_PATHWAY = ox.NamedNode(str(ESI.hasApplicablePathway))

#: Counts of listed cases kept per site, one per filter (category, pathway) asked for.
MAX_KEPT_COUNTS = 512
#: Each case (the subject of its own asserted graph) with the version in its inferred graph.
_CASE_VERSIONS = f"""PREFIX esi: <{ESI}>
SELECT ?case ?version WHERE {{
  GRAPH ?case {{ ?case a esi:PatientCase }}
  OPTIONAL {{ GRAPH ?inferred {{ ?case esi:ontologyVersion ?version }} }}
}}"""

#: Quads a site writes before its RocksDB memtables are flushed to disk (about 650 cases).
#: Oxigraph opens RocksDB with a 128 MB write buffer per column family, flushed only once two
#: are full, and no cap over all of them (``db_write_buffer_size=0``): writes go to 8 column
#: families, so a writing process held up to ~2 GB of memtables (1.3 GB after loading 20k cases,
#: 2.1 GB after 100k). Flushing this often keeps them under ~100 MB, at ~0.1-0.5 s a flush.
FLUSH_AFTER_QUADS = 50_000

#: Files a killed load leaves in a site's directory: the bulk loader's sorted files while it
#: writes them (``bulk-<random>.sst``; RocksDB moves them into the store when it ingests them) and
#: ``kgservice load``'s spool of cases reasoned but not stored (``spool-<random>.nq``). Only the
#: process holding the store's lock writes either, so any found when it is opened are a killed load's.
_UNFINISHED_LOAD_FILES = ("bulk-*.sst", "spool-*.nq")

#: What deleting a case is counted as towards FLUSH_AFTER_QUADS: a delete writes a tombstone per
#: index entry of each quad, but its quads are not counted (that would cost a read).
_TYPICAL_CASE_QUADS = 100


class OxigraphSite:
    """One site's dataset in an Oxigraph store (on disk, or in memory when ``path`` is None)."""

    def __init__(self, site: str, path: Path | None, read_only: bool = False) -> None:
        """``read_only`` opens a snapshot without the write lock: it works while a running
        service holds the store (``kgservice impact``), and every write fails."""
        self.site = site
        self.path = path
        self.read_only = read_only and path is not None
        if path is not None and not self.read_only:
            path.mkdir(parents=True, exist_ok=True)
        self.store = (ox.Store.read_only(str(path)) if self.read_only else ox.Store(str(path))) \
            if path is not None else ox.Store()
        if path is not None and not self.read_only:  # opened for writing: no other process writes here
            for pattern in _UNFINISHED_LOAD_FILES:
                for unfinished in path.glob(pattern):
                    unfinished.unlink(missing_ok=True)
        self._write = threading.Lock()
        self.flush_after = FLUSH_AFTER_QUADS
        self._unflushed = 0
        self._writes = 0  # writes so far: a count made while one ran is not kept
        self._counts: dict[tuple[str | None, str | None], int] = {}
        me = weakref.ref(self)  # not self: the store is closed as soon as this object is dropped
        self._queries = QueryPool(  # a request is (QueryRun, QueryLimits)
            lambda request, started, emit: execute(_alive(me).store, request[0], request[1], started, emit),
            ready=lambda: warm_up(_alive(me).store))

    @contextmanager
    def _writing(self, quads: int) -> Iterator[None]:
        """Hold the write lock for one transaction of about ``quads`` quads; then flush if due.

        The flush runs after the lock is released, between transactions: it never splits one, and
        other writers need not wait for it. Nothing is counted when the transaction fails.
        """
        with self._write, no_fork():
            yield
            self._writes += 1
            self._unflushed += quads
            due = self._unflushed >= self.flush_after
            if due:
                self._unflushed = 0
        if due:
            self.flush()

    # -- ontology ----------------------------------------------------------------------

    def ontology_version(self) -> str | None:
        for quad in self.store.quads_for_pattern(ONTOLOGY_GRAPH, _VERSION, None, ONTOLOGY_GRAPH):
            return str(cast(ox.Literal, quad.object).value)  # the version literal set_ontology writes
        return None

    def set_ontology(self, version: str, ontology: Iterable[Triple], closure: Iterable[Triple]) -> None:
        """Replace the ontology graphs when the version changed (one transaction)."""
        if self.ontology_version() == version:
            return
        quads = [
            *triples_to_ox(ontology, ONTOLOGY_GRAPH),
            *triples_to_ox(closure, CLOSURE_GRAPH),
            ox.Quad(ONTOLOGY_GRAPH, _VERSION, ox.Literal(version), ONTOLOGY_GRAPH),
        ]
        with self._writing(len(quads)):
            self.store.update(
                f"DROP SILENT GRAPH {ONTOLOGY_GRAPH} ; DROP SILENT GRAPH {CLOSURE_GRAPH} ; "
                + _insert_data(quads)
            )

    # -- cases ---------------------------------------------------------------------------

    def exists(self, case_id: str) -> bool:
        return self.store.contains_named_graph(CaseGraphs.of(self.site, case_id).asserted)

    def create(self, case_id: str, asserted: Sequence[ox.Triple], inferred: Sequence[ox.Triple]) -> None:
        graphs = CaseGraphs.of(self.site, case_id)
        quads = [*_in(asserted, graphs.asserted), *_in(inferred, graphs.inferred)]
        with self._writing(len(quads)):
            if self.store.contains_named_graph(graphs.asserted):
                raise Conflict(f"case {case_id!r} exists already; use PUT to replace it")
            self.store.extend(quads)
            self._recount(None, _facets(graphs.asserted, inferred))

    def load_nquads(self, data: bytes | Path, cases: int) -> None:
        """Store N-Quads (bytes, or a file) all or none (``kgservice load``: whole cases).

        Parsed by Oxigraph without IRI checks (``lenient``): the loader's own workers wrote
        them with Oxigraph's serializer from terms already checked. On disk they go through
        Oxigraph's bulk loader: it writes sorted files (one set per index and per million quads)
        and hands all of them to RocksDB in one ingestion at the end, which is atomic over all
        the indexes, at half the CPU of a transaction (which writes every index entry through
        the memtables and the log). A kill -9 leaves either all of it or none, and maybe
        unfinished files, removed when the store is next opened (pyoxigraph 0.5.13: a load of
        2.5M quads killed at 11 moments up to its last file's ingestion left no quad, every time;
        also tested by killing loads). Its memory grows with the input (about 0.8 KB a quad),
        which the loader bounds. In memory, one transaction.
        """
        quads = data.count(b"\n") if isinstance(data, bytes) else 0  # a spool: written through no memtable
        source = {"input": data} if isinstance(data, bytes) else {"path": str(data)}
        with self._writing(quads):
            if self.path is not None:
                self.store.bulk_load(**source, format=ox.RdfFormat.N_QUADS, lenient=True)
            else:
                self.store.load(**source, format=ox.RdfFormat.N_QUADS, lenient=True)
            self._counts.clear()  # counted again when next asked for

    def spool_dir(self) -> Path | None:
        """Where ``kgservice load`` keeps the cases it has reasoned and not stored yet: the site's
        own directory, cleared of a killed load's spool whenever the store is opened for writing."""
        return self.path if not self.read_only else None

    def replace(self, case_id: str, asserted: Sequence[ox.Triple], inferred: Sequence[ox.Triple]) -> bool:
        """Store or replace a case; True when it did not exist before."""
        graphs = CaseGraphs.of(self.site, case_id)
        quads = [*_in(asserted, graphs.asserted), *_in(inferred, graphs.inferred)]
        with self._writing(2 * len(quads)):  # the old version's quads are deleted: about as many
            created = not self.store.contains_named_graph(graphs.asserted)
            before = None if created else self._stored_facets(graphs)
            self.store.update(
                f"DROP SILENT GRAPH {graphs.asserted} ; DROP SILENT GRAPH {graphs.inferred} ; " + _insert_data(quads)
            )
            self._recount(before, _facets(graphs.asserted, inferred))
        return created

    def delete(self, case_id: str) -> None:
        graphs = CaseGraphs.of(self.site, case_id)
        with self._writing(_TYPICAL_CASE_QUADS):
            if not self.store.contains_named_graph(graphs.asserted):
                raise NotFound(f"no case {case_id!r}")
            before = self._stored_facets(graphs)
            self.store.update(f"DROP SILENT GRAPH {graphs.asserted} ; DROP SILENT GRAPH {graphs.inferred}")
            self._recount(before, None)

    def read(self, case_id: str) -> tuple[list[ox.Triple], list[ox.Triple]]:
        graphs = CaseGraphs.of(self.site, case_id)
        if not self.store.contains_named_graph(graphs.asserted):
            raise NotFound(f"no case {case_id!r}")
        return self._triples(graphs.asserted), self._triples(graphs.inferred)

    def _triples(self, graph: ox.NamedNode) -> list[ox.Triple]:
        return [q.triple for q in self.store.quads_for_pattern(None, None, None, graph)]

    def case_graphs(self, case_id: str) -> GraphView:
        graphs = CaseGraphs.of(self.site, case_id)
        return GraphView(self.store, [graphs.asserted, graphs.inferred])

    # -- listing, and counts kept per site ------------------------------------------------------
    #
    # GET /cases pages in index order (milliseconds at 100k cases), but counting every match
    # for each page cost tens of milliseconds and grew with the store. Each count is made once
    # and kept exact by every later write (under the write lock): a case adds or removes one
    # solution per category it has, for the filters its pathways match. A count made while a
    # write ran is not kept.

    def case_ids(self, category: str | None = None, pathway: str | None = None, limit: int = 50,
                 offset: int = 0) -> tuple[list[str], int]:
        """Ids of stored cases, optionally only those with a category and/or a pathway, one page."""
        # Paged by Oxigraph, in the store's own (index) order, stable while the store does not
        # change. Sorting every id, in Python or by ORDER BY, cost 1.2 s and 5 s at 100k cases;
        # a page in index order costs milliseconds.
        pattern, projected, binds = list_pattern(category, pathway)
        page = (f"PREFIX esi: <{ESI}> SELECT ?case {projected} WHERE {{ {pattern} }} "
                f"LIMIT {int(limit)} OFFSET {int(offset)}")
        ids = [_tail(row["case"].value) for row in solutions(self.store.query(page, substitutions=binds))]
        return ids, self.count(category, pathway)

    def count(self, category: str | None = None, pathway: str | None = None) -> int:
        """How many solutions :meth:`case_ids` pages through with these filters (one per case)."""
        key = (category, pathway)
        if (kept := self._counts.get(key)) is not None:
            return kept
        writes = self._writes
        pattern, projected, binds = list_pattern(category, pathway)
        query = (f"PREFIX esi: <{ESI}> SELECT (COUNT(*) AS ?n) {projected} WHERE {{ {pattern} }}"
                 + (f" GROUP BY {projected}" if projected else ""))
        counted = next(iter(solutions(self.store.query(query, substitutions=binds))), None)
        total = int(counted["n"].value) if counted is not None and counted["n"] is not None else 0
        with self._write:
            if self._writes == writes:
                if len(self._counts) >= MAX_KEPT_COUNTS:
                    self._counts.clear()
                self._counts[key] = total
        return total

    def _stored_facets(self, graphs: CaseGraphs) -> _Facets | None:
        if not self._counts:
            return None
        return _facets(graphs.asserted, [q.triple for p in (_CATEGORY, _PATHWAY) for q in
                                         self.store.quads_for_pattern(graphs.asserted, p, None, graphs.inferred)])

    def _recount(self, before: _Facets | None, after: _Facets | None) -> None:
        for key in self._counts:
            self._counts[key] += _matches(after, key) - _matches(before, key)

    # -- queries ------------------------------------------------------------------------------

    def select(self, query: str, substitutions: Substitutions | None = None) -> ox.QuerySolutions:
        return solutions(self.store.query(query, substitutions=substitutions or {}, use_default_graph_as_union=True))

    def run_limited(self, run: QueryRun, limits: QueryLimits) -> Answer:
        """In a child process forked from this one, which reads the open store and is killed at the
        time or memory limit; a warm one when one is ready (:mod:`kgservice.querypool`)."""
        forked = self._queries.run((run, limits), limits.timeout_s, max_bytes=limits.max_bytes,
                                   max_memory=limits.max_memory_bytes)
        return Answer(forked.value, forked.body)

    def stop_queries(self) -> None:
        """Stop this store's warm query processes."""
        self._queries.close()

    # -- versions --------------------------------------------------------------------------

    def case_versions(self) -> list[tuple[str, str | None]]:
        """Every stored case's id with the ontology version it was reasoned with (None: not recorded).

        One query, in the store's own order: 0.3 s at 100k cases."""
        rows = self.store.query(_CASE_VERSIONS, use_default_graph_as_union=False)
        return [(_tail(row["case"].value), row["version"].value if row["version"] is not None else None)
                for row in solutions(rows)]

    def export(self, case_ids: Sequence[str], inferred: bool = True) -> bytes:
        """The asserted (and inferred) graphs of these cases as N-Quads, serialized by Oxigraph."""
        out = io.BytesIO()
        for case_id in case_ids:
            graphs = CaseGraphs.of(self.site, case_id)
            for graph in (graphs.asserted, graphs.inferred) if inferred else (graphs.asserted,):
                ox.serialize(self.store.quads_for_pattern(None, None, None, graph), out, ox.RdfFormat.N_QUADS)
        return out.getvalue()

    def reinfer(self, updates: Sequence[Reinferred]) -> list[str]:
        """Switch re-reasoned cases to their new inferred graphs, all in one transaction.

        A case is switched only if it still has the version it was read at: one replaced or
        deleted meanwhile keeps what its writer stored. The asserted graphs are left as they
        are. Returns the ids switched."""
        quads: list[ox.Quad] = []
        drops: list[str] = []
        switched: list[str] = []
        recount: list[tuple[_Facets | None, _Facets]] = []
        with self._writing(2 * sum(len(u.inferred) for u in updates)):
            for update in updates:
                graphs = CaseGraphs.of(self.site, update.case_id)
                if not self.store.contains_named_graph(graphs.asserted) or \
                        self._version(graphs) != update.read_at:
                    continue
                drops.append(f"DROP SILENT GRAPH {graphs.inferred}")
                quads.extend(_in(update.inferred, graphs.inferred))
                switched.append(update.case_id)
                recount.append((self._stored_facets(graphs), _facets(graphs.asserted, update.inferred)))
            if switched:
                self.store.update(" ; ".join([*drops, _insert_data(quads)]))
                for before, after in recount:  # the kept counts of GET /cases follow the new answers
                    self._recount(before, after)
        return switched

    def _version(self, graphs: CaseGraphs) -> str | None:
        for quad in self.store.quads_for_pattern(graphs.asserted, _VERSION, None, graphs.inferred):
            return str(cast(ox.Literal, quad.object).value)
        return None

    def flush(self) -> None:
        """Write the memtables to disk, then hand the memory they held back to the OS."""
        if self.path is not None and not self.read_only:
            with no_fork():
                self.store.flush()
            release_freed_memory()

    def compact(self) -> None:
        """Compact the on-disk store (RocksDB), e.g. after a bulk load, with no query child forked meanwhile."""
        if self.path is not None and not self.read_only:
            with no_fork():
                self.store.optimize()


#: A case's categories and pathways (codes), as :meth:`OxigraphSite.count` counts them.
_Facets = tuple[list[str], set[str]]


def _facets(case: ox.NamedNode, inferred: Iterable[ox.Triple]) -> _Facets:
    categories: list[str] = []
    pathways: set[str] = set()
    for t in inferred:
        if t.subject == case and isinstance(t.object, ox.NamedNode):
            if t.predicate == _CATEGORY:
                categories.append(t.object.value.removeprefix(str(ESI)))
            elif t.predicate == _PATHWAY:
                pathways.add(t.object.value.removeprefix(str(ESI)))
    return categories, pathways


def _matches(facets: _Facets | None, key: tuple[str | None, str | None]) -> int:
    """The solutions a case adds to the count with these filters: one per matching category."""
    if facets is None:
        return 0
    categories, pathways = facets
    category, pathway = key
    if pathway is not None and pathway not in pathways:
        return 0
    return sum(1 for c in categories if category is None or c == category)


def _in(triples: Iterable[ox.Triple], graph: ox.NamedNode) -> Iterator[ox.Quad]:
    return (ox.Quad(t.subject, t.predicate, t.object, graph) for t in triples)


def _alive(site: weakref.ref[OxigraphSite]) -> OxigraphSite:
    found = site()
    if found is None:
        raise RuntimeError("the store was closed")
    return found


def _tail(iri: str) -> str:
    return iri.rsplit("/", 1)[-1]


def _insert_data(quads: Sequence[ox.Quad]) -> str:
    by_graph: dict[str, list[str]] = {}
    for q in quads:
        by_graph.setdefault(str(q.graph_name), []).append(f"{q.subject} {q.predicate} {q.object} .")
    body = " ".join(f"GRAPH {g} {{ {' '.join(lines)} }}" for g, lines in by_graph.items())
    return f"INSERT DATA {{ {body} }}"


class Stores:
    """The Oxigraph datasets of every site, opened on first use (``data_dir/sites/<site>``)."""

    def __init__(self, data_dir: Path | None, read_only: bool = False) -> None:
        self.data_dir = data_dir
        self.read_only = read_only
        self._sites: dict[str, OxigraphSite] = {}
        self._open = threading.Lock()

    def site(self, site: str) -> OxigraphSite:
        if not SITE_PATTERN.match(site):
            raise NotFound(f"no site {site!r}")
        with self._open:
            found = self._sites.get(site)
            if found is None:
                path = self.data_dir / "sites" / site if self.data_dir is not None else None
                if self.read_only and (path is None or not path.is_dir()):
                    raise NotFound(f"no site {site!r}")
                found = self._sites[site] = OxigraphSite(site, path, self.read_only)
            return found

    def names(self) -> list[str]:
        """The sites that have a dataset (on disk, or opened in memory)."""
        on_disk = self.data_dir / "sites" if self.data_dir is not None else None
        found = {p.name for p in on_disk.iterdir() if p.is_dir() and SITE_PATTERN.match(p.name)} \
            if on_disk is not None and on_disk.is_dir() else set()
        return sorted(found | set(self._sites))

    def close(self) -> None:
        with self._open:
            for store in self._sites.values():
                store.stop_queries()
                store.flush()
            self._sites.clear()
