"""``kgservice check``: the shipped ontology passes; each typical curator mistake, made on a copy,
fails with a row naming the term (as ROBOT's ``report`` does: severity, rule, subject, message)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kgservice.cli import main
from kgservice.config import Settings

SHIPPED = Settings().ontology_path
SUMMARY = re.compile(r"^ontology \S+: 0 errors, 0 warnings$")

NEW_PATHWAY = """
esi:acupuncture a esi:CarePathway , owl:NamedIndividual ;
    skos:notation "acupuncture" ; esi:careOrder 125 ; esi:hasUrgency esi:routine ;
    rdfs:label "acupuncture"@en ;
    skos:definition "Needling of points of the body, for pain."@en ;
    dcterms:source "Non-Surgical Treatment Pathways" .
"""


@pytest.fixture(autouse=True)
def _shipped_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check the files in this tree, whatever the caller's ESI_* environment says."""
    monkeypatch.delenv("ESI_ONTOLOGY_PATH", raising=False)
    monkeypatch.delenv("ESI_SHAPES_DIR", raising=False)


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["check", *args])
    captured = capsys.readouterr()
    assert captured.err == ""
    return code, captured.out


def edited(text: str, subject: str, pattern: str, replacement: str) -> str:
    """The Turtle with one edit inside the block (up to the next blank line) that describes ``subject``."""
    start = text.index(f"\n{subject} ")
    end = text.index("\n\n", start)
    block, n = re.subn(pattern, replacement, text[start:end], count=1)
    assert n == 1, f"{pattern!r} not found in the description of {subject}: update this test"
    return text[:start] + block + text[end:]


def test_shipped_ontology_passes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys)
    lines = out.splitlines()
    assert code == 0, out
    assert len(lines) == 1 and SUMMARY.match(lines[0]), out
    code, _ = check(capsys, "--fail-on", "warn")
    assert code == 0


def test_check_runs_as_a_module() -> None:
    done = subprocess.run([sys.executable, "-m", "kgservice.cli", "check"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert SUMMARY.match(done.stdout.splitlines()[-1]), done.stdout
    assert done.stderr == ""


def edit(subject: str, pattern: str, replacement: str):  # type: ignore[no-untyped-def]
    return lambda text: edited(text, subject, pattern, replacement)


def append(extra: str):  # type: ignore[no-untyped-def]
    return lambda text: text + "\n" + extra


#: (mistake, edit, rule, words that one row must contain: the term to edit first)
MISTAKES = [
    pytest.param(edit("esi:MotorWeakness", r'skos:definition "[^"]*"@en ;', ""),
                 "TermDefinitionShape", ["esi:MotorWeakness", "skos:definition"], id="class-without-definition"),
    pytest.param(edit("esi:advanced-physical-therapy", r"esi:careOrder \d+ ; ", ""),
                 "CarePathwayOrderShape", ["esi:advanced-physical-therapy", "esi:careOrder"],
                 id="pathway-without-care-order"),
    pytest.param(edit("esi:advanced-physical-therapy", r"esi:careOrder \d+ ;", "esi:careOrder 20 ;"),
                 "CarePathwayOrderShape", ["esi:advanced-physical-therapy", "esi:comprehensive-diagnostic-review"],
                 id="pathways-sharing-a-care-order"),
    pytest.param(edit("esi:DiscectomyRule", r"owl:hasValue esi:discectomy", "owl:someValuesFrom esi:SurgicalProcedure"),
                 "owl2-rl-profile", ["esi:DiscectomyRule", "owl:someValuesFrom cannot be a superclass"],
                 id="superclass-some-values-from"),
    pytest.param(edit("esi:rule-no-red-flag", r"WHERE \{", "WHERE"),
                 "sparql-rule-syntax", ["esi:rule-no-red-flag", "does not parse"], id="sparql-rule-syntax-error"),
    pytest.param(edit("esi:lumbar-spinal-stenosis", r'skos:notation "lumbar-spinal-stenosis"', 'skos:notation "lss"'),
                 "CodedTermShape", ["esi:lumbar-spinal-stenosis", '"lss"', "local name"],
                 id="notation-not-the-local-name"),
    # misspelt terms
    pytest.param(lambda t: t.replace("esi:hasDiagnosis ; owl:someValuesFrom esi:facet-joint-arthritis",
                                     "esi:hasDiagnosys ; owl:someValuesFrom esi:facet-joint-arthritis", 1),
                 "undeclared-term", ["esi:hasDiagnosys", "did you mean esi:hasDiagnosis"],
                 id="misspelt-property-in-rule"),
    pytest.param(lambda t: t.replace("owl:someValuesFrom esi:facet-joint-arthritis",
                                     "owl:someValuesFrom esi:facet-joint-arthritus", 1),
                 "undeclared-term", ["esi:facet-joint-arthritus", "esi:FacetJointSourceRule"],
                 id="misspelt-class-in-rule"),
    pytest.param(edit("esi:rule-positive-block", r"esi:positive-block-threshold esi:parameterValue",
                      "esi:positive-block-treshold esi:parameterValue"),
                 "undeclared-term", ["esi:rule-positive-block", "esi:positive-block-treshold"],
                 id="misspelt-parameter-in-sparql-rule"),
    pytest.param(edit("esi:rule-relief", r"esi:reliefPercent \?relief", "esi:reliefPercentage ?relief"),
                 "undeclared-term", ["esi:rule-relief", "esi:reliefPercentage", "did you mean esi:reliefPercent"],
                 id="misspelt-property-in-sparql-rule"),
    pytest.param(edit("esi:RadiofrequencyAblationRule", r"owl:hasValue esi:radiofrequency-ablation",
                      "owl:hasValue esi:radiofrequency-ablaton"),
                 "undeclared-term", ["esi:radiofrequency-ablaton", "esi:RadiofrequencyAblationRule"],
                 id="misspelt-pathway-in-conclusion"),
    pytest.param(edit("esi:RadiofrequencyAblationRule", r"owl:hasValue esi:radiofrequency-ablation",
                      "owl:hasValue esi:radiofrequency-ablaton"),
                 "orphan-pathway", ["esi:radiofrequency-ablation", "no rule concludes"], id="pathway-left-orphan"),
    pytest.param(edit("esi:spine-surgeon-consultation", r"esi:hasUrgency esi:routine", "esi:hasUrgency esi:rutine"),
                 "undeclared-term", ["esi:spine-surgeon-consultation", "esi:rutine", "did you mean esi:routine"],
                 id="urgency-rutine"),
    # values of the wrong kind
    pytest.param(edit("esi:spine-surgeon-consultation", r"esi:hasUrgency esi:routine", "esi:hasUrgency esi:responder"),
                 "wrong-kind", ["esi:spine-surgeon-consultation", "esi:responder", "esi:Urgency"],
                 id="urgency-not-an-urgency"),
    pytest.param(edit("esi:DiscectomyRule", r"owl:hasValue esi:discectomy", "owl:hasValue esi:herniated-disc"),
                 "wrong-kind", ["esi:DiscectomyRule", "esi:herniated-disc", "esi:CarePathway"],
                 id="conclusion-not-a-pathway"),
    pytest.param(edit("esi:rule-primary-non-responder", r"\$this esi:hasResponseCategory esi:primary-non-responder",
                      "$this esi:hasResponseCategory esi:urgent"),
                 "wrong-kind", ["esi:rule-primary-non-responder", "esi:urgent", "esi:ResponseCategory"],
                 id="category-not-a-category-in-sparql-rule"),
    pytest.param(lambda t: t.replace("owl:hasValue esi:secondary-non-responder ]",
                                     "owl:hasValue esi:facet-joint ]", 1),
                 "wrong-kind", ["esi:SecondaryNonResponder", "esi:facet-joint", "esi:ResponseCategory"],
                 id="category-not-a-category-in-owl-rule"),
    # structure and coherence
    pytest.param(edit("esi:RedFlag", r'rdfs:label "red flag"@en ;',
                      'rdfs:label "red flag"@en ; rdfs:subClassOf esi:foot-drop ;'),
                 "subclass-cycle", ["esi:RedFlag", "esi:foot-drop"], id="subclass-cycle"),
    pytest.param(append("esi:MotorWeakness owl:disjointWith esi:SphincterDysfunction .\n"
                        "esi:foot-drop rdfs:subClassOf esi:SphincterDysfunction .\n"),
                 "unsatisfiable", ["esi:foot-drop", "esi:MotorWeakness", "esi:SphincterDysfunction"],
                 id="unsatisfiable-class"),
    pytest.param(append("esi:CaseWithRedFlag owl:disjointWith esi:NonResponder .\n"),
                 "inconsistent-combination", ["esi:CaseWithRedFlag", "esi:NonResponder", "red flag"],
                 id="inconsistent-combination"),
    pytest.param(append("esi:SurgicalCandidate owl:disjointWith esi:PrimaryNonResponder .\n"),
                 "inconsistent-combination", ["esi:PrimaryNonResponder", "esi:SurgicalCandidate"],
                 id="inconsistent-combination-surgery"),
    pytest.param(append(NEW_PATHWAY), "orphan-pathway", ["esi:acupuncture", "no rule concludes"], id="orphan-pathway"),
    pytest.param(edit("esi:foot-drop", r'dcterms:source "Considering Surgical Intervention"',
                      'dcterms:source "Considering Surgery"'),
                 "source-heading", ["esi:foot-drop", "Considering Surgery"], id="source-not-a-heading"),
    pytest.param(edit("esi:foot-drop", r'rdfs:label "foot drop"@en', 'rdfs:label "Progressive motor weakness"@en'),
                 "duplicate-label", ["esi:foot-drop", "esi:progressive-motor-weakness"], id="duplicate-label"),
    pytest.param(lambda t: t.replace("    owl:priorVersion <https://w3id.org/esi-kg/ontology/1.0.0> ;\n", "", 1)
                 .replace("    owl:versionIRI <https://w3id.org/esi-kg/ontology/1.1.0> ;\n", "", 1),
                 "header", ["owl:versionIRI"], id="header-without-version-iri"),
    pytest.param(append("esi:observedOn rdfs:range xsd:date .\n"),
                 "datatype-outside-owl2", ["esi:observedOn", "xsd:date", "OWL 2 datatype map"], id="xsd-date-range"),
    pytest.param(edit("esi:rule-no-red-flag", r"esi:stratum 1 ; ", ""),
                 "SparqlRuleShape", ["esi:rule-no-red-flag", "esi:stratum"], id="sparql-rule-without-stratum"),
]


@pytest.mark.parametrize(("mutate", "rule", "words"), MISTAKES)
def test_each_mistake_fails_naming_the_term(capsys: pytest.CaptureFixture[str], tmp_path: Path, mutate, rule: str,
                                            words: list[str]) -> None:
    broken = tmp_path / "esi.ttl"
    text = SHIPPED.read_text(encoding="utf-8")
    changed = mutate(text)
    assert changed != text, "the mutation did not apply: update this test"
    broken.write_text(changed, encoding="utf-8")
    code, out = check(capsys, "--ontology", str(broken), "--format", "json")
    report = json.loads(out)
    assert code == 1 and report["errors"] >= 1, out
    rows = [p for p in report["problems"] if rule in p["rule"]]
    text_of = [" ".join(str(v) for v in row.values()) for row in rows]
    assert any(all(word in line for word in words) for line in text_of), json.dumps(report["problems"], indent=1)
    assert all(row["severity"] in ("error", "warn", "info") and row["message"] for row in report["problems"])


def test_formats_and_fail_on(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """An unused parameter is a warning: exit 0 by default, 1 with --fail-on warn; every format shows the row."""
    text = edited(SHIPPED.read_text(encoding="utf-8"), "esi:rule-assessment-pending",
                  r"  esi:assessment-window-end esi:parameterValue \?end \.\n", "  BIND (14 AS ?end)\n")
    copy = tmp_path / "esi.ttl"
    copy.write_text(text, encoding="utf-8")
    code, out = check(capsys, "--ontology", str(copy))
    assert code == 0
    assert out.splitlines()[0].startswith("WARN  unused-parameter  esi:assessment-window-end: "), out
    assert out.splitlines()[-1].endswith(": 0 errors, 1 warning")
    code, _ = check(capsys, "--ontology", str(copy), "--fail-on", "warn")
    assert code == 1
    _, out = check(capsys, "--ontology", str(copy), "--format", "tsv")
    rows = list(csv.DictReader(io.StringIO(out), delimiter="\t"))
    assert [(r["severity"], r["rule"], r["subject"]) for r in rows] == [
        ("warn", "unused-parameter", "esi:assessment-window-end")]
    _, out = check(capsys, "--ontology", str(copy), "--format", "md")
    assert "| severity | rule | subject | property | value | message |" in out
    assert "| warn | unused-parameter | esi:assessment-window-end |" in out


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
    code, out = check(capsys, "--ontology", str(path))
    assert code == 1
    assert any(str(path) in line and expected in line for line in out.splitlines()), out
    assert "Traceback" not in out
