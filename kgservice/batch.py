"""Where batch reasoning runs: local worker processes (the default) or a Dask distributed cluster.

``run_batches(settings, task, batches, ...)`` calls ``task(kb, batch)`` for each batch on a
worker that holds a :class:`~kgservice.kb.KnowledgeBase` of its own (built once per worker
process and ontology version), and yields the results **in the order of the batches**, with
only a few batches in flight, so that memory stays bounded however many there are.

- no scheduler: a pool of ``workers`` spawned processes on this machine (``workers=0``: in
  this process);
- ``scheduler="tcp://host:8786"``: the tasks go to that Dask cluster's workers. A worker that
  dies loses nothing: the scheduler runs its tasks again elsewhere, and each task's result is
  taken once, by the caller, which alone writes to the store; so no case is lost or stored twice.

Dask rather than Ray: the work is independent batches (no actors, no shared objects), Dask's
``distributed`` is one pure-Python package with a scheduler and workers started by one command
each (``dask scheduler``, ``dask worker ADDRESS``), and it reschedules a dead worker's tasks by
itself. Ray brings a native runtime and an object store ten times the size, for nothing used here.

``kgservice load`` uses it; other batch commands (re-reasoning after an ontology upgrade,
``impact``) pass their own ``task``: a module-level function, so that it pickles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, TypeVar

from .config import Settings

B = TypeVar("B")
R = TypeVar("R")

_kb: Any = None
_kb_settings: Settings | None = None


def worker_kb(settings: Settings) -> Any:
    """This process's knowledge base for ``settings`` (built on first use, kept while they hold)."""
    global _kb, _kb_settings
    if _kb is None or _kb_settings != settings:
        from .kb import KnowledgeBase

        _kb, _kb_settings = KnowledgeBase.from_settings(settings), settings
    return _kb


def _init_local(settings: Settings) -> None:
    worker_kb(settings)


def _run(settings: Settings, task: Callable[[Any, Any], Any], batch: Any) -> Any:
    return task(worker_kb(settings), batch)


def run_batches(settings: Settings, task: Callable[[Any, B], R], batches: Iterable[B], workers: int = 2,
                scheduler: str | None = None, kb: Any = None) -> Iterator[R]:
    """``task(kb, batch)`` for each batch, on local processes or a Dask cluster; results in batch order."""
    if scheduler:
        yield from _on_dask(settings, task, batches, scheduler)
    elif workers <= 0:
        local = kb if kb is not None else worker_kb(settings)
        for batch in batches:
            yield task(local, batch)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_local,
                                 initargs=(settings,)) as pool:
            yield from _in_order((pool.submit(_run, settings, task, b) for b in batches), 2 * workers)


def _on_dask(settings: Settings, task: Callable[[Any, B], R], batches: Iterable[B], scheduler: str) -> Iterator[R]:
    try:
        from distributed import Client
    except ImportError:
        raise SystemExit("kgservice: --scheduler needs Dask's distributed: pip install 'esi-kg[dask]'") from None
    with Client(scheduler, timeout=30) as client:
        threads = max(1, sum(client.nthreads().values()))
        futures = (client.submit(_run, settings, task, b, pure=False) for b in batches)
        yield from _in_order(futures, 2 * threads)


def _in_order(futures: Iterator[Any], in_flight: int) -> Iterator[Any]:
    """Results of ``futures`` in their order, with at most ``in_flight`` submitted and not taken."""
    pending: list[Future[Any]] = []
    for future in futures:
        pending.append(future)
        while len(pending) >= in_flight:
            yield pending.pop(0).result()
    for future in pending:
        yield future.result()
