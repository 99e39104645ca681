"""Fixtures for the security tests: a listener that counts connections, apps with auth on, tokens.

``listener`` is a plain TCP server on 127.0.0.1 that counts the connections it accepts: a
test points an attack at it and asserts that it saw none (``listener.assert_untouched()``).

``make_app`` builds an app over ``tmp_path`` with authentication on (unless told otherwise).
Its case stores are in memory by default: ``run_forked`` forks the process for each SPARQL
query, and on the on-disk store a child forked while a RocksDB thread holds the database mutex
is stuck and must be forked again (a second of delay, see
``test_limits.py::test_queries_are_answered_while_the_store_flushes_and_compacts``), which
would blur the timings these tests measure. ``disk=True`` gives the on-disk stores.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from kgservice import querypool
from kgservice.api import create_app
from kgservice.config import Settings
from kgservice.core.kb import KnowledgeBase
from kgservice.security.auth import TokenStore
from kgservice.service import Service
from kgservice.stores.oxigraph import Stores

DATA = Path(__file__).resolve().parent.parent / "data"
VIGNETTES: dict[str, dict[str, Any]] = {
    p.stem.split("-", 1)[0]: json.loads(p.read_text(encoding="utf-8"))["case"]
    for p in sorted((DATA / "vignettes").glob("*.json"))
}
PROBLEM = "application/problem+json"
ESI = "https://w3id.org/esi-kg/ontology#"
CASE_BASE = "https://w3id.org/esi-kg/case/"


def vignette(key: str, **changes: Any) -> dict[str, Any]:
    """A copy of a public vignette's case (``p01`` … ``p10``), with fields changed."""
    return {**json.loads(json.dumps(VIGNETTES[key])), **changes}


def assert_problem(response: TestResponse, status: int | tuple[int, ...]) -> dict[str, Any]:
    """An RFC 9457 answer with this status (or one of these), and no Python internals in it."""
    statuses = (status,) if isinstance(status, int) else status
    text = response.get_data(as_text=True)
    assert response.status_code in statuses, (response.status_code, text[:500])
    assert response.mimetype == PROBLEM, response.mimetype
    for internal in ("Traceback", 'File "', "RuntimeError", "/kgservice/", ".py\""):
        assert internal not in text, text[:500]
    body = json.loads(text)
    assert body["status"] == response.status_code
    assert body["type"].startswith("https://") and body["title"]
    return body  # type: ignore[no-any-return]


# -- the listener ----------------------------------------------------------------------------------


class Listener:
    """A TCP server on 127.0.0.1 that accepts, counts and closes every connection."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self.requests: list[bytes] = []
        self._hits = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="listener", daemon=True)
        self._thread.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _pending(self) -> bool:
        """A connection is waiting in the backlog (its handshake is done, it is not accepted yet)."""
        return bool(select.select([self._sock], [], [], 0)[0])

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.02)
            if not ready:
                continue
            with self._lock:  # accept and count at once, so that ``hits`` never sees one half done
                try:
                    conn, _ = self._sock.accept()
                except OSError:
                    continue
                self._hits += 1
            with conn:
                conn.settimeout(0.2)
                try:
                    self.requests.append(conn.recv(4096))
                except OSError:
                    self.requests.append(b"")

    @property
    def hits(self) -> int:
        """Connections made so far: accepted, or waiting to be (a connect is done in the kernel
        before the caller's request returns)."""
        deadline = time.monotonic() + 2
        while True:
            with self._lock:
                if not self._pending() or time.monotonic() > deadline:
                    return self._hits + int(self._pending())
            time.sleep(0.005)

    def assert_untouched(self, what: str = "") -> None:
        hits = self.hits
        assert hits == 0, f"{what}: the listener was reached {hits} time(s): {self.requests!r}"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


# -- apps, clients and tokens ------------------------------------------------------------------------


@dataclass
class Site:
    """A token of one site: its id, the secret and the header that carries it."""

    site: str
    token_id: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


def issue(settings: Settings, site: str, *scopes: str) -> Site:
    """Make a token the way ``kgservice token create`` does (hashed into tokens.json)."""
    token, secret = TokenStore(settings.tokens_path).create(site, list(scopes))
    return Site(site, token.id, secret)


#: Settings that shape the knowledge base; apps that keep the defaults share the session's ``kb``.
_KB_FIELDS = ("ontology_path", "shapes_dir", "engine", "max_case_triples", "max_case_list_items")


class Apps:
    """Builds apps over data directories under ``root`` and closes them all at the end."""

    def __init__(self, root: Path, kb: KnowledgeBase, sparql_endpoint: str | None = None) -> None:
        self.root = root
        self.kb = kb
        self.made: list[Flask] = []
        self.sparql_endpoint = sparql_endpoint  # set: apps over that remote store, emptied for each

    def __call__(self, disk: bool = False, **overrides: Any) -> Flask:
        """An app with authentication on (unless overridden); in-memory stores unless ``disk``."""
        if self.sparql_endpoint is not None:
            from virtuoso import wipe

            wipe(self.sparql_endpoint)
            overrides = {"store": "sparql", "sparql_endpoint": self.sparql_endpoint, **overrides}
        settings = Settings(**{"data_dir": self.root / f"data{len(self.made)}", "auth_required": True, **overrides})
        shared = all(getattr(settings, f) == getattr(Settings(), f) for f in _KB_FIELDS)
        remote = self.sparql_endpoint is not None
        service = Service(settings, kb=self.kb if shared else None, stores=None if disk or remote else Stores(None))
        app = create_app(settings, service=service)
        self.made.append(app)
        return app

    def close(self) -> None:
        for app in self.made:
            app.extensions["esi"].close()
            app.extensions["esi-audit"].close()


@pytest.fixture
def make_app(tmp_path: Path, kb: KnowledgeBase) -> Iterator[Apps]:
    """``make_app(disk=False, **settings)``: an app over its own data directory, closed after the test."""
    apps = Apps(tmp_path, kb)
    yield apps
    apps.close()


@pytest.fixture(scope="module")
def module_apps(tmp_path_factory: pytest.TempPathFactory, kb: KnowledgeBase) -> Iterator[Apps]:
    """The same, for apps shared by a module's tests (those that store nothing, or read only)."""
    apps = Apps(tmp_path_factory.mktemp("apps"), kb)
    yield apps
    apps.close()


@pytest.fixture
def secure_app(make_app: Apps) -> Flask:
    """Authentication on, in-memory stores."""
    return make_app()


@pytest.fixture
def secure_client(secure_app: Flask) -> FlaskClient:
    return secure_app.test_client()


def settings_of(app: Flask) -> Settings:
    return app.extensions["esi"].settings  # type: ignore[no-any-return]


@pytest.fixture
def north(secure_app: Flask) -> Site:
    """A token of site ``north`` with every scope but admin."""
    return issue(settings_of(secure_app), "north", "pathway:run", "cases:read", "cases:write")


@pytest.fixture
def south(secure_app: Flask) -> Site:
    return issue(settings_of(secure_app), "south", "pathway:run", "cases:read", "cases:write")


# -- processes -------------------------------------------------------------------------------------------


def children_of(pid: int | None = None, warm: bool = True) -> dict[int, str]:
    """Child processes of ``pid`` (default: this process) with their state, from /proc.

    Zombies count: a child that was killed but never reaped is left over too. ``warm=False``
    leaves out this process's idle warm query processes (:func:`kgservice.querypool.warm_pids`),
    which wait for the next query by design.
    """
    leave_warm_out = not warm and pid is None
    ready = querypool.warm_pids() if leave_warm_out else set()
    pid = os.getpid() if pid is None else pid
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                stat = f.read()
        except OSError:
            continue
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if int(ppid) == pid and state != "X" and int(entry) not in ready:
            found[int(entry)] = state
    if leave_warm_out:  # one the keeper forked while /proc was read is warm too
        found = {child: state for child, state in found.items() if child not in querypool.warm_pids()}
    return found
