"""The OpenAPI 3.1 description of the service (placeholder, being written)."""

from __future__ import annotations

from typing import Any


def document(service: Any) -> dict[str, Any]:
    return {"openapi": "3.1.0", "info": {"title": "ESI-KG", "version": service.kb.version}, "paths": {}}
