"""``kgservice load --scheduler``: bulk loading on a real Dask cluster (scheduler and workers as
processes of their own on loopback), against the local process pool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serverutil import free_port

from kgservice.bulk import load
from kgservice.config import Settings
from kgservice.core.kb import KnowledgeBase
from kgservice.stores.oxigraph import Stores

BIN = Path(sys.executable).parent
CASES = 240
BATCH = 10


def _start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / "dask"), *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


class Cluster:
    """A Dask scheduler and ``n`` single-threaded workers (no nanny: a killed worker stays dead)."""

    def __init__(self, workers: int) -> None:
        self.address = f"tcp://127.0.0.1:{free_port()}"
        port = self.address.rsplit(":", 1)[1]
        self.scheduler = _start("scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard")
        self.workers = [_start("worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny",
                               "--no-dashboard", "--name", f"w{i}") for i in range(workers)]
        self.wait_for(workers)

    def wait_for(self, n: int, timeout: float = 90) -> None:
        from distributed import Client

        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=timeout) as client:
            while len(client.nthreads()) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(client.nthreads())} of {n} Dask workers came up")
                time.sleep(0.2)

    def close(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    made = Cluster(2)
    yield made
    made.close()


@pytest.fixture(scope="module")
def cases_file(tmp_path_factory: pytest.TempPathFactory, kb: KnowledgeBase) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from generator import CaseGenerator

    cases = list(CaseGenerator(kb.vocabulary["input"], seed=13).cases(CASES, prefix="dask"))
    cases[7] = {**cases[7], "age": -3}  # one invalid case: rejected the same way on both
    path = tmp_path_factory.mktemp("dask") / "cases.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in cases) + "\n", encoding="utf-8")
    return path


def stored(data_dir: Path, site: str) -> dict[str, Any]:
    """Every stored case's answer (category, pathways, causes), by id."""
    store = Stores(data_dir).site(site)
    rows = store.select("PREFIX esi: <https://w3id.org/esi-kg/ontology#> SELECT ?case ?p ?v WHERE { "
                        "?case esi:hasResponseCategory ?c . ?case ?p ?v . FILTER(?p IN (esi:hasResponseCategory, "
                        "esi:hasApplicablePathway, esi:hasSuspectedFailureCause, esi:hasSuspectedPainSource)) }")
    out: dict[str, set[tuple[str, str]]] = {}
    for row in rows:
        out.setdefault(row["case"].value, set()).add((row["p"].value, row["v"].value))
    store.flush()
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.slow
def test_a_load_on_a_dask_cluster_stores_what_the_local_pool_stores(cluster: Cluster, cases_file: Path,
                                                                    tmp_path: Path) -> None:
    local = load(Settings(data_dir=tmp_path / "local"), cases_file, site="north", batch_size=BATCH, workers=1,
                 progress=None)
    distributed = load(Settings(data_dir=tmp_path / "dask"), cases_file, site="north", batch_size=BATCH,
                       progress=None, scheduler=cluster.address)
    assert (local.loaded, local.rejected) == (distributed.loaded, distributed.rejected) == (CASES - 1, 1)
    assert distributed.rejections[0]["index"] == 7 and local.rejections == distributed.rejections
    assert stored(tmp_path / "dask", "north") == stored(tmp_path / "local", "north")


@pytest.mark.slow
def test_a_worker_killed_mid_load_loses_no_case_and_stores_none_twice(cluster: Cluster, cases_file: Path,
                                                                      tmp_path: Path) -> None:
    seen: list[str] = []

    class Watch:
        """The loader's progress line: kill a worker once some cases are stored."""

        def write(self, text: str) -> None:
            seen.append(text)
            if len(seen) == 1:  # the first batch is stored: most are still to come
                victim = cluster.workers[0]
                threading.Thread(target=lambda: os.killpg(victim.pid, signal.SIGKILL)).start()

        def flush(self) -> None:
            pass

    summary = load(Settings(data_dir=tmp_path / "killed"), cases_file, site="north", batch_size=BATCH,
                   progress=Watch(), scheduler=cluster.address)
    assert cluster.workers[0].wait(10) is not None  # it was killed during the load
    assert (summary.loaded, summary.rejected) == (CASES - 1, 1), summary.rejections[:3]
    assert len(stored(tmp_path / "killed", "north")) == CASES - 1


@pytest.mark.slow
def test_an_impact_run_on_a_dask_cluster_reports_what_the_local_pool_reports(cluster: Cluster,
                                                                             tmp_path: Path) -> None:
    from lifecycle_util import generated_cases, store_under_1_0
    from rdflib import Graph, Literal

    from kgservice.core.ontology import ESI
    from kgservice.curation.impact import impact

    settings = store_under_1_0(tmp_path / "data", generated_cases(60, prefix="imp", seed=5))
    proposed = tmp_path / "strict.ttl"  # a curator's edit: a stricter success threshold
    graph = Graph().parse(settings.ontology_path, format="turtle")
    graph.set((ESI["success-relief-threshold"], ESI.parameterValue, Literal(70)))
    graph.serialize(proposed, format="turtle")

    local = impact(settings, proposed, workers=1, batch_size=BATCH, progress=None).as_json()
    distributed = impact(settings, proposed, batch_size=BATCH, scheduler=cluster.address, progress=None).as_json()

    assert local["stored"]["cases"] == distributed["stored"]["cases"] == 60
    assert local["stored"]["counts"] == distributed["stored"]["counts"]
    key = lambda report: sorted(report["stored"]["impacts"], key=lambda c: c["case"])  # noqa: E731
    assert key(local) == key(distributed)
    assert any(c["differences"] for c in local["stored"]["impacts"])  # the edit changed something
