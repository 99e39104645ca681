"""Reasoning in a pool of worker processes, each with its own knowledge base, fed in micro-batches.

Requests that arrive while every worker is busy wait together; when a worker becomes free it
takes all that wait (up to ``reasoning_batch``) and runs :meth:`KnowledgeBase.process` over
them at once, which costs less per case than one at a time. An idle server adds no wait: a
lone request is sent at once, alone. Each request gets its own answer or problem: the worker
groups a batch by media type and site, a case that cannot be read or breaks the contract
gets its problem without touching the others, and a group that fails as a whole is re-run
case by case. Bodies go to the worker as bytes, and answers come back already serialised
(JSON, N-Triples), so that the server process, which holds the HTTP traffic, does little.

Each worker runs in the network sandbox. A batch past the reasoning time limit, or whose
worker dies, has its worker killed and replaced (the CPU is freed at once); a batch of one
then gets ``503`` (time limit) or ``422`` (the case stopped its process), and the requests of
a larger batch are each re-run alone, so the problem reaches exactly the request that caused it.

How the worker processes start and what they run is :mod:`kgservice.workerproc`.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import cached_property
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import pyoxigraph as ox

from . import workerproc
from .config import Settings
from .errors import InternalError, Problem
from .isolation import ProcessCrashed, TimeLimit, death_of, remote_problem
from .workerproc import Job

if TYPE_CHECKING:
    from .core.kb import KnowledgeBase

log = logging.getLogger(__name__)

#: While another worker is busy, how long a free one waits for more requests to join its batch.
LINGER_S = 0.002



@dataclass
class Reply:
    """A reasoned case as a worker sends it back: the answer as JSON, the graphs as N-Triples."""

    case_id: str
    answer_json: bytes
    asserted_nt: bytes = b""
    inferred_nt: bytes = b""

    @cached_property
    def answer(self) -> dict[str, Any]:
        return json.loads(self.answer_json)  # type: ignore[no-any-return]

    @cached_property
    def asserted(self) -> list[ox.Triple]:
        return _parse(self.asserted_nt)

    @cached_property
    def inferred(self) -> list[ox.Triple]:
        return _parse(self.inferred_nt)


# -- in the server process ------------------------------------------------------------------------


class _Worker:
    """One worker process as the pool sees it: its pipe, its process, whether it said it was ready.

    ``process`` is a ``multiprocessing.Process``, or an :class:`~kgservice.workerproc.Adopted`
    (known once the worker has said its pid) for the workers a zygote forked.
    """

    def __init__(self, conn: Connection, process: Any = None) -> None:
        self.conn = conn
        self.process = process
        self.ready = False

    @classmethod
    def start(cls, ctx: Any, settings: Settings, guard: bool, kb: KnowledgeBase | None = None) -> _Worker:
        conn, child = ctx.Pipe()
        process = ctx.Process(target=workerproc.worker_main, args=(settings, child, guard, kb), daemon=True)
        process.start()
        child.close()
        return cls(conn, process)

    @classmethod
    def zygote(cls, settings: Settings, size: int, guard: bool) -> list[_Worker]:
        ctx = multiprocessing.get_context("fork")
        pipes = [ctx.Pipe() for _ in range(size)]
        workerproc.become_subreaper()
        process = ctx.Process(target=workerproc.zygote_main, args=(settings, [c for _, c in pipes], guard),
                              daemon=True)
        process.start()
        for _, child in pipes:
            child.close()
        return [cls(conn, process if slot == 0 else None) for slot, (conn, _) in enumerate(pipes)]

    def wait_ready(self, timeout: float = 120) -> str:
        """Wait for the worker's first word; its ontology version. Raises when it refused to start."""
        if not self.ready:
            message: Any
            try:
                message = self.conn.recv() if self.conn.poll(timeout) else ("refused", "it did not start")
            except (EOFError, OSError):
                message = ("refused", "it ended before it was ready")
            if message[0] != "ready":
                log.error("a reasoning worker refused to start: %s", message[1])
                raise RuntimeError(f"a reasoning worker refused to start: {message[1]}")
            self.version, pid = message[1], message[2]
            if self.process is None:
                self.process = workerproc.Adopted(pid)
            self.ready = True
            log.info("reasoning worker %d ready (ontology %s)", pid, self.version)
        return self.version

    def kill(self) -> None:
        if self.process is not None:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(5)
        self.conn.close()  # closing twice is harmless

    def exitcode(self) -> int | None:
        if self.process is None:
            return None
        self.process.join(1)
        return self.process.exitcode  # type: ignore[no-any-return]


@dataclass
class _Request:
    job: Job
    done: threading.Event = field(default_factory=threading.Event)
    result: Reply | Problem | None = None

    def finish(self, result: Reply | Problem) -> None:
        self.result = result
        self.done.set()


class ReasoningPool:
    """``size`` worker processes fed by one queue of requests, in batches of what waits.

    How the first workers start (:mod:`kgservice.workerproc`): ``kb`` given, forked from it
    (call before the process starts threads or opens a store); ``zygote=True``, from one
    process that loads the knowledge base while this one goes on (``kgservice serve``: call
    before the web stack is imported; :meth:`wait_ready` then waits for them); else spawned.
    Replacements are always spawned.
    """

    def __init__(self, settings: Settings, size: int, guard: bool = False, kb: KnowledgeBase | None = None,
                 zygote: bool = False) -> None:
        self.settings = settings
        self.guard = guard
        self._spawn = multiprocessing.get_context("spawn")
        forks = "fork" in multiprocessing.get_all_start_methods()
        if zygote and forks and kb is None:
            self._all = _Worker.zygote(settings, size, guard)
        else:
            ctx = multiprocessing.get_context("fork") if kb is not None and forks else self._spawn
            self._all = [_Worker.start(ctx, settings, guard, kb if ctx is not self._spawn else None)
                         for _ in range(size)]
        self._waiting: deque[_Request] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self.batches: Counter[int] = Counter()  # batch size -> how many batches of that size were sent
        self.restarts = 0
        self._busy = 0  # feeders with a batch out
        self.version: str | None = None  # the ontology version the workers hold, once they said it
        if not zygote:
            self.wait_ready()
        self._feeders = [threading.Thread(target=self._feed, args=(slot,), name=f"reasoning-feeder-{slot}",
                                          daemon=True) for slot in range(size)]
        for feeder in self._feeders:
            feeder.start()

    def wait_ready(self) -> str:
        """Wait until every worker is ready; the ontology version they hold. Raises (and closes
        the pool) when one refused to start, e.g. without its sandbox."""
        try:
            self.version = [worker.wait_ready() for worker in list(self._all)][0]
        except BaseException:
            self.close()
            raise
        return self.version

    # -- what callers use ------------------------------------------------------------------------

    def process(self, body: bytes, media_type: str | None, site: str, case_id: str | None,
                graphs: bool = True) -> Reply | Problem:
        """:meth:`KnowledgeBase.process` of one body, in a worker, under the reasoning time limit;
        raises :class:`TimeLimit` or :class:`ProcessCrashed` when its worker failed on it."""
        result = self.process_many([(body, media_type, site, case_id, graphs)])[0]
        if isinstance(result, Problem) and isinstance(result.error, TimeLimit | ProcessCrashed):
            raise result.error
        return result

    def process_many(self, jobs: list[Job]) -> list[Reply | Problem]:
        """Several jobs queued at once (so that they can share a batch), one result each, in order."""
        requests = [_Request(job) for job in jobs]
        with self._wake:
            if self._closed:
                raise RuntimeError("the reasoning pool is closed")
            self._waiting.extend(requests)
            self._wake.notify(len(requests))
        for r in requests:
            r.done.wait()  # every request is finished: answered, refused, or failed with its worker
        return [r.result for r in requests]  # type: ignore[misc]

    def stats(self) -> dict[str, Any]:
        """Counts since start: batches by size, cases, workers replaced."""
        with self._wake:
            sizes = dict(sorted(self.batches.items()))
        return {"workers": len(self._all), "batches": sum(sizes.values()),
                "cases": sum(n * k for n, k in sizes.items()), "batch_sizes": sizes, "restarts": self.restarts}

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._all if w.process is not None and w.process.pid is not None]

    def close(self) -> None:
        with self._wake:
            self._closed = True
            left = list(self._waiting)
            self._waiting.clear()
            self._wake.notify_all()
        for r in left:
            r.finish(Problem.of(TimeLimit("the service is stopping; the case was not reasoned")))
        for worker in self._all:
            worker.conn.close()  # an idle worker reads the end, tidies up and exits
        for worker in self._all:
            if worker.process is not None:
                worker.process.join(0.5)
            worker.kill()

    # -- the feeders: one thread per worker ---------------------------------------------------------

    def _feed(self, slot: int) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                cap = max(1, self.settings.reasoning_batch)
                if self._busy and len(self._waiting) < cap:  # loaded: the others' clients are about to send
                    deadline = time.monotonic() + LINGER_S
                    while len(self._waiting) < cap and (left := deadline - time.monotonic()) > 0:
                        self._wake.wait(left)
                    if not self._waiting:  # another worker took them meanwhile
                        continue
                batch = [self._waiting.popleft() for _ in range(min(cap, len(self._waiting)))]
                self._busy += 1
            try:
                self._run(slot, batch)
            except BaseException:  # noqa: BLE001 - a feeder never dies with requests left unanswered
                log.exception("the reasoning feeder failed")
                for r in batch:
                    if not r.done.is_set():
                        r.finish(Problem.of(InternalError()))
            finally:
                with self._wake:
                    self._busy -= 1

    def _run(self, slot: int, batch: list[_Request]) -> None:
        with self._wake:
            self.batches[len(batch)] += 1
        try:
            replies = self._round_trip(slot, [r.job for r in batch])
        except (TimeLimit, ProcessCrashed) as exc:
            if len(batch) == 1:
                batch[0].finish(Problem.of(exc))
                return
            log.warning("a batch of %d cases failed (%s); each is reasoned alone", len(batch), exc)
            for r in batch:
                self._run(slot, [r])
            return
        for r, reply in zip(batch, replies, strict=True):
            r.finish(_result(reply))

    def _round_trip(self, slot: int, jobs: list[Job]) -> list[tuple[Any, ...]]:
        timeout = self.settings.reasoning_timeout_s
        worker = self._all[slot]
        try:
            worker.wait_ready()
            worker.conn.send(jobs)
            if not worker.conn.poll(timeout):
                self._replace(slot)
                raise TimeLimit(f"reasoning took longer than {timeout:g} s and was stopped")
            replies: list[tuple[Any, ...]] = worker.conn.recv()
            return replies
        except (EOFError, OSError):
            death = death_of(worker.exitcode())
            log.error("a reasoning worker died while reasoning %d case(s) (%s)", len(jobs), death)
            self._replace(slot)
            raise ProcessCrashed(f"reasoning this case stopped its worker process ({death}); it was logged") from None

    def _replace(self, slot: int) -> None:
        self._all[slot].kill()
        self._all[slot] = _Worker.start(self._spawn, self.settings, self.guard)
        with self._wake:
            self.restarts += 1


def _result(reply: tuple[Any, ...]) -> Reply | Problem:
    if reply[0] == "failed":
        return remote_problem(reply, "a reasoning worker")  # type: ignore[arg-type]
    if reply[0] == "problem":
        return Problem(reply[1], reply[2])
    return Reply(*reply[1:])


def _parse(ntriples: bytes) -> list[ox.Triple]:
    return [q.triple for q in ox.parse(ntriples, format=ox.RdfFormat.N_TRIPLES)]
