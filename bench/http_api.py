"""Pathway and case storage over HTTP, against the real server (``kgservice serve``, gunicorn).

(Named ``http_api`` rather than ``http``: ``bench/`` is first on ``sys.path`` when the
benchmarks run, and a module named ``http`` would hide the standard library's.)

The server runs on an empty data dir with its defaults (one gunicorn worker with 8 threads,
one reasoning process per core). The load generator is a second process
(``bench/loadgen.py``): N client threads, each on one keep-alive connection, posting
generated cases for a fixed time.

Baselines, in the same run: (1) the same requests to the same server from 1 client, one at a
time; (2) the obvious approach per request: owlrl's full OWL 2 RL closure of the ontology
plus the case in-process (requests/s = 1 / its median time; no HTTP, no answer).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import owlrl_closure, summary_ms, table, timed
from ingest import generator, kb, root
from loadgen import Server, group_cpu_s

HERE = Path(__file__).resolve().parent


def _loadgen(port: int, path: str, bodies: Path, clients: int, duration: float, warmup: float,
             prefix: str | None = None) -> dict[str, Any]:
    command = [sys.executable, str(HERE / "loadgen.py"), "--port", str(port), "--path", path,
               "--clients", str(clients), "--duration", str(duration), "--warmup", str(warmup),
               "--bodies", str(bodies)]
    if prefix:
        command += ["--unique-prefix", prefix]
    before = os.times()
    done = subprocess.run(command, stdout=subprocess.PIPE, check=True, timeout=duration + warmup + 300)
    after = os.times()
    result: dict[str, Any] = json.loads(done.stdout)
    result["client_cpu_s"] = (after.children_user + after.children_system) - (before.children_user
                                                                                + before.children_system)
    return result


def _owlrl_per_request(cases: list[dict[str, Any]]) -> list[float]:
    base = kb()
    return [timed(lambda c=c: owlrl_closure(base, c)) for c in cases]


def run(quick: bool) -> str:
    duration, warmup = (4.0, 1.0) if quick else (30.0, 3.0)
    clients = 8
    work = Path(tempfile.mkdtemp(prefix="esi-http-", dir=root()))
    bodies = work / "bodies.jsonl"
    cases = list(generator(seed=21).cases(300, prefix="http"))
    bodies.write_text("".join(json.dumps(c) + "\n" for c in cases))
    results: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        with Server(work / "data") as server:
            for path in ("/pathway", "/cases"):
                for n in (1, clients):
                    prefix = f"h{n}" if path == "/cases" else None
                    cpu = group_cpu_s(server.pgid)
                    results[path, n] = r = _loadgen(server.port, path, bodies, n, duration, warmup, prefix)
                    # CPU over the whole run, warm-up included, so per request of the whole run
                    r["server_cpu_ms"] = (group_cpu_s(server.pgid) - cpu) * 1000 / max(1, r["all_requests"])
                    r["client_cpu_ms"] = r["client_cpu_s"] * 1000 / max(1, r["all_requests"])
            memory = server.memory_kb()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    owl = summary_ms(_owlrl_per_request(cases[:2 if quick else 5]))
    owl_rps = 1000 / owl["p50"]

    rows: list[list[Any]] = [["baseline: owlrl closure of ontology + case, in-process, per request", 1, owl["n"],
                              0, owl_rps, owl["p50"], owl["p95"], owl["p99"], "", "", "1.0"]]
    for (path, n), r in results.items():
        s = summary_ms(r["latencies"])
        single = results[path, 1]["rps"]
        rows.append([f"POST {path} over HTTP" + (" (baseline: 1 client)" if n == 1 else ""), n, r["requests"],
                     r["errors"], r["rps"], s["p50"], s["p95"], s["p99"],
                     f"{r['server_cpu_ms']:.1f} + {r['client_cpu_ms']:.1f}",
                     f"{r['rps'] / single:.2f}x", f"{r['rps'] / owl_rps:.0f}x"])
    top = results["/pathway", clients]["rps"]
    cores = os.cpu_count() or 2
    cpu_per_request = results["/pathway", clients]["server_cpu_ms"] + results["/pathway", clients]["client_cpu_ms"]
    busy = top < 0.9 * cores * 1000 / cpu_per_request
    verdict = (f"target >= 100 requests/s on POST /pathway at {clients} concurrent clients: "
               f"{'met' if top >= 100 else 'NOT met'} ({top:.0f} req/s, "
               f"{results['/pathway', clients]['errors']} errors); CPU per POST /pathway {cpu_per_request:.1f} ms "
               f"(server + load generator), so {cores} idle cores could serve at most about "
               f"{cores * 1000 / cpu_per_request:.0f} req/s"
               f"{' (the rest of the CPU went to other processes on the machine)' if busy else ''}; "
               f"server RSS after the run "
               f"{memory['rss_kb'] // 1024} MB over {memory['processes']} processes")
    return table(f"Over HTTP against kgservice serve (load generator in a second process, "
                 f"{duration:g} s per row after {warmup:g} s warm-up), latency ms",
                 ["what", "clients", "requests", "errors", "req/s", "p50", "p95", "p99",
                  "CPU ms/request (server + client)", "vs 1 client",
                  "vs owlrl baseline"], rows) + "\n\n" + verdict
