"""Where cases live: one Oxigraph dataset per site, each case in two named graphs.

A site's dataset holds

- ``<…/graph/ontology>``: the ontology as written, and ``<…/graph/ontology-closure>``:
  its OWL 2 RL closure, both replaced when the ontology version changes;
- for each case, ``<case IRI>``: the facts as asserted, and ``<case IRI/inferred>``:
  observations, conclusions, inferred types and derivations.

Keeping each site in its own dataset makes tenancy a property of the data, not of query
rewriting: a site's SPARQL query (``GRAPH ?g`` included) cannot see another site's cases.
Every write is one Oxigraph transaction: a case is stored with its inferences, or not at all.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import pyoxigraph as ox

from .cases import SITE_PATTERN, case_iri
from .errors import Conflict, NotFound
from .ontology import ESI, Triple
from .terms import Substitutions, from_ox, solutions, triples_to_ox

GRAPH_BASE = "https://w3id.org/esi-kg/graph/"
ONTOLOGY_GRAPH = ox.NamedNode(GRAPH_BASE + "ontology")
CLOSURE_GRAPH = ox.NamedNode(GRAPH_BASE + "ontology-closure")
_VERSION = ox.NamedNode(str(ESI.ontologyVersion))

#: Quads a site writes before its RocksDB memtables are flushed to disk (about 650 cases).
#: Oxigraph opens RocksDB with a 128 MB write buffer per column family, flushed only once two
#: are full, and no cap over all of them (``db_write_buffer_size=0``): writes go to 8 column
#: families, so a writing process held up to ~2 GB of memtables (1.3 GB after loading 20k cases,
#: 2.1 GB after 100k). Flushing this often keeps them under ~100 MB, at ~0.1-0.5 s a flush.
FLUSH_AFTER_QUADS = 50_000

#: What deleting a case is counted as towards FLUSH_AFTER_QUADS: a delete writes a tombstone per
#: index entry of each quad, but its quads are not counted (that would cost a read).
_TYPICAL_CASE_QUADS = 100


@dataclass(frozen=True)
class CaseGraphs:
    """The names of a case's two graphs."""

    asserted: ox.NamedNode
    inferred: ox.NamedNode

    @classmethod
    def of(cls, site: str, case_id: str) -> CaseGraphs:
        iri = str(case_iri(case_id, site))
        return cls(ox.NamedNode(iri), ox.NamedNode(iri + "/inferred"))


class SiteStore(Protocol):
    """The operations the service needs of one site's dataset."""

    def create(self, case_id: str, asserted: Iterable[ox.Triple], inferred: Iterable[ox.Triple]) -> None: ...

    def replace(self, case_id: str, asserted: Iterable[ox.Triple], inferred: Iterable[ox.Triple]) -> bool: ...

    def delete(self, case_id: str) -> None: ...

    def exists(self, case_id: str) -> bool: ...

    def read(self, case_id: str) -> tuple[list[Triple], list[Triple]]: ...

    def set_ontology(self, version: str, ontology: Iterable[Triple], closure: Iterable[Triple]) -> None: ...

    def case_ids(self, category: str | None, pathway: str | None, limit: int, offset: int) -> tuple[list[str], int]: ...

    def query(self, sparql: str, **options: Any) -> Any: ...


class OxigraphSite:
    """One site's dataset in an Oxigraph store (on disk, or in memory when ``path`` is None)."""

    def __init__(self, site: str, path: Path | None) -> None:
        self.site = site
        self.path = path
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
        self.store = ox.Store(str(path)) if path is not None else ox.Store()
        self._write = threading.Lock()
        self.flush_after = FLUSH_AFTER_QUADS
        self._unflushed = 0

    @contextmanager
    def _writing(self, quads: int) -> Iterator[None]:
        """Hold the write lock for one transaction of about ``quads`` quads; then flush if due.

        The flush runs after the lock is released, between transactions: it never splits one, and
        other writers need not wait for it. Nothing is counted when the transaction fails.
        """
        with self._write:
            yield
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

    def create(self, case_id: str, asserted: Iterable[ox.Triple], inferred: Iterable[ox.Triple]) -> None:
        graphs = CaseGraphs.of(self.site, case_id)
        quads = [*_in(asserted, graphs.asserted), *_in(inferred, graphs.inferred)]
        with self._writing(len(quads)):
            if self.store.contains_named_graph(graphs.asserted):
                raise Conflict(f"case {case_id!r} exists already; use PUT to replace it")
            self.store.extend(quads)

    def load_nquads(self, data: bytes) -> None:
        """Store N-Quads in one transaction, all or none (``kgservice load``: a batch of whole cases).

        Parsed by Oxigraph without IRI checks (``lenient``): the loader's own workers wrote
        them with Oxigraph's serializer from terms already checked."""
        with self._writing(data.count(b"\n")):
            self.store.load(data, format=ox.RdfFormat.N_QUADS, lenient=True)

    def replace(self, case_id: str, asserted: Iterable[ox.Triple], inferred: Iterable[ox.Triple]) -> bool:
        """Store or replace a case; True when it did not exist before."""
        graphs = CaseGraphs.of(self.site, case_id)
        quads = [*_in(asserted, graphs.asserted), *_in(inferred, graphs.inferred)]
        with self._writing(2 * len(quads)):  # the old version's quads are deleted: about as many
            created = not self.store.contains_named_graph(graphs.asserted)
            self.store.update(
                f"DROP SILENT GRAPH {graphs.asserted} ; DROP SILENT GRAPH {graphs.inferred} ; " + _insert_data(quads)
            )
        return created

    def delete(self, case_id: str) -> None:
        graphs = CaseGraphs.of(self.site, case_id)
        with self._writing(_TYPICAL_CASE_QUADS):
            if not self.store.contains_named_graph(graphs.asserted):
                raise NotFound(f"no case {case_id!r}")
            self.store.update(f"DROP SILENT GRAPH {graphs.asserted} ; DROP SILENT GRAPH {graphs.inferred}")

    def read(self, case_id: str) -> tuple[list[Triple], list[Triple]]:
        graphs = CaseGraphs.of(self.site, case_id)
        if not self.store.contains_named_graph(graphs.asserted):
            raise NotFound(f"no case {case_id!r}")
        return self._triples(graphs.asserted), self._triples(graphs.inferred)

    def _triples(self, graph: ox.NamedNode) -> list[Triple]:
        return [(from_ox(q.subject), from_ox(q.predicate), from_ox(q.object))
                for q in self.store.quads_for_pattern(None, None, None, graph)]

    def case_ids(self, category: str | None = None, pathway: str | None = None, limit: int = 50,
                 offset: int = 0) -> tuple[list[str], int]:
        """Ids of stored cases, optionally only those with a category and/or a pathway, one page."""
        binds: Substitutions = {}
        if category is not None:
            binds[ox.Variable("category")] = ox.NamedNode(str(ESI[category]))
        if pathway is not None:
            binds[ox.Variable("pathway")] = ox.NamedNode(str(ESI[pathway]))
        # Paged and counted by Oxigraph, in the store's own (index) order, stable while the store
        # does not change. Sorting every id, in Python or by ORDER BY, cost 1.2 s and 5 s at 100k
        # cases; a page in index order costs milliseconds, the count tens of milliseconds.
        pattern = "GRAPH ?g { ?case esi:hasResponseCategory ?category ." + (
            " ?case esi:hasApplicablePathway ?pathway ." if pathway is not None else "") + " }"
        projected = " ".join(f"?{v.value}" for v in binds)
        page = (f"PREFIX esi: <{ESI}> SELECT ?case {projected} WHERE {{ {pattern} }} "
                f"LIMIT {int(limit)} OFFSET {int(offset)}")
        count = (f"PREFIX esi: <{ESI}> SELECT (COUNT(*) AS ?n) {projected} WHERE {{ {pattern} }}"
                 + (f" GROUP BY {projected}" if projected else ""))
        ids = [_tail(row["case"].value) for row in solutions(self.store.query(page, substitutions=binds))]
        counted = next(iter(solutions(self.store.query(count, substitutions=binds))), None)
        total = int(counted["n"].value) if counted is not None and counted["n"] is not None else 0
        return ids, total

    def query(self, sparql: str, **options: Any) -> Any:
        return self.store.query(sparql, **options)

    def flush(self) -> None:
        """Write the memtables to disk, then hand the memory they held back to the OS."""
        if self.path is not None:
            self.store.flush()
            release_freed_memory()


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return cast(Callable[[int], int], trim)


_malloc_trim = _find_malloc_trim()


def release_freed_memory() -> None:
    """Return the heap pages free()d by RocksDB to the OS (glibc's ``malloc_trim``).

    After a flush glibc keeps the freed memtables' pages in its arenas: the process's RSS stays at
    its high-water mark (1.2 GB after 20k cases, 40 MB once trimmed). The peak is bounded by the
    flushes; this brings an idle server back down to its live memory.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def _in(triples: Iterable[ox.Triple], graph: ox.NamedNode) -> Iterator[ox.Quad]:
    return (ox.Quad(t.subject, t.predicate, t.object, graph) for t in triples)


def _tail(iri: str) -> str:
    return iri.rsplit("/", 1)[-1]


def _insert_data(quads: Sequence[ox.Quad]) -> str:
    by_graph: dict[str, list[str]] = {}
    for q in quads:
        by_graph.setdefault(str(q.graph_name), []).append(f"{q.subject} {q.predicate} {q.object} .")
    body = " ".join(f"GRAPH {g} {{ {' '.join(lines)} }}" for g, lines in by_graph.items())
    return f"INSERT DATA {{ {body} }}"


class Stores:
    """The datasets of every site, opened on first use (``data_dir/sites/<site>``)."""

    def __init__(self, data_dir: Path | None) -> None:
        self.data_dir = data_dir
        self._sites: dict[str, OxigraphSite] = {}
        self._open = threading.Lock()

    def site(self, site: str) -> OxigraphSite:
        if not SITE_PATTERN.match(site):
            raise NotFound(f"no site {site!r}")
        with self._open:
            found = self._sites.get(site)
            if found is None:
                path = self.data_dir / "sites" / site if self.data_dir is not None else None
                found = self._sites[site] = OxigraphSite(site, path)
            return found

    def close(self) -> None:
        with self._open:
            for store in self._sites.values():
                store.flush()
            self._sites.clear()
