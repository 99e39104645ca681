"""A batch runs each SPARQL rule once for all its cases, and concludes exactly what the rule
run on each case alone concludes.

The batched form of a rule (kgservice.core.caserules.batched_rule) is checked here three ways:
its text (what the lexer skips, and every rule it must leave to the per-case run), its
template instantiation (CONSTRUCT's semantics, in Python), and its conclusions against the
per-case run on generated cases, the rule cases and the vignettes.
"""

from __future__ import annotations

from typing import Any

import pyoxigraph as ox
import pytest

from kgservice.core import caserules
from kgservice.core.caserules import RULE_CASE_MARKER, batched_rule
from kgservice.core.kb import KnowledgeBase
from kgservice.core.ontology import ESI, Ontology
from kgservice.core.terms import triple_to_ox
from kgservice.reasoning import CaseInput, Reasoner
from tests.test_engines import CaseGenerator, inputs_of
from tests.test_rules import CASES as RULE_CASES
from tests.test_rules import build
from tests.test_vignettes import VIGNETTES, load_vignette

PREFIX = "PREFIX ex: <http://example.org/>\n"


def rule(where: str, template: str = "$this ex:out ?x") -> str:
    return f"{PREFIX}CONSTRUCT {{ {template} }} WHERE {{ {where} }}"


def infer(reasoner: Reasoner, inputs: list[CaseInput], batched: bool,
          monkeypatch: pytest.MonkeyPatch) -> dict[Any, set[ox.Triple]]:
    monkeypatch.setattr(Reasoner, "batch_rules", batched)
    out = {}
    for start in range(0, len(inputs), 50):
        out.update({iri: {triple_to_ox(t) for t in graph}
                    for iri, graph in reasoner.infer(inputs[start:start + 50]).items()})
    return out


# -- the text ------------------------------------------------------------------------------


def test_the_shipped_rules_that_bind_this_are_batched(kb: KnowledgeBase) -> None:
    """The pending rule's ``$this`` inside an OPTIONAL would be unbound in a BIND there (see
    test_a_nested_group_does_not_see_the_batch_this); the rules that read ``$this`` only in a
    NOT EXISTS stay per case too (see test_substitutions_leave_this_unbound_without_a_pattern)."""
    per_case = {r.term.iri.removeprefix(str(ESI)) for r in kb.ontology.sparql_rules
                if r.query not in kb.reasoner._batched}
    assert per_case == {"rule-assessment-pending", "rule-no-block-yet", "rule-no-red-flag",
                        "rule-treatment-not-tried", "rule-unsuspected-pain-source"}
    assert {r.term.iri.removeprefix(str(ESI)) for r in kb.ontology.sparql_rules
            if batched_rule(r.query) is None} == {"rule-assessment-pending"}


@pytest.mark.parametrize("where", [
    '$this ex:label "a } brace { and # and WHERE" ; ex:score ?x',
    "$this ex:label '''a } \"\"\" WHERE { # ''' ; ex:score ?x",
    "$this ex:score ?x # a comment with } and { and 'quote\n",
    "$this <http://example.org/score#x> ?x FILTER (?x < 3 && ?x <= 2)",
    '$this ex:score ?x FILTER NOT EXISTS { $this ex:flag ?f FILTER NOT EXISTS { $this ex:ok "}" } }',
    "$this ex:score ?x VALUES ?x { 1 2 } BIND (STR($this) AS ?s)",
])
def test_the_batched_text_keeps_the_where_as_written(where: str) -> None:
    batched = batched_rule(rule(where))
    assert batched is not None
    assert where in batched.query
    assert batched.query.startswith(PREFIX)
    assert f"<{RULE_CASE_MARKER.value}> <{RULE_CASE_MARKER.value}> ?this" in batched.query


def test_base_and_prefixes_before_the_rule_are_kept() -> None:
    query = ("BASE <http://example.org/>\n# a comment { CONSTRUCT\nPREFIX e: <x#>\n"
             "CONSTRUCT { $this <out> ?x } WHERE { $this e:s ?x }")
    batched = batched_rule(query)
    assert batched is not None and batched.query.startswith("BASE <http://example.org/>\n# a comment { CONSTRUCT\n")
    assert batched.template == ((ox.Variable("this"), ox.NamedNode("http://example.org/out"), ox.Variable("x")),)


@pytest.mark.parametrize("query", [
    rule("GRAPH ?g { $this ex:score ?x }"),
    rule("SERVICE <http://example.org/sparql> { $this ex:score ?x }"),
    f"{PREFIX}CONSTRUCT {{ $this ex:out ?x }} FROM <http://example.org/g> WHERE {{ $this ex:score ?x }}",
    rule("$this ex:score ?x") + " LIMIT 1",
    rule("$this ex:score ?x") + " ORDER BY ?x",
    rule("$this ex:score ?x") + " VALUES ?x { 1 }",
    f"{PREFIX}CONSTRUCT WHERE {{ $this ex:score ?x }}",
    rule("$this ex:score ?x . ?esi_rule_graph ex:p ?x"),
    rule("$this ex:score ?x MINUS { $this ex:flag ?x }"),
    rule("OPTIONAL { $this ex:score ?x }"),
    rule("$this ex:score ?x FILTER NOT EXISTS { ?x ex:p ?y OPTIONAL { $this ex:flag ?y } }"),
    rule("{ $this ex:score ?x } UNION { $this ex:other ?x }"),
    rule("{ BIND (STR($this) AS ?x) }"),
    rule("{ SELECT ?x WHERE { $this ex:score ?x } }"),
    rule("$this ex:label 'unclosed ; ex:score ?x"),
    rule("$this ex:score ?x ) ("),  # Oxigraph cannot read the batched text
    rule(f"$this <{RULE_CASE_MARKER.value}> ?x"),
])
def test_a_rule_the_rewrite_cannot_be_sure_of_runs_per_case(query: str) -> None:
    assert batched_rule(query) is None


def test_a_nested_group_does_not_see_the_batch_this() -> None:
    """Why ``$this`` in an OPTIONAL, UNION or nested group keeps a rule per case: SPARQL
    evaluates a group before joining it, so there ``$this`` is unbound, not the case."""
    store = ox.Store()
    graph = ox.NamedNode("urn:g")
    store.add(ox.Quad(RULE_CASE_MARKER, RULE_CASE_MARKER, ox.NamedNode("urn:case"), graph))
    query = f"SELECT ?s WHERE {{ GRAPH ?g {{ <{RULE_CASE_MARKER.value}> <{RULE_CASE_MARKER.value}> ?this "
    top, nested = (next(iter(store.query(query + body, named_graphs=[graph])))[ox.Variable("s")]
                   for body in ("BIND (STR(?this) AS ?s) } }", "{ BIND (STR(?this) AS ?s) } } }"))
    assert top == ox.Literal("urn:case") and nested is None


@pytest.mark.parametrize(("where", "per_case", "batched"), [
    ('BIND (STR($this) AS ?t)', None, "urn:c"),
    ('FILTER EXISTS { $this <urn:p> "1" } BIND ("x" AS ?t)', "x", None),  # urn:a has it, not urn:c
    ('$this <urn:p> ?v FILTER EXISTS { $this <urn:p> "1" } BIND ("x" AS ?t)', None, None),
    ('BIND (STR($this) AS ?t) $this <urn:p> ?v', "urn:c", "urn:c"),
])
def test_substitutions_leave_this_unbound_without_a_pattern(where: str, per_case: str | None,
                                                             batched: str | None) -> None:
    """Why a rule batches only if a pattern of its own binds ``$this``: without one, Oxigraph's
    ``substitutions`` leave it unbound in a BIND or an EXISTS, where the batched form binds it."""
    store, graph, case = ox.Store(), ox.NamedNode("urn:g"), ox.NamedNode("urn:c")
    p = ox.NamedNode("urn:p")
    store.extend([ox.Quad(ox.NamedNode("urn:a"), p, ox.Literal("1"), graph), ox.Quad(case, p, ox.Literal("2"), graph),
                  ox.Quad(RULE_CASE_MARKER, RULE_CASE_MARKER, case, graph)])
    query = f"CONSTRUCT {{ $this <urn:o> ?t }} WHERE {{ {where} }}"
    alone = list(store.query(query, default_graph=[graph], substitutions={ox.Variable("this"): case}))
    rewritten = batched_rule(query)
    assert rewritten is not None
    together = rewritten.constructed(store.query(rewritten.query, named_graphs=[graph])).get(case, [])
    for got, want in ((alone, per_case), (together, batched)):
        assert [t.object.value for t in got] == ([want] if want else [])


# -- the template ----------------------------------------------------------------------------


def solutions(rows: list[dict[str, ox.NamedNode | ox.Literal]]) -> list[ox.QuerySolution]:
    """Query solutions with these bindings (Oxigraph builds solutions only from a query)."""
    names = sorted({name for row in rows for name in row})
    values = " ".join("(" + " ".join(str(row[n]) if n in row else "UNDEF" for n in names) + ")" for row in rows)
    query = f"SELECT * WHERE {{ VALUES ({' '.join('?' + n for n in names)}) {{ {values} }} }}"
    return list(ox.Store().query(query))  # type: ignore[arg-type]


A, B = ox.NamedNode("urn:case:a"), ox.NamedNode("urn:case:b")


def test_a_template_blank_node_is_fresh_for_each_solution() -> None:
    batched = batched_rule(rule("$this ex:score ?x", "$this ex:has _:n . _:n ex:value ?x"))
    assert batched is not None
    out = batched.constructed(solutions([{"this": A, "x": ox.Literal("1")}, {"this": A, "x": ox.Literal("2")},
                                         {"this": B, "x": ox.Literal("1")}]))
    nodes = {t.object for t in out[A] if t.predicate.value.endswith("has")}
    assert len(nodes) == 2 and all(isinstance(n, ox.BlankNode) for n in nodes)
    assert {t.subject for t in out[A] if t.predicate.value.endswith("value")} == nodes
    assert len(out[B]) == 2 and not nodes & {t.object for t in out[B]}


def test_a_template_triple_with_an_unbound_variable_or_no_rdf_is_left_out() -> None:
    batched = batched_rule(rule("$this ex:score ?x OPTIONAL { ?x ex:p ?y }",
                                "$this ex:out ?x . $this ex:y ?y . ?x ex:from $this . $this ?x 1"))
    assert batched is not None
    out = batched.constructed(solutions([{"this": A, "x": ox.Literal("1")}]))
    assert out == {A: [ox.Triple(A, ox.NamedNode("http://example.org/out"), ox.Literal("1"))]}


def test_each_case_constructs_a_set() -> None:
    batched = batched_rule(rule("$this ex:score ?x", "$this ex:scored true"))
    assert batched is not None
    out = batched.constructed(solutions([{"this": A, "x": ox.Literal("1")}, {"this": A, "x": ox.Literal("2")},
                                         {"this": B, "x": ox.Literal("1")}]))
    scored = ox.NamedNode("http://example.org/scored")
    assert out == {case: [ox.Triple(case, scored, ox.Literal(True))] for case in (A, B)}


# -- the conclusions -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many(kb: KnowledgeBase, make_case: Any) -> list[CaseInput]:
    cases = [build(make_case, {**param.values[0]["case"], "id": f"b{i}"}) for i, param in enumerate(RULE_CASES)]
    cases += [load_vignette(p)["case"] for p in VIGNETTES]
    cases += CaseGenerator(kb.vocabulary["input"], seed=41).cases(600, prefix="batched")
    return inputs_of(kb, cases)


def test_a_batch_concludes_what_each_case_alone_concludes(kb: KnowledgeBase, many: list[CaseInput],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert kb.reasoner._batched
    calls: list[int] = []
    real = caserules.RuleGraphs.run_batched
    monkeypatch.setattr(caserules.RuleGraphs, "run_batched",
                        lambda self, rule, iris: calls.append(len(iris)) or real(self, rule, iris))
    batched = infer(kb.reasoner, many, True, monkeypatch)
    assert sum(calls) > len(many)  # the batched queries did run, on many cases each
    per_case = infer(kb.reasoner, many, False, monkeypatch)
    assert batched.keys() == per_case.keys()
    assert [iri for iri in per_case if batched[iri] != per_case[iri]] == []


_RULE = """
@prefix esi: <https://w3id.org/esi-kg/ontology#> .
@prefix sh: <http://www.w3.org/ns/shacl#> .
esi:rule-test-batched a sh:SPARQLRule ;
    sh:order 50 ; esi:stratum {stratum} ; sh:prefixes <https://w3id.org/esi-kg/ontology> ;
    sh:construct \"\"\"CONSTRUCT {{ $this esi:statement ?text }} WHERE {{ {where} }}\"\"\" .
"""


@pytest.mark.parametrize(("stratum", "where", "batched", "fires"), [
    # per case: $this in an OPTIONAL with a BIND
    (1, 'OPTIONAL { $this esi:hasPainScore ?s BIND ("scored" AS ?t) } BIND (COALESCE(?t, "none") AS ?text)',
     False, True),
    # per case: $this only in a NOT EXISTS; batched once a pattern binds it
    # (per case, that STR($this) is unbound: the rule concludes nothing, and must not in a batch)
    (2, 'FILTER NOT EXISTS { $this a esi:NonResponder } BIND (CONCAT(STR($this), " responds") AS ?text)',
     False, False),
    (2, '$this esi:hasPainScore ?s FILTER NOT EXISTS { $this a esi:NonResponder }'
        ' BIND (CONCAT(STR($this), " responds") AS ?text)', True, True),
    # a variable predicate would see the quad naming a case: no rule is batched then
    (1, '$this ?p esi:primary-non-responder BIND (STR(?p) AS ?text)', None, True),
])
def test_an_added_rule_concludes_the_same_in_a_batch(kb: KnowledgeBase, many: list[CaseInput], stratum: int,
                                                     where: str, batched: bool | None, fires: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    assert kb.ontology.path is not None
    turtle = kb.ontology.path.read_bytes() + _RULE.format(stratum=stratum, where=where).encode()
    reasoner = Reasoner(Ontology.from_turtle(turtle))
    added = next(r for r in reasoner.ontology.sparql_rules if r.term.iri == ESI["rule-test-batched"])
    if batched is None:
        assert reasoner._batched == {}
    else:
        assert (added.query in reasoner._batched) is batched
    inputs = many[:150]
    together = infer(reasoner, inputs, True, monkeypatch)
    alone = infer(reasoner, inputs, False, monkeypatch)
    assert [iri for iri in alone if together[iri] != alone[iri]] == []
    # the case's own statements are the added rule's (the others state scores and blocks)
    assert any(t.predicate.value == str(ESI.statement) and t.subject.value == str(iri)
               for iri, graph in alone.items() for t in graph) is fires
