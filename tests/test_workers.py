"""Several API processes over one remote store: ``kgservice serve`` with ``ESI_WORKERS=4`` on a real Virtuoso.

Each API process keeps no state of its own but caches keyed by the ontology version; four of
them writing and reading at once lose nothing and answer 409 only for a real conflict.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from serverutil import RealServer

CASE = json.loads((Path(__file__).parent / "data" / "vignettes" / "p01-primary-non-responder.json").read_text(
    encoding="utf-8"))["case"]
CLIENTS = 6
CASES_EACH = 8


@pytest.mark.slow
def test_four_api_processes_share_the_store_without_losing_a_case(sparql_endpoint: str, tmp_path: Path) -> None:
    site_cases = [f"w{uuid.uuid4().hex[:8]}-{i}" for i in range(CLIENTS * CASES_EACH)]
    contested = f"c{uuid.uuid4().hex[:8]}"
    env = {"ESI_STORE": "sparql", "ESI_SPARQL_ENDPOINT": sparql_endpoint, "ESI_WORKERS": "4"}
    failures: list[Any] = []
    contest: list[int] = []

    with RealServer(tmp_path / "data", auth_required=False, reasoning_workers=0, env=env) as server:
        workers = _gunicorn_workers(server)
        assert len(workers) == 4, workers

        def client(n: int) -> None:
            for case_id in site_cases[n * CASES_EACH:(n + 1) * CASES_EACH]:
                posted = server.request("POST", "/cases", {**CASE, "id": case_id})
                read = server.request("GET", f"/cases/{case_id}")  # most likely from another process
                if posted.status != 201 or read.status != 200 or read.json()["id"] != case_id:
                    failures.append((case_id, posted.status, read.status, posted.body[:300]))
            contest.append(server.request("POST", "/cases", {**CASE, "id": contested}).status)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert not failures, failures
        assert sorted(contest) == [201] + [409] * (CLIENTS - 1), contest
        listed: set[str] = set()
        for page in range(1, 10):
            items = server.request("GET", f"/cases?per_page=50&page={page}").json()["items"]
            listed |= {item["id"] for item in items}
        assert set(site_cases) | {contested} <= listed
        answers = {server.request("GET", f"/cases/{c}/pathway").json()["response"]["category"] for c in site_cases}
        assert answers == {"primary-non-responder"}


def test_the_embedded_store_refuses_more_than_one_worker(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "kgservice.cli", "serve", "--workers", "2", "--data-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "ESI_STORE=sparql" in done.stderr and "one writing process" in done.stderr, done.stderr


def _gunicorn_workers(server: RealServer) -> list[int]:
    """Pids of the gunicorn master's worker processes (from /proc)."""
    assert server.process is not None
    master = server.process.pid
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == master:
                found.append(int(entry.name))
    return found
