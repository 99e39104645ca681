"""The case contract is read from ``shapes/case.ttl``: a change there reaches every view of it.

The JSON mapping, the OpenAPI case schema and the vocabulary's groups are derived from the
shapes at start-up; these tests change a copy of the shapes and see each view follow, with
no change to Python.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from kgservice.config import Settings
from kgservice.core import cases
from kgservice.core.kb import KnowledgeBase
from kgservice.core.ontology import ESI
from kgservice.http.openapi import document
from kgservice.service import Service

WEIGHT = '''
shp:WeightShape a sh:PropertyShape ;
    sh:path esi:bodyWeightKg ; sh:name "weight_kg" ; sh:order 20 ;
    sh:maxCount 1 ; sh:datatype xsd:integer ; sh:minInclusive 30 ; sh:maxInclusive 300 ;
    sh:description "body weight in whole kilograms" ;
    sh:message "weight_kg must be a whole number of kilograms from 30 to 300" .
'''


@pytest.fixture(scope="module")
def changed(tmp_path_factory: pytest.TempPathFactory) -> Service:
    """A service whose case shapes have a new optional field and a narrower age range."""
    root = tmp_path_factory.mktemp("contract")
    shapes = root / "shapes"
    shutil.copytree(Settings().shapes_dir, shapes)
    ttl = (shapes / "case.ttl").read_text(encoding="utf-8")
    edited = ttl.replace("sh:minInclusive 18 ; sh:maxInclusive 120", "sh:minInclusive 18 ; sh:maxInclusive 110")
    edited = edited.replace("shp:TreatmentShape , shp:BlockPropertyShape ;",
                            "shp:TreatmentShape , shp:BlockPropertyShape , shp:WeightShape ;")
    assert edited.count("WeightShape") == 1 and "maxInclusive 110" in edited, "the shipped shapes changed: edit here"
    (shapes / "case.ttl").write_text(edited + WEIGHT, encoding="utf-8")
    service = Service(Settings(shapes_dir=shapes, data_dir=root / "data"))
    yield service
    service.close()


def case_schema(service: Service) -> dict[str, Any]:
    return document(service)["components"]["schemas"]["Case"]  # type: ignore[no-any-return]


def test_the_shipped_schema_has_the_shapes_ranges_and_required_fields(kb: KnowledgeBase, tmp_path: Path) -> None:
    service = Service(Settings(data_dir=tmp_path), kb=kb)
    schema = case_schema(service)
    assert schema["properties"]["age"] == {"type": "integer", "minimum": 18, "maximum": 120}
    assert schema["properties"]["pain_scores"]["items"]["properties"]["score"] == {
        "type": "integer", "minimum": 0, "maximum": 10}
    assert schema["properties"]["prior_spinal_surgery"] == {"type": "boolean", "default": False}
    assert schema["required"] == ["age", "pain_regions", "injection", "pain_scores"]
    assert list(schema["properties"]) == ["id", *kb.contract.fields]
    service.close()


def test_a_new_optional_field_reaches_the_openapi_schema(changed: Service) -> None:
    schema = case_schema(changed)
    assert schema["properties"]["weight_kg"] == {"type": "integer", "minimum": 30, "maximum": 300,
                                                 "description": "body weight in whole kilograms"}
    assert "weight_kg" not in schema["required"]
    assert list(schema["properties"])[-1] == "weight_kg"  # its sh:order


def test_a_changed_range_reaches_the_openapi_schema_and_validation(changed: Service, make_case: Any) -> None:
    assert case_schema(changed)["properties"]["age"]["maximum"] == 110
    kb = changed.kb
    assert [v.path for v in kb.check(kb.read_json(make_case(age=115)))] == ["age"]
    assert kb.check(kb.read_json(make_case(age=110))) == []


def test_a_new_field_is_mapped_to_rdf_and_back(changed: Service, make_case: Any) -> None:
    kb = changed.kb
    case = kb.read_json(make_case(weight_kg=72))
    assert kb.check(case) == []
    assert [int(o) for o in case.graph.objects(case.iri, ESI.bodyWeightKg)] == [72]
    assert cases.to_json(case.graph, case.iri, kb.contract)["weight_kg"] == 72
    too_light = kb.check(kb.read_json(make_case(weight_kg=12)))
    assert [(v.path, v.value) for v in too_light] == [("weight_kg", 12)]
    assert kb.answer_json(make_case(weight_kg=72))["response"]["category"] == "primary-non-responder"


def test_the_unchanged_service_refuses_the_new_field(kb: KnowledgeBase, make_case: Any) -> None:
    problems = kb.read_json(make_case(weight_kg=72)).problems
    assert [v.path for v in problems] == ["weight_kg"] and "unknown field" in problems[0].message


@pytest.mark.parametrize("first", [1, True, 1.0])
def test_equal_json_scalars_of_other_types_stay_other_literals(kb: KnowledgeBase, make_case: Any, first: Any) -> None:
    """Literals are built once per JSON scalar: 1, 1.0 and true are equal in Python, not in RDF."""
    kb.read_json(make_case(prior_spinal_surgery=first))
    assert kb.check(kb.read_json(make_case(prior_spinal_surgery=True))) == []
    for wrong in (1, 1.0):
        assert [v.path for v in kb.check(kb.read_json(make_case(prior_spinal_surgery=wrong)))] \
            == ["prior_spinal_surgery"]
