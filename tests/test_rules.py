"""The rules of esi-rules.md at their boundaries, each checked on what the answer shows.

Cases come from the ``make_case`` factory: injection on 2026-06-10, baseline 8 on that day,
radiculopathy (a nerve-root pain source with no surgical pathway of its own); pain scores
are given as ``(day after injection, score)``.
"""

from __future__ import annotations

from typing import Any

import pytest

from kgservice.kb import KnowledgeBase

#: The pathway table of esi-rules.md, in its order of care.
ORDER_OF_CARE = [
    "urgent-spine-surgeon-consultation",
    "comprehensive-diagnostic-review",
    "advanced-physical-therapy",
    "facet-joint-injection",
    "sacroiliac-joint-injection",
    "diagnostic-nerve-block",
    "radiofrequency-ablation",
    "minimally-invasive-decompression",
    "spine-surgeon-consultation",
    "discectomy",
    "laminectomy",
    "spinal-fusion",
]
RED_FLAGS = ["progressive-motor-weakness", "foot-drop", "new-bowel-dysfunction", "new-bladder-dysfunction"]
NON_RESPONDER_BASICS = ["comprehensive-diagnostic-review", "advanced-physical-therapy"]
CONSERVATIVE_CARE = ["repeat-epidural-injection", "physical-therapy"]

#: Score series (baseline 8 on day 0) that give each category that is not a non-response.
PENDING = [(0, 8), (3, 8)]
PROVISIONAL = [(0, 8), (10, 2)]
RESPONDER = [(0, 8), (30, 2)]
NOT_FAILED = {"assessment-pending": PENDING, "provisional-responder": PROVISIONAL, "responder": RESPONDER}


def codes(items: list[dict[str, Any]]) -> list[str]:
    return [item["code"] for item in items]


def category(answer: dict[str, Any]) -> str:
    return answer["response"]["category"]  # type: ignore[no-any-return]


def pathway(answer: dict[str, Any], code: str) -> dict[str, Any]:
    found = [p for p in answer["pathways"] if p["code"] == code]
    assert found, f"{code} not among {codes(answer['pathways'])}"
    return found[0]


def block(target: str, relief: float, day: str) -> dict[str, Any]:
    return {"target": target, "date": day, "relief_percent": relief}


# -- 1. response category ------------------------------------------------------------


def test_default_case_is_a_primary_non_responder(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case())
    assert category(answer) == "primary-non-responder"
    assert codes(answer["pathways"]) == NON_RESPONDER_BASICS
    assert codes(answer["pain_sources"]) == ["nerve-root"]
    assert answer["failure_causes"] == []
    assert answer["red_flags"] == []


@pytest.mark.parametrize(("score", "expected"), [
    (4, "primary-non-responder"),   # 50 %: exactly the threshold is not success
    (3, "provisional-responder"),   # 62.5 %
])
def test_success_needs_relief_above_50_percent(kb: KnowledgeBase, make_case, score: int, expected: str) -> None:
    answer = kb.answer_json(make_case(scores=[(0, 8), (14, score)]))
    assert category(answer) == expected


def test_exactly_50_percent_relief_is_a_non_response_with_its_pathways(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(scores=[(0, 8), (14, 4)]))
    assert answer["response"]["best_relief_percent"] == 50
    assert codes(answer["pathways"]) == NON_RESPONDER_BASICS


@pytest.mark.parametrize(("latest_day", "score", "expected"), [
    (6, 3, "assessment-pending"),
    (6, 8, "assessment-pending"),
    (7, 3, "provisional-responder"),
    (7, 8, "primary-non-responder"),
])
def test_assessment_window_opens_on_day_7(kb: KnowledgeBase, make_case, latest_day: int, score: int,
                                          expected: str) -> None:
    answer = kb.answer_json(make_case(scores=[(0, 8), (latest_day, score)]))
    assert category(answer) == expected
    assert answer["response"]["days_since_injection"] == latest_day


def test_pending_case_gets_no_pathway(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(scores=[(0, 8), (2, 8), (6, 8)]))
    assert category(answer) == "assessment-pending"
    assert answer["pathways"] == []
    assert answer["failure_causes"] == []


@pytest.mark.parametrize(("day", "expected"), [(27, "provisional-responder"), (28, "responder")])
def test_sustained_relief_from_day_28(kb: KnowledgeBase, make_case, day: int, expected: str) -> None:
    answer = kb.answer_json(make_case(scores=[(0, 8), (10, 3), (day, 3)]))
    assert category(answer) == expected
    assert answer["pathways"] == []


def test_relief_that_lasted_past_day_28_then_wore_off_is_a_response(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(scores=[(0, 8), (30, 3), (40, 8)]))
    assert category(answer) == "responder"
    assert answer["pathways"] == []
    assert answer["failure_causes"] == []


def test_brief_relief_then_pain_returned_is_a_secondary_non_response(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(scores=[(0, 8), (5, 3), (20, 8)]))
    assert category(answer) == "secondary-non-responder"
    assert codes(answer["pathways"]) == NON_RESPONDER_BASICS
    assert answer["response"]["best_relief_percent"] == 62.5


def test_relief_that_returned_before_day_28_only_is_a_secondary_non_response(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(scores=[(0, 8), (10, 2), (27, 3), (35, 7)]))
    assert category(answer) == "secondary-non-responder"


def test_late_response_counts(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(scores=[(0, 8), (10, 8), (30, 3)]))
    assert category(answer) == "responder"
    assert answer["pathways"] == []


def test_late_relief_before_day_28_is_provisional(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(scores=[(0, 8), (10, 8), (20, 3)]))
    assert category(answer) == "provisional-responder"


def test_scores_in_any_order_in_the_request(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(scores=[(20, 8), (5, 3), (0, 8)]))
    assert category(answer) == "secondary-non-responder"
    assert answer["response"]["days_since_injection"] == 20


# -- baseline and relief ---------------------------------------------------------------


def test_baseline_is_the_last_score_on_or_before_the_injection(kb: KnowledgeBase, make_case) -> None:
    # Against the older 10, a 3 would be 70 % relief; against the later 6 it is exactly 50 %.
    answer = kb.answer_json(make_case(scores=[(-10, 10), (-2, 6), (14, 3)]))
    assert answer["response"]["baseline_score"] == 6
    assert answer["response"]["best_relief_percent"] == 50
    assert category(answer) == "primary-non-responder"


def test_baseline_on_the_injection_day_wins_over_older_scores(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(scores=[(-10, 4), (0, 8), (14, 3)]))
    assert answer["response"]["baseline_score"] == 8
    assert answer["response"]["best_relief_percent"] == 62.5
    assert category(answer) == "provisional-responder"


def test_scores_before_the_injection_are_not_post_injection_scores(kb: KnowledgeBase, make_case) -> None:
    # The score of 2 five days before the injection would be 75 % relief if it counted.
    answer = kb.answer_json(make_case(scores=[(-5, 2), (0, 8), (14, 8)]))
    assert category(answer) == "primary-non-responder"
    assert answer["response"]["best_relief_percent"] == 0


def test_relief_before_the_injection_does_not_end_the_pending_state(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(scores=[(-30, 2), (0, 8), (3, 8)]))
    assert category(answer) == "assessment-pending"
    assert answer["response"]["days_since_injection"] == 3


def test_injection_day_score_is_the_baseline_not_a_response(kb: KnowledgeBase, make_case) -> None:
    # A score of 2 on day -1 and 8 on the injection day: the 8 is the baseline, nothing is relief.
    answer = kb.answer_json(make_case(scores=[(-1, 2), (0, 8), (10, 8)]))
    assert answer["response"]["baseline_score"] == 8
    assert category(answer) == "primary-non-responder"


def test_best_relief_and_baseline(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(scores=[(0, 8), (8, 6), (12, 2), (20, 5)]))
    response = answer["response"]
    assert response["baseline_score"] == 8
    assert response["best_relief_percent"] == 75          # (8 - 2) / 8
    assert response["days_since_injection"] == 20
    assert category(answer) == "secondary-non-responder"  # 37.5 % at the latest score


def test_best_relief_is_a_percentage_of_the_baseline(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(scores=[(0, 7), (10, 2)]))
    assert answer["response"]["baseline_score"] == 7
    assert answer["response"]["best_relief_percent"] == pytest.approx(500 / 7, abs=0.01)


def test_days_since_injection_counts_to_the_latest_score(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(scores=[(0, 8), (45, 8), (10, 8)]))
    assert answer["response"]["days_since_injection"] == 45


# -- 3. pain sources and 2. failure causes ------------------------------------------------


def test_facet_joint_arthritis(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(diagnoses=["facet-joint-arthritis"]))
    assert codes(answer["pain_sources"]) == ["facet-joint"]
    assert codes(answer["failure_causes"]) == ["inaccurate-diagnosis"]
    assert codes(answer["pathways"]) == [*NON_RESPONDER_BASICS, "facet-joint-injection", "diagnostic-nerve-block"]


@pytest.mark.parametrize("relief", [50, 50.0, 80, 100])
def test_positive_facet_block_offers_ablation_not_another_block(kb: KnowledgeBase, make_case, relief: float) -> None:
    case = make_case(diagnoses=["facet-joint-arthritis"],
                     diagnostic_blocks=[block("facet-joint", relief, make_case.day(20))])
    offered = codes(kb.answer_json(case)["pathways"])
    assert "radiofrequency-ablation" in offered
    assert "diagnostic-nerve-block" not in offered
    assert offered == [*NON_RESPONDER_BASICS, "facet-joint-injection", "radiofrequency-ablation"]


@pytest.mark.parametrize("relief", [49, 49.9, 0])
def test_facet_block_below_50_percent_is_not_positive(kb: KnowledgeBase, make_case, relief: float) -> None:
    case = make_case(diagnoses=["facet-joint-arthritis"],
                     diagnostic_blocks=[block("facet-joint", relief, make_case.day(20))])
    offered = codes(kb.answer_json(case)["pathways"])
    assert "radiofrequency-ablation" not in offered
    assert "diagnostic-nerve-block" in offered


def test_positive_facet_block_alone_makes_facet_joint_a_source(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(diagnostic_blocks=[block("facet-joint", 50, make_case.day(20))]))
    assert set(codes(answer["pain_sources"])) == {"facet-joint", "nerve-root"}
    assert codes(answer["failure_causes"]) == ["inaccurate-diagnosis"]
    assert "radiofrequency-ablation" in codes(answer["pathways"])


def test_negative_facet_block_alone_points_nowhere(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(diagnostic_blocks=[block("facet-joint", 49, make_case.day(20))]))
    assert codes(answer["pain_sources"]) == ["nerve-root"]
    assert answer["failure_causes"] == []
    assert codes(answer["pathways"]) == NON_RESPONDER_BASICS


def test_sacroiliac_joint_dysfunction(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(diagnoses=["sacroiliac-joint-dysfunction"]))
    assert codes(answer["pain_sources"]) == ["sacroiliac-joint"]
    assert codes(answer["failure_causes"]) == ["inaccurate-diagnosis"]
    assert codes(answer["pathways"]) == [*NON_RESPONDER_BASICS, "sacroiliac-joint-injection",
                                         "diagnostic-nerve-block"]


def test_positive_sacroiliac_block(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(diagnoses=["sacroiliac-joint-dysfunction"],
                                      diagnostic_blocks=[block("sacroiliac-joint", 75, make_case.day(20))]))
    assert codes(answer["pain_sources"]) == ["sacroiliac-joint"]
    assert codes(answer["failure_causes"]) == ["inaccurate-diagnosis"]
    offered = codes(answer["pathways"])
    assert "sacroiliac-joint-injection" in offered
    assert "diagnostic-nerve-block" not in offered
    assert "radiofrequency-ablation" not in offered  # ablation is for a confirmed facet joint only


def test_block_is_still_offered_for_the_joint_not_yet_confirmed(kb: KnowledgeBase, make_case) -> None:
    case = make_case(diagnoses=["facet-joint-arthritis", "sacroiliac-joint-dysfunction"],
                     diagnostic_blocks=[block("facet-joint", 90, make_case.day(20))])
    offered = codes(kb.answer_json(case)["pathways"])
    assert "radiofrequency-ablation" in offered
    assert "diagnostic-nerve-block" in offered  # the SI joint has no positive block yet


def test_muscle_strain(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(diagnoses=["muscle-strain"]))
    assert codes(answer["pain_sources"]) == ["muscle"]
    assert codes(answer["failure_causes"]) == ["inaccurate-diagnosis"]
    assert codes(answer["pathways"]) == NON_RESPONDER_BASICS


@pytest.mark.parametrize("diagnosis", ["herniated-disc", "spinal-stenosis", "lumbar-spinal-stenosis", "radiculopathy"])
def test_nerve_root_conditions(kb: KnowledgeBase, make_case, diagnosis: str) -> None:
    answer = kb.answer_json(make_case(diagnoses=[diagnosis]))
    assert codes(answer["pain_sources"]) == ["nerve-root"]
    assert answer["failure_causes"] == []


def test_spinal_instability_is_not_a_pain_source_diagnosis(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(diagnoses=["spinal-instability"]))
    assert answer["pain_sources"] == []


@pytest.mark.parametrize("fields", [
    {"prior_spinal_surgery": True},
    {"findings": ["epidural-scar-tissue"]},
    {"findings": ["anatomical-variation"]},
], ids=["prior-spinal-surgery", "epidural-scar-tissue", "anatomical-variation"])
def test_medication_delivery_failure(kb: KnowledgeBase, make_case, fields: dict[str, Any]) -> None:
    answer = kb.answer_json(make_case(**fields))
    assert codes(answer["failure_causes"]) == ["medication-delivery-failure"]


@pytest.mark.parametrize("finding", ["severe-spinal-stenosis", "ligamentum-flavum-hypertrophy", "bone-spurs"])
def test_structural_severity(kb: KnowledgeBase, make_case, finding: str) -> None:
    answer = kb.answer_json(make_case(findings=[finding]))
    assert codes(answer["failure_causes"]) == ["structural-severity"]


def test_no_finding_no_cause(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(prior_spinal_surgery=False, findings=[], diagnoses=["herniated-disc"]))
    assert answer["failure_causes"] == []


def test_all_three_causes_together(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(diagnoses=["muscle-strain"], findings=["bone-spurs"], prior_spinal_surgery=True))
    assert set(codes(answer["failure_causes"])) == {
        "inaccurate-diagnosis", "medication-delivery-failure", "structural-severity"}


@pytest.mark.parametrize(("expected", "scores"), NOT_FAILED.items(), ids=list(NOT_FAILED))
def test_no_failure_cause_unless_the_injection_failed(kb: KnowledgeBase, make_case, expected: str,
                                                      scores: list[tuple[int, int]]) -> None:
    case = make_case(scores=scores, diagnoses=["muscle-strain", "facet-joint-arthritis"],
                     findings=["bone-spurs", "epidural-scar-tissue"], prior_spinal_surgery=True,
                     diagnostic_blocks=[block("facet-joint", 90, make_case.day(2))])
    answer = kb.answer_json(case)
    assert category(answer) == expected
    assert answer["failure_causes"] == []
    assert answer["pathways"] == []
    # pain sources are suspected for every case
    assert set(codes(answer["pain_sources"])) == {"muscle", "facet-joint"}


# -- 4. pathways -------------------------------------------------------------------------


@pytest.mark.parametrize("red_flag", RED_FLAGS)
@pytest.mark.parametrize(("expected", "scores"), NOT_FAILED.items(), ids=list(NOT_FAILED))
def test_red_flag_outside_failure_gives_only_the_urgent_consultation(kb: KnowledgeBase, make_case, expected: str,
                                                                     scores: list[tuple[int, int]],
                                                                     red_flag: str) -> None:
    answer = kb.answer_json(make_case(scores=scores, red_flags=[red_flag]))
    assert category(answer) == expected
    assert codes(answer["pathways"]) == ["urgent-spine-surgeon-consultation"]
    assert answer["pathways"][0]["urgency"] == "urgent"
    assert codes(answer["red_flags"]) == [red_flag]
    assert answer["failure_causes"] == []


@pytest.mark.parametrize(("expected", "scores"), NOT_FAILED.items(), ids=list(NOT_FAILED))
def test_red_flag_outside_failure_gives_no_surgery(kb: KnowledgeBase, make_case, expected: str,
                                                   scores: list[tuple[int, int]]) -> None:
    """Responders, provisional responders and pending cases get no pathway but the urgent consultation."""
    answer = kb.answer_json(make_case(scores=scores, red_flags=["foot-drop"],
                                      diagnoses=["herniated-disc", "lumbar-spinal-stenosis", "spinal-instability"]))
    assert category(answer) == expected
    assert codes(answer["pathways"]) == ["urgent-spine-surgeon-consultation"]


@pytest.mark.parametrize("red_flag", RED_FLAGS)
def test_red_flag_for_a_non_responder(kb: KnowledgeBase, make_case, red_flag: str) -> None:
    answer = kb.answer_json(make_case(red_flags=[red_flag]))
    assert codes(answer["pathways"]) == ["urgent-spine-surgeon-consultation", *NON_RESPONDER_BASICS]
    assert [p["urgency"] for p in answer["pathways"]] == ["urgent", "routine", "routine"]


def test_red_flags_are_listed_with_labels(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(red_flags=["foot-drop", "new-bladder-dysfunction"]))
    flags = {flag["code"]: flag["label"] for flag in answer["red_flags"]}
    assert set(flags) == {"foot-drop", "new-bladder-dysfunction"}  # not their kinds (motor weakness …)
    assert all(flags.values())
    assert codes(answer["pathways"]).count("urgent-spine-surgeon-consultation") == 1


def test_urgent_consultation_replaces_the_routine_one(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(red_flags=["foot-drop"], treatments_tried=CONSERVATIVE_CARE))
    offered = codes(answer["pathways"])
    assert "urgent-spine-surgeon-consultation" in offered
    assert "spine-surgeon-consultation" not in offered


def test_spine_surgeon_consultation_after_conservative_care(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(treatments_tried=CONSERVATIVE_CARE))
    assert codes(answer["pathways"]) == [*NON_RESPONDER_BASICS, "spine-surgeon-consultation"]
    assert pathway(answer, "spine-surgeon-consultation")["urgency"] == "routine"


@pytest.mark.parametrize("tried", [["repeat-epidural-injection"], ["physical-therapy"], []])
def test_spine_surgeon_consultation_needs_both_treatments(kb: KnowledgeBase, make_case, tried: list[str]) -> None:
    answer = kb.answer_json(make_case(treatments_tried=tried, diagnoses=["herniated-disc"]))
    assert "spine-surgeon-consultation" not in codes(answer["pathways"])
    assert "discectomy" not in codes(answer["pathways"])


@pytest.mark.parametrize(("expected", "scores"), NOT_FAILED.items(), ids=list(NOT_FAILED))
def test_no_spine_surgeon_consultation_unless_the_injection_failed(kb: KnowledgeBase, make_case, expected: str,
                                                                   scores: list[tuple[int, int]]) -> None:
    answer = kb.answer_json(make_case(scores=scores, treatments_tried=CONSERVATIVE_CARE, diagnoses=["herniated-disc"]))
    assert category(answer) == expected
    assert answer["pathways"] == []


@pytest.mark.parametrize("facet_source", [
    {"diagnoses": ["facet-joint-arthritis"]},
    {"diagnostic_blocks": [block("facet-joint", 80, "2026-07-01")]},
], ids=["facet-arthritis", "positive-facet-block"])
def test_spine_surgeon_consultation_needs_ablation_when_facet_joint_is_suspected(
        kb: KnowledgeBase, make_case, facet_source: dict[str, Any]) -> None:
    without = kb.answer_json(make_case(treatments_tried=CONSERVATIVE_CARE, **facet_source))
    assert "spine-surgeon-consultation" not in codes(without["pathways"])
    with_rfa = kb.answer_json(make_case(treatments_tried=[*CONSERVATIVE_CARE, "radiofrequency-ablation"],
                                        **facet_source))
    assert "spine-surgeon-consultation" in codes(with_rfa["pathways"])


@pytest.mark.parametrize(("red_flags", "urgency"), [(["foot-drop"], "urgent"), ([], "routine")])
def test_surgery_is_as_urgent_as_the_consultation(kb: KnowledgeBase, make_case, red_flags: list[str],
                                                  urgency: str) -> None:
    answer = kb.answer_json(make_case(diagnoses=["herniated-disc"], red_flags=red_flags,
                                      treatments_tried=CONSERVATIVE_CARE))
    assert pathway(answer, "discectomy")["urgency"] == urgency
    assert codes(answer["pathways"])[-1] == "discectomy"


def test_no_surgery_without_a_consultation(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(diagnoses=["herniated-disc", "spinal-stenosis", "spinal-instability"]))
    assert codes(answer["pathways"]) == NON_RESPONDER_BASICS


@pytest.mark.parametrize(("diagnosis", "surgery"), [
    ("herniated-disc", "discectomy"),
    ("spinal-stenosis", "laminectomy"),
    ("lumbar-spinal-stenosis", "laminectomy"),
    ("spinal-instability", "spinal-fusion"),
])
def test_surgery_for_each_diagnosis(kb: KnowledgeBase, make_case, diagnosis: str, surgery: str) -> None:
    answer = kb.answer_json(make_case(diagnoses=[diagnosis], treatments_tried=CONSERVATIVE_CARE))
    assert codes(answer["pathways"]) == [*NON_RESPONDER_BASICS, "spine-surgeon-consultation", surgery]
    assert pathway(answer, surgery)["urgency"] == "routine"


def test_radiculopathy_leads_to_no_surgery(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(diagnoses=["radiculopathy"], treatments_tried=CONSERVATIVE_CARE))
    assert codes(answer["pathways"]) == [*NON_RESPONDER_BASICS, "spine-surgeon-consultation"]


@pytest.mark.parametrize(("diagnoses", "findings", "offered"), [
    (["lumbar-spinal-stenosis"], ["ligamentum-flavum-hypertrophy"], True),
    (["lumbar-spinal-stenosis"], [], False),
    (["lumbar-spinal-stenosis"], ["severe-spinal-stenosis"], False),
    ([], ["ligamentum-flavum-hypertrophy"], False),
    (["spinal-stenosis"], ["ligamentum-flavum-hypertrophy"], False),
])
def test_minimally_invasive_decompression(kb: KnowledgeBase, make_case, diagnoses: list[str], findings: list[str],
                                          offered: bool) -> None:
    answer = kb.answer_json(make_case(diagnoses=diagnoses, findings=findings))
    assert ("minimally-invasive-decompression" in codes(answer["pathways"])) is offered


def test_minimally_invasive_decompression_only_after_failure(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(scores=PROVISIONAL, diagnoses=["lumbar-spinal-stenosis"],
                                      findings=["ligamentum-flavum-hypertrophy"]))
    assert answer["pathways"] == []


def test_pathways_follow_the_order_of_care(kb: KnowledgeBase, make_case) -> None:
    """A case that gets every pathway but the urgent consultation: all in the table's order."""
    case = make_case(
        diagnoses=["sacroiliac-joint-dysfunction", "herniated-disc", "spinal-instability", "lumbar-spinal-stenosis"],
        findings=["ligamentum-flavum-hypertrophy"],
        diagnostic_blocks=[block("facet-joint", 80, make_case.day(20))],
        treatments_tried=["radiofrequency-ablation", *CONSERVATIVE_CARE],
    )
    answer = kb.answer_json(case)
    assert codes(answer["pathways"]) == [p for p in ORDER_OF_CARE if p != "urgent-spine-surgeon-consultation"]
    assert {p["urgency"] for p in answer["pathways"]} == {"routine"}


def test_pathways_follow_the_order_of_care_with_a_red_flag(kb: KnowledgeBase, make_case) -> None:
    case = make_case(
        diagnoses=["spinal-instability", "facet-joint-arthritis", "lumbar-spinal-stenosis", "herniated-disc",
                   "sacroiliac-joint-dysfunction"],
        findings=["ligamentum-flavum-hypertrophy"],
        red_flags=["new-bowel-dysfunction"],
        treatments_tried=CONSERVATIVE_CARE,
    )
    answer = kb.answer_json(case)
    assert codes(answer["pathways"]) == [
        p for p in ORDER_OF_CARE if p not in ("radiofrequency-ablation", "spine-surgeon-consultation")]
    urgency = {p["code"]: p["urgency"] for p in answer["pathways"]}
    assert urgency["urgent-spine-surgeon-consultation"] == "urgent"
    assert urgency["comprehensive-diagnostic-review"] == "routine"
    assert [urgency[s] for s in ("discectomy", "laminectomy", "spinal-fusion")] == ["urgent"] * 3


# -- 5. explanations ---------------------------------------------------------------------


EXPLAINED_CASES = {
    "everything": dict(diagnoses=["sacroiliac-joint-dysfunction", "herniated-disc", "spinal-instability",
                                  "lumbar-spinal-stenosis", "muscle-strain"],
                       findings=["ligamentum-flavum-hypertrophy", "epidural-scar-tissue"], prior_spinal_surgery=True,
                       diagnostic_blocks=[block("facet-joint", 80, "2026-07-01")],
                       treatments_tried=["radiofrequency-ablation", *CONSERVATIVE_CARE]),
    "red-flag": dict(red_flags=["foot-drop"], diagnoses=["herniated-disc", "facet-joint-arthritis"]),
    "secondary": dict(scores=[(0, 8), (5, 3), (20, 8)], findings=["bone-spurs", "anatomical-variation"]),
    "responder": dict(scores=RESPONDER),
    "wore-off": dict(scores=[(0, 8), (30, 3), (40, 8)]),
    "provisional": dict(scores=PROVISIONAL),
    "pending": dict(scores=PENDING, red_flags=["progressive-motor-weakness"]),
}


@pytest.mark.parametrize("fields", EXPLAINED_CASES.values(), ids=list(EXPLAINED_CASES))
def test_every_conclusion_is_explained(kb: KnowledgeBase, make_case, fields: dict[str, Any]) -> None:
    """Category, causes and pathways carry reasons and their rule; pain sources carry reasons."""
    answer = kb.answer_json(make_case(**fields))
    ruled = [answer["response"], *answer["failure_causes"], *answer["pathways"]]
    rule_iris = {str(iri) for iri in kb.ontology.terms}
    for item in [*ruled, *answer["pain_sources"]]:
        what = item.get("code", item.get("category"))
        assert what, item
        assert item["because"], f"{what} has no reasons"
        assert all(isinstance(reason, str) and reason.strip() for reason in item["because"]), what
    for item in ruled:
        what = item.get("code", item.get("category"))
        rule = item["rule"]
        assert set(rule) >= {"iri", "label", "source"}, what
        assert rule["label"] and rule["source"], what
        assert rule["iri"] in rule_iris, f"{what}: rule {rule['iri']} is not a term of the ontology"
    for item in [*answer["failure_causes"], *answer["pathways"], *answer["pain_sources"]]:
        assert item["label"], item["code"]


def test_reasons_name_the_case_facts(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(diagnoses=["lumbar-spinal-stenosis"], findings=["ligamentum-flavum-hypertrophy"],
                                      scores=[(0, 8), (5, 3), (20, 8)]))
    mild = pathway(answer, "minimally-invasive-decompression")
    reasons = " | ".join(mild["because"]).lower()
    # the diagnosis as given, not one of its kinds ("spinal stenosis")
    assert "lumbar spinal stenosis" in reasons
    assert any("lumbar spinal stenosis" in reason for reason in answer["pain_sources"][0]["because"])
    assert "ligamentum flavum hypertrophy" in reasons
    assert "secondary non-responder" in reasons
    assert "20" in " ".join(answer["response"]["because"])  # the day of the latest score


def test_answer_names_the_case_and_ontology_version(kb: KnowledgeBase, make_case) -> None:
    answer = kb.answer_json(make_case(id="case-0042"))
    assert answer["case"] == "case-0042"
    assert answer["ontology_version"] == kb.version
    assert answer["ontology_version"]
