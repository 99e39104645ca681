"""Who may do what, and the audit record of what they did: request hooks for the API.

Every view declares the scope it needs with :func:`requires`; views without one are open
(ontology, vocabulary, health, OpenAPI). A request without a valid bearer token gets 401,
one whose token lacks the scope 403. The caller's site is the token's site: the views read
and write only that site's dataset. Requests that touch case data leave one audit record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, current_app, g, request

from ..core.cases import DEFAULT_SITE
from .audit import AuditLog
from .auth import SCOPES, Caller, Forbidden, TokenStore, Unauthorized

F = TypeVar("F", bound=Callable[..., Any])
_AUDITED = {"pathway:run", "cases:read", "cases:write"}


def requires(scope: str, when: Callable[[], bool] | None = None) -> Callable[[F], F]:
    """The view needs ``scope`` (only for the requests where ``when()`` is true, if given)."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    def mark(view: F) -> F:
        view.esi_scope = scope  # type: ignore[attr-defined]
        view.esi_scope_when = when  # type: ignore[attr-defined]
        return view

    return mark


def accepts_form_token(view: F) -> F:
    """Let a page's form send the token as a ``token`` field of its POST body, for browsers without
    JavaScript (which cannot set a header). Never a cookie, so no request is made with it unasked."""
    view.esi_form_token = True  # type: ignore[attr-defined]
    return view


def _presented_token() -> tuple[str, str]:
    """The request's credential: the Authorization header, else a page form's ``token`` field."""
    header = request.headers.get("Authorization", "")
    view = current_app.view_functions.get(request.endpoint or "")
    form = request.mimetype == "application/x-www-form-urlencoded"
    if not header and form and getattr(view, "esi_form_token", False):
        form_token = request.form.get("token", "").strip()
        if form_token:
            return f"Bearer {form_token}", form_token
    kind, _, presented = header.partition(" ")
    return header, presented.strip() if kind.lower() == "bearer" else ""


def _scope_of_request() -> str | None:
    view = current_app.view_functions.get(request.endpoint or "")
    when = getattr(view, "esi_scope_when", None)
    if when is not None and not when():
        return None
    return getattr(view, "esi_scope", None)


def authenticate() -> None:
    """``before_request``: set ``g.caller`` or refuse the request."""
    scope = _scope_of_request()
    settings = current_app.extensions["esi"].settings
    if not settings.auth_required:
        g.caller = Caller(None, DEFAULT_SITE, frozenset(SCOPES))
        return
    header, presented = _presented_token()
    token = current_app.extensions["esi-tokens"].verify(presented) if presented else None
    g.caller = Caller(token.id, token.site, frozenset(token.scopes)) if token else None
    if scope is None:
        return
    if token is None:
        raise Unauthorized("send Authorization: Bearer <token>; `kgservice token create` makes one" if not header
                           else "the token is not valid or was revoked")
    if not token.allows(scope):
        raise Forbidden(f"this token lacks the scope {scope!r}")


def caller_site() -> str:
    caller = g.get("caller")
    return caller.site if caller is not None else DEFAULT_SITE


def note(**fields: Any) -> None:
    """Add fields (case id, query hash) to this request's audit record."""
    g.setdefault("audit", {}).update(fields)


def query_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def audit(response: Response) -> Response:
    """``after_request``: one record per request that touched case data, before it is sent."""
    scope = _scope_of_request()
    if scope not in _AUDITED:
        return response
    caller: Caller | None = g.get("caller")
    extra = dict(g.get("audit", {}))
    case_id = (request.view_args or {}).get("case_id") or extra.pop("case", None)
    log: AuditLog = current_app.extensions["esi-audit"]
    log.record(
        action=f"{request.method} {request.url_rule.rule if request.url_rule else request.path}",
        scope=scope,
        token=caller.token_id if caller else None,
        site=caller.site if caller else None,
        case=case_id,
        **extra,
        outcome=response.status_code,
        client=request.remote_addr,
    )
    return response


def install(app: Any, settings: Any) -> None:
    app.extensions["esi-tokens"] = TokenStore(settings.tokens_path)
    app.extensions["esi-audit"] = AuditLog(settings.audit_path, fsync=settings.audit_fsync)
    app.before_request(authenticate)
    app.after_request(audit)
