"""Input that the contract rejects, and the other ways a case can come in (Turtle, JSON-LD).

A rejected JSON case raises InvalidCase whose violations name the JSON path of each problem;
every problem is reported, not only the first.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kgservice.core import cases
from kgservice.core.kb import KnowledgeBase
from kgservice.errors import InvalidCase, MalformedInput

DATA = Path(__file__).parent / "data"
VIGNETTES = sorted((DATA / "vignettes").glob("*.json"))
TWIN = DATA / "cases" / "rdf-twin"
TURTLE = "text/turtle"
JSON_LD = "application/ld+json"


def violations(kb: KnowledgeBase, case: Any) -> list[Any]:
    """The violations a case is rejected with (the test fails if it is accepted)."""
    with pytest.raises(InvalidCase) as info:
        kb.answer_json(case)
    return info.value.violations


def paths(kb: KnowledgeBase, case: Any) -> set[str]:
    return {v.path for v in violations(kb, case)}


def accepted(kb: KnowledgeBase, case: dict[str, Any]) -> dict[str, Any]:
    answer = kb.answer_json(case)
    assert answer["response"]["category"] is not None
    return answer


def with_score(make_case, index: int, **changes: Any) -> dict[str, Any]:
    """The default case with pain score ``index`` (0: baseline, 1: day 14) changed."""
    case = make_case()
    case["pain_scores"][index].update(changes)
    return case


# -- every violation, at its path ---------------------------------------------------------


def test_every_violation_is_listed(kb: KnowledgeBase, make_case) -> None:
    case = with_score(make_case, 1, score=11)
    case.update(colour="red", age=17)
    with pytest.raises(InvalidCase) as info:
        kb.answer_json(case)
    assert sorted(v.path for v in info.value.violations) == ["age", "colour", "pain_scores[1].score"]
    problem = info.value.problem()
    assert problem["status"] == 422
    assert sorted(v["path"] for v in problem["violations"]) == ["age", "colour", "pain_scores[1].score"]
    assert all(v["message"] for v in problem["violations"])
    json.dumps(problem)  # the problem document is plain JSON


def test_a_valid_case_has_no_violations(kb: KnowledgeBase, make_case) -> None:
    assert kb.check(kb.read_json(make_case())) == []


@pytest.mark.parametrize(("fields", "path"), [
    ({"colour": "red"}, "colour"),
    ({"injection": {"date": "2026-06-10", "needle": "22G"}}, "injection.needle"),
    ({"diagnostic_blocks": [{"target": "facet-joint", "date": "2026-07-01", "relief_percent": 60, "side": "left"}]},
     "diagnostic_blocks[0].side"),
])
def test_unknown_field(kb: KnowledgeBase, make_case, fields: dict[str, Any], path: str) -> None:
    assert paths(kb, make_case(**fields)) == {path}


def test_unknown_field_in_a_pain_score(kb: KnowledgeBase, make_case) -> None:
    assert paths(kb, with_score(make_case, 1, note="after a long walk")) == {"pain_scores[1].note"}


UNKNOWN_CODES = [
    ({"sex": "robot"}, "sex", "robot"),
    ({"pain_regions": ["leg", "tail"]}, "pain_regions[1]", "tail"),
    ({"diagnoses": ["radiculopathy", "gout"]}, "diagnoses[1]", "gout"),
    ({"findings": ["osteophyte"]}, "findings[0]", "osteophyte"),
    ({"red_flags": ["headache"]}, "red_flags[0]", "headache"),
    ({"treatments_tried": ["physical-therapy", "yoga"]}, "treatments_tried[1]", "yoga"),
    ({"injection": {"date": "2026-06-10", "approach": "nasal"}}, "injection.approach", "nasal"),
    ({"injection": {"date": "2026-06-10", "spinal_region": "sacral"}}, "injection.spinal_region", "sacral"),
    ({"diagnostic_blocks": [{"target": "knee", "date": "2026-07-01", "relief_percent": 60}]},
     "diagnostic_blocks[0].target", "knee"),
]


@pytest.mark.parametrize(("fields", "path", "value"), UNKNOWN_CODES, ids=[p for _, p, _ in UNKNOWN_CODES])
def test_unknown_code(kb: KnowledgeBase, make_case, fields: dict[str, Any], path: str, value: str) -> None:
    found = violations(kb, make_case(**fields))
    assert [v.path for v in found] == [path]
    assert found[0].value == value
    assert found[0].message


WRONG_VALUE_SET = [
    ({"diagnoses": ["facet-joint"]}, "diagnoses[0]"),            # a pain source
    ({"diagnoses": ["foot-drop"]}, "diagnoses[0]"),              # a red flag
    ({"findings": ["herniated-disc"]}, "findings[0]"),           # a diagnosis
    ({"red_flags": ["bone-spurs"]}, "red_flags[0]"),             # a finding
    ({"treatments_tried": ["discectomy"]}, "treatments_tried[0]"),  # a pathway that is not a recorded treatment
    ({"sex": "lumbar"}, "sex"),
    ({"pain_regions": ["lumbar"]}, "pain_regions[0]"),           # a spinal region
    ({"injection": {"date": "2026-06-10", "approach": "lumbar"}}, "injection.approach"),
    ({"injection": {"date": "2026-06-10", "spinal_region": "caudal"}}, "injection.spinal_region"),
    ({"diagnostic_blocks": [{"target": "nerve-root", "date": "2026-07-01", "relief_percent": 60}]},
     "diagnostic_blocks[0].target"),
]


@pytest.mark.parametrize(("fields", "path"), WRONG_VALUE_SET, ids=[f"{p}={next(iter(f.values()))}"[:60]
                                                                  for f, p in WRONG_VALUE_SET])
def test_code_from_another_value_set(kb: KnowledgeBase, make_case, fields: dict[str, Any], path: str) -> None:
    assert paths(kb, make_case(**fields)) == {path}


@pytest.mark.parametrize(("field", "code"), [
    ("diagnoses", "NerveRootCondition"),
    ("diagnoses", "Condition"),
    ("findings", "CompressiveFinding"),
    ("red_flags", "MotorWeakness"),
])
def test_grouping_class_is_not_a_code(kb: KnowledgeBase, make_case, field: str, code: str) -> None:
    """The ontology's grouping classes (kinds of codes) are not codes a case may use."""
    assert paths(kb, make_case(**{field: [code]})) == {f"{field}[0]"}


# -- types --------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "path"), [
    ({"age": "61"}, "age"),
    ({"age": 61.5}, "age"),
    ({"age": True}, "age"),
    ({"prior_spinal_surgery": "yes"}, "prior_spinal_surgery"),
    ({"pain_scores": {"date": "2026-06-10", "score": 8}}, "pain_scores"),
    ({"injection": "2026-06-10"}, "injection"),
    ({"diagnoses": "radiculopathy"}, "diagnoses"),
    ({"sex": 1}, "sex"),
    ({"injection": {"date": 20260610}}, "injection.date"),
], ids=["age-string", "age-float", "age-bool", "prior-surgery-string", "pain-scores-object", "injection-string",
        "diagnoses-string", "sex-number", "date-number"])
def test_wrong_type(kb: KnowledgeBase, make_case, fields: dict[str, Any], path: str) -> None:
    assert paths(kb, make_case(**fields)) == {path}


@pytest.mark.parametrize("score", ["3", 3.5, None, [3]], ids=["string", "float", "null", "array"])
def test_score_of_the_wrong_type(kb: KnowledgeBase, make_case, score: Any) -> None:
    assert paths(kb, with_score(make_case, 1, score=score)) == {"pain_scores[1].score"}


@pytest.mark.parametrize("relief", ["60", True], ids=["string", "bool"])
def test_relief_percent_of_the_wrong_type(kb: KnowledgeBase, make_case, relief: Any) -> None:
    case = make_case(diagnostic_blocks=[{"target": "facet-joint", "date": "2026-07-01", "relief_percent": relief}])
    assert paths(kb, case) == {"diagnostic_blocks[0].relief_percent"}


# -- ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize("age", [17, 121, 0, -30])
def test_age_out_of_range(kb: KnowledgeBase, make_case, age: int) -> None:
    assert paths(kb, make_case(age=age)) == {"age"}


@pytest.mark.parametrize("age", [18, 120])
def test_age_at_the_limits(kb: KnowledgeBase, make_case, age: int) -> None:
    accepted(kb, make_case(age=age))


@pytest.mark.parametrize("score", [-1, 11])
def test_score_out_of_range(kb: KnowledgeBase, make_case, score: int) -> None:
    assert paths(kb, with_score(make_case, 1, score=score)) == {"pain_scores[1].score"}


@pytest.mark.parametrize(("score", "relief"), [(0, 100), (10, -25)])
def test_score_at_the_limits_after_the_injection(kb: KnowledgeBase, make_case, score: int, relief: float) -> None:
    answer = accepted(kb, make_case(scores=[(0, 8), (14, score)]))
    assert answer["response"]["best_relief_percent"] == relief


def test_baseline_of_10(kb: KnowledgeBase, make_case) -> None:
    answer = accepted(kb, make_case(scores=[(0, 10), (14, 4)]))
    assert answer["response"]["baseline_score"] == 10
    assert answer["response"]["category"] == "provisional-responder"  # 60 %


def test_baseline_of_0(kb: KnowledgeBase, make_case) -> None:
    assert paths(kb, make_case(scores=[(0, 0), (14, 0)])) == {"pain_scores[0].score"}


def test_score_of_0_before_the_baseline_is_allowed(kb: KnowledgeBase, make_case) -> None:
    answer = accepted(kb, make_case(scores=[(-20, 0), (0, 8), (14, 8)]))
    assert answer["response"]["baseline_score"] == 8


@pytest.mark.parametrize("relief", [101, -1, 1000])
def test_relief_percent_out_of_range(kb: KnowledgeBase, make_case, relief: int) -> None:
    case = make_case(diagnostic_blocks=[{"target": "facet-joint", "date": "2026-07-01", "relief_percent": relief}])
    assert paths(kb, case) == {"diagnostic_blocks[0].relief_percent"}


@pytest.mark.parametrize("relief", [0, 100, 62.5])
def test_relief_percent_in_range(kb: KnowledgeBase, make_case, relief: float) -> None:
    accepted(kb, make_case(diagnostic_blocks=[{"target": "facet-joint", "date": "2026-07-01",
                                               "relief_percent": relief}]))


# -- required fields ------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["age", "pain_regions", "injection", "pain_scores"])
def test_required_field_missing(kb: KnowledgeBase, make_case, field: str) -> None:
    case = make_case()
    del case[field]
    assert paths(kb, case) == {field}


@pytest.mark.parametrize("field", ["pain_regions", "pain_scores"])
def test_required_list_empty(kb: KnowledgeBase, make_case, field: str) -> None:
    assert paths(kb, make_case(**{field: []})) == {field}


def test_injection_date_missing(kb: KnowledgeBase, make_case) -> None:
    assert paths(kb, make_case(injection={"approach": "caudal", "spinal_region": "lumbar"})) == {"injection.date"}


@pytest.mark.parametrize("field", ["sex", "diagnoses", "findings", "prior_spinal_surgery", "red_flags",
                                   "treatments_tried", "diagnostic_blocks", "id"])
def test_optional_field_may_be_left_out(kb: KnowledgeBase, make_case, field: str) -> None:
    case = make_case()
    del case[field]
    accepted(kb, case)


def test_block_needs_target_date_and_relief(kb: KnowledgeBase, make_case) -> None:
    case = make_case(diagnostic_blocks=[{}])
    assert paths(kb, case) == {"diagnostic_blocks[0].target", "diagnostic_blocks[0].date",
                               "diagnostic_blocks[0].relief_percent"}


# -- dates ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["2026-02-30", "10/06/2026", "2026-6-10", "2026-06-10T09:00:00", ""])
def test_injection_date_that_does_not_parse(kb: KnowledgeBase, make_case, bad: str) -> None:
    assert paths(kb, make_case(injection={"date": bad})) == {"injection.date"}


@pytest.mark.parametrize("bad", ["2026-02-30", "24/06/2026"])
def test_score_date_that_does_not_parse(kb: KnowledgeBase, make_case, bad: str) -> None:
    assert paths(kb, with_score(make_case, 1, date=bad)) == {"pain_scores[1].date"}


def test_block_date_that_does_not_parse(kb: KnowledgeBase, make_case) -> None:
    case = make_case(diagnostic_blocks=[{"target": "facet-joint", "date": "2026-02-30", "relief_percent": 60}])
    assert paths(kb, case) == {"diagnostic_blocks[0].date"}


def test_pain_score_in_the_future(kb: KnowledgeBase, make_case) -> None:
    assert paths(kb, with_score(make_case, 1, date="2999-01-01")) == {"pain_scores[1].date"}


def test_injection_in_the_future(kb: KnowledgeBase, make_case) -> None:
    assert "injection.date" in paths(kb, make_case(injection={"date": "2999-01-01"}))


def test_block_in_the_future(kb: KnowledgeBase, make_case) -> None:
    case = make_case(diagnostic_blocks=[{"target": "facet-joint", "date": "2999-01-01", "relief_percent": 60}])
    assert paths(kb, case) == {"diagnostic_blocks[0].date"}


def test_no_score_on_or_before_the_injection(kb: KnowledgeBase, make_case) -> None:
    assert paths(kb, make_case(scores=[(1, 8), (14, 8)])) == {"pain_scores"}


# -- ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["has space", "a" * 65, "", "slash/in/id", 42], ids=["space", "65-chars", "empty",
                                                                                    "slash", "number"])
def test_bad_id(kb: KnowledgeBase, make_case, bad: Any) -> None:
    assert paths(kb, make_case(id=bad)) == {"id"}


@pytest.mark.parametrize("good", ["a" * 64, "Case_1.v2-x", "7"])
def test_good_id_names_the_answer(kb: KnowledgeBase, make_case, good: str) -> None:
    assert accepted(kb, make_case(id=good))["case"] == good


# -- malformed JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize("body", [[], "a case", 42, None, [{"age": 61}]], ids=["list", "string", "number", "null",
                                                                              "list-of-case"])
def test_body_that_is_not_an_object(kb: KnowledgeBase, body: Any) -> None:
    with pytest.raises(MalformedInput):
        kb.read_json(body)


def test_malformed_problem_is_a_400() -> None:
    with pytest.raises(MalformedInput) as info:
        cases.load_json(b'{"age": 61,')
    assert info.value.problem()["status"] == 400


@pytest.mark.parametrize("body", ['{"age": NaN}', '{"age": Infinity}', '{"age": -Infinity}', '[NaN]'])
def test_json_with_nan(body: str) -> None:
    with pytest.raises(MalformedInput):
        cases.load_json(body)


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json(depth: int) -> None:
    with pytest.raises(MalformedInput):
        cases.load_json("[" * depth + "]" * depth)
    with pytest.raises(MalformedInput):
        cases.load_json('{"a": ' * depth + "1" + "}" * depth)


@pytest.mark.parametrize("body", [b"\xff\xfe{", b"", b"{'age': 61}"], ids=["bad-utf8", "empty", "single-quotes"])
def test_json_that_does_not_parse(body: bytes) -> None:
    with pytest.raises(MalformedInput):
        cases.load_json(body)


def test_ordinary_case_loads(make_case) -> None:
    case = make_case()
    assert cases.load_json(json.dumps(case).encode()) == case


# -- JSON round trip ---------------------------------------------------------------------------


def normalised(case: dict[str, Any]) -> dict[str, Any]:
    """Lists as sorted lists: the contract gives their members no order."""
    return {k: sorted(v, key=lambda x: json.dumps(x, sort_keys=True)) if isinstance(v, list) else v
            for k, v in case.items()}


@pytest.mark.parametrize("path", VIGNETTES, ids=[p.stem for p in VIGNETTES])
def test_json_round_trip(kb: KnowledgeBase, path: Path) -> None:
    case = json.loads(path.read_text(encoding="utf-8"))["case"]
    graph = kb.read_json(case)
    assert normalised(cases.to_json(graph.graph, graph.iri, graph.contract)) == normalised(case)


def test_json_round_trip_of_a_rich_case(kb: KnowledgeBase) -> None:
    case = json.loads(TWIN.with_suffix(".json").read_text(encoding="utf-8"))
    graph = kb.read_json(case)
    assert normalised(cases.to_json(graph.graph, graph.iri, graph.contract)) == normalised(case)


# -- Turtle and JSON-LD -------------------------------------------------------------------------


def answer_rdf(kb: KnowledgeBase, body: bytes, media_type: str) -> dict[str, Any]:
    return kb.reason([kb.read_rdf(body, media_type)])[0].answer


@pytest.fixture(scope="module")
def twin_answer(kb: KnowledgeBase) -> dict[str, Any]:
    answer = kb.answer_json(json.loads(TWIN.with_suffix(".json").read_text(encoding="utf-8")))
    assert answer["response"]["category"] == "secondary-non-responder"
    return answer


@pytest.mark.parametrize(("suffix", "media_type"), [(".ttl", TURTLE), (".jsonld", JSON_LD)])
def test_rdf_case_answers_as_its_json_twin(kb: KnowledgeBase, twin_answer: dict[str, Any], suffix: str,
                                           media_type: str) -> None:
    answer = answer_rdf(kb, TWIN.with_suffix(suffix).read_bytes(), media_type)
    assert answer == twin_answer


def test_rdf_case_reads_back_as_its_json_twin(kb: KnowledgeBase) -> None:
    graph = kb.read_rdf(TWIN.with_suffix(".ttl").read_bytes(), TURTLE)
    twin = json.loads(TWIN.with_suffix(".json").read_text(encoding="utf-8"))
    assert normalised(cases.to_json(graph.graph, graph.iri, graph.contract)) == normalised(twin)


CASE = "<https://w3id.org/esi-kg/case/rdf-twin>"
OWL = "http://www.w3.org/2002/07/owl#"
RDFS = "http://www.w3.org/2000/01/rdf-schema#"


def twin_turtle(extra: str) -> bytes:
    return TWIN.with_suffix(".ttl").read_bytes() + b"\n" + extra.encode()


@pytest.mark.parametrize("extra", [
    f"esi:herniated-disc <{RDFS}subClassOf> esi:facet-joint-arthritis .",
    f"esi:foot-drop <{RDFS}subClassOf> esi:muscle-strain .",
    f"{CASE} <{OWL}sameAs> <https://w3id.org/esi-kg/case/another> .",
    f"{CASE} esi:hasDiagnosis <https://example.org/d> . <https://example.org/d> a <{OWL}Class> .",
    f"{CASE} esi:hasDiagnosis [ a esi:my-condition ] . esi:my-condition <{RDFS}subClassOf> esi:herniated-disc .",
    f"esi:NonResponder <{OWL}equivalentClass> esi:PatientCase .",
], ids=["subClassOf", "red-flag-as-muscle", "sameAs", "owl-Class", "own-subclass", "equivalentClass"])
def test_rdf_case_may_not_bring_schema(kb: KnowledgeBase, extra: str) -> None:
    with pytest.raises(InvalidCase):
        answer_rdf(kb, twin_turtle(extra), TURTLE)


@pytest.mark.parametrize("extra", [
    f"{CASE} esi:hasApplicablePathway esi:discectomy .",
    f"{CASE} a esi:NonResponder .",
    f"{CASE} esi:hasResponseCategory esi:responder .",
    f"{CASE} esi:hasSuspectedFailureCause esi:structural-severity .",
    f"{CASE} esi:hasSuspectedPainSource esi:muscle .",
    f"{CASE} esi:hasPositiveBlockAt esi:sacroiliac-joint .",
    f"{CASE} esi:bestReliefPercent 100 .",
    f"{CASE} a esi:CaseWithoutRedFlag .",
], ids=["pathway", "typed-non-responder", "category", "cause", "pain-source", "positive-block", "observation",
        "without-red-flag"])
def test_rdf_case_may_not_assert_conclusions(kb: KnowledgeBase, extra: str) -> None:
    with pytest.raises(InvalidCase):
        answer_rdf(kb, twin_turtle(extra), TURTLE)


@pytest.mark.parametrize("body", [b"this is not turtle", b"<a> <b> .", b"@prefix esi: <x> . esi:a esi:b"])
def test_malformed_turtle(kb: KnowledgeBase, body: bytes) -> None:
    with pytest.raises(MalformedInput):
        kb.read_rdf(body, TURTLE)


def test_turtle_without_a_case(kb: KnowledgeBase) -> None:
    with pytest.raises(InvalidCase):
        answer_rdf(kb, b"<https://example.org/x> <https://example.org/p> 1 .", TURTLE)


@pytest.fixture
def context_server() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that serves a JSON-LD context and records every request made to it."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            body = json.dumps({"@context": {"@vocab": "https://w3id.org/esi-kg/ontology#"}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/ld+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/context.jsonld", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("shape", ["string", "list", "import"])
def test_jsonld_remote_context_is_refused_without_fetching(kb: KnowledgeBase, context_server, shape: str) -> None:
    url, requests = context_server
    context: Any = {"string": url, "list": [url], "import": {"@import": url}}[shape]
    doc = {"@context": context, "@id": "https://w3id.org/esi-kg/case/remote", "@type": "PatientCase", "ageInYears": 61}
    with pytest.raises(MalformedInput):
        kb.read_rdf(json.dumps(doc).encode(), JSON_LD)
    assert requests == []
