"""The public vignettes (tests/data/vignettes/*.json): each case with the answer it must get."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kgservice.core.kb import KnowledgeBase

VIGNETTES = sorted((Path(__file__).parent / "data" / "vignettes").glob("*.json"))


def load_vignette(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


by_name = pytest.mark.parametrize("path", VIGNETTES, ids=[load_vignette(p)["name"] for p in VIGNETTES])


def codes(items: list[dict[str, Any]]) -> list[str]:
    return [item["code"] for item in items]


def test_vignettes_are_found() -> None:
    assert len(VIGNETTES) >= 10


@by_name
def test_vignette(kb: KnowledgeBase, path: Path) -> None:
    vignette = load_vignette(path)
    expect = vignette["expect"]
    answer = kb.answer_json(vignette["case"])

    assert answer["case"] == vignette["case"]["id"]
    assert answer["response"]["category"] == expect["category"]
    assert codes(answer["pathways"]) == expect["pathways"]
    assert set(codes(answer["failure_causes"])) == set(expect["failure_causes"])
    assert set(codes(answer["pain_sources"])) == set(expect["pain_sources"])


@pytest.fixture(scope="module")
def owlrl_answers(kb_owlrl: KnowledgeBase) -> dict[str, dict[str, Any]]:
    """The reference engine's answer to each vignette, reasoned as one batch: owlrl takes seconds
    a call whatever its size, and a batch answers each case as alone (tests/test_batch.py)."""
    cases = [load_vignette(path)["case"] for path in VIGNETTES]
    return {path.name: r.answer for path, r in zip(VIGNETTES, kb_owlrl.process(cases), strict=True)}


@by_name
def test_engines_agree(kb: KnowledgeBase, owlrl_answers: dict[str, dict[str, Any]], path: Path) -> None:
    """The reference engine (owlrl) and the fast one give identical answers, reasons included."""
    case = load_vignette(path)["case"]
    assert owlrl_answers[path.name] == kb.answer_json(case)


def test_declarations_do_not_change_inferences(kb: KnowledgeBase, kb_reasonable: KnowledgeBase,
                                              kb_owlrl: KnowledgeBase) -> None:
    """Cases are reasoned without the ontology's declarations (faster), or by the rules compiled
    from its closure; their inferred graphs are those of the whole ontology, with every engine."""
    from kgservice.core.terms import triple_to_ox
    from kgservice.reasoning import Reasoner

    for base in (kb, kb_reasonable, kb_owlrl):
        whole = Reasoner(base.ontology, base.reasoner.engine, reference=True)
        assert len(base.ontology.case_tbox) < len(base.ontology.tbox)
        # one batch per engine (owlrl closes the ontology once for all; a batch infers for each
        # case what it infers alone: tests/test_batch.py)
        graphs = {path.name: base.read_json(load_vignette(path)["case"]) for path in VIGNETTES}
        batch = [base.reasoner_input(graph) for graph in graphs.values()]
        fast, reference = base.reasoner.infer(batch), whole.infer(batch)
        for name, graph in graphs.items():
            # as RDF terms: reasonable writes a plain literal as an xsd:string one, the same term
            assert ({triple_to_ox(t) for t in fast[graph.iri]}
                    == {triple_to_ox(t) for t in reference[graph.iri]}), name


def test_answers_are_the_same_from_many_threads_at_once(kb: KnowledgeBase) -> None:
    """One knowledge base serves every request thread; no case sees another's facts."""
    from concurrent.futures import ThreadPoolExecutor

    cases = [load_vignette(path)["case"] for path in VIGNETTES] * 4
    alone = [kb.answer_json(case) for case in cases]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(kb.answer_json, cases))
    assert together == alone
    from kgservice.reasoning import RULE_SUPPORT_GRAPH

    store = kb.reasoner.rule_store
    assert list(store.named_graphs()) == [RULE_SUPPORT_GRAPH], "each run's facts are removed after it"


def test_the_rule_store_is_replaced_and_answers_do_not_change(kb: KnowledgeBase, monkeypatch) -> None:
    """pyoxigraph's in-memory store keeps the space of removed quads, so the reasoner replaces
    its rule store after RULE_STORE_RUNS cases; a case reasoned on a new store gets the same answer."""
    import kgservice.reasoning as reasoning

    cases = [load_vignette(path)["case"] for path in VIGNETTES]
    before = [kb.answer_json(case) for case in cases]
    monkeypatch.setattr(reasoning, "RULE_STORE_RUNS", 1)
    first = kb.reasoner.rule_store
    assert [kb.answer_json(case) for case in cases] == before
    assert kb.reasoner.rule_store is not first
    # A batch counts each of its cases: one batch larger than the limit gets a new store too.
    monkeypatch.setattr(reasoning, "RULE_STORE_RUNS", len(cases) + 1)
    kb.reason([kb.read_json(case) for case in cases])
    second = kb.reasoner.rule_store
    assert [r.answer for r in kb.reason([kb.read_json(case) for case in cases])] == before
    assert kb.reasoner.rule_store is not second


ANSWER_ALL = """
import json, sys
from kgservice.config import Settings
from kgservice.core.kb import KnowledgeBase
kb = KnowledgeBase.from_settings(Settings())
print(json.dumps([kb.answer_json(case) for case in json.load(sys.stdin)]))
"""


def test_answers_do_not_depend_on_the_process() -> None:
    """Every worker process gives the same answer, reasons and their order included.

    Python salts string hashes per process, so anything read back from a set or a dict
    keyed by RDF terms without sorting shows up as a difference here.
    """
    cases = json.dumps([load_vignette(p)["case"] for p in VIGNETTES])
    runs = [
        subprocess.Popen([sys.executable, "-c", ANSWER_ALL], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONHASHSEED": str(seed)})
        for seed in range(4)
    ]
    outputs = []
    for run in runs:
        out, err = run.communicate(cases, timeout=120)
        assert run.returncode == 0, err
        outputs.append(json.loads(out))
    for seed, answers in enumerate(outputs[1:], start=1):
        for expected, answer in zip(outputs[0], answers, strict=True):
            assert answer == expected, f"PYTHONHASHSEED={seed} answers {answer['case']} differently from seed 0"
