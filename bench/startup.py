"""Start-up and memory of the real server: from ``kgservice serve`` to the first answers, and peak RSS.

Each row launches ``kgservice serve`` (gunicorn master, its worker, one reasoning process
per core) and times, from the launch, the first answered GET /health and the first answered
POST /pathway; it then serves a little traffic (POST /pathway, POST /cases, GET /cases, a
named query) and reads the peak RSS (VmHWM) of every process in the server's process group,
summed. Rows: an empty store on its first start (new data dir) and the same store restarted,
for this code and for today's (the code of commit ``BASELINE_COMMIT``, run from ``git
archive`` with this venv); full mode adds a store of 100k cases, restarted.

Reference, in the same run: one Python process that loads the knowledge base
(``KnowledgeBase.from_settings``) over the same data dir (so with the same cached ontology
closure as a restart), the least the server must do. Target (issue 14, 6): restart → first
POST /pathway within 1.2× of the reference. Runs are interleaved (reference, this code,
today's, then again), so that the machine's load drifts over all alike.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import BASELINE_COMMIT, baseline_env, baseline_server, table
from ingest import generator, prepared_store, root
from loadgen import Server, request, run_load

REFERENCE = ("from kgservice.config import Settings; from kgservice.core.kb import KnowledgeBase; "
             "KnowledgeBase.from_settings(Settings.from_env())")
TARGET = 1.2


def _reference(data_dir: Path) -> tuple[float, int]:
    """Seconds and peak RSS (kB) of one process loading the knowledge base over ``data_dir``.

    The peak comes from /usr/bin/time when there is one: a child forked straight from this
    (large) process would count this process's pages in its own peak until it execs.
    """
    gnu_time = shutil.which("time")
    command = [sys.executable, "-c", REFERENCE]
    env = {**os.environ, "ESI_DATA_DIR": str(data_dir)}
    start = time.perf_counter()
    if gnu_time:
        done = subprocess.run([gnu_time, "-f", "%M", *command], stderr=subprocess.PIPE, check=True, env=env)
        seconds = time.perf_counter() - start
        return seconds, int(done.stderr.decode().strip().splitlines()[-1])
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss


def _start(server: Server, body: bytes, cases: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        server.start()
        status = 0
        while status != 200:
            status, _ = request(server.port, "POST", "/pathway", body)
        first_pathway = time.perf_counter() - server.launched
        run_load(server.port, "/pathway", cases, count=30)
        posted = run_load(server.port, "/cases", cases, count=10, unique_prefix="boot")
        run_load(server.port, "/cases?per_page=50", None, count=3)
        request(server.port, "GET", "/queries/pathway-counts")
        memory = server.memory_kb()
        for case_id in posted["ids"]:
            request(server.port, "DELETE", f"/cases/{case_id}")
    finally:
        server.stop()
    return {"health": server.health_s, "pathway": first_pathway, **memory}


def run(quick: bool) -> str:
    reps = 3 if quick else 5
    cases = list(generator(seed=44).cases(50, prefix="boot"))
    body = json.dumps(cases[0]).encode()
    work = Path(tempfile.mkdtemp(prefix="esi-startup-", dir=root()))
    kinds = ["new"] + (["today"] if baseline_env() is not None else [])
    servers = {"new": lambda d: Server(d), "today": lambda d: baseline_server(d)}
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    ref: list[tuple[float, int]] = []
    try:
        for kind in kinds:  # the first start of each, on a new data dir (which it then keeps)
            for k in range(1 if quick else 2):
                results.setdefault((kind, "first"), []).append(_start(servers[kind](work / f"{kind}-{k}"), body,
                                                                      cases))
        _reference(work / "new-0")  # once unmeasured
        for _ in range(reps):
            ref.append(_reference(work / "new-0"))
            for kind in kinds:
                results.setdefault((kind, "restart"), []).append(_start(servers[kind](work / f"{kind}-0"), body,
                                                                        cases))
        if not quick:
            store = prepared_store(100_000)
            for _ in range(2):
                for kind in kinds:
                    results.setdefault((kind, "loaded"), []).append(_start(servers[kind](store), body, cases))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ref_s, ref_kb = statistics.median(r[0] for r in ref), statistics.median(r[1] for r in ref)

    mb = 1024
    rows: list[list[Any]] = [["reference: one process loading the knowledge base (in the POST column)", reps, "",
                              ref_s * 1000, "1.00x", "", ref_kb // mb, 1, "1.0x"]]
    labels = {"first": "empty store, first start (new data dir)", "restart": "empty store, restart",
              "loaded": "100000 cases stored, restart"}
    pathway: dict[str, float] = {}
    for (kind, key), runs in sorted(results.items(), key=lambda item: (item[0][1] != "first", item[0])):
        health = statistics.median(r["health"] for r in runs) * 1000
        first = statistics.median(r["pathway"] for r in runs) * 1000
        hwm = statistics.median(r["hwm_kb"] for r in runs)
        rss = statistics.median(r["rss_kb"] for r in runs)
        if key == "restart":
            pathway[kind] = first
        who = f"today ({BASELINE_COMMIT}): " if kind == "today" else ""
        rows.append([who + labels[key], len(runs), health, first, f"{first / 1000 / ref_s:.2f}x", rss // mb,
                     hwm // mb, runs[0]["processes"], f"{hwm / ref_kb:.1f}x"])
    ratio = pathway["new"] / 1000 / ref_s
    verdict = (f"target kgservice serve (restart) -> first POST /pathway within {TARGET}x of loading the knowledge "
               f"base alone: {'met' if ratio <= TARGET else f'NOT met by {ratio / TARGET:.2f}x'} "
               f"({pathway['new']:.0f} against {ref_s * 1000:.0f} ms: {ratio:.2f}x)")
    if "today" in pathway:
        verdict += (f"; today's ({BASELINE_COMMIT}) {pathway['today']:.0f} ms "
                    f"({pathway['today'] / 1000 / ref_s:.2f}x)")
    else:
        verdict += f"; today's ({BASELINE_COMMIT}): baseline unavailable (no git)"
    return table("Start-up and memory of kgservice serve (medians), ms and MB",
                 ["what", "runs", "launch -> GET /health ms", "launch -> POST /pathway ms", "vs reference",
                  "RSS now MB", "peak RSS (sum of VmHWM) MB", "processes", "peak RSS vs reference"],
                 rows) + "\n\n" + verdict
