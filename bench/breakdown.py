"""Where a case's time goes: the pipeline's stages timed one by one, in the loader's path and for one case.

This is the profile behind targets 2 and 4 (issue 14): for each stage, the milliseconds a case
spends in it (exclusive of the stages it calls), for

- the loader's path, ``kgservice.bulk.reason_batch`` on batches of 200 JSON lines (what each of
  ``kgservice load``'s reasoning workers runs: read, SHACL, rules, OWL RL closure, N-Quads out);
- one case at a time, ``KnowledgeBase.answer_json`` (what target 2 times: the same, with the
  answer instead of the N-Quads).

Then, rule by rule, one case at a time, how often its query runs a case (a rule whose needs a
case's facts do not meet is not run: see :mod:`kgservice.core.caserules`), what one run costs
on a case (with ``RuleGraphs.run``'s own few microseconds) and on an empty case graph. On
an empty graph Oxigraph finds nothing, so that figure is what parsing and planning the query
costs, paid on every call (pyoxigraph 0.5 has no prepared queries).

The stages are timed by wrapping the functions named in the table in this process only (the
service is not changed); each wrapped call costs about a microsecond, included in the figures.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from functools import cached_property, wraps
from typing import Any

import pyoxigraph as ox
from common import table
from generator import CaseGenerator

from kgservice import bulk, reasoning
from kgservice.config import Settings
from kgservice.core import caserules, pathways, terms
from kgservice.core import kb as kbmodule
from kgservice.core.kb import KnowledgeBase

BATCH = 200

#: (module or class, attribute, the stage it is counted in), the innermost stages last
STAGES: list[tuple[Any, str, str]] = [
    (KnowledgeBase, "read_json", "read: JSON to the case's RDF"),
    (KnowledgeBase, "check_many", "SHACL: the contract's shapes"),
    (KnowledgeBase, "reasoner_input", "observations (days, relief %) computed"),
    (reasoning.Reasoner, "infer", "reasoning: the rest (strata, sorting facts by case)"),
    (reasoning.Reasoner, "_run_rules", "SPARQL rules: the rest (needs, provenance)"),
    (caserules.RuleGraphs, "add", "SPARQL rules: facts into the rule store"),
    (caserules.RuleGraphs, "add_ox", "SPARQL rules: facts into the rule store"),
    (caserules.RuleGraphs, "run", "SPARQL rules: Oxigraph queries, one per rule and case"),
    (caserules.RuleGraphs, "run_batched", "SPARQL rules: Oxigraph queries, one per rule for a batch"),
    (reasoning.CompiledClosures, "__init__", "OWL RL closure: compiled rules"),
    (reasoning.CompiledClosures, "extend", "OWL RL closure: compiled rules"),
    (reasoning, "derivations", "explanations: derivations"),
    (kbmodule.Reasoned, "quads", "out: inferred triples to Oxigraph terms"),
    (bulk, "in_graph", "out: N-Quads serialized"),
    (terms.GraphView, "of", "answer: the case's graph for its queries"),
    (pathways.AnswerBuilder, "answer", "answer: queries and JSON"),
]


class StageTimer:
    """Exclusive wall time per stage: a stage's clock stops while a stage it calls runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.rule_seconds: dict[str, float] = defaultdict(float)
        self.rule_runs: dict[str, int] = defaultdict(int)
        self._stack: list[list[Any]] = []  # [stage, started, time spent in inner stages]
        self._undo: list[Callable[[], None]] = []

    def wrap(self, fn: Callable[..., Any], stage: str, per_rule: bool = False) -> Callable[..., Any]:
        timer = self

        @wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            queried = per_rule and args[2].met_by(args[0].shape[args[3]], args[0].support)
            frame = [stage, time.perf_counter(), 0.0]
            timer._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                timer._stack.pop()
                spent = time.perf_counter() - frame[1]
                timer.seconds[stage] += spent - frame[2]
                if timer._stack:
                    timer._stack[-1][2] += spent
                if queried:  # RuleGraphs.run(self, rule, needs, iri) ran the rule's query
                    name = _rule_name(args[1])
                    timer.rule_seconds[name] += spent
                    timer.rule_runs[name] += 1
        return timed

    def __enter__(self) -> StageTimer:
        for owner, name, stage in STAGES:
            original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
            if isinstance(original, cached_property):
                replaced: Any = cached_property(self.wrap(original.func, stage))
                replaced.__set_name__(owner, name)
            elif isinstance(original, classmethod | staticmethod):
                replaced = type(original)(self.wrap(original.__func__, stage))
            else:
                replaced = self.wrap(original, stage, per_rule=(owner, name) == (caserules.RuleGraphs, "run"))
            setattr(owner, name, replaced)
            self._undo.append(lambda owner=owner, name=name, original=original: setattr(owner, name, original))
        return self

    def __exit__(self, *exc: object) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    def reset(self) -> None:
        self.seconds.clear()
        self.rule_seconds.clear()
        self.rule_runs.clear()


def _rule_name(rule: Any) -> str:
    return str(rule.term.iri).rsplit("#", 1)[-1]


def _stage_rows(timer: StageTimer, total_s: float, cases: int) -> list[list[Any]]:
    staged = sum(timer.seconds.values())
    rows = [[stage, 1000 * s / cases, f"{100 * s / total_s:.0f} %"]
            for stage, s in sorted(timer.seconds.items(), key=lambda item: -item[1])]
    rows.append(["the rest (the calls around the stages, the batch's loop)", 1000 * (total_s - staged) / cases,
                 f"{100 * (total_s - staged) / total_s:.0f} %"])
    rows.append(["whole (wall time; CPU time in brackets)", 1000 * total_s / cases, "100 %"])
    return rows


def _empty_graph_ms(kb: KnowledgeBase, repeat: int) -> dict[str, float]:
    """Each rule's query on the rule support and an empty case graph: parsing and planning."""
    store = kb.reasoner.rule_store
    graph, this = ox.BlankNode(), ox.NamedNode("https://w3id.org/esi-kg/case/default/breakdown-empty")
    out = {}
    for rule in kb.ontology.sparql_rules:
        start = time.perf_counter()
        for _ in range(repeat):
            list(terms.constructed(store.query(rule.query, default_graph=[caserules.RULE_SUPPORT_GRAPH, graph],
                                               named_graphs=[], substitutions={ox.Variable("this"): this})))
            # (RuleGraphs.run's own work around the query is left out here, not in the pipeline's figure)
        out[_rule_name(rule)] = 1000 * (time.perf_counter() - start) / repeat
    return out


def run(quick: bool) -> str:
    n_batch, n_single = (2_000, 300) if quick else (10_000, 1_000)
    kb = KnowledgeBase.from_settings(Settings())
    gen = CaseGenerator(kb.vocabulary["input"], seed=23)
    lines = [(i, json.dumps(case).encode()) for i, case in enumerate(gen.cases(n_batch + BATCH, prefix="prof"))]
    singles = list(gen.cases(n_single + 20, prefix="one"))
    bulk.reason_batch(lines[:BATCH], "default", kb)  # warm: caches, the rule store
    for case in singles[:20]:
        kb.answer_json(case)

    with StageTimer() as timer:
        cpu, wall = time.process_time(), time.perf_counter()
        for start in range(BATCH, len(lines), BATCH):
            bulk.reason_batch(lines[start:start + BATCH], "default", kb)
        batch_wall, batch_cpu = time.perf_counter() - wall, time.process_time() - cpu
        batch_rows = _stage_rows(timer, batch_wall, n_batch)
        timer.reset()
        cpu, wall = time.process_time(), time.perf_counter()
        for case in singles[20:]:
            kb.answer_json(case)
        single_wall, single_cpu = time.perf_counter() - wall, time.process_time() - cpu
        single_rows = _stage_rows(timer, single_wall, n_single)
        rule_ms = {rule: 1000 * s / timer.rule_runs[rule] for rule, s in timer.rule_seconds.items()}
        rule_runs = {rule: timer.rule_runs[rule] / n_single for rule in timer.rule_runs}
    batch_rows[-1][1] = f"{1000 * batch_wall / n_batch:.2f} ({1000 * batch_cpu / n_batch:.2f})"
    single_rows[-1][1] = f"{1000 * single_wall / n_single:.2f} ({1000 * single_cpu / n_single:.2f})"

    empty = _empty_graph_ms(kb, repeat=100 if quick else 400)
    batched = len(kb.reasoner._batched)
    rules_rows = [[rule, f"{rule_runs.get(rule, 0):.2f}", rule_ms.get(rule, float("nan")), empty[rule],
                   rule_runs.get(rule, 0) * rule_ms.get(rule, 0.0)]
                  for rule in empty]
    per_case = sum(row[4] for row in rules_rows)
    floor = sum(rule_runs.get(rule, 0) * empty[rule] for rule in empty)
    rules_rows.append(["all rules, a case", f"{sum(rule_runs.values()):.1f}", "", "", per_case])

    return (table(f"Where a case's time goes: the loader's path, {n_batch} cases in batches of {BATCH} "
                  "(one reasoning worker's work), ms a case", ["stage", "ms a case", "share"], batch_rows)
            + "\n\n" + table(f"Where a case's time goes: one case at a time (KnowledgeBase.answer_json), "
                             f"{n_single} cases, ms a case", ["stage", "ms a case", "share"], single_rows)
            + "\n\n" + table("The SPARQL rules' queries one case at a time: runs a case, ms a run on a case, "
                             "ms a run on an empty case graph (parse + plan), ms a case",
                             ["rule", "runs a case", "ms a run", "ms a run, empty graph", "ms a case"], rules_rows)
            + f"\n\nOne case at a time, the rules' queries cost {per_case:.2f} ms a case, of which {floor:.2f} ms "
              "(their cost on an empty case graph, run as often) is paid whatever the case holds. In a batch, "
              f"{batched} of the {len(empty)} rules are one query for the whole batch "
              "(kgservice/core/caserules.py, batched_rule); the others run per case there too.")
