"""The service and security tests that concern the store, again on the remote store (a real Virtuoso).

The tests are the embedded store's own, imported, not copied: only the fixtures they run on
change. Every app here starts from an emptied Virtuoso, so the fixtures the originals share
per module are made per test (``shared_sites``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from test_api import (  # noqa: F401
    test_create_answers_201_with_location_and_stores_the_case,
    test_create_assigns_an_id_when_none_is_given,
    test_create_with_an_existing_id_is_a_conflict_and_changes_nothing,
    test_delete_removes_the_case_and_its_inferences,
    test_list_pages_through_every_case_once_in_a_stable_order,
    test_list_totals_stay_exact_through_writes,
    test_put_of_a_new_id_creates_it,
    test_put_replaces_the_case_and_reasons_again,
    test_put_without_an_id_in_the_body_takes_the_path_id,
)

from kgservice.core.kb import KnowledgeBase
from security.conftest import Apps, Site
from security.test_access import (  # noqa: F401 - collected here, on the remote store
    populate,
    test_a_site_cannot_change_or_delete_another_sites_case,
    test_a_site_cannot_read_another_sites_case,
    test_injection_through_case_ids,
    test_injection_through_list_filters,
    test_named_queries_see_only_the_callers_site,
    test_sparql_sees_only_the_callers_site,
    test_the_same_case_id_lives_in_both_sites_independently,
    test_the_site_comes_from_the_token_only,
    two_sites,
)


@pytest.fixture
def make_app(tmp_path: Path, kb: KnowledgeBase, sparql_endpoint: str) -> Iterator[Apps]:
    apps = Apps(tmp_path, kb, sparql_endpoint)
    yield apps
    apps.close()


@pytest.fixture
def shared_sites(secure_app: Flask) -> tuple[FlaskClient, Site, Site]:
    return populate(secure_app)


@pytest.fixture
def app(make_app: Apps) -> Any:
    return make_app(auth_required=False)
