"""Work that must be stoppable: SPARQL queries in a forked child, reasoning in worker processes.

Neither Oxigraph nor the reasoners can be interrupted from Python, and a thread that is
abandoned keeps its CPU. So a query runs in a child forked from the server (it inherits the
open store, reads it, writes its serialized result to a pipe and exits), and reasoning runs
in a pool of worker processes (:mod:`kgservice.workers`). Past its time limit the child or worker is killed with
SIGKILL: its CPU is freed at once, and the caller gets ``503``.

Reasoning in worker processes also lets the service use every core: the server process
keeps the HTTP traffic and the store, the workers the CPU-bound pipeline.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import pickle
import resource
import select
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import ESIError, InternalError, NetworkRefused, Problem
from .queryrun import ResponseTooLarge
from .security import sandbox

log = logging.getLogger(__name__)


class TimeLimit(ESIError):
    status = 503
    type_slug = "time-limit"
    title = "Time limit reached"


class ProcessCrashed(ESIError):
    """The child or worker died while working on the request (a crash in native code)."""

    status = 422
    type_slug = "process-crashed"
    title = "The request stopped its process"


class NotIsolated(ESIError):
    """The network sandbox could not be set up, so the work was not done (fail closed)."""

    status = 503
    type_slug = "not-isolated"
    title = "Not isolated"


def failure(exc: BaseException) -> tuple[str, dict[str, Any], str]:
    """What a child or worker sends back for an error: its problem JSON (never the exception),
    and the traceback the parent should log (a refused connection, or anything unexpected)."""
    trace = "".join(traceback.format_exception(exc))
    if isinstance(exc, PermissionError):  # the sandbox (or the audit hook) refused a connection
        return ("failed", NetworkRefused("the request tried to reach the network, which this service never does; "
                                         "it was refused and logged").problem(), trace)
    if isinstance(exc, ESIError):
        return ("failed", exc.problem(), trace if exc.status >= 500 else "")
    return ("failed", InternalError().problem(), trace)


def remote_problem(failure: tuple[str, dict[str, Any], str], where: str) -> Problem:
    """The problem sent back by a child or worker; its traceback, if any, goes to the log here."""
    _, body, trace = failure
    if trace:
        log.log(logging.ERROR if body.get("status", 500) >= 500 else logging.WARNING, "%s answered %s (%s):\n%s",
                where, body.get("status"), body.get("title"), trace)
    return Problem(body)


def enter_sandbox(what: str) -> None:
    """The kernel's network sandbox for this process, or :class:`NotIsolated` (nothing is run)."""
    try:
        sandbox.enter(what)
    except sandbox.SandboxUnavailable as exc:
        raise NotIsolated(f"{what} could not be cut off from the network, so it did not run ({exc})") from exc


def death_of(exitcode: int | None) -> str:
    """How a process ended, in words: 'killed by SIGSEGV', 'exited with 1'."""
    if exitcode is None:
        return "still running"
    return f"killed by {signal.Signals(-exitcode).name}" if exitcode < 0 else f"exited with {exitcode}"


# -- queries: fork, read, exit -----------------------------------------------------------------

_fork_lock = threading.RLock()
_generation = 0
#: Called (outside the lock) after every write, flush or compaction: warm query processes of the
#: store as it was are retired and replaced (:mod:`kgservice.querypool`).
changed_listeners: list[Callable[[], None]] = []


@contextmanager
def no_fork() -> Iterator[None]:
    """While the calling thread writes, flushes or compacts the store, no query child is forked.

    A child forked while another thread of the server held RocksDB's mutex would inherit it
    held and wait for ever (the retries below catch what RocksDB's own background threads do;
    the server's own writes need not add to it). Every write to a store must go through here:
    it also moves the store :func:`generation` on, so that no process forked before the write
    answers a query that starts after it.
    """
    global _generation
    with _fork_lock:
        _generation += 1
        yield
    for listener in changed_listeners:
        listener()


def generation() -> int:
    """How many write windows (:func:`no_fork`) have opened in this process: a process forked at
    generation ``g`` holds every write acknowledged before it, and none opened after it."""
    return _generation


def fork() -> tuple[int, int]:
    """``os.fork()`` outside every :func:`no_fork` window: (pid, the generation the child holds)."""
    with _fork_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+ warns on fork with threads
        return os.fork(), _generation


class StoreBusy(TimeLimit):
    """The store could not be read at all (not the query's fault): try again in a moment."""

    type_slug = "store-busy"
    title = "Store busy"
    headers = {"Retry-After": "1"}


class MemoryLimit(ESIError):
    status = 422
    type_slug = "memory-limit"
    title = "Memory limit reached"


#: How long a forked child may take to get its snapshot of the store before it is presumed
#: stuck and forked again. A child can inherit a RocksDB mutex that a background thread of
#: the parent held at the moment of the fork (seen right after a store is opened, while
#: RocksDB flushes and compacts); such a child would wait forever.
START_GRACE_S = 1.0
START_ATTEMPTS = 4
_STARTED, _DATA, _END = b"S", b"D", b"E"
_STDERR_KEPT = 4096


class _Stuck(Exception):
    pass


@dataclass
class Forked:
    """What a forked child returned, and the bytes it emitted on the way."""

    value: Any
    body: bytes


def run_forked(fn: Callable[[Callable[[], None]], Any], timeout: float) -> Any:
    """Run ``fn(started)`` in a forked child and return its (picklable) result, or raise (see below)."""
    return run_forked_streaming(lambda started, emit: fn(started), timeout).value


def run_forked_streaming(fn: Callable[[Callable[[], None], Callable[[bytes], None]], Any], timeout: float, *,
                         max_bytes: int | None = None, max_memory: int | None = None) -> Forked:
    """Run ``fn(started, emit)`` in a forked child; return its (picklable) result and what it emitted.

    The child inherits the open Oxigraph store and only reads it. ``fn`` calls ``started()``
    once it holds a snapshot of the store; a child that does not within ``START_GRACE_S`` is
    killed and forked again, and after ``START_ATTEMPTS`` the store is answered busy. ``emit``
    sends bytes to the parent, which reads them as they come (a large result cannot block on a
    full pipe) and keeps at most ``max_bytes`` of them. The child may take ``max_memory`` bytes
    more address space than the server has; past it the engine's allocation fails and the child
    dies, answered :class:`MemoryLimit`. It is killed when the time limit passes.
    """
    deadline = time.monotonic() + timeout
    for _attempt in range(START_ATTEMPTS):
        try:
            return _run_child(fn, deadline, timeout, max_bytes, max_memory)
        except _Stuck:
            continue
    raise StoreBusy("the store was busy and the query could not start; try again")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _child(fn: Callable[..., Any], out: int, err: int, max_memory: int | None) -> None:
    """The forked child's whole life: run ``fn``, send frames to ``out``, exit without cleanup."""
    try:
        os.dup2(err, 2)  # what the engine says when it aborts reaches the parent's log
        if faulthandler.is_enabled():
            faulthandler.enable(2)  # and so does Python's report of a crash

        def emit(data: bytes) -> None:
            _write_all(out, _DATA + len(data).to_bytes(8, "big") + data)

        try:
            enter_sandbox("the query process")  # before the child touches the query
            if max_memory is not None:
                limit_address_space(max_memory)
            payload = pickle.dumps(("ok", fn(lambda: os.write(out, _STARTED), emit)),
                                   protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:
            payload = pickle.dumps(failure(MemoryLimit(MEMORY_DETAIL)))
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as a problem
            payload = pickle.dumps(failure(exc))
        _write_all(out, _END + payload)
    finally:
        os._exit(0)


MEMORY_DETAIL = "the query needed more memory than its limit (ESI_QUERY_MAX_MEMORY_MB) and was stopped; narrow it"


def limit_address_space(extra: int) -> None:
    with open("/proc/self/status", encoding="ascii") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, size + extra))


def _run_child(fn: Callable[..., Any], deadline: float, timeout: float, max_bytes: int | None,
               max_memory: int | None) -> Forked:
    read_end, write_end = os.pipe()
    err_read, err_write = os.pipe()
    pid, _ = fork()
    if pid == 0:
        os.close(read_end)
        os.close(err_read)
        _child(fn, write_end, err_write, max_memory)
    os.close(write_end)
    os.close(err_write)
    raw, stderr = bytearray(), b""
    grace = time.monotonic() + START_GRACE_S
    status: int | None = None
    limit = None if max_bytes is None else max_bytes + (1 << 16)  # room for the frames and the trailer
    try:
        open_fds = [read_end, err_read]
        while read_end in open_fds:
            now = time.monotonic()
            if not raw and now > grace:
                raise _Stuck()
            if now >= deadline:
                raise TimeLimit(f"the query ran longer than {timeout:g} s and was stopped; narrow it or add LIMIT")
            ready = readable(open_fds, min(deadline - now, 0.05 if not raw else 0.25))
            for fd in ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    open_fds.remove(fd)
                elif fd == err_read:
                    stderr = kept(stderr, chunk)
                else:
                    raw += chunk
                    if limit is not None and len(raw) > limit:
                        raise ResponseTooLarge(max_bytes or 0)
        status = reap(pid)
        if err_read in open_fds:
            stderr = kept(stderr, drain(err_read))
    finally:
        os.close(read_end)
        os.close(err_read)
        if status is None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
    return _decode(raw, status, stderr)


def readable(fds: list[int], timeout: float) -> list[int]:
    """Which of ``fds`` can be read within ``timeout`` seconds (``poll``: any descriptor number)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return [fd for fd, _ in poller.poll(max(0, int(timeout * 1000) + 1))]


def reap(pid: int) -> int | None:
    """The exit status of a child that closed its pipe (it is exiting), or None after a second."""
    for _ in range(100):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    return None


def drain(fd: int) -> bytes:
    """What can be read from ``fd`` now, without waiting (the first and last bytes of it, as :func:`kept`)."""
    os.set_blocking(fd, False)
    said = b""
    try:
        while chunk := os.read(fd, 1 << 16):
            said = kept(said, chunk)
    except OSError:  # BlockingIOError: nothing more for now
        pass
    return said


def kept(stderr: bytes, chunk: bytes) -> bytes:
    """The first and the last ``_STDERR_KEPT`` bytes a child wrote: the cause comes first (the engine's
    message), a traceback after it."""
    both = stderr + chunk
    if len(both) <= 2 * _STDERR_KEPT:
        return both
    return both[:_STDERR_KEPT] + b"\n[...]\n" + both[-_STDERR_KEPT:]


def _decode(raw: bytearray, status: int | None, stderr: bytes) -> Forked:
    """Read the child's frames: ``S``, then ``D`` + 8-byte length + bytes, then ``E`` + pickle."""
    view, pos, parts = memoryview(raw), 0, []
    if raw[:1] == _STARTED:
        pos = 1
    while pos < len(raw):
        tag = raw[pos:pos + 1]
        if tag == _DATA and pos + 9 <= len(raw):
            size = int.from_bytes(raw[pos + 1:pos + 9], "big")
            parts.append(bytes(view[pos + 9:pos + 9 + size]))
            pos += 9 + size
        elif tag == _END:
            result = pickle.loads(view[pos + 1:])
            if result[0] == "ok":
                return Forked(result[1], b"".join(parts))
            raise remote_problem(result, "a query process")
        else:
            break
    raise crashed(status, stderr)


def crashed(status: int | None, stderr: bytes) -> ESIError:
    """Why a child died without an answer: its memory limit, or a crash (logged with what it said)."""
    said = stderr.decode("utf-8", "replace").strip()
    how = death_of(os.waitstatus_to_exitcode(status) if status is not None else None)
    if "memory allocation of" in said or "MemoryError" in said:
        log.warning("a query process reached its memory limit (%s): %s", how, said[:500])
        return MemoryLimit(MEMORY_DETAIL)
    log.error("a query process died without an answer (%s): %s", how, said or "it said nothing")
    return ProcessCrashed(f"the query stopped the process that ran it ({how}); it was logged")
