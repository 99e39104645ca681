"""Durability and concurrency of the real server (``kgservice serve``, gunicorn, Oxigraph on disk).

- kill -9: cases are POSTed in a loop while the whole server process group is SIGKILLed at
  a random moment, several rounds on one data directory. After each restart every case that
  was acknowledged with 201 is there and complete, and no case is partial (an asserted graph
  without its inferred graph, or the other way round).
- concurrency: 8 writer and 8 reader threads at once lose nothing and never get a 5xx.
- two POSTs of the same new id at the same moment: exactly one 201 and one 409.

Regression (``test_a_query_right_after_the_store_reopens_is_answered``): a SPARQL query runs
in a child forked from the server, and a fork taken while one of RocksDB's background
threads held the database mutex left the child deadlocked (503 after the time limit). The
child now reports when it holds its snapshot and is forked again if it does not within a
second; a 503 on these tiny queries fails the tests below.
"""

from __future__ import annotations

import copy
import gc
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from serverutil import FORK_DEADLOCK, TIME_LIMIT, RealServer, Reply, sparql_select, unordered

from kgservice.isolation import TimeLimit, run_forked
from kgservice.stores.oxigraph import Stores

pytestmark = pytest.mark.slow

VIGNETTES = Path(__file__).parent.parent / "data" / "vignettes"
BASE_CASE: dict[str, Any] = json.loads((VIGNETTES / "p01-primary-non-responder.json").read_text(encoding="utf-8"))[
    "case"]
CASE_BASE = "https://w3id.org/esi-kg/case/default/"
INFERRED = "/inferred"
SEED = 20261124

#: What a client sees when the server dies under it (or is not listening yet).
GONE = (OSError, http.client.HTTPException)
#: Short, so that a query hit by the fork deadlock costs seconds, not ten; real queries here take ms.
QUERY_TIMEOUT = {"ESI_QUERY_TIMEOUT_S": "3"}

CASE_GRAPHS = f"""SELECT DISTINCT ?g WHERE {{
  GRAPH ?g {{ ?s ?p ?o }} FILTER(STRSTARTS(STR(?g), "{CASE_BASE}"))
}}"""
COUNT_CASE_GRAPHS = f"""SELECT (COUNT(DISTINCT ?g) AS ?n) WHERE {{
  GRAPH ?g {{ ?s ?p ?o }} FILTER(STRSTARTS(STR(?g), "{CASE_BASE}"))
}}"""


def make_case(case_id: str, later_score: int) -> dict[str, Any]:
    """A valid case (public vignette p01) with its own id and day-11 pain score (0-10)."""
    case = copy.deepcopy(BASE_CASE)
    case["id"] = case_id
    case["pain_scores"][1]["score"] = later_score
    return case


# -- what the store holds ---------------------------------------------------------------------


def sparql_json(server: RealServer, query: str, known_bug: list[str]) -> dict[str, Any]:
    """A SELECT's JSON results. A 503 time-limit (the fork deadlock, FORK_DEADLOCK) is recorded and retried once."""
    for attempt in (1, 2):
        reply = sparql_select(server.base_url, query)
        if reply.status == 503 and attempt == 1 and reply.json().get("type") == TIME_LIMIT:
            known_bug.append(f"503 time-limit on a {len(query)}-character SPARQL query")
            continue
        assert reply.status == 200, reply.body
        return reply.json()  # type: ignore[no-any-return]
    raise AssertionError("unreachable")


def stored_case_graphs(server: RealServer, known_bug: list[str]) -> tuple[set[str], set[str]]:
    """Ids with an asserted graph, and ids with an inferred graph, read by SPARQL."""
    names = [b["g"]["value"].removeprefix(CASE_BASE)
             for b in sparql_json(server, CASE_GRAPHS, known_bug)["results"]["bindings"]]
    asserted = {n for n in names if not n.endswith(INFERRED)}
    inferred = {n.removesuffix(INFERRED) for n in names if n.endswith(INFERRED)}
    return asserted, inferred


def listed_ids(server: RealServer) -> tuple[set[str], int]:
    reply = server.request("GET", "/cases?per_page=1000")
    assert reply.status == 200, reply.body
    body = reply.json()
    assert "next" not in body, "more cases than one page; the test writes fewer"
    return {item["id"] for item in body["items"]}, body["total"]


def assert_complete(server: RealServer, case_id: str, sent: dict[str, Any], answer: dict[str, Any] | None) -> None:
    """The case reads back as sent, and its stored answer (the 201's, when there was one) is there."""
    got = server.request("GET", f"/cases/{case_id}")
    assert got.status == 200, (case_id, got.status, got.body)
    assert unordered(got.json()) == unordered(sent), case_id
    pathway = server.request("GET", f"/cases/{case_id}/pathway")
    assert pathway.status == 200, (case_id, pathway.status, pathway.body)
    assert pathway.json()["response"]["category"], case_id
    if answer is not None:
        assert pathway.json() == answer, case_id


# -- kill -9 ------------------------------------------------------------------------------------


@dataclass
class WriteLog:
    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> the 201's answer
    sent: dict[str, dict[str, Any]] = field(default_factory=dict)  # every case POSTed, answered or not
    unanswered: set[str] = field(default_factory=set)  # the server died (or was dead) before answering
    refused: list[tuple[str, int, bytes]] = field(default_factory=list)  # any answer other than 201
    lock: threading.Lock = field(default_factory=threading.Lock)


def write_until(server: RealServer, log: WriteLog, ids: Iterator[str], stop: threading.Event,
                rng: random.Random) -> None:
    """POST new cases as fast as the server takes them until ``stop``; record what became of each."""
    while not stop.is_set():
        with log.lock:
            case_id = next(ids)
            case = make_case(case_id, rng.randrange(11))
            log.sent[case_id] = case
        try:
            reply = server.request("POST", "/cases", case, timeout=20)
        except GONE:
            with log.lock:
                log.unanswered.add(case_id)
            time.sleep(0.005)
            continue
        with log.lock:
            if reply.status == 201:
                log.acknowledged[case_id] = reply.json()
            else:
                log.refused.append((case_id, reply.status, reply.body[:300]))


def check_after_crash(server: RealServer, log: WriteLog, known_bug: list[str]) -> int:
    """Every acknowledged case is present and complete; no case is partial. Returns the number stored."""
    for case_id, answer in sorted(log.acknowledged.items()):
        assert_complete(server, case_id, log.sent[case_id], answer)
    ids, total = listed_ids(server)
    asserted, inferred = stored_case_graphs(server, known_bug)
    assert asserted == inferred, (
        f"partial cases: asserted without inferred {sorted(asserted - inferred)}, "
        f"inferred without asserted {sorted(inferred - asserted)}")
    missing = sorted(set(log.acknowledged) - asserted)
    assert not missing, f"acknowledged with 201 but lost after SIGKILL: {missing}"
    unexpected = asserted - set(log.acknowledged) - log.unanswered
    assert not unexpected, f"stored, though never sent or refused: {sorted(unexpected)}"
    assert ids == asserted
    assert total == len(asserted)
    for case_id in sorted(asserted - set(log.acknowledged)):  # sent, never answered: complete if there
        assert_complete(server, case_id, log.sent[case_id], None)
    return len(asserted)


def test_sigkill_at_random_moments_loses_no_acknowledged_case(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    log = WriteLog()
    known_bug: list[str] = []
    counter = iter(range(1_000_000))
    ids = (f"k{n}" for n in counter)
    server = RealServer(tmp_path / "data", auth_required=False, reasoning_workers=2, env=QUERY_TIMEOUT)
    rounds, writers = 4, 2
    started = time.monotonic()
    try:
        for round_no in range(rounds):
            server.start()
            check_after_crash(server, log, known_bug)
            stop = threading.Event()
            threads = [threading.Thread(target=write_until, args=(server, log, ids, stop,
                                                                  random.Random(SEED + 10 * round_no + w)))
                       for w in range(writers)]
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.3, 2.0))
            server.kill()  # SIGKILL to the whole process group, mid-write
            stop.set()
            for thread in threads:
                thread.join(30)
                assert not thread.is_alive()
            assert not log.refused, log.refused
        server.start()
        stored = check_after_crash(server, log, known_bug)
    finally:
        server.stop()
    assert len(log.acknowledged) >= rounds, "too few writes acknowledged to test anything"
    assert stored >= len(log.acknowledged)
    assert time.monotonic() - started < 90
    assert not known_bug, f"{FORK_DEADLOCK} Here: {known_bug}"


# -- concurrency ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    """One open server for the concurrency tests, with two reasoning processes."""
    with RealServer(tmp_path_factory.mktemp("concurrent") / "data", auth_required=False,
                    reasoning_workers=2, env=QUERY_TIMEOUT) as running:
        yield running


@dataclass
class Shared:
    """What the writers have done, for the readers and the final check."""

    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # id -> every body sent for it
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> last acknowledged body
    errors: list[str] = field(default_factory=list)
    known_bug: list[str] = field(default_factory=list)  # 503 time-limit on SPARQL: FORK_DEADLOCK
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, what: str, reply: Reply | None = None, exc: BaseException | None = None) -> None:
        detail = f"{reply.status} {reply.body[:300]!r}" if reply is not None else repr(exc)
        with self.lock:
            self.errors.append(f"{what}: {detail}")

    def counted(self) -> None:
        with self.lock:
            self.requests += 1


def writer(server: RealServer, shared: Shared, w: int, until: float) -> None:
    rng = random.Random(SEED + w)
    mine: list[str] = []
    n = 0
    while time.monotonic() < until and n < 400:
        try:
            if mine and rng.random() < 0.35:
                case_id = rng.choice(mine)
                case = make_case(case_id, rng.randrange(11))
                with shared.lock:
                    shared.versions[case_id].append(case)
                reply = server.request("PUT", f"/cases/{case_id}", case)
                shared.counted()
                if reply.status != 200:
                    shared.error(f"PUT /cases/{case_id}", reply)
                    continue
            else:
                case_id = f"w{w}-{n}"
                n += 1
                case = make_case(case_id, rng.randrange(11))
                with shared.lock:
                    shared.versions[case_id] = [case]
                reply = server.request("POST", "/cases", case)
                shared.counted()
                if reply.status != 201:
                    shared.error(f"POST /cases ({case_id})", reply)
                    continue
                mine.append(case_id)
            with shared.lock:
                shared.latest[case_id] = case
        except GONE as exc:
            shared.error(f"writer {w}", exc=exc)
            return


def reader(server: RealServer, shared: Shared, r: int, until: float) -> None:
    rng = random.Random(SEED + 100 + r)
    while time.monotonic() < until:
        try:
            kind = rng.randrange(3)
            if kind == 0:
                reply = server.request("GET", "/cases?per_page=1000")
                if reply.status != 200:
                    shared.error("GET /cases", reply)
            elif kind == 1:
                with shared.lock:
                    known = sorted(shared.latest)
                if not known:
                    time.sleep(0.01)
                    continue
                case_id = rng.choice(known)
                reply = server.request("GET", f"/cases/{case_id}")
                if reply.status != 200:
                    shared.error(f"GET /cases/{case_id} (acknowledged)", reply)
                else:
                    with shared.lock:
                        sent = [unordered(v) for v in shared.versions[case_id]]
                    if unordered(reply.json()) not in sent:
                        shared.error(f"GET /cases/{case_id} is none of the bodies sent", reply)
            else:
                reply = sparql_select(server.base_url, COUNT_CASE_GRAPHS)
                if reply.status == 503 and reply.json().get("type") == TIME_LIMIT:
                    with shared.lock:
                        shared.known_bug.append("503 time-limit on a SPARQL count")
                elif reply.status != 200:
                    shared.error("SPARQL count", reply)
                else:
                    count = int(reply.json()["results"]["bindings"][0]["n"]["value"])
                    if count % 2:
                        shared.error(f"SPARQL count of case graphs is odd ({count}): a partial case", reply)
            shared.counted()
        except GONE as exc:
            shared.error(f"reader {r}", exc=exc)
            return


def test_concurrent_writers_and_readers_lose_nothing(server: RealServer) -> None:
    shared = Shared()
    until = time.monotonic() + 6.0
    threads = [threading.Thread(target=writer, args=(server, shared, w, until)) for w in range(8)]
    threads += [threading.Thread(target=reader, args=(server, shared, r, until)) for r in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive()
    assert not shared.errors, "\n".join(shared.errors[:20])
    assert len(shared.latest) >= 8, "too few writes acknowledged to test anything"
    assert shared.requests >= 50

    for case_id, case in sorted(shared.latest.items()):
        assert_complete(server, case_id, case, None)
    ids, total = listed_ids(server)
    asserted, inferred = stored_case_graphs(server, shared.known_bug)
    assert asserted == inferred
    assert ids == asserted
    assert total == len(asserted)
    assert {i for i in asserted if i.startswith("w")} == set(shared.latest)
    assert not shared.known_bug, f"{FORK_DEADLOCK} Here: {shared.known_bug}"


def test_two_posts_of_the_same_new_id_give_one_201_and_one_409(server: RealServer) -> None:
    outcomes: list[list[int]] = []
    for attempt in range(20):
        case = make_case(f"race-{attempt}", attempt % 11)
        barrier = threading.Barrier(2)
        statuses: list[int] = []
        lock = threading.Lock()

        def post(case: dict[str, Any] = case, barrier: threading.Barrier = barrier,
                 statuses: list[int] = statuses, lock: threading.Lock = lock) -> None:
            barrier.wait(10)
            reply = server.request("POST", "/cases", case)
            with lock:
                statuses.append(reply.status)

        threads = [threading.Thread(target=post) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        outcomes.append(sorted(statuses))
        got = server.request("GET", f"/cases/race-{attempt}")
        assert got.status == 200
        assert unordered(got.json()) == unordered(case)
    assert outcomes == [[201, 409]] * 20, outcomes


# -- the fork deadlock, reproduced ------------------------------------------------------------

CRASHING_WRITER = """
import os, sys
from pathlib import Path
import pyoxigraph as ox
from kgservice.stores.oxigraph import Stores
site = Stores(Path(sys.argv[1])).site("default")
triples = [ox.Triple(ox.NamedNode(f"https://w3id.org/esi-kg/case/default/x/s{i}"),
                     ox.NamedNode("https://w3id.org/esi-kg/ontology#p"), ox.Literal(str(i))) for i in range(200)]
for j in range(10):
    site.create(f"c{sys.argv[2]}-{j}", triples, triples)
os.kill(os.getpid(), 9)
"""


def crash_while_writing(data_dir: Path, n: int) -> None:
    """A process stores ten cases through kgservice.stores.oxigraph and dies by SIGKILL, as a server would."""
    done = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(data_dir), str(n)], capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL, done.stderr


def queries_right_after_open(data_dir: Path, forks: int) -> int:
    """Open the site's store as the server does and run up to ``forks`` queries as /sparql does; 1 if one hung."""
    stores = Stores(data_dir)
    try:
        return _hung_query(stores.site("default").store, forks)
    finally:
        stores.close()
        gc.collect()  # the store's RocksDB lock goes with its last reference


def _hung_query(store: Any, forks: int) -> int:
    def ask(started: Any) -> bool:
        result = store.query("ASK { ?s ?p ?o }")
        started()
        return bool(result)

    for _ in range(forks):
        try:
            run_forked(ask, 5)
        except TimeLimit:
            return 1
    return 0


def test_a_query_right_after_the_store_reopens_is_answered(tmp_path: Path) -> None:
    """After a crash, the store is opened and queried at once, the way /sparql does it (fork, query).

    Without the bug every query is answered; with it, about one reopening in five leaves a
    forked child blocked on RocksDB's mutex. Bounded: at most 40 reopenings or 15 seconds.
    """
    assert os.name == "posix"
    deadline = time.monotonic() + 15
    for n in range(40):
        if time.monotonic() > deadline:
            break
        crash_while_writing(tmp_path / "data", n)
        hung = queries_right_after_open(tmp_path / "data", forks=30)
        assert hung == 0, f"a forked query hung (reopening {n + 1}): {FORK_DEADLOCK}"
