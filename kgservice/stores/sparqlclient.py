"""The HTTP side of a remote SPARQL store: its query and update endpoints.

Only the hosts and ports the settings name are reachable (:func:`store_addresses` tells the
network guard); a store that does not answer is a ``503``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from ..config import Settings
from ..errors import ESIError, QueryError
from ..isolation import TimeLimit
from ..queryrun import RESULTS_JSON


class StoreUnavailable(ESIError):
    status = 503
    type_slug = "store-unavailable"
    title = "The store is unavailable"


class SparqlClient:
    """The SPARQL 1.1 Protocol over HTTP: queries and updates, form-encoded (Virtuoso hangs on a
    direct ``application/sparql-query`` POST), every result format asked for by ``Accept``."""

    def __init__(self, settings: Settings) -> None:
        if not settings.sparql_endpoint:
            raise ValueError("ESI_STORE=sparql needs ESI_SPARQL_ENDPOINT")
        self.endpoint = settings.sparql_endpoint
        self.update_endpoint = settings.sparql_update_endpoint or settings.sparql_endpoint
        self.timeout_s = settings.query_timeout_s
        auth: httpx.Auth | None = None
        if settings.sparql_username:
            auth = httpx.DigestAuth(settings.sparql_username, settings.sparql_password or "")
        self.http = httpx.Client(auth=auth, trust_env=False, limits=httpx.Limits(max_connections=32),
                                 timeout=httpx.Timeout(max(60.0, settings.query_timeout_s + 5), connect=5.0))

    def query(self, text: str, accept: str, default_graphs: Sequence[str] = (), named_graphs: Sequence[str] = (),
              timeout_s: float | None = None) -> bytes:
        """The body of a query's answer; a partial answer (the engine's time limit) raises TimeLimit."""
        limit = timeout_s if timeout_s is not None else self.timeout_s
        form: dict[str, Any] = {"query": text, "timeout": str(int(limit * 1000)),
                                "default-graph-uri": list(default_graphs), "named-graph-uri": list(named_graphs)}
        try:
            response = self.http.post(self.endpoint, data=form, headers={"Accept": accept},
                                      timeout=httpx.Timeout(limit + 5, connect=5.0))
        except httpx.TimeoutException:
            raise TimeLimit(f"the query ran longer than {limit:g} s and was stopped; narrow it or add LIMIT") from None
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"the SPARQL store did not answer ({type(exc).__name__})") from None
        state = response.headers.get("X-SQL-State", "")
        if state in ("S1TAT", "S1T00") or (response.status_code == 500 and b"S1T00" in response.content[:300]):
            # Virtuoso's "anytime" answer: 200 with the rows found before the time limit
            raise TimeLimit(f"the query ran longer than {limit:g} s and was stopped; narrow it or add LIMIT")
        if response.status_code == 400:
            raise QueryError(f"the store refused the query: {_message(response)}")
        if response.status_code != 200:
            raise StoreUnavailable(f"the SPARQL store answered {response.status_code}: {_message(response)}")
        return response.content

    def update(self, text: str) -> None:
        try:
            response = self.http.post(self.update_endpoint, data={"update": text},
                                      headers={"Accept": RESULTS_JSON})
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"the SPARQL store did not answer ({type(exc).__name__}); nothing was "
                                   "stored unless a later read shows it") from None
        if response.status_code not in (200, 204):
            raise StoreUnavailable(f"the SPARQL store refused the update ({response.status_code}: "
                                   f"{_message(response)}); nothing was stored")

    def close(self) -> None:
        self.http.close()


def _message(response: httpx.Response) -> str:
    return response.text[:300].strip().replace("\n", " ")


def store_addresses(settings: Settings) -> list[tuple[str, int]]:
    """The (host, port) of each configured endpoint, by name and by address: what the network
    guard lets the server reach. Resolved once, before the guard is installed."""
    import socket
    from urllib.parse import urlsplit

    out: list[tuple[str, int]] = []
    for url in (settings.sparql_endpoint, settings.sparql_update_endpoint, settings.sparql_gsp_endpoint):
        if not url:
            continue
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        out.append((parts.hostname or "", port))
        for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM):
            out.append((str(info[4][0]), port))
    return out
