"""Pathway answers in-process: the full pipeline per case, each engine, against the obvious baseline.

Baseline: what a user would write with the same libraries: load the ontology and the case
into one rdflib graph and let owlrl compute the full OWL 2 RL closure (no SHACL, no
answer), per case.
"""

from __future__ import annotations

from common import owlrl_closure, summary_ms, table, timed
from generator import CaseGenerator

from kgservice.config import Settings
from kgservice.core.kb import KnowledgeBase


def run(quick: bool) -> str:
    fast = KnowledgeBase.from_settings(Settings(engine="reasonable"))
    reference = KnowledgeBase.from_settings(Settings(engine="owlrl"))
    gen = CaseGenerator(fast.vocabulary["input"], seed=11)
    n_fast, n_slow = (40, 3) if quick else (400, 12)
    cases = list(gen.cases(n_fast, prefix="pipe"))
    for case in cases[:5]:  # warm caches
        fast.answer_json(case)

    fast_s = [timed(lambda c=c: fast.answer_json(c)) for c in cases]
    ref_s = [timed(lambda c=c: reference.answer_json(c)) for c in cases[:n_slow]]

    base_s = [timed(lambda c=c: owlrl_closure(fast, c)) for c in cases[:n_slow]]

    batch = list(gen.cases(100, prefix="batch"))
    graphs = [fast.read_json(c) for c in batch]
    batch_s = timed(lambda: fast.reason(graphs)) / len(batch)

    f, r, b = summary_ms(fast_s), summary_ms(ref_s), summary_ms(base_s)
    rows = [
        ["baseline: owlrl closure of ontology + case", b["n"], b["p50"], b["p95"], b["p99"], "1.0"],
        ["ESI-KG pipeline, owlrl engine", r["n"], r["p50"], r["p95"], r["p99"], f"{b['p50'] / r['p50']:.1f}x"],
        ["ESI-KG pipeline, reasonable engine", f["n"], f["p50"], f["p95"], f["p99"], f"{b['p50'] / f['p50']:.0f}x"],
        ["  same, 100 cases as one batch (per case)", 100, batch_s * 1000, "", "",
         f"{b['p50'] / (batch_s * 1000):.0f}x"],
    ]
    verdict = (f"target p50 <= 25 ms: {'met' if f['p50'] <= 25 else 'NOT met'}; "
               f"target >= 100x baseline: {'met' if b['p50'] / f['p50'] >= 100 else 'NOT met'}")
    return table("Pathway, one case in-process (JSON -> SHACL -> rules -> OWL RL -> answer), ms",
                 ["what", "cases", "p50", "p95", "p99", "speed-up vs baseline"], rows) + "\n\n" + verdict
