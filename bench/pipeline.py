"""Pathway answers in-process: the whole pipeline per case, each engine, against its building blocks.

Baselines, measured in the same run on the same cases:

- the obvious way: the ontology and the case in one rdflib graph, closed by owlrl (the full
  OWL 2 RL closure; no SHACL, no rules, no answer);
- the OWL 2 RL engine alone on what the pipeline gives it: a new ``reasonable`` reasoner that
  reads the case TBox file and the case's asserted triples and observations, and reasons;
- the compiled case rules alone (:mod:`kgservice.core.caseowl`) on the same facts.

Targets (issue 14, target 2): the whole pipeline within 1.5x of ``reasonable`` alone, and at
least 300x faster than owlrl's full closure.
"""

from __future__ import annotations

from functools import partial

from common import owlrl_closure, summary_ms, table, timed
from generator import CaseGenerator

from kgservice.config import Settings
from kgservice.core.caseowl import CaseClosure, CompiledRules
from kgservice.core.kb import KnowledgeBase

WITHIN = 1.5
SPEED_UP = 300


def _reasonable_alone(path: str, facts: list) -> object:
    import reasonable

    engine = reasonable.PyReasoner()
    engine.load_file(path)
    engine.from_graph(facts)
    return engine.reason()


def _compiled_alone(rules: CompiledRules, facts: list) -> None:
    CaseClosure(rules).add(facts)


def run(quick: bool) -> str:
    kbs = {engine: KnowledgeBase.from_settings(Settings(engine=engine)) for engine in ("compiled", "reasonable")}
    kbs["owlrl"] = KnowledgeBase.from_settings(Settings(engine="owlrl"))
    default = kbs["compiled"]
    gen = CaseGenerator(default.vocabulary["input"], seed=11)
    n_fast, n_slow = (150, 5) if quick else (600, 30)  # owlrl: ~1.4 s a case; 12 samples swung 1.3-1.8 s
    cases = list(gen.cases(n_fast, prefix="pipe"))
    for kb in (default, kbs["reasonable"]):
        for case in cases[:10]:  # warm caches
            kb.answer_json(case)

    facts = [[*i.asserted, *i.observations] for i in (default.reasoner_input(default.read_json(c)) for c in cases)]
    tbox = str(default.reasoner.case_tbox_file)
    rules = default.reasoner.compiled
    assert rules is not None, "the shipped ontology compiles"
    # Interleaved, case by case, so that a shared machine's load falls on the ratios' both sides alike.
    alone_s: list[float] = []
    compiled_s: list[float] = []
    pipe_s: dict[str, list[float]] = {name: [] for name in kbs}
    base_s: list[float] = []
    for i, (case, f) in enumerate(zip(cases, facts, strict=True)):
        alone_s.append(timed(partial(_reasonable_alone, tbox, f)))
        compiled_s.append(timed(partial(_compiled_alone, rules, f)))
        for name, kb in kbs.items():
            if name != "owlrl" or i < n_slow:
                pipe_s[name].append(timed(partial(kb.answer_json, case)))
        if i < n_slow:
            base_s.append(timed(partial(owlrl_closure, default, case)))

    batch = list(gen.cases(100, prefix="batch"))
    default.process(batch[:10])
    batch_s = timed(lambda: default.process(batch)) / len(batch)

    base, alone = summary_ms(base_s), summary_ms(alone_s)
    pipe = {name: summary_ms(s) for name, s in pipe_s.items()}

    def row(what: str, s: dict[str, float]) -> list[object]:
        return [what, s["n"], s["p50"], s["p95"], s["p99"], f"{base['p50'] / s['p50']:.0f}x",
                f"{s['p50'] / alone['p50']:.2f}x"]

    comp = summary_ms(compiled_s)
    rows = [
        row("baseline: owlrl closure of ontology + case", base),
        row("block: reasonable alone (case TBox file + case)", alone),
        row("block: compiled case rules alone (same facts)", comp),
        row("pipeline, compiled engine (default)", pipe["compiled"]),
        row("pipeline, reasonable engine", pipe["reasonable"]),
        row("pipeline, owlrl engine", pipe["owlrl"]),
        ["  pipeline, compiled, 100 cases as one batch (per case)", 100, batch_s * 1000, "", "",
         f"{base['p50'] / (batch_s * 1000):.0f}x", f"{batch_s * 1000 / alone['p50']:.2f}x"],
    ]
    ratio = pipe["compiled"]["p50"] / alone["p50"]
    speed_up = base["p50"] / pipe["compiled"]["p50"]
    verdicts = [
        f"pipeline within {WITHIN}x of the engine alone: "
        + ("met" if ratio <= WITHIN else f"NOT met by {ratio / WITHIN:.2f}x") + f" ({ratio:.2f}x)",
        f">= {SPEED_UP}x owlrl: " + ("met" if speed_up >= SPEED_UP else f"NOT met by {SPEED_UP / speed_up:.2f}x")
        + f" ({speed_up:.0f}x)",
    ]
    return table("Pathway, one case in-process (JSON -> SHACL -> rules -> OWL RL -> answer), ms",
                 ["what", "cases", "p50", "p95", "p99", "vs owlrl closure", "vs reasonable alone"], rows) \
        + "\n\n" + "\n".join(verdicts)
