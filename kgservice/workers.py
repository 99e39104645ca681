"""Reasoning in a pool of worker processes, each with its own knowledge base.

Each worker runs :meth:`KnowledgeBase.process` on one body at a time, in a sandbox; past the
reasoning time limit it is killed and replaced, so the caller gets ``503`` and the CPU is freed
at once. The server process keeps the HTTP traffic and the store, the workers the CPU.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import pyoxigraph as ox

from .config import Settings
from .errors import Problem
from .isolation import ProcessCrashed, TimeLimit, death_of, failure, remote_problem
from .security import sandbox

if TYPE_CHECKING:
    from .core.kb import Outcome

log = logging.getLogger(__name__)


def _worker_main(settings: Settings, conn: Connection, guard: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    try:
        sandbox.enter("a reasoning worker")  # the kernel's guard: for native code too
    except sandbox.SandboxUnavailable as exc:
        conn.send(("refused", str(exc)))
        return
    if guard:
        from .security.guard import install_network_guard

        install_network_guard()
    from .core.kb import KnowledgeBase

    kb = KnowledgeBase.from_settings(settings)
    conn.send(("ready", kb.version))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        body, media_type, site, case_id, graphs = task
        try:
            result = kb.process([body], media_type, site, case_id=case_id, graphs=graphs)[0]
            reply: tuple[Any, ...] = ("problem", result.problem(), result.case_id) if isinstance(result, Problem) else (
                "ok", result.case_id, result.answer,
                ox.serialize(result.asserted, format=ox.RdfFormat.N_TRIPLES),
                ox.serialize(result.inferred, format=ox.RdfFormat.N_TRIPLES),
            )
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, the worker lives on
            reply = failure(exc)
        conn.send(reply)


class _Worker:
    def __init__(self, ctx: Any, settings: Settings, guard: bool) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(settings, child, guard), daemon=True)
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

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class ReasoningPool:
    """``size`` worker processes, each with its own knowledge base; one task per worker at a time."""

    def __init__(self, settings: Settings, size: int, guard: bool = False) -> None:
        self.settings = settings
        self.guard = guard
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        for _ in range(size):
            self._add()
        for worker in list(self._all):
            worker.wait_ready()

    def _add(self) -> _Worker:
        worker = _Worker(self._ctx, self.settings, self.guard)
        self._all.append(worker)
        self._idle.put(worker)
        return worker

    def process(self, body: bytes, media_type: str | None, site: str, case_id: str | None,
                graphs: bool = True) -> Outcome | Problem:
        """:meth:`KnowledgeBase.process` of one body, in a worker, under the reasoning time limit."""
        from .core.kb import Outcome

        timeout = self.settings.reasoning_timeout_s
        worker = self._idle.get()
        replacement = None
        try:
            worker.wait_ready()
            worker.conn.send((body, media_type, site, case_id, graphs))
            if not worker.conn.poll(timeout):
                replacement = worker
                raise TimeLimit(f"reasoning took longer than {timeout:g} s and was stopped")
            reply = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            replacement = worker
            worker.process.join(1)
            death = death_of(worker.process.exitcode)
            log.error("a reasoning worker died while reasoning a case (%s)", death)
            raise ProcessCrashed(f"reasoning this case stopped its worker process ({death}); it was logged") from None
        finally:
            if replacement is not None:
                worker.kill()
                self._all.remove(worker)
                worker = _Worker(self._ctx, self.settings, self.guard)
                self._all.append(worker)
            self._idle.put(worker)
        if reply[0] == "failed":
            return remote_problem(reply, "a reasoning worker")
        if reply[0] != "ok":
            return Problem(*reply[1:])
        _, case_id_out, answer, asserted, inferred = reply
        return Outcome(case_id_out, answer, _parse(asserted), _parse(inferred))

    def close(self) -> None:
        for worker in self._all:
            worker.kill()
        self._all.clear()


def _parse(ntriples: bytes) -> list[ox.Triple]:
    return [q.triple for q in ox.parse(ntriples, format=ox.RdfFormat.N_TRIPLES)]
