"""The protocol of a warm query process (:mod:`kgservice.querypool`): its life, and the server's reading of it.

After the fork it keeps nothing of the server's but the open stores: it closes every socket
and pipe it inherited but its own socket and stderr, leaves the server's signal handlers, dies
with the server (``PR_SET_PDEATHSIG``), enters the network sandbox and its memory limit, takes
its snapshot of the store, warms up (below) and says ready (``R``; ``N`` if the sandbox was
refused). Then, per
request (8-byte length + pickle): ``S`` when read, ``D`` + 8-byte length + bytes of the answer
as it is written, and ``E`` + 8-byte length + pickle of (result, retire): ``retire`` asks the
server not to give it another query (it crashed in Python, or grew past half its memory limit).

A warm child answers a query as fast as the server would (measured: the same query's time in
the child and in the server within 0.3 ms), except its first queries: every page it writes that
it still shares with the server (the reference counts of the objects a query touches, the
allocator's free lists, RocksDB's block cache bookkeeping) is copied at the first write, and a
fresh child's first queries ran up to 1.5x slower. A child is fresh after every write (the store
generation), so that cost fell on the very queries that follow writes. So ``ready`` (the store's
:func:`kgservice.queryrun.warm_up`) runs a query through the clients' code paths before the child
says ready, off the request path, and ``gc.freeze()`` keeps the collector from walking, and so
copying, every object it inherited.
"""

from __future__ import annotations

import ctypes
import faulthandler
import gc
import os
import pickle
import signal
import socket
import stat
import time
import traceback
from collections.abc import Callable
from typing import Any

from .errors import ESIError
from .isolation import (
    MEMORY_DETAIL,
    Forked,
    MemoryLimit,
    NotIsolated,
    TimeLimit,
    drain,
    enter_sandbox,
    failure,
    limit_address_space,
    readable,
    reap,
    remote_problem,
)
from .queryrun import ResponseTooLarge, already_started

READY, REFUSED, STARTED, DATA, END = b"R", b"N", b"S", b"D", b"E"
_CHUNK = 256 * 1024
_PR_SET_PDEATHSIG = 1

#: What a child runs for each request: ``work(request, started, emit)``, returning a picklable value
#: (``started()`` once it holds its snapshot of the store, as ``isolation.run_forked_streaming`` says;
#: a warm child holds one since it said ready, and passes :func:`queryrun.already_started`).
Work = Callable[[Any, Callable[[], None], Callable[[bytes], None]], Any]


def warm_main(sock: socket.socket, err: int, parent: int, work: Work, ready: Callable[[], None],
               max_memory: int | None) -> None:
    """A warm child's whole life: set up once, then answer requests until the socket closes."""
    try:
        gc.freeze()  # the objects it inherited are the server's: this child's collector never walks them
        os.dup2(err, 2)
        quiet = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            os.dup2(quiet, fd)
        _drop_inherited(sock.fileno(), quiet)
        if faulthandler.is_enabled():
            faulthandler.enable(2)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)  # not the server's handlers: a signal for the server ends us
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            return
        try:
            enter_sandbox("the query process")
        except NotIsolated:
            sock.sendall(REFUSED)
            return
        if max_memory is not None:
            limit_address_space(max_memory)
        base = _vm_size()
        ready()
        sock.sendall(READY)
        while (request := _receive(sock)) is not None:
            _answer(sock, work, request[0], base, max_memory)
    except BaseException:  # noqa: BLE001 - said on stderr, which the server logs if a query was lost
        traceback.print_exc()
        os._exit(1)
    finally:
        os._exit(0)


def _drop_inherited(keep: int, quiet: int) -> None:
    """Let go of every socket and pipe inherited from the server but ours (and stderr): a client's
    connection, the listener, another child's pipe (whose reader waits for its end of file).

    Each is pointed at ``/dev/null`` rather than closed: the number stays taken, so that a Python
    object of the server's that still names it can never close a file the engine opens later."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in (keep, 2, quiet):
            continue
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
                os.dup2(quiet, fd)
        except OSError:
            continue


def _receive(sock: socket.socket) -> tuple[Any] | None:
    """The next request (in a tuple: a request may be None), or None at the end of the socket."""
    head = _exactly(sock, 8)
    if head is None:
        return None
    body = _exactly(sock, int.from_bytes(head, "big"))
    return None if body is None else (pickle.loads(body),)


def _exactly(sock: socket.socket, n: int) -> bytes | None:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _answer(sock: socket.socket, work: Work, request: Any, base: int, max_memory: int | None) -> None:
    sock.sendall(STARTED)
    pending = bytearray()  # the answer's bytes not sent yet: sent as one frame every _CHUNK

    def emit(data: bytes) -> None:
        pending.extend(data)
        if len(pending) >= _CHUNK:
            sock.sendall(DATA + len(pending).to_bytes(8, "big") + pending)
            del pending[:]

    retire = False
    try:
        result: Any = ("ok", work(request, already_started, emit))  # ready() took a snapshot
    except MemoryError:
        result, retire = failure(MemoryLimit(MEMORY_DETAIL)), True
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as a problem
        result, retire = failure(exc), not isinstance(exc, ESIError)
    if not retire and max_memory is not None:
        retire = _vm_size() > base + max_memory // 2
    payload = pickle.dumps((result, retire), protocol=pickle.HIGHEST_PROTOCOL)
    frames = DATA + len(pending).to_bytes(8, "big") + pending if pending else b""
    sock.sendall(frames + END + len(payload).to_bytes(8, "big") + payload)


def _vm_size() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


# -- in the server: one answer's frames --------------------------------------------------------


class Died(Exception):
    def __init__(self, started: bool, status: int | None, stderr: bytes) -> None:
        super().__init__("the query process died")
        self.started, self.status, self.stderr = started, status, stderr


def read_answer(child: Any, deadline: float, timeout: float,
                max_bytes: int | None) -> tuple[Forked, bool]:
    """The child's frames for one query: ``S``, ``D`` + 8-byte length + bytes ..., ``E`` + length + pickle."""
    sock, buffer, pos, size, started = child.sock, bytearray(), 0, 0, False
    parts: list[bytes] = []
    limit = None if max_bytes is None else max_bytes + (1 << 16)
    while True:
        while pos < len(buffer):
            tag = buffer[pos:pos + 1]
            if tag == STARTED:
                started, pos = True, pos + 1
                continue
            if len(buffer) < pos + 9:
                break
            length = int.from_bytes(buffer[pos + 1:pos + 9], "big")
            if len(buffer) < pos + 9 + length:
                break
            chunk = bytes(buffer[pos + 9:pos + 9 + length])
            pos += 9 + length
            if tag == END:
                result, retire = pickle.loads(chunk)
                if result[0] == "ok":
                    return Forked(result[1], b"".join(parts)), not retire
                error = remote_problem(result, "a query process")
                raise Answered(error, not retire)
            parts.append(chunk)
        if pos and pos == len(buffer):
            del buffer[:]
            pos = 0
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeLimit(f"the query ran longer than {timeout:g} s and was stopped; narrow it or add LIMIT")
        if not readable([sock.fileno()], left):
            continue
        chunk = sock.recv(1 << 20)
        if not chunk:
            status = reap(child.pid)
            child.reaped = status is not None
            raise Died(started, status, drain(child.err))
        buffer += chunk
        size += len(chunk)
        if limit is not None and size > limit:
            raise ResponseTooLarge(max_bytes or 0)


class Answered(Exception):
    """A problem the child answered (the child lives on if ``reusable``)."""

    def __init__(self, problem: Exception, reusable: bool) -> None:
        super().__init__(problem)
        self.problem, self.reusable = problem, reusable
