"""Start-up and memory of the real server: from ``kgservice serve`` to the first answers, and peak RSS.

Each row launches ``kgservice serve`` (gunicorn master, its worker, one reasoning process
per core) and times, from the launch, the first answered GET /health and the first answered
POST /pathway; it then serves a little traffic (POST /pathway, POST /cases, GET /cases, a
named query) and reads the peak RSS (VmHWM) of every process in the server's process group,
summed. Rows: an empty store on its first start (new data dir), the same store restarted,
and a store of N cases (quick: 2k, full: 100k) restarted.

Reference, in the same run (there is no target for start-up): one Python process that loads
the knowledge base (``KnowledgeBase.from_settings``), the least the server must do; ratio =
server / reference.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import table
from ingest import generator, prepared_store, root
from loadgen import Server, request, run_load

REFERENCE = ("from kgservice.config import Settings; from kgservice.core.kb import KnowledgeBase; "
             "KnowledgeBase.from_settings(Settings())")


def _reference() -> tuple[float, int]:
    """Seconds and peak RSS (kB) of one process loading the knowledge base.

    The peak comes from /usr/bin/time when there is one: a child forked straight from this
    (large) process would count this process's pages in its own peak until it execs.
    """
    gnu_time = shutil.which("time")
    command = [sys.executable, "-c", REFERENCE]
    start = time.perf_counter()
    if gnu_time:
        done = subprocess.run([gnu_time, "-f", "%M", *command], stderr=subprocess.PIPE, check=True)
        seconds = time.perf_counter() - start
        return seconds, int(done.stderr.decode().strip().splitlines()[-1])
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss


def _start(data_dir: Path, body: bytes, cases: list[dict[str, Any]]) -> dict[str, Any]:
    server = Server(data_dir)
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
    import json

    reps = 2 if quick else 3
    n = 2_000 if quick else 100_000
    cases = list(generator(seed=44).cases(50, prefix="boot"))
    body = json.dumps(cases[0]).encode()
    _reference()  # once unmeasured: fills the knowledge base's caches (the closure of the ontology)
    ref = [_reference() for _ in range(reps)]
    ref_s, ref_kb = statistics.median(r[0] for r in ref), statistics.median(r[1] for r in ref)

    work = Path(tempfile.mkdtemp(prefix="esi-startup-", dir=root()))
    results: dict[str, list[dict[str, Any]]] = {"first": [], "restart": [], "loaded": []}
    try:
        for k in range(reps):
            results["first"].append(_start(work / f"fresh-{k}", body, cases))
        for _ in range(reps):
            results["restart"].append(_start(work / "fresh-0", body, cases))
        store = prepared_store(n)
        for _ in range(reps):
            results["loaded"].append(_start(store, body, cases))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mb = 1024
    rows: list[list[Any]] = [["reference: one process loading the knowledge base", reps, ref_s * 1000, "", "",
                              ref_kb // mb, 1, "1.0", ""]]
    labels = {"first": "empty store, first start (new data dir)", "restart": "empty store, restart",
              "loaded": f"{n} cases stored, restart"}
    for key, runs in results.items():
        health = statistics.median(r["health"] for r in runs) * 1000
        pathway = statistics.median(r["pathway"] for r in runs) * 1000
        hwm = statistics.median(r["hwm_kb"] for r in runs)
        rss = statistics.median(r["rss_kb"] for r in runs)
        rows.append([labels[key], reps, health, pathway, rss // mb, hwm // mb, runs[0]["processes"],
                     f"{health / 1000 / ref_s:.1f}x", f"{hwm / ref_kb:.1f}x"])
    loaded = results["loaded"]
    verdict = (f"no target in the issue; with {n} cases stored: first answered request "
               f"{statistics.median(r['health'] for r in loaded):.2f} s after launch, first answered POST /pathway "
               f"{statistics.median(r['pathway'] for r in loaded):.2f} s, peak RSS of the server "
               f"{statistics.median(r['hwm_kb'] for r in loaded) // mb:.0f} MB (sum over its processes)")
    return table("Start-up and memory of kgservice serve (medians), ms and MB",
                 ["what", "runs", "launch -> GET /health ms", "launch -> POST /pathway ms", "RSS now MB",
                  "peak RSS (sum of VmHWM) MB", "processes", "time vs reference", "peak RSS vs reference"],
                 rows) + "\n\n" + verdict
