"""API tokens: sites (tenants), scopes, hashed storage, constant-time checks.

A token reads ``esi_<id>_<secret>``. Only the id, the site, the scopes and a SHA-256 of the
secret are stored (``<data dir>/tokens.json``, written through a temporary file, fsync and
rename); the secret is printed once, when the token is made.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..core.cases import SITE_PATTERN
from ..errors import ESIError
from ..files import write_atomically

T = TypeVar("T")

#: What each scope allows. ``admin`` includes every other scope.
SCOPES = {
    "ontology:read": "read the ontology, the vocabulary and the named query list (open without a token too)",
    "pathway:run": "POST /pathway: answer a case without storing it",
    "cases:read": "read and list the site's cases and answers; run SPARQL and named queries over them",
    "cases:write": "create, replace and delete the site's cases",
    "admin": "every scope above, for the token's site",
}


class Unauthorized(ESIError):
    status = 401
    type_slug = "unauthorized"
    title = "Unauthorized"


class Forbidden(ESIError):
    status = 403
    type_slug = "forbidden"
    title = "Forbidden"


@dataclass(frozen=True)
class Token:
    id: str
    site: str
    scopes: tuple[str, ...]
    digest: str
    created: str
    revoked: str | None = None

    def allows(self, scope: str) -> bool:
        return self.revoked is None and (scope in self.scopes or "admin" in self.scopes)


@dataclass(frozen=True)
class Caller:
    """Who is asking: the token's id (never its secret) and site."""

    token_id: str | None
    site: str
    scopes: frozenset[str] = field(default_factory=frozenset)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class WatchedJson(Generic[T]):
    """A JSON file read again only when it changes (its mtime), so that an operator's edit bites at once.

    ``parse`` turns the file's JSON into the value; a missing file is ``parse({})``.
    """

    def __init__(self, path: Path, parse: Callable[[Any], T]) -> None:
        self.path = path
        self._parse = parse
        self._mtime: int | None = None
        self._value = parse({})

    def get(self) -> T:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._mtime, self._value = None, self._parse({})
            return self._value
        if mtime != self._mtime:
            self._value = self._parse(json.loads(self.path.read_text(encoding="utf-8")))
            self._mtime = mtime
        return self._value


class TokenStore:
    """Tokens on disk; reloaded when the file changes, so a revoke takes effect at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file = WatchedJson(path, lambda raw: {t["id"]: Token(**{**t, "scopes": tuple(t["scopes"])})
                                                    for t in raw.get("tokens", [])})

    def _load(self) -> dict[str, Token]:
        return self._file.get()

    def _save(self, tokens: dict[str, Token]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"tokens": [asdict(t) for t in tokens.values()]}, indent=2)
        write_atomically(self.path, body.encode("utf-8"), mode=0o600)

    def create(self, site: str, scopes: list[str]) -> tuple[Token, str]:
        """Make a token; returns it and the full secret string, which is not stored."""
        if not SITE_PATTERN.match(site):
            raise ValueError(f"site must be 1-32 of a-z 0-9 -, starting with a letter or digit: {site!r}")
        unknown = sorted(set(scopes) - set(SCOPES))
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}; got {', '.join(unknown) or 'none'}")
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        token = Token(token_id, site, tuple(sorted(set(scopes))), _digest(secret),
                      dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        with self._lock:
            tokens = dict(self._load())
            tokens[token_id] = token
            self._save(tokens)
        return token, f"esi_{token_id}_{secret}"

    def revoke(self, token_id: str) -> bool:
        with self._lock:
            tokens = dict(self._load())
            found = tokens.get(token_id)
            if found is None:
                return False
            tokens[token_id] = Token(**{**asdict(found), "scopes": found.scopes,
                                        "revoked": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
            self._save(tokens)
        return True

    def list(self) -> list[Token]:
        with self._lock:
            return sorted(self._load().values(), key=lambda t: t.created)

    def verify(self, presented: str) -> Token | None:
        """The live token matching ``presented``, compared in constant time, or None."""
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != "esi":
            return None
        with self._lock:
            token = self._load().get(parts[1])
        # Compare even when the id is unknown, so timing does not tell ids apart.
        expected = token.digest if token is not None else "0" * 64
        if not hmac.compare_digest(_digest(parts[2]), expected) or token is None or token.revoked is not None:
            return None
        return token
