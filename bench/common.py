"""Timing helpers shared by the benchmarks: medians and percentiles over repeated runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_ms(samples: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50": statistics.median(samples) * 1000,
        "p95": pct(samples, 95) * 1000,
        "p99": pct(samples, 99) * 1000,
    }


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [f"\n## {title}", "", "| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells[1:]]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return str(value)


def owlrl_closure(kb: Any, case: dict[str, Any]) -> Any:
    """The obvious baseline: the ontology and the case in one rdflib graph, closed by owlrl
    (the full OWL 2 RL closure). Returns the graph."""
    import owlrl
    from rdflib import Graph

    g = Graph()
    g += kb.ontology.graph
    g += kb.read_json(case).graph
    owlrl.DeductiveClosure(owlrl.OWLRL_Semantics).expand(g)
    return g


# -- today's code, for baselines measured in the same run ------------------------------------------

#: main at the start of the performance work (issue 14): "today" for the ratios of targets 3, 4 and 6.
BASELINE_COMMIT = "82b0dec"
_baselines: dict[str, Any] = {}


def baseline_tree(commit: str = BASELINE_COMMIT) -> Any:
    """The source tree of ``commit`` (``git archive``) in a temporary dir, removed at exit; None without git.

    Run its code with this venv's interpreter and ``baseline_env``: ``PYTHONPATH`` puts its
    ``kgservice`` before the installed one. Made once per process and commit.
    """
    import atexit
    import shutil
    import subprocess
    import tarfile
    import tempfile
    from pathlib import Path

    if commit in _baselines:
        return _baselines[commit]
    repo = Path(__file__).resolve().parent.parent
    tree = None
    git = shutil.which("git")
    if git:
        done = subprocess.run([git, "-C", str(repo), "archive", "--format=tar", commit],
                              capture_output=True, timeout=120, check=False)
        if done.returncode == 0:
            tree = Path(tempfile.mkdtemp(prefix=f"esi-baseline-{commit}-"))
            atexit.register(shutil.rmtree, tree, True)
            with tarfile.open(fileobj=__import__("io").BytesIO(done.stdout)) as archive:
                archive.extractall(tree, filter="data")
    _baselines[commit] = tree
    return tree


def baseline_env(commit: str = BASELINE_COMMIT) -> dict[str, str] | None:
    """Environment (to add to ``os.environ``) that runs ``commit``'s code; None when it is unavailable.

    Start the process with ``cwd=baseline_tree(commit)`` too: ``python -m`` puts the working
    directory first on ``sys.path``.
    """
    tree = baseline_tree(commit)
    return None if tree is None else {"PYTHONPATH": str(tree)}


def baseline_server(data_dir: Any, commit: str = BASELINE_COMMIT, env: dict[str, str] | None = None) -> Any:
    """A ``loadgen.Server`` (not started) running ``commit``'s ``kgservice serve``; None when unavailable."""
    from loadgen import Server

    extra = baseline_env(commit)
    if extra is None:
        return None
    return Server(data_dir, env={**(env or {}), **extra}, cwd=baseline_tree(commit))
