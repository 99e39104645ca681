"""The built-in SHACL engine against pyshacl, the reference: same violations, same messages.

Three layers: SHACL Core features on small hand-made graphs (including features the case
shapes do not use yet, so a curator can use them); the case shapes on seeded random
mutations of valid cases, as JSON and as RDF; and the SHACL-SPARQL constraints run for all
focus nodes at once against one run per focus node.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from typing import Any

import pyoxigraph as ox
import pytest
from pyshacl import validate as pyshacl_validate
from rdflib import RDF, RDFS, XSD, BNode, Graph, Literal, URIRef
from rdflib.namespace import SH

from kgservice.config import Settings
from kgservice.core import shacl
from kgservice.core.kb import KnowledgeBase
from kgservice.core.ontology import ESI
from kgservice.core.shaclsparql import SparqlConstraints
from kgservice.core.validation import CaseValidator, load_shapes
from kgservice.errors import ESIError

PREFIXES = """
@prefix sh: <http://www.w3.org/ns/shacl#> .
@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .
@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .
@prefix ex: <http://example.org/> .
"""

# (name, shapes, data): each data graph breaks its shapes in some ways and keeps them in others.
CORE_CASES = [
    ("counts-datatype-range", """
        ex:S a sh:NodeShape ; sh:targetClass ex:Person ;
            sh:property [ sh:path ex:age ; sh:minCount 1 ; sh:maxCount 1 ; sh:datatype xsd:integer ;
                          sh:minInclusive 0 ; sh:maxExclusive 150 ] .""", """
        ex:a a ex:Person ; ex:age 30 .
        ex:b a ex:Person .
        ex:c a ex:Person ; ex:age 1, 2 .
        ex:d a ex:Person ; ex:age "x"^^xsd:integer .
        ex:e a ex:Person ; ex:age 150 .
        ex:f a ex:Person ; ex:age "30" .
        ex:g a ex:Student ; ex:age -1 .
        ex:Student rdfs:subClassOf ex:Person ."""),
    ("class-nodekind-in", """
        ex:S a sh:NodeShape ; sh:targetSubjectsOf ex:pet ;
            sh:property [ sh:path ex:pet ; sh:class ex:Animal ; sh:nodeKind sh:IRI ] ;
            sh:property [ sh:path ex:colour ; sh:in ( "red" "blue" ex:Green ) ] .""", """
        ex:Dog rdfs:subClassOf ex:Animal .
        ex:a ex:pet ex:rex ; ex:colour "red" . ex:rex a ex:Dog .
        ex:b ex:pet ex:stone ; ex:colour ex:Green, "pink" .
        ex:c ex:pet [ a ex:Animal ] ; ex:colour "red"@en .
        ex:d ex:pet "rex" ."""),
    ("strings", """
        ex:S a sh:NodeShape ; sh:targetObjectsOf ex:code ;
            sh:pattern "^[A-Z]{2}[0-9]+$" ; sh:minLength 3 ; sh:maxLength 5 .
        ex:T a sh:NodeShape ; sh:targetObjectsOf ex:name ; sh:pattern "^ab" ; sh:flags "i" .""", """
        ex:a ex:code "AB12", "ab12", "A1", "ABCDEF1" ; ex:name "ABba", "ba" .
        ex:b ex:code ex:AB12 , [ ex:x 1 ] ."""),
    ("languages", """
        ex:S a sh:NodeShape ; sh:targetSubjectsOf ex:label ;
            sh:property [ sh:path ex:label ; sh:languageIn ( "en" "fr" ) ; sh:uniqueLang true ] .""", """
        ex:a ex:label "a"@en, "b"@en-GB, "c"@fr .
        ex:b ex:label "a"@de, "b"@EN, "c"@en, "d" ."""),
    ("logic", """
        ex:Named a sh:NodeShape ; sh:property [ sh:path ex:name ; sh:minCount 1 ] .
        ex:Aged a sh:NodeShape ; sh:property [ sh:path ex:age ; sh:minCount 1 ] .
        ex:S a sh:NodeShape ; sh:targetClass ex:Thing ;
            sh:or ( ex:Named ex:Aged ) .
        ex:T a sh:NodeShape ; sh:targetClass ex:Thing ;
            sh:xone ( ex:Named ex:Aged ) .
        ex:U a sh:NodeShape ; sh:targetClass ex:Thing ;
            sh:not ex:Aged .
        ex:V a sh:NodeShape ; sh:targetClass ex:Thing ;
            sh:and ( ex:Named [ sh:property [ sh:path ex:kind ; sh:hasValue ex:Good ] ] ) .
        ex:W a sh:NodeShape ; sh:targetSubjectsOf ex:friend ;
            sh:property [ sh:path ex:friend ; sh:node ex:Named ] .""", """
        ex:a a ex:Thing ; ex:name "a" ; ex:kind ex:Good .
        ex:b a ex:Thing ; ex:name "b" ; ex:age 3 .
        ex:c a ex:Thing ; ex:kind ex:Bad .
        ex:d a ex:Thing ; ex:age 4 ; ex:friend ex:a, ex:c ."""),
    ("pairs", """
        ex:S a sh:NodeShape ; sh:targetClass ex:Span ;
            sh:property [ sh:path ex:start ; sh:lessThan ex:end ] ;
            sh:property [ sh:path ex:low ; sh:lessThanOrEquals ex:high ] ;
            sh:property [ sh:path ex:a ; sh:equals ex:b ] ;
            sh:property [ sh:path ex:a ; sh:disjoint ex:c ] .""", """
        ex:x a ex:Span ; ex:start 1 ; ex:end 2 ; ex:low 3 ; ex:high 3 ; ex:a 1 ; ex:b 1 ; ex:c 2 .
        ex:y a ex:Span ; ex:start 2 ; ex:end 2 ; ex:low 4 ; ex:high 3 ; ex:a 1, 2 ; ex:b 2, 3 ; ex:c 1 ."""),
    ("paths", """
        ex:S a sh:NodeShape ; sh:targetNode ex:root ;
            sh:property [ sh:path [ sh:inversePath ex:parent ] ; sh:minCount 2 ; sh:class ex:Node ] ;
            sh:property [ sh:path ( ex:child ex:name ) ; sh:datatype xsd:string ] ;
            sh:property [ sh:path [ sh:alternativePath ( ex:child ex:parent ) ] ; sh:maxCount 1 ] ;
            sh:property [ sh:path [ sh:oneOrMorePath ex:child ] ; sh:nodeKind sh:IRI ] ;
            sh:property [ sh:path [ sh:zeroOrMorePath ex:child ] ; sh:class ex:Node ] ;
            sh:property [ sh:path [ sh:zeroOrOnePath ex:child ] ; sh:minCount 3 ] .""", """
        ex:root a ex:Node ; ex:child ex:k1, ex:k2 .
        ex:k1 a ex:Node ; ex:parent ex:root ; ex:name "one" ; ex:child _:deep .
        ex:k2 ex:name 2 .
        _:deep a ex:Node ."""),
    ("closed-severity-deactivated", """
        ex:S a sh:NodeShape ; sh:targetClass ex:Box ; sh:closed true ; sh:ignoredProperties ( ex:note ) ;
            sh:property [ sh:path ex:size ; sh:maxCount 1 ] .
        ex:W a sh:NodeShape ; sh:targetClass ex:Box ; sh:severity sh:Warning ;
            sh:property [ sh:path ex:size ; sh:minCount 1 ] .
        ex:D a sh:NodeShape ; sh:targetClass ex:Box ; sh:deactivated true ;
            sh:property [ sh:path ex:size ; sh:minCount 5 ] .""", """
        ex:a a ex:Box ; ex:size 1 ; ex:note "n" .
        ex:b a ex:Box ; ex:colour "red", "blue" ; ex:size 1, 2 ."""),
    ("implicit-class-target", """
        ex:Person a rdfs:Class, sh:NodeShape ; sh:property [ sh:path ex:name ; sh:minCount 1 ] .""", """
        ex:a a ex:Person ; ex:name "a" .
        ex:b a ex:Person ."""),
]


def _graph(turtle: str) -> Graph:
    return Graph().parse(data=PREFIXES + turtle, format="turtle")


def _key(focus: Any, path: Any, value: Any, component: Any) -> tuple[str, str, str, str]:
    def term(node: Any) -> str:
        return "_:b" if isinstance(node, BNode) else str(node)  # blank nodes differ between the engines

    return term(focus), term(path) if path is not None else "", term(value) if value is not None else "", str(component)


def _pyshacl_results(shapes: Graph, data: Graph) -> set[tuple[str, str, str, str]]:
    _conforms, report, _text = pyshacl_validate(data, shacl_graph=shapes, inference="none")
    out = set()
    for r in report.objects(None, SH.result):  # type: ignore[union-attr]  # top level: not sh:detail
        if report.value(r, SH.resultSeverity) != SH.Violation:  # type: ignore[union-attr]
            continue
        path = report.value(r, SH.resultPath)  # type: ignore[union-attr]
        out.add(_key(report.value(r, SH.focusNode), path, report.value(r, SH.value),  # type: ignore[union-attr]
                     report.value(r, SH.sourceConstraintComponent)))  # type: ignore[union-attr]
    return out


def _builtin_results(shapes: Graph, data: Graph) -> set[tuple[str, str, str, str]]:
    return {_key(r.focus, r.path, r.value, r.component) for r in shacl.Shapes(shapes).validate(shacl.Data(data))
            if r.severity == SH.Violation}


@pytest.mark.parametrize(("shapes", "data"), [c[1:] for c in CORE_CASES], ids=[c[0] for c in CORE_CASES])
def test_core_features_agree_with_pyshacl(shapes: str, data: str) -> None:
    shapes_graph, data_graph = _graph(shapes), _graph(data)
    expected = _pyshacl_results(shapes_graph, data_graph)
    assert expected, "each example breaks its shapes somewhere"
    assert _builtin_results(shapes_graph, data_graph) == expected


def test_values_that_cannot_be_compared_are_not_less_than_each_other() -> None:
    """SHACL 4.5.3: a pair that cannot be compared is a result (pyshacl 0.40 passes it)."""
    shapes = _graph("ex:S sh:targetNode ex:z ; sh:property [ sh:path ex:start ; sh:lessThan ex:end ] .")
    data = _graph('ex:z ex:start "2026-01-02"^^xsd:date ; ex:end 5 .')
    [result] = shacl.Shapes(shapes).validate(shacl.Data(data))
    assert result.component == SH.LessThanConstraintComponent


def test_a_shape_message_is_the_result_message() -> None:
    shapes = _graph('ex:S sh:targetNode ex:a ; sh:property [ sh:path ex:p ; sh:minCount 1 ; sh:message "p please" ] .')
    [result] = shacl.Shapes(shapes).validate(shacl.Data(_graph("ex:a ex:q 1 .")))
    assert (result.focus, result.message) == (URIRef("http://example.org/a"), "p please")


def test_unsupported_features_are_refused_not_ignored() -> None:
    shapes = _graph("""ex:S sh:targetClass ex:A ;
        sh:property [ sh:path ex:p ; sh:qualifiedValueShape [ sh:class ex:B ] ; sh:qualifiedMinCount 1 ] .""")
    with pytest.raises(shacl.Unsupported, match="qualified"):
        shacl.Shapes(shapes)


def test_recursive_shapes_are_refused() -> None:
    shapes = _graph("ex:S sh:targetNode ex:a ; sh:property [ sh:path ex:friend ; sh:node ex:S ] .")
    with pytest.raises(shacl.Unsupported, match="recursive"):
        shacl.Shapes(shapes)


def test_the_validator_falls_back_to_pyshacl_for_shapes_it_cannot_read(kb: KnowledgeBase, settings: Settings,
                                                                       make_case, caplog) -> None:
    shapes = load_shapes(settings.shapes_dir / "case.ttl")
    blank = BNode()
    shapes.add((URIRef("https://w3id.org/esi-kg/shapes#AgeShape"), SH.qualifiedValueShape, blank))
    shapes.add((blank, SH.datatype, XSD.integer))
    shapes.add((URIRef("https://w3id.org/esi-kg/shapes#AgeShape"), SH.qualifiedMinCount, Literal(1)))
    with caplog.at_level(logging.WARNING):
        validator = CaseValidator(kb.ontology, shapes, engine="builtin")
    assert validator.engine == "pyshacl"
    assert "qualified" in caplog.text
    case = make_case(age=12)
    assert [v.path for v in validator.validate(kb.read_json(case)).violations] == ["age"]


# -- the case shapes, on many broken cases -----------------------------------------------------


@pytest.fixture(scope="module")
def reference(settings: Settings) -> KnowledgeBase:
    return KnowledgeBase.from_settings(settings.with_(shacl_engine="pyshacl"))


def _codes(kb: KnowledgeBase) -> list[str]:
    return sorted({entry["code"] for entries in kb.vocabulary["input"].values() for entry in entries})


def _broken(case: dict[str, Any], codes: list[str], rnd: random.Random) -> dict[str, Any]:
    """The case with one to three random faults: a field dropped, retyped, or given a wrong code or value."""
    case = copy.deepcopy(case)
    junk = [None, 3, -5, 200, 3.5, True, "x", "2031-01-01", "2026-02-30", [], {"a": 1}]
    for _ in range(rnd.randint(1, 3)):
        name = rnd.choice([k for k in case if k != "id"])
        value = case[name]
        roll = rnd.random()
        if roll < 0.2:
            del case[name]
        elif roll < 0.4:
            case[name] = rnd.choice([*junk, [rnd.choice(codes)], rnd.choice(codes)])
        elif isinstance(value, list) and value:
            i = rnd.randrange(len(value))
            if isinstance(value[i], dict):
                value[i][rnd.choice([*value[i], "extra"])] = rnd.choice([*junk, 0, 11, 101, rnd.choice(codes)])
            else:
                value[i] = rnd.choice([*codes, "no-such-code"])
        elif isinstance(value, dict):
            value[rnd.choice([*value, "extra"])] = rnd.choice([*junk, rnd.choice(codes)])
        else:
            case[name] = rnd.choice(codes)
    return case


def _seed_cases(make_case: Any) -> list[dict[str, Any]]:
    return [
        make_case(),
        make_case(scores=[(-3, 6), (0, 7), (14, 2), (40, 6)], red_flags=["foot-drop"],
                  diagnostic_blocks=[{"target": "medial-branch", "date": make_case.day(30), "relief_percent": 80}]),
        make_case(findings=["severe-stenosis"], treatments_tried=["physical-therapy"], prior_spinal_surgery=True),
    ]


def _report(kb: KnowledgeBase, graph: Any) -> list[tuple[str, str, str | None, str]]:
    return [(v.path, v.message, v.shape, json.dumps(v.value)) for v in kb.check(graph)]


def test_case_shapes_agree_with_pyshacl_on_broken_json_cases(kb: KnowledgeBase, reference: KnowledgeBase,
                                                              make_case) -> None:
    assert kb.validator.engine == "builtin"
    rnd, codes = random.Random(7), _codes(kb)
    compared = invalid = 0
    for seed in _seed_cases(make_case):
        for _ in range(120):
            case = _broken(seed, codes, rnd)
            try:
                graph = kb.read_json(case)
            except ESIError:  # refused before SHACL (not an object, malformed id, ...)
                continue
            mine, theirs = _report(kb, graph), _report(reference, reference.read_json(case))
            assert mine == theirs, json.dumps(case)
            compared += 1
            invalid += bool(mine)
    assert compared > 250 and invalid > 150


def test_case_shapes_agree_with_pyshacl_on_broken_rdf_cases(kb: KnowledgeBase, reference: KnowledgeBase,
                                                             make_case) -> None:
    rnd = random.Random(11)
    odd_values = [Literal("abc", datatype=XSD.integer), Literal("5", datatype=XSD.string), Literal("x", lang="en"),
                  Literal("2026-02-30", datatype=XSD.date), Literal("12.5", datatype=XSD.decimal), Literal(-3),
                  Literal(150), Literal(True), Literal("2031-01-01", datatype=XSD.date), ESI.PatientCase,
                  URIRef("http://example.org/x"), ESI.PhysicalTherapy, ESI.Radiculopathy]
    compared = 0
    for seed in _seed_cases(make_case):
        graph = kb.read_json(seed).graph
        triples = sorted(graph)
        predicates = sorted({p for _, p, _ in triples}) + [URIRef("http://example.org/p")]
        for _ in range(60):
            broken = Graph()
            for t in triples:
                broken.add(t)
            for _ in range(rnd.randint(1, 3)):
                s, p, o = rnd.choice(triples)
                roll = rnd.random()
                if roll < 0.3:
                    broken.remove((s, p, o))
                elif roll < 0.6:
                    broken.remove((s, p, o))
                    broken.add((s, p, rnd.choice(odd_values)))
                else:
                    broken.add((s, rnd.choice(predicates), rnd.choice(odd_values)))
            body = broken.serialize(format="turtle").encode()
            try:
                mine_graph = kb.read_rdf(body, "text/turtle")
            except ESIError:
                continue
            assert _report(kb, mine_graph) == _report(reference, reference.read_rdf(body, "text/turtle")), \
                body.decode()
            compared += 1
    assert compared > 120


def test_sparql_constraints_give_the_same_run_once_as_per_focus_node(kb: KnowledgeBase, settings: Settings,
                                                                     make_case) -> None:
    per_focus = CaseValidator(kb.ontology, load_shapes(settings.shapes_dir / "case.ttl"), sparql_at_once=False)
    assert kb.validator.sparql_at_once, "every constraint runs at once"
    assert not per_focus.sparql_at_once
    rnd, codes = random.Random(5), _codes(kb)
    batch = []
    for seed in _seed_cases(make_case):
        for _ in range(40):
            case = _broken(seed, codes, rnd)
            scores = case.get("pain_scores")
            for score in scores if isinstance(scores, list) else []:
                if isinstance(score, dict) and rnd.random() < 0.3:
                    score["score"] = 0  # a zero baseline
                if isinstance(score, dict) and rnd.random() < 0.1:
                    score["date"] = "2031-05-05"  # in the future
            try:
                batch.append(kb.read_json(case, case_id=f"c{len(batch)}"))
            except ESIError:
                continue
    at_once = [r.violations for r in kb.validator.validate_many(batch)]
    one_by_one = [r.violations for r in per_focus.validate_many(batch)]
    assert at_once == one_by_one
    messages = {v.message for vs in at_once for v in vs}
    assert {"a date cannot be later than today", "pain_scores needs a baseline: at least one score dated on or "
            "before the injection date"} <= messages
    assert any("baseline score" in m for m in messages)


def test_sparql_constraints_find_the_same_focus_nodes_in_the_quads_as_by_their_target_patterns(
        kb: KnowledgeBase, settings: Settings, make_case) -> None:
    """Given the store's quads, each constraint's focus nodes are read from them (VALUES, or not
    run at all when there are none): the same solutions as the target patterns in the query,
    with a subclass of a target class, a literal where a part belongs, and no part at all."""
    constraints = SparqlConstraints(load_shapes(settings.shapes_dir / "case.ttl"))
    future = {"date": "2031-05-05", "score": 0}
    batch = [kb.read_json(make_case(pain_scores=[{"date": "2020-01-01", "score": 0}, future]), case_id="a"),
             kb.read_json(make_case(diagnostic_blocks=[{"target": "facet-joint", "date": "2031-01-01",
                                                         "relief_percent": 80}]), case_id="b")]
    quads = [q for case in batch for q in case.quads]
    sub, odd, date = ox.NamedNode("urn:x:SubCase"), ox.NamedNode("urn:x:odd"), ox.NamedNode(str(XSD.date))
    quads += [ox.Quad(sub, ox.NamedNode(str(RDFS.subClassOf)), ox.NamedNode(str(ESI.PatientCase))),
              ox.Quad(odd, ox.NamedNode(str(RDF.type)), sub),
              ox.Quad(odd, ox.NamedNode(str(ESI.hasInjection)), ox.NamedNode("urn:x:odd/injection")),
              ox.Quad(ox.NamedNode("urn:x:odd/injection"), ox.NamedNode(str(ESI.performedOn)),
                      ox.Literal("2020-01-01", datatype=date)),
              ox.Quad(odd, ox.NamedNode(str(ESI.hasDiagnosticBlock)), ox.Literal("2031-01-01", datatype=date)),
              ox.Quad(odd, ox.NamedNode(str(ESI.hasPainScore)), ox.NamedNode("urn:x:odd/score")),
              ox.Quad(ox.NamedNode("urn:x:odd/score"), ox.NamedNode(str(ESI.observedOn)),
                      ox.Literal("2032-02-02", datatype=date))]
    store = ox.Store()
    store.extend(quads)

    def solutions(given: list[ox.Quad] | None) -> list[tuple[str, ...]]:
        return sorted((str(focus), message, shape, *(str(row[v]) for v in ("path", "value") if v in _vars(row)))
                      for focus, row, message, shape in constraints.results(store, given))

    by_values = solutions(quads)
    assert by_values == solutions(None)
    assert {focus for focus, *_ in by_values} >= {"<urn:x:odd>", "<urn:x:odd/score>"}
    # a case without diagnostic blocks: that constraint has no focus node, and still nothing is missed
    lone = kb.read_json(make_case(pain_scores=[{"date": "2020-01-01", "score": 3}, future], diagnostic_blocks=[]),
                        case_id="c")
    assert not any(p == ESI.hasDiagnosticBlock for _, p, _ in lone.triples)
    alone = ox.Store()
    alone.extend(lone.quads)
    assert sorted(str(f) for f, *_ in constraints.results(alone, list(lone.quads))) \
        == sorted(str(f) for f, *_ in constraints.results(alone))


def _vars(row: ox.QuerySolution) -> set[str]:
    names = set()
    for name in ("path", "value"):
        try:
            if row[name] is not None:
                names.add(name)
        except KeyError:
            pass
    return names
