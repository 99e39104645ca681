"""Request helpers shared by the blueprints: the service, the caller's site, content negotiation."""

from __future__ import annotations

from flask import current_app, request

from ..errors import NotAcceptable
from ..service import Service


def service() -> Service:
    return current_app.extensions["esi"]  # type: ignore[no-any-return]


def site() -> str:
    """The site (tenant) of the caller: its token's site."""
    from ..security.access import caller_site

    return caller_site()


def negotiate(offers: list[str]) -> str:
    """The best of ``offers`` for the request's Accept header (the first when none is sent).

    Each offer takes the quality of the most specific range that matches it (``text/csv``
    before ``text/*`` before ``*/*``); among equals, the earlier offer wins. Parameters other
    than ``q`` (``;charset=utf-8``) do not keep a range from matching: every answer is UTF-8.

    >>> with __import__("flask").Flask(__name__).test_request_context(headers={"Accept": "text/*;q=0.5, text/csv"}):
    ...     negotiate(["text/turtle", "text/csv"])
    'text/csv'
    """
    header = request.headers.get("Accept", "")
    ranges = [r for r in (_media_range(part) for part in header.split(",")) if r is not None]
    if not ranges:
        return offers[0]
    best, best_quality = None, 0.0
    for offer in offers:
        kind, _, sub = offer.partition("/")
        matching = [(3 - (t == "*") - (s == "*"), q) for t, s, q in ranges
                    if t in (kind, "*") and s in (sub, "*")]
        if matching:
            _, quality = max(matching)
            if quality > best_quality:
                best, best_quality = offer, quality
    if best is None:
        raise NotAcceptable(f"can answer with {', '.join(offers)}")
    return best


def _media_range(text: str) -> tuple[str, str, float] | None:
    media, *params = (p.strip() for p in text.split(";"))
    kind, slash, sub = media.lower().partition("/")
    if not slash or not kind or not sub:
        return None
    quality = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = min(max(float(value), 0.0), 1.0)
            except ValueError:
                quality = 0.0
    return kind, sub, quality
