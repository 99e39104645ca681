"""Headers for browsers: a strict Content-Security-Policy, no framing, no referrer, no sniffing,
no caching of patient data, and CORS only for the origins an operator names.

Every response gets the defaults below. A blueprint that needs another policy (the pages)
sets its own header first; these are set with ``setdefault`` and never overwrite it.

CORS is off unless ``ESI_CORS_ORIGINS`` lists origins (``https://ehr.example.org,
https://app.example.org``, compared exactly). For those, a preflight (``OPTIONS`` with
``Access-Control-Request-Method``) is answered ``204`` before authentication (a browser
never sends a token with it) and the answers carry ``Access-Control-Allow-Origin``. The
token travels in ``Authorization``, never in a cookie, so credentials are never allowed.
"""

from __future__ import annotations

import re

from flask import Flask, Response, request

from ..errors import ESIError

#: For every response that does not set its own: nothing but this origin's own files, no
#: inline script or style, no plugins, no <base>, forms only to this origin, never framed.
DEFAULT_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; "
               "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": DEFAULT_CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
#: Request headers a cross-origin client may send, and response headers it may read.
ALLOWED_HEADERS = ("Authorization", "Content-Type", "Accept", "If-None-Match")
EXPOSED_HEADERS = ("Location", "ETag", "WWW-Authenticate")
PREFLIGHT_MAX_AGE_S = 600
PATIENT_DATA_PATHS = ("/cases", "/pathway", "/sparql", "/queries", "/clinician")  # the clinician's page echoes a case
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?\Z|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?\Z")


class OriginRefused(ESIError):
    status = 403
    type_slug = "origin-refused"
    title = "Origin not allowed"


def parse_origins(raw: str) -> frozenset[str]:
    """``ESI_CORS_ORIGINS`` as a set of origins; a value that is no origin is a start-up error.

    >>> sorted(parse_origins("https://ehr.example.org, http://localhost:3000"))
    ['http://localhost:3000', 'https://ehr.example.org']
    >>> parse_origins("")
    frozenset()
    """
    origins = frozenset(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    for origin in origins:
        if not _ORIGIN.match(origin):
            raise ValueError(f"ESI_CORS_ORIGINS: {origin!r} is not an origin (scheme://host[:port]); "
                             "'*' is not accepted: name each origin")
    return origins


def install(app: Flask, cors_origins: str) -> None:
    """Register the hooks; call it before authentication's, so that a preflight never needs a token."""
    origins = parse_origins(cors_origins)

    def preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        origin = request.headers.get("Origin", "")
        if origin not in origins:
            raise OriginRefused(f"cross-origin requests from {origin or 'this page'} are not allowed here"
                                + ("" if origins else "; CORS is off (ESI_CORS_ORIGINS)"))
        adapter = app.url_map.bind_to_environ(request.environ)
        methods = sorted(set(adapter.allowed_methods()) - {"OPTIONS", "HEAD"})
        wanted = request.headers["Access-Control-Request-Method"].upper()
        if wanted not in methods:
            raise OriginRefused(f"{wanted} is not allowed on {request.path}; allowed: {', '.join(methods)}")
        asked = [h.strip() for h in request.headers.get("Access-Control-Request-Headers", "").split(",") if h.strip()]
        refused = [h for h in asked if h.lower() not in {a.lower() for a in ALLOWED_HEADERS}]
        if refused:
            raise OriginRefused(f"the request headers {', '.join(refused)} are not allowed; allowed: "
                                f"{', '.join(ALLOWED_HEADERS)}")
        response = Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = ", ".join(methods)
        response.headers["Access-Control-Allow-Headers"] = ", ".join(ALLOWED_HEADERS)
        response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
        return response

    def headers(response: Response) -> Response:
        if request.path.startswith(PATIENT_DATA_PATHS):
            response.headers["Cache-Control"] = "no-store"
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        origin = request.headers.get("Origin")
        if origins:
            response.vary.add("Origin")
        if origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)
        return response

    app.before_request(preflight)
    app.after_request(headers)

