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
from lifecycle_util import generated_cases, kgservice, lines, newer_ontology, store_under_1_0, stored_versions

from kgservice.api import create_app
from kgservice.config import Settings
from kgservice.kb import KnowledgeBase
from kgservice.service import Service
from kgservice.terms import triple_to_ox
from kgservice.upgrade import reason_stale

SPARQL_JSON = "application/sparql-results+json"
#: Cases of the store killed mid-run: enough for the run to last a while at 2 cases a batch.
KILL_CASES = 150


@pytest.fixture
def upgraded(tmp_path: Path) -> tuple[Settings, Settings, list[dict[str, Any]]]:
    """A store written under 1.0 (20 cases in site default, 10 in south); the settings of a newer version."""
    cases = generated_cases(30)
    old = store_under_1_0(tmp_path / "data", cases[:20], site="default")
    store_under_1_0(tmp_path / "data", cases[20:], site="south")
    return old, old.with_(ontology_path=newer_ontology(tmp_path)), cases


def fresh_answers(settings: Settings, cases: list[dict[str, Any]], site: str) -> dict[str, dict[str, Any]]:
    kb = KnowledgeBase.from_settings(settings)
    reasoned = kb.reason([kb.read_json(c, site=site) for c in cases])
    return {r.case.id: r.answer for r in reasoned}


def test_a_1_0_store_is_stale_under_a_newer_version_until_re_reasoned(upgraded) -> None:
    old, new, cases = upgraded
    old_version = KnowledgeBase.from_settings(old).version
    app = create_app(new)
    client = app.test_client()
    try:
        current = client.get("/health").get_json()["ontology_version"]
        assert current != old_version
        reply = client.get(f"/cases/{cases[0]['id']}/pathway")
        body = reply.get_json()
        assert (body["ontology_version"], body["stale"], body["current_ontology_version"]) == \
            (old_version, True, current)
        assert (reply.headers["ESI-Stale"], reply.headers["ESI-Ontology-Version"]) == ("true", old_version)

        # SPARQL users see each case's version: every case of the site, all stale
        rows = client.get("/queries/case-versions", headers={"Accept": SPARQL_JSON}).get_json()
        seen = {b["case"]["value"].rsplit("/", 1)[-1]: (b["version"]["value"], b["stale"]["value"])
                for b in rows["results"]["bindings"]}
        assert seen == {c["id"]: (old_version, "true") for c in cases[:20]}  # the token's site only
    finally:
        app.extensions["esi"].close()

    done = reason_stale(new, sites=["default"], batch_size=7, workers=0, progress=None)
    assert [(d.site, d.stale, d.switched, d.rejected) for d in done] == [("default", 20, 20, [])]

    app = create_app(new)
    client = app.test_client()
    try:
        expected = fresh_answers(new, cases[:20], "default")
        for case in cases[:20]:
            reply = client.get(f"/cases/{case['id']}/pathway")
            body = reply.get_json()
            assert body["stale"] is False and "current_ontology_version" not in body
            assert reply.headers["ESI-Stale"] == "false"
            assert body == expected[case["id"]]
        rows = client.get("/queries/case-versions", headers={"Accept": SPARQL_JSON}).get_json()
        assert {b["stale"]["value"] for b in rows["results"]["bindings"]} == {"false"}
    finally:
        app.extensions["esi"].close()
    # the other site was not asked for: still 1.0
    assert set(map(tuple, stored_versions(new.data_dir / "sites" / "south").values())) == {(old_version,)}


def test_reason_stale_resumes_after_kill_9_and_writes_each_case_once(tmp_path: Path) -> None:
    cases = generated_cases(KILL_CASES + 10)
    old = store_under_1_0(tmp_path / "data", cases[:KILL_CASES], site="default")
    store_under_1_0(tmp_path / "data", cases[KILL_CASES:], site="south")
    new = old.with_(ontology_path=newer_ontology(tmp_path))
    home = new.data_dir / "sites" / "default"
    new_version = KnowledgeBase.from_settings(new).version
    run = kgservice("reason", "--stale", "--data-dir", str(new.data_dir), "--batch", "2", "--workers", "1",
                    settings=new, stdout=-1, stderr=-1)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and run.poll() is None:
            switched = sum(v == [new_version] for v in stored_versions(home).values())
            if switched >= 2:
                break
            time.sleep(0.02)
        assert run.poll() is None, "finished before it could be killed: " + run.communicate()[1].decode()
        os.killpg(run.pid, signal.SIGKILL)  # the whole group: the command and its reasoning worker
    finally:
        run.communicate(timeout=30)
    partly = stored_versions(home)
    assert 2 <= sum(v == [new_version] for v in partly.values()) < KILL_CASES

    again = kgservice("reason", "--stale", "--data-dir", str(new.data_dir), settings=new, stdout=-1, stderr=-1)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err.decode()
    report = {s["site"]: s for s in json.loads(out)}
    assert report["default"]["stale"] == report["default"]["switched"] == KILL_CASES - sum(
        v == [new_version] for v in partly.values())
    assert report["south"]["switched"] == 10
    assert any("re-reasoned" in line and "/" in line for line in lines(err))  # the progress line

    # nothing lost, nothing written twice: one version per case, the answer a fresh run gives
    assert stored_versions(home) == {c["id"]: [new_version] for c in cases[:KILL_CASES]}
    service = Service(new)
    try:
        expected = fresh_answers(new, cases[:KILL_CASES], "default")
        kb = KnowledgeBase.from_settings(new)
        for case in cases[:KILL_CASES]:
            answer = service.stored_answer(case["id"], "default")
            assert answer["stale"] is False
            assert answer == expected[case["id"]]
            _, inferred = service.site_store("default").read(case["id"])
            reasoned = kb.reason([kb.read_json(case, site="default")])[0]
            assert set(inferred) == set(map(triple_to_ox, reasoned.inferred))
    finally:
        service.close()


def test_reason_refuses_a_store_in_use_and_unknown_sites(upgraded) -> None:
    _, new, _ = upgraded
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
    from kgservice.store import OxigraphSite, Reinferred

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
