"""``kgservice impact PROPOSED.ttl``: what a proposed ontology would change, before anything changes.

Every stored case (read from a read-only snapshot of the store, so a running service is not
disturbed) and every clinical regression case is answered again under the proposed ontology
and compared with its answer now: the stored answer for a stored case, the running
ontology's answer for a regression case. Per case the report gives the category, failure
causes, pain sources and pathways before and after, each difference with the rule behind it
(the rule that now concludes it, or the one that no longer does), and whether the curator's
edit touched that rule. Regression cases are also checked against what they expect.
Stored cases are compared in batches, one process per core (:mod:`kgservice.batches`).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pyoxigraph as ox
from rdflib import BNode, Graph, URIRef

from ..batches import Progress, chunked, map_batches
from ..config import Settings
from ..core.cases import case_iri
from ..core.kb import KnowledgeBase
from ..core.ontology import Ontology, local_name
from ..core.pathways import AnswerBuilder
from ..core.terms import GraphView
from ..errors import InvalidCase, Problem
from ..stores.base import CaseGraphs, open_stores
from ..stores.oxigraph import Stores
from .regression import RegressionCase, regression_cases, unmet
from .upgrade import cases_from_nquads

#: The contract's lists of conclusions, with the word for one of their items.
FACETS = {"failure_causes": "failure cause", "pain_sources": "pain source", "pathways": "pathway"}


@dataclass
class CaseImpact:
    """What the proposed ontology changes for one case (``kinds`` empty: nothing)."""

    case: str
    origin: str  # "site <name>" or the regression file
    kinds: list[str]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    differences: list[dict[str, Any]] = field(default_factory=list)
    unmet: list[str] = field(default_factory=list)  # regression cases: expectations the proposed answer misses

    def as_json(self) -> dict[str, Any]:
        return {"case": self.case, "origin": self.origin, "kinds": self.kinds, "before": self.before,
                "after": self.after, "differences": self.differences, **({"unmet": self.unmet} if self.unmet else {})}


def summary_of(answer: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of an answer the report compares: codes, urgencies and the rules behind them."""
    if answer is None:
        return None
    out: dict[str, Any] = {"category": answer["response"]["category"]}
    for facet in FACETS:
        out[facet] = [item["code"] for item in answer[facet]]
    out["urgency"] = {p["code"]: p["urgency"] for p in answer["pathways"]}
    return out


def differences(before: dict[str, Any], after: dict[str, Any], changed_terms: set[str]) -> list[dict[str, Any]]:
    """Each difference between two answers, with the rule that made it (and whether it was edited)."""
    found: list[dict[str, Any]] = []

    def note(kind: str, code: str | None, old: Any, new: Any, rule: dict[str, Any] | None) -> None:
        name = local_name(rule["iri"]) if rule else None
        found.append({"kind": kind, "code": code, "before": old, "after": new, "rule": rule["iri"] if rule else None,
                      "rule_edited": name in changed_terms if name else False})

    old_r, new_r = before["response"], after["response"]
    if old_r["category"] != new_r["category"]:
        note("category", None, old_r["category"], new_r["category"], new_r.get("rule") or old_r.get("rule"))
    elif (old_r.get("because"), old_r.get("rule")) != (new_r.get("because"), new_r.get("rule")):
        note("explanation", old_r["category"], old_r.get("because"), new_r.get("because"), new_r.get("rule"))
    for facet, word in FACETS.items():
        old_items = {i["code"]: i for i in before[facet]}
        new_items = {i["code"]: i for i in after[facet]}
        for code in new_items.keys() - old_items.keys():
            note(f"{word} added", code, None, code, new_items[code].get("rule"))
        for code in old_items.keys() - new_items.keys():
            note(f"{word} removed", code, code, None, old_items[code].get("rule"))
        for code in old_items.keys() & new_items.keys():
            old_i, new_i = old_items[code], new_items[code]
            if old_i.get("urgency") != new_i.get("urgency"):
                note("urgency", code, old_i.get("urgency"), new_i.get("urgency"), new_i.get("rule"))
            elif (old_i["because"], old_i.get("rule")) != (new_i["because"], new_i.get("rule")):
                note("explanation", code, old_i["because"], new_i["because"], new_i.get("rule"))
        if facet == "pathways":
            kept_old = [c for c in old_items if c in new_items]
            kept_new = [c for c in new_items if c in old_items]
            if kept_old != kept_new:
                note("order of care", None, kept_old, kept_new, None)
    return sorted(found, key=lambda d: (d["kind"], d["code"] or ""))


def changed_terms(old: Ontology, new: Ontology) -> dict[str, list[str]]:
    """Terms (local names) the proposed ontology adds, removes or describes differently."""
    before, after = _descriptions(old.graph), _descriptions(new.graph)
    return {"added": sorted(local_name(t) for t in after.keys() - before.keys()),
            "removed": sorted(local_name(t) for t in before.keys() - after.keys()),
            "changed": sorted(local_name(t) for t in before.keys() & after.keys() if before[t] != after[t])}


def _descriptions(graph: Graph) -> dict[URIRef, frozenset[str]]:
    """Each named subject's statements, blank nodes written out as what they contain."""
    def text(node: Any, seen: frozenset[Any]) -> str:
        if isinstance(node, BNode) and node not in seen:
            inner = sorted(f"{p.n3()} {text(o, seen | {node})}" for p, o in graph.predicate_objects(node))
            return "[" + "; ".join(inner) + "]"
        return str(node.n3())

    return {s: frozenset(f"{p.n3()} {text(o, frozenset())}" for p, o in graph.predicate_objects(s))
            for s in set(graph.subjects()) if isinstance(s, URIRef)}


# -- comparing -------------------------------------------------------------------------------------


class Comparer:
    """The running ontology's answers against the proposed one's (built once per process)."""

    def __init__(self, current: Settings, proposed: Settings) -> None:
        self.current_ontology = Ontology.load(current.ontology_path)
        self.before_answers = AnswerBuilder(self.current_ontology)
        self.proposed = KnowledgeBase.from_settings(proposed)
        self.current_settings = current
        self.terms = changed_terms(self.current_ontology, self.proposed.ontology)
        self.edited = {*self.terms["changed"], *self.terms["added"]}

    def impact(self, case: str, origin: str, before: dict[str, Any], after: dict[str, Any] | None,
               problem: dict[str, Any] | None = None) -> CaseImpact:
        if after is None:
            return CaseImpact(case, origin, ["rejected"], summary_of(before), None,
                              [{"kind": "rejected", "code": None, "before": None, "after": problem, "rule": None,
                                "rule_edited": False}])
        found = differences(before, after, self.edited)
        kinds = sorted({d["kind"] for d in found})
        return CaseImpact(case, origin, kinds, summary_of(before), summary_of(after), found)

    def stored(self, site: str, data: bytes) -> list[CaseImpact]:
        """The impact on stored cases, given their asserted and inferred graphs as N-Quads."""
        store = ox.Store()
        store.load(data, format=ox.RdfFormat.N_QUADS)
        read = list(cases_from_nquads(data, self.proposed.contract))
        befores = {}
        for case in read:
            graphs = CaseGraphs.of(site, case.id)
            befores[case.id] = self.before_answers.answer(GraphView(store, [graphs.asserted, graphs.inferred]),
                                                          case_iri(case.id, site), case.id)
        return self._against(read, befores, f"site {site}")

    def _against(self, read: list[Any], befores: dict[str, dict[str, Any]], origin: str) -> list[CaseImpact]:
        kb = self.proposed
        out, valid = [], []
        for case, problems in zip(read, kb.check_many(read), strict=True):
            if problems:
                out.append(self.impact(case.id, origin, befores[case.id], None, InvalidCase(problems).problem()))
            else:
                valid.append(case)
        for reasoned in kb.reason_valid(valid):
            out.append(self.impact(reasoned.case.id, origin, befores[reasoned.case.id], reasoned.answer))
        return out

    def regression(self, cases: Sequence[RegressionCase]) -> list[CaseImpact]:
        """Each regression case under both ontologies, and what the proposed answer misses."""
        current = KnowledgeBase.from_settings(self.current_settings)
        befores = current.process([reg.case for reg in cases])
        afters = self.proposed.process([reg.case for reg in cases])
        out = []
        for reg, before, after in zip(cases, befores, afters, strict=True):
            if isinstance(before, Problem):  # not valid under the running ontology either
                found = CaseImpact(reg.name, reg.origin, ["rejected now"], None, None)
            elif isinstance(after, Problem):
                found = self.impact(reg.name, reg.origin, before.answer, None, after.problem())
            else:
                found = self.impact(reg.name, reg.origin, before.answer, after.answer)
            found.unmet = unmet(after.answer, reg.expect) if not isinstance(after, Problem) else [
                f"the case is rejected: {after.problem().get('detail') or after.problem().get('title')}"]
            out.append(found)
        return out


_comparer: Comparer | None = None


def _init_worker(current: Settings, proposed: Settings) -> None:
    global _comparer
    _comparer = Comparer(current, proposed)


def _compare_batch(batch: tuple[str, bytes]) -> list[CaseImpact]:
    assert _comparer is not None, "the worker was not initialised"
    return _comparer.stored(*batch)


# -- the report ----------------------------------------------------------------------------------------


@dataclass
class Report:
    current_version: str
    proposed_version: str
    terms: dict[str, list[str]]
    stored: int = 0
    cases: list[CaseImpact] = field(default_factory=list)  # the changed ones, and every regression case
    counts: Counter[str] = field(default_factory=Counter)
    regression: list[CaseImpact] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, impacts: Iterable[CaseImpact]) -> None:
        for impact in impacts:
            self.stored += 1
            self.counts.update(impact.kinds or ["unchanged"])
            if impact.kinds:
                self.cases.append(impact)

    @property
    def failing(self) -> list[CaseImpact]:
        return [r for r in self.regression if r.unmet]

    def transitions(self) -> dict[str, int]:
        moves = Counter(f"{d['before']} → {d['after']}" for c in self.cases for d in c.differences
                        if d["kind"] == "category")
        return dict(moves.most_common())

    def as_json(self) -> dict[str, Any]:
        return {"current_version": self.current_version, "proposed_version": self.proposed_version,
                "terms": self.terms, "seconds": round(self.seconds, 2),
                "stored": {"cases": self.stored, "changed": len(self.cases),
                           "counts": dict(sorted(self.counts.items())),
                           "category_transitions": self.transitions(),
                           "impacts": [c.as_json() for c in self.cases]},
                "regression": {"cases": len(self.regression), "failing": len(self.failing),
                               "counts": dict(sorted(Counter(k for r in self.regression for k in r.kinds or
                                                             ["unchanged"]).items())),
                               "impacts": [r.as_json() for r in self.regression]}}


def impact(current: Settings, proposed_path: Path, sites: Sequence[str] | None = None, stored: bool = True,
           batch_size: int = 200, workers: int | None = None, regression_root: Path | None = None,
           scheduler: str | None = None,
           progress: TextIO | None = sys.stderr) -> Report:
    """Answer every stored and regression case under ``proposed_path`` and compare. Reads only."""
    proposed = current.with_(ontology_path=proposed_path)
    comparer = Comparer(current, proposed)
    bar = Progress(0, "compared", progress)
    report = Report(comparer.current_ontology.version, comparer.proposed.version, comparer.terms)
    report.regression = comparer.regression(regression_cases(regression_root))
    remote = current.store == "sparql"
    if stored and (remote or (current.data_dir / "sites").is_dir()):
        stores = open_stores(current) if remote else Stores(current.data_dir, read_only=True)
        todo = [(site, case_id) for site in (sites if sites is not None else stores.names())
                for case_id, _ in stores.site(site).case_versions()]
        bar.total = len(todo)
        n_workers = workers if workers is not None else (current.reasoning_workers or 2)

        def batches() -> Iterator[tuple[str, bytes]]:
            for chunk in chunked(todo, max(1, batch_size)):
                for site in dict.fromkeys(s for s, _ in chunk):
                    yield site, stores.site(site).export([c for s, c in chunk if s == site])

        try:
            for impacts in map_batches(_compare_batch, batches(), n_workers, _init_worker, (current, proposed),
                                       scheduler=scheduler):
                report.add(impacts)
                bar.advance(len(impacts))
        finally:
            stores.close()
        bar.finish()
    report.seconds = bar.seconds
    return report



# -- rendering -----------------------------------------------------------------------------------------


def render(report: Report, fmt: str = "text") -> str:
    """The report as ``text``, ``md`` (Markdown) or ``json``."""
    if fmt == "json":
        return json.dumps(report.as_json(), indent=2, ensure_ascii=False)
    md = fmt == "md"
    out: list[str] = []

    def heading(text: str) -> None:
        out.extend([f"## {text}" if md else text, ""] if md else [text, "-" * len(text)])

    def table(head: tuple[str, str], rows: Iterable[tuple[str, Any]]) -> None:
        rows = list(rows)
        if md:
            out.extend([f"| {head[0]} | {head[1]} |", "|---|---:|", *(f"| {a} | {b} |" for a, b in rows)])
        else:
            width = max([len(head[0]), *(len(str(a)) for a, _ in rows)])
            out.extend(f"  {str(a):<{width}}  {b:>7}" for a, b in [head, *rows])
        out.append("")

    title = f"Impact of {report.proposed_version} (proposed) against {report.current_version} (running)"
    out.extend([f"# {title}" if md else title, ""])
    terms = report.terms
    out.extend([f"Ontology terms added: {', '.join(terms['added']) or 'none'}",
                f"Ontology terms removed: {', '.join(terms['removed']) or 'none'}",
                f"Ontology terms changed: {', '.join(terms['changed']) or 'none'}", ""])
    heading(f"Stored cases: {report.stored} compared in {report.seconds:.1f} s, {len(report.cases)} changed")
    table(("kind of change", "cases"), sorted(report.counts.items()))
    if report.transitions():
        table(("category before → after", "cases"), report.transitions().items())
    failing = report.failing
    heading(f"Regression cases: {len(report.regression)}, {len(failing)} miss their expected answer")
    for case in failing:
        out.append(f"- {case.case} ({case.origin}): " + "; ".join(case.unmet))
    out.append("")
    for name, cases in (("Changed stored cases", report.cases),
                        ("Changed regression cases", [r for r in report.regression if r.kinds])):
        heading(f"{name}: {len(cases)}")
        for case in cases:
            name_shown = f"**{case.case}**" if md else case.case
            out.append(f"- {name_shown} ({case.origin}): {', '.join(case.kinds)}")
            for d in case.differences:
                rule = f" [{local_name(d['rule'])}{', edited' if d['rule_edited'] else ''}]" if d["rule"] else ""
                out.append(f"    {_difference(d)}{rule}")
            for label, side in (("before", case.before), ("after", case.after)):
                out.append(f"    {label}: {_brief(side)}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _difference(d: dict[str, Any]) -> str:
    kind, code = d["kind"], d["code"]
    if kind.endswith(("added", "removed")):
        return f"{kind}: {code}"
    if kind == "rejected":
        return f"rejected: {d['after'].get('detail') or d['after'].get('title')}"
    if kind == "explanation":
        return f"explanation of {code}: {d['before']} → {d['after']}"
    return f"{kind}{' of ' + code if code else ''}: {d['before']} → {d['after']}"


def _brief(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "rejected"
    pathways = ", ".join(f"{c} ({summary['urgency'].get(c) or '-'})" for c in summary["pathways"]) or "none"
    return (f"category {summary['category']}; causes {', '.join(summary['failure_causes']) or 'none'}; "
            f"sources {', '.join(summary['pain_sources']) or 'none'}; pathways {pathways}")
