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

The first workers are forked from the server process right after it has loaded its knowledge
base, before it opens a store or starts a thread, so they start in milliseconds with the
knowledge base already built; replacements are started afresh (``spawn``), since forking a
process with threads and an open store is not safe.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import cached_property
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import pyoxigraph as ox

from .config import Settings
from .errors import InternalError, Problem
from .isolation import ProcessCrashed, TimeLimit, death_of, failure, remote_problem
from .security import sandbox

if TYPE_CHECKING:
    from .core.kb import KnowledgeBase

log = logging.getLogger(__name__)

#: What a request sends a worker: body, media type, site, case id (``PUT``), whether graphs are wanted.
Job = tuple[bytes, "str | None", str, "str | None", bool]


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


# -- in the worker process -----------------------------------------------------------------------


def _worker_main(settings: Settings, conn: Connection, guard: bool, kb: KnowledgeBase | None = None) -> None:
    own: list[Any] = []
    if kb is not None:  # forked from the server: drop what the server's process had set up for itself
        _forget_parent(conn)
        own = _own_files(kb)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    try:
        sandbox.enter("a reasoning worker")  # the kernel's guard: for native code too
    except sandbox.SandboxUnavailable as exc:
        conn.send(("refused", str(exc)))
        return
    if guard:
        from .security.guard import install_network_guard

        install_network_guard()
    if kb is None:
        from .core.kb import KnowledgeBase

        kb = KnowledgeBase.from_settings(settings)
    conn.send(("ready", kb.version))
    while True:
        try:
            jobs = conn.recv()
        except (EOFError, OSError):  # the pool closed: a forked worker leaves no file behind
            for path in own:
                path.unlink(missing_ok=True)
            return
        conn.send(answer_all(kb, jobs))


def _forget_parent(conn: Connection) -> None:
    """In a forked worker: default signal handlers, and no file descriptor of the server's but
    stdio and the pipe (its listening socket above all: a worker never sees a client)."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
                signal.SIGCHLD, signal.SIGABRT):
        signal.signal(sig, signal.SIG_DFL)
    keep = {0, 1, 2, conn.fileno()}
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            try:
                os.close(int(name))
            except OSError:
                pass  # the listing's own descriptor, already gone


def answer_all(kb: KnowledgeBase, jobs: list[Job]) -> list[tuple[Any, ...]]:
    """One reply per job, in order: ``("ok", case_id, answer JSON, asserted, inferred)``,
    ``("problem", problem, case_id)`` or a :func:`~kgservice.isolation.failure`.

    Jobs of the same media type, site and kind go through :meth:`KnowledgeBase.process` together;
    a job naming its case (``PUT``) goes alone. A group that raises is re-run job by job.
    """
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, (_, media_type, site, case_id, graphs) in enumerate(jobs):
        groups.setdefault((i,) if case_id is not None else (media_type, site, graphs), []).append(i)
    replies: list[tuple[Any, ...]] = [()] * len(jobs)
    for indices in groups.values():
        try:
            replies_of = _answer_group(kb, [jobs[i] for i in indices])
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, the worker lives on
            if len(indices) == 1:
                replies_of = [failure(exc)]
            else:  # find which case it was: each alone
                replies_of = [answer_all(kb, [jobs[i]])[0] for i in indices]
        for i, reply in zip(indices, replies_of, strict=True):
            replies[i] = reply
    return replies


def _answer_group(kb: KnowledgeBase, jobs: list[Job]) -> list[tuple[Any, ...]]:
    _, media_type, site, case_id, graphs = jobs[0]
    results = kb.process([job[0] for job in jobs], media_type, site, case_id=case_id, graphs=graphs)
    return [("problem", r.problem(), r.case_id) if isinstance(r, Problem) else (
        "ok", r.case_id, json.dumps(r.answer, ensure_ascii=False).encode(),
        ox.serialize(r.asserted, format=ox.RdfFormat.N_TRIPLES) if graphs else b"",
        ox.serialize(r.inferred, format=ox.RdfFormat.N_TRIPLES) if graphs else b"",
    ) for r in results]


# -- in the server process ------------------------------------------------------------------------


class _Worker:
    def __init__(self, ctx: Any, settings: Settings, guard: bool, kb: KnowledgeBase | None = None) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(settings, child, guard, kb), daemon=True)
        self.process.start()
        child.close()
        self.ready = False

    def wait_ready(self, timeout: float = 120) -> None:
        if not self.ready:
            if not self.conn.poll(timeout):
                raise RuntimeError("a reasoning worker did not start")
            message = self.conn.recv()
            if message[0] != "ready":
                log.error("a reasoning worker refused to start: %s", message[1])
                raise RuntimeError(f"a reasoning worker refused to start: {message[1]}")
            self.ready = True
            log.info("reasoning worker %d ready (ontology %s)", self.process.pid, message[1])

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()  # closing twice is harmless


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

    ``kb``: the caller's knowledge base, to fork the first workers from (call before the
    process starts threads or opens a store); without it they load their own.
    """

    def __init__(self, settings: Settings, size: int, guard: bool = False, kb: KnowledgeBase | None = None) -> None:
        self.settings = settings
        self.guard = guard
        self._spawn = multiprocessing.get_context("spawn")
        forking = kb is not None and "fork" in multiprocessing.get_all_start_methods()
        first = multiprocessing.get_context("fork") if forking else self._spawn
        self._all: list[_Worker] = [_Worker(first, settings, guard, kb if forking else None) for _ in range(size)]
        self._waiting: deque[_Request] = deque()
        self._wake = threading.Condition()
        self._closed = False
        self.batches: Counter[int] = Counter()  # batch size -> how many batches of that size were sent
        self.restarts = 0
        try:
            for worker in self._all:
                worker.wait_ready()
        except BaseException:
            self.close()
            raise
        self._feeders = [threading.Thread(target=self._feed, args=(slot,), name=f"reasoning-feeder-{slot}",
                                          daemon=True) for slot in range(size)]
        for feeder in self._feeders:
            feeder.start()

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
        return [w.process.pid for w in self._all if w.process.pid is not None]

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
                batch = [self._waiting.popleft() for _ in range(min(cap, len(self._waiting)))]
            try:
                self._run(slot, batch)
            except BaseException:  # noqa: BLE001 - a feeder never dies with requests left unanswered
                log.exception("the reasoning feeder failed")
                for r in batch:
                    if not r.done.is_set():
                        r.finish(Problem.of(InternalError()))

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
            worker.process.join(1)
            death = death_of(worker.process.exitcode)
            log.error("a reasoning worker died while reasoning %d case(s) (%s)", len(jobs), death)
            self._replace(slot)
            raise ProcessCrashed(f"reasoning this case stopped its worker process ({death}); it was logged") from None

    def _replace(self, slot: int) -> None:
        self._all[slot].kill()
        self._all[slot] = _Worker(self._spawn, self.settings, self.guard)
        with self._wake:
            self.restarts += 1


def _own_files(kb: KnowledgeBase) -> list[Any]:
    """In a forked worker: the files the reasoner writes on first use (its TBox as Turtle) get
    this process's name, as in a worker started afresh; forked workers would otherwise all
    write the parent's file at once (one read NULs). Returns their paths."""
    from . import reasoning

    kind = getattr(reasoning, "TBoxFile", None)
    own: dict[int, Any] = {}
    for value in vars(kb.reasoner).values():
        if kind is not None and isinstance(value, kind) and id(value) not in own and hasattr(value, "_path"):
            path = value._path
            value._path = own[id(value)] = path.with_name(f"{path.stem}-worker{os.getpid()}{path.suffix}")
    return list(own.values())


def _result(reply: tuple[Any, ...]) -> Reply | Problem:
    if reply[0] == "failed":
        return remote_problem(reply, "a reasoning worker")  # type: ignore[arg-type]
    if reply[0] == "problem":
        return Problem(reply[1], reply[2])
    return Reply(*reply[1:])


def _parse(ntriples: bytes) -> list[ox.Triple]:
    return [q.triple for q in ox.parse(ntriples, format=ox.RdfFormat.N_TRIPLES)]
