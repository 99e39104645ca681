"""Cases in a remote SPARQL 1.1 store (``ESI_STORE=sparql``): Virtuoso, Fuseki, GraphDB, Neptune…

The second implementation of :class:`kgservice.stores.oxigraph.SiteStore`. The graphs are named as in the
embedded store (the ontology's two graphs, ``<case IRI>`` and ``<case IRI>/inferred``); every
site shares the store, so each site also has

- ``…/graph/site/<site>``: the union of its case graphs, its default graph for queries
  (:mod:`kgservice.stores.sitequery` says why), and
- ``…/graph/site/<site>/writes``: one ``writtenBy`` token per stored case, which tells a writer
  whether its create won a race with another API process.

Every write is **one** SPARQL Update operation: the engines run an operation atomically but
not a request of several (Virtuoso keeps the first operation of a request whose second
failed). Blank nodes are sent as skolem IRIs (``INSERT DATA`` may not hold blank nodes in
Virtuoso) and read back as blank nodes. HTTP goes through one ``httpx.Client``: pooled
keep-alive connections shared by the server's threads, and digest or basic auth.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import pyoxigraph as ox

from ..config import Settings
from ..core.ontology import ESI, Triple
from ..core.terms import QueryResult, Selects, Substitutions, solutions, triples_to_ox
from ..errors import Conflict, NotFound
from ..queryrun import RESULTS_JSON, Answer, QueryLimits, QueryRun, write_answer
from .base import QueryScope, Reinferred, list_pattern
from .sitequery import ONTOLOGY_GRAPHS, case_prefix, confine, union_graph
from .sparqlclient import SparqlClient, StoreUnavailable

T = TypeVar("T")
SKOLEM = "https://w3id.org/esi-kg/.well-known/genid/"
WRITTEN_BY = "https://w3id.org/esi-kg/store#writtenBy"
_WRITTEN_BY = f"<{WRITTEN_BY}>"
_VERSION = f"<{ESI.ontologyVersion}>"


class SparqlSite:
    """One site's cases in a shared remote SPARQL store."""

    def __init__(self, site: str, client: SparqlClient) -> None:
        self.site = site
        self.client = client
        self.union = f"<{union_graph(site)}>"
        self.writes = f"<{union_graph(site)}/writes>"

    # -- reading -----------------------------------------------------------------------------

    def _select(self, text: str) -> ox.QuerySolutions:
        body = self.client.query(text, RESULTS_JSON)
        return cast(ox.QuerySolutions, ox.parse_query_results(body, format=ox.QueryResultsFormat.JSON))

    def _ask(self, text: str) -> bool:
        body = self.client.query(text, RESULTS_JSON)  # Virtuoso answers ASK in HTML without Accept
        return bool(ox.parse_query_results(body, format=ox.QueryResultsFormat.JSON))

    def exists(self, case_id: str) -> bool:
        return self._ask(f"ASK {{ GRAPH {_graphs(self.site, case_id)[0]} {{ ?s ?p ?o }} }}")

    def read(self, case_id: str) -> tuple[list[ox.Triple], list[ox.Triple]]:
        asserted, inferred = _graphs(self.site, case_id)
        rows = self._select(f"SELECT ?g ?s ?p ?o WHERE {{ VALUES ?g {{ {asserted} {inferred} }} "
                            "GRAPH ?g { ?s ?p ?o } }")
        out: dict[str, list[ox.Triple]] = {asserted[1:-1]: [], inferred[1:-1]: []}
        for row in rows:
            out[row["g"].value].append(ox.Triple(_unskolem(row["s"]), row["p"], _unskolem(row["o"])))
        if not out[asserted[1:-1]]:
            raise NotFound(f"no case {case_id!r}")
        return out[asserted[1:-1]], out[inferred[1:-1]]

    def ontology_version(self) -> str | None:
        rows = list(self._select(f"SELECT ?v WHERE {{ GRAPH <{ONTOLOGY_GRAPHS[0]}> {{ <{ONTOLOGY_GRAPHS[0]}> "
                                 f"{_VERSION} ?v }} }}"))
        return rows[0]["v"].value if len(rows) == 1 else None

    def case_ids(self, category: str | None = None, pathway: str | None = None, limit: int = 50,
                 offset: int = 0) -> tuple[list[str], int]:
        pattern, projected, binds = list_pattern(category, pathway)
        prefix = f"PREFIX esi: <{ESI}> "
        # ORDER BY: without it Virtuoso need not give the same order to two pages
        page = (f"{prefix}SELECT ?case {projected} WHERE {{ {pattern} }} ORDER BY ?case "
                f"LIMIT {int(limit)} OFFSET {int(offset)}")
        count = (f"{prefix}SELECT (COUNT(*) AS ?n) {projected} WHERE {{ {pattern} }}"
                 + (f" GROUP BY {projected}" if projected else ""))
        ids = [row["case"].value.rsplit("/", 1)[-1] for row in self.select(page, binds)]
        counted = next(iter(self.select(count, binds)), None)
        return ids, int(counted["n"].value) if counted is not None and counted["n"] is not None else 0

    def select(self, query: str, substitutions: Substitutions | None = None) -> ox.QuerySolutions:
        return solutions(self._query(query, QueryScope(substitutions=substitutions or {})))

    def case_graphs(self, case_id: str) -> Selects:
        return _CaseGraphs(self, tuple(g[1:-1] for g in _graphs(self.site, case_id)))

    def run_limited(self, run: QueryRun, limits: QueryLimits) -> Answer:
        """Sent by this process; the engine stops it at the time limit (and the HTTP client a little later).
        The answer is serialized here, under the same row and byte caps as the embedded store's."""
        dataset = run.dataset
        scope = QueryScope(dataset.default, dataset.named, run.substitutions) if dataset is not None \
            else QueryScope(substitutions=run.substitutions)
        chunks: list[bytes] = []
        media = write_answer(self._query(run.text, scope, limits.timeout_s), run, limits, chunks.append)
        return Answer(media, b"".join(chunks))

    def _query(self, sparql: str, scope: QueryScope, timeout_s: float | None = None) -> QueryResult:
        """A query on this site's graphs only (see :mod:`kgservice.stores.sitequery`), with Oxigraph's result types."""
        confined = confine(sparql, self.site, scope)
        accept = "application/n-triples" if confined.form == "graph" else RESULTS_JSON
        body = self.client.query(confined.text, accept, confined.default_graphs, confined.named_graphs, timeout_s)
        if confined.form == "graph":
            return cast(QueryResult, iter([q.triple for q in ox.parse(body, format=ox.RdfFormat.N_TRIPLES)]))
        return ox.parse_query_results(body, format=ox.QueryResultsFormat.JSON)

    # -- versions (kgservice reason --stale, kgservice impact) ------------------------------------

    def case_versions(self) -> list[tuple[str, str | None]]:
        rows = self._select(f"SELECT DISTINCT ?case ?version WHERE {{ GRAPH {self.union} {{ "
                            f"?case a <{ESI.PatientCase}> OPTIONAL {{ ?case {_VERSION} ?version }} }} }}")
        return [(row["case"].value.rsplit("/", 1)[-1], row["version"].value if row["version"] is not None else None)
                for row in rows]

    def export(self, case_ids: Sequence[str], inferred: bool = True) -> bytes:
        quads: list[ox.Quad] = []
        for start in range(0, len(case_ids), _EXPORT_CHUNK):
            graphs = [g for case_id in case_ids[start:start + _EXPORT_CHUNK]
                      for g in _graphs(self.site, case_id)[:2 if inferred else 1]]
            rows = self._select(f"SELECT ?g ?s ?p ?o WHERE {{ VALUES ?g {{ {' '.join(graphs)} }} "
                                "GRAPH ?g { ?s ?p ?o } }")
            quads.extend(ox.Quad(_unskolem(r["s"]), r["p"], _unskolem(r["o"]), r["g"]) for r in rows)
        return cast(bytes, ox.serialize(quads, format=ox.RdfFormat.N_QUADS))

    def reinfer(self, updates: Sequence[Reinferred]) -> list[str]:
        """Each case replaced in one operation, if it still has the version it was read at when
        checked just before: a remote store gives no transaction across the check and the write."""
        switched = []
        for update in updates:
            try:
                asserted, inferred = self.read(update.case_id)
            except NotFound:
                continue
            seen = next((t.object.value for t in inferred if t.predicate.value == str(ESI.ontologyVersion)
                         and isinstance(t.object, ox.Literal)), None)
            if seen == update.read_at:
                self.replace(update.case_id, asserted, update.inferred)
                switched.append(update.case_id)
        return switched

    # -- writing: each one SPARQL Update operation --------------------------------------------

    def set_ontology(self, version: str, ontology: Iterable[Triple], closure: Iterable[Triple]) -> None:
        """Bring the ontology graphs (shared by the store's sites) and the copy in this site's union
        graph to ``version``.

        The shared graphs take several requests (the ontology is too large for one operation's
        template): each process that finds an old version empties them and writes them whole,
        version last, so that processes starting together still leave them complete. The site's
        copy is then replaced in one operation (its triples are the union graph's that are not
        about a case)."""
        if self._site_ontology_version() == version:
            return
        onto, closed = (f"<{g}>" for g in ONTOLOGY_GRAPHS)
        if self.ontology_version() != version:
            self.client.update(f"DELETE {{ GRAPH ?g {{ ?s ?p ?o }} }} WHERE {{ VALUES ?g {{ {onto} {closed} }} "
                               "GRAPH ?g { ?s ?p ?o } }")
            skolem = f"{SKOLEM}ontology/"
            for graph, source in ((onto, ontology), (closed, closure)):
                triples = [_skolem(q.triple, skolem) for q in triples_to_ox(source, ox.DefaultGraph())]
                for start in range(0, len(triples), _DATA_CHUNK):
                    chunk = _triples(triples[start:start + _DATA_CHUNK])
                    self.client.update(f"INSERT DATA {{ GRAPH {graph} {{ {chunk} }} }}")
            self.client.update(f"INSERT DATA {{ GRAPH {onto} {{ {onto} {_VERSION} {ox.Literal(version)} }} }}")
        prefix = case_prefix(self.site)
        self.client.update(
            f"DELETE {{ GRAPH {self.union} {{ ?s ?p ?o }} }} INSERT {{ GRAPH {self.union} {{ ?ns ?np ?no }} }} "
            f"WHERE {{ {{ GRAPH {self.union} {{ ?s ?p ?o }} FILTER(!STRSTARTS(STR(?s), \"{prefix}\")) }} UNION "
            f"{{ VALUES ?g {{ {onto} {closed} }} GRAPH ?g {{ ?ns ?np ?no }} }} }}")
        self.client.update(f"INSERT DATA {{ GRAPH {self.union} {{ {self.union} {_VERSION} {ox.Literal(version)} }} }}")

    def _site_ontology_version(self) -> str | None:
        rows = list(self._select(f"SELECT ?v WHERE {{ GRAPH {self.union} {{ {self.union} {_VERSION} ?v }} }}"))
        return rows[0]["v"].value if len(rows) == 1 else None

    def create(self, case_id: str, asserted: Sequence[ox.Triple], inferred: Sequence[ox.Triple]) -> None:
        """Store a new case; Conflict if it exists. Safe against other processes creating it at once.

        The engines check ``FILTER NOT EXISTS`` and insert without locking out a concurrent writer
        (seen with Virtuoso: two creates of one id both inserted, their triples mixed). So a
        writer first claims the id with a one-triple conditional insert and reads the claims back:
        only a writer that finds its own claim alone writes the case (one ``INSERT DATA``). Two
        writers cannot both find themselves alone (each reads after its own claim is committed);
        writers that find each other withdraw and try again after a random pause. A claim left by
        a process that died before writing its case is taken over once it is CLAIM_STALE_S old."""
        graphs = _graphs(self.site, case_id)
        claims_query = f"SELECT ?t WHERE {{ GRAPH {self.writes} {{ {graphs[0]} {_WRITTEN_BY} ?t }} }}"
        for _attempt in range(CLAIM_ATTEMPTS):
            claim = f"{uuid.uuid4().hex} {time.time():.0f}"
            mark = f'{graphs[0]} {_WRITTEN_BY} "{claim}"'
            # The VALUES row: Virtuoso 7.2 ignores a FILTER NOT EXISTS that is all of a WHERE, and
            # inserts nothing for OPTIONAL … FILTER(!BOUND(…)); tests/test_store.py checks both ways.
            self.client.update(f"INSERT {{ GRAPH {self.writes} {{ {mark} }} }} WHERE {{ VALUES ?one {{ 1 }} "
                               f"FILTER NOT EXISTS {{ GRAPH {self.writes} {{ {graphs[0]} {_WRITTEN_BY} ?t }} }} }}")
            claims = {row["t"].value for row in self._select(claims_query)}
            if claims == {claim}:
                inserts = self._case_inserts(case_id, graphs, list(asserted), list(inferred), claim)
                del inserts[self.writes]  # claimed already
                body = " ".join(f"GRAPH {g} {{ {_triples(ts)} }}" for g, ts in inserts.items())
                self.client.update(f"INSERT DATA {{ {body} }}")  # the whole case in one operation
                return
            if claim in claims:  # another writer claimed it at the same moment: both withdraw
                self.client.update(f"DELETE DATA {{ GRAPH {self.writes} {{ {mark} }} }}")
                time.sleep(random.uniform(0.01, 0.05 * (2 + _attempt)))
                continue
            stale = [c for c in claims if _claim_age(c) > CLAIM_STALE_S]
            if self.exists(case_id) or len(stale) < len(claims):
                raise Conflict(f"case {case_id!r} exists already; use PUT to replace it")
            for c in stale:  # a writer died between its claim and its case
                self.client.update(f'DELETE DATA {{ GRAPH {self.writes} {{ {graphs[0]} {_WRITTEN_BY} "{c}" }} }}')
        raise StoreUnavailable(f"case {case_id!r} is being created by other requests at this moment; try again")

    def replace(self, case_id: str, asserted: Sequence[ox.Triple], inferred: Sequence[ox.Triple]) -> bool:
        """Store or replace a case in one operation; True when it did not exist before."""
        graphs = _graphs(self.site, case_id)
        created = not self.exists(case_id)
        rows, marks = self._rows(case_id, graphs, asserted, inferred, f"{uuid.uuid4().hex} {time.time():.0f}")
        self.client.update(f"DELETE {{ {_OLD} }} INSERT {{ {_NEW} GRAPH ?nw {{ {marks} }} }} "
                           f"WHERE {{ {self._old(graphs)} UNION {{ {rows} }} }}")
        return created

    def delete(self, case_id: str) -> None:
        graphs = _graphs(self.site, case_id)
        if not self.exists(case_id):
            raise NotFound(f"no case {case_id!r}")
        self.client.update(f"DELETE {{ {_OLD} }} WHERE {{ {self._old(graphs)} }}")

    def load_nquads(self, data: bytes | Path, cases: int) -> None:
        """Store a loader's batch of whole cases (N-Quads named as the store names them)."""
        by_case: dict[str, list[ox.Quad]] = {}
        source = {"input": data} if isinstance(data, bytes) else {"path": str(data)}
        for quad in ox.parse(**source, format=ox.RdfFormat.N_QUADS, lenient=True):
            graph = cast(ox.NamedNode, quad.graph_name).value
            by_case.setdefault(graph.removesuffix("/inferred"), []).append(quad)
        for case_graph, quads in by_case.items():
            case_id = case_graph.rsplit("/", 1)[-1]
            graphs = _graphs(self.site, case_id)
            asserted = [q.triple for q in quads if f"<{cast(ox.NamedNode, q.graph_name).value}>" == graphs[0]]
            inferred = [q.triple for q in quads if f"<{cast(ox.NamedNode, q.graph_name).value}>" == graphs[1]]
            inserts = self._case_inserts(case_id, graphs, asserted, inferred, f"{uuid.uuid4().hex} {time.time():.0f}")
            body = " ".join(f"GRAPH {g} {{ {_triples(qs)} }}" for g, qs in inserts.items())
            self.client.update(f"INSERT DATA {{ {body} }}")  # one case: all of it, or none

    def flush(self) -> None:
        """Nothing to do: the remote engine makes its own writes durable."""

    def _case_inserts(self, case_id: str, graphs: tuple[str, str], asserted: list[ox.Triple],
                      inferred: list[ox.Triple], token: str) -> dict[str, list[ox.Triple]]:
        skolem = f"{SKOLEM}{self.site}/{case_id}/"
        a = [_skolem(t, skolem) for t in asserted]
        i = [_skolem(t, skolem) for t in inferred]
        mark = ox.Triple(ox.NamedNode(graphs[0][1:-1]), ox.NamedNode(WRITTEN_BY), ox.Literal(token))
        return {graphs[0]: a, graphs[1]: i, self.union: a + i, self.writes: [mark]}

    def _rows(self, case_id: str, graphs: tuple[str, str], asserted: Iterable[ox.Triple],
              inferred: Iterable[ox.Triple], token: str) -> tuple[str, str]:
        """The new triples as one VALUES block (a template of constants would compile to too much
        SQL in Virtuoso), binding the graphs the template writes them to; and the write token."""
        skolem = f"{SKOLEM}{self.site}/{case_id}/"
        rows = " ".join(f"({g} {t.subject} {t.predicate} {t.object})"
                        for g, triples in zip(graphs, (asserted, inferred), strict=True)
                        for t in (_skolem(t, skolem) for t in triples))
        block = f"VALUES (?ng ?ns ?np ?no) {{ {rows} }} BIND({self.union} AS ?nu) BIND({self.writes} AS ?nw)"
        return block, f'{graphs[0]} {_WRITTEN_BY} "{token}" .'

    def _old(self, graphs: tuple[str, str]) -> str:
        """Solutions for a case's old triples and token, which the ``_OLD`` template deletes. An old
        triple leaves the site's union graph unless another of the site's graphs still holds it."""
        others = " && ".join(f"?h != {g}" for g in graphs)
        prefix = case_prefix(self.site)
        shared = f'EXISTS {{ GRAPH ?h {{ ?os ?op ?oo }} FILTER({others} && STRSTARTS(STR(?h), "{prefix}")) }}'
        return (f"{{ VALUES ?og {{ {' '.join(graphs)} }} GRAPH ?og {{ ?os ?op ?oo }} "
                f"BIND(IF({shared}, ?nothing, {self.union}) AS ?ou) }} "
                f"UNION {{ GRAPH {self.writes} {{ {graphs[0]} {_WRITTEN_BY} ?ot }} BIND({self.writes} AS ?ow) "
                f"BIND({graphs[0]} AS ?oa) }}")


_NEW = "GRAPH ?ng { ?ns ?np ?no } GRAPH ?nu { ?ns ?np ?no }"
_OLD = f"GRAPH ?og {{ ?os ?op ?oo }} GRAPH ?ou {{ ?os ?op ?oo }} GRAPH ?ow {{ ?oa {_WRITTEN_BY} ?ot }}"
_DATA_CHUNK = 2000
#: Cases read by one query when a batch is exported.
_EXPORT_CHUNK = 50
#: How often a create tries to claim an id that other writers claim at the same moment.
CLAIM_ATTEMPTS = 8
#: A claim older than this with no case written belongs to a writer that died.
CLAIM_STALE_S = 60.0


def _claim_age(claim: str) -> float:
    try:
        return time.time() - float(claim.rsplit(" ", 1)[-1])
    except ValueError:
        return 0.0


def _graphs(site: str, case_id: str) -> tuple[str, str]:
    iri = f"{case_prefix(site)}{case_id}"
    return f"<{iri}>", f"<{iri}/inferred>"


def _triples(triples: Iterable[ox.Triple | ox.Quad]) -> str:
    return " ".join(f"{t.subject} {t.predicate} {t.object} ." for t in triples)


def _skolem(triple: ox.Triple, base: str) -> ox.Triple:
    s, o = triple.subject, triple.object
    if not isinstance(s, ox.BlankNode) and not isinstance(o, ox.BlankNode):
        return triple
    return ox.Triple(_iri(s, base), triple.predicate, _iri(o, base))  # type: ignore[arg-type]


def _iri(term: Any, base: str) -> Any:
    return ox.NamedNode(base + term.value) if isinstance(term, ox.BlankNode) else term


def _unskolem(term: Any) -> Any:
    if isinstance(term, ox.NamedNode) and term.value.startswith(SKOLEM):
        return ox.BlankNode(term.value.rsplit("/", 1)[-1])
    return term


class _CaseGraphs:
    """SELECTs over one case's two graphs of a remote site."""

    def __init__(self, site: SparqlSite, graphs: tuple[str, ...]) -> None:
        self.site = site
        self.graphs = graphs

    def select(self, query: str, substitutions: Substitutions | None = None) -> ox.QuerySolutions:
        return solutions(self.site._query(query, QueryScope(self.graphs, (), substitutions or {})))


class SparqlStores:
    """Every site's view of one remote store (same interface as :class:`kgservice.stores.oxigraph.Stores`)."""

    def __init__(self, settings: Settings) -> None:
        self.client = SparqlClient(settings)
        self._sites: dict[str, SparqlSite] = {}

    def site(self, site: str) -> SparqlSite:
        from ..core.cases import SITE_PATTERN

        if not SITE_PATTERN.match(site):
            raise NotFound(f"no site {site!r}")
        found = self._sites.get(site)
        if found is None:
            found = self._sites[site] = SparqlSite(site, self.client)
        return found

    def names(self) -> list[str]:
        """The sites with cases in the store (each has a union graph)."""
        base = union_graph("")
        rows = self.client.query(f"SELECT DISTINCT ?g WHERE {{ GRAPH ?g {{ ?case a <{ESI.PatientCase}> }} "
                                 f'FILTER(STRSTARTS(STR(?g), "{base}")) }}', RESULTS_JSON)
        found = ox.parse_query_results(rows, format=ox.QueryResultsFormat.JSON)
        return sorted({row["g"].value[len(base):] for row in cast(ox.QuerySolutions, found)} | set(self._sites))

    def close(self) -> None:
        self.client.close()
