"""Warm query processes (``kgservice/querypool.py``): no fork per query, and still every guarantee.

A query runs in a process forked ahead of time that answers many queries. These tests make the
design fail where it could be wrong: a child that answers from the store as it was before a
write, a child that outlives its time limit or the server, a dead child handed a query, a
socket of the server kept open by a child.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyoxigraph as ox
import pytest
from serverutil import RealServer, create_token, http_request

from kgservice import querypool
from kgservice.isolation import ProcessCrashed, TimeLimit, no_fork
from kgservice.querypool import QueryPool
from kgservice.queryrun import QueryLimits, QueryRun
from kgservice.stores.oxigraph import OxigraphSite

from .conftest import Apps, assert_problem, issue, settings_of, vignette

LIMITS = QueryLimits(timeout_s=10.0, max_rows=10_000, max_bytes=1 << 20, max_memory_bytes=256 << 20)
EX = "http://example.org/"


def eventually(check: Callable[[], Any], seconds: float = 10.0) -> Any:
    """``check()``'s first truthy value, polled for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.02)
    raise AssertionError(f"not within {seconds} s: {check}")


def gone(pid: int) -> bool:
    """No such process, or only its zombie (a killed child not reaped yet still shows)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def pid_work(request: Any, started: Callable[[], None], emit: Callable[[bytes], None]) -> Any:
    """A child's work for the pool tests: say which process answered, or misbehave as asked."""
    started()
    if request == "spin":
        while True:
            pass
    if request == "abort":
        os.abort()
    emit(str(os.getpid()).encode())
    return "text/plain"


@pytest.fixture
def pool() -> Iterator[QueryPool]:
    made = QueryPool(pid_work, ready=lambda: None, size=2)
    yield made
    made.close()


def warm(pool: QueryPool, n: int = 2) -> set[int]:
    """Ask once (which wakes the keeper), then wait until ``n`` children are ready."""
    answered_by(pool)
    return ready_children(pool, n)


def ready_children(pool: QueryPool, n: int) -> set[int]:
    def ready() -> set[int] | None:
        pids = pool.pids()
        return pids if len(pids) >= n and not pool._starting else None

    return eventually(ready)  # type: ignore[no-any-return]


def answered_by(pool: QueryPool, request: str = "pid", timeout: float = 10) -> int:
    return int(pool.run(request, timeout, max_memory=LIMITS.max_memory_bytes).body)


# -- the pool, with work that says which process answered -----------------------------------------


def test_queries_are_answered_by_warm_children_not_a_fork_each(pool: QueryPool) -> None:
    ready = warm(pool)
    assert {answered_by(pool) for _ in range(20)} <= ready


def test_a_child_forked_before_a_write_never_answers_after_it(pool: QueryPool) -> None:
    for _ in range(5):
        before = warm(pool)
        with no_fork():  # what every write, flush and compaction of a store opens
            pass
        assert answered_by(pool) not in before
        assert eventually(lambda before=before: all(gone(pid) for pid in before))  # retired: killed, reaped


def test_a_query_past_its_limit_kills_its_child_and_the_next_one_is_answered(pool: QueryPool) -> None:
    ready = warm(pool)
    with pytest.raises(TimeLimit):
        pool.run("spin", 0.5, max_memory=LIMITS.max_memory_bytes)
    killed = ready - pool.pids()
    assert len(killed) == 1 and gone(next(iter(killed))), "the spinning child is gone, its CPU freed"
    assert answered_by(pool) in ready  # the other warm child
    eventually(lambda: len(pool.pids()) == 2)  # and the pool is whole again


def test_a_child_killed_between_queries_is_replaced_and_the_query_still_answered(pool: QueryPool) -> None:
    ready = warm(pool)
    for pid in ready:
        os.kill(pid, signal.SIGKILL)
    eventually(lambda: all(gone(pid) for pid in ready))
    assert answered_by(pool) not in ready  # not a problem: the query never ran in a dead child
    assert not ready_children(pool, 2) & ready


def test_a_child_that_crashes_during_a_query_is_a_problem_and_is_replaced(pool: QueryPool) -> None:
    ready = warm(pool)
    with pytest.raises(ProcessCrashed):
        pool.run("abort", 10, max_memory=LIMITS.max_memory_bytes)
    assert len(ready - pool.pids()) == 1
    assert answered_by(pool) > 0
    eventually(lambda: len(pool.pids()) == 2)


def test_a_warm_child_holds_no_socket_of_the_server(pool: QueryPool) -> None:
    """A connection the server closes must close: a child holding a copy of it would keep it open."""
    server_end, client_end = socket.socketpair()
    try:
        ready = warm(pool)
        server_end.close()
        client_end.settimeout(5)
        assert client_end.recv(1) == b"", "the peer sees end of file"
        assert ready
    finally:
        client_end.close()


def test_warm_children_are_sandboxed_and_memory_limited(pool: QueryPool) -> None:
    for pid in warm(pool):
        status = Path(f"/proc/{pid}/status").read_text()
        assert "\nSeccomp:\t2" in status and "\nNoNewPrivs:\t1" in status, status
        limits = Path(f"/proc/{pid}/limits").read_text()
        address_space = next(line for line in limits.splitlines() if line.startswith("Max address space"))
        assert "unlimited" not in address_space, address_space


# -- a real store: read your writes -----------------------------------------------------------------


def case_quads(n: int) -> list[ox.Quad]:
    graph = ox.NamedNode(f"{EX}case/{n}")
    return [ox.Quad(graph, ox.NamedNode(f"{EX}seq"), ox.Literal(str(n)), graph)]


def count_cases(site: OxigraphSite) -> int:
    run = QueryRun(f"SELECT (COUNT(*) AS ?n) WHERE {{ ?c <{EX}seq> ?v }}", "text/csv", None)
    return int(site.run_limited(run, LIMITS).body.split()[1])


@pytest.mark.parametrize("disk", [False, True], ids=["memory", "disk"])
def test_a_write_is_seen_by_the_very_next_query(tmp_path: Path, disk: bool) -> None:
    site = OxigraphSite("north", tmp_path / "store" if disk else None)
    try:
        assert count_cases(site) == 0
        for n in range(1, 16):
            eventually(lambda: site._queries.pids())  # a warm child holds the store as it was
            with site._writing(1):
                site.store.extend(case_quads(n))
            assert count_cases(site) == n
            if n % 5 == 0:
                site.flush()
                assert count_cases(site) == n
                site.compact()
                assert count_cases(site) == n
    finally:
        site.stop_queries()


def test_queries_while_another_thread_writes_see_every_acknowledged_write(tmp_path: Path) -> None:
    site = OxigraphSite("north", tmp_path / "store")
    acknowledged, problems, stop = [0], [], threading.Event()

    def write() -> None:
        for n in range(1, 41):
            with site._writing(1):
                site.store.extend(case_quads(n))
            acknowledged[0] = n
            time.sleep(0.01)
        stop.set()

    def read() -> None:
        while not stop.is_set():
            at_least = acknowledged[0]
            seen = count_cases(site)
            if seen < at_least:
                problems.append((at_least, seen))

    try:
        count_cases(site)
        readers = [threading.Thread(target=read) for _ in range(3)]
        writer = threading.Thread(target=write)
        for thread in [*readers, writer]:
            thread.start()
        for thread in [writer, *readers]:
            thread.join(60)
        assert stop.is_set() and not problems, problems
        assert count_cases(site) == 40
    finally:
        stop.set()
        site.stop_queries()


def test_the_api_reads_its_writes_over_many_rounds(make_app: Apps) -> None:
    app = make_app()
    who = issue(settings_of(app), "north", "cases:read", "cases:write")
    client = app.test_client()
    ask = "ASK { GRAPH <https://w3id.org/esi-kg/case/north/{id}> { ?s ?p ?o } }"
    for n in range(8):
        case = vignette("p01", id=f"rw-{n}")
        assert client.post("/cases", json=case, headers=who.headers).status_code == 201
        found = client.get("/sparql", query_string={"query": ask.replace("{id}", f"rw-{n}")}, headers=who.headers)
        assert found.get_json()["boolean"] is True, n
        assert client.delete(f"/cases/rw-{n}", headers=who.headers).status_code == 204
        after = client.get("/sparql", query_string={"query": ask.replace("{id}", f"rw-{n}")}, headers=who.headers)
        assert after.get_json()["boolean"] is False, n
    busy = client.get("/sparql", query_string={"query": "SELECT (COUNT(*) AS ?n) WHERE { ?a ?b ?c . ?d ?e ?f }"},
                      headers=who.headers)
    assert busy.status_code == 200 or assert_problem(busy, 503)


# -- the real server --------------------------------------------------------------------------------


def children(parent: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _ppid(entry.name) == parent:
            found.add(int(entry.name))
    return found


def settled_children(parent: int) -> set[int]:
    """The children of ``parent`` once they have not changed for half a second (reasoning workers)."""
    last, since = children(parent), time.monotonic()
    deadline = since + 30
    while time.monotonic() < deadline and time.monotonic() - since < 0.5:
        time.sleep(0.05)
        now = children(parent)
        if now != last:
            last, since = now, time.monotonic()
    return last


def gunicorn_worker(master: int) -> int:
    return eventually(lambda: next((int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()
                                    and _ppid(e.name) == master), None))


def _ppid(pid: str) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


@pytest.mark.parametrize("how", ["stopped", "worker-killed"])
def test_no_query_process_outlives_the_server(tmp_path: Path, how: str) -> None:
    server = RealServer(tmp_path / "data").start()
    try:
        assert server.process is not None
        token = create_token(server.data_dir, "north", "cases:read")
        worker = gunicorn_worker(server.process.pid)
        before = settled_children(worker)
        for _ in range(3):
            reply = http_request(server.base_url, "GET", "/sparql?query=ASK%7B%7D", token=token,
                                 headers={"Accept": "application/sparql-results+json"})
            assert reply.status == 200, reply.body[:300]
        warm = eventually(lambda: children(worker) - before if len(children(worker) - before) >= 2 else None)
        if how == "stopped":
            server.process.send_signal(signal.SIGTERM)
            server.process.wait(30)
        else:
            os.kill(worker, signal.SIGKILL)  # the master starts another worker; this one's children must go
        assert eventually(lambda: all(gone(pid) for pid in warm)), warm
    finally:
        server.kill()


def test_the_keeper_forks_nothing_for_a_store_nobody_queries(pool: QueryPool) -> None:
    assert pool.pids() == set()
    time.sleep(0.2)
    assert pool.pids() == set()
    assert querypool.IDLE_S > 0


def test_every_write_to_the_embedded_store_moves_the_generation_on() -> None:
    """A write outside ``no_fork`` (or ``_writing``, which opens it) would leave warm children answering
    from the store as it was: every mutating call on a pyoxigraph Store in the store's module is inside one."""
    import ast
    import inspect

    from kgservice.stores import oxigraph

    mutating = {"add", "add_graph", "bulk_extend", "bulk_load", "clear", "clear_graph", "extend", "flush", "load",
                "optimize", "remove", "remove_graph", "update"}
    tree = ast.parse(inspect.getsource(oxigraph))
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(
                isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, "attr",
                                                                     getattr(item.context_expr.func, "id", ""))
                in ("_writing", "no_fork") for item in node.items):
            guarded |= {id(inner) for inner in ast.walk(node)}
    writes = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in mutating and isinstance(node.func.value, ast.Attribute)
              and node.func.value.attr == "store"]
    assert writes, "the store's writes were found"
    unguarded = [f"line {w.lineno}: store.{w.func.attr}" for w in writes if id(w) not in guarded]  # type: ignore[attr-defined]
    assert not unguarded, unguarded
