"""One SPARQL query run under limits: what to run, its limits, and its answer, serialized by Oxigraph.

A :class:`QueryRun` is the store-independent description of a query: the text, the dataset
(``None``: the union default graph), the media types the client accepts. A site store runs it
(``SiteStore.run_limited``); the embedded store does it in a forked child with :func:`execute`,
which streams the answer out with Oxigraph's own serializers through :class:`CappedOutput`,
which counts rows and bytes as they are written: one row over ``max_rows`` or one byte over
``max_bytes`` stops the query with a problem, never with a truncated body.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, cast

import pyoxigraph as ox

from .core.media import RDF_OUT, RDFXML
from .errors import ESIError, NotAcceptable, QueryError

RESULTS_JSON = "application/sparql-results+json"
RESULTS_XML = "application/sparql-results+xml"
CSV = "text/csv"
TSV = "text/tab-separated-values"
#: SELECT and ASK results, by media type (the first is the default). ``application/json`` and
#: ``application/xml`` are what generic clients ask for; they get the SPARQL results formats.
RESULT_FORMATS = {
    RESULTS_JSON: ox.QueryResultsFormat.JSON, RESULTS_XML: ox.QueryResultsFormat.XML,
    CSV: ox.QueryResultsFormat.CSV, TSV: ox.QueryResultsFormat.TSV,
    "application/json": ox.QueryResultsFormat.JSON, "application/xml": ox.QueryResultsFormat.XML,
    "text/xml": ox.QueryResultsFormat.XML,
}
#: CONSTRUCT and DESCRIBE results (and RDF documents generally), by media type.
GRAPH_FORMATS = {
    **RDF_OUT, "application/trig": ox.RdfFormat.TRIG, "application/n-quads": ox.RdfFormat.N_QUADS,
    "application/xml": ox.RdfFormat.RDF_XML, "text/xml": ox.RdfFormat.RDF_XML,
}
_SENT_AS = {"application/json": RESULTS_JSON, "application/xml": RESULTS_XML, "text/xml": RESULTS_XML}


class RowLimit(ESIError):
    status = 422
    type_slug = "too-many-results"
    title = "Too many results"


class ResponseTooLarge(ESIError):
    status = 422
    type_slug = "response-too-large"
    title = "Response too large"

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"the answer is larger than {max_bytes} bytes (ESI_QUERY_MAX_RESPONSE_BYTES); add LIMIT "
                         "or select fewer or shorter values")


@dataclass(frozen=True)
class Dataset:
    """The RDF dataset of a query, by graph IRIs: a default graph merged from ``default``, and ``named``."""

    default: tuple[str, ...] = ()
    named: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueryRun:
    """A query to run on a site's dataset, and how its answer may be sent.

    ``dataset``: ``None`` runs the query on its own ``FROM``/``FROM NAMED`` when it has them
    (``own_dataset``), else on the union default graph; a :class:`Dataset` (the protocol's
    ``default-graph-uri``/``named-graph-uri``) replaces both."""

    text: str
    result_media: str | None
    graph_media: str | None
    dataset: Dataset | None = None
    own_dataset: bool = False
    base_iri: str | None = None
    substitutions: dict[ox.Variable, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``pyoxigraph.Store.query``."""
        options: dict[str, Any] = {"base_iri": self.base_iri}
        if self.substitutions:
            options["substitutions"] = self.substitutions
        if self.dataset is not None:
            options["default_graph"] = [ox.NamedNode(g) for g in self.dataset.default]
            options["named_graphs"] = [ox.NamedNode(g) for g in self.dataset.named]
        elif not self.own_dataset:
            options["use_default_graph_as_union"] = True
        return options


@dataclass(frozen=True)
class QueryLimits:
    timeout_s: float
    max_rows: int
    max_bytes: int
    max_memory_bytes: int


@dataclass(frozen=True)
class Answer:
    media_type: str
    body: bytes


# -- in the child ------------------------------------------------------------------------------------


def already_started() -> None:
    """The ``started`` a warm query process gives its work: it holds a snapshot of the store since it
    said ready, so :func:`execute` takes no second one (that cost about 0.1 ms a query, twice
    ``ASK {}`` itself)."""


def execute(store: ox.Store, run: QueryRun, limits: QueryLimits, started: Callable[[], None],
            emit: Callable[[bytes], None]) -> str:
    """Run ``run`` on ``store`` and stream its answer to ``emit``; return the answer's media type.

    ``started`` is called once the store is known to be readable (a snapshot taken)."""
    if started is not already_started:
        snapshot(store)
        started()
    try:
        result = store.query(run.text, **run.options())
    except SyntaxError as exc:
        raise QueryError(f"the query does not parse: {exc}") from None
    return write_answer(result, run, limits, emit)


def snapshot(store: ox.Store) -> None:
    """Take a snapshot of the store, as every query does: it returns only if the store can be read."""
    store.query("ASK { GRAPH ?g { ?s ?p ?o } }")


#: Run by a warm query process before it takes its first query (:mod:`kgservice.querychild`): the
#: parser, the planner, a scan and a join over the union default graph, grouping, sorting and the
#: JSON writer with its row counter, so that the pages these write are copied then, not during
#: a client's query. Its LIMITs bound it on a store of any size.
WARM_UP = QueryRun(
    "SELECT ?type (COUNT(?o) AS ?n) (SAMPLE(?o) AS ?one) WHERE { { SELECT ?s ?type WHERE { ?s a ?type } LIMIT 64 } "
    "OPTIONAL { ?s ?p ?o FILTER (!isBlank(?o)) } } GROUP BY ?type ORDER BY DESC(?n) LIMIT 16",
    RESULTS_JSON, None)
_WARM_UP_LIMITS = QueryLimits(timeout_s=1.0, max_rows=1_000, max_bytes=1 << 20, max_memory_bytes=1 << 30)


def warm_up(store: ox.Store) -> None:
    """Take a snapshot of the store, then run :data:`WARM_UP` on it and throw its answer away."""
    snapshot(store)
    execute(store, WARM_UP, _WARM_UP_LIMITS, already_started, _nowhere)


def _nowhere(data: bytes) -> None:
    pass


def write_answer(result: ox.QuerySolutions | ox.QueryBoolean | Iterable[ox.Triple], run: QueryRun,
                 limits: QueryLimits, emit: Callable[[bytes], None]) -> str:
    """Serialize a query's result as ``run`` asks, under the row and byte caps; return the media type."""
    if isinstance(result, ox.QueryBoolean):
        media = _need(run.result_media, RESULT_FORMATS, "an ASK result")
        emit(_boolean(result, media))
        return _SENT_AS.get(media, media)
    if isinstance(result, ox.QuerySolutions):
        media = _need(run.result_media, RESULT_FORMATS, "a SELECT result")
        output = CappedOutput(emit, limits.max_bytes, _row_counter(media, limits.max_rows))
        _serializing(lambda: result.serialize(cast(IO[bytes], output), format=RESULT_FORMATS[media]))
        return _SENT_AS.get(media, media)
    media = _need(run.graph_media, GRAPH_FORMATS, "a CONSTRUCT or DESCRIBE result")
    output = CappedOutput(emit, limits.max_bytes, None)
    _serializing(lambda: ox.serialize(_capped(result, limits.max_rows), cast(IO[bytes], output),
                                      format=GRAPH_FORMATS[media]))
    return RDFXML if GRAPH_FORMATS[media] == ox.RdfFormat.RDF_XML else media


def _need(media: str | None, formats: dict[str, Any], what: str) -> str:
    if media is None:
        offers = ", ".join(m for m in formats if m not in _SENT_AS or formats is GRAPH_FORMATS)
        raise NotAcceptable(f"{what} can be sent as {offers}")
    return media


def _serializing(write: Callable[[], object]) -> None:
    try:
        write()
    except OSError as exc:  # e.g. "JSON-LD does not support RDF 1.2": the format cannot carry the result
        raise NotAcceptable(f"the result cannot be written in the format asked for: {exc}") from None


def _boolean(result: ox.QueryBoolean, media: str) -> bytes:
    """ASK results, by Oxigraph's serializers; as CSV and TSV, one column ``_askResult`` with one row
    (the convention other stores follow, since the CSV/TSV results note defines SELECT results only,
    and Oxigraph writes the bare word)."""
    if media in (CSV, TSV):
        word = "true" if result else "false"
        return f"_askResult\r\n{word}\r\n".encode() if media == CSV else f"?_askResult\n{word}\n".encode()
    return cast(bytes, result.serialize(format=RESULT_FORMATS[media]))  # no output given: the bytes


def _capped(triples: Iterable[ox.Triple], limit: int) -> Iterator[ox.Triple]:
    for n, triple in enumerate(triples):
        if n >= limit:
            raise RowLimit(f"the result has more than {limit} triples; add LIMIT or narrow the query")
        yield triple


class CappedOutput(io.RawIOBase):
    """A binary stream for Oxigraph's serializers that passes bytes on, counting bytes and rows."""

    def __init__(self, emit: Callable[[bytes], None], max_bytes: int, rows: _Rows | None) -> None:
        super().__init__()
        self.emit, self.max_bytes, self.rows, self.size = emit, max_bytes, rows, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise ResponseTooLarge(self.max_bytes)
        if self.rows is not None:
            self.rows.feed(chunk)
        self.emit(chunk)
        return len(chunk)


class _Rows:
    """Counts the rows of a serialized SELECT result as its bytes go by; raises past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0

    def add(self, n: int) -> None:
        self.count += n
        if self.count > self.limit:
            raise RowLimit(f"the result has more than {self.limit} rows; add LIMIT or narrow the query")

    def feed(self, chunk: bytes) -> None:
        raise NotImplementedError


class _Bounded(_Rows):
    """A counter whose exact reading is dear, read only once a cheap bound passes the limit.

    ``bound(chunk)`` may count more rows than the chunk has, never fewer (every row has a byte
    ``bound`` counts; strings may add some): while the bound is within the limit, so is the count,
    and the chunks wait. Past it, every chunk so far is read exactly, and each one after it."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.bounded = 0
        self.waiting: list[bytes] | None = []

    def feed(self, chunk: bytes) -> None:
        if self.waiting is not None:
            self.bounded += self.bound(chunk)
            if self.bounded <= self.limit:
                self.waiting.append(chunk)
                return
            waiting, self.waiting = self.waiting, None
            for earlier in waiting:
                self.exact(earlier)
        self.exact(chunk)

    def bound(self, chunk: bytes) -> int:
        raise NotImplementedError

    def exact(self, chunk: bytes) -> None:
        raise NotImplementedError


class _LineRows(_Rows):
    """TSV (line breaks in values are escaped) and CSV (values with line breaks are quoted):
    one row per line break outside quotes, after the header line."""

    def __init__(self, limit: int, quoted: bool) -> None:
        super().__init__(limit + 1)  # the header line
        self.quoted, self.in_quotes = quoted, False

    def feed(self, chunk: bytes) -> None:
        if not self.quoted:
            self.add(chunk.count(b"\n"))
            return
        for piece in chunk.split(b'"'):
            if not self.in_quotes:
                self.add(piece.count(b"\n"))
            self.in_quotes = not self.in_quotes
        self.in_quotes = not self.in_quotes  # n pieces are separated by n - 1 quotes


class _XmlRows(_Rows):
    """One ``<result>`` element per row; text is escaped, so the tag appears nowhere else."""

    TAG = b"<result>"

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        data = self.tail + chunk
        self.add(data.count(self.TAG))
        self.tail = data[-(len(self.TAG) - 1):]


class _JsonRows(_Bounded):
    """Rows of Oxigraph's JSON results, counted by the regular expression engine, not byte by byte.

    Every value is a string, and a quote inside one is escaped; with the strings taken out, a
    row (``{"results": {"bindings": [ {…}, {…} ]}}``) is the only object that follows ``[`` or
    ``,`` directly: a key always sits between ``,`` and the value object of a binding, and the
    head holds arrays of strings only. A string cut by the end of a chunk is carried over as a
    state (inside a string, after a backslash), never re-read.
    """

    STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
    OUTSIDE = re.compile(rb'(?:[^"]++|"(?:[^"\\]++|\\.)*+")*+')  # whole strings and what lies between
    INSIDE = re.compile(rb'(?:[^"\\]++|\\.)*+')  # the rest of a string, up to its closing quote

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.in_string, self.escaped, self.last, self.edge = False, False, b"", b""

    def bound(self, chunk: bytes) -> int:
        """``,{`` and ``[{`` with the strings left in: each row, and whatever a value holds."""
        data, self.edge = self.edge + chunk, chunk[-1:]
        return data.count(b",{") + data.count(b"[{")

    def exact(self, chunk: bytes) -> None:
        pos = 0
        if self.in_string:
            if self.escaped:
                if not chunk:
                    return
                pos, self.escaped = 1, False
            pos = self.INSIDE.match(chunk, pos).end()  # type: ignore[union-attr]
            if pos >= len(chunk) - 1 and chunk[pos:pos + 1] != b'"':  # still inside, maybe after a backslash
                self.escaped = chunk[pos:pos + 1] == b"\\"
                return
            pos, self.in_string = pos + 1, False
        end = self.OUTSIDE.match(chunk, pos).end()  # type: ignore[union-attr]
        between = self.last + self.STRING.sub(b"", chunk[pos:end])
        self.add(between.count(b",{") + between.count(b"[{"))
        self.last = between[-1:]
        if end < len(chunk):  # a string opens and does not close in this chunk
            self.in_string = True
            rest = self.INSIDE.match(chunk, end + 1).end()  # type: ignore[union-attr]
            self.escaped = rest < len(chunk)  # it stopped at a lone backslash, the chunk's last byte


def _row_counter(media: str, limit: int) -> _Rows:
    fmt = RESULT_FORMATS[media]
    if fmt == ox.QueryResultsFormat.JSON:
        return _JsonRows(limit)
    if fmt == ox.QueryResultsFormat.XML:
        return _XmlRows(limit)
    return _LineRows(limit, quoted=fmt == ox.QueryResultsFormat.CSV)
