"""One site's view of a shared SPARQL store: a query rewritten so that it sees that site's graphs only.

The embedded store gives each site a dataset of its own. A remote store (``ESI_STORE=sparql``)
holds every site's graphs side by side, so the server builds each query's dataset itself:

- the site's graphs are the ontology's two graphs and every graph whose IRI starts with the
  site's case prefix (``…/case/<site>/``); the default graph, as in the embedded store, is their
  union, which the remote store keeps as one graph of its own (:func:`union_graph`, holding the
  ontology's graphs too), because SPARQL cannot name "every graph under a prefix" as a dataset;
- ``FROM`` and ``FROM NAMED`` are taken out of the query text and, keeping only the site's
  graphs, sent as the protocol's ``default-graph-uri`` / ``named-graph-uri``. Left in the text,
  Virtuoso *adds* them to the protocol's graphs instead of being overridden by them;
- every ``GRAPH ?g { … }`` becomes ``{ GRAPH ?g { … } FILTER(?g is one of the site's graphs) }``:
  Virtuoso lets ``GRAPH ?g`` range over all graphs whatever the dataset says; a ``GRAPH <iri>``
  naming a graph that is not the site's is pointed at a graph that holds nothing;
- the query must parse as standard SPARQL 1.1 (Oxigraph's parser), so that no engine extension
  (Virtuoso's ``define input:…`` pragmas, which override any dataset) gets through, and it may not
  call the engine's own functions (``bif:``, ``sql:``: Virtuoso runs SQL with them);
- values for variables are bound with ``VALUES`` at the start of the WHERE clause, by the engine.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import pyoxigraph as ox

from ..core.ontology import CASE_BASE
from ..errors import QueryError
from .base import GRAPH_BASE, QueryScope

ONTOLOGY_GRAPHS = (GRAPH_BASE + "ontology", GRAPH_BASE + "ontology-closure")
#: A graph no site has: the dataset when a query's own dataset named none of the site's graphs.
EMPTY_GRAPH = GRAPH_BASE + "none"
# Tokens for the rewriting (the endpoint's check is kgservice.querytext), linear: a name is read
# once, possessively (a lazy prefix rescanned the rest of a long word at every letter: quadratic).
# Tokens as SPARQL reads them: a comment ends at CR or LF; an IRI excludes only U+0000-U+0020
# and <>"{}|^`\ but may hold \u / \U escapes; a prefixed name's local part may hold
# \-escapes (PN_LOCAL_ESC, e.g. ``ex:a\#``). Read any other way, a "comment" or "string"
# could hide the rest of a line, and a SERVICE in it, from the check below.
_TOKEN = re.compile(
    r"""
      (?P<comment>\#[^\r\n]*)
    | (?P<string>'\'\'(?:[^'\\]|\\.|'(?!''))*'\'\'
                |\"\"\"(?:[^"\\]|\\.|"(?!""))*\"\"\"
                |'(?:[^'\\\n]|\\.)*'
                |"(?:[^"\\\n]|\\.)*")
    | (?P<iri><(?:[^<>"{}|^`\\\x00-\x20]|\\u[0-9A-Fa-f]{4}|\\U[0-9A-Fa-f]{8})*>)
    | (?P<var>[?$]\w+)
    | (?P<pname>(?:[A-Za-z][\w.-]*+)?:(?:[\w.:%-]|\\[_~.!$&'()*+,;=/?\#@%-])*+)
    | (?P<word>[A-Za-z_]\w*+)
    | (?P<other>\S)
    """,
    re.VERBOSE,
)


def _resolve(token: tuple[str, str], prefixes: dict[str, str], base: str) -> str:
    kind, text = token
    if kind == "iri":
        return urljoin(base, text[1:-1]) if base else text[1:-1]
    if kind == "pname":
        prefix, _, local = text.partition(":")
        if prefix not in prefixes:
            raise QueryError(f"unknown prefix {prefix!r} in FROM")
        return prefixes[prefix] + local
    raise QueryError(f"FROM must be followed by a graph IRI, not {text!r}")


#: IRI prefixes of an engine's built-in functions, refused in queries (Virtuoso: bif:, sql:).
ENGINE_FUNCTIONS = ("bif:", "sql:", "http://www.openlinksw.com/")


def case_prefix(site: str) -> str:
    return f"{CASE_BASE}{site}/"


def union_graph(site: str) -> str:
    """The graph holding the union of a site's case graphs (the remote store's default graph)."""
    return f"{GRAPH_BASE}site/{site}"


def is_site_graph(site: str, iri: str) -> bool:
    return iri.startswith(case_prefix(site)) or iri in ONTOLOGY_GRAPHS


@dataclass
class SiteQuery:
    """A query ready for the remote store: its text and the dataset the protocol carries."""

    text: str
    form: str  # "select", "ask" or "graph" (CONSTRUCT, DESCRIBE)
    default_graphs: list[str] = field(default_factory=list)
    named_graphs: list[str] = field(default_factory=list)


def confine(query: str, site: str, scope: QueryScope) -> SiteQuery:
    """Rewrite ``query`` (with the protocol's dataset and bound values, ``scope``) to see only ``site``'s graphs.

    Every SERVICE is refused before Oxigraph parses the query (it runs it on an empty store).

    >>> q = confine("SELECT ?g WHERE { GRAPH ?g { ?s ?p ?o } }", "north", QueryScope())
    >>> "FILTER" in q.text and q.default_graphs[0].endswith("/graph/site/north")
    True
    """
    tokens = [(m.lastgroup or "other", m.group(), m.start(), m.end()) for m in _TOKEN.finditer(query)]
    tokens = [t for t in tokens if t[0] != "comment"]
    prefixes: dict[str, str] = {}
    base = ""
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement)
    from_default: list[str] = []
    from_named: list[str] = []
    constant_graphs: list[str] = []
    allowed = _allowed_filter(site)
    for i, (kind, text, start, _end) in enumerate(tokens):
        if kind in ("iri", "pname"):
            _refuse_engine_function(_resolve_any((kind, text), prefixes, base))
        if kind != "word":
            continue
        word = text.upper()
        if word == "SERVICE":  # also checked by the endpoint; here the empty store would run it
            raise QueryError("SERVICE is not allowed: ESI-KG never fetches a remote endpoint")
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if word == "PREFIX" and i + 2 < len(tokens) and tokens[i + 2][0] == "iri":
            prefixes[tokens[i + 1][1].rstrip(":")] = tokens[i + 2][1][1:-1]
        elif word == "BASE" and nxt is not None and nxt[0] == "iri":
            base = nxt[1][1:-1]
        elif word == "FROM" and nxt is not None:
            is_named = nxt[1].upper() == "NAMED"
            graph = tokens[i + 2] if is_named and i + 2 < len(tokens) else nxt
            (from_named if is_named else from_default).append(_resolve((graph[0], graph[1]), prefixes, base))
            edits.append((start, graph[3], " "))
        elif word == "GRAPH" and nxt is not None and nxt[0] in ("iri", "pname"):
            # a named graph: kept if it is the site's, else one that holds nothing (a constant
            # FILTER here trips Virtuoso 7.2's compiler: "sparp_gp_deprecate(): equiv replaces filter")
            named_iri = _resolve_any((nxt[0], nxt[1]), prefixes, base)
            if is_site_graph(site, named_iri):
                constant_graphs.append(named_iri)
            else:
                edits.append((nxt[2], nxt[3], f"<{EMPTY_GRAPH}>"))
        elif word == "GRAPH" and nxt is not None and nxt[0] == "var":
            close = _matching_brace(tokens, i + 2)
            edits.append((start, start, "{ "))
            edits.append((close, close, f" FILTER({allowed.format(g=nxt[1])}) }}"))
    form = _form(query)
    text = query
    for start, end, replacement in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        text = text[:start] + replacement + text[end:]
    if scope.substitutions:
        text = _bind(text, scope.substitutions)
    defaults, named = _dataset(site, scope, from_default, from_named)
    if not named and constant_graphs:
        # Virtuoso finds nothing in GRAPH <iri> unless the protocol names <iri>: name them (a
        # GRAPH ?g in the same query then ranges over these graphs only)
        named = list(dict.fromkeys(constant_graphs))
    return SiteQuery(text, form, defaults, named)


def _form(query: str) -> str:
    """The query's form; a query that is not standard SPARQL 1.1 is refused before anything runs."""
    try:
        result = ox.Store().query(query)  # parses, and runs on an empty store: nothing to read
    except SyntaxError as exc:
        raise QueryError(f"the query does not parse: {exc}") from None
    except OSError as exc:  # e.g. a FROM graph the empty store lacks: still a valid query
        raise QueryError(f"the query cannot run: {exc}") from None
    if isinstance(result, ox.QueryBoolean):
        return "ask"
    return "select" if isinstance(result, ox.QuerySolutions) else "graph"


def _resolve_any(token: tuple[str, str], prefixes: dict[str, str], base: str) -> str:
    try:
        return _resolve(token, prefixes, base)
    except QueryError:  # a prefix not declared (yet): Virtuoso would take bif:/sql: as built in
        return token[1]


def _refuse_engine_function(iri: str) -> None:
    if iri.lower().startswith(ENGINE_FUNCTIONS):
        raise QueryError(f"<{iri}> is one of the store engine's own functions; queries may use SPARQL's only")


def _allowed_filter(site: str) -> str:
    ontology = ", ".join(f"<{g}>" for g in ONTOLOGY_GRAPHS)
    prefix = case_prefix(site).replace("\\", "\\\\").replace('"', '\\"')
    return 'STRSTARTS(STR({g}), "' + prefix + '") || {g} IN (' + ontology + ")"


def _matching_brace(tokens: list[tuple[str, str, int, int]], j: int) -> int:
    """The end offset of the ``}`` closing the group that opens at ``tokens[j]``."""
    if j >= len(tokens) or tokens[j][1] != "{":
        raise QueryError("GRAPH must be followed by a graph name and a group { … }")
    depth = 0
    for kind, text, _start, end in tokens[j:]:
        if kind == "other" and text == "{":
            depth += 1
        elif kind == "other" and text == "}":
            depth -= 1
            if depth == 0:
                return end
    raise QueryError("a GRAPH group is not closed")


def _bind(text: str, bindings: Mapping[Any, Any]) -> str:
    """``VALUES`` for the bound variables, first thing in the WHERE clause."""
    names = " ".join(f"?{v.value}" for v in bindings)
    values = " ".join(str(t) for t in bindings.values())
    clause = f" VALUES ({names}) {{ ({values}) }} "
    tokens = [(m.lastgroup or "other", m.group(), m.end()) for m in _TOKEN.finditer(text)]
    depth, after_where, first_open = 0, None, None
    for kind, tok, end in tokens:
        if kind == "word" and tok.upper() == "WHERE" and depth == 0:
            after_where = True
        elif kind == "other" and tok == "{":
            if depth == 0 and (after_where or first_open is None):
                first_open = end
                if after_where:
                    break
            depth += 1
        elif kind == "other" and tok == "}":
            depth -= 1
    if first_open is None:
        raise QueryError("the query has no WHERE clause to bind values in")
    return text[:first_open] + clause + text[first_open:]


def _dataset(site: str, scope: QueryScope, from_default: list[str],
             from_named: list[str]) -> tuple[list[str], list[str]]:
    """Default and named graphs for the protocol: the caller's choice, cut down to the site's graphs.

    A dataset given by the protocol replaces the query's own, read as :class:`QueryScope` says
    (no default graph named: the union; no named graph named: every graph of the site, which
    the GRAPH filter admits). The query's own ``FROM``/``FROM NAMED`` are read as SPARQL 1.1
    does: default graphs only means no named graphs, and the other way round."""
    union = [union_graph(site)]  # holds the ontology too: Virtuoso 7.2 fails to compile some queries on several
    if scope.default_graphs or scope.named_graphs:
        return (_only_site(site, scope.default_graphs) if scope.default_graphs else union,
                _only_site(site, scope.named_graphs) if scope.named_graphs else [])
    if from_default or from_named:
        return _only_site(site, from_default), _only_site(site, from_named)
    return union, []


def _only_site(site: str, graphs: Iterable[str]) -> list[str]:
    kept = [g for g in dict.fromkeys(graphs) if is_site_graph(site, g)]
    return kept or [EMPTY_GRAPH]

