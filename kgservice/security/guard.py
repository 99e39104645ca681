"""Nothing goes out: checks on SPARQL before it runs, and a process-wide network guard.

Layer 1, :func:`check_query`: a query may not use ``SERVICE`` (Oxigraph would fetch it, in
Rust, out of reach of Python's audit hooks). The query is read as the engine reads it
(:mod:`kgservice.querytext`, one linear pass), after its length is checked against
``ESI_QUERY_MAX_LENGTH``. Graph names in ``FROM``, ``FROM NAMED`` and the protocol's
``default-graph-uri``/``named-graph-uri`` are never fetched: Oxigraph looks them up in the
site's own store, where a name that is not there is an empty graph.

Layer 2 is in the parsers: Oxigraph's JSON-LD parser has no document loader, so a remote
``@context`` is an error, not a fetch.

Layer 3, :func:`install_network_guard`: a ``sys.addaudithook`` hook that refuses every
outgoing connection and name lookup made from Python, so that a path missed above fails
closed.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable

from ..errors import PayloadTooLarge, QueryError
from ..querytext import Reading, read


def check_query(query: str, max_length: int) -> Reading:
    """Raise :class:`QueryError` (400) or :class:`PayloadTooLarge` (413) for a query that may not run.

    Returns what the reading found (whether the query names its own dataset)."""
    if len(query) > max_length:
        raise PayloadTooLarge(f"the query has {len(query)} characters; at most {max_length} are accepted "
                              "(ESI_QUERY_MAX_LENGTH)")
    reading = read(query)
    if reading.service:
        raise QueryError("SERVICE is not allowed: ESI-KG answers from its own data and never fetches a remote "
                         "endpoint. The letters S-E-R-V-I-C-E, in any case, are refused anywhere but in a string, "
                         "an IRI or a comment, even inside a name or variable (rename it)")
    return reading


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
