"""The ontology's documentation: ``kgservice docs`` and ``GET /docs``, generated from the Turtle alone."""

from __future__ import annotations

import html
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rdflib import SKOS, Graph, Literal

from kgservice.api import create_app
from kgservice.config import Settings
from kgservice.core.kb import KnowledgeBase
from kgservice.core.ontology import ESI, local_name

VIGNETTES = sorted((Path(__file__).parent / "data" / "vignettes").glob("*.json"))


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``GET /docs`` of an app that requires tokens, and its client."""
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("docs")))
    client = app.test_client()
    yield client.get("/docs"), client
    app.extensions["esi"].close()


def text_of(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def entry(body: str, term: str) -> str:
    """The text of the element with ``id=term``, up to the next term's."""
    start = body.index(f'id="{term}"')
    end = body.find('<article class="term"', start + 1)
    return text_of(body[start:end if end > 0 else None])


def test_docs_are_open_and_need_no_script_or_inline_style(page: Any) -> None:
    reply, client = page
    assert reply.status_code == 200 and reply.mimetype == "text/html"  # no token sent
    body = reply.get_data(as_text=True)
    assert "<script" not in body and "<style" not in body and " style=" not in body
    csp = reply.headers["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    [css] = re.findall(r'<link rel="stylesheet" href="([^"]+)"', body)
    sheet = client.get(css)
    assert sheet.status_code == 200 and sheet.mimetype == "text/css" and b".term" in sheet.data


def test_every_term_has_one_anchor_and_every_link_lands(page: Any, kb: KnowledgeBase) -> None:
    body = page[0].get_data(as_text=True)
    ids = re.findall(r'\bid="([^"]+)"', body)
    assert len(ids) == len(set(ids))
    terms = {local_name(t) for t in kb.ontology.terms if str(t).startswith(str(ESI))}
    assert terms <= set(ids)
    assert {h[1:] for h in re.findall(r'href="(#[^"]+)"', body)} <= set(ids)


@pytest.mark.parametrize("path", VIGNETTES, ids=[p.stem for p in VIGNETTES])
def test_rule_iris_in_answers_lead_to_their_entry(page: Any, kb: KnowledgeBase, path: Path) -> None:
    import json

    answer = kb.answer_json(json.loads(path.read_text(encoding="utf-8"))["case"])
    body = page[0].get_data(as_text=True)
    rules = [i["rule"] for i in (answer["response"], *answer["pathways"], *answer["failure_causes"]) if i.get("rule")]
    for rule in rules:
        assert rule["label"] in entry(body, local_name(rule["iri"]))


def test_pathways_in_order_of_care_with_their_rules_in_words(page: Any, kb: KnowledgeBase) -> None:
    body = page[0].get_data(as_text=True)
    section = body[body.index('id="pathways"'):body.index('id="rules"')]
    shown = re.findall(r'<article class="term" id="([^"]+)"', section)
    assert shown == [local_name(p) for p in sorted(kb.ontology.pathways, key=lambda p: kb.ontology.pathways[p].order)]
    assert "urgency urgent" in entry(body, "urgent-spine-surgeon-consultation")
    block = entry(body, "DiagnosticNerveBlockRule")
    # alternatives joined by OR, each condition in parentheses: AND and OR never mix unbracketed
    when = block[block.index(" when ") + 6:block.rindex(" source ")]
    assert re.fullmatch(r"\s*\([^()]+ AND [^()]+\) OR \([^()]+ AND [^()]+\)\s*", when), when
    assert "suspected pain source: facet joint" in when


def test_parameters_version_change_note_and_cross_references(page: Any, kb: KnowledgeBase) -> None:
    body = page[0].get_data(as_text=True)
    assert "value 50 percent" in entry(body, "success-relief-threshold")
    header = text_of(body[:body.index('id="value-sets"')])
    assert kb.version in header and "1.1.0" in header
    [change] = kb.ontology.graph.objects(kb.ontology.iri, SKOS.changeNote)
    assert " ".join(str(change).split("\n")[0].split()) in text_of(body[body.index('id="changes"'):])
    subject, target = next((s, o) for s, o in kb.ontology.graph.subject_objects(SKOS.exactMatch)
                           if str(o).startswith("http://purl.obolibrary.org/obo/"))
    shown = re.sub(r"^http://purl.obolibrary.org/obo/([A-Za-z]+)_", r"\1:", str(target))
    assert f"same as {shown}" in entry(body, local_name(subject))
    assert 'href="#source-' in body and "Defining the Lack of Response" in text_of(body[body.index('id="sources"'):])


def test_kgservice_docs_writes_the_page_of_the_file_it_is_given(tmp_path: Path) -> None:
    graph = Graph().parse(Settings().ontology_path, format="turtle")
    graph.set((ESI["success-relief-threshold"], ESI.parameterValue, Literal(70)))
    edited = tmp_path / "edited.ttl"
    graph.serialize(edited, format="turtle")
    out = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "kgservice.cli", "docs", "--ontology", str(edited), "--out",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "ontology-docs.css"]
    body = (out / "index.html").read_text(encoding="utf-8")
    assert 'href="ontology-docs.css"' in body
    assert "value 70 percent" in entry(body, "success-relief-threshold")
