"""Pathway and case storage over HTTP, against the real server (``kgservice serve``, gunicorn).

(Named ``http_api`` rather than ``http``: ``bench/`` is first on ``sys.path`` when the
benchmarks run, and a module named ``http`` would hide the standard library's.)

The server runs on an empty data dir with its defaults (one gunicorn worker with 8 threads,
one reasoning process per core). The load generator is a second process
(``bench/loadgen.py``): N client threads, each on one keep-alive connection, posting
generated cases for a fixed time.

Baselines, in the same run: (1) today's server (the code of commit ``BASELINE_COMMIT``, run
from ``git archive`` with this venv: one request per round-trip to a reasoning worker), at 1
and 8 clients, against which the target is judged (8 clients: >= 2.5x its throughput, p99 no
worse); (2) the same requests to the same server from 1 client, one at a time; (3) the
obvious approach per request: owlrl's full OWL 2 RL closure of the ontology plus the case
in-process (requests/s = 1 / its median time; no HTTP, no answer).
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

from common import BASELINE_COMMIT, baseline_server, owlrl_closure, summary_ms, table, timed
from ingest import generator, kb, root
from loadgen import Server, group_cpu_s, request

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


def _row(server: Server, path: str, bodies: Path, n: int, duration: float, warmup: float) -> dict[str, Any]:
    prefix = f"h{n}-{server.port}" if path == "/cases" else None
    cpu, workers = group_cpu_s(server.pgid), group_cpu_s(server.pgid, sandboxed=True)
    r = _loadgen(server.port, path, bodies, n, duration, warmup, prefix)
    # CPU over the whole run, warm-up included, so per request of the whole run
    r["server_cpu_ms"] = (group_cpu_s(server.pgid) - cpu) * 1000 / max(1, r["all_requests"])
    r["worker_cpu_ms"] = (group_cpu_s(server.pgid, sandboxed=True) - workers) * 1000 / max(1, r["all_requests"])
    r["client_cpu_ms"] = r["client_cpu_s"] * 1000 / max(1, r["all_requests"])
    return r


def _settle(server: Server, body: bytes) -> None:
    """Until the server has done its start-up (its own knowledge base loads after it answers)."""
    request(server.port, "GET", "/vocabulary")
    for _ in range(5):
        request(server.port, "POST", "/pathway", body)


def run(quick: bool) -> str:
    duration, warmup = (4.0, 1.0) if quick else (30.0, 3.0)
    clients = 8
    work = Path(tempfile.mkdtemp(prefix="esi-http-", dir=root()))
    bodies = work / "bodies.jsonl"
    cases = list(generator(seed=21).cases(300, prefix="http"))
    bodies.write_text("".join(json.dumps(c) + "\n" for c in cases))
    servers = {"new": Server(work / "data")}
    today = baseline_server(work / "data-today")
    if today is not None:
        servers["today"] = today
    runs: dict[str, dict[tuple[str, int], dict[str, Any]]] = {kind: {} for kind in servers}
    try:
        for server in servers.values():
            server.start()
            _settle(server, json.dumps(cases[0]).encode())
        for n in (1, clients):  # both servers up at once, measured in turn: the machine's drift hits both
            for kind in sorted(servers, reverse=True):
                runs[kind]["/pathway", n] = _row(servers[kind], "/pathway", bodies, n, duration, warmup)
        for n in (1, clients):
            runs["new"]["/cases", n] = _row(servers["new"], "/cases", bodies, n, duration, warmup)
        memory = servers["new"].memory_kb()
    finally:
        for server in servers.values():
            server.stop()
        batching = [line.split("reasoning pool: ", 1)[1] for line in
                    servers["new"].log.read_text(errors="replace").splitlines() if "reasoning pool: " in line]
        shutil.rmtree(work, ignore_errors=True)
    results, old = runs["new"], runs.get("today")
    owl = summary_ms(_owlrl_per_request(cases[:2 if quick else 5]))
    owl_rps = 1000 / owl["p50"]

    rows: list[list[Any]] = [["baseline: owlrl closure of ontology + case, in-process, per request", 1, owl["n"],
                              0, owl_rps, owl["p50"], owl["p95"], owl["p99"], "", "", "", "1.0"]]
    labelled = [(f"today ({BASELINE_COMMIT}): ", old), ("", results)] if old is not None else [("", results)]
    for label, measured in labelled:
        for (path, n), r in measured.items():
            s = summary_ms(r["latencies"])
            rows.append([f"{label}POST {path} over HTTP", n, r["requests"], r["errors"], r["rps"], s["p50"],
                         s["p95"], s["p99"], f"{r['server_cpu_ms']:.1f} + {r['client_cpu_ms']:.1f}",
                         f"{r['worker_cpu_ms']:.1f}",
                         f"{r['rps'] / measured[path, 1]['rps']:.2f}x", f"{r['rps'] / owl_rps:.0f}x"])
    top = results["/pathway", clients]
    p99 = summary_ms(top["latencies"])["p99"]
    if old is None:
        verdict = "target >= 2.5x today's POST /pathway throughput at 8 clients: baseline unavailable (no git)"
    else:
        before = old["/pathway", clients]
        ratio = top["rps"] / before["rps"]
        p99_before = summary_ms(before["latencies"])["p99"]
        verdict = (f"target POST /pathway at {clients} clients >= 2.5x today's ({BASELINE_COMMIT}) throughput: "
                   f"{'met' if ratio >= 2.5 else f'NOT met by {2.5 / ratio:.2f}x'} ({top['rps']:.0f} against "
                   f"{before['rps']:.0f} req/s: {ratio:.2f}x); p99 no worse than today's: "
                   f"{'met' if p99 <= p99_before else f'NOT met by {p99 / p99_before:.2f}x'} "
                   f"({p99:.0f} against {p99_before:.0f} ms); server CPU per request at {clients} clients "
                   f"{top['server_cpu_ms']:.1f} ms against today's {before['server_cpu_ms']:.1f} "
                   f"({before['server_cpu_ms'] / top['server_cpu_ms']:.2f}x less: what bounds the throughput "
                   "when the cores are the limit)")
    cores = os.cpu_count() or 2
    cpu_per_request = top["server_cpu_ms"] + top["client_cpu_ms"]
    verdict += (f"\n\nCPU per POST /pathway {cpu_per_request:.1f} ms (server + load generator), so {cores} idle "
                f"cores could serve at most about {cores * 1000 / cpu_per_request:.0f} req/s; "
                f"{top['errors']} errors; server RSS after the run {memory['rss_kb'] // 1024} MB over "
                f"{memory['processes']} processes; the new server's reasoning batches over the whole run: "
                f"{batching[-1] if batching else 'not logged'}")
    return table(f"Over HTTP against kgservice serve (load generator in a second process, "
                 f"{duration:g} s per row after {warmup:g} s warm-up), latency ms",
                 ["what", "clients", "requests", "errors", "req/s", "p50", "p95", "p99",
                  "CPU ms/request (server + client)", "of which reasoning workers", "vs 1 client",
                  "vs owlrl baseline"], rows) + "\n\n" + verdict
