"""Latency against the number of cases stored: the real server on stores of 0, N1 and N2 cases.

The stores are filled beforehand with ``kgservice load`` (``ingest.prepared_store``); each is
then served by ``kgservice serve`` and measured over HTTP by one client, one request at a
time, after a warm-up: POST /pathway (answer without storing), POST /cases (store; the cases
posted are deleted afterwards, so a reused store keeps its size), GET /cases/{id}/pathway (a
stored answer) and GET /cases (the first page of 50 ids). Baseline: the empty store, in the
same run; the target is that the largest store stays within 1.2x of it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from common import summary_ms, table
from ingest import case_id, generator, prepared_store, root
from loadgen import Server, request, run_load

TARGET = 1.2


def _measure(data_dir: Path, stored: int, n: int, bodies: list[dict[str, Any]], tag: str) -> dict[str, Any]:
    with Server(data_dir) as server:
        port = server.port
        run_load(port, "/pathway", bodies, count=20)  # warm-up
        out = {
            "pathway": run_load(port, "/pathway", bodies, count=n, warmup=0),
            "cases": run_load(port, "/cases", bodies, count=n, unique_prefix=f"size{tag}"),
        }
        some = case_id(stored // 2) if stored else out["cases"]["ids"][0]
        out["stored"] = run_load(port, f"/cases/{some}/pathway", None, count=n)
        out["list"] = run_load(port, "/cases?per_page=50", None, count=max(10, n // 5))
        for posted in out["cases"]["ids"]:
            request(port, "DELETE", f"/cases/{posted}")
    return out


def run(quick: bool) -> str:
    sizes = (0, 1_000, 2_000) if quick else (0, 10_000, 100_000)
    n = 60 if quick else 300
    bodies = list(generator(seed=33).cases(200, prefix="size"))
    measured: dict[int, dict[str, Any]] = {}
    for size in sizes:
        if size == 0:
            work = Path(tempfile.mkdtemp(prefix="esi-size-", dir=root()))
            try:
                measured[size] = _measure(work / "data", 0, n, bodies, "0")
            finally:
                shutil.rmtree(work, ignore_errors=True)
        else:
            measured[size] = _measure(prepared_store(size), size, n, bodies, str(size))

    kinds = ("pathway", "cases", "stored", "list")
    stats = {size: {k: summary_ms(m[k]["latencies"]) for k in kinds} for size, m in measured.items()}
    errors = {size: sum(m[k]["errors"] for k in kinds) for size, m in measured.items()}
    rows: list[list[Any]] = []
    for size in sizes:
        s = stats[size]
        rows.append([f"{size} cases stored" + (" (baseline)" if size == 0 else ""),
                     *(v for k in kinds for v in (s[k]["p50"], s[k]["p95"])), errors[size]])
    big = sizes[-1]
    ratios = {k: stats[big][k]["p50"] / stats[0][k]["p50"] for k in kinds}
    rows.append([f"ratio {big} / empty (p50)", *(v for k in kinds for v in (f"{ratios[k]:.2f}x", "")), ""])
    met = ratios["pathway"] <= TARGET and ratios["cases"] <= TARGET
    verdict = (f"target: POST /pathway and POST /cases p50 with {big} cases within {TARGET}x of the empty store: "
               f"{'met' if met else 'NOT met'} (pathway {ratios['pathway']:.2f}x, cases {ratios['cases']:.2f}x; "
               f"GET /cases/{{id}}/pathway {ratios['stored']:.2f}x, GET /cases {ratios['list']:.2f}x)")
    header = ["store", "POST /pathway p50", "p95", "POST /cases p50", "p95", "GET /cases/{id}/pathway p50", "p95",
              "GET /cases p50", "p95", "errors"]
    return table(f"Flat with store size: one client, {n} requests per column, latency ms", header, rows) \
        + "\n\n" + verdict
