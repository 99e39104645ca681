"""The named queries (``queries/*.rq``): their rows over a known set of stored cases, and their contract.

The stored cases are the public vignettes and the constructed cases of ``tests/data/queries/``.
Rows are checked against the vignettes' expectations and the answers ``POST /cases`` returned,
so a query and the answer builder are two independent readings of the same graphs.
"""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import pyoxigraph as ox
import pytest
from flask import Flask
from flask.testing import FlaskClient

from kgservice.api import create_app
from kgservice.config import Settings
from kgservice.core.ontology import Ontology
from kgservice.errors import OntologyError
from kgservice.http.queries import PARAM_TYPES, parse_query_file

DATA = Path(__file__).parent / "data"
CASE_FILES = sorted((DATA / "vignettes").glob("*.json")) + sorted((DATA / "queries").glob("*.json"))
QUERY_FILES = sorted(Settings().queries_dir.glob("*.rq"))
CASE_IDS = [json.loads(p.read_text(encoding="utf-8"))["case"]["id"] for p in CASE_FILES]

ESI = "https://w3id.org/esi-kg/ontology#"
CASES = "https://w3id.org/esi-kg/case/default/"
NON_RESPONSE = {"primary-non-responder", "secondary-non-responder"}
PROBLEM = "application/problem+json"
RESULTS_JSON = "application/sparql-results+json"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return create_app(Settings(auth_required=False, data_dir=tmp_path_factory.mktemp("queries")))


@pytest.fixture(scope="module")
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def stored(client: FlaskClient) -> dict[str, dict[str, Any]]:
    """Every case file stored through the API: id → its case, its expectations and its answer."""
    out = {}
    for path in CASE_FILES:
        vignette = json.loads(path.read_text(encoding="utf-8"))
        response = client.post("/cases", json=vignette["case"])
        assert response.status_code == 201, response.get_json()
        out[vignette["case"]["id"]] = {**vignette, "answer": response.get_json()}
    return out


@pytest.fixture(scope="module")
def vocabulary(client: FlaskClient) -> dict[str, list[str]]:
    """The codes answers use, by answer field."""
    answer = client.get("/vocabulary").get_json()["answer"]
    return {field: [entry["code"] for entry in entries] for field, entries in answer.items()}


def short(value: str) -> str:
    """An ontology IRI as its code, a stored case IRI as its id; anything else unchanged."""
    for base in (ESI, CASES):
        if value.startswith(base):
            return value[len(base):]
    return value


def rows(client: FlaskClient, name: str, **params: str) -> list[dict[str, str | None]]:
    """The rows of a named query as SPARQL JSON results, every variable present, IRIs shortened."""
    response = client.get(f"/queries/{name}", query_string=params, headers={"Accept": RESULTS_JSON})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    names = body["head"]["vars"]
    return [{v: short(b[v]["value"]) if v in b else None for v in names} for b in body["results"]["bindings"]]


def pick(found: list[dict[str, str | None]], *names: str) -> list[tuple[str | None, ...]]:
    return [tuple(row[n] for n in names) for row in found]


def conclusions(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """Every conclusion of an answer with its kind, in the answer's order."""
    out = [{"kind": "response category", "code": answer["response"]["category"], **answer["response"]}]
    for kind, key in (("suspected pain source", "pain_sources"), ("suspected failure cause", "failure_causes"),
                      ("applicable pathway", "pathways")):
        out += [{"kind": kind, **item} for item in answer[key]]
    return out


# -- the stored cases --------------------------------------------------------------------------


def test_stored_cases_get_the_answers_the_expectations_state(stored: dict[str, dict[str, Any]]) -> None:
    """The expectations below are computed from ``expect``; check it holds, constructed cases included."""
    for case_id, entry in stored.items():
        answer, expect = entry["answer"], entry["expect"]
        assert answer["response"]["category"] == expect["category"], case_id
        assert [p["code"] for p in answer["pathways"]] == expect["pathways"], case_id
        assert {c["code"] for c in answer["failure_causes"]} == set(expect["failure_causes"]), case_id
        assert {s["code"] for s in answer["pain_sources"]} == set(expect["pain_sources"]), case_id


# -- each query's rows ---------------------------------------------------------------------------


def test_cases_by_category(client: FlaskClient, stored: dict[str, dict[str, Any]],
                           vocabulary: dict[str, list[str]]) -> None:
    for category in vocabulary["response.category"]:
        found = rows(client, "cases-by-category", category=category)
        expected = [(i, category, e["case"]["injection"]["date"])
                    for i, e in sorted(stored.items()) if e["expect"]["category"] == category]
        assert pick(found, "case", "category", "injected") == expected, category
        for row in found:
            response = stored[str(row["case"])]["answer"]["response"]
            assert row["daysSinceInjection"] == str(response["days_since_injection"])


def test_cases_by_pathway_for_radiofrequency_ablation_is_p07_alone(client: FlaskClient,
                                                                    stored: dict[str, dict[str, Any]]) -> None:
    assert rows(client, "cases-by-pathway", pathway="radiofrequency-ablation") == [
        {"pathway": "radiofrequency-ablation", "case": "p07", "category": "primary-non-responder",
         "urgency": "routine"}]


def test_surgery_takes_the_urgency_of_the_consultation_that_leads_to_it(client: FlaskClient,
                                                                       stored: dict[str, dict[str, Any]]) -> None:
    assert pick(rows(client, "cases-by-pathway", pathway="discectomy"), "case", "urgency") == [
        ("p08", "urgent"), ("p10", "routine"), ("q01", "urgent")]
    assert pick(rows(client, "cases-by-pathway", pathway="laminectomy"), "case", "urgency") == [("q01", "urgent")]


def test_cases_by_pathway_agrees_with_the_answers(client: FlaskClient, stored: dict[str, dict[str, Any]],
                                                 vocabulary: dict[str, list[str]]) -> None:
    for pathway in vocabulary["pathways"]:
        expected = [(i, p["urgency"]) for i, e in sorted(stored.items())
                    for p in e["answer"]["pathways"] if p["code"] == pathway]
        found = rows(client, "cases-by-pathway", pathway=pathway)
        assert pick(found, "case", "urgency") == expected, pathway
        assert {row["pathway"] for row in found} <= {pathway}


def test_red_flag_worklist_lists_cases_without_the_urgent_consultation(client: FlaskClient,
                                                                        stored: dict[str, dict[str, Any]]) -> None:
    found = rows(client, "red-flags-without-urgent-consultation")
    assert pick(found, "case", "redFlags", "category") == [
        ("p08", "foot-drop", "primary-non-responder"), ("q02", "new-bladder-dysfunction", "responder")]
    expected = [i for i, e in sorted(stored.items()) if e["case"]["red_flags"]
                and "urgent-spine-surgeon-consultation" not in e["case"]["treatments_tried"]]
    assert [row["case"] for row in found] == expected
    assert "q01" not in expected and stored["q01"]["case"]["red_flags"] == ["foot-drop"]


def test_non_responders_by_failure_cause(client: FlaskClient, stored: dict[str, dict[str, Any]],
                                         vocabulary: dict[str, list[str]]) -> None:
    assert pick(rows(client, "non-responders-by-failure-cause", cause="medication-delivery-failure"),
                "case", "category") == [("p09", "primary-non-responder")]  # rules 1.1: not q03, a secondary one
    for cause in vocabulary["failure_causes"]:
        expected = []
        for case_id, entry in sorted(stored.items()):
            if entry["expect"]["category"] in NON_RESPONSE and cause in entry["expect"]["failure_causes"]:
                why = next(c for c in entry["answer"]["failure_causes"] if c["code"] == cause)
                expected.append((case_id, entry["expect"]["category"], short(why["rule"]["iri"]),
                                 sorted(why["because"])))
        found = rows(client, "non-responders-by-failure-cause", cause=cause)
        assert [(r["case"], r["category"], r["rule"], sorted((r["reasons"] or "").split(" | "))) for r in found] \
            == expected, cause


RED_FLAG_CLASSES = [
    ("MotorWeakness", None, "motor weakness", "RedFlag", "1"),
    ("SphincterDysfunction", None, "sphincter dysfunction", "RedFlag", "1"),
    ("foot-drop", "foot-drop", "foot drop", "MotorWeakness", "2"),
    ("new-bladder-dysfunction", "new-bladder-dysfunction", "new bladder dysfunction", "SphincterDysfunction", "2"),
    ("new-bowel-dysfunction", "new-bowel-dysfunction", "new bowel dysfunction", "SphincterDysfunction", "2"),
    ("progressive-motor-weakness", "progressive-motor-weakness", "progressive motor weakness", "MotorWeakness", "2"),
]


def test_class_hierarchy_under_red_flag(client: FlaskClient) -> None:
    found = rows(client, "class-hierarchy", term=ESI + "RedFlag")
    assert pick(found, "class", "code", "label", "parent", "depth") == RED_FLAG_CLASSES
    assert {row["term"] for row in found} == {"RedFlag"}
    assert {row["parent"]: row["parentLabel"] for row in found} == {
        "RedFlag": "red flag", "MotorWeakness": "motor weakness", "SphincterDysfunction": "sphincter dysfunction"}


def test_class_hierarchy_counts_depth_and_keeps_to_the_given_class(client: FlaskClient) -> None:
    conditions = {row["class"]: (row["parent"], row["depth"])
                  for row in rows(client, "class-hierarchy", term=ESI + "Condition")}
    assert conditions["lumbar-spinal-stenosis"] == ("spinal-stenosis", "3")
    assert conditions["NerveRootCondition"] == ("Condition", "1")
    assert "Condition" not in conditions and "RedFlag" not in conditions
    # a case class with superclasses outside the hierarchy (rule classes) has its one parent inside it
    cases = pick(rows(client, "class-hierarchy", term=ESI + "PatientCase"), "class", "parent")
    assert ("NonResponder", "PatientCase") in cases
    assert not [c for c, parent in cases if parent != "PatientCase" and parent not in {c2 for c2, _ in cases}]
    assert rows(client, "class-hierarchy", term=ESI + "NoSuchClass") == []


def conditions_of(row: dict[str, str | None]) -> set[frozenset[str]]:
    """Conditions written "(a AND b) OR (c)": each one in parentheses, so AND and OR never mix."""
    text = row["conditions"] or ""
    alternatives = text.split(" OR ") if text else []
    assert all(c.startswith("(") and c.endswith(")") and "(" not in c[1:-1] for c in alternatives), text
    return {frozenset(c[1:-1].split(" AND ")) for c in alternatives}


def test_pathway_rules(client: FlaskClient, stored: dict[str, dict[str, Any]],
                       vocabulary: dict[str, list[str]]) -> None:
    found = rows(client, "pathway-rules")
    by_pathway: dict[str, list[dict[str, str | None]]] = {}
    for row in found:
        by_pathway.setdefault(str(row["code"]), []).append(row)
    assert set(by_pathway) == set(vocabulary["pathways"])
    orders = [int(str(row["careOrder"])) for row in found]
    assert orders == sorted(orders)

    [rfa] = by_pathway["radiofrequency-ablation"]
    assert (rfa["rule"], rfa["ruleLabel"], rfa["section"], rfa["urgency"]) == (
        "RadiofrequencyAblationRule", "radiofrequency ablation after a positive facet block",
        "Radiofrequency Ablation (RFA)", "routine")
    assert conditions_of(rfa) == {frozenset({"non-responder", "positive diagnostic block at: facet joint"})}
    [block] = by_pathway["diagnostic-nerve-block"]
    assert conditions_of(block) == {
        frozenset({"non-responder", "suspected pain source: facet joint",
                   "no diagnostic block at: facet joint"}),
        frozenset({"non-responder", "suspected pain source: sacroiliac joint",
                   "no diagnostic block at: sacroiliac joint"})}
    [urgent] = by_pathway["urgent-spine-surgeon-consultation"]
    assert conditions_of(urgent) == {frozenset({"case with a red flag"})}
    [discectomy] = by_pathway["discectomy"]
    assert (discectomy["urgency"], discectomy["urgencyFollows"]) == (None, "SpineSurgeonConsultation")
    assert conditions_of(discectomy) == {frozenset({"surgical candidate", "diagnosis: herniated disc"})}

    # every rule an answer names for a pathway is listed for it, with the same label and section
    listed = {(row["code"], row["rule"], row["ruleLabel"], row["section"]) for row in found}
    for entry in stored.values():
        for p in entry["answer"]["pathways"]:
            rule = p["rule"]
            assert (p["code"], short(rule["iri"]), rule["label"], rule["source"]) in listed


def test_pathway_counts(client: FlaskClient, stored: dict[str, dict[str, Any]],
                        vocabulary: dict[str, list[str]]) -> None:
    expected = Counter(p for entry in stored.values() for p in entry["expect"]["pathways"])
    found = rows(client, "pathway-counts")
    assert {row["code"]: int(str(row["cases"])) for row in found} == {p: expected[p] for p in vocabulary["pathways"]}
    assert len(found) == len(vocabulary["pathways"])
    codes = [row["code"] for row in found]
    for entry in stored.values():  # answers list pathways in order of care; the counts follow it
        in_answer = entry["expect"]["pathways"]
        assert [c for c in codes if c in in_answer] == in_answer


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_case_explanations_match_the_answer(client: FlaskClient, stored: dict[str, dict[str, Any]],
                                            case_id: str) -> None:
    found = rows(client, "case-explanations", case=CASES + case_id)
    assert {row["case"] for row in found} == {case_id}
    assert [(r["kind"], r["code"], r["rule"], r["ruleLabel"], r["section"], sorted((r["reasons"] or "").split(" | ")))
            for r in found] == [
        (c["kind"], c["code"], short(c["rule"]["iri"]), c["rule"]["label"], c["rule"]["source"], sorted(c["because"]))
        for c in conclusions(stored[case_id]["answer"])]


@pytest.mark.parametrize(("flag", "expected"), [
    ("MotorWeakness", [("p08", "foot-drop", "false"), ("q01", "foot-drop", "true")]),
    ("SphincterDysfunction", [("q02", "new-bladder-dysfunction", "false")]),
    ("foot-drop", [("p08", "foot-drop", "false"), ("q01", "foot-drop", "true")]),
    ("RedFlag", [("p08", "foot-drop", "false"), ("q01", "foot-drop", "true"),
                 ("q02", "new-bladder-dysfunction", "false")]),
    ("new-bowel-dysfunction", []),
])
def test_cases_by_red_flag_follow_the_hierarchy(client: FlaskClient, stored: dict[str, dict[str, Any]],
                                                flag: str, expected: list[tuple[str, str, str]]) -> None:
    assert pick(rows(client, "cases-by-red-flag", flag=ESI + flag), "case", "code", "urgentConsultationDone") \
        == expected


def test_rule_usage_counts_the_cases_each_rule_explains(client: FlaskClient,
                                                        stored: dict[str, dict[str, Any]]) -> None:
    expected = Counter(short(rule["iri"]) for entry in stored.values()
                       for rule in {c["rule"]["iri"]: c["rule"] for c in conclusions(entry["answer"])}.values())
    found = rows(client, "rule-usage")
    counts = {row["rule"]: int(str(row["cases"])) for row in found}
    assert len(counts) == len(found)
    assert {rule: n for rule, n in counts.items() if n} == dict(expected)
    assert counts["LaminectomyRule"] == 1 and counts["MuscleSourceRule"] == 0
    # SPARQL rules are listed when they state their reasons: the response category rules, not the helpers
    assert {row["rule"] for row in found if row["kind"] == "sparql"} == {
        "rule-assessment-pending", "rule-primary-non-responder", "rule-sustained-responder",
        "rule-provisional-responder", "rule-relief-wore-off-responder", "rule-secondary-non-responder"}
    assert {row["concludes"] for row in found if row["kind"] == "owl"} >= {"radiofrequency-ablation", "facet-joint"}


# -- parameters: bound by the engine, checked before ----------------------------------------------


def problem_of(response: Any, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status
    assert response.mimetype == PROBLEM
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status
    assert "results" not in body and "bindings" not in response.get_data(as_text=True)
    return body


def test_every_required_parameter_is_asked_for(client: FlaskClient) -> None:
    for query in client.get("/queries").get_json():
        if not query["params"]:
            continue
        body = problem_of(client.get(query["href"]))
        assert {v["path"] for v in body["violations"]} == {p["name"] for p in query["params"]}, query["name"]


def test_an_unknown_parameter_is_refused(client: FlaskClient) -> None:
    body = problem_of(client.get("/queries/cases-by-category",
                                 query_string={"category": "responder", "colour": "red"}))
    assert [v["path"] for v in body["violations"]] == ["colour"]
    body = problem_of(client.get("/queries/pathway-counts", query_string={"pathway": "discectomy"}))
    assert [v["path"] for v in body["violations"]] == ["pathway"]


def test_an_unknown_code_is_refused(client: FlaskClient, stored: dict[str, dict[str, Any]]) -> None:
    body = problem_of(client.get("/queries/cases-by-pathway", query_string={"pathway": "acupuncture"}))
    assert [(v["path"], v["value"]) for v in body["violations"]] == [("pathway", "acupuncture")]


INJECTIONS = [
    ("cases-by-category", "category", "primary-non-responder> } ?x ?y ?z {"),
    ("cases-by-category", "category", "primary-non-responder\n"),
    ("cases-by-pathway", "pathway", '111" || "a"="a'),
    ("non-responders-by-failure-cause", "cause", "inaccurate-diagnosis> } UNION { ?case ?p ?o"),
    ("case-explanations", "case", CASES + "p07> } ?x ?y ?z {"),
    ("case-explanations", "case", '111" || "a"="a'),
    ("class-hierarchy", "term", ESI + "RedFlag> . ?class ?p ?o } #"),
    ("cases-by-red-flag", "flag", ESI + 'RedFlag" || "a"="a'),
]


@pytest.mark.parametrize(("name", "param", "value"), INJECTIONS)
def test_injection_attempts_are_refused_without_rows(client: FlaskClient, stored: dict[str, dict[str, Any]],
                                                     name: str, param: str, value: str) -> None:
    body = problem_of(client.get(f"/queries/{name}", query_string={param: value}))
    assert [(v["path"], v["value"]) for v in body["violations"]] == [(param, value)]


def test_an_unknown_query_is_404(client: FlaskClient) -> None:
    body = problem_of(client.get("/queries/no-such-query"), 404)
    assert "no-such-query" in body["detail"]


# -- results and listing -----------------------------------------------------------------------------


def _json(text: str) -> list[tuple[str, str]]:
    body = json.loads(text)
    return [(body["head"]["vars"][1], b["case"]["value"]) for b in body["results"]["bindings"]]


def _xml(text: str) -> list[tuple[str, str]]:
    ns = {"r": "http://www.w3.org/2005/sparql-results#"}
    root = ET.fromstring(text)
    heads = [v.get("name") for v in root.iterfind("r:head/r:variable", ns)]
    return [(str(heads[1]), str(b.findtext("r:uri", namespaces=ns)))
            for b in root.iterfind("r:results/r:result/r:binding[@name='case']", ns)]


def _csv(text: str) -> list[tuple[str, str]]:
    table = list(csv.reader(io.StringIO(text)))
    return [(table[0][1], row[1]) for row in table[1:]]


def _tsv(text: str) -> list[tuple[str, str]]:
    table = [line.split("\t") for line in text.splitlines()]
    return [(table[0][1].lstrip("?"), row[1].strip("<>")) for row in table[1:]]


@pytest.mark.parametrize(("accept", "mimetype", "parse"), [
    (RESULTS_JSON, RESULTS_JSON, _json),
    ("application/json", RESULTS_JSON, _json),
    ("application/sparql-results+xml", "application/sparql-results+xml", _xml),
    ("text/csv", "text/csv", _csv),
    ("text/tab-separated-values", "text/tab-separated-values", _tsv),
])
def test_results_negotiate_their_format(client: FlaskClient, stored: dict[str, dict[str, Any]],
                                        accept: str, mimetype: str, parse: Any) -> None:
    response = client.get("/queries/cases-by-pathway", query_string={"pathway": "radiofrequency-ablation"},
                          headers={"Accept": accept})
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert parse(response.get_data(as_text=True)) == [("case", CASES + "p07")]


def test_an_unoffered_format_is_406(client: FlaskClient) -> None:
    problem_of(client.get("/queries/pathway-counts", headers={"Accept": "text/html"}), 406)


def test_listing_names_every_query_file_with_its_parameters(client: FlaskClient) -> None:
    listed = {q["name"]: q for q in client.get("/queries").get_json()}
    assert sorted(listed) == [p.stem for p in QUERY_FILES]
    for name, query in listed.items():
        assert query["summary"] and query["description"], name
        assert query["href"] == f"/queries/{name}"
        for p in query["params"]:
            assert p["type"] in PARAM_TYPES and p["description"] and p["example"], (name, p)
        response = client.get(query["href"], query_string={p["name"]: p["example"] for p in query["params"]})
        assert response.status_code == 200, (name, response.get_json())


# -- the query files, without the app: a new file is checked as soon as it exists --------------------


@pytest.fixture(scope="module")
def ontology() -> Ontology:
    return Ontology.load(Settings().ontology_path)


def test_query_files_are_found() -> None:
    assert len(QUERY_FILES) >= 7


@pytest.mark.parametrize("path", QUERY_FILES, ids=[p.stem for p in QUERY_FILES])
def test_query_file_header(path: Path, ontology: Ontology) -> None:
    query = parse_query_file(path)
    assert query.summary and query.description
    projected = [v.value for v in ox.Store().query(query.text).variables]  # type: ignore[union-attr]
    for p in query.params:
        assert p.type in PARAM_TYPES and p.description and p.example, p
        assert p.name in projected, f"{path.name}: parameter {p.name} is not in the SELECT projection"
    # the examples bind (codes of the ontology, well-formed IRIs), and the engine accepts the bindings
    bindings = query.bindings({p.name: p.example for p in query.params}, ontology.codes)
    ox.Store().query(query.text, substitutions=bindings)


def test_a_parameter_without_a_name_names_the_file() -> None:
    """Regression: keys not indented under ``- name:`` were lost, and loading failed with KeyError 'name'."""
    with pytest.raises(OntologyError, match="param-keys-not-indented.rq: every parameter needs a name"):
        parse_query_file(DATA / "queries" / "malformed" / "param-keys-not-indented.rq")
