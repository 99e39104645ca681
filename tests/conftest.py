"""Shared fixtures: settings, knowledge bases (one per reasoning engine) and a case factory."""

from __future__ import annotations

import copy
import datetime as dt
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kgservice.config import Settings
from kgservice.core.kb import KnowledgeBase
from kgservice.curation.regression import base_case

#: A minimal valid case: a primary non-responder (baseline 8, still 8 on day 14), nerve-root pain.
#: The rule cases of tests/data/rules overlay it; it is kept as data (tests/data/base-case.json) for them and for
#: `kgservice impact` (see kgservice.curation.regression).
BASE_CASE: dict[str, Any] = base_case()

#: The injection date of every factory-made case; pain scores are given as days after it.
INJECTION_DATE = dt.date.fromisoformat(BASE_CASE["injection"]["date"])


class CaseFactory:
    """Builds a fresh, valid contract case dict; any field can be overridden.

    ``scores`` is a shortcut for ``pain_scores``: ``(day, score)`` pairs, the day counted
    from the injection date (0 is the injection day, negative is before it).

    >>> make_case = CaseFactory()
    >>> make_case(scores=[(0, 8), (14, 4)])["pain_scores"][1]
    {'date': '2026-06-24', 'score': 4}
    """

    injection_date = INJECTION_DATE

    def __call__(self, *, scores: Iterable[tuple[int, int]] | None = None, **fields: Any) -> dict[str, Any]:
        case = copy.deepcopy(BASE_CASE)
        if scores is not None:
            case["pain_scores"] = [{"date": self.day(d), "score": s} for d, s in scores]
        case.update(copy.deepcopy(fields))
        return case

    def day(self, n: int) -> str:
        """The ISO date ``n`` days after the injection."""
        return (self.injection_date + dt.timedelta(days=n)).isoformat()


def curated_ontology() -> Path | None:
    """The ontology a curator points the tests at with ``ESI_ONTOLOGY_PATH``, if any."""
    path = os.environ.get("ESI_ONTOLOGY_PATH")
    return Path(path) if path else None


def pytest_report_header() -> str:
    return f"ontology: {curated_ontology() or Settings().ontology_path}"


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The shipped files; the ontology is ``ESI_ONTOLOGY_PATH``'s when set, so that the clinical
    regression cases (rule cases, vignettes) run against the copy a curator is editing."""
    path = curated_ontology()
    return Settings(ontology_path=path) if path is not None else Settings()


@pytest.fixture(scope="session")
def kb(settings: Settings) -> KnowledgeBase:
    """The knowledge base with the default OWL 2 RL engine (``compiled``)."""
    return KnowledgeBase.from_settings(settings)


@pytest.fixture(scope="session")
def kb_reasonable(settings: Settings) -> KnowledgeBase:
    """The knowledge base whose every case is closed by ``reasonable`` with the ontology."""
    return KnowledgeBase.from_settings(settings.with_(engine="reasonable"))


@pytest.fixture(scope="session")
def kb_owlrl(settings: Settings) -> KnowledgeBase:
    """The reference engine (``owlrl``): about a second per case, so use it sparingly."""
    return KnowledgeBase.from_settings(settings.with_(engine="owlrl"))


@pytest.fixture(scope="session")
def make_case() -> CaseFactory:
    return CaseFactory()


# -- the web app ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sparql_endpoint() -> Iterator[str]:
    """A real Virtuoso's SPARQL endpoint (see ``tests/virtuoso.py``), shared by the session."""
    from virtuoso import virtuoso_endpoint

    yield from virtuoso_endpoint()


@pytest.fixture(params=["oxigraph", "sparql"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Any) -> Settings:
    """Settings for each store implementation: the embedded Oxigraph and a real Virtuoso."""
    if request.param == "sparql":
        endpoint = request.getfixturevalue("sparql_endpoint")
        return Settings(data_dir=tmp_path, store="sparql", sparql_endpoint=endpoint, auth_required=False)
    return Settings(data_dir=tmp_path, auth_required=False)


@pytest.fixture
def app(tmp_path: Any) -> Any:
    """A fresh app over its own empty data directory (``tmp_path``); its stores are closed after the test."""
    from kgservice.api import create_app

    app = create_app(Settings(auth_required=False, data_dir=tmp_path))
    yield app
    app.extensions["esi"].close()


@pytest.fixture
def client(app: Any) -> Any:
    """Flask's test client of ``app``."""
    return app.test_client()
