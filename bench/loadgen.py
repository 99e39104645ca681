"""Drive the real server: start and stop ``kgservice serve``, measure its memory, and load it.

Used in-process by the HTTP benchmarks (server control, one sequential client), and as a
standalone load generator in a process of its own, so that the client's work does not share
the benchmark runner's interpreter::

    python bench/loadgen.py --port 8000 --path /pathway --clients 8 --duration 30 --bodies cases.jsonl

prints one JSON object: requests, errors, req/s and every latency of the measured window.
Each client thread keeps one HTTP/1.1 connection open (``http.client``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# -- the server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``kgservice serve`` in a process group of its own (so that the whole group can be stopped).

    Not in a session of its own: with the kernel's scheduler autogroups (on by default), each
    session shares the CPU equally with every other, so a server in its own session got a whole
    share under load while the bench's in-process baseline shared the bench's (at 100k cases
    beside a test suite, the baseline ran the large queries 2x slower than the server did over
    HTTP, which that would explain)."""

    def __init__(self, data_dir: Path, log: Path | None = None, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.cwd = cwd  # another source tree's code (bench/common.py's baseline_server) runs from its own dir
        self.port = free_port()
        self.log = log or self.data_dir.parent / f"server-{self.port}.log"
        self.env = {**os.environ, "ESI_AUTH_REQUIRED": "false", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.launched = 0.0
        self.health_s = float("nan")

    def start(self, timeout: float = 120) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.launched = time.perf_counter()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kgservice.cli", "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, process_group=0, cwd=self.cwd)
        deadline = self.launched + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kgservice serve exited with {self.process.returncode}; see {self.log}")
            try:
                status, _ = request(self.port, "GET", "/health", timeout=2)
                if status == 200:
                    self.health_s = time.perf_counter() - self.launched
                    return self
            except OSError:
                pass
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"kgservice serve did not answer /health within {timeout:g} s; see {self.log}")

    @property
    def pgid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def memory_kb(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) summed over the server's process group, and the process count."""
        return group_memory_kb(self.pgid)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.pgid, signal.SIGTERM)
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.pgid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            pass
        # reasoning workers are in the same group; make sure none outlives the master
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def group_memory_kb(pgid: int) -> dict[str, int]:
    total = {"rss_kb": 0, "hwm_kb": 0, "processes": 0}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except (OSError, ValueError, IndexError):
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        total["rss_kb"] += int(fields.get("VmRSS", "0 kB").split()[0])
        total["hwm_kb"] += int(fields.get("VmHWM", "0 kB").split()[0])
        total["processes"] += 1
    return total


def group_cpu_s(pgid: int, sandboxed: bool | None = None) -> float:
    """User + system CPU seconds of the live processes of a process group; with ``sandboxed``
    only those inside (True: the reasoning workers) or outside (False) the seccomp sandbox."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            rest = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            inside = sandboxed is not None and "Seccomp:\t2" in Path(f"/proc/{entry}/status").read_text()
        except (OSError, IndexError):
            continue
        if int(rest[2]) == pgid and (sandboxed is None or inside == sandboxed):
            total += int(rest[11]) + int(rest[12])
    return total / tick


class GroupSampler:
    """Samples the summed RSS of a process group in a thread; ``samples`` is [(seconds, kB)]."""

    def __init__(self, pgid: int, every: float = 0.2) -> None:
        self.pgid, self.every = pgid, every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self._start, group_memory_kb(self.pgid)["rss_kb"]))
            self._stop.wait(self.every)

    def __enter__(self) -> GroupSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# -- the client ------------------------------------------------------------------------------


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 60,
            conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        if own:
            conn.close()


def run_load(port: int, path: str, bodies: list[dict[str, Any]] | None, clients: int = 1,
             duration: float | None = None, count: int | None = None, warmup: float = 0.0,
             unique_prefix: str | None = None, method: str | None = None,
             expect: tuple[int, ...] = (200, 201)) -> dict[str, Any]:
    """``clients`` threads, each on one keep-alive connection, for ``duration`` s or ``count`` requests each.

    With ``unique_prefix`` each request's case gets a fresh id (``prefix-client-n``), so POST
    /cases never conflicts. Requests that start before ``warmup`` s are not counted.
    """
    method = method or ("POST" if bodies else "GET")
    start = time.perf_counter()
    window_start = start + warmup
    end = window_start + duration if duration is not None else None
    results: list[list[tuple[float, float, int]]] = [[] for _ in range(clients)]
    ids: list[list[str]] = [[] for _ in range(clients)]

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        n = 0
        while True:
            if count is not None and n >= count + (_warm_count(warmup) if warmup else 0):
                break
            if end is not None and time.perf_counter() >= end:
                break
            body = None
            if bodies:
                case = bodies[(k * 7919 + n) % len(bodies)]
                if unique_prefix is not None:
                    case = {**case, "id": f"{unique_prefix}-{k}-{n}"}
                    ids[k].append(case["id"])
                body = json.dumps(case).encode()
            t0 = time.perf_counter()
            try:
                status, _ = request(port, method, path, body, conn=conn)
            except (OSError, http.client.HTTPException):
                status = -1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            t1 = time.perf_counter()
            results[k].append((t0, t1 - t0, status))
            n += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finished = time.perf_counter()
    if count is not None and warmup:
        measured = [r for rs in results for r in rs[_warm_count(warmup):]]
        window = (max(t0 + d for t0, d, _ in measured) - min(t0 for t0, _, _ in measured)) if measured else 0.0
    else:
        measured = [r for rs in results for r in rs if r[0] >= window_start]
        window = (end if end is not None else finished) - window_start
    ok = [d for _, d, s in measured if s in expect]
    return {
        "path": path, "clients": clients, "requests": len(measured), "ok": len(ok),
        "errors": len(measured) - len(ok), "seconds": window,
        "all_requests": sum(len(rs) for rs in results),  # the warm-up's too
        "rps": len(ok) / window if window > 0 else float("nan"),
        "latencies": ok, "statuses": sorted({s for _, _, s in measured}),
        "ids": [i for group in ids for i in group],
    }


def _warm_count(warmup: float) -> int:
    """In count mode, ``warmup`` is a number of requests per client."""
    return int(warmup)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/pathway")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--bodies", type=Path, help="JSON lines, one case per line (POST); none: GET")
    parser.add_argument("--unique-prefix", help="give every posted case a fresh id with this prefix")
    args = parser.parse_args(argv)
    bodies = None
    if args.bodies:
        bodies = [json.loads(line) for line in args.bodies.read_text().splitlines() if line.strip()]
    result = run_load(args.port, args.path, bodies, clients=args.clients, duration=args.duration,
                      warmup=args.warmup, unique_prefix=args.unique_prefix)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
