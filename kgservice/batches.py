"""Work on many cases at once: batches mapped over one process per core, with a progress line.

``kgservice load``, ``reason --stale`` and ``impact`` hand their batches to :func:`map_batches`:
each worker process builds what it needs once (its initializer), takes one batch at a time and
returns a picklable result; results come back in the order the batches went in, with only a
few batches in flight, so memory stays flat however many cases there are.

The workers are local processes, or, given ``scheduler`` (``--scheduler tcp://host:8786``), the
workers of a Dask distributed cluster. A Dask worker that dies loses nothing: the scheduler runs
its batches again elsewhere, and each batch's result is taken once by the caller, which alone
writes to the store, so no case is lost or stored twice. Dask rather than Ray: the jobs are
independent batches (no actors, no shared objects); ``distributed`` is pure Python, with a
scheduler and workers started by one command each, and it re-runs a dead worker's tasks by
itself; Ray's native runtime and object store would go unused.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, TextIO, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter).

    >>> list(chunked(range(5), 2))
    [[0, 1], [2, 3], [4]]
    """
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def map_batches(fn: Callable[[T], R], batches: Iterable[T], workers: int,
                initializer: Callable[..., None], initargs: Sequence[Any] = (),
                scheduler: str | None = None) -> Iterator[R]:
    """``fn`` of each batch, in order: in ``workers`` processes, in this one when ``workers`` is 0,
    or on the Dask cluster at ``scheduler``.

    ``initializer(*initargs)`` runs once in each process before its first batch (in this process
    too, when ``workers`` is 0). Processes are spawned, not forked: a parent holding an open
    store or threads is not copied into them. ``fn`` and ``initializer`` are module-level
    functions (they are pickled by name).
    """
    if scheduler:
        yield from _on_dask(fn, batches, initializer, tuple(initargs), scheduler)
        return
    if workers <= 0:
        initializer(*initargs)
        yield from map(fn, batches)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=initializer,
                             initargs=tuple(initargs)) as pool:
        yield from _in_order((pool.submit(fn, batch) for batch in batches), 2 * workers)


def _on_dask(fn: Callable[[T], R], batches: Iterable[T], initializer: Callable[..., None],
             initargs: tuple[Any, ...], scheduler: str) -> Iterator[R]:
    try:
        from distributed import Client
    except ImportError:
        raise SystemExit("kgservice: --scheduler needs Dask's distributed: pip install 'esi-kg[dask]'") from None
    with Client(scheduler, timeout=30) as client:
        threads = max(1, sum(client.nthreads().values()))
        futures = (client.submit(_initialized_call, initializer, initargs, fn, batch, pure=False) for batch in batches)
        yield from _in_order(futures, 2 * threads)


_initialized: set[Any] = set()


def _initialized_call(initializer: Callable[..., None], initargs: tuple[Any, ...], fn: Callable[[T], R],
                      batch: T) -> R:
    """On a Dask worker: ``initializer(*initargs)`` the first time it is asked for, then ``fn(batch)``."""
    key = (initializer.__module__, initializer.__qualname__, repr(initargs))
    if key not in _initialized:
        initializer(*initargs)
        _initialized.add(key)
    return fn(batch)


def _in_order(futures: Iterator[Any], in_flight: int) -> Iterator[Any]:
    """Results of ``futures`` in their order, with at most ``in_flight`` submitted and not taken."""
    pending: list[Future[Any]] = []
    for future in futures:
        pending.append(future)
        while len(pending) >= in_flight:  # a few batches in flight: bounded memory
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()


class Progress:
    """A progress line on a terminal stream: done/total, rate, time left; at most twice a second."""

    def __init__(self, total: int, verb: str, stream: TextIO | None = sys.stderr) -> None:
        self.total, self.verb, self.stream = total, verb, stream
        self.done = 0
        self.start = time.perf_counter()
        self._shown = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        self._show(final=False)

    def finish(self) -> None:
        self._show(final=True)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def _show(self, final: bool) -> None:
        now = time.perf_counter()
        if self.stream is None or (not final and now - self._shown < 0.5):
            return
        self._shown = now
        rate = self.done / max(now - self.start, 1e-9)
        share = f"{100 * self.done / self.total:3.0f} %" if self.total else "  - %"
        left = f"  about {(self.total - self.done) / rate:.0f} s left" if rate and not final else ""
        self.stream.write(f"\r{self.verb} {self.done:>8}/{self.total}  {share}  {rate:7.1f} cases/s{left}   "
                          + ("\n" if final else ""))
        self.stream.flush()
