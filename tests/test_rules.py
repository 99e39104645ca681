"""The rules of esi-rules.md at their boundaries: case files with their expected answers.

Every ``tests/data/rules/*.json`` file holds cases written as overlays on the base case of
``conftest.py`` (injection on 2026-06-10, baseline 8 on that day, still 8 on day 14,
radiculopathy), each with what the answer must show. ``tests/data/rules/README.md`` says
how to write one. A curator runs them against the ontology being edited with
``ESI_ONTOLOGY_PATH=copy.ttl pytest tests/test_rules.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kgservice.core.kb import KnowledgeBase
from kgservice.curation.regression import EXPECT_KEYS, build_case, unmet

RULE_FILES = sorted((Path(__file__).parent / "data" / "rules").glob("*.json"))
def load_cases() -> list[Any]:
    params = []
    for path in RULE_FILES:
        for entry in json.loads(path.read_text(encoding="utf-8"))["cases"]:
            params.append(pytest.param(entry, id=f"{path.stem}/{entry['name']}"))
    return params


CASES = load_cases()


def build(make_case: Any, overlay: dict[str, Any]) -> dict[str, Any]:
    """The contract case of an overlay: ``scores`` as ``[day, score]``, block dates as ``day``."""
    return build_case(overlay, make_case())


def check_answer(answer: dict[str, Any], expect: dict[str, Any]) -> None:
    """Every statement of ``expect`` holds for ``answer`` (judged as ``kgservice impact`` judges it)."""
    problems = unmet(answer, expect)
    assert not problems, problems


def check_explained(kb: KnowledgeBase, answer: dict[str, Any]) -> None:
    """Category, causes and pathways carry reasons and their rule; pain sources carry reasons."""
    ruled = [answer["response"], *answer["failure_causes"], *answer["pathways"]]
    terms = {str(iri) for iri in kb.ontology.terms}
    for item in [*ruled, *answer["pain_sources"]]:
        what = item.get("code", item.get("category"))
        assert item["because"] and all(isinstance(r, str) and r.strip() for r in item["because"]), what
    for item in ruled:
        rule = item["rule"]
        assert set(rule) >= {"iri", "label", "source"} and rule["label"] and rule["source"], item
        assert rule["iri"] in terms, f"rule {rule['iri']} is not a term of the ontology"
    for item in [*answer["failure_causes"], *answer["pathways"], *answer["pain_sources"], *answer["red_flags"]]:
        assert item["label"], item["code"]


def test_case_files_are_found_and_well_formed() -> None:
    assert len(RULE_FILES) >= 8 and len(CASES) >= 150
    names = [param.id for param in CASES]
    assert len(names) == len(set(names)), "case names repeat within a file"
    for param in CASES:
        entry = param.values[0]
        assert set(entry) <= {"name", "note", "case", "expect"} and entry["note"], param.id
        unknown = set(entry["expect"]) - EXPECT_KEYS
        assert entry["expect"] and not unknown, f"{param.id}: unknown expectations {unknown}"


@pytest.mark.parametrize("entry", CASES)
def test_rule_case(kb: KnowledgeBase, make_case: Any, entry: dict[str, Any]) -> None:
    case = build(make_case, entry["case"])
    answer = kb.answer_json(case)
    check_answer(answer, entry["expect"])
    check_explained(kb, answer)
    assert answer["case"] == case["id"] and answer["ontology_version"] == kb.version


def test_engines_agree_on_every_rule_case(kb: KnowledgeBase, kb_owlrl: KnowledgeBase, make_case: Any) -> None:
    """The reference engine (owlrl) gives the same answers, reasons included, on every case file
    (as one batch: owlrl closes the ontology once for all of them)."""
    cases = [build(make_case, {**param.values[0]["case"], "id": f"c{i}"}) for i, param in enumerate(CASES)]
    fast = [r.answer for r in kb.reason([kb.read_json(case) for case in cases])]
    reference = [r.answer for r in kb_owlrl.reason([kb_owlrl.read_json(case) for case in cases])]
    for param, a, b in zip(CASES, fast, reference, strict=True):
        assert a == b, param.id


def test_a_wrong_expectation_fails(kb: KnowledgeBase, make_case: Any) -> None:
    """The checker itself bites: a case file that expects the wrong answer is caught."""
    answer = kb.answer_json(make_case())
    for wrong in ({"category": "responder"}, {"pathways": []}, {"pathways_include": ["discectomy"]},
                  {"pain_sources": ["muscle"]}, {"urgency": {"advanced-physical-therapy": "urgent"}},
                  {"response": {"baseline_score": 7}}, {"because": {"response": ["no such words"]}},
                  {"reasons": {"advanced-physical-therapy": []}}):
        with pytest.raises(AssertionError):
            check_answer(answer, wrong)


def test_rule_cases_follow_ESI_ONTOLOGY_PATH(tmp_path: Path) -> None:
    """A curator runs the cases against the copy being edited with one command (the bug: pytest
    ignored ESI_ONTOLOGY_PATH, so the cases passed against a broken copy)."""
    import os
    import re
    import subprocess
    import sys

    from kgservice.config import Settings

    text = Settings().ontology_path.read_text(encoding="utf-8")
    strict, n = re.subn(r"(esi:positive-block-threshold a [^.]*?esi:parameterValue )50", r"\g<1>80", text, flags=re.S)
    assert n == 1
    copy = tmp_path / "esi.ttl"
    copy.write_text(strict, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(Path(__file__)), "-k",
         "positive-facet-block-50 and test_rule_case"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent,
        env={**os.environ, "ESI_ONTOLOGY_PATH": str(copy)})
    assert done.returncode == 1, done.stdout
    assert f"ontology: {copy}" in done.stdout
    assert "positive-facet-block-50]" in done.stdout and "2 failed" in done.stdout, done.stdout
