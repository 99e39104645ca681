"""``kgservice load`` killed with SIGKILL mid-load, then run again on the same input.

What it promises: the valid cases spooled since the last ingestion are written whole or not at
all (Oxigraph's bulk loader hands them to RocksDB in one ingestion), so the killed load leaves
only whole cases, each exactly as a clean load stores it, whether it is killed while reasoning,
while ingesting, or between the spool and its ingestion; running it again stores every other
case and rejects the stored ones as conflicts (nothing stored twice); the counts of ``GET /cases``
are right afterwards; the loader's unfinished files (sorted files, spool) are gone; and the
loader's own report of its memory stays under a hard ceiling.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kgservice.bulk import load
from kgservice.config import Settings
from kgservice.stores.oxigraph import Stores

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from generator import CaseGenerator  # noqa: E402

CASES = 400
BATCH = 10
#: Quads spooled before an ingestion: about three batches of ten cases (~88 quads each).
INGEST = 2000
#: The loader's main process holds the store; its workers the knowledge base. Either past this is a leak.
CEILING_MB = 600


def _contents(data_dir: Path) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Every stored case's asserted and inferred triples (as text), by case id."""
    stores = Stores(data_dir)
    try:
        site = stores.site("default")
        ids, total = site.case_ids(None, None, 10 * CASES, 0)
        assert len(ids) == total
        out = {}
        for case_id in ids:
            asserted, inferred = site.read(case_id)
            out[case_id] = (frozenset(map(str, asserted)), frozenset(map(str, inferred)))
        return out
    finally:
        stores.close()


def _kill_mid_load(source: Path, data_dir: Path) -> None:
    """Start ``kgservice load`` and SIGKILL its process group once its progress line shows stored cases."""
    run = subprocess.Popen([sys.executable, "-m", "kgservice.cli", "load", str(source), "--data-dir", str(data_dir),
                            "--batch", str(BATCH), "--workers", "1", "--ingest-quads", str(INGEST)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    assert run.stderr is not None
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            chunk = run.stderr.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                break
            seen = (seen + chunk)[-300:]
            counts = [int(n) for n in re.findall(rb"loaded\s+(\d+)", seen)]
            if counts and counts[-1] >= 3 * BATCH:  # one ingestion stored: the kill hits a later one or the spool
                os.killpg(run.pid, signal.SIGKILL)
                break
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        run.wait(30)
        run.stderr.close()
    assert run.returncode == -signal.SIGKILL, "the load ended before it could be killed: " + seen.decode()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, kb: Any) -> Path:
    path = tmp_path_factory.mktemp("resume") / "cases.jsonl"
    cases = CaseGenerator(kb.vocabulary["input"], seed=11).cases(CASES, prefix="resume")
    path.write_text("".join(json.dumps(case) + "\n" for case in cases))
    return path


@pytest.fixture(scope="module")
def clean(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding every case, loaded without a kill (one ingestion)."""
    data_dir = tmp_path_factory.mktemp("clean")
    summary = load(Settings(data_dir=data_dir, auth_required=False), source, batch_size=BATCH, workers=0,
                   progress=None)
    assert summary.loaded == CASES
    return data_dir


@pytest.fixture(scope="module")
def reference(clean: Path) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    return _contents(clean)


def _load_again(source: Path, killed: Path, after_kill: dict[str, Any]) -> dict[str, Any]:
    """Run the load again on the killed one's data dir: it must store exactly the cases not stored."""
    again = subprocess.run([sys.executable, "-m", "kgservice.cli", "load", str(source), "--data-dir", str(killed),
                            "--batch", str(BATCH), "--workers", "1", "--ingest-quads", str(INGEST)],
                           capture_output=True, timeout=300)
    summary: dict[str, Any] = json.loads(again.stdout)
    assert again.returncode == 1  # the cases stored before the kill are rejected
    assert summary["loaded"] == CASES - len(after_kill) and summary["rejected"] == len(after_kill)
    assert {r["problem"]["status"] for r in summary["rejections"]} == {409}
    assert {r["id"] for r in summary["rejections"]} == set(after_kill)
    site_dir = killed / "sites" / "default"
    assert not list(site_dir.glob("bulk-*.sst")) and not list(site_dir.glob("spool-*"))
    return summary


def test_a_load_killed_mid_way_leaves_whole_cases_and_resumes_storing_none_twice(
        source: Path, clean: Path, reference: dict[str, Any], tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    _kill_mid_load(source, killed)
    after_kill = _contents(killed)
    assert 0 < len(after_kill) < CASES
    assert len(after_kill) % BATCH == 0  # whole batches: the input has no invalid case
    assert all(after_kill[case_id] == reference[case_id] for case_id in after_kill)  # each case whole

    summary = _load_again(source, killed, after_kill)
    assert _contents(killed) == reference
    peak = summary["peak_rss_mb"]
    assert 0 < peak["loader"] < CEILING_MB and 0 < peak["largest_worker"] < CEILING_MB
    assert summary["cpu_s"]["loader"] > 0 and summary["cpu_s"]["workers"] > 0  # the CPU of each side, said

    from kgservice.api import create_app

    for data_dir in (clean, killed):  # GET /cases counts, each filter, as on the clean load
        client = create_app(Settings(data_dir=data_dir, auth_required=False)).test_client()
        totals = {category: client.get(f"/cases?category={category}").get_json()["total"]
                  for category in ("primary-non-responder", "responder", "secondary-non-responder")}
        assert client.get("/cases").get_json()["total"] == CASES
        if data_dir == clean:
            expected = totals
        assert totals == expected and sum(totals.values()) > 0


#: Run as a script: a load that SIGKILLs itself when it is about to store its second spool, which
#: holds reasoned cases written to the spool file and not yet to the store.
_KILLED_AT_SECOND_INGESTION = """
import os, signal, sys
from pathlib import Path
from kgservice import bulk
from kgservice.config import Settings
from kgservice.stores.oxigraph import OxigraphSite

real, calls = OxigraphSite.load_nquads, []

def load_nquads(self, data, cases):
    calls.append(cases)
    if len(calls) == 2:
        print(data, cases, Path(data).stat().st_size, flush=True)  # the spool, whole, about to be stored
        os.kill(os.getpid(), signal.SIGKILL)
    real(self, data, cases)

OxigraphSite.load_nquads = load_nquads
bulk.load(Settings(data_dir=Path(sys.argv[2]), auth_required=False), Path(sys.argv[1]),
          batch_size=int(sys.argv[3]), workers=0, progress=None, ingest_quads=int(sys.argv[4]))
"""


def test_a_load_killed_between_its_spool_and_the_ingestion_stores_none_of_the_spool_and_resumes(
        source: Path, reference: dict[str, Any], tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    run = subprocess.run([sys.executable, "-c", _KILLED_AT_SECOND_INGESTION, str(source), str(killed), str(BATCH),
                          str(INGEST)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stderr
    spool, spooled, size = run.stdout.split()
    assert Path(spool).parent == killed / "sites" / "default" and int(size) > 0 and int(spooled) >= BATCH
    assert Path(spool).exists()  # left by the kill, with cases reasoned and not stored

    after_kill = _contents(killed)  # opening the store for writing removes the killed load's spool
    assert not Path(spool).exists()
    assert 0 < len(after_kill) < CASES and len(after_kill) % BATCH == 0  # the first ingestion only
    assert all(after_kill[case_id] == reference[case_id] for case_id in after_kill)

    _load_again(source, killed, after_kill)
    assert _contents(killed) == reference
