"""The pages as HTML (Flask's test client): the form built from the contract, read back into the
same case, the answer in order of care, errors at their inputs, tokens, and the build's output.

The browser tests (tests/test_browser.py) drive the same pages in Chromium; these check the many
cases a browser would take too long for.
"""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from werkzeug.datastructures import MultiDict

from kgservice.api import create_app
from kgservice.config import Settings
from kgservice.http import forms
from kgservice.security.auth import TokenStore

ROOT = Path(__file__).resolve().parent.parent
VIGNETTES = {p.stem: json.loads(p.read_text(encoding="utf-8"))["case"]
             for p in sorted((ROOT / "tests" / "data" / "vignettes").glob("*.json"))}
FORM = "application/x-www-form-urlencoded"


class Page(HTMLParser):
    """The parts of a page the tests look at: every tag's attributes, and the texts of some elements."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.scripts: list[tuple[dict[str, str], str]] = []
        self.pathways: list[str] = []
        self._in: list[str] = []
        self._text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        self.tags.append((tag, attributes))
        if tag in ("script", "strong"):
            self._in.append(tag)
            self._text = []
        if tag == "li" and "pathway" in attributes.get("class", "").split():
            self.pathways.append("")

    def handle_data(self, data: str) -> None:
        self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._in and self._in[-1] == tag:
            self._in.pop()
            text = "".join(self._text).strip()
            if tag == "script":
                self.scripts.append((self.tags[-1][1] if self.tags[-1][0] == "script" else {}, text))
            elif self.pathways and not self.pathways[-1]:
                self.pathways[-1] = text

    def named(self, name: str) -> dict[str, str]:
        return next(a for t, a in self.tags if a.get("name") == name and t in ("input", "select", "textarea"))

    def by_id(self, id_: str) -> dict[str, str]:
        return next(a for _, a in self.tags if a.get("id") == id_)


def form_of(case: dict[str, Any]) -> MultiDict[str, str]:
    """The form a person would fill for ``case``: one input per value, named by its JSON path."""
    out: MultiDict[str, str] = MultiDict()

    def put(path: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                put(f"{path}.{k}" if path else k, v)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for i, row in enumerate(value):
                for k, v in row.items():
                    put(f"{path}[{i}].{k}", v)
        elif isinstance(value, list):
            for v in value:
                out.add(path, v)
        elif value is True:
            out.add(path, "true")
        elif value is not False:
            out.add(path, str(value))

    put("", case)
    return out


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    app = create_app(Settings(auth_required=True, data_dir=tmp_path_factory.mktemp("pages"), reasoning_workers=0))
    yield app
    app.extensions["esi"].close()


@pytest.fixture(scope="module")
def tokens(app: Any) -> dict[str, str]:
    store: TokenStore = app.extensions["esi-tokens"]
    return {"all": store.create("north", ["pathway:run", "cases:read", "cases:write"])[1],
            "run": store.create("north", ["pathway:run"])[1]}


def post(app: Any, path: str, data: MultiDict[str, str], token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return app.test_client().post(path, data=data, content_type=FORM, headers=headers)


@pytest.mark.parametrize("name", VIGNETTES)
def test_a_filled_form_reads_back_as_the_case(app: Any, name: str) -> None:
    with app.app_context():
        from kgservice.http.pages import form_fields

        case = {k: v for k, v in VIGNETTES[name].items() if v not in ([], False)}
        assert forms.read(form_fields(), form_of(case)) == case


@pytest.mark.parametrize("name", VIGNETTES)
def test_the_page_shows_the_pathways_of_the_api_in_order_of_care(app: Any, tokens: dict[str, str], name: str) -> None:
    api = app.test_client().post("/pathway", json=VIGNETTES[name], headers={"Authorization": f"Bearer {tokens['run']}"})
    page = post(app, "/clinician/assess", form_of(VIGNETTES[name]), tokens["run"])
    assert page.status_code == 200
    assert Page(page.get_data(as_text=True)).pathways == [p["label"] for p in api.get_json()["pathways"]]


def test_the_form_offers_every_code_of_the_vocabulary_under_its_field(app: Any) -> None:
    page = Page(app.test_client().get("/clinician").get_data(as_text=True))
    vocabulary = app.test_client().get("/vocabulary").get_json()["input"]
    offered = {(a["name"], a.get("value")) for t, a in page.tags if t in ("input", "option") and "name" in a}
    offered |= {(name, a["value"]) for name in _selects(page) for a in _options(page, name)}
    for field, entries in vocabulary.items():
        name = field.replace(".", "[0]." if field.startswith("diagnostic_blocks") else ".")
        for entry in entries:
            assert (name, entry["code"]) in offered, (field, entry["code"])


def _selects(page: Page) -> list[str]:
    return [a["name"] for t, a in page.tags if t == "select"]


def _options(page: Page, select: str) -> list[dict[str, str]]:
    out, inside = [], False
    for tag, attributes in page.tags:
        if tag == "select":
            inside = attributes["name"] == select
        elif tag == "option" and inside and attributes.get("value"):
            out.append(attributes)
    return out


def test_every_violation_is_shown_at_the_input_its_path_names(app: Any, tokens: dict[str, str]) -> None:
    case = {**VIGNETTES["p01-primary-non-responder"], "age": "old", "diagnoses": ["not-a-code"],
            "pain_scores": [{"date": "2026-05-01", "score": 8}, {"date": "2026-05-20", "score": 11}],
            "injection": {"approach": "caudal"}}
    response = post(app, "/clinician/assess", form_of(case), tokens["run"])
    assert response.status_code == 422
    page = Page(response.get_data(as_text=True))
    violations = app.test_client().post("/pathway", json=case,
                                        headers={"Authorization": f"Bearer {tokens['run']}"}).get_json()["violations"]
    assert {v["path"] for v in violations} >= {"age", "injection.date", "pain_scores[1].score"}
    for v in violations:
        target = re.sub(r"\[\d+\]$", "", v["path"])  # a code of a list belongs to the list's group
        element = page.by_id(forms.input_id(target))
        assert element.get("aria-invalid") == "true", v
        described = element["aria-describedby"].split()
        assert any(page.by_id(i) for i in described if "-error-" in i), v
    assert page.named("age")["value"] == "old"  # what was typed is kept, to be corrected


def test_without_a_token_the_page_says_to_sign_in_and_a_token_in_the_url_is_not_taken(app: Any,
                                                                                      tokens: dict[str, str]) -> None:
    form = form_of(VIGNETTES["p01-primary-non-responder"])
    refused = post(app, "/clinician/assess", form)
    assert refused.status_code == 401 and 'href="/sign-in"' in refused.get_data(as_text=True)
    assert post(app, f"/clinician/assess?token={tokens['run']}", form).status_code == 401
    with_field = form.copy()
    with_field.add("token", tokens["run"])
    assert post(app, "/clinician/assess", with_field).status_code == 200  # the no-script form's body field
    assert app.test_client().post("/pathway", data={"token": tokens["run"]}).status_code == 401  # pages only


def test_storing_needs_cases_write_and_stores_the_case(app: Any, tokens: dict[str, str]) -> None:
    form = form_of({**VIGNETTES["p01-primary-non-responder"], "id": "page-stored"})
    assert post(app, "/clinician/store", form, tokens["run"]).status_code == 403
    stored = post(app, "/clinician/store", form, tokens["all"])
    assert stored.status_code == 201 and "Stored as case <strong>page-stored</strong>" in stored.get_data(as_text=True)
    assert stored.headers["Cache-Control"] == "no-store"  # the page holds the patient's case
    again = post(app, "/clinician/store", form, tokens["all"])
    assert again.status_code == 409 and Page(again.get_data(as_text=True)).named("id").get("aria-invalid") == "true"
    read = app.test_client().get("/cases/page-stored", headers={"Authorization": f"Bearer {tokens['all']}"})
    assert read.status_code == 200 and read.get_json()["age"] == VIGNETTES["p01-primary-non-responder"]["age"]


def test_without_scripts_rows_are_added_and_removed_by_the_server(app: Any) -> None:
    form = form_of(VIGNETTES["p01-primary-non-responder"])
    count = len(VIGNETTES["p01-primary-non-responder"]["pain_scores"])
    added = form.copy()
    added.add("intent", "add:pain_scores")
    page = Page(post(app, "/clinician", added).get_data(as_text=True))
    assert page.named(f"pain_scores[{count}].score")["value"] == ""
    removed = form.copy()
    removed.add("intent", "remove:pain_scores[0]")
    page = Page(post(app, "/clinician", removed).get_data(as_text=True))
    second = VIGNETTES["p01-primary-non-responder"]["pain_scores"][1]
    assert page.named("pain_scores[0].date")["value"] == second["date"]


@pytest.mark.parametrize("path", ["/", "/clinician", "/query", "/sign-in"])
def test_pages_load_only_their_own_files_under_a_strict_policy(app: Any, path: str) -> None:
    response = app.test_client().get(path)
    assert response.status_code == 200 and response.mimetype == "text/html"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    page = Page(response.get_data(as_text=True))
    assert not [a for t, a in page.tags if "style" in a], "inline style attributes are blocked by the policy"
    for attributes, text in page.scripts:
        assert attributes.get("src", "").startswith("/static/") or attributes.get("type") == "application/json"
        assert not text or attributes.get("type") == "application/json", "inline script is blocked by the policy"
    for _, attributes in page.tags:
        for name in ("src", "href"):
            value = attributes.get(name, "")
            assert not value.startswith(("http:", "https:", "//")), f"{path} loads {value} from elsewhere"


def test_without_the_bundle_the_query_page_edits_plain_text(app: Any, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    from kgservice.http import pages

    monkeypatch.setattr(pages, "VENDOR", tmp_path)  # as after ESI_WEB_BUILD=skip
    html = app.test_client().get("/query").get_data(as_text=True)
    page = Page(html)
    assert not [a for a, _ in page.scripts if "vendor" in a.get("src", "")]
    assert page.by_id("query") and "editor was not built" in html  # the text area, and why


def test_the_build_bundled_the_editor_and_committed_none_of_it() -> None:
    vendor = ROOT / "kgservice" / "static" / "vendor"
    assert (vendor / "editor.js").stat().st_size > 100_000, "pip install -e . runs hatch_build.py: npm ci + bundle"
    assert "@codemirror/legacy-modes" in (vendor / "editor.js.LICENSES.txt").read_text(encoding="utf-8")
    tracked = subprocess.run(["git", "ls-files", "kgservice/static/vendor", "node_modules"], cwd=ROOT,
                             capture_output=True, text=True, timeout=30, check=False)
    if tracked.returncode == 0:  # in a git checkout
        assert tracked.stdout == "", "third-party browser code is fetched by the build, never committed"
    lock = json.loads((ROOT / "package-lock.json").read_text(encoding="utf-8"))
    assert all(p.get("version") and p.get("integrity") for k, p in lock["packages"].items() if k), "pinned by hash"


def test_the_build_stops_with_a_clear_message_without_npm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("hatch_build", ROOT / "hatch_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hook = module.WebBuildHook(str(tmp_path), {}, None, None, str(tmp_path), "wheel")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("ESI_WEB_BUILD", raising=False)
    with pytest.raises(RuntimeError, match="need Node.js and npm.*ESI_WEB_BUILD=skip"):
        hook.initialize("standard", {"artifacts": []})
