"""The reasoning worker processes themselves: how they start, what they run, how they end.

A worker enters the network sandbox, holds a knowledge base and answers batches of jobs
(:func:`answer_all`) over its pipe until the pipe closes. It starts in one of three ways:

- **spawned**: a fresh interpreter that loads its own knowledge base (a replacement for a
  worker that died or was killed, or when nothing else is possible);
- **forked** from a process that has loaded the knowledge base and holds no thread or open
  store yet (:class:`~kgservice.workers.ReasoningPool` given ``kb``): ready in milliseconds;
- **from a zygote** (``kgservice serve``): the server forks one process before it imports its
  web stack; that process loads the knowledge base (the server meanwhile imports Flask and
  opens the store, on the other core), forks the other workers from it and becomes the first.
  Those others leave their parent at once and are adopted by the server (a child subreaper),
  so that the server reaps them and learns how they died.

A forked worker keeps no file descriptor of its parent's but stdio and its own pipe (never
the listening socket), and restores the default signal handlers.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import pyoxigraph as ox

from .config import Settings
from .errors import Problem
from .isolation import failure
from .security import sandbox

if TYPE_CHECKING:
    from .core.kb import KnowledgeBase

#: What a request sends a worker: body, media type, site, case id (``PUT``), whether graphs are wanted.
Job = tuple[bytes, "str | None", str, "str | None", bool]

_PR_SET_CHILD_SUBREAPER = 36


# -- in a worker -------------------------------------------------------------------------------------


def worker_main(settings: Settings, conn: Connection, guard: bool, kb: KnowledgeBase | None = None) -> None:
    """A spawned worker (``kb`` None) or one forked from ``kb``."""
    if kb is not None:
        _forget_parent([conn])
    if _enter(conn, guard):
        _serve(kb or _load(settings), conn, forked=kb is not None)


def zygote_main(settings: Settings, conns: list[Connection], guard: bool) -> None:
    """The first worker of ``kgservice serve``: loads the knowledge base, forks one worker per
    further pipe (each adopted by the server), then serves the first pipe."""
    _forget_parent(conns)
    if not _enter(conns[0], guard, also=conns[1:]):
        return
    kb = _load(settings)
    for conn in conns[1:]:
        middle = os.fork()
        if middle == 0:
            try:
                if os.fork() == 0:  # the worker: its parent exits now, so the server adopts it
                    for other in conns:
                        if other is not conn:
                            other.close()
                    _serve(kb, conn, forked=True)
            finally:
                os._exit(0)
        os.waitpid(middle, 0)
        conn.close()
    _serve(kb, conns[0], forked=True)


def _enter(conn: Connection, guard: bool, also: list[Connection] | None = None) -> bool:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    try:
        sandbox.enter("a reasoning worker")  # the kernel's guard: for native code too
    except sandbox.SandboxUnavailable as exc:
        for c in [conn, *(also or [])]:
            c.send(("refused", str(exc)))
        return False
    if guard:
        from .security.guard import install_network_guard

        install_network_guard()
    return True


def _load(settings: Settings) -> KnowledgeBase:
    from .core.kb import KnowledgeBase

    return KnowledgeBase.from_settings(settings)


def _serve(kb: KnowledgeBase, conn: Connection, forked: bool) -> None:
    own = _own_files(kb) if forked else []
    conn.send(("ready", kb.version, os.getpid()))
    while True:
        try:
            jobs = conn.recv()
        except (EOFError, OSError):  # the pool closed: a forked worker leaves no file behind
            for path in own:
                path.unlink(missing_ok=True)
            return
        conn.send(answer_all(kb, jobs))


def _forget_parent(conns: list[Connection]) -> None:
    """Default signal handlers, and no file descriptor of the parent's but stdio and ``conns``."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH,
                signal.SIGCHLD, signal.SIGABRT):
        signal.signal(sig, signal.SIG_DFL)
    keep = {0, 1, 2, *(c.fileno() for c in conns)}
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            try:
                os.close(int(name))
            except OSError:
                pass  # the listing's own descriptor, already gone


def _own_files(kb: KnowledgeBase) -> list[Any]:
    """The files the reasoner writes on first use (its TBox as Turtle) get this process's name,
    as in a worker started afresh; forked workers would otherwise all write the parent's file
    at once (one read NULs). Returns their paths."""
    from . import reasoning

    kind = getattr(reasoning, "TBoxFile", None)
    own: dict[int, Any] = {}
    for value in vars(kb.reasoner).values():
        if kind is not None and isinstance(value, kind) and id(value) not in own and hasattr(value, "_path"):
            path = value._path
            value._path = own[id(value)] = path.with_name(f"{path.stem}-worker{os.getpid()}{path.suffix}")
    return list(own.values())


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


# -- in the server ---------------------------------------------------------------------------------------


def become_subreaper() -> bool:
    """Adopt this process's orphaned descendants (Linux), so that it can reap them; False elsewhere."""
    try:
        return bool(ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


class Adopted:
    """A worker the zygote forked and this process adopted: the little of ``multiprocessing.Process``
    the pool uses (``pid``, ``exitcode``, ``is_alive``, ``kill``, ``join``)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exitcode: int | None = None

    def _reap(self) -> bool:
        """True once it has ended (and was reaped, when this process is its parent)."""
        if self.exitcode is not None:
            return True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # not adopted (no subreaper here): only whether it still exists
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            return False
        if pid == 0:
            return False
        self.exitcode = os.waitstatus_to_exitcode(status)
        return True

    def is_alive(self) -> bool:
        return not self._reap()

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def join(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout if timeout is not None else 3600)
        while not self._reap() and time.monotonic() < deadline:
            time.sleep(0.005)
