"""Batches give the same answers as single cases: the CLI array, bulk load and batch reasoning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kgservice.bulk import load
from kgservice.config import Settings

VIGNETTES = sorted((Path(__file__).parent / "data" / "vignettes").glob("*.json"))
CASES = [json.loads(p.read_text())["case"] for p in VIGNETTES]


def test_a_batch_answers_each_case_as_alone(kb: Any) -> None:
    alone = [kb.answer_json(case) for case in CASES]
    together = [r.answer for r in kb.reason([kb.read_json(case) for case in CASES])]
    assert together == alone


def test_a_batch_infers_for_each_case_what_it_infers_alone(kb: Any) -> None:
    """Generated cases (every category, the whole vocabulary): the inferred graph of each case
    reasoned in a batch of 150 is the one it gets reasoned alone."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from generator import CaseGenerator

    cases = [kb.read_json(c) for c in CaseGenerator(kb.vocabulary["input"], seed=9).cases(150, prefix="alone")]
    together = [r.inferred for r in kb.reason_valid(cases, answers=False)]
    alone = [kb.reason_valid([case], answers=False)[0].inferred for case in cases]
    assert together == alone


def test_the_benchmark_generator_covers_every_category_and_code(kb: Any) -> None:
    """bench/generator.py: seeded (the same cases twice), valid, and over 300 cases every response
    category occurs and every input code is used."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from generator import CaseGenerator

    vocabulary = kb.vocabulary["input"]
    cases = list(CaseGenerator(vocabulary, seed=4).cases(300, prefix="cover"))
    assert cases[:20] == list(CaseGenerator(vocabulary, seed=4).cases(20, prefix="cover"))
    reasoned = kb.reason([kb.read_json(c) for c in cases])  # raises on an invalid case
    categories = {r.answer["response"]["category"] for r in reasoned}
    assert categories == {entry["code"] for entry in kb.vocabulary["answer"]["response.category"]}

    def used(case: dict[str, Any], field: str) -> set[str]:
        parent, _, child = field.partition(".")
        value = case.get(parent)
        items = value if isinstance(value, list) else [value]
        if child:
            items = [item.get(child) for item in items if isinstance(item, dict)]
        return {v for v in items if isinstance(v, str)}

    for field, entries in vocabulary.items():
        seen = set().union(*(used(c, field) for c in cases))
        assert {e["code"] for e in entries} <= seen, field


def test_batch_validation_reports_each_case_its_own_violations(kb: Any, make_case: Any) -> None:
    good, bad = make_case(id="good"), make_case(id="bad", age=12)
    reports = kb.check_many([kb.read_json(good), kb.read_json(bad), kb.read_json(make_case(id="ok2"))])
    assert reports[0] == [] and reports[2] == []
    assert [v.path for v in reports[1]] == ["age"]


def test_cli_pathway_on_an_array_answers_in_order(tmp_path: Path) -> None:
    cases = [*CASES[:3], {"id": "broken"}, CASES[3]]
    file = tmp_path / "cases.json"
    file.write_text(json.dumps(cases))
    run = subprocess.run([sys.executable, "-m", "kgservice.cli", "pathway", str(file)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1  # one invalid case
    answers = json.loads(run.stdout)
    assert [a.get("case") for a in answers] == ["p01", "p02", "p03", None, "p04"]
    assert answers[3]["status"] == 422 and answers[3]["violations"]


@pytest.mark.parametrize("workers", [0, 1])
def test_bulk_load_stores_valid_cases_and_reports_the_rest(tmp_path: Path, workers: int) -> None:
    lines = [json.dumps(c) for c in CASES] + ['{"id": "bad one"}', "not json", json.dumps(CASES[0])]
    source = tmp_path / "cases.jsonl"
    source.write_text("\n".join(lines) + "\n")
    settings = Settings(data_dir=tmp_path / "data", auth_required=False)
    summary = load(settings, source, batch_size=4, workers=workers, progress=None)
    assert summary.loaded == len(CASES)
    assert summary.rejected == 3
    rejected = {r["index"]: r["problem"]["status"] for r in summary.rejections}
    assert rejected == {len(CASES): 422, len(CASES) + 1: 400, len(CASES) + 2: 409}
    # the data dir did not exist: the loader made it first, so that what the knowledge base derives
    # once per version was kept there for the workers (and the next load), not derived in each
    cache = settings.data_dir / "cache"
    assert len(list(cache.glob("rule-needs-*.json"))) == 1 and len(list(cache.glob("tbox-closure-*.nt"))) == 1

    from kgservice.api import create_app

    client = create_app(settings).test_client()
    assert client.get("/cases").get_json()["total"] == len(CASES)
    for case in CASES:
        stored = client.get(f"/cases/{case['id']}/pathway").get_json()
        fresh = client.post("/pathway", json=case).get_json()
        assert stored == fresh


def test_the_ontology_closure_is_cached_per_version_and_gives_the_same_answers(tmp_path: Path) -> None:
    from kgservice.core.kb import KnowledgeBase

    settings = Settings(data_dir=tmp_path)
    first = KnowledgeBase.from_settings(settings)
    cached = list((tmp_path / "cache").glob("tbox-closure-*.nt"))
    assert len(cached) == 1 and first.version.split("+")[1] in cached[0].name
    second = KnowledgeBase.from_settings(settings)  # reads the cache
    assert set(second.reasoner.tbox_closure) == set(first.reasoner.tbox_closure)
    assert [second.answer_json(c) for c in CASES] == [first.answer_json(c) for c in CASES]


def test_the_tbox_files_the_engines_read_are_kept_in_the_cache_not_left_in_the_temp_dir(
        tmp_path: Path, monkeypatch: Any) -> None:
    """A data dir's processes share one TBox file per ontology version in its cache; before, each
    process wrote its own to the temporary directory and a killed one left it there."""
    import tempfile

    from kgservice.core.kb import KnowledgeBase

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    (tmp_path / "data").mkdir()
    settings = Settings(data_dir=tmp_path / "data", engine="reasonable")
    kb = KnowledgeBase.from_settings(settings)
    answer = kb.answer_json(CASES[0])  # reasonable reads the case TBox file
    path = kb.reasoner.case_tbox_file
    assert path.parent == tmp_path / "data" / "cache" and path.exists() and kb.version.split("+")[1] in path.name
    assert list(temp.iterdir()) == []
    assert KnowledgeBase.from_settings(settings).reasoner.case_tbox_file == path  # the next process: the same file
    assert KnowledgeBase.from_settings(settings).answer_json(CASES[0]) == answer


def test_inputs_with_the_same_case_id_in_one_batch_each_get_their_own_answer(kb: Any, make_case: Any) -> None:
    """Two clients may send a case with the same id at once (the reasoning workers then batch
    them together): each input is validated and reasoned as if alone, never mixed with the other."""
    valid, invalid, other = make_case(id="same"), make_case(id="same", age=12), make_case(id="same", age=70)
    inputs = [valid, invalid, other, valid, invalid]
    alone = [kb.process([item])[0] for item in inputs]
    together = kb.process(inputs)
    assert [type(r).__name__ for r in together] == ["Outcome", "Problem", "Outcome", "Outcome", "Problem"]
    assert [r.answer if hasattr(r, "answer") else r.problem() for r in together] == [
        r.answer if hasattr(r, "answer") else r.problem() for r in alone]
