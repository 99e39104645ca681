"""A curator changes the ontology's Turtle, and only the Turtle, and the answers follow.

Each test copies ontology/esi.ttl, edits its text as a curator would, and builds a new
knowledge base on the copy: no Python changes, no restart of anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kgservice.config import Settings
from kgservice.core.kb import KnowledgeBase

Curate = Callable[[str], KnowledgeBase]


def codes(items: list[dict[str, Any]]) -> list[str]:
    return [item["code"] for item in items]


def set_value(text: str, subject: str, prop: str, value: str) -> str:
    """Change ``subject prop <old>`` to ``value`` within the subject's own Turtle paragraph."""
    pattern = re.compile(
        rf"(^{re.escape(subject)}\s+a\s(?:(?!\n\s*\n).)*?{re.escape(prop)}\s+)([^\s;.]+)", re.S | re.M)
    edited, count = pattern.subn(lambda m: m.group(1) + value, text)
    assert count == 1, f"{subject} {prop} not found once in the ontology"
    return edited


@pytest.fixture
def curate(settings: Settings, tmp_path: Path) -> Curate:
    """Apply a text edit to a copy of the ontology; the knowledge base built on the copy."""
    original = settings.ontology_path.read_text(encoding="utf-8")

    def build(edit: Callable[[str], str] | str) -> KnowledgeBase:
        text = edit(original) if callable(edit) else edit
        path = tmp_path / "esi.ttl"
        path.write_text(text, encoding="utf-8")
        return KnowledgeBase.from_settings(settings.with_(ontology_path=path))

    return build


def test_unchanged_copy_answers_the_same(kb: KnowledgeBase, curate: Curate, make_case) -> None:
    copy = curate(lambda text: text)
    case = make_case(diagnoses=["facet-joint-arthritis"])
    assert copy.version == kb.version
    assert copy.answer_json(case) == kb.answer_json(case)


def test_success_threshold(kb: KnowledgeBase, curate: Curate, make_case) -> None:
    strict = curate(lambda text: set_value(text, "esi:success-relief-threshold", "esi:parameterValue", "70"))
    provisional = make_case(scores=[(0, 8), (14, 3)])                 # 62.5 % on day 14
    sustained = make_case(scores=[(0, 8), (30, 3)])                   # 62.5 % on day 30
    brief = make_case(scores=[(0, 8), (5, 3), (20, 8)])               # 62.5 % on day 5, then back to 8

    assert kb.answer_json(provisional)["response"]["category"] == "provisional-responder"
    assert kb.answer_json(sustained)["response"]["category"] == "responder"
    assert kb.answer_json(brief)["response"]["category"] == "secondary-non-responder"

    for case in (provisional, sustained, brief):
        answer = strict.answer_json(case)
        assert answer["response"]["category"] == "primary-non-responder"
        assert answer["response"]["best_relief_percent"] == 62.5
        assert codes(answer["pathways"]) == ["comprehensive-diagnostic-review", "advanced-physical-therapy"]
        assert any("70" in reason for reason in answer["response"]["because"])

    relieved = make_case(scores=[(0, 8), (14, 2)])                    # 75 % is still above 70
    assert strict.answer_json(relieved)["response"]["category"] == "provisional-responder"


def test_sustained_relief_day(kb: KnowledgeBase, curate: Curate, make_case) -> None:
    later = curate(lambda text: set_value(text, "esi:sustained-relief-day", "esi:parameterValue", "42"))
    day_30 = make_case(scores=[(0, 8), (30, 3)])
    wore_off = make_case(scores=[(0, 8), (30, 3), (40, 8)])
    day_42 = make_case(scores=[(0, 8), (42, 3)])

    assert kb.answer_json(day_30)["response"]["category"] == "responder"
    assert kb.answer_json(wore_off)["response"]["category"] == "responder"

    assert later.answer_json(day_30)["response"]["category"] == "provisional-responder"
    assert later.answer_json(wore_off)["response"]["category"] == "secondary-non-responder"
    assert later.answer_json(day_42)["response"]["category"] == "responder"


def test_positive_block_threshold(kb: KnowledgeBase, curate: Curate, make_case) -> None:
    stricter = curate(lambda text: set_value(text, "esi:positive-block-threshold", "esi:parameterValue", "80"))
    case = make_case(diagnoses=["facet-joint-arthritis"],
                     diagnostic_blocks=[{"target": "facet-joint", "date": make_case.day(20), "relief_percent": 60}])
    assert "radiofrequency-ablation" in codes(kb.answer_json(case)["pathways"])
    offered = codes(stricter.answer_json(case)["pathways"])
    assert "radiofrequency-ablation" not in offered
    # Rules 1.1: the 60 % block is now negative, which ends the block loop and rules the joint out.
    assert offered == ["comprehensive-diagnostic-review", "advanced-physical-therapy"]


NEW_PATHWAY = """

# A pathway added by a curator, in Turtle only.
esi:core-stabilisation-programme a esi:CarePathway , owl:NamedIndividual ;
    skos:notation "core-stabilisation-programme" ;
    esi:careOrder 35 ; esi:hasUrgency esi:routine ;
    rdfs:label "core stabilisation programme"@en ;
    skos:definition "Supervised exercise that strengthens the trunk muscles around an unstable segment."@en ;
    dcterms:source "Non-Surgical Treatment Pathways" .

esi:CoreStabilisationRule a owl:Class ;
    rdfs:label "core stabilisation for spinal instability"@en ;
    skos:definition "A non-responder with spinal instability is offered a core stabilisation programme."@en ;
    dcterms:source "Non-Surgical Treatment Pathways" ;
    rdfs:subClassOf [ a owl:Restriction ; owl:onProperty esi:hasApplicablePathway ;
                      owl:hasValue esi:core-stabilisation-programme ] .

[ owl:intersectionOf ( esi:NonResponder
      [ a owl:Restriction ; owl:onProperty esi:hasDiagnosis ; owl:someValuesFrom esi:spinal-instability ] ) ]
    rdfs:subClassOf esi:CoreStabilisationRule .
"""


def test_new_pathway_in_turtle_only(kb: KnowledgeBase, curate: Curate, make_case) -> None:
    extended = curate(lambda text: text + NEW_PATHWAY)
    case = make_case(diagnoses=["spinal-instability", "facet-joint-arthritis"])

    before = codes(kb.answer_json(case)["pathways"])
    assert "core-stabilisation-programme" not in before

    answer = extended.answer_json(case)
    assert codes(answer["pathways"]) == [
        "comprehensive-diagnostic-review", "advanced-physical-therapy", "core-stabilisation-programme",
        "facet-joint-injection", "diagnostic-nerve-block",
    ]
    added = answer["pathways"][2]
    assert added["label"] == "core stabilisation programme"
    assert added["urgency"] == "routine"
    assert added["rule"] == {"iri": "https://w3id.org/esi-kg/ontology#CoreStabilisationRule",
                             "label": "core stabilisation for spinal instability",
                             "source": "Non-Surgical Treatment Pathways"}
    reasons = " | ".join(added["because"])
    assert "spinal instability" in reasons
    assert "primary non-responder" in reasons


def test_new_pathway_only_where_its_rule_holds(curate: Curate, make_case) -> None:
    extended = curate(lambda text: text + NEW_PATHWAY)
    no_instability = extended.answer_json(make_case(diagnoses=["facet-joint-arthritis"]))
    responder = extended.answer_json(make_case(diagnoses=["spinal-instability"], scores=[(0, 8), (30, 2)]))
    assert "core-stabilisation-programme" not in codes(no_instability["pathways"])
    assert responder["pathways"] == []


def test_care_order(kb: KnowledgeBase, curate: Curate, make_case) -> None:
    reordered = curate(lambda text: set_value(text, "esi:facet-joint-injection", "esi:careOrder", "65"))
    case = make_case(diagnoses=["facet-joint-arthritis"])
    assert codes(kb.answer_json(case)["pathways"])[2:] == ["facet-joint-injection", "diagnostic-nerve-block"]
    assert codes(reordered.answer_json(case)["pathways"])[2:] == ["diagnostic-nerve-block", "facet-joint-injection"]


def test_ontology_version_follows_the_file(kb: KnowledgeBase, curate: Curate, make_case) -> None:
    case = make_case()
    same = curate(lambda text: text).answer_json(case)["ontology_version"]
    assert same == kb.answer_json(case)["ontology_version"]

    edited = curate(lambda text: set_value(text, "esi:assessment-window-end", "esi:parameterValue", "15"))
    assert edited.answer_json(case)["ontology_version"] != same

    commented = curate(lambda text: text + "\n# a curator's note\n")
    assert commented.answer_json(case)["ontology_version"] != same
