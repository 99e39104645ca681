"""``kgservice impact``: a proposed ontology's effect on stored cases and on the regression cases.

The proposals are copies of the shipped ontology with one curator's edit, so that what must
change is known; and the shipped ontology itself against the store the 1.0 release wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from lifecycle_util import generated_cases, previous_release_store, store_under_1_0, stored_versions
from rdflib import Graph, Literal

from kgservice.config import Settings
from kgservice.core.ontology import ESI
from kgservice.curation.impact import impact, render
from kgservice.curation.regression import regression_cases, unmet
from kgservice.service import Service

SHIPPED = Settings().ontology_path


def with_threshold(source: Path, percent: int, out: Path) -> Path:
    """A copy of an ontology whose success threshold is ``percent``."""
    graph = Graph().parse(source, format="turtle")
    graph.set((ESI["success-relief-threshold"], ESI.parameterValue, Literal(percent)))
    graph.serialize(out, format="turtle")
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, make_case) -> Settings:
    """A store of 20 generated cases and one provisional responder (62.5 % relief on day 14),
    shared by the module's tests: an impact run only reads it (the first test checks that)."""
    cases = [*generated_cases(20), make_case(id="borderline", scores=[(0, 8), (14, 3)])]
    return store_under_1_0(tmp_path_factory.mktemp("impact") / "data", cases)


def by_case(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["case"]: c for c in report["stored"]["impacts"]}


def test_a_stricter_threshold_on_a_1_0_store(store: Settings, tmp_path: Path) -> None:
    before = stored_versions(store.data_dir / "sites" / "default")
    proposed = with_threshold(SHIPPED, 70, tmp_path / "strict.ttl")
    report = impact(store, proposed, workers=0, progress=None)
    found = report.as_json()

    assert found["terms"]["changed"] == ["success-relief-threshold"]
    assert found["stored"]["cases"] == 21
    borderline = by_case(found)["borderline"]
    assert borderline["before"]["category"] == "provisional-responder"
    assert borderline["after"]["category"] == "primary-non-responder"
    assert borderline["after"]["pathways"] == ["comprehensive-diagnostic-review", "advanced-physical-therapy"]
    diffs = {(d["kind"], d["code"]): d for d in borderline["differences"]}
    assert diffs[("category", None)]["rule"] == str(ESI["rule-primary-non-responder"])
    assert diffs[("pathway added", "advanced-physical-therapy")]["rule"] is not None
    assert set(borderline["kinds"]) == {"category", "pathway added"}

    counts = found["stored"]["counts"]
    assert sum(n for kind, n in counts.items() if kind != "unchanged") >= found["stored"]["changed"] >= 1
    assert counts.get("unchanged", 0) + found["stored"]["changed"] == 21
    assert found["stored"]["category_transitions"]["provisional-responder → primary-non-responder"] >= 1
    # nothing in the store changed: every case still at the version it was stored with
    assert stored_versions(store.data_dir / "sites" / "default") == before

    text, md = render(report, "text"), render(report, "md")
    assert "provisional-responder → primary-non-responder" in text
    assert "category: provisional-responder → primary-non-responder [rule-primary-non-responder]" in text
    assert "| kind of change | cases |" in md and "**borderline**" in md
    assert json.loads(render(report, "json"))["stored"]["cases"] == 21


def test_an_unchanged_copy_changes_nothing(store: Settings, tmp_path: Path) -> None:
    copy = tmp_path / "same.ttl"
    copy.write_bytes(SHIPPED.read_bytes())
    found = impact(store, copy, workers=0, progress=None).as_json()
    assert found["stored"]["counts"] == {"unchanged": 21} and found["stored"]["impacts"] == []
    assert found["terms"] == {"added": [], "removed": [], "changed": []}


def test_impact_reads_a_store_a_running_service_holds(store: Settings, tmp_path: Path) -> None:
    service = Service(store)
    try:
        service.site_store("default")  # the write lock is taken, as by `kgservice serve`
        proposed = with_threshold(SHIPPED, 70, tmp_path / "strict.ttl")
        found = impact(store, proposed, workers=1, progress=None).as_json()  # and a worker process
        assert "borderline" in by_case(found) and found["stored"]["cases"] == 21
        assert service.stored_answer("borderline", "default")["response"]["category"] == "provisional-responder"
    finally:
        service.close()


def test_the_regression_cases_are_found_and_pass_under_the_shipped_ontology(kb) -> None:
    cases = regression_cases()
    origins = {c.origin.split("/")[0] for c in cases}
    assert origins == {"vignettes", "rules"} and len(cases) >= 150
    answers = kb.process([c.case for c in cases])
    assert [(c.name, unmet(a.answer, c.expect)) for c, a in zip(cases, answers, strict=True)
            if unmet(a.answer, c.expect)] == []


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kgservice.cli", "impact", *args], capture_output=True,
                          text=True, timeout=300)


def test_the_curator_command_runs_the_regression_cases_against_any_file(tmp_path: Path) -> None:
    """`kgservice impact FILE --no-store`: exit 0 when every regression case gets its expected
    answer under FILE, 1 and the cases that miss it otherwise."""
    shipped = Settings().ontology_path
    same = run_cli(str(shipped), "--no-store", "--format", "json")
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["regression"]["failing"] == 0

    lax = with_threshold(shipped, 90, tmp_path / "lax.ttl")  # 83 % relief is no longer a response
    broken = run_cli(str(lax), "--no-store")
    assert broken.returncode == 1, broken.stderr
    assert "miss their expected answer" in broken.stdout
    assert "p03-responder (vignettes/p03-responder.json): category: expected responder" in broken.stdout

    missing = run_cli(str(tmp_path / "nothing.ttl"), "--no-store")
    assert missing.returncode == 2 and "cannot read ontology" in missing.stderr


def test_the_cli_shows_progress_and_every_format(store: Settings, tmp_path: Path) -> None:
    proposed = with_threshold(SHIPPED, 70, tmp_path / "strict.ttl")
    env_run = subprocess.run(
        [sys.executable, "-m", "kgservice.cli", "impact", str(proposed), "--data-dir", str(store.data_dir),
         "--format", "md", "--workers", "1"], capture_output=True, text=True, timeout=300,
        env=_env())
    assert env_run.returncode in (0, 1), env_run.stderr
    assert "compared" in env_run.stderr and "21/21" in env_run.stderr
    assert env_run.stdout.startswith("# Impact of ") and "**borderline**" in env_run.stdout


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("ESI_")}


def test_impact_of_the_shipped_ontology_on_the_store_of_the_1_0_release(tmp_path: Path) -> None:
    """The stored 1.0 answers against the running rules (1.1): the review's changes show."""
    settings = previous_release_store(tmp_path / "data")
    found = impact(settings, SHIPPED, sites=["default"], workers=0, progress=None).as_json()
    assert found["stored"]["cases"] == 151 and found["stored"]["changed"] >= 1
    assert all(c["before"]["category"] is not None for c in found["stored"]["impacts"])  # the 1.0 answers, read
    added = {d["code"] for c in found["stored"]["impacts"] for d in c["differences"] if d["kind"] == "pathway added"}
    assert "repeat-epidural-injection" in added  # rules 1.1: a repeat injection for secondary non-responders
    assert found["regression"]["failing"] == 0
