"""Domain exceptions; the API turns each into one ``application/problem+json`` answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Violation:
    """One broken rule of the case contract, located by its JSON path."""

    path: str
    message: str
    shape: str | None = None
    value: Any = None
    source: str | None = None  # where in input of another format the value came from (a FHIR resource)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "message": self.message}
        if self.shape:
            out["shape"] = self.shape
        if self.value is not None:
            out["value"] = self.value
        if self.source:
            out["source"] = self.source
        return out


PROBLEM_BASE = "https://w3id.org/esi-kg/problems/"


def problem_json(status: int, slug: str, title: str, detail: str = "", **extra: Any) -> dict[str, Any]:
    """An RFC 9457 problem object: the one place its fields are written.

    >>> problem_json(404, "not-found", "Not found", "no case 'p01'")["type"]
    'https://w3id.org/esi-kg/problems/not-found'
    """
    body: dict[str, Any] = {"type": PROBLEM_BASE + slug, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return body


class ESIError(Exception):
    """Base class: every subclass knows its HTTP status and problem type."""

    status = 500
    type_slug = "internal-error"
    title = "Internal error"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        return problem_json(self.status, self.type_slug, self.title, self.detail, **self.extra)


class InternalError(ESIError):
    """Something unexpected; the details went to the log, never to the client."""

    def __init__(self) -> None:
        super().__init__("an unexpected error was logged; nothing was stored")


class Problem(ESIError):
    """A problem already in its JSON form: one case's in a batch, or one raised in another process.

    ``case_id`` is the id of the case it concerns, when the case could be read that far;
    ``error`` the exception it was made from, in the process that raised it (pickling, to hand
    a problem back from a worker process, keeps only the JSON).
    """

    def __init__(self, body: dict[str, Any], case_id: str | None = None, error: ESIError | None = None) -> None:
        super().__init__(str(body.get("detail", "")))
        self.status = int(body.get("status", 500))
        self.body = body
        self.case_id = case_id
        self.error: ESIError = error or self

    @classmethod
    def of(cls, exc: ESIError, case_id: str | None = None) -> Problem:
        return cls(exc.problem(), case_id, exc.error if isinstance(exc, Problem) else exc)

    def problem(self) -> dict[str, Any]:
        return self.body

    def __reduce__(self) -> tuple[type[Problem], tuple[dict[str, Any], str | None]]:
        return (Problem, (self.body, self.case_id))


class MalformedInput(ESIError):
    """The body cannot be read at all: bad JSON, bad Turtle, not an object."""

    status = 400
    type_slug = "malformed-input"
    title = "Malformed input"


class InvalidCase(ESIError):
    """A readable case that breaks the contract; carries every violation found."""

    status = 422
    type_slug = "invalid-case"
    title = "Invalid case"

    def __init__(self, violations: list[Violation]) -> None:
        super().__init__(f"{len(violations)} violation(s) of the case contract")
        self.violations = violations

    def problem(self) -> dict[str, Any]:
        body = super().problem()
        body["violations"] = [v.as_json() for v in self.violations]
        return body


class NotFound(ESIError):
    status = 404
    type_slug = "not-found"
    title = "Not found"


class Conflict(ESIError):
    status = 409
    type_slug = "conflict"
    title = "Conflict"


class UnsupportedMediaType(ESIError):
    status = 415
    type_slug = "unsupported-media-type"
    title = "Unsupported media type"


class NotAcceptable(ESIError):
    status = 406
    type_slug = "not-acceptable"
    title = "Not acceptable"


class PayloadTooLarge(ESIError):
    status = 413
    type_slug = "payload-too-large"
    title = "Payload too large"


class QueryError(ESIError):
    """A SPARQL query that cannot be parsed or is not allowed here."""

    status = 400
    type_slug = "bad-query"
    title = "Bad query"


class NetworkRefused(ESIError):
    """Work done for a request tried to open a network connection, and the sandbox refused it."""

    status = 403
    type_slug = "network-refused"
    title = "Nothing goes out"


class OntologyError(ESIError):
    """The ontology or shapes files are broken; raised at load, never per request."""

    status = 500
    type_slug = "ontology-error"
    title = "Ontology error"
