"""Versioned answers: a store written under ontology 1.0, served and re-reasoned by a newer version.

Every stored answer names the version that reasoned it; under a newer version the API and
SPARQL say it is stale until ``kgservice reason --stale`` switches it, case by case, atomically,
and resumably after ``kill -9``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from lifecycle_util import ONTOLOGY_1_0, kgservice, lines, previous_release_store, stored_versions

from kgservice.api import create_app
from kgservice.config import Settings
from kgservice.core.kb import KnowledgeBase
from kgservice.core.ontology import Ontology
from kgservice.core.terms import triple_to_ox
from kgservice.curation.upgrade import cases_from_nquads, reason_stale
from kgservice.service import Service

SPARQL_JSON = "application/sparql-results+json"


OLD_VERSION = Ontology.load(ONTOLOGY_1_0).version


@pytest.fixture
def upgraded(tmp_path: Path) -> Settings:
    """The store the 1.0 release wrote (151 cases in site default, 10 in south), opened by this one."""
    return previous_release_store(tmp_path / "data")


def fresh_answers(service: Service, site: str) -> dict[str, dict[str, Any]]:
    """What the running version answers for each stored case, reasoned from its case JSON now."""
    ids = [case_id for case_id, _ in service.site_store(site).case_versions()]
    return {case_id: service.kb.answer_json(service.case_json(case_id, site)) for case_id in ids}


def test_a_1_0_store_is_stale_under_a_newer_version_until_re_reasoned(upgraded: Settings) -> None:
    app = create_app(upgraded)
    client = app.test_client()
    try:
        current = client.get("/health").get_json()["ontology_version"]
        assert current != OLD_VERSION
        reply = client.get("/cases/borderline/pathway")
        body = reply.get_json()
        assert (body["ontology_version"], body["stale"], body["current_ontology_version"]) == \
            (OLD_VERSION, True, current)
        assert body["response"]["category"] == "provisional-responder"  # the 1.0 answer, as stored
        assert (reply.headers["ESI-Stale"], reply.headers["ESI-Ontology-Version"]) == ("true", OLD_VERSION)

        # SPARQL users see each case's version: every case of the site, all stale
        rows = client.get("/queries/case-versions", headers={"Accept": SPARQL_JSON}).get_json()
        seen = {(b["version"]["value"], b["stale"]["value"]) for b in rows["results"]["bindings"]}
        assert seen == {(OLD_VERSION, "true")} and len(rows["results"]["bindings"]) == 151  # the token's site
    finally:
        app.extensions["esi"].close()

    done = reason_stale(upgraded, sites=["default"], batch_size=40, workers=0, progress=None)
    assert [(d.site, d.stale, d.switched, d.rejected) for d in done] == [("default", 151, 151, [])]

    app = create_app(upgraded)
    client = app.test_client()
    try:
        expected = fresh_answers(app.extensions["esi"], "default")
        assert len(expected) == 151
        for case_id in ("borderline", *sorted(expected)[:30]):
            reply = client.get(f"/cases/{case_id}/pathway")
            body = reply.get_json()
            assert body["stale"] is False and "current_ontology_version" not in body
            assert reply.headers["ESI-Stale"] == "false"
            assert body == expected[case_id]
        rows = client.get("/queries/case-versions", headers={"Accept": SPARQL_JSON}).get_json()
        assert {b["stale"]["value"] for b in rows["results"]["bindings"]} == {"false"}
    finally:
        app.extensions["esi"].close()
    # the other site was not asked for: still 1.0
    assert set(map(tuple, stored_versions(upgraded.data_dir / "sites" / "south").values())) == {(OLD_VERSION,)}


def test_reason_stale_resumes_after_kill_9_and_writes_each_case_once(upgraded: Settings) -> None:
    home = upgraded.data_dir / "sites" / "default"
    new_version = KnowledgeBase.from_settings(upgraded).version
    run = kgservice("reason", "--stale", "--data-dir", str(upgraded.data_dir), "--batch", "2", "--workers", "1",
                    settings=upgraded, stdout=-1, stderr=-1)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and run.poll() is None:
            if sum(v == [new_version] for v in stored_versions(home).values()) >= 2:
                break
            time.sleep(0.02)
        assert run.poll() is None, "finished before it could be killed: " + run.communicate()[1].decode()
        os.killpg(run.pid, signal.SIGKILL)  # the whole group: the command and its reasoning worker
    finally:
        run.communicate(timeout=30)
    partly = stored_versions(home)
    switched_before = sum(v == [new_version] for v in partly.values())
    assert 2 <= switched_before < 151

    again = kgservice("reason", "--stale", "--data-dir", str(upgraded.data_dir), settings=upgraded,
                      stdout=-1, stderr=-1)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()
    report = {s["site"]: s for s in json.loads(out)}
    assert report["default"]["stale"] == report["default"]["switched"] == 151 - switched_before
    assert report["south"]["switched"] == 10
    assert any("re-reasoned" in line and "/" in line for line in lines(err))  # the progress line

    # nothing lost, nothing written twice: one version per case, the answer a fresh run gives
    versions = stored_versions(home)
    assert len(versions) == 151 and set(map(tuple, versions.values())) == {(new_version,)}
    service = Service(upgraded)
    try:
        expected = fresh_answers(service, "default")
        for case_id, answer in expected.items():
            assert service.stored_answer(case_id, "default") == answer
        store = service.site_store("default")
        for case_id in sorted(expected)[:20]:  # the inferred graph is what its asserted graph gives now
            _, inferred = store.read(case_id)
            [asserted] = cases_from_nquads(store.export([case_id], inferred=False), service.kb.contract)
            [reasoned] = service.kb.reason([asserted])
            assert set(inferred) == set(map(triple_to_ox, reasoned.inferred))
    finally:
        service.close()


def test_reason_refuses_a_store_in_use_and_unknown_sites(upgraded: Settings) -> None:
    new = upgraded
    service = Service(new)  # holds the store's lock, as a running server does
    try:
        service.site_store("default")
        busy = kgservice("reason", "--stale", "--data-dir", str(new.data_dir), "--site", "default",
                         settings=new, stdout=-1, stderr=-1)
        out, err = busy.communicate(timeout=60)
        assert busy.returncode == 2 and out == b""
        assert b"is the service running" in err
    finally:
        service.close()
    bad = kgservice("reason", "--stale", "--data-dir", str(new.data_dir), "--site", "../x", settings=new,
                    stdout=-1, stderr=-1)
    _, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and b"no site" in err and b"Traceback" not in err


def test_a_fresh_answer_is_not_stale(client, make_case) -> None:
    created = client.post("/cases", json=make_case(id="fresh"))
    assert created.status_code == 201
    reply = client.get("/cases/fresh/pathway")
    assert reply.get_json()["stale"] is False
    assert reply.headers["ESI-Ontology-Version"] == created.get_json()["ontology_version"]


def test_reinfer_switches_only_cases_still_at_the_version_read_and_keeps_counts(kb: KnowledgeBase,
                                                                                  make_case) -> None:
    from kgservice.stores.base import Reinferred
    from kgservice.stores.oxigraph import OxigraphSite

    store = OxigraphSite("default", None)
    pending, responder = make_case(id="a", scores=[(0, 8), (3, 8)]), make_case(id="b", scores=[(0, 8), (30, 2)])
    for case in (pending, responder):
        [done] = kb.process([case], graphs=True)
        store.create(done.case_id, done.asserted, done.inferred)
    assert store.count("assessment-pending") == 1 and store.count("responder") == 1
    [later] = kb.process([make_case(id="a", scores=[(0, 8), (3, 8), (30, 2)])], graphs=True)
    assert store.reinfer([Reinferred("a", "not the version read", later.inferred)]) == []
    assert store.reinfer([Reinferred("a", kb.version, later.inferred), Reinferred("gone", kb.version, [])]) == ["a"]
    assert (store.count("assessment-pending"), store.count("responder")) == (0, 2)
    assert store.case_ids("responder", None, 10, 0)[1] == 2


def test_reason_stale_and_impact_on_each_store(store_settings: Settings, tmp_path: Path, make_case) -> None:
    """The embedded store and a real Virtuoso (ESI_STORE=sparql): cases written under one version
    are read by impact, stale under another, and re-reasoned by reason --stale."""
    import uuid

    from test_impact import with_threshold

    from kgservice.curation.impact import impact

    site = f"up-{uuid.uuid4().hex[:8]}"
    old = store_settings.with_(ontology_path=with_threshold(Settings().ontology_path, 40, tmp_path / "old.ttl"))
    service = Service(old)
    try:
        for n, scores in enumerate([[(0, 8), (14, 3)], [(0, 8), (3, 8)], [(0, 8), (30, 2)]]):
            service.create(json.dumps(make_case(id=f"c{n}", scores=scores)).encode(), "application/json", site)
    finally:
        service.close()
    old_version = KnowledgeBase.from_settings(old).version

    strict = impact(old, with_threshold(Settings().ontology_path, 70, tmp_path / "strict.ttl"), sites=[site], workers=0,
                    progress=None).as_json()
    assert strict["stored"]["cases"] == 3
    assert [c["case"] for c in strict["stored"]["impacts"] if "category" in c["kinds"]] == ["c0"], strict

    new = store_settings.with_(ontology_path=Settings().ontology_path)
    [done] = reason_stale(new, sites=[site], workers=0, progress=None)
    assert (done.stale, done.switched) == (3, 3)
    service = Service(new)
    try:
        versions = dict(service.site_store(site).case_versions())
        assert versions == {f"c{n}": service.kb.version for n in range(3)} and old_version not in versions.values()
        for n in range(3):
            assert service.stored_answer(f"c{n}", site)["stale"] is False
    finally:
        service.close()
