"""``kgservice load``: validate, reason and store many cases, in batches, on every core.

Cases are read as a stream (JSON lines, a JSON array, or a folder of such files), reasoned
in batches by worker processes, and each batch's valid cases are written in one Oxigraph
transaction: a case is stored with its inferences or not at all. A bad case is reported
with its problem and never stops the load.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pyoxigraph as ox

from .batches import chunked, map_batches
from .config import Settings
from .core.cases import DEFAULT_SITE, load_json
from .core.media import JSON
from .errors import ESIError, MalformedInput, Problem
from .stores.base import CaseGraphs, open_stores
from .stores.oxigraph import OxigraphSite

#: The loader flushes less often than the server (about every 2600 cases). Its batches bypass the
#: write buffers (Oxigraph's bulk loader writes sorted files); what still goes through them (the
#: ontology graphs, a batch too large for one ingestion) is flushed then, and freed pages returned.
BULK_FLUSH_AFTER_QUADS = 200_000

Item = tuple[int, Any]  # (position in the input, the case or a read error)


@dataclass
class Summary:
    loaded: int = 0
    rejected: int = 0
    seconds: float = 0.0
    rejections: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: dict[str, int | None] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "rejected": self.rejected, "seconds": round(self.seconds, 2),
                "cases_per_second": round(self.loaded / self.seconds, 1) if self.seconds else None,
                "peak_rss_mb": self.peak_rss_mb, "rejections": self.rejections}


def peak_rss_mb() -> dict[str, int | None]:
    """The largest resident memory of this process so far and of its largest finished child (the
    local reasoning workers, once their pool has stopped; None when there was none), in MB."""
    import resource

    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"loader": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "largest_worker": child // 1024 if child else None}


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


class Progress:
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.start = time.perf_counter()
        self.last = 0.0

    def show(self, summary: Summary, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self.last < 0.5:
            return
        self.last = now
        rate = summary.loaded / max(now - self.start, 1e-9)
        self.stream.write(f"\rloaded {summary.loaded:>8}  rejected {summary.rejected:>6}  {rate:8.1f} cases/s"
                          + ("\n" if final else ""))
        self.stream.flush()


def load(settings: Settings, path: Path, site: str = DEFAULT_SITE, batch_size: int = 200,
         workers: int | None = None, progress: Any = sys.stderr, keep_rejections: int = 1000,
         scheduler: str | None = None) -> Summary:
    """Load every case under ``path`` into ``site``; returns what was loaded and rejected.

    Batches are reasoned by ``workers`` local processes, or on the Dask cluster at ``scheduler``;
    this process alone writes, a batch in one transaction, in the order of the input."""
    from .core.kb import KnowledgeBase

    kb = KnowledgeBase.from_settings(settings)
    stores = open_stores(settings)
    store = stores.site(site)
    if isinstance(store, OxigraphSite):
        store.flush_after = BULK_FLUSH_AFTER_QUADS
    store.set_ontology(kb.version, kb.ontology.graph, kb.reasoner.tbox_closure)
    summary = Summary()
    bar = Progress(progress) if progress is not None else None
    started = time.perf_counter()
    n_workers = workers if workers is not None else (settings.reasoning_workers or 2)

    def take(results: list[tuple[int, str | None, Any]]) -> None:
        quads: list[bytes] = []
        stored: list[str] = []
        for position, case_id, outcome in sorted(results, key=lambda r: r[0]):
            if isinstance(outcome, dict):
                _reject(summary, position, case_id, outcome, keep_rejections)
                continue
            assert case_id is not None
            if case_id in stored or store.exists(case_id):
                _reject(summary, position, case_id, {"status": 409, "title": "Conflict",
                                                     "detail": f"case {case_id!r} exists already"}, keep_rejections)
                continue
            quads.append(outcome)
            stored.append(case_id)
        if quads:
            store.load_nquads(b"".join(quads), len(stored))  # one transaction per batch: all its valid cases, or none
        summary.loaded += len(stored)
        if bar:
            bar.show(summary)

    jobs = ((batch, site) for batch in chunked(read_items(path), batch_size))
    if n_workers <= 0 and not scheduler:  # in this process, with the knowledge base built above
        for batch, _site in jobs:
            take(reason_batch(batch, site, kb))
    else:
        for results in map_batches(_reason_job, jobs, n_workers, _init_worker, (settings, not scheduler),
                                   scheduler=scheduler):
            take(results)
    stores.close()  # flushes
    summary.seconds = time.perf_counter() - started
    summary.peak_rss_mb = peak_rss_mb()
    if bar:
        bar.show(summary, final=True)
    return summary


def _reject(summary: Summary, position: int, case_id: str | None, problem: dict[str, Any], keep: int) -> None:
    summary.rejected += 1
    if len(summary.rejections) < keep:
        summary.rejections.append({"index": position, "id": case_id, "problem": problem})


def main(settings: Settings, path: Path, site: str, batch_size: int, workers: int | None,
         scheduler: str | None = None) -> int:
    if not path.exists():
        print(f"kgservice: {path}: no such file or folder", file=sys.stderr)
        return 2
    summary = load(settings, path, site=site, batch_size=batch_size, workers=workers, scheduler=scheduler)
    json.dump(summary.as_json(), sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0 if summary.rejected == 0 else 1
