"""A SPARQL rule is not run on a case that cannot give it a solution, and only then.

The needs are read from each rule's algebra (kgservice.core.caserules); here they are checked
to be what SPARQL means (OPTIONAL, UNION, MINUS, NOT EXISTS with a shared variable, paths that
may be empty add none), and every rule skipped for a rule case, a vignette or a generated case
is run all the same and shown to conclude nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from rdflib import Literal, URIRef

from kgservice.core import caserules
from kgservice.core.caserules import NO_NEEDS, RuleGraphs, RuleNeeds, needs_of
from kgservice.core.kb import KnowledgeBase
from kgservice.core.ontology import ESI, Ontology
from kgservice.reasoning import Reasoner
from tests.test_engines import CaseGenerator, inputs_of
from tests.test_rules import CASES as RULE_CASES
from tests.test_rules import build
from tests.test_vignettes import VIGNETTES, load_vignette

EX = "http://example.org/"


def needs(where: str) -> RuleNeeds:
    return needs_of(f"PREFIX ex: <{EX}>\nCONSTRUCT {{ $this ex:out ?x }} WHERE {{ {where} }}")


def names(iris: frozenset[str]) -> set[str]:
    return {iri.removeprefix(EX) for iri in iris}


@pytest.mark.parametrize(("where", "this_props", "props", "classes", "excluded"), [
    ("$this ex:a ?x . ?x ex:b ?y", {"a"}, {"b"}, set(), set()),
    ("$this ex:a/ex:b ?x", {"a"}, {"b"}, set(), set()),
    ("$this ^ex:a ?x", set(), {"a"}, set(), set()),
    ("$this ex:a+ ?x", {"a"}, set(), set(), set()),
    ("$this ex:a* ?x", set(), set(), set(), set()),
    ("$this ex:a? ?x", set(), set(), set(), set()),
    ("$this ex:a|ex:b ?x", set(), set(), set(), set()),
    ("?x a ex:C", set(), set(), {"C"}, set()),
    ("?x ?p ex:C", set(), set(), set(), set()),
    ("OPTIONAL { $this ex:a ?x }", set(), set(), set(), set()),
    ("$this ex:a ?x OPTIONAL { $this ex:b ?y }", {"a"}, set(), set(), set()),
    ("{ $this ex:a ?x } UNION { $this ex:b ?x }", set(), set(), set(), set()),
    ("$this ex:a ?x MINUS { $this ex:b ?x }", {"a"}, set(), set(), set()),
    ("$this ex:a ?x FILTER EXISTS { $this ex:b ?y }", {"a"}, set(), set(), set()),
    ("GRAPH ?g { $this ex:a ?x }", set(), set(), set(), set()),
    ("{ SELECT ?x WHERE { $this ex:a ?x } }", set(), set(), set(), set()),
    ("BIND (1 AS ?x) FILTER NOT EXISTS { $this ex:a ?any }", set(), set(), set(), {"a"}),
    ("$this ex:b ?x FILTER (?x > 1 && NOT EXISTS { $this ex:a ?any })", {"b"}, set(), set(), {"a"}),
    # the excluded variable is bound by the group: the test depends on each solution
    ("$this ex:b ?x FILTER NOT EXISTS { $this ex:a ?x }", {"b"}, set(), set(), set()),
    # a test inside the NOT EXISTS, a path, two patterns, another subject: not read
    ("FILTER NOT EXISTS { $this ex:a ?d . FILTER (?d > 3) }", set(), set(), set(), set()),
    ("FILTER NOT EXISTS { $this ex:a/ex:b ?d }", set(), set(), set(), set()),
    ("FILTER NOT EXISTS { $this ex:a ?d . ?d ex:b ?e }", set(), set(), set(), set()),
    ("FILTER NOT EXISTS { ?s ex:a ?d }", set(), set(), set(), set()),
    ("FILTER (!EXISTS { $this ex:a ?d } || true)", set(), set(), set(), set()),
    ("OPTIONAL { $this ex:b ?x FILTER NOT EXISTS { $this ex:a ?any } }", set(), set(), set(), set()),
])
def test_needs_are_read_from_the_required_part_only(where: str, this_props: set[str], props: set[str],
                                                    classes: set[str], excluded: set[str]) -> None:
    found = needs(where)
    assert (names(found.this_props), names(found.props), names(found.classes), names(found.excluded)) \
        == (this_props, props, classes, excluded)


@pytest.mark.parametrize(("where", "reads", "classes"), [
    ("$this ex:a ?x OPTIONAL { ?x ex:b/ex:c ?y } FILTER NOT EXISTS { ?x ^ex:d ?z }", {"a", "b", "c", "d"}, set()),
    ("{ $this ex:a ?x } UNION { $this ex:b|ex:c+ ?x } MINUS { $this ex:e ?x }", {"a", "b", "c", "e"}, set()),
    ("?x a ex:C FILTER NOT EXISTS { ?x ex:a ?d . FILTER (?d > 1) }", {"a", "type"}, {"C"}),
    ("?x a ?c", {"type"}, None),
    ("?x ex:a/rdf:type ?c", {"a", "type"}, None),
    ("$this ?p ?x", None, None),
    ("$this ex:a* ?x", None, None),
    ("$this !ex:a ?x", None, None),
    ("GRAPH ?g { $this ex:a ?x }", None, None),
    ("FILTER NOT EXISTS { $this ex:a ?d . FILTER EXISTS { ?d ?p ?z } }", None, None),
])
def test_what_a_rule_reads_is_every_pattern(where: str, reads: set[str] | None, classes: set[str] | None) -> None:
    found = needs(where.replace("rdf:type", "<http://www.w3.org/1999/02/22-rdf-syntax-ns#type>"))
    as_names = None if found.reads is None else {n.rsplit("#", 1)[-1] for n in names(found.reads)}
    assert as_names == reads
    assert (None if found.read_classes is None else names(found.read_classes)) == classes


def test_an_unreadable_rule_is_always_run() -> None:
    assert needs_of("CONSTRUCT { $this <http://example.org/p> ?x } WHERE { this is not SPARQL }") is NO_NEEDS


def test_needs_are_read_once_and_kept(kb: KnowledgeBase, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    queries = [rule.query for rule in kb.ontology.sparql_rules]
    cache = tmp_path / "cache" / "needs.json"
    read = caserules.needs_of_rules(queries, cache)
    assert cache.exists() and any(read.values())

    def unread(query: str) -> RuleNeeds:
        raise AssertionError("read again")

    monkeypatch.setattr(caserules, "needs_of", unread)
    assert caserules.needs_of_rules(queries, cache) == read


def test_needs_kept_by_another_version_of_the_reading_are_read_again(kb: KnowledgeBase, tmp_path: Any,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A data dir's cache outlives an upgrade: needs read by older code (which may have had a bug
    that skipped a rule wrongly) must not decide what runs."""
    queries = [rule.query for rule in kb.ontology.sparql_rules]
    cache = tmp_path / "needs.json"
    caserules.needs_of_rules(queries, cache)
    wrong = RuleNeeds(classes=frozenset({"urn:nothing-has-this-class"}))
    monkeypatch.setattr(caserules, "_READER", "an older reader")
    monkeypatch.setattr(caserules, "needs_of", lambda query: wrong)
    assert set(caserules.needs_of_rules(queries, cache).values()) == {wrong}


def test_the_shipped_rules_have_needs(kb: KnowledgeBase) -> None:
    """The response-category rules stop once a category is there, and the block rules need a block."""
    by_name = {rule.term.iri.removeprefix(str(ESI)): needs_of(rule.query) for rule in kb.ontology.sparql_rules}
    assert str(ESI.hasResponseCategory) in by_name["rule-secondary-non-responder"].excluded
    assert str(ESI.hasDiagnosticBlock) in by_name["rule-positive-block"].this_props


def test_a_skipped_rule_would_have_concluded_nothing(kb: KnowledgeBase, make_case: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rule is run on every case; where its needs were unmet, it constructs nothing."""
    real_run = RuleGraphs.run
    skipped: set[str] = set()

    def run_all(self: RuleGraphs, rule: Any, needs: RuleNeeds, iri: URIRef) -> list[Any]:
        new = real_run(self, rule, NO_NEEDS, iri)
        if not needs.met_by(self.shape[iri], self.support):
            skipped.add(str(rule.term.iri))
            assert not new, f"{rule.term.iri} was to be skipped for {iri}, but constructs {new}"
        return new

    monkeypatch.setattr(RuleGraphs, "run", run_all)
    cases = [build(make_case, {**param.values[0]["case"], "id": f"r{i}"}) for i, param in enumerate(RULE_CASES)]
    cases += [load_vignette(p)["case"] for p in VIGNETTES]
    cases += CaseGenerator(kb.vocabulary["input"], seed=31).cases(100, prefix="skip")
    for case in inputs_of(kb, cases):
        kb.reasoner.infer([case])
    assert len(skipped) >= 5, skipped  # the check above saw real skips


@pytest.mark.parametrize("where", [
    "$this a esi:NonResponder",
    "$this ?p esi:NonResponder",  # reads every fact
    "$this a ?c FILTER (?c = esi:NonResponder)",  # reads every class
])
def test_a_later_stratum_rule_sees_the_closure_facts_it_names(kb: KnowledgeBase, make_case: Any, where: str) -> None:
    """Stratum 2 rules get only the closure facts some rule of theirs could match: never one too few."""
    assert kb.ontology.path is not None
    rule = f"""
@prefix esi: <https://w3id.org/esi-kg/ontology#> .
@prefix sh: <http://www.w3.org/ns/shacl#> .
esi:rule-test-closure a sh:SPARQLRule ;
    sh:order 50 ; esi:stratum 2 ; sh:prefixes <https://w3id.org/esi-kg/ontology> ;
    sh:construct \"\"\"PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>
      CONSTRUCT {{ $this esi:statement "a non-responder" }} WHERE {{ {where} }}\"\"\" .
"""
    reasoner = Reasoner(Ontology.from_turtle(kb.ontology.path.read_bytes() + rule.encode()))
    case = kb.reasoner_input(kb.read_json(make_case()))  # a primary non-responder
    inferred = reasoner.infer([case])[case.iri]
    assert (case.iri, ESI.statement, Literal("a non-responder")) in inferred


_RULE = """
@prefix esi: <https://w3id.org/esi-kg/ontology#> .
@prefix sh: <http://www.w3.org/ns/shacl#> .
esi:rule-test-block-said a sh:SPARQLRule ;
    sh:order 50 ; esi:stratum 1 ; sh:prefixes <https://w3id.org/esi-kg/ontology> ;
    sh:construct \"\"\"CONSTRUCT {{ $this esi:statement ?text }} WHERE {{
      {where}
      BIND (IF(BOUND(?b), "a block", "no block") AS ?text) }}\"\"\" .
"""


@pytest.mark.parametrize(("where", "without_block", "with_block"), [
    ("OPTIONAL { $this esi:hasDiagnosticBlock ?b }", "no block", "a block"),
    ("$this esi:hasDiagnosticBlock ?b", None, "a block"),
])
def test_a_rule_added_to_the_ontology_fires_as_written(kb: KnowledgeBase, make_case: Any, where: str,
                                                       without_block: str | None, with_block: str) -> None:
    """A pattern that is optional does not keep the rule from a case that lacks it; a required one does."""
    assert kb.ontology.path is not None
    turtle = kb.ontology.path.read_bytes() + _RULE.format(where=where).encode()
    reasoner = Reasoner(Ontology.from_turtle(turtle))
    block = {"date": make_case.day(20), "target": "facet-joint", "relief_percent": 80}
    for blocks, said in (([], without_block), ([block], with_block)):
        case = kb.reasoner_input(kb.read_json(make_case(diagnostic_blocks=blocks)))
        inferred = reasoner.infer([case])[case.iri]
        statements = {o for s, p, o in inferred if s == case.iri and p == ESI.statement}
        assert statements == ({Literal(said)} if said else set())
