"""Trusting CDS clients as CDS Hooks 2.0 says: a signed JWT on every call, from an allowed issuer.

Each request carries ``Authorization: Bearer <JWT>``. The JWT must be signed with an
asymmetric algorithm (``none`` and HMAC are refused, as the spec requires) by a key of the
issuer's JWK Set; ``iss`` must be a registered client, ``aud`` the URL of the endpoint being
called (built from ``ESI_PUBLIC_URL``, never from the Host header), ``exp``, ``iat`` and
``jti`` present, the token not expired, not valid for longer than ``ESI_CDS_MAX_TOKEN_S``,
and its ``jti`` never seen before. A client maps to one site.

Clients are registered by an operator (``kgservice cds-client add``) in
``<data dir>/cds-clients.json`` with their JWK Set. A JWK Set is never fetched, not even from
a ``jku`` header: a ``jku`` must be one the client registered, and the stored set is used.
Seen ``jti`` values are kept in SQLite (``<data dir>/cds-jti.sqlite``), shared by every server
process, until their token expires; the cache is bounded (``ESI_CDS_REPLAY_CACHE``) and a
full cache refuses new tokens rather than forgetting old ones.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jwt

from ..core.cases import SITE_PATTERN
from ..errors import ESIError
from .auth import Unauthorized, WatchedJson, write_atomically

#: Asymmetric JWS algorithms accepted (CDS Hooks recommends ES384 and RS384).
ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
LEEWAY_S = 30


class ReplayCacheFull(ESIError):
    status = 503
    type_slug = "replay-cache-full"
    title = "Replay cache full"


@dataclass(frozen=True)
class CdsClient:
    iss: str
    site: str
    jwks: dict[str, Any]
    jku: tuple[str, ...] = ()

    def key(self, kid: str) -> dict[str, Any] | None:
        return next((k for k in self.jwks.get("keys", []) if isinstance(k, dict) and k.get("kid") == kid), None)


class CdsClients:
    """The registered CDS clients; the file is re-read when it changes, so a removal bites at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file = WatchedJson(path, lambda raw: {c["iss"]: CdsClient(c["iss"], c["site"], c["jwks"],
                                                                          tuple(c.get("jku", ())))
                                                    for c in raw.get("clients", [])})

    def _load(self) -> dict[str, CdsClient]:
        return self._file.get()

    def get(self, iss: str) -> CdsClient | None:
        with self._lock:
            return self._load().get(iss)

    def list(self) -> list[CdsClient]:
        with self._lock:
            return sorted(self._load().values(), key=lambda c: c.iss)

    def add(self, iss: str, site: str, jwks: dict[str, Any], jku: tuple[str, ...] = ()) -> CdsClient:
        """Register (or replace) a client. Checks that every key parses and has a kid."""
        if not SITE_PATTERN.match(site):
            raise ValueError(f"site must be 1-32 of a-z 0-9 -, starting with a letter or digit: {site!r}")
        keys = jwks.get("keys") if isinstance(jwks, dict) else None
        if not keys:
            raise ValueError("the JWK Set must be an object with a non-empty \"keys\" array")
        for key in keys:
            if not isinstance(key, dict) or not key.get("kid"):
                raise ValueError("every key of the JWK Set needs a kid (CDS Hooks JWTs name their key by kid)")
            if "d" in key:
                raise ValueError(f"key {key['kid']!r} is a private key; register the client's public keys only")
            try:
                jwt.PyJWK(key)
            except jwt.PyJWTError as exc:
                raise ValueError(f"key {key['kid']!r} is not a usable JWK: {exc}") from None
        client = CdsClient(iss, site, {"keys": keys}, jku)
        with self._lock:
            clients = dict(self._load())
            clients[iss] = client
            self._save(clients)
        return client

    def remove(self, iss: str) -> bool:
        with self._lock:
            clients = dict(self._load())
            if clients.pop(iss, None) is None:
                return False
            self._save(clients)
        return True

    def _save(self, clients: dict[str, CdsClient]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"clients": [{**asdict(c), "jku": list(c.jku)} for c in clients.values()]}, indent=2)
        write_atomically(self.path, body.encode("utf-8"), mode=0o600)


class ReplayCache:
    """``jti`` values seen, per issuer, until their token expires; shared by processes through SQLite."""

    def __init__(self, path: Path, capacity: int) -> None:
        self.path = path
        self.capacity = capacity
        self._local = threading.local()
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS seen (iss TEXT, jti TEXT, exp INTEGER, PRIMARY KEY (iss, jti))")
            db.execute("CREATE INDEX IF NOT EXISTS seen_exp ON seen (exp)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def first_use(self, iss: str, jti: str, exp: int, now: int) -> bool:
        """Record a token; False if its ``jti`` was already used by that issuer."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM seen WHERE exp < ?", (now - LEEWAY_S,))
            if db.execute("SELECT 1 FROM seen WHERE iss = ? AND jti = ?", (iss, jti)).fetchone():
                db.execute("COMMIT")
                return False
            (count,) = db.execute("SELECT count(*) FROM seen").fetchone()
            if count >= self.capacity:
                db.execute("COMMIT")
                raise ReplayCacheFull("too many CDS Hooks tokens are live at once; retry in a few seconds")
            db.execute("INSERT INTO seen VALUES (?, ?, ?)", (iss, jti, exp))
            db.execute("COMMIT")
        except sqlite3.Error:
            db.execute("ROLLBACK")
            raise
        return True


def verify(token: str, clients: CdsClients, replay: ReplayCache, audience: str, max_lifetime_s: int,
           now: float | None = None) -> CdsClient:
    """The registered client that signed ``token`` for ``audience``; raises Unauthorized otherwise."""
    now = time.time() if now is None else now
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise Unauthorized("the bearer token is not a JWT") from None
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ALGORITHMS:
        raise Unauthorized(f"JWT algorithm {alg!r} is refused; sign with one of {', '.join(ALGORITHMS)}")
    if str(header.get("typ", "JWT")).upper() != "JWT":
        raise Unauthorized("the JWT header typ must be JWT")
    if not isinstance(kid, str) or not kid:
        raise Unauthorized("the JWT header has no kid naming the signing key")
    iss = claims.get("iss")
    client = clients.get(iss) if isinstance(iss, str) else None
    if client is None or not isinstance(iss, str):
        raise Unauthorized("the JWT issuer is not a registered CDS client")
    if "jku" in header and header["jku"] not in client.jku:
        raise Unauthorized("the JWT's jku is not one this client registered (JWK Sets are never fetched)")
    jwk = client.key(kid)
    if jwk is None or jwk.get("alg", alg) != alg:
        raise Unauthorized(f"no key {kid!r} for algorithm {alg} in the client's registered JWK Set")
    try:
        jwt.decode(token, jwt.PyJWK(jwk, algorithm=alg).key, algorithms=[alg], audience=audience, issuer=iss,
                   leeway=LEEWAY_S, options={"require": list(REQUIRED_CLAIMS)})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the JWT has expired") from None
    except jwt.InvalidAudienceError:
        raise Unauthorized(f"the JWT's aud is not this endpoint ({audience})") from None
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(f"the JWT lacks the {exc.claim} claim") from None
    except jwt.PyJWTError:
        raise Unauthorized("the JWT signature or claims do not verify") from None
    exp, jti = claims["exp"], claims["jti"]
    if not isinstance(jti, str) or not jti:
        raise Unauthorized("the JWT's jti must be a non-empty string")
    if exp > now + max_lifetime_s + LEEWAY_S:
        raise Unauthorized(f"the JWT is valid for more than {max_lifetime_s} s; send a short-lived token")
    if not replay.first_use(iss, jti, int(exp), int(now)):
        raise Unauthorized("this JWT (its jti) was already used")
    return client
