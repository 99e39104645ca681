"""The audit trail: every request that touches case data leaves exactly one JSON line, written
before the response is returned, naming the token by its id (never its secret), the site, the
case or the query's SHA-256, the outcome and the client's address.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from kgservice.config import Settings
from kgservice.http.queries import parse_query_file
from kgservice.security.access import query_hash

from .conftest import Apps, issue, settings_of, vignette

CLIENT_ADDRESS = "203.0.113.7"
SPARQL = "SELECT ?case WHERE { ?case a <https://w3id.org/esi-kg/ontology#PatientCase> }"


class Trail:
    """Reads the audit file after each response: exactly one new record, with these fields."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = self._lines()

    def _lines(self) -> list[str]:
        return self.path.read_text(encoding="utf-8").splitlines() if self.path.exists() else []

    def one_new(self, response: TestResponse, **expected: Any) -> dict[str, Any]:
        lines = self._lines()
        new = lines[len(self.seen):]
        assert lines[:len(self.seen)] == self.seen, "the audit file was rewritten, not appended to"
        assert len(new) == 1, f"{len(new)} new audit records for one request: {new}"
        self.seen = lines
        record: dict[str, Any] = json.loads(new[0])
        when = dt.datetime.fromisoformat(record["time"])
        assert when.tzinfo is not None
        assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 60
        assert record["outcome"] == response.status_code
        assert record["client"] == CLIENT_ADDRESS
        for key, value in expected.items():
            assert record.get(key) == value, (key, record)
        return record

    def none_new(self) -> None:
        assert self._lines() == self.seen


def test_each_request_on_case_data_leaves_one_record(make_app: Apps) -> None:
    app = make_app()
    settings = settings_of(app)
    north = issue(settings, "north", "pathway:run", "cases:read", "cases:write")
    reader = issue(settings, "north", "ontology:read")
    client: FlaskClient = app.test_client()
    client.environ_base["REMOTE_ADDR"] = CLIENT_ADDRESS
    trail = Trail(settings.audit_path)
    as_north = {"token": north.token_id, "site": "north"}
    named = parse_query_file(Settings().queries_dir / "cases-by-category.rq")

    steps: list[tuple[str, Callable[[], TestResponse], int, dict[str, Any]]] = [
        ("create", lambda: client.post("/cases", json=vignette("p01"), headers=north.headers), 201,
         {**as_north, "case": "p01", "action": "POST /cases", "scope": "cases:write"}),
        ("read", lambda: client.get("/cases/p01", headers=north.headers), 200,
         {**as_north, "case": "p01", "action": "GET /cases/<case_id>", "scope": "cases:read"}),
        ("read answer", lambda: client.get("/cases/p01/pathway", headers=north.headers), 200,
         {**as_north, "case": "p01"}),
        ("list", lambda: client.get("/cases", headers=north.headers), 200,
         {**as_north, "case": None, "action": "GET /cases"}),
        ("sparql", lambda: client.get("/sparql", query_string={"query": SPARQL}, headers=north.headers), 200,
         {**as_north, "query_sha256": query_hash(SPARQL, "|")}),
        ("named query", lambda: client.get("/queries/cases-by-category",
                                           query_string={"category": "primary-non-responder"}, headers=north.headers),
         200, {**as_north, "query": "cases-by-category",
               "query_sha256": query_hash(named.text, "category=primary-non-responder")}),
        ("answer", lambda: client.post("/pathway", json=vignette("p08"), headers=north.headers), 200,
         {**as_north, "scope": "pathway:run"}),
        ("replace", lambda: client.put("/cases/p01", json=vignette("p01", age=56), headers=north.headers), 200,
         {**as_north, "case": "p01", "action": "PUT /cases/<case_id>"}),
        ("delete", lambda: client.delete("/cases/p01", headers=north.headers), 204,
         {**as_north, "case": "p01", "action": "DELETE /cases/<case_id>"}),
        ("401", lambda: client.get("/cases/p08"), 401, {"token": None, "case": "p08"}),
        ("401 bad token", lambda: client.get("/cases", headers={"Authorization": north.secret[:-2]}), 401,
         {"token": None}),
        ("403", lambda: client.get("/cases", headers=reader.headers), 403,
         {"token": reader.token_id, "site": "north"}),
        ("422", lambda: client.post("/cases", json=vignette("p01", age=-3), headers=north.headers), 422,
         as_north),
        ("404", lambda: client.get("/cases/nothing-here", headers=north.headers), 404,
         {**as_north, "case": "nothing-here"}),
    ]
    for name, request, status, expected in steps:
        response = request()
        assert response.status_code == status, (name, response.get_data(as_text=True)[:300])
        record = trail.one_new(response, **expected)
        if name in ("sparql", "named query"):
            assert re.fullmatch(r"[0-9a-f]{64}", record["query_sha256"])

    for open_path in ("/health", "/vocabulary", "/ontology", "/openapi.json"):
        assert client.get(open_path).status_code == 200
        trail.none_new()

    text = settings.audit_path.read_text(encoding="utf-8")
    for who in (north, reader):
        assert who.secret not in text and who.secret.split("_", 2)[2] not in text
    assert SPARQL not in text  # the query is named by its hash, not copied


def test_records_of_two_sites_name_their_site(make_app: Apps) -> None:
    app = make_app()
    settings = settings_of(app)
    north = issue(settings, "north", "cases:read", "cases:write")
    south = issue(settings, "south", "cases:read", "cases:write")
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = CLIENT_ADDRESS
    trail = Trail(settings.audit_path)
    response = client.post("/cases", json=vignette("p01"), headers=north.headers)
    trail.one_new(response, site="north", token=north.token_id, case="p01")
    response = client.get("/cases/p01", headers=south.headers)
    assert response.status_code == 404
    trail.one_new(response, site="south", token=south.token_id, case="p01")


def test_a_failing_request_is_recorded_too(make_app: Apps, monkeypatch: Any) -> None:
    """A 500 is still one record (written by after_request, before the error page leaves)."""
    app = make_app()
    settings = settings_of(app)
    north = issue(settings, "north", "cases:read")
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = CLIENT_ADDRESS
    trail = Trail(settings.audit_path)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(type(app.extensions["esi"]), "list_cases", broken)
    response = client.get("/cases", headers=north.headers)
    assert response.status_code == 500
    trail.one_new(response, site="north", token=north.token_id)


def test_every_reader_sees_one_record_per_line(make_app: Apps) -> None:
    """Line and paragraph separators in a client's value are escaped, never written raw."""
    app = make_app()
    north = issue(settings_of(app), "north", "cases:read")
    client = app.test_client()
    trail = Trail(settings_of(app).audit_path)
    separators = "\u2028\u2029\u0085\x1c\x1d\x1e\x0b\x0c"
    for i, separator in enumerate(separators):
        response = client.get(f"/cases/x{separator}{i}", headers=north.headers,
                              environ_base={"REMOTE_ADDR": CLIENT_ADDRESS})
        assert response.status_code == 404
        trail.one_new(response, case=f"x{separator}{i}")
    raw = settings_of(app).audit_path.read_bytes()
    assert raw.isascii() and raw.count(b"\n") == len(raw.decode("ascii").splitlines()) == len(separators)
