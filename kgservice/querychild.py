"""The life of a warm query process (:mod:`kgservice.querypool`): set up once, then answer queries.

After the fork it keeps nothing of the server's but the open stores: it closes every socket
and pipe it inherited but its own socket and stderr, leaves the server's signal handlers, dies
with the server (``PR_SET_PDEATHSIG``), enters the network sandbox and its memory limit, takes
its snapshot of the store and says ready (``R``; ``N`` if the sandbox was refused). Then, per
request (8-byte length + pickle): ``S`` when read, ``D`` + 8-byte length + bytes of the answer
as it is written, and ``E`` + 8-byte length + pickle of (result, retire): ``retire`` asks the
server not to give it another query (it crashed in Python, or grew past half its memory limit).
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import pickle
import signal
import socket
import stat
from collections.abc import Callable
from typing import Any

from .errors import ESIError
from .isolation import MEMORY_DETAIL, MemoryLimit, NotIsolated, enter_sandbox, failure, limit_address_space

READY, REFUSED, STARTED, DATA, END = b"R", b"N", b"S", b"D", b"E"
_CHUNK = 256 * 1024
_PR_SET_PDEATHSIG = 1

#: What a child runs for each request: ``work(request, started, emit)``, returning a picklable value
#: (``started()`` once it holds its snapshot of the store, as ``isolation.run_forked_streaming`` says).
Work = Callable[[Any, Callable[[], None], Callable[[bytes], None]], Any]


def warm_main(sock: socket.socket, err: int, parent: int, work: Work, ready: Callable[[], None],
               max_memory: int | None) -> None:
    """A warm child's whole life: set up once, then answer requests until the socket closes."""
    try:
        os.dup2(err, 2)
        quiet = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            os.dup2(quiet, fd)
        os.close(quiet)
        if faulthandler.is_enabled():
            faulthandler.enable(2)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)  # not the server's handlers: a signal for the server ends us
        _close_inherited(sock.fileno())
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
            _answer(sock, work, request, base, max_memory)
    finally:
        os._exit(0)


def _close_inherited(keep: int) -> None:
    """Close every socket and pipe inherited from the server but ours (and stderr): a client's
    connection, the listener, another child's pipe (whose reader waits for its end of file)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in (keep, 2):
            continue
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode):
                os.close(fd)
        except OSError:
            continue


def _receive(sock: socket.socket) -> Any:
    head = _exactly(sock, 8)
    if head is None:
        return None
    body = _exactly(sock, int.from_bytes(head, "big"))
    return None if body is None else pickle.loads(body)


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
    pending = bytearray()

    def emit(data: bytes) -> None:
        pending.extend(DATA + len(data).to_bytes(8, "big"))
        pending.extend(data)
        if len(pending) >= _CHUNK:
            sock.sendall(pending)
            del pending[:]

    retire = False
    try:
        result: Any = ("ok", work(request, _nothing, emit))
    except MemoryError:
        result, retire = failure(MemoryLimit(MEMORY_DETAIL)), True
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as a problem
        result, retire = failure(exc), not isinstance(exc, ESIError)
    if not retire and max_memory is not None:
        retire = _vm_size() > base + max_memory // 2
    payload = pickle.dumps((result, retire), protocol=pickle.HIGHEST_PROTOCOL)
    pending.extend(END + len(payload).to_bytes(8, "big") + payload)
    sock.sendall(pending)


def _nothing() -> None:
    pass


def _vm_size() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
