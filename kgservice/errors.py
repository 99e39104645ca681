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

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "message": self.message}
        if self.shape:
            out["shape"] = self.shape
        if self.value is not None:
            out["value"] = self.value
        return out


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
        body: dict[str, Any] = {
            "type": f"https://w3id.org/esi-kg/problems/{self.type_slug}",
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            body["detail"] = self.detail
        body.update(self.extra)
        return body


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


class OntologyError(ESIError):
    """The ontology or shapes files are broken; raised at load, never per request."""

    status = 500
    type_slug = "ontology-error"
    title = "Ontology error"
