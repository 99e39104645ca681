"""Request helpers shared by the blueprints: the service, the caller's site, content negotiation."""

from __future__ import annotations

from flask import current_app, request

from .errors import NotAcceptable
from .service import Service


def service() -> Service:
    return current_app.extensions["esi"]  # type: ignore[no-any-return]


def site() -> str:
    """The site (tenant) of the caller: its token's site."""
    from .access import caller_site

    return caller_site()


def negotiate(offers: list[str]) -> str:
    """The best of ``offers`` for the request's Accept header (the first when none is sent)."""
    if not request.headers.get("Accept"):
        return offers[0]
    best = request.accept_mimetypes.best_match(offers)
    if best is None:
        raise NotAcceptable(f"can answer with {', '.join(offers)}")
    return best
