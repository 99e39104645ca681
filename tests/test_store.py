"""The store seam: the service reaches a site's dataset only through the ``SiteStore`` protocol."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from kgservice.api import create_app
from kgservice.config import Settings
from kgservice.service import Service
from kgservice.store import SiteStore, Stores

PROTOCOL = {name for name in dir(SiteStore) if not name.startswith("_")} | {"site"}
CASE = json.loads((Path(__file__).parent / "data" / "vignettes" / "p01-primary-non-responder.json").read_text(
    encoding="utf-8"))["case"]


class OnlyTheProtocol:
    """A site store that offers nothing but the protocol's operations, and counts their calls."""

    def __init__(self, inner: SiteStore, calls: Counter[str]) -> None:
        self._inner = inner
        self._calls = calls

    def __getattr__(self, name: str) -> Any:
        if name not in PROTOCOL:
            raise AttributeError(f"{name} is not an operation of SiteStore")
        self._calls[name] += 1
        return getattr(self._inner, name)


class SpyStores:
    def __init__(self, data_dir: Path) -> None:
        self.inner = Stores(data_dir)
        self.calls: Counter[str] = Counter()

    def site(self, site: str) -> OnlyTheProtocol:
        return OnlyTheProtocol(self.inner.site(site), self.calls)

    def close(self) -> None:
        self.inner.close()


def test_every_endpoint_reaches_the_store_through_the_protocol_and_the_ontology_is_set_once(tmp_path: Path) -> None:
    settings = Settings(auth_required=False, data_dir=tmp_path)
    stores = SpyStores(tmp_path)
    service = Service(settings, stores=stores)
    client = create_app(settings, service).test_client()
    try:
        case_id = CASE["id"]
        requests = [
            client.post("/cases", json=CASE),
            client.get(f"/cases/{case_id}"),
            client.get(f"/cases/{case_id}", headers={"Accept": "text/turtle"}, query_string={"inferred": "true"}),
            client.get(f"/cases/{case_id}/pathway"),
            client.get("/cases"),
            client.put(f"/cases/{case_id}", json=CASE),
            client.get("/sparql", query_string={"query": "ASK { ?s ?p ?o }"}),
            client.get("/queries/pathway-counts"),
            client.delete(f"/cases/{case_id}"),
        ]
        assert [r.status_code for r in requests] == [201, 200, 200, 200, 200, 200, 200, 200, 204], \
            [r.get_json() for r in requests if r.status_code >= 400]
        assert stores.calls["set_ontology"] == 1  # once for the site, not on every request
        assert {"create", "read", "case_ids", "replace", "run_limited", "delete"} <= set(stores.calls)
    finally:
        service.close()
