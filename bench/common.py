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
