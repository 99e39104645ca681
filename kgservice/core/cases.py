"""Patient cases: contract JSON ↔ RDF (RDF input: :mod:`.rdfcases`), and the observations.

The mapping follows the contract read from the case shapes (:mod:`kgservice.core.contract`):
field names, property IRIs and kinds; it knows nothing clinical. Observations (day offsets,
relief percentages) are arithmetic on the asserted facts; what they mean is decided by the
rules in the ontology.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property, lru_cache
from typing import Any, cast

import pyoxigraph as ox
from rdflib import RDF, XSD, Graph, Literal, URIRef
from rdflib.term import Node

from ..errors import InvalidCase, MalformedInput, Violation
from .contract import Contract, Spec
from .ontology import CASE_BASE, ESI, local_name
from .terms import Triple, triples_to_ox

# \Z, not $: "$" also matches before a final newline, and "p01\n" is no id (nor a code, nor a site).
# An id is a path segment of /cases/{id}: "." and ".." would name the collection or its parent.
ID_PATTERN = re.compile(r"^(?!\.\.?\Z)[A-Za-z0-9._-]{1,64}\Z")
ID_RULE = 'id must be 1 to 64 of the characters A-Z a-z 0-9 . _ -, and not "." or ".."'
_SURROGATE = re.compile("[\ud800-\udfff]")
CODE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
MAX_JSON_DEPTH = 16


@dataclass
class CaseGraph:
    """A case as asserted RDF, with the JSON path of every node it came from."""

    iri: URIRef
    id: str
    #: The asserted triples, each once, in the order they were read (a dict as an ordered set).
    statements: dict[Triple, None]
    contract: Contract
    node_paths: dict[Node, str] = field(default_factory=dict)
    value_paths: dict[Triple, str] = field(default_factory=dict)
    json_values: dict[str, Any] = field(default_factory=dict)
    problems: list[Violation] = field(default_factory=list)
    #: For a case read from another format (FHIR): JSON path → where its value came from,
    #: and what the reader adds to the answer (the codes it could not use).
    origins: dict[str, str] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def origin_of(self, path: str) -> str | None:
        """Where the value at a JSON path (``pain_scores[1].score``) came from, if it was read from elsewhere."""
        return origin(self.origins, path)

    # The case is read once and then only looked at: validation, reasoning, the answer and
    # the store each take its triples. Adding a triple to an rdflib graph costs ~4 µs, and
    # walking one ~2 µs: the pipeline needs neither, so the graph is built only when asked for.
    @cached_property
    def triples(self) -> tuple[Triple, ...]:
        """The asserted triples, once the case is read."""
        return tuple(self.statements)

    @cached_property
    def graph(self) -> Graph:
        """The asserted triples as an rdflib graph (for pyshacl and :func:`to_json`)."""
        graph = Graph()
        for t in self.statements:
            graph.add(t)
        return graph

    @cached_property
    def quads(self) -> tuple[ox.Quad, ...]:
        """The same, as Oxigraph quads in the default graph: built once, for validation and the answer."""
        return tuple(triples_to_ox(self.triples, ox.DefaultGraph()))

    @cached_property
    def ox_triples(self) -> tuple[ox.Triple, ...]:
        """The same, as Oxigraph triples (to store them)."""
        return tuple(q.triple for q in self.quads)

    def path_of(self, focus: Node, prop: Node | None, value: Node | None) -> str:
        """The JSON path of a SHACL result (focus node, result path, value node)."""
        base = self.node_paths.get(focus, f"<{focus}>")
        if value is not None and (focus, prop, value) in self.value_paths:
            return self.value_paths[(focus, prop, value)]  # type: ignore[index]
        if value is not None and value in self.node_paths:
            return self.node_paths[value]
        name = self.contract.field_name(prop) if prop is not None else None
        if name is None:
            return base or "$"
        if value is not None and isinstance(value, URIRef):
            index = _index_of(self.triples, focus, prop, value)
            if index is not None:
                return f"{base}.{name}[{index}]".lstrip(".")
        return f"{base}.{name}".lstrip(".")


DEFAULT_SITE = "default"
SITE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}\Z")


def origin(origins: dict[str, str], path: str) -> str | None:
    """The origin recorded for ``path`` or the nearest path above it.

    >>> origin({"pain_scores[1]": "Observation/s1"}, "pain_scores[1].score")
    'Observation/s1'
    """
    while path:
        if path in origins:
            return origins[path]
        path = path[: max(path.rfind("."), path.rfind("["), 0)]
    return None


def case_iri(case_id: str, site: str = DEFAULT_SITE) -> URIRef:
    """The stable IRI of a case: ``…/case/{site}/{id}``; ids are unique within a site."""
    return URIRef(f"{CASE_BASE}{site}/{case_id}")


def case_id_of(iri: Node) -> str:
    return str(iri).rsplit("/", 1)[-1]


def new_case_id() -> str:
    return "case-" + uuid.uuid4().hex[:12]


def _index_of(triples: Iterable[Triple], focus: Node, prop: Node | None, value: URIRef) -> int | None:
    values = sorted(str(o) for s, p, o in triples if s == focus and p == prop)
    return values.index(str(value)) if str(value) in values else None


# -- JSON in --------------------------------------------------------------------------


def load_json(body: bytes | str) -> Any:
    """Parse a JSON body strictly: no NaN or Infinity. :func:`from_json` checks each case's
    nesting and strings, once its size is known to be within the limits."""

    def reject_constant(name: str) -> Any:
        raise MalformedInput(f"{name} is not valid JSON")

    try:
        data = json.loads(body, parse_constant=reject_constant)
    except MalformedInput:
        raise
    except RecursionError:
        raise MalformedInput("JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedInput(f"body is not valid JSON: {exc}") from None
    return data


def _check_tree(value: Any) -> None:
    """Nesting within ``MAX_JSON_DEPTH``; every string (key or value) valid Unicode.

    JSON's ``\\ud800`` escape can write half of a surrogate pair, which is no character:
    it could be neither stored nor sent back as UTF-8.
    """
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise MalformedInput(f"JSON is nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((k, depth + 1) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, str) and _SURROGATE.search(item):
            raise MalformedInput("the JSON has a lone surrogate escape (\\ud800-\\udfff without its pair): "
                                 "strings must be valid Unicode")


def count_values(data: Any, limit: int) -> int:
    """A lower bound of the triples a contract case maps to, counted up to ``limit + 1`` only.

    Every value (not null) becomes at least one triple: a nested object its link, a scalar or
    code its statement; the case's own type stands in for its ``id``. So a count past the
    triple cap refuses a case before any of it is built.
    """
    count, stack = 0, list(data.values()) if isinstance(data, dict) else [data]
    while stack and count <= limit:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(v for v in item.values() if v is not None)
            count += 1
        elif isinstance(item, list):
            stack.extend(v for v in item if v is not None)
        elif item is not None:
            count += 1
    return count


def _over_limits(data: dict[str, Any], max_triples: int | None, max_list_items: int | None) -> list[Violation]:
    long = [Violation(key, f"{key} may hold at most {max_list_items} items, not {len(value)}")
            for key, value in data.items()
            if max_list_items is not None and isinstance(value, list) and len(value) > max_list_items]
    if long or max_triples is None:
        return long
    if (count := count_values(data, max_triples)) > max_triples:
        return [Violation("$", f"a case may hold at most {max_triples} triples; this one would need more than "
                               f"{count - 1}")]
    return []


def from_json(data: Any, contract: Contract, case_id: str | None = None, site: str = DEFAULT_SITE,
              max_triples: int | None = None, max_list_items: int | None = None) -> CaseGraph:
    """Map a contract case to RDF. Structural problems are collected, not raised.

    A case over the limits (``max_triples``, ``max_list_items`` in any of its lists) is
    refused before it is mapped: counting costs microseconds, reasoning over a case with
    hundreds of scores costs seconds."""
    if not isinstance(data, dict):
        raise MalformedInput("a case must be a JSON object")
    if too_big := _over_limits(data, max_triples, max_list_items):
        raise InvalidCase(too_big)
    _check_tree(data)
    problems: list[Violation] = []
    given_id = data.get("id")
    if case_id is None:
        if given_id is None:
            case_id = new_case_id()
        elif isinstance(given_id, str) and ID_PATTERN.match(given_id):
            case_id = given_id
        else:
            problems.append(Violation("id", ID_RULE, value=given_id))
            case_id = new_case_id()
    elif given_id is not None and given_id != case_id:
        problems.append(Violation("id", f"id in the body ({given_id!r}) differs from the case addressed ({case_id!r})"))

    iri = case_iri(case_id, site)
    cg = CaseGraph(iri=iri, id=case_id, statements={(iri, _TYPE, contract.case_type): None}, contract=contract,
                   node_paths={iri: ""}, problems=problems)
    _map_object(cg, iri, data, contract.fields, path="", ignore={"id"})
    return cg


def _map_object(cg: CaseGraph, node: URIRef, data: dict[str, Any], specs: dict[str, Spec], path: str,
                ignore: Iterable[str] = ()) -> None:
    for key, value in data.items():
        here = f"{path}.{key}" if path else key
        if key in ignore:
            continue
        spec = specs.get(key)
        if spec is None:
            cg.problems.append(Violation(here, f"unknown field {key!r}; allowed: {', '.join(sorted(specs))}"))
            continue
        if value is None:
            continue
        if spec.is_list:
            if not isinstance(value, list):
                cg.problems.append(Violation(here, f"{key} must be a JSON array"))
                continue
            for i, item in enumerate(value):
                _map_value(cg, node, spec, item, f"{here}[{i}]", key, i)
        else:
            _map_value(cg, node, spec, value, here, key, None)


def _map_value(cg: CaseGraph, node: URIRef, spec: Spec, value: Any, here: str, key: str, index: int | None) -> None:
    g = cg.statements
    kind = spec.kind
    if kind in ("object", "objects"):
        if not isinstance(value, dict):
            cg.problems.append(Violation(here, f"{here} must be a JSON object"))
            return
        child = URIRef(f"{node}/{key.replace('_', '-')}" + (f"/{index}" if index is not None else ""))
        g[(node, spec.prop, child)] = None
        if spec.node_type is not None:
            g[(child, _TYPE, spec.node_type)] = None
        cg.node_paths[child] = here
        _map_object(cg, child, value, spec.fields, here)
        return
    cg.json_values[here] = value
    if isinstance(value, (dict, list)):
        cg.problems.append(Violation(here, f"{here} must be a single value, not a JSON {type(value).__name__}"))
        return
    if kind in ("code", "codes"):
        term = _code_term(value)
        g[(node, spec.prop, term)] = None
        cg.value_paths[(node, spec.prop, term)] = here
        return
    if kind == "instances":
        child = URIRef(f"{node}/{key.replace('_', '-')}/{index}")
        g[(node, spec.prop, child)] = None
        if isinstance(value, str) and CODE_PATTERN.match(value):
            g[(child, _TYPE, _code(value))] = None
        cg.node_paths[child] = here
        return
    term = _literal(value, kind)
    g[(node, spec.prop, term)] = None
    cg.value_paths[(node, spec.prop, term)] = here


def _code_term(value: Any) -> Node:
    if isinstance(value, str) and CODE_PATTERN.match(value):
        return _code(value)
    return _literal(value, "scalar")


@lru_cache(maxsize=4096)
def _code(value: str) -> URIRef:
    """The ontology term a code names: the same few hundred codes come in every case, and
    building the term (IRI checks) cost more than the rest of mapping the value."""
    return ESI[value]


_TYPE = RDF.type  # rdflib builds a term per attribute access


def _literal(value: Any, kind: str) -> Literal:
    return _scalar_literal(kind, type(value).__name__, value)


@lru_cache(maxsize=4096)
def _scalar_literal(kind: str, _type: str, value: Any) -> Literal:
    """The literal of a JSON scalar, built once: scores, doses and dates repeat from case to
    case, and rdflib parses every literal it builds. ``_type`` keeps 1, 1.0 and True apart."""
    if isinstance(value, bool):
        return Literal(value)
    if kind == "date" and isinstance(value, str):
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            try:
                return Literal(dt.date.fromisoformat(value).isoformat(), datatype=XSD.date)
            except ValueError:
                pass  # e.g. 2026-02-30: kept as a string, which the shapes reject as not a date
        return Literal(value)
    if isinstance(value, int):
        return decimal_literal(Decimal(value)) if kind == "number" else Literal(value)
    if isinstance(value, float):
        return decimal_literal(Decimal(repr(value)))
    return Literal(str(value))



# -- observations -----------------------------------------------------------------------

def observations(triples: Iterable[Triple], case: URIRef) -> list[Triple]:
    """Day offsets: arithmetic only, no judgement.

    Each pain score's and diagnostic block's ``esi:daysAfterInjection``, and the case's
    ``esi:daysSinceInjection`` (to its latest pain score). Which score is the baseline, which
    scores are responses and their relief are the ontology's rules (``esi:rule-baseline-score``,
    ``esi:rule-relief``).
    """
    values: dict[tuple[Node, Node], list[Node]] = {}
    for s, p, o in triples:
        values.setdefault((s, p), []).append(o)

    def value(node: Node | None, prop: URIRef) -> Node | None:
        found = values.get((node, prop)) if node is not None else None
        return found[0] if found else None

    injected = _date(value(value(case, ESI.hasInjection), ESI.performedOn))
    if injected is None:
        return []
    out: list[Triple] = []
    for node in values.get((case, ESI.hasPainScore), ()):
        when = _date(value(node, ESI.observedOn))
        if when is not None:
            out.append((node, ESI.daysAfterInjection, Literal((when - injected).days)))
    if out:
        out.append((case, ESI.daysSinceInjection, Literal(max(int(cast(Literal, t[2])) for t in out))))
    for node in values.get((case, ESI.hasDiagnosticBlock), ()):
        if (when := _date(value(node, ESI.performedOn))) is not None:
            out.append((node, ESI.daysAfterInjection, Literal((when - injected).days)))
    return out


def decimal_literal(value: Decimal) -> Literal:
    """An ``xsd:decimal`` in its shortest form: 62.5, not 62.50; 100, not 1E+2."""
    text = format(value.normalize(), "f")
    return Literal(text, datatype=XSD.decimal)


def _date(node: Node | None) -> dt.date | None:
    if isinstance(node, Literal) and node.datatype == XSD.date and isinstance(node.value, dt.date):
        return node.value
    return None


# -- JSON out ---------------------------------------------------------------------------


def to_json(graph: Graph, case: URIRef, contract: Contract) -> dict[str, Any]:
    """The contract JSON of an asserted case graph (the inverse of :func:`from_json`): every
    list field is present, and absent fields with a default read as it."""
    out: dict[str, Any] = {"id": case_id_of(case)}
    out.update(_read_object(graph, case, contract.fields))
    for name, spec in contract.fields.items():
        if spec.is_list:
            out.setdefault(name, [])
        elif spec.default is not None:
            out.setdefault(name, spec.default)
    return out


def _read_object(graph: Graph, node: Node, specs: dict[str, Spec]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, spec in specs.items():
        values = list(graph.objects(node, spec.prop))
        if not values:
            continue
        if spec.kind in ("object", "objects"):
            items = [_read_object(graph, v, spec.fields) for v in values]
            items.sort(key=lambda d: (str(d.get("date", "")), json.dumps(d, sort_keys=True)))
            out[name] = items if spec.kind == "objects" else items[0]
        elif spec.kind == "instances":
            out[name] = sorted(local_name(t) for v in values for t in graph.objects(v, RDF.type))
        elif spec.kind == "codes":
            out[name] = sorted(local_name(v) for v in values)
        elif spec.kind == "code":
            out[name] = local_name(values[0])
        else:
            out[name] = _py(values[0])
    return out


def _py(node: Node) -> Any:
    if isinstance(node, Literal):
        value = node.toPython()
        if isinstance(value, dt.date):
            return value.isoformat()
        if isinstance(value, Decimal):
            return int(value) if value == value.to_integral() else float(value)
        return value
    return str(node)
