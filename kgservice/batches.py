"""Work on many cases at once: batches mapped over one process per core, with a progress line.

``kgservice reason --stale`` and ``kgservice impact`` hand their batches to :func:`map_batches`:
each worker process builds what it needs once (its initializer), takes one batch at a time and
returns a picklable result; results come back in the order the batches went in, with only a
few batches in flight, so memory stays flat however many cases there are.
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
                initializer: Callable[..., None], initargs: Sequence[Any] = ()) -> Iterator[R]:
    """``fn`` of each batch, in order: in ``workers`` processes, or in this one when ``workers`` is 0.

    ``initializer(*initargs)`` runs once in each process before its first batch (in this process
    too, when ``workers`` is 0). Processes are spawned, not forked: a parent holding an open
    store or threads is not copied into them.
    """
    if workers <= 0:
        initializer(*initargs)
        yield from map(fn, batches)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=initializer,
                             initargs=tuple(initargs)) as pool:
        pending: list[Future[R]] = []
        for batch in batches:
            pending.append(pool.submit(fn, batch))
            while len(pending) >= 2 * workers:  # a few batches in flight: bounded memory
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
