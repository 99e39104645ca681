"""``kgservice load``: validate, reason and store many cases, in batches, on every core.

Cases are read as a stream (JSON lines, a JSON array, or a folder of such files) and reasoned
in batches by worker processes. Valid cases' N-Quads go to a spool file beside the store; once
it holds ``ingest_quads`` quads (and at the end) they are stored in one call of Oxigraph's bulk
loader, all or none: a case is stored with its inferences or not at all. Few large ingestions
cost far less than many small ones (RocksDB merges every ingestion into a growing store), and
the spool's size bounds the memory the bulk loader takes. A bad case is reported with its
problem and never stops the load; a case is counted loaded only once it is stored.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import pyoxigraph as ox

from .batches import chunked, map_batches
from .config import Settings
from .core.cases import DEFAULT_SITE, load_json
from .core.media import JSON
from .errors import ESIError, MalformedInput, Problem
from .stores.base import CaseGraphs, SiteStore, open_stores
from .stores.oxigraph import OxigraphSite

#: The loader flushes less often than the server. Its cases bypass the write buffers (Oxigraph's
#: bulk loader writes sorted files); what still goes through them (the ontology graphs) is
#: flushed then, and freed pages returned.
BULK_FLUSH_AFTER_QUADS = 200_000

#: Quads spooled before they are stored in one ingestion (about 5700 cases of ~88 quads). Oxigraph's
#: bulk loader holds about 0.8 KB a quad while it ingests (this bound: ~400 MB in the loader's main
#: process); fewer, larger ingestions cost less CPU (886k quads: 12.7 s of CPU in 50 calls, 9.6 s
#: in 5, 7.9 s in one).
INGEST_QUADS = 500_000

Item = tuple[int, Any]  # (position in the input, the case or a read error)


@dataclass
class Summary:
    loaded: int = 0
    rejected: int = 0
    seconds: float = 0.0
    rejections: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: dict[str, int | None] = field(default_factory=dict)
    cpu_s: dict[str, float | None] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "rejected": self.rejected, "seconds": round(self.seconds, 2),
                "cases_per_second": round(self.loaded / self.seconds, 1) if self.seconds else None,
                "peak_rss_mb": self.peak_rss_mb, "cpu_s": self.cpu_s, "rejections": self.rejections}


def peak_rss_mb() -> dict[str, int | None]:
    """The largest resident memory of this process so far and of its largest finished child (the
    local reasoning workers, once their pool has stopped; None when there was none), in MB."""
    import resource

    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"loader": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "largest_worker": child // 1024 if child else None}


def cpu_seconds() -> dict[str, float | None]:
    """The CPU time (user + system) of this process so far, all its threads, and of its finished
    children (the local reasoning workers, once their pool has stopped; None when there was none)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    child = children.ru_utime + children.ru_stime
    return {"loader": round(own.ru_utime + own.ru_stime, 2), "workers": round(child, 2) if child else None}


def read_items(path: Path) -> Iterator[Item]:
    """Cases from a file or folder, one at a time: a JSON line as its bytes (the worker decodes it:
    this process, which alone writes, decodes nothing), a JSON file's cases decoded, and a file
    that cannot be read as JSON as its error."""
    files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl")) if path.is_dir() else [path]
    position = 0
    for file in files:
        with file.open("rb") as handle:
            first = handle.read(1)
            while first and first.isspace():
                first = handle.read(1)
            handle.seek(0)
            if first == b"[" or (first == b"{" and file.suffix == ".json"):
                try:
                    data = load_json(handle.read())
                except MalformedInput as exc:
                    yield position, exc
                    position += 1
                    continue
                for item in data if isinstance(data, list) else [data]:
                    yield position, item
                    position += 1
            else:  # JSON lines: each is decoded by the worker that reasons it, not here
                for line in handle:
                    if line.strip():
                        yield position, line
                        position += 1


# -- worker side -----------------------------------------------------------------------------

_kb: Any = None


def _init_worker(settings: Settings, sandboxed: bool = True) -> None:
    global _kb
    from .core.kb import KnowledgeBase
    from .security import sandbox

    if sandboxed:  # a Dask worker is not: it must keep talking to its scheduler and peers
        sandbox.enter("a loader worker")  # it reasons over files only: it never needs the network

    _kb = KnowledgeBase.from_settings(settings)


def reason_batch(items: list[Item], site: str, kb: Any) -> list[tuple[int, str | None, Any]]:
    """For each item: (position, case id, problem JSON) or (position, case id, the case's N-Quads).

    The N-Quads hold the case's asserted and inferred graphs, named as the store names them,
    so that the loader writes a batch with one parse in Rust (no Python object per triple)."""
    results: list[tuple[int, str | None, Any]] = []
    readable = []
    for position, item in items:
        if isinstance(item, bytes):  # a JSON line, decoded here; its error is kept as JSON (no traceback)
            try:
                item = load_json(item)
            except MalformedInput as exc:
                results.append((position, None, exc.problem()))
                continue
        if isinstance(item, ESIError):  # the file could not be read as JSON
            results.append((position, None, item.problem()))
        else:
            readable.append((position, item))
    outcomes = kb.process([item for _, item in readable], JSON, site, answers=False, graphs=True)
    for (position, _), outcome in zip(readable, outcomes, strict=True):
        if isinstance(outcome, Problem):
            results.append((position, outcome.case_id, outcome.problem()))
            continue
        graphs = CaseGraphs.of(site, outcome.case_id)
        results.append((position, outcome.case_id,
                        in_graph(outcome.asserted, graphs.asserted) + in_graph(outcome.inferred, graphs.inferred)))
    return results


def _reason_job(job: tuple[list[Item], str]) -> list[tuple[int, str | None, Any]]:
    """One batch on a worker (local or Dask), with the worker's knowledge base."""
    return reason_batch(job[0], job[1], _kb)


def in_graph(triples: list[ox.Triple], graph: ox.NamedNode) -> bytes:
    """``triples`` as N-Quads in ``graph``, serialized by Oxigraph as N-Triples with the graph put
    before each line's final `` .``: no Python object is made per quad. An N-Triples line ends
    with `` .`` and a newline, and only there: a newline inside a literal is written escaped.

    >>> g, s, p = (ox.NamedNode(f"https://example.org/{name}") for name in "gsp")
    >>> t = ox.Triple(s, p, ox.Literal("a .\\n"))
    >>> [q.graph_name == g and q.triple == t for q in ox.parse(in_graph([t], g), format=ox.RdfFormat.N_QUADS)]
    [True]
    """
    lines = cast(bytes, ox.serialize(triples, format=ox.RdfFormat.N_TRIPLES))
    return lines.replace(b" .\n", b" " + str(graph).encode() + b" .\n")


# -- main side -------------------------------------------------------------------------------


class Spool:
    """The N-Quads of valid cases reasoned and not stored yet, in files, with their ids.

    Cases are added to one file; :meth:`hand_over` stores it in one call, all or none, in a
    thread of this process (the bulk loader releases the GIL), while the next cases go to a new
    file: reasoning goes on while Oxigraph ingests. One ingestion at a time: a hand-over first
    waits for the one before. Cases count as loaded once stored (:meth:`stored`). The files are
    in the site's directory for the embedded store (opening it for writing removes a killed
    load's spool: its cases are not stored, and the next load reasons them again), or temporary
    ones in the data dir for another store."""

    def __init__(self, store: SiteStore, data_dir: Path, max_quads: int) -> None:
        folder = store.spool_dir() if isinstance(store, OxigraphSite) else None
        self.folder = folder if folder is not None else data_dir
        self.folder.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.max_quads = max_quads
        self.ids: set[str] = set()  # in the file being written
        self.quads = 0
        self._path, self._file = self._new_file()
        self._storing: set[str] = set()  # in the file being ingested
        self._ingestion: threading.Thread | None = None
        self._failed: BaseException | None = None
        self._done = 0  # stored and not yet reported by stored()

    def _new_file(self) -> tuple[Path, IO[bytes]]:
        handle, name = tempfile.mkstemp(prefix="spool-", suffix=".nq", dir=self.folder)
        return Path(name), os.fdopen(handle, "wb")

    def __contains__(self, case_id: str) -> bool:
        return case_id in self.ids or case_id in self._storing

    def add(self, case_id: str, nquads: bytes) -> None:
        self._file.write(nquads)
        self.ids.add(case_id)
        self.quads += nquads.count(b"\n")

    @property
    def full(self) -> bool:
        return self.quads >= self.max_quads

    def hand_over(self) -> None:
        """Start storing the cases added so far (after the ingestion before, if any, is done)."""
        self.wait()
        if not self.ids:
            return
        self._file.close()  # read back by the store; no fsync: a crash loses only the spool
        path, cases = self._path, len(self.ids)
        self._storing, self.ids, self.quads = self.ids, set(), 0
        self._path, self._file = self._new_file()
        self._ingestion = threading.Thread(target=self._ingest, args=(path, cases), name="esi-kg-ingest")
        self._ingestion.start()

    def _ingest(self, path: Path, cases: int) -> None:
        try:
            self.store.load_nquads(path, cases)
        except BaseException as exc:  # re-raised by wait(), in the loader's thread
            self._failed = exc
        finally:
            path.unlink(missing_ok=True)

    def wait(self) -> None:
        """Until the running ingestion, if any, is over; re-raises what made it fail."""
        if self._ingestion is not None:
            self._ingestion.join()
            self._ingestion = None
            if self._failed is None:
                self._done += len(self._storing)
            self._storing = set()
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed

    def stored(self) -> int:
        """How many cases were stored since the last call."""
        if self._ingestion is not None and not self._ingestion.is_alive():
            self.wait()
        done, self._done = self._done, 0
        return done

    def close(self) -> None:
        """Wait for the running ingestion; remove the file being written (its cases are not stored)."""
        try:
            self.wait()
        finally:
            self._file.close()
            self._path.unlink(missing_ok=True)


class Progress:
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.start = time.perf_counter()
        self.last = 0.0

    def show(self, summary: Summary, reasoned: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self.last < 0.5:
            return
        self.last = now
        rate = summary.loaded / max(now - self.start, 1e-9)
        self.stream.write(f"\rloaded {summary.loaded:>8}  rejected {summary.rejected:>6}  {rate:8.1f} cases/s"
                          f"  (reasoned, not stored yet: {reasoned - summary.loaded:>6})" + ("\n" if final else ""))
        self.stream.flush()


def load(settings: Settings, path: Path, site: str = DEFAULT_SITE, batch_size: int = 200,
         workers: int | None = None, progress: Any = sys.stderr, keep_rejections: int = 1000,
         scheduler: str | None = None, ingest_quads: int = INGEST_QUADS) -> Summary:
    """Load every case under ``path`` into ``site``; returns what was loaded and rejected.

    Batches are reasoned by ``workers`` local processes, or on the Dask cluster at ``scheduler``;
    this process alone writes, in the order of the input: valid cases are spooled and stored in
    one ingestion of about ``ingest_quads`` quads (all or none)."""
    from .core.kb import KnowledgeBase

    # The data dir exists before the knowledge base is built, so that what it derives once per
    # ontology version (the closure, the rules' needs) is kept in its cache for the workers.
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    kb = KnowledgeBase.from_settings(settings)
    # The store is opened in a frame of its own: a frame that built the knowledge base can outlive
    # the call (pyparsing's packrat cache keeps the tracebacks of its parse errors, and with them
    # their callers' frames), and a store kept so would keep its lock after the load.
    summary = _store_all(settings, kb, path, site, batch_size, workers, progress, keep_rejections, scheduler,
                         ingest_quads)
    return summary


def _store_all(settings: Settings, kb: Any, path: Path, site: str, batch_size: int, workers: int | None,
               progress: Any, keep_rejections: int, scheduler: str | None, ingest_quads: int) -> Summary:
    stores = open_stores(settings)
    store = stores.site(site)
    if isinstance(store, OxigraphSite):
        store.flush_after = BULK_FLUSH_AFTER_QUADS
    store.set_ontology(kb.version, kb.ontology.graph, kb.reasoner.tbox_closure)
    summary = Summary()
    bar = Progress(progress) if progress is not None else None
    started = time.perf_counter()
    n_workers = workers if workers is not None else (settings.reasoning_workers or 2)
    spool = Spool(store, settings.data_dir, ingest_quads)
    reasoned = 0

    def take(results: list[tuple[int, str | None, Any]]) -> None:
        nonlocal reasoned
        for position, case_id, outcome in sorted(results, key=lambda r: r[0]):
            if isinstance(outcome, dict):
                _reject(summary, position, case_id, outcome, keep_rejections)
                continue
            assert case_id is not None
            if case_id in spool or store.exists(case_id):
                _reject(summary, position, case_id, {"status": 409, "title": "Conflict",
                                                     "detail": f"case {case_id!r} exists already"}, keep_rejections)
                continue
            spool.add(case_id, outcome)
            reasoned += 1
        if spool.full:
            spool.hand_over()
        summary.loaded += spool.stored()
        if bar:
            bar.show(summary, reasoned)

    try:
        jobs = ((batch, site) for batch in chunked(read_items(path), batch_size))
        if n_workers <= 0 and not scheduler:  # in this process, with the knowledge base built above
            for batch, _site in jobs:
                take(reason_batch(batch, site, kb))
        else:
            for results in map_batches(_reason_job, jobs, n_workers, _init_worker, (settings, not scheduler),
                                       scheduler=scheduler):
                take(results)
        spool.hand_over()
        spool.wait()
        summary.loaded += spool.stored()
    finally:
        spool.close()
        stores.close()  # flushes
    summary.seconds = time.perf_counter() - started
    summary.peak_rss_mb = peak_rss_mb()
    summary.cpu_s = cpu_seconds()
    if bar:
        bar.show(summary, reasoned, final=True)
    return summary


def _reject(summary: Summary, position: int, case_id: str | None, problem: dict[str, Any], keep: int) -> None:
    summary.rejected += 1
    if len(summary.rejections) < keep:
        summary.rejections.append({"index": position, "id": case_id, "problem": problem})


def main(settings: Settings, path: Path, site: str, batch_size: int, workers: int | None,
         scheduler: str | None = None, ingest_quads: int = INGEST_QUADS) -> int:
    if not path.exists():
        print(f"kgservice: {path}: no such file or folder", file=sys.stderr)
        return 2
    summary = load(settings, path, site=site, batch_size=batch_size, workers=workers, scheduler=scheduler,
                   ingest_quads=ingest_quads)
    json.dump(summary.as_json(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0 if summary.rejected == 0 else 1
