"""A bounded fuzzing pass (hypothesis): mutated and random cases, ids and SPARQL queries against
the app. Whatever comes in, the answer is never a 5xx and never shows a traceback.

Each test has a fixed number of examples (``EXAMPLES``) so that the whole pass stays well under
a minute; hypothesis draws new ones on every run, and shrinks any failure to a small input
that becomes a regression test of its own.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import DATA, VIGNETTES, Apps, Site, issue, settings_of

EXAMPLES = 150
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
INTERNALS = ("Traceback", 'File "', "/kgservice/", "RuntimeError", "KeyError", "TypeError")


@pytest.fixture(scope="module")
def fuzzed(module_apps: Apps) -> tuple[FlaskClient, Site]:
    app = module_apps(max_case_triples=400)
    return app.test_client(), issue(settings_of(app), "north", "pathway:run", "cases:read", "cases:write")


def assert_sound(response: Any, what: object) -> None:
    """Not a 5xx; an error is problem+json; no internals in the body."""
    text = response.get_data(as_text=True)
    assert response.status_code < 500, (what, response.status_code, text[:400])
    for internal in INTERNALS:
        assert internal not in text, (what, text[:400])
    if response.status_code >= 400:
        assert response.mimetype == "application/problem+json", (what, response.mimetype)
        assert json.loads(text)["status"] == response.status_code


# -- strategies ----------------------------------------------------------------------------------------

#: Any character, lone surrogates and controls included.
ANY_TEXT = st.text(st.characters(codec=None, categories=("L", "M", "N", "P", "S", "Z", "Cc", "Cf", "Cs", "Co")),
                   max_size=12)
#: Values that broke this service or its kind before: lone surrogates, line separators, path
#: segments, NUL, huge numbers, dates that do not exist, codes of the wrong field.
NASTY = st.sampled_from(["\ud800", "a\udfff", "\u2028", "\u0085", "..", ".", "\x00", "\u202e", "x" * 5000,
                         "2026-02-30", "10000-01-01", "lumbar", "foot-drop", "", "0", "-1", "1e999", "NaN",
                         "<http://127.0.0.1:9/x>", "https://w3id.org/esi-kg/ontology#PatientCase", "owl:Thing"])
SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
           | ANY_TEXT | NASTY)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(ANY_TEXT | st.sampled_from(["date", "score", "target"]), inner,
                                             max_size=4), max_leaves=12)
FIELDS = sorted({key for case in VIGNETTES.values() for key in case} | {"injection.date", "pain_scores.0.score"})


@st.composite
def mutated_cases(draw: st.DrawFn) -> Any:
    """A public vignette with a few fields replaced, removed or added; now and then not an object."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON_VALUES)
    case = json.loads(json.dumps(VIGNETTES[draw(st.sampled_from(sorted(VIGNETTES)))]))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 4]))):  # mostly one change: the rest stays valid
        path = draw(st.sampled_from(FIELDS) | st.sampled_from(FIELDS) | ANY_TEXT | NASTY).split(".")
        target = case
        for part in path[:-1]:
            target = target.get(part) if isinstance(target, dict) else (
                target[int(part)] if isinstance(target, list) and part.isdigit() and int(part) < len(target) else None)
        if isinstance(target, dict):
            if draw(st.integers(0, 4)):
                target[path[-1]] = draw(NASTY | SCALARS | JSON_VALUES)
            else:
                target.pop(path[-1], None)
    return case


TURTLE_PARTS = ["@prefix esi: <https://w3id.org/esi-kg/ontology#> .", "<https://w3id.org/esi-kg/case/f>",
                "a", "esi:PatientCase", "esi:ageInYears", "esi:hasPainScore", "[", "]", ";", ",", ".", "<<", ">>",
                "{|", "|}", '"x"', '"\\ud800"', "58", "1.5e9", "true", "_:b", "()", "(", ")", "^^", "@en", "<a:b>",
                "owl:sameAs", "<file:///etc/passwd>", "GRAPH", "{", "}"]
CASE_TYPES = ["application/json", "text/turtle", "application/ld+json", "application/n-triples",
              "application/fhir+json", "application/json; charset=latin-1", "text/plain", None]


TWIN = (DATA / "cases" / "rdf-twin.ttl").read_text(encoding="utf-8")
TWIN_CASE = "<https://w3id.org/esi-kg/case/rdf-twin>"
RDF_PREFIXES = ("@prefix owl: <http://www.w3.org/2002/07/owl#> .\n"
                "@prefix rdfs: <http://www.w3.org/2000/01/rdf-schema#> .\n")
RDF_SUBJECTS = [TWIN_CASE, f"<< {TWIN_CASE} a esi:PatientCase >>", "_:b", "<a:b>", "esi:PatientCase", "[]"]
RDF_PREDICATES = ["esi:ageInYears", "esi:hasSex", "esi:hasPainScore", "a", "owl:sameAs", "rdfs:label",
                  "<http://www.w3.org/2000/01/rdf-schema#seeAlso>"]
RDF_OBJECTS = ["58", '"\\uD800"', '"x"@en', "true", "<< <a:b> <a:c> <a:d> >>", "<file:///etc/passwd>", "esi:male",
               '"2026-02-30"^^<http://www.w3.org/2001/XMLSchema#date>', "[ a esi:PainScoreObservation ]", "()",
               '"1e999"^^<http://www.w3.org/2001/XMLSchema#double>', "<https://w3id.org/esi-kg/case/other>"]


@st.composite
def turtle_cases(draw: st.DrawFn) -> bytes:
    """The Turtle twin of a vignette with a few statements added, RDF-star ones among them."""
    extra = []
    for _ in range(draw(st.integers(1, 3))):
        statement = " ".join(draw(st.sampled_from(options)) for options in (RDF_SUBJECTS, RDF_PREDICATES, RDF_OBJECTS))
        annotation = draw(st.sampled_from(["", " {| esi:source <a:x> |}"]))
        extra.append(statement + annotation + " .")
    return (RDF_PREFIXES + TWIN + "\n" + "\n".join(extra) + "\n").encode()


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    kind = draw(st.sampled_from(CASE_TYPES))
    shape = draw(st.integers(0, 5))
    if shape == 0:
        body = draw(st.binary(max_size=200))
    elif shape == 1:
        body = " ".join(draw(st.lists(st.sampled_from(TURTLE_PARTS), max_size=30))).encode()
    elif shape == 2:
        body, kind = draw(turtle_cases()), draw(st.sampled_from(["text/turtle", "text/turtle", "application/json"]))
    else:
        body = json.dumps(draw(mutated_cases())).encode()  # ASCII: lone surrogates travel as \ud800
    return body, kind


SPARQL_PARTS = ["SELECT", "ASK", "CONSTRUCT", "DESCRIBE", "WHERE", "*", "{", "}", "(", ")", ".", ";", ",", "?s", "?p",
                "?o", "$x", "a", "<a:b>", "esi:PatientCase", "_:b", "[]", "FILTER", "OPTIONAL", "UNION", "MINUS",
                "GRAPH", "BIND", "AS", "VALUES", "UNDEF", "GROUP BY", "HAVING", "ORDER BY", "DESC", "LIMIT 3",
                "OFFSET 1", "COUNT", "SUM", "SAMPLE", "GROUP_CONCAT", "DISTINCT", "REGEX", "STR", "LANG", "CONCAT",
                "REPLACE", "STRLEN", "SUBSTR", "BNODE", "IRI", "UUID", "NOW", "xsd:integer", "true", "false", "1",
                "1.5", "1e3", "-1", '"a"', "'b'", '"""c"""', "@en", "^^", "=", "!=", "<", ">", "&&", "||", "!",
                "+", "/", "|", "^", "?", "rdfs:subClassOf*", "EXISTS", "NOT EXISTS", "IN", "FROM", "FROM NAMED",
                "SERVICE", "SILENT", "\\u0053", "# c\n", "\n", "PREFIX esi: <https://w3id.org/esi-kg/ontology#>",
                "PREFIX xsd: <http://www.w3.org/2001/XMLSchema#>", "BASE <https://w3id.org/esi-kg/>", "LOAD", "INSERT",
                "DATA", "DELETE", "CLEAR", "DROP", "<<(", ")>>", "<<", ">>", "{|", "|}", "TRIPLE", "SUBJECT",
                "isTRIPLE", "{" * 300, "(" * 300, "}" * 300]
ACCEPTS = ["application/sparql-results+json", "application/sparql-results+xml", "text/csv",
           "text/tab-separated-values", "text/turtle", "application/n-triples", "application/ld+json", "text/html",
           "*/*", ""]


FRAMES = ["{}", "SELECT * WHERE {{ {} }} LIMIT 5", "ASK {{ {} }}", "CONSTRUCT WHERE {{ {} }} LIMIT 3",
          "SELECT (COUNT(*) AS ?n) WHERE {{ ?s ?p ?o {} }}"]


@st.composite
def queries(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from(SPARQL_PARTS), min_size=1, max_size=30))
    text = draw(st.sampled_from([" ", "", "\t"])).join(parts)
    frame = draw(st.sampled_from(FRAMES))
    return frame.format(text) + draw(st.sampled_from(["", " ", "\x00", "\ud800"]))


# -- the pass --------------------------------------------------------------------------------------------


@FUZZ
@given(case=bodies(), endpoint=st.sampled_from(["POST /pathway", "POST /cases", "PUT /cases/fuzz-1"]))
def test_case_input_is_never_a_5xx(fuzzed: tuple[FlaskClient, Site], case: tuple[bytes, str | None],
                                   endpoint: str) -> None:
    client, north = fuzzed
    body, kind = case
    method, path = endpoint.split(" ")
    response = client.open(path, method=method, data=body, content_type=kind, headers=north.headers)
    assert_sound(response, (endpoint, kind, body[:200]))


@FUZZ
@given(case_id=ANY_TEXT | NASTY | st.sampled_from(["%2e%2e", "a/../b", "p01\n", "x" * 80]),
       method=st.sampled_from(["GET", "PUT", "DELETE"]), suffix=st.sampled_from(["", "/pathway", "?inferred=true"]))
def test_case_ids_in_the_path_are_never_a_5xx(fuzzed: tuple[FlaskClient, Site], case_id: str, method: str,
                                              suffix: str) -> None:
    client, north = fuzzed
    path = "/cases/" + quote(case_id.encode("utf-8", "surrogatepass"), safe="") + suffix
    body = json.dumps(VIGNETTES["p01"]).encode() if method == "PUT" else None
    response = client.open(path, method=method, data=body, content_type="application/json", headers=north.headers)
    assert_sound(response, (method, path))
    assert "Location" not in response.headers or response.headers["Location"].rsplit("/", 1)[-1] not in (".", "..")


@FUZZ
@given(params=st.dictionaries(st.sampled_from(["page", "per_page", "category", "pathway", "x"]), ANY_TEXT | NASTY,
                              max_size=3))
def test_listing_parameters_are_never_a_5xx(fuzzed: tuple[FlaskClient, Site], params: dict[str, str]) -> None:
    client, north = fuzzed
    query = "&".join(f"{k}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in params.items())
    response = client.get(f"/cases?{query}", headers=north.headers)
    assert_sound(response, query)


@FUZZ
@given(query=queries(), accept=st.sampled_from(ACCEPTS), how=st.sampled_from(["get", "form", "direct"]))
def test_sparql_is_never_a_5xx(fuzzed: tuple[FlaskClient, Site], query: str, accept: str, how: str) -> None:
    client, north = fuzzed
    headers = {**north.headers, **({"Accept": accept} if accept else {})}
    raw = quote(query.encode("utf-8", "surrogatepass"), safe="")
    if how == "get":
        response = client.get(f"/sparql?query={raw}", headers=headers)
    elif how == "form":
        response = client.post("/sparql", data=f"query={raw}", headers=headers,
                               content_type="application/x-www-form-urlencoded")
    else:
        response = client.post("/sparql", data=query.encode("utf-8", "surrogatepass"), headers=headers,
                               content_type="application/sparql-query")
    assert_sound(response, (how, query))
