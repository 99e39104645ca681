"""Bulk ingest: ``kgservice load FILE`` on N generated cases (a few of them invalid), with its memory.

Baselines, in the same run: the building block alone, Oxigraph's ``Store.bulk_load`` of the very
quads the load stored (its target: ``kgservice load`` within 3x of it); and the obvious approach
with the same libraries, for a sample of the cases: for each case, load the ontology and the case
into an rdflib graph, let owlrl compute the OWL 2 RL closure, and add the result to one rdflib
Dataset (a named graph per case).

This module also keeps the stores the other benchmarks read (``prepared_store(n)``): a data
dir holding the n generated cases ``kg-000000``…, built with ``kgservice load`` once and reused,
under the folder given by ``bench/run.py --data-dir`` (kept across runs) or a temporary one.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from common import owlrl_closure, table, timed
from generator import CaseGenerator
from loadgen import group_memory_kb

SEED = 5
PREFIX = "kg"
_root: Path | None = None
_kb: Any = None


# -- shared data -----------------------------------------------------------------------------


def set_root(path: Path | None) -> None:
    """Where stores and case files are kept (``--data-dir``); None: a temporary folder."""
    global _root
    _root = Path(path).resolve() if path is not None else None
    if _root is not None:
        _root.mkdir(parents=True, exist_ok=True)


def root() -> Path:
    global _root
    if _root is None:
        _root = Path(tempfile.mkdtemp(prefix="esi-bench-"))
        atexit.register(shutil.rmtree, _root, True)
    return _root


def kb() -> Any:
    global _kb
    if _kb is None:
        from kgservice.config import Settings
        from kgservice.core.kb import KnowledgeBase

        _kb = KnowledgeBase.from_settings(Settings())
    return _kb


def case_id(i: int) -> str:
    return f"{PREFIX}-{i:06d}"


def case_iri(i: int, site: str = "default") -> str:
    from kgservice.core.cases import case_iri as iri

    return str(iri(case_id(i), site))


def generator(seed: int = SEED) -> CaseGenerator:
    return CaseGenerator(kb().vocabulary["input"], seed=seed)


def cases_file(n: int) -> Path:
    """The n generated cases as JSON lines (made once)."""
    path = root() / f"cases-{n}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".part")
        with tmp.open("w") as out:
            for case in generator().cases(n, prefix=PREFIX):
                out.write(json.dumps(case) + "\n")
        tmp.rename(path)
    return path


def _marker(n: int) -> dict[str, Any]:
    return {"cases": n, "seed": SEED, "prefix": PREFIX, "ontology_version": kb().version}


def prepared_store(n: int) -> Path:
    """A data dir holding the n generated cases (site ``default``), loaded once and reused."""
    data_dir = root() / f"store-{n}"
    marker = data_dir / "bench.json"
    if marker.exists() and json.loads(marker.read_text()) == _marker(n):
        return data_dir
    shutil.rmtree(data_dir, ignore_errors=True)
    source = cases_file(n)
    print(f"[bench] loading {n} cases into {data_dir} ...", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "kgservice.cli", "load", str(source), "--data-dir", str(data_dir)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
    summary = json.loads(done.stdout)
    if summary["loaded"] != n:
        raise RuntimeError(f"loading {source} stored {summary['loaded']} of {n} cases")
    marker.write_text(json.dumps(_marker(n)))
    return data_dir


def adopt_store(n: int, data_dir: Path) -> None:
    """Keep a data dir that holds exactly the n generated cases as ``prepared_store(n)``."""
    target = root() / f"store-{n}"
    if (target / "bench.json").exists():
        shutil.rmtree(data_dir, ignore_errors=True)
        return
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(data_dir), str(target))
    (target / "bench.json").write_text(json.dumps(_marker(n)))


# -- the benchmark ---------------------------------------------------------------------------


def _invalid(case: dict[str, Any], k: int) -> str:
    """One bad input line of kind k: malformed JSON, invalid case, unknown code, duplicate id."""
    bad = json.loads(json.dumps(case))
    bad["id"] = f"bad-{k:05d}"
    kind = k % 5
    if kind == 0:
        return json.dumps(bad)[:-7] + "\n"  # cut: not JSON
    if kind == 1:
        bad["pain_scores"][0]["score"] = 11
    elif kind == 2:
        bad["diagnoses"] = ["not-a-diagnosis"]
    elif kind == 3:
        bad["id"] = case_id(0)  # a duplicate of the first case
    else:
        del bad["injection"]
    return json.dumps(bad)


def _input_with_invalid(n: int, n_bad: int, path: Path) -> None:
    every = max(1, n // n_bad)
    bad = 0
    with cases_file(n).open() as source, path.open("w") as out:
        for i, line in enumerate(source):
            out.write(line)
            if i % every == every // 2 and bad < n_bad:
                out.write(_invalid(json.loads(line), bad).rstrip("\n") + "\n")
                bad += 1


class LoaderSampler:
    """Samples, every ``every`` s, how many cases the loader has stored and the RSS of its main process
    and of its whole process group: ``samples`` is [(seconds, cases loaded, main kB, group kB)].

    The main process is the one that holds the store, so its RSS is the one that must stay flat as
    cases accumulate; the reasoning workers' RSS does not depend on the store's size. The count is
    read from the loader's progress line on stderr.
    """

    def __init__(self, process: subprocess.Popen[bytes], wrapped: bool, every: float = 0.25) -> None:
        self.process, self.wrapped, self.every = process, wrapped, every
        self.samples: list[tuple[float, int, int, int]] = []
        self.loaded = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._sample, daemon=True),
                         threading.Thread(target=self._progress, daemon=True)]
        self._start = time.perf_counter()

    def _progress(self) -> None:
        stream: IO[bytes] | None = self.process.stderr
        tail = b""
        while stream is not None and (chunk := stream.read1(4096)):  # type: ignore[attr-defined]
            tail = (tail + chunk)[-200:]
            counts = re.findall(rb"loaded\s+(\d+)", tail)
            if counts:
                self.loaded = int(counts[-1])

    def _sample(self) -> None:
        loader: int | None = None
        while not self._stop.is_set():
            loader = loader or _loader_pid(self.process.pid, self.wrapped)
            main = _rss_kb(loader) if loader else 0
            self.samples.append((time.perf_counter() - self._start, self.loaded, main,
                                 group_memory_kb(self.process.pid)["rss_kb"]))
            self._stop.wait(self.every)

    def __enter__(self) -> LoaderSampler:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def main_kb_at(self, cases: int) -> int | None:
        """The loader's RSS when it had first stored ``cases`` cases (None if it never did while sampled)."""
        return next((kb for _, loaded, kb, _ in self.samples if loaded >= cases and kb), None)

    def main_kb_last(self) -> int | None:
        """The loader's RSS in the last sample taken while it ran (its progress line shows the last count late)."""
        return next((kb for _, _, kb, _ in reversed(self.samples) if kb), None)


def _loader_pid(pid: int, wrapped: bool) -> int | None:
    """The ``kgservice load`` process: ``pid`` itself, or (``wrapped``) its child under /usr/bin/time."""
    if not wrapped:
        return pid
    return next(iter(_children(pid)), None)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def _rss_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"VmRSS:\s+(\d+)", status)
    return int(found.group(1)) if found else 0


def _load(path: Path, data_dir: Path, checkpoints: tuple[int, ...] = ()) -> dict[str, Any]:
    """``kgservice load`` under /usr/bin/time -v, the RSS of its main process and of its group sampled.

    ``checkpoints``: numbers of cases stored at which to report the main process's RSS.
    """
    command = [sys.executable, "-m", "kgservice.cli", "load", str(path), "--data-dir", str(data_dir)]
    gnu_time = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    timing = data_dir.parent / f"{data_dir.name}.time"
    if gnu_time:
        command = [gnu_time, "-v", "-o", str(timing), *command]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    with LoaderSampler(process, wrapped=bool(gnu_time)) as sampler:
        out = process.stdout.read() if process.stdout else b""
        process.wait()
    wall = time.perf_counter() - started
    summary = json.loads(out)
    largest_kb = None
    cpu_s: float | None = None
    if gnu_time and timing.exists():
        text = timing.read_text()
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        largest_kb = int(found.group(1)) if found else None
        cpu = [float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text)]
        cpu_s = sum(cpu) if cpu else None
    samples = sampler.samples
    return {"summary": summary, "wall": wall, "largest_kb": largest_kb, "cpu_s": cpu_s,
            "peak_kb": max((s[3] for s in samples), default=0),
            "loader_peak_kb": max((s[2] for s in samples), default=0),
            "loader_kb_at": {n: sampler.main_kb_at(n) for n in checkpoints},
            "loader_kb_last": sampler.main_kb_last(),
            "exit": process.returncode}


def _baseline(cases: list[dict[str, Any]]) -> float:
    """The obvious approach: per case, owlrl closure of ontology + case, added to one rdflib Dataset."""
    from rdflib import Dataset, URIRef

    base = kb()
    dataset = Dataset()

    def one(case: dict[str, Any]) -> None:
        g = owlrl_closure(base, case)
        target = dataset.graph(URIRef(f"https://example.org/case/{case['id']}"))
        for triple in g:
            target.add(triple)

    seconds = timed(lambda: [one(c) for c in cases])
    return len(cases) / seconds


_BULK_LOAD = """
import json, sys, time
import pyoxigraph as ox
store = ox.Store(sys.argv[2])
started = time.perf_counter()
store.bulk_load(path=sys.argv[1], format=ox.RdfFormat.N_QUADS)
seconds = time.perf_counter() - started
store.flush()
print(json.dumps({"seconds": seconds, "quads": len(store)}))
"""


def _bulk_load_baseline(data_dir: Path, work: Path) -> dict[str, Any]:
    """The building block alone: the quads ``kgservice load`` stored (ontology graphs, and each case's
    asserted and inferred graphs), dumped as N-Quads, then loaded by Oxigraph's ``Store.bulk_load``
    into an empty on-disk store, in a process of its own (under /usr/bin/time -v for its CPU and
    peak RSS). Only the ``bulk_load`` call is timed."""
    import pyoxigraph as ox

    dump = work / "stored.nq"
    stored = ox.Store.read_only(str(data_dir / "sites" / "default"))
    stored.dump(str(dump), format=ox.RdfFormat.N_QUADS)
    del stored
    command = [sys.executable, "-c", _BULK_LOAD, str(dump), str(work / "bulk-store")]
    gnu_time = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    timing = work / "bulk.time"
    if gnu_time:
        command = [gnu_time, "-v", "-o", str(timing), *command]
    done = subprocess.run(command, stdout=subprocess.PIPE, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    result["peak_kb"] = result["cpu_s"] = None
    if gnu_time and timing.exists():
        text = timing.read_text()
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        result["peak_kb"] = int(found.group(1)) if found else None
        cpu = [float(m) for m in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text)]
        result["cpu_s"] = sum(cpu) if cpu else None
    dump.unlink()
    shutil.rmtree(work / "bulk-store", ignore_errors=True)
    return result


def run(quick: bool) -> str:
    n = 2_000 if quick else 100_000
    n_bad = max(5, n // 1000)
    n_base = 5 if quick else 20
    work = Path(tempfile.mkdtemp(prefix="esi-ingest-", dir=root()))
    source = work / "input.jsonl"
    _input_with_invalid(n, n_bad, source)
    data_dir = work / "data"
    checkpoints = (n // 10, n // 2)
    result = _load(source, data_dir, checkpoints)
    summary = result["summary"]
    rate = summary["cases_per_second"] or 0.0
    bulk = _bulk_load_baseline(data_dir, work)
    bulk_rate = summary["loaded"] / bulk["seconds"]
    if summary["loaded"] == n:
        adopt_store(n, data_dir)
    shutil.rmtree(work, ignore_errors=True)

    sample = [json.loads(line) for line in cases_file(n).read_text().splitlines()[:n_base]]
    base_rate = _baseline(sample)

    mb = 1024
    at = result["loader_kb_at"]
    last = result["loader_kb_last"]
    growth = " / ".join([*(f"{at[c] // mb} MB at {c}" if at[c] else f"n/a at {c}" for c in checkpoints),
                         f"{last // mb} MB at the end ({n})" if last else "n/a at the end"])
    own = summary.get("peak_rss_mb") or {}
    distance = bulk_rate / rate if rate else float("inf")
    rows = [
        ["baseline: per case owlrl closure + add to an rdflib Dataset", n_base, "", f"{base_rate:.1f}",
         1000 / base_rate, "", "", "", "1.0", ""],
        [f"building block: Oxigraph Store.bulk_load of the quads kgservice load stored ({bulk['quads']}), "
         "empty on-disk store", summary["loaded"], "", f"{bulk_rate:.1f}",
         bulk["cpu_s"] * 1000 / max(1, summary["loaded"]) if bulk["cpu_s"] else "n/a",
         bulk["peak_kb"] // mb if bulk["peak_kb"] else "n/a", "", "", f"{bulk_rate / base_rate:.0f}x", "1.0"],
        ["kgservice load (2 reasoning workers, batches of 200, one ingestion per 500k quads spooled)",
         summary["loaded"], summary["rejected"],
         f"{rate:.1f}", result["cpu_s"] * 1000 / max(1, summary["loaded"]) if result["cpu_s"] else "n/a",
         result["loader_peak_kb"] // mb, growth, result["peak_kb"] // mb, f"{rate / base_rate:.0f}x",
         f"{distance:.2f}x slower"],
    ]
    split = summary.get("cpu_s") or {}
    per_case = {k: f"{1000 * v / max(1, summary['loaded']):.2f}" if v else "n/a" for k, v in split.items()}
    met = distance <= 3.0
    verdict = (f"target: kgservice load within 3x of bulk_load in the same run: {'met' if met else 'NOT met'} "
               f"({distance:.2f}x: {rate:.0f} vs {bulk_rate:.0f} cases/s"
               + ("" if met else f"; missed by {distance / 3:.2f}x") + f"), on {n} cases in {summary['seconds']} s; "
               f"{summary['rejected']} of {n_bad} invalid lines rejected. CPU ms a case: the loader's main "
               f"process (all its threads: ingestion, RocksDB) {per_case.get('loader', 'n/a')}, its reasoning workers "
               f"{per_case.get('workers', 'n/a')}. Memory: the loader's main process (the one "
               f"holding the store) peaked at {result['loader_peak_kb'] // mb} MB RSS (its own report: loader "
               f"{own.get('loader')} MB, largest worker {own.get('largest_worker')} MB); by cases stored: {growth} "
               f"(bounded if these are close); all its processes together peaked at {result['peak_kb'] // mb} MB"
               + (f", the largest single one at {result['largest_kb'] // mb} MB" if result["largest_kb"] else "")
               + (f"; bulk_load peaked at {bulk['peak_kb'] // mb} MB" if bulk["peak_kb"] else ""))
    return table(f"Bulk ingest, {n} cases as JSON lines (+{n_bad} invalid)",
                 ["what", "cases stored", "rejected", "cases/s", "CPU ms/case (all processes, whole run)",
                  "loader peak RSS MB", "loader RSS by cases stored", "peak RSS all processes MB",
                  "speed-up vs owlrl baseline", "vs bulk_load"], rows) + "\n\n" + verdict
