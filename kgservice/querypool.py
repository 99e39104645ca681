"""Warm query processes: forked ahead of time, off the request path, each answering many queries.

Every SPARQL query runs in a process of its own: cut off from the network by the kernel
(seccomp), limited in address space (``RLIMIT_AS``) and killed with SIGKILL at its time limit,
which frees its CPU at once (:mod:`kgservice.isolation`). Forking that process for each query
cost most of a trivial request, so each embedded store keeps a few of them ready:

- one background thread (:class:`_Keeper`) forks them, outside the windows in which the server
  writes, flushes or compacts (:func:`isolation.no_fork`); each enters the sandbox and its memory
  limit once, takes a snapshot of the store (a child that inherited a RocksDB mutex held never
  gets one, and is killed) and then answers one query at a time over a socket pair;
- a child holds the store as it was when it was forked. Every write moves the store generation
  on (:func:`isolation.generation`), and a child of an older generation is never given a new
  query: it is retired and replaced. So a query sees every write acknowledged before it started;
- a child past the time limit is killed and reaped before the caller gets ``503``; one that
  crashed (``422``), grew past half its memory limit, or served ``MAX_QUERIES`` or lived
  ``MAX_AGE_S`` is replaced; one that died between queries is noticed before it is used;
- when no fresh child is free (the first query, just after a write, more queries at once than
  ``WARM`` children), the query forks its own child as before (:func:`run_forked_streaming`).

A warm child's own life is :mod:`kgservice.querychild`.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import isolation
from .isolation import Forked, crashed, drain, readable, run_forked_streaming
from .querychild import READY, REFUSED, Answered, Died, Work, read_answer, warm_main

#: Warm children kept per store (0: fork a child for every query, as before).
WARM = 2
#: A child is replaced after this many queries or seconds: the server's memory it shares
#: copy-on-write drifts apart from the server's as both run.
MAX_QUERIES = 2000
MAX_AGE_S = 120.0
#: A store not queried for this long keeps no warm child.
IDLE_S = 30.0
#: How long a new child may take to enter its sandbox and get its snapshot.
READY_S = 1.0
_TICK_S = 1.0



@dataclass(eq=False)
class _Child:
    pid: int
    sock: socket.socket
    err: int  # the read end of the child's stderr
    generation: int
    max_memory: int | None
    born: float = field(default_factory=time.monotonic)
    served: int = 0
    reaped: bool = False  # its pid may belong to another process now: never signalled again

    def fresh(self, max_memory: int | None) -> bool:
        return (self.generation == isolation.generation() and self.max_memory == max_memory
                and self.served < MAX_QUERIES and time.monotonic() - self.born < MAX_AGE_S)

    def aging(self) -> bool:
        return self.served > MAX_QUERIES * 0.8 or time.monotonic() - self.born > MAX_AGE_S * 0.8

    def alive(self) -> bool:
        try:
            self.reaped = os.waitpid(self.pid, os.WNOHANG) != (0, 0)
        except ChildProcessError:
            self.reaped = True
        return not self.reaped

    def signal_kill(self) -> None:
        if not self.reaped:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill(self) -> bytes:
        """SIGKILL, reap, close; what the child wrote to stderr."""
        self.signal_kill()
        if not self.reaped:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.reaped = True
        said = drain(self.err)
        self.sock.close()
        os.close(self.err)
        return said


class QueryPool:
    """Warm children for one store. ``work`` runs a request in a child; ``ready`` takes the child's
    snapshot of the store, once, before it is given any query."""

    def __init__(self, work: Work, ready: Callable[[], None], size: int | None = None) -> None:
        self.work, self.ready = work, ready
        self.size = WARM if size is None else size
        self._idle: list[_Child] = []
        self._busy = 0
        self._lock = threading.Lock()
        self._used = 0.0  # when a query last asked for a child
        self._max_memory: int | None = None
        self._refused = False  # a child could not enter the sandbox: every query forks (and says why)
        self._starting: set[int] = set()
        self._watched = False
        weakref.finalize(self, _kill_all, self._idle)

    def run(self, request: Any, timeout: float, *, max_bytes: int | None = None,
            max_memory: int | None = None) -> Forked:
        """Run ``work(request, emit)`` in a warm child (or a child of its own): as
        :func:`isolation.run_forked_streaming` does, with the same limits and problems."""
        deadline = time.monotonic() + timeout
        while (child := self._take(max_memory)) is not None:
            try:
                return self._exchange(child, request, deadline, timeout, max_bytes)
            except _DeadBefore:
                continue  # it died between queries: the query never ran; take another
        return run_forked_streaming(lambda started, emit: self.work(request, started, emit), timeout,
                                    max_bytes=max_bytes, max_memory=max_memory)

    def close(self) -> None:
        """Stop every idle child now (busy ones are stopped when their query ends)."""
        with self._lock:
            self.size = 0
            idle, self._idle[:] = list(self._idle), []
        for child in idle:
            child.kill()

    def pids(self) -> set[int]:
        """The process ids of the idle warm children, and of those being started."""
        with _SPAWNING, self._lock:
            return {c.pid for c in self._idle} | self._starting

    # -- the request path ------------------------------------------------------------------------

    def _take(self, max_memory: int | None) -> _Child | None:
        """A fresh idle child, marked busy; the keeper is woken only when it has work to do."""
        with self._lock:
            self._used = time.monotonic()
            self._max_memory = max_memory
            taken, retired = None, False
            while self._idle and taken is None:
                child = self._idle.pop()
                if child.fresh(max_memory) and child.alive():
                    taken = child
                else:
                    _KEEPER.dying(child)
                    retired = True
            if taken is not None:
                self._busy += 1
            short = retired or taken is None or len(self._idle) + self._busy < self.size
        if not self._watched or short:
            self._watched = True
            _KEEPER.watch(self)
        return taken

    def _give_back(self, child: _Child, reusable: bool) -> None:
        with self._lock:
            self._busy -= 1
            keep = reusable and len(self._idle) < self.size and child.fresh(self._max_memory)
            if keep:
                self._idle.append(child)
        if not keep:
            _KEEPER.dying(child)

    def _exchange(self, child: _Child, request: Any, deadline: float, timeout: float,
                  max_bytes: int | None) -> Forked:
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            child.sock.sendall(len(payload).to_bytes(8, "big") + payload)
        except OSError:
            self._lost(child)
            raise _DeadBefore() from None
        child.served += 1
        try:
            forked, reusable = read_answer(child, deadline, timeout, max_bytes)
        except Answered as answered:
            self._give_back(child, answered.reusable)
            raise answered.problem from None
        except Died as died:
            self._lost(child)
            if not died.started:
                raise _DeadBefore() from None
            raise crashed(died.status, died.stderr) from None
        except BaseException:  # the time limit, the response cap: killed before the caller hears of it
            self._lost(child)
            raise
        self._give_back(child, reusable)
        return forked

    def _lost(self, child: _Child) -> None:
        with self._lock:
            self._busy -= 1
        child.kill()  # at once: its CPU is freed before the caller is answered
        _KEEPER.poke()

    # -- the keeper's side ----------------------------------------------------------------------

    def maintain(self) -> None:
        """Retire stale children; fork fresh ones up to ``size`` while the store is being queried."""
        now = time.monotonic()
        with self._lock:
            active = now - self._used < IDLE_S and not self._refused
            stale = [c for c in self._idle if not active or not c.fresh(self._max_memory)]
            self._idle[:] = [c for c in self._idle if c not in stale]
            need = self.size - len(self._idle) - self._busy if active else 0
            max_memory = self._max_memory
        for old in stale:
            old.kill()
        for _ in range(max(0, need)):
            if not self._add(max_memory):
                return
        with self._lock:  # one near the end of its life is replaced ahead of time, not when it is due
            aging = next((c for c in self._idle if c.aging()), None) if active and not need else None
        if aging is not None and self._add(max_memory, spare=1):
            with self._lock:
                retire = aging in self._idle
                if retire:
                    self._idle.remove(aging)
            if retire:
                aging.kill()

    def _add(self, max_memory: int | None, spare: int = 0) -> bool:
        """Fork a child and keep it warm (``spare``: above the size, for the one it replaces)."""
        child = self._spawn(max_memory)
        if child is None:
            return False
        with _SPAWNING, self._lock:
            kept_warm = child.fresh(self._max_memory) and len(self._idle) + self._busy < self.size + spare
            if kept_warm:
                self._idle.insert(0, child)  # taken last: the older ones go first
        if not kept_warm:
            child.kill()
        return kept_warm

    def _spawn(self, max_memory: int | None) -> _Child | None:
        ours, theirs = socket.socketpair()
        err_read, err_write = os.pipe()
        parent = os.getpid()
        with _SPAWNING:
            pid, generation = isolation.fork()
            if pid == 0:
                ours.close()
                os.close(err_read)
                warm_main(theirs, err_write, parent, self.work, self.ready, max_memory)
            self._starting.add(pid)
        theirs.close()
        os.close(err_write)
        child = _Child(pid, ours, err_read, generation, max_memory)
        try:
            if readable([ours.fileno()], READY_S):
                first = ours.recv(1)
                if first == READY:
                    return child
                if first == REFUSED:  # the sandbox refused: every query now forks and gets NotIsolated
                    self._refused = True
            child.kill()
            return None
        finally:
            with self._lock:
                self._starting.discard(pid)


class _DeadBefore(Exception):
    """The child was gone before it read the query."""


def _kill_all(children: list[_Child]) -> None:
    for child in list(children):
        child.kill()
    children.clear()


# -- the keeper: one thread per server process -----------------------------------------------------


class _Keeper:
    """The thread that forks and retires warm children, for every pool of this process."""

    def __init__(self) -> None:
        self._pools: weakref.WeakSet[QueryPool] = weakref.WeakSet()
        self._dying: list[_Child] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def watch(self, pool: QueryPool) -> None:
        with self._wake:
            self._pools.add(pool)
            if self._thread is None or self._pid != os.getpid():  # none yet, or we are a forked copy
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._loop, name="esi-query-keeper", daemon=True)
                self._thread.start()
            self._wake.notify()

    def pools(self) -> list[QueryPool]:
        with self._wake:
            return list(self._pools)

    def poke(self) -> None:
        with self._wake:
            self._wake.notify()

    def dying(self, child: _Child) -> None:
        child.signal_kill()
        with self._wake:
            self._dying.append(child)
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait(_TICK_S)
                dying, self._dying = self._dying, []
                pools = list(self._pools)
            for child in dying:
                child.kill()
            for pool in pools:
                try:
                    pool.maintain()
                except Exception:  # noqa: BLE001 - the keeper must live on; queries fall back to a fork
                    isolation.log.exception("keeping warm query processes failed")


def warm_pids() -> set[int]:
    """The process ids of every warm query process of this process (idle, or being started)."""
    return {pid for pool in list(_KEEPER.pools()) for pid in pool.pids()}


_SPAWNING = threading.Lock()
_KEEPER = _Keeper()
isolation.changed_listeners.append(_KEEPER.poke)
