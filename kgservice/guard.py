"""Nothing goes out: checks on SPARQL before it runs, and a process-wide network guard.

Layer 1, :func:`check_query`: a query may not use ``SERVICE`` (Oxigraph would fetch it, in
Rust, out of reach of Python's audit hooks) or a dataset (``FROM``,
``FROM NAMED``, ``default-graph-uri``, ``named-graph-uri``) naming a graph that is not one
of ESI-KG's own.

Layer 2 is in the parsers: Oxigraph's JSON-LD parser has no document loader, so a remote
``@context`` is an error, not a fetch.

Layer 3, :func:`install_network_guard`: a ``sys.addaudithook`` hook that refuses every
outgoing connection and name lookup made from Python, so that a path missed above fails
closed.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Iterable, Iterator
from urllib.parse import urljoin

from .errors import QueryError

#: Graph names a query may use in its dataset: the ontology's and the cases'.
LOCAL_GRAPHS = ("https://w3id.org/esi-kg/",)

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
    | (?P<pname>(?:[A-Za-z][\w.-]*?)?:(?:[\w.:%-]|\\[_~.!$&'()*+,;=/?\#@%-])*)
    | (?P<word>[A-Za-z_]+)
    | (?P<other>\S)
    """,
    re.VERBOSE,
)
#: Characters that, outside a string, IRI, prefixed name or comment, mean the text was not
#: read as SPARQL reads it: refuse rather than guess.
_UNREADABLE = {"\\", "'", '"'}


def _tokens(query: str) -> Iterator[tuple[str, str]]:
    for match in _TOKEN.finditer(query):
        kind = match.lastgroup or "other"
        if kind != "comment":
            yield kind, match.group()


def check_query(query: str, default_graphs: Iterable[str] = (), named_graphs: Iterable[str] = ()) -> None:
    """Raise :class:`QueryError` (400) if the query could reach outside the dataset."""
    prefixes: dict[str, str] = {}
    base = ""
    tokens = list(_tokens(query))
    for i, (kind, text) in enumerate(tokens):
        if kind == "other" and text in _UNREADABLE:
            raise QueryError(f"the query has {text!r} outside a string, IRI or prefixed name; it cannot be checked, "
                             "so it is not run")
        if kind != "word":
            continue
        word = text.upper()
        if word == "SERVICE":
            raise QueryError("SERVICE is not allowed: ESI-KG answers from its own data and never fetches a remote "
                             "endpoint")
        if word == "PREFIX" and i + 2 < len(tokens) and tokens[i + 2][0] == "iri":
            prefixes[tokens[i + 1][1].rstrip(":")] = tokens[i + 2][1][1:-1]
        if word == "BASE" and i + 1 < len(tokens) and tokens[i + 1][0] == "iri":
            base = tokens[i + 1][1][1:-1]
        if word == "FROM":
            j = i + 1
            if j < len(tokens) and tokens[j][1].upper() == "NAMED":
                j += 1
            if j >= len(tokens):
                continue
            _check_graph(_resolve(tokens[j], prefixes, base), "FROM")
    for graph in [*default_graphs, *named_graphs]:
        _check_graph(graph, "the protocol's dataset")


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


def _check_graph(iri: str, where: str) -> None:
    if not iri.startswith(LOCAL_GRAPHS):
        raise QueryError(f"{where} names the graph <{iri}>, which is not in this dataset; graphs here start with "
                         f"{LOCAL_GRAPHS[0]} (GET /sparql describes the dataset). Nothing is ever fetched.")


# -- layer 3 -------------------------------------------------------------------------------

_NETWORK_EVENTS = {
    "socket.connect": "open a network connection",
    "socket.getaddrinfo": "resolve a host name",
    "socket.gethostbyname": "resolve a host name",
    "socket.sendto": "send a datagram",
    "urllib.Request": "fetch a URL",
    "http.client.connect": "open an HTTP connection",
    "ftplib.connect": "open an FTP connection",
    "smtplib.connect": "open an SMTP connection",
}
_installed = False


def install_network_guard(allow: Iterable[tuple[str, int]] = ()) -> None:
    """Refuse, for the rest of the process's life, every outgoing connection from Python.

    ``allow``: the (host, port) pairs that may still be reached, names and addresses both: the
    remote store's endpoints (``ESI_STORE=sparql``), derived from the settings, and nothing else.
    Audit hooks cannot be removed: call this only in the server process (``kgservice
    serve``), never in a process that must connect somewhere (a test client).
    """
    global _installed
    if _installed:
        return
    allowed = frozenset((host.lower(), int(port)) for host, port in allow)

    def hook(event: str, args: tuple[object, ...]) -> None:
        what = _NETWORK_EVENTS.get(event)
        if what is None:
            return
        if event == "socket.connect" and args and _is_local_socket(args):
            return
        if allowed and _target(event, args) in allowed:
            return
        raise PermissionError(f"ESI-KG does not {what} ({event} refused by the network guard)")

    sys.addaudithook(hook)
    _installed = True


def _target(event: str, args: tuple[object, ...]) -> tuple[str, int] | None:
    """The (host, port) an event would reach, where it names one."""
    try:
        if event == "socket.connect" and isinstance(args[1], tuple):
            return str(args[1][0]).lower(), int(args[1][1])
        if event in ("socket.getaddrinfo", "http.client.connect"):
            host, port = (args[0], args[1]) if event == "socket.getaddrinfo" else (args[1], args[2])
            return str(host).lower(), int(port)  # type: ignore[call-overload]
    except (IndexError, TypeError, ValueError):
        return None
    return None


def _is_local_socket(args: tuple[object, ...]) -> bool:
    """A Unix-domain socket (e.g. multiprocessing's own plumbing) is not the network."""
    return getattr(args[0], "family", None) == socket.AF_UNIX
