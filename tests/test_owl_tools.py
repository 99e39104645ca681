"""The ontology in the tools curators use: the OWL API (Protégé's library) and HermiT.

owlready2 ships HermiT, and HermiT's jar carries the OWL API: ``tests/owl/OwlCheck.java`` loads
the Turtle with it and reports the triples it could not parse, the OWL 2 DL profile violations,
consistency and unsatisfiable classes; owlready2 itself loads the ontology and classifies it
with HermiT. Both need Java (``.ci/run`` installs a JDK where none is found).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from rdflib import Graph

from kgservice.config import Settings

owlready2 = pytest.importorskip("owlready2", reason="owlready2 is a test extra: pip install -e '.[test]'")

SHIPPED = Settings().ontology_path
CHECKER = Path(__file__).parent / "owl" / "OwlCheck.java"
ESI = "https://w3id.org/esi-kg/ontology#"
HERMIT = Path(owlready2.__file__).parent / "hermit" / "HermiT.jar"

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="Java is needed to run HermiT and the OWL API")


def owl_api_report(path: Path) -> dict[str, list[str]]:
    """``key → values`` of the checker's ``key: value`` lines."""
    done = subprocess.run(["java", "-cp", str(HERMIT), str(CHECKER), str(path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(": ")
        report.setdefault(key, []).append(value)
    return report


def test_the_owl_api_parses_every_triple_and_finds_owl2_dl(tmp_path: Path) -> None:
    report = owl_api_report(SHIPPED)
    assert report["unparsed"] == ["0"], report.get("unparsed-triple")
    assert report["dl-violations"] == ["0"], report.get("dl-violation")
    assert int(report["axioms"][0]) > 1000
    assert report["consistent"] == ["true"]
    assert report["unsatisfiable"] == ["0"], report.get("unsatisfiable-class")


def test_the_owl_api_check_bites(tmp_path: Path) -> None:
    """An undeclared annotation property and a blank-node annotation value are what the OWL API
    reported on 1.0 (the xsd:date ranges it let pass are caught by ``kgservice check``)."""
    text = SHIPPED.read_text(encoding="utf-8") + """
esi:foot-drop <http://www.w3.org/2004/02/skos/core#historyNote> "was drop foot" .
<https://w3id.org/esi-kg/ontology> sh:declare [ sh:prefix "ex" ; sh:namespace "http://example.org/"^^xsd:anyURI ] .
"""
    copy = tmp_path / "esi.ttl"
    copy.write_text(text, encoding="utf-8")
    report = owl_api_report(copy)
    violations = " | ".join(report.get("dl-violation", []))
    assert "historyNote" in violations, violations
    assert report["unparsed"] != ["0"]


def test_hermit_classifies_the_ontology_through_owlready2(tmp_path: Path) -> None:
    world = owlready2.World()
    onto = world.get_ontology(str(_as_ntriples(SHIPPED, tmp_path / "esi.nt"))).load()
    with onto:
        owlready2.sync_reasoner_hermit(world, infer_property_values=False, debug=0)
    foot_drop = world[ESI + "foot-drop"]
    assert world[ESI + "RedFlag"] in foot_drop.ancestors()
    assert list(world.inconsistent_classes()) == []
    # the rule classes are classes HermiT reasons with: a red-flag case is an urgent-consultation case
    assert world[ESI + "UrgentSurgicalConsultationRule"] in world[ESI + "CaseWithRedFlag"].ancestors()


def test_hermit_finds_an_inconsistent_copy(tmp_path: Path) -> None:
    broken = "\nesi:Urgency owl:disjointWith esi:CarePathway .\nesi:routine a esi:CarePathway .\n"
    text = SHIPPED.read_text(encoding="utf-8") + broken
    copy = tmp_path / "broken.ttl"
    copy.write_text(text, encoding="utf-8")
    world = owlready2.World()
    onto = world.get_ontology(str(_as_ntriples(copy, tmp_path / "broken.nt"))).load()
    with onto, pytest.raises(owlready2.OwlReadyInconsistentOntologyError):
        owlready2.sync_reasoner_hermit(world, infer_property_values=False, debug=0)


def _as_ntriples(path: Path, out: Path) -> Path:
    """owlready2 reads RDF/XML, OWL/XML and N-Triples, not Turtle."""
    graph = Graph()
    graph.parse(path, format="turtle")
    out.write_text(re.sub(r"\n+", "\n", graph.serialize(format="nt")), encoding="utf-8")
    return out
