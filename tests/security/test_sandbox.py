"""Nothing goes out, even from Rust or C: the kernel refuses query children and reasoning workers
every network connection (``kgservice/security/sandbox.py``), whatever the query check lets through.

The listener counts connections. The positive control runs Oxigraph's own HTTP client in this
(unsandboxed) test process: every spelling of ``SERVICE`` below reaches the listener there.
The same queries run by the query child, with the Python check bypassed, reach it zero times.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pyoxigraph as ox
import pytest

from kgservice import workerproc
from kgservice.config import Settings
from kgservice.errors import Problem
from kgservice.isolation import NotIsolated, run_forked
from kgservice.security import sandbox
from kgservice.workers import ReasoningPool

from .conftest import Listener, vignette

#: Ways to write SERVICE that Oxigraph's parser reads as a SERVICE clause; ``{url}`` is the
#: listener. The ones glued to a literal passed the word-based query check (issue 9, item 1).
SPELLINGS = {
    "plain": "SELECT ?x WHERE { SERVICE <{url}> { ?a ?b ?x } }",
    "after-true": "SELECT ?x WHERE { ?s ?p trueSERVICE<{url}>{ ?a ?b ?x } }",
    "after-false": "SELECT ?x WHERE { ?s ?p falseSERVICE<{url}>{ ?a ?b ?x } }",
    "lower-case-after-true": "SELECT ?x WHERE { ?s ?p trueservice<{url}>{ ?a ?b ?x } }",
    "after-integer": "SELECT ?x WHERE { ?s ?p 58SERVICE<{url}>{ ?a ?b ?x } }",
    "after-decimal": "SELECT ?x WHERE { ?s ?p 1.5SERVICE<{url}>{ ?a ?b ?x } }",
    "after-double": "SELECT ?x WHERE { ?s ?p 1e3SERVICE<{url}>{ ?a ?b ?x } }",
    "after-typed-literal": 'SELECT ?x WHERE { ?s ?p "58"^^<http://www.w3.org/2001/XMLSchema#integer>SERVICE<{url}>'
                           "{ ?a ?b ?x } }",
    "after-filter": "SELECT ?x WHERE { FILTER(true)SERVICE<{url}>{ ?a ?b ?x } }",
    "silent-after-true": "SELECT ?x WHERE { ?s ?p trueSERVICE SILENT<{url}>{ ?a ?b ?x } }",
}
DATA = ('INSERT DATA { <https://w3id.org/esi-kg/case/s> <https://w3id.org/esi-kg/ontology#p> '
        'true, false, 58, 1.5, 1e3 }')


def _store() -> ox.Store:
    store = ox.Store()
    store.update(DATA)
    return store


def _query(name: str, listener: Listener) -> str:
    return SPELLINGS[name].replace("{url}", listener.url(f"/{name}"))


def test_oxigraph_fetches_every_spelling_when_nothing_stops_it(listener: Listener) -> None:
    """Positive control: unsandboxed, Oxigraph's engine connects for each spelling."""
    store = _store()
    for name in SPELLINGS:
        before = listener.hits
        try:
            list(store.query(_query(name, listener)))
        except OSError:
            pass  # the listener closes without answering; what matters is that it was reached
        assert listener.hits > before, name


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_a_query_child_cannot_reach_the_network_whatever_the_spelling(listener: Listener, name: str) -> None:
    """The query runner with the query check bypassed: the kernel refuses the connection."""
    store = _store()
    query = _query(name, listener)

    def evaluate(started: Any) -> int:
        started()
        return len(list(store.query(query)))

    try:
        rows = run_forked(evaluate, timeout=10)
    except Problem as exc:
        assert exc.status == 403, exc.problem()
        assert exc.problem()["type"].endswith("/network-refused")
    else:
        assert "silent" in name and rows >= 0  # SERVICE SILENT turns the refusal into no rows
    listener.assert_untouched(name)


NATIVE_SCRIPT = textwrap.dedent("""
    import ctypes, json, socket, sys, threading
    port, mode = int(sys.argv[1]), sys.argv[2]
    libc = ctypes.CDLL(None, use_errno=True)
    inherited = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # made before the sandbox
    if mode == "sandboxed":
        from kgservice.security import sandbox
        sandbox.enter("the test")

    class SockaddrIn(ctypes.Structure):
        _fields_ = [("family", ctypes.c_ushort), ("port", ctypes.c_uint16), ("addr", ctypes.c_uint32),
                    ("zero", ctypes.c_char * 8)]

    target = SockaddrIn(socket.AF_INET, socket.htons(port), int.from_bytes(socket.inet_aton("127.0.0.1"), "little"))

    def c_connect(fd):
        if fd < 0:
            return "socket: " + str(ctypes.get_errno())
        done = libc.connect(fd, ctypes.byref(target), ctypes.sizeof(target))
        return "connected" if done == 0 else "connect: " + str(ctypes.get_errno())

    out = {
        "c-socket-inet": c_connect(libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)),
        "c-socket-inet6": "made" if libc.socket(socket.AF_INET6, socket.SOCK_STREAM, 0) >= 0 else "refused",
        "c-socket-udp": "made" if libc.socket(socket.AF_INET, socket.SOCK_DGRAM, 0) >= 0 else "refused",
        "c-socket-netlink": "made" if libc.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) >= 0 else "refused",
        "c-connect-inherited": c_connect(inherited.fileno()),
    }
    box = {}
    thread = threading.Thread(target=lambda: box.update(t=c_connect(libc.socket(socket.AF_INET, 1, 0))))
    thread.start(); thread.join()
    out["c-socket-in-new-thread"] = box["t"]
    a, b = socket.socketpair()  # Unix-domain plumbing keeps working
    a.sendall(b"ok"); out["socketpair"] = b.recv(2).decode()
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        unix.sendto(b"x", "/nonexistent/esi-kg-socket")
        out["unix-sendto-address"] = "sent"
    except PermissionError:
        out["unix-sendto-address"] = "refused"
    except OSError:
        out["unix-sendto-address"] = "tried"
    print(json.dumps(out))
""")


def _native(listener: Listener, mode: str) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", NATIVE_SCRIPT, str(listener.port), mode], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_without_the_sandbox_native_code_connects(listener: Listener) -> None:
    """Positive control for the next test: the same C calls reach the listener."""
    out = _native(listener, "open")
    assert out["c-socket-inet"] == "connected" and out["c-connect-inherited"] == "connected", out
    assert listener.hits >= 3


def test_the_sandbox_refuses_native_sockets_and_keeps_unix_plumbing(listener: Listener) -> None:
    eperm = "1"
    out = _native(listener, "sandboxed")
    assert out == {
        "c-socket-inet": f"socket: {eperm}",
        "c-socket-inet6": "refused",
        "c-socket-udp": "refused",
        "c-socket-netlink": "refused",
        "c-connect-inherited": f"connect: {eperm}",
        "c-socket-in-new-thread": f"socket: {eperm}",
        "socketpair": "ok",
        "unix-sendto-address": "refused",
    }, out
    listener.assert_untouched("sandboxed process")


def test_the_filter_program_is_well_formed_for_each_architecture() -> None:
    for machine in ("x86_64", "aarch64"):
        code = sandbox.program(machine)
        assert len(code) % 8 == 0 and 10 < len(code) // 8 < 40
    with pytest.raises(sandbox.SandboxUnavailable):
        sandbox.program("riscv64")


# -- fail closed -------------------------------------------------------------------------------------


def _unavailable(what: str = "") -> None:
    raise sandbox.SandboxUnavailable(f"{what}: seccomp(SECCOMP_SET_MODE_FILTER) failed: EINVAL (22)")


def test_a_query_is_not_run_when_the_sandbox_cannot_be_set_up(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sandbox, "enter", _unavailable)  # the forked child inherits the failure

    def evaluate(started: Any) -> None:
        raise AssertionError("the query ran outside the sandbox")

    with caplog.at_level(logging.ERROR, logger="kgservice.isolation"):
        with pytest.raises(Problem) as caught:
            run_forked(evaluate, timeout=10)
    assert caught.value.status == NotIsolated.status
    assert "could not be cut off from the network" in caught.value.problem()["detail"]
    assert any("seccomp" in record.getMessage() for record in caplog.records), caplog.text


def test_a_worker_refuses_to_start_without_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    monkeypatch.setattr(sandbox, "enter", _unavailable)
    parent, child = multiprocessing.Pipe()
    workerproc.worker_main(Settings(), child, guard=False)  # in this process: returns at once
    kind, message = parent.recv()
    assert kind == "refused" and "seccomp" in message


def test_a_zygote_refuses_for_every_worker_without_the_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing

    monkeypatch.setattr(sandbox, "enter", _unavailable)
    monkeypatch.setattr(workerproc, "_forget_parent", lambda conns: None)  # this is pytest's process
    pipes = [multiprocessing.Pipe() for _ in range(3)]
    workerproc.zygote_main(Settings(), [child for _, child in pipes], guard=False)  # returns at once
    for parent, _ in pipes:
        kind, message = parent.recv()
        assert kind == "refused" and "seccomp" in message


# -- the real processes ------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _descendants(pid: int) -> list[int]:
    from .conftest import children_of

    found, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def test_pool_workers_run_inside_the_sandbox(tmp_path: Path) -> None:
    pool = ReasoningPool(Settings(data_dir=tmp_path), 1)
    try:
        pid = pool._all[0].process.pid
        assert pid is not None
        status = _status(pid)
        assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1", status
    finally:
        pool.close()


@pytest.mark.slow
def test_the_real_server_sends_nothing_out_for_any_spelling(tmp_path: Path, listener: Listener) -> None:
    """``kgservice serve``: every spelling is a 4xx, the listener sees nothing, and the reasoning
    workers and a running query child are inside the sandbox (seccomp mode 2)."""
    from serverutil import RealServer, sparql_select

    with RealServer(tmp_path / "data", auth_required=False, reasoning_workers=1,
                    env={"ESI_QUERY_TIMEOUT_S": "4"}) as server:
        for key in ("p01", "p09"):  # stored cases give the patterns true, false and 58 to match
            assert server.request("POST", "/cases", vignette(key)).status == 201
        refused_by_the_kernel = []
        for name in SPELLINGS:
            reply = sparql_select(server.base_url, _query(name, listener))
            assert 400 <= reply.status < 500 or (reply.status == 200 and "silent" in name), (name, reply.body[:300])
            listener.assert_untouched(name)
            if reply.status == 403:
                refused_by_the_kernel.append(name)
        log = server.stderr()
        assert log.count("Operation not permitted") >= len(refused_by_the_kernel), log[-2000:]

        # the reasoning workers are forked from the gunicorn worker: known by the line each logs when ready
        workers = [int(pid) for pid in re.findall(r"reasoning worker (\d+) ready", log)]
        assert workers and set(workers) <= set(_descendants(server.process.pid)), ("no reasoning worker found", log)
        gunicorn_worker = [p for p in _descendants(server.process.pid) if p not in workers]
        for pid in workers:
            assert _status(pid)["Seccomp"] == "2", (pid, _cmdline(pid))

        slow = "SELECT (COUNT(*) AS ?n) WHERE { ?a ?b ?c . ?d ?e ?f . ?g ?h ?i . ?j ?k ?l }"
        thread = threading.Thread(target=sparql_select, args=(server.base_url, slow), daemon=True)
        thread.start()
        known = set(gunicorn_worker) | set(workers)
        seen: dict[int, str] = {}  # each query process, with the last state read of it: a warm one
        deadline = time.monotonic() + 3  # may be caught just forked, before it entered the sandbox
        while time.monotonic() < deadline and thread.is_alive():
            for pid in _descendants(server.process.pid):
                if pid not in known and "spawn" not in _cmdline(pid):
                    try:
                        seen[pid] = _status(pid)["Seccomp"]
                    except OSError:
                        seen.pop(pid, None)  # gone
            time.sleep(0.05)
        thread.join(10)
        assert seen and set(seen.values()) == {"2"}, seen


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def test_loader_workers_run_inside_the_sandbox(tmp_path: Path) -> None:
    """``kgservice load``'s worker processes reason over files: they enter the sandbox too."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from kgservice import bulk

    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=bulk._init_worker,
                             initargs=(Settings(data_dir=tmp_path),)) as pool:
        assert pool.submit(sandbox.entered).result(timeout=120) is True
