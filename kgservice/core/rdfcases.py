"""Cases written in RDF (Turtle, JSON-LD, N-Triples): parsed by Oxigraph, checked, renamed under the case's IRI.

Oxigraph never fetches a remote JSON-LD context. A case document may not bring schema
(``owl:``/``rdfs:`` terms, statements about ontology terms), and every statement must be about
the case or a node it links to.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pyoxigraph as ox
from rdflib import OWL, RDF, RDFS, Literal, URIRef
from rdflib.term import Node

from ..errors import InvalidCase, MalformedInput, Violation
from .cases import DEFAULT_SITE, ID_PATTERN, MAX_JSON_DEPTH, CaseGraph, case_id_of, case_iri, new_case_id
from .contract import Contract, Spec
from .media import RDF_FORMATS
from .ontology import CASE_BASE, ESI, local_name
from .terms import Triple, triples_from_ox

_FORBIDDEN_NAMESPACES = (str(OWL), str(RDFS))


def from_rdf(body: bytes, media_type: str, contract: Contract, case_id: str | None = None, max_triples: int = 2_000,
             site: str = DEFAULT_SITE, max_list_items: int | None = None) -> CaseGraph:
    """Read a case written in Turtle, JSON-LD or N-Triples.

    Parsed by Oxigraph, which never fetches a remote JSON-LD context. The case is the one
    node typed ``esi:PatientCase``; every other node is renamed under the case's IRI so
    that no two cases share a node.
    """
    fmt = RDF_FORMATS[media_type]
    try:
        quads = []
        for quad in ox.parse(body, format=fmt, base_iri=CASE_BASE, without_named_graphs=True):
            if isinstance(quad.subject, ox.Triple) or isinstance(quad.object, ox.Triple):
                raise InvalidCase([Violation("$", "a case may not hold triple terms (RDF-star << … >> or {| … |}): "
                                                  "a case states facts, not statements about statements")])
            quads.append(quad)
            if len(quads) > max_triples:
                raise InvalidCase([Violation("$", f"a case may hold at most {max_triples} triples")])
    except SyntaxError as exc:
        raise MalformedInput(f"not valid {media_type}: {exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"not valid {media_type}: {exc}") from None
    if max_list_items is not None:
        _check_fan_out(quads, max_list_items)
    triples = triples_from_ox(quads)

    problems = [Violation("$", msg) for msg in _schema_problems(triples)]
    cases = sorted({s for s, p, o in triples if p == RDF.type and o == contract.case_type}, key=str)
    if len(cases) != 1:
        raise InvalidCase([*problems, Violation("$", f"the document must describe exactly one esi:PatientCase, "
                                                     f"not {len(cases)}")])
    original = cases[0]
    if case_id is None:
        tail = case_id_of(original) if isinstance(original, URIRef) else ""
        case_id = tail if ID_PATTERN.match(tail) else new_case_id()
    iri = case_iri(case_id, site)

    rename: dict[Node, Node] = {original: iri}
    try:
        reachable = _reachable(original, triples)
    except MalformedInput as exc:
        if problems:  # schema triples (e.g. an owl:sameAs chain) make it a contract violation: 422
            raise InvalidCase([*problems, Violation("$", exc.detail)]) from None
        raise
    for n, node in enumerate(sorted((s for s in reachable if s != original), key=str)):
        rename[node] = URIRef(f"{iri}/node/{n}")
    statements: dict[Triple, None] = {}
    for s, p, o in triples:
        if s not in reachable:
            problems.append(Violation("$", f"<{s}> is not part of the case: every statement must be about the "
                                            "case or a node it links to"))
            continue
        statements[(rename.get(s, s), p, rename.get(o, o))] = None
    cg = CaseGraph(iri=iri, id=case_id, statements=statements, contract=contract, node_paths={iri: ""},
                   problems=problems)
    _name_nodes(cg)
    return cg


def _check_fan_out(quads: list[ox.Quad], max_values: int) -> None:
    """No node may have more than ``max_values`` values of one property: the RDF form of the
    JSON list limit (hundreds of scores cost seconds of reasoning)."""
    fan_out = Counter((q.subject, q.predicate) for q in quads)
    if fan_out and (worst := max(fan_out.items(), key=lambda item: item[1]))[1] > max_values:
        (_, predicate), count = worst
        raise InvalidCase([Violation("$", f"a node may have at most {max_values} values of {predicate.value}, "
                                          f"not {count}")])


def _schema_problems(triples: list[Triple]) -> Iterable[str]:
    seen: set[str] = set()
    for s, p, o in triples:
        if str(p).startswith(_FORBIDDEN_NAMESPACES):
            msg = f"case data may not use {local_name(p)} ({p}): cases never bring schema"
        elif p == RDF.type and str(o).startswith(_FORBIDDEN_NAMESPACES):
            msg = f"case data may not declare a {o}: cases never bring schema"
        elif isinstance(s, URIRef) and str(s).startswith(str(ESI)):
            msg = f"case data may not say anything about the ontology term {s}"
        else:
            continue
        if msg not in seen:
            seen.add(msg)
            yield msg


def _reachable(root: Node, triples: list[Triple]) -> set[Node]:
    """The nodes reachable from the case, breadth first; too deep a document is malformed."""
    out: dict[Node, list[Node]] = {}
    for s, _, o in triples:
        out.setdefault(s, []).append(o)
    seen = {root}
    level = [root]
    depth = 0
    while level:
        depth += 1
        if depth > MAX_JSON_DEPTH:
            raise MalformedInput(f"the case is nested deeper than {MAX_JSON_DEPTH} levels")
        following = []
        for node in level:
            for o in out.get(node, []):
                if o not in seen and o in out:
                    seen.add(o)
                    following.append(o)
        level = following
    return seen


def _name_nodes(cg: CaseGraph) -> None:
    """Give nodes of an RDF-born case JSON-like paths, for readable violations."""
    todo: list[tuple[Node, str, dict[str, Spec]]] = [(cg.iri, "", cg.contract.fields)]
    objects: dict[tuple[Node, Node], list[Node]] = {}
    for s, p, o in cg.triples:
        objects.setdefault((s, p), []).append(o)
    while todo:
        node, path, specs = todo.pop()
        for name, spec in specs.items():
            values = sorted(objects.get((node, spec.prop), ()), key=str)
            for i, value in enumerate(values):
                here = f"{path}.{name}" if path else name
                if spec.is_list:
                    here = f"{here}[{i}]"
                if value not in cg.node_paths and not isinstance(value, Literal) and spec.kind != "code" \
                        and spec.kind != "codes":
                    cg.node_paths[value] = here
                    if spec.fields:
                        todo.append((value, here, spec.fields))
