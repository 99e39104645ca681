"""The remote store (ESI_STORE=sparql, a real Virtuoso) beside the embedded one, and ingest on Dask.

    .venv/bin/python bench/remote.py --cases 10000 --dask-cases 2000

One run measures, each figure beside its embedded-store twin measured in the same run (the
machine is shared: only ratios within a run are comparable):

- ingest: ``kgservice load`` of N generated cases into each store (2 local reasoning processes);
- the named queries and two ad-hoc ones over those N cases, through the store's query path
  (median of 3);
- POST /pathway and POST /cases over HTTP against ``kgservice serve`` on each store
  (4 client threads for a few seconds, closed loop);
- ingest with 1, 2 and 4 Dask workers (``dask scheduler`` and ``dask worker`` processes on
  loopback, one thread each) into an embedded store, beside the local pool.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

from common import table  # noqa: E402
from generator import CaseGenerator  # noqa: E402
from serverutil import RealServer, free_port, http_request  # noqa: E402

from kgservice.bulk import load  # noqa: E402
from kgservice.config import Settings  # noqa: E402
from kgservice.core.kb import KnowledgeBase  # noqa: E402
from kgservice.http.queries import Catalog  # noqa: E402
from kgservice.service import Service  # noqa: E402
from kgservice.stores.base import QueryScope  # noqa: E402

ADHOC = {
    "ad hoc: cases per pathway (GROUP BY)": "PREFIX esi: <https://w3id.org/esi-kg/ontology#> SELECT ?p "
    "(COUNT(DISTINCT ?c) AS ?n) WHERE { ?c esi:hasApplicablePathway ?p } GROUP BY ?p",
    "ad hoc: GRAPH ?g, cases with a red flag": "PREFIX esi: <https://w3id.org/esi-kg/ontology#> SELECT "
    "(COUNT(DISTINCT ?c) AS ?n) WHERE { GRAPH ?g { ?c esi:hasRedFlag ?f } }",
}


def _cases(path: Path, n: int, prefix: str) -> None:
    kb = KnowledgeBase.from_settings(Settings())
    cases = CaseGenerator(kb.vocabulary["input"], seed=31).cases(n, prefix=prefix)
    path.write_text("".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8")


def _queries() -> list[tuple[str, str, dict[str, Any]]]:
    import pyoxigraph as ox

    from kgservice.core.ontology import ESI

    out = []
    for q in Catalog.load(Settings().queries_dir).queries.values():
        binds: dict[Any, Any] = {}
        for p in q.params:
            if not p.example:
                continue
            value = p.example
            binds[ox.Variable(p.name)] = (ox.NamedNode(str(ESI[value])) if p.type == "code" else
                                          ox.NamedNode(value) if p.type == "iri" else ox.Literal(value))
        out.append((q.name, q.text, binds))
    return out + [(name, text, {}) for name, text in ADHOC.items()]


def _time_queries(settings: Settings, site: str) -> dict[str, float]:
    svc = Service(settings)
    store = svc.site_store(site)
    out = {}
    for name, text, binds in _queries():
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            try:
                store.run_limited(text, QueryScope(substitutions=binds), 60, lambda r: len(list(r))
                                  if not isinstance(r, bool) and hasattr(r, "__iter__") else 1)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                out[name] = float("nan")
                print(f"  {name}: {type(exc).__name__}: {str(exc)[:120]}", file=sys.stderr)
                break
            samples.append(time.perf_counter() - start)
        else:
            out[name] = statistics.median(samples) * 1000
    svc.close()
    return out


def _http(env: dict[str, str], data: Path, seconds: float, clients: int = 4) -> dict[str, dict[str, float]]:
    kb = KnowledgeBase.from_settings(Settings())
    bodies = list(CaseGenerator(kb.vocabulary["input"], seed=5).cases(200, prefix="h"))
    out = {}
    with RealServer(data, auth_required=False, env=env) as server:
        for path in ("/pathway", "/cases"):
            latencies: list[float] = []
            errors = [0]
            stop = time.monotonic() + seconds

            def client(n: int, path: str = path, latencies: list[float] = latencies, stop: float = stop,
                       errors: list[int] = errors) -> None:
                i = 0
                while time.monotonic() < stop:
                    body = {**bodies[(n * 50 + i) % len(bodies)], "id": f"{path[1:]}-{n}-{i}-{time.time_ns()}"}
                    start = time.perf_counter()
                    reply = http_request(server.base_url, "POST", path, body)
                    latencies.append(time.perf_counter() - start)
                    if reply.status >= 400:
                        errors[0] += 1
                    i += 1

            threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
            out[path] = {"rps": len(latencies) / elapsed, "p50": statistics.median(latencies) * 1000,
                         "errors": errors[0]}
    return out


class _Cluster:
    def __init__(self, workers: int) -> None:
        dask = str(Path(sys.executable).parent / "dask")
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self.processes = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                            "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        self.processes += [subprocess.Popen([dask, "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                                             "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                           for _ in range(workers)]
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)

    def close(self) -> None:
        for p in reversed(self.processes):
            p.kill()
            p.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--dask-cases", type=int, default=2_000)
    parser.add_argument("--http-seconds", type=float, default=8.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="esi-bench-remote-"))
    virtuoso = work / "virtuoso"
    port = free_port()
    subprocess.run(["bash", str(ROOT / "scripts" / "virtuoso.sh"), "start", str(virtuoso), str(port),
                    str(free_port())], check=True, timeout=120)
    endpoint = f"http://127.0.0.1:{port}/sparql"
    try:
        cases = work / "cases.jsonl"
        _cases(cases, args.cases, "b")
        embedded = Settings(data_dir=work / "embedded")
        remote = Settings(data_dir=work / "remote", store="sparql", sparql_endpoint=endpoint)
        ingest = {name: load(s, cases, site="bench", workers=2, progress=None)
                  for name, s in (("embedded", embedded), ("remote", remote))}
        rows = [[f"ingest {args.cases} cases (2 local reasoning processes), cases/s",
                 ingest["embedded"].loaded / ingest["embedded"].seconds,
                 ingest["remote"].loaded / ingest["remote"].seconds,
                 f"{ingest['embedded'].seconds / ingest['remote'].seconds:.2f}x"]]
        times = {name: _time_queries(s, "bench") for name, s in (("embedded", embedded), ("remote", remote))}
        for name in times["embedded"]:
            e, r = times["embedded"][name], times["remote"][name]
            rows.append([f"query {name}, ms", e, r, f"{e / r:.2f}x" if r == r and r else "failed"])
        http = {name: _http(env, work / f"http-{name}", args.http_seconds)
                for name, env in (("embedded", {}), ("remote", {"ESI_STORE": "sparql", "ESI_SPARQL_ENDPOINT":
                                                                 endpoint}))}
        for path in ("/pathway", "/cases"):
            e, r = http["embedded"][path], http["remote"][path]
            rows.append([f"POST {path}, 4 clients: req/s (p50 ms)", f"{e['rps']:.1f} ({e['p50']:.1f})",
                         f"{r['rps']:.1f} ({r['p50']:.1f})", f"{r['rps'] / e['rps']:.2f}x"])
        print(table(f"Remote store (Virtuoso 7.2, same machine) beside the embedded store, {args.cases} cases",
                    ["what", "embedded", "remote", "remote vs embedded"], rows))

        small = work / "dask-cases.jsonl"
        _cases(small, args.dask_cases, "d")
        local = load(Settings(data_dir=work / "dask-local"), small, site="d", workers=2, progress=None)
        dask_rows = [["local pool, 2 processes", local.loaded / local.seconds, "1.00x"]]
        base = None
        for n in (1, 2, 4):
            cluster = _Cluster(n)
            try:
                done = load(Settings(data_dir=work / f"dask-{n}"), small, site="d", progress=None,
                            scheduler=cluster.address, batch_size=100)
            finally:
                cluster.close()
            rate = done.loaded / done.seconds
            base = base or rate
            dask_rows.append([f"Dask, {n} worker(s) of 1 thread", rate, f"{rate / base:.2f}x vs 1 worker"])
        print(table(f"Ingest of {args.dask_cases} cases on a local Dask cluster (embedded store), cases/s",
                    ["what", "cases/s", "ratio"], dask_rows))
    finally:
        subprocess.run(["bash", str(ROOT / "scripts" / "virtuoso.sh"), "stop", str(virtuoso)], timeout=60,
                       check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
