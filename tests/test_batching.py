"""Micro-batching in the reasoning pool (``kgservice/workers.py``): requests that wait together
are reasoned together, and each still gets exactly its own answer or problem.

The pool's counts (``ReasoningPool.stats``) say how the requests were batched, so nothing
here depends on timing: requests queued together (``process_many``) are one batch for a pool
of one worker, and a request sent to an idle pool is a batch of one.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fhircase import bundle, prefetch
from serverutil import RealServer

from kgservice.config import Settings
from kgservice.core.kb import KnowledgeBase
from kgservice.errors import Problem
from kgservice.isolation import ProcessCrashed
from kgservice.workers import ReasoningPool, Reply

VIGNETTES = {path.name[:3]: json.loads(path.read_text(encoding="utf-8"))["case"]
             for path in sorted((Path(__file__).parent / "data" / "vignettes").glob("p*.json"))}
JSON, FHIR = "application/json", "application/fhir+json"


def body(key: str, **changes: Any) -> bytes:
    return json.dumps({**VIGNETTES[key], **changes}).encode()


@pytest.fixture
def pool(kb: KnowledgeBase, tmp_path: Path) -> Iterator[ReasoningPool]:
    """One worker, forked from the session's knowledge base as ``kgservice serve`` forks its own."""
    pool = ReasoningPool(Settings(data_dir=tmp_path, reasoning_timeout_s=60), 1, kb=kb)
    try:
        yield pool
    finally:
        pool.close()


def alone(kb: KnowledgeBase, job: tuple[Any, ...]) -> Any:
    """What the pipeline gives for one job on its own, in this process: the answer and graphs, or the problem."""
    data, media_type, site, case_id, graphs = job
    result = kb.process([data], media_type, site, case_id=case_id, graphs=graphs)[0]
    return _comparable(result)


def _comparable(result: Any) -> Any:
    if isinstance(result, Problem):
        return ("problem", result.problem())
    return ("ok", result.case_id, result.answer, sorted(map(str, result.asserted)), sorted(map(str, result.inferred)))


def test_a_mixed_batch_gives_each_request_its_own_answer_or_problem(pool: ReasoningPool, kb: KnowledgeBase) -> None:
    ontology = kb.ontology.graph
    jobs: list[tuple[Any, ...]] = [
        (body("p01"), JSON, "north", None, False),
        (body("p02", age="fifty"), JSON, "north", None, False),  # breaks the contract: 422
        (b'{"id": "p03", "age": ', JSON, "north", None, False),  # not JSON: 400
        (body("p01", id="huge", pain_scores=[{"date": "2026-06-10", "score": 5}] * 27_000), JSON, "north", None,
         False),  # over the list and triple caps
        (json.dumps(bundle(prefetch(VIGNETTES["p03"], ontology))).encode(), FHIR, "north", None, False),
        (body("p04"), "text/plain", "north", None, False),  # 415
        (body("p05"), JSON, "north", None, True),  # POST /cases: with its graphs
        (body("p06"), JSON, "south", None, False),  # another site
        (body("p07", id="given-id"), JSON, "north", "given-id", True),  # PUT /cases/given-id
        (body("p08"), JSON, "north", None, False),
    ]
    results = pool.process_many(jobs)

    assert pool.stats()["batch_sizes"] == {len(jobs): 1}  # one batch, all of them
    assert [_comparable(r) for r in results] == [alone(kb, job) for job in jobs]
    statuses = [r.status if isinstance(r, Problem) else 200 for r in results]
    assert statuses == [200, 422, 400, 422, 200, 415, 200, 200, 200, 200]
    assert [r.answer["case"] for r in results if isinstance(r, Reply)] == ["p01", "p03", "p05", "p06", "given-id",
                                                                           "p08"]


def test_an_idle_pool_reasons_a_lone_request_alone(pool: ReasoningPool) -> None:
    for key in ("p01", "p02", "p03"):
        reply = pool.process(body(key), JSON, "north", None, graphs=False)
        assert isinstance(reply, Reply) and reply.answer["case"] == key
    assert pool.stats()["batch_sizes"] == {1: 3}  # one after the other: never waited for company


def test_a_worker_killed_mid_batch_answers_every_request_and_the_pool_goes_on(pool: ReasoningPool) -> None:
    keys = [f"p{n:02d}" for n in range(1, 13)] * 3
    expected = {key: pool.process(body(key), JSON, "north", None, graphs=False).answer for key in set(keys)}
    victim = pool.worker_pids()[0]
    results: list[Any] = []
    sender = threading.Thread(target=lambda: results.extend(
        pool.process_many([(body(k), JSON, "north", None, False) for k in keys])))
    sender.start()
    os.kill(victim, signal.SIGKILL)  # while the batch is on its way or being reasoned
    sender.join(240)
    assert not sender.is_alive() and len(results) == len(keys)

    assert pool.stats()["restarts"] == 1 and victim not in pool.worker_pids()
    for key, result in zip(keys, results, strict=True):
        if isinstance(result, Problem):  # only a request the worker died on may get the crash
            assert result.status == 422 and isinstance(result.error, ProcessCrashed), result.problem()
        else:
            assert result.answer == expected[key]
    assert sum(isinstance(r, Problem) for r in results) <= 1
    assert pool.process(body("p09"), JSON, "north", None, graphs=False).answer["case"] == "p09"


def test_concurrent_requests_get_the_answers_sequential_ones_get(tmp_path: Path) -> None:
    """The real server with two reasoning workers and eight clients at once: the same answers and
    problems, byte for byte, as one request at a time."""
    requests = [(key, {**VIGNETTES[key]}) for key in sorted(VIGNETTES)]
    requests += [("bad", {**VIGNETTES["p01"], "age": -3}), ("broken", "{not json")]
    with RealServer(tmp_path / "data", auth_required=False, reasoning_workers=2) as server:
        def send(item: tuple[str, Any]) -> tuple[int, bytes]:
            data = item[1] if isinstance(item[1], dict) else item[1].encode()
            reply = server.request("POST", "/pathway", data, headers={"Content-Type": JSON})
            return reply.status, reply.body

        sequential = [send(item) for item in requests]
        with ThreadPoolExecutor(8) as clients:
            concurrent = list(clients.map(send, requests * 4))
    assert [status for status, _ in sequential] == [200] * len(VIGNETTES) + [422, 400]
    assert concurrent == sequential * 4


ZYGOTE = """
import json, os, signal, sys
from pathlib import Path
from kgservice.config import Settings
from kgservice.isolation import ProcessCrashed
from kgservice.workerproc import Adopted
from kgservice.workers import ReasoningPool

pool = ReasoningPool(Settings(data_dir=Path(sys.argv[1]), reasoning_timeout_s=60), 2, zygote=True)
pool.wait_ready()
first, second = pool._all[0].process, pool._all[1].process
report = {"adopted": isinstance(second, Adopted),
          "parent_of_second": int(Path(f"/proc/{second.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]),
          "me": os.getpid(), "first_is_child": first.pid != second.pid}
os.kill(second.pid, signal.SIGSEGV)
job = (Path(sys.argv[2]).read_bytes(), "application/json", "north", None, False)
try:
    pool._round_trip(1, [job])  # the dead worker's own slot
except ProcessCrashed as exc:
    report["crash"] = exc.problem()["detail"]
report["reaped"] = not Path(f"/proc/{second.pid}").exists()
report["answers"] = [pool.process(*job).answer["case"] for _ in range(4)]
pool.close()
print(json.dumps(report))
"""


def test_a_zygote_forks_the_workers_and_an_adopted_one_that_dies_is_reaped_and_named(tmp_path: Path) -> None:
    """``kgservice serve``'s pool: one process loads the knowledge base and forks the other
    workers, which the server adopts; when one dies, the server knows the signal (run in a
    process of its own: the pool makes its process a child subreaper)."""
    import subprocess
    import sys

    case = tmp_path / "case.json"
    case.write_bytes(body("p01"))
    done = subprocess.run([sys.executable, "-c", ZYGOTE, str(tmp_path), str(case)], capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["adopted"] and report["first_is_child"] and report["parent_of_second"] == report["me"], report
    assert "SIGSEGV" in report["crash"] and report["reaped"], report
    assert report["answers"] == ["p01"] * 4
