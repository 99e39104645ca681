"""``kgservice check``: the shipped ontology passes; each kind of broken copy fails with a line naming the problem."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kgservice.cli import main
from kgservice.config import Settings

SHIPPED = Settings().ontology_path
ESI = "https://w3id.org/esi-kg/ontology#"
SUMMARY = re.compile(r"^ontology \S+: 0 errors$")


@pytest.fixture(autouse=True)
def _shipped_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check the files in this tree, whatever the caller's ESI_* environment says."""
    monkeypatch.delenv("ESI_ONTOLOGY_PATH", raising=False)
    monkeypatch.delenv("ESI_SHAPES_DIR", raising=False)


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(["check", *args])
    captured = capsys.readouterr()
    assert captured.err == ""
    return code, captured.out.splitlines()


def edited(text: str, subject: str, pattern: str, replacement: str) -> str:
    """The Turtle with one edit inside the block (up to the next blank line) that describes ``subject``."""
    start = text.index(f"\n{subject} ")
    end = text.index("\n\n", start)
    block, n = re.subn(pattern, replacement, text[start:end], count=1)
    assert n == 1, f"{pattern!r} not found in the description of {subject}: update this test"
    return text[:start] + block + text[end:]


def test_shipped_ontology_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = check(capsys)
    assert code == 0, "\n".join(lines)
    assert SUMMARY.match(lines[-1]), lines
    assert len(lines) == 1, lines


def test_check_runs_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "kgservice.cli", "check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert SUMMARY.match(done.stdout.splitlines()[-1]), done.stdout
    assert done.stderr == ""


BROKEN = [
    pytest.param("esi:MotorWeakness", r'skos:definition "[^"]*"@en ;', "",
                 [f"<{ESI}MotorWeakness>", "skos:definition"], id="class-without-definition"),
    pytest.param("esi:advanced-physical-therapy", r"esi:careOrder \d+ ; ", "",
                 [f"<{ESI}advanced-physical-therapy>", "esi:careOrder"], id="pathway-without-care-order"),
    pytest.param("esi:advanced-physical-therapy", r"esi:careOrder \d+ ;", "esi:careOrder 20 ;",
                 [f"<{ESI}advanced-physical-therapy>", "esi:careOrder 20", f"{ESI}comprehensive-diagnostic-review"],
                 id="pathways-sharing-a-care-order"),
    pytest.param("esi:DiscectomyRule", r"owl:hasValue esi:discectomy", "owl:someValuesFrom esi:SurgicalProcedure",
                 [f"<{ESI}DiscectomyRule>", "OWL 2 RL", "owl:someValuesFrom cannot be a superclass"],
                 id="superclass-some-values-from"),
    pytest.param("esi:rule-no-red-flag", r"WHERE \{", "WHERE",
                 [f"<{ESI}rule-no-red-flag>", "SPARQL rule", "does not parse"], id="sparql-rule-syntax-error"),
    pytest.param("esi:lumbar-spinal-stenosis", r'skos:notation "lumbar-spinal-stenosis"', 'skos:notation "lss"',
                 [f"<{ESI}lumbar-spinal-stenosis>", '"lss"', "local name"], id="notation-not-the-local-name"),
]


@pytest.mark.parametrize(("subject", "pattern", "replacement", "expected"), BROKEN)
def test_broken_copy_fails_naming_the_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, subject: str, pattern: str, replacement: str,
    expected: list[str],
) -> None:
    broken = tmp_path / "esi.ttl"
    broken.write_text(edited(SHIPPED.read_text(encoding="utf-8"), subject, pattern, replacement), encoding="utf-8")
    code, lines = check(capsys, "--ontology", str(broken))
    assert code == 1
    assert any(all(part in line for part in expected) for line in lines), "\n".join(lines)
    assert not SUMMARY.match(lines[-1])


@pytest.mark.parametrize(("content", "expected"), [
    pytest.param("This is a README, not an ontology {{{\n", "is not valid Turtle", id="not-turtle"),
    pytest.param(None, "cannot read ontology", id="missing-file"),
])
def test_unreadable_file_fails_with_a_readable_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "esi.ttl"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    code, lines = check(capsys, "--ontology", str(path))
    assert code == 1
    assert any(str(path) in line and expected in line for line in lines), lines
    assert not any("Traceback" in line for line in lines)
