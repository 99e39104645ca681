"""The pages in a real browser: Debian's Chromium, driven by Playwright, against a real ``kgservice serve``.

A person signs in, assesses a red-flag case and sees the urgent consultation first, gets an
error at the field that caused it, stores the case, runs a named query over it, downloads the
results and follows a rule to its documentation. Every page is checked with axe-core (from
``node_modules``, installed by the build) under the pages' own Content-Security-Policy, and
leaves a full-page screenshot in ``tests/artifacts/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serverutil import RealServer, create_token

ROOT = Path(__file__).resolve().parent.parent
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Records what the page's Content-Security-Policy blocked (an init script runs outside the CSP).
CSP_WATCH = """document.addEventListener('securitypolicyviolation', (e) => {
  (window.__csp = window.__csp || []).push(e.violatedDirective + ' ' + e.blockedURI); });"""

pytestmark = pytest.mark.slow

if not Path(CHROMIUM).is_file() and not os.environ.get("CI"):
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    data = tmp_path_factory.mktemp("browser-data")
    with RealServer(data, auth_required=True) as running:
        running.token = create_token(data, "north", "pathway:run", "cases:read", "cases:write")  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium with a fresh profile (Playwright gives it a new --user-data-dir and removes it after)."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


def new_context(browser: Any, **options: Any) -> Any:
    context = browser.new_context(viewport={"width": 1200, "height": 900}, accept_downloads=True, **options)
    context.set_default_timeout(10_000)
    context.add_init_script(CSP_WATCH)
    return context


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = new_context(browser)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    blocked = page.evaluate("window.__csp || []")
    context.close()
    assert not blocked, f"the Content-Security-Policy blocked: {blocked}"
    # Expected refusals (4xx answers) are the test's to check; CSP reports are checked above, without axe's own.
    unexpected = [e for e in errors if "status of 4" not in e and "Content Security Policy" not in e]
    assert not unexpected, f"errors in the browser console: {unexpected}"


def shot(page: Any, name: str, full_page: bool = True) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def assert_accessible(page: Any) -> None:
    """axe-core finds no serious or critical violation of WCAG 2.1 A/AA on the page as it is now."""
    assert AXE.is_file(), f"{AXE} is missing: `pip install -e .` runs npm ci (hatch_build.py) unless ESI_WEB_BUILD=skip"
    page.evaluate(AXE.read_text(encoding="utf-8") + "\n;undefined")  # evaluated by the driver: outside the CSP
    seen = page.evaluate("(window.__csp || []).length")
    result = page.evaluate("axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', "
                           "'best-practice']})")
    # axe inserts a <style> of its own while it measures, which the page's policy rightly blocks: not the page's.
    page.evaluate(f"window.__csp && window.__csp.splice({seen})")
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in result["violations"]
           if v["impact"] in ("serious", "critical")]
    assert not bad, f"axe-core on {page.url}: {bad}"


def sign_in(page: Any, server: RealServer) -> None:
    page.goto(f"{server.base_url}/sign-in")
    page.fill("#token", server.token)  # type: ignore[attr-defined]
    page.click("#sign-in button[type=submit]")
    sync_api.expect(page.locator("#sign-in-status")).to_contain_text("Signed in")


def fill_red_flag_case(page: Any, server: RealServer, case_id: str = "") -> None:
    """The article's foot-drop case: a primary non-responder with a red flag."""
    page.goto(f"{server.base_url}/clinician")
    page.fill("[name=id]", case_id)
    page.fill("[name=age]", "55")
    page.select_option("[name=sex]", "female")
    for region in ("lower-back", "leg"):
        page.check(f"input[name=pain_regions][value={region}]")
    page.check("input[name=diagnoses][value=herniated-disc]")
    page.fill("[name='injection.date']", "2026-06-10")
    page.select_option("[name='injection.approach']", "transforaminal")
    page.select_option("[name='injection.spinal_region']", "lumbar")
    page.fill("[name='pain_scores[0].date']", "2026-06-10")
    page.fill("[name='pain_scores[0].score']", "8")
    page.click("button.add >> nth=0")  # a second pain-score row, added in place
    page.fill("[name='pain_scores[1].date']", "2026-06-22")
    page.fill("[name='pain_scores[1].score']", "8")
    page.check("input[name=red_flags][value=foot-drop]")


def test_the_landing_page_says_what_esi_kg_is_and_links_every_page(server: RealServer, page: Any) -> None:
    response = page.goto(server.base_url + "/")
    assert "default-src 'self'" in response.headers["content-security-policy"]
    sync_api.expect(page.locator("main")).to_contain_text("not a diagnosis")
    for href in ("/clinician", "/query", "/docs", "/openapi.json", "/sign-in"):
        assert page.locator(f"main a[href='{href}']").count() >= 1, href
    shot(page, "landing")
    assert_accessible(page)


def test_a_red_flag_case_shows_the_urgent_consultation_first(server: RealServer, page: Any) -> None:
    sign_in(page, server)
    shot(page, "sign-in")
    assert_accessible(page)
    fill_red_flag_case(page, server)
    shot(page, "clinician-form")
    assert_accessible(page)
    page.click("#case-form .actions button:text-is('Assess')")
    first = page.locator("ol.pathways > li").first
    sync_api.expect(first).to_contain_text("urgent spine surgeon consultation")
    sync_api.expect(first.locator(".badge")).to_have_text("urgent")
    sync_api.expect(first).to_contain_text("foot drop")
    sync_api.expect(page.locator(".conclusion")).to_contain_text("primary non-responder")
    assert page.url.endswith("/clinician")  # answered in place, with the token as a header
    shot(page, "clinician-answer")
    assert_accessible(page)


def test_an_invalid_score_is_shown_at_its_field(server: RealServer, page: Any) -> None:
    sign_in(page, server)
    fill_red_flag_case(page, server)
    page.fill("[name='pain_scores[1].score']", "11")
    page.click("#case-form .actions button:text-is('Assess')")
    score = page.locator("[name='pain_scores[1].score']")
    sync_api.expect(score).to_have_attribute("aria-invalid", "true")
    described = score.get_attribute("aria-describedby").split()
    message = page.locator(f"#{described[-1]}")
    sync_api.expect(message).to_contain_text("score must be an integer from 0 to 10")
    sync_api.expect(page.locator(".problem")).to_contain_text("Invalid case")
    assert page.locator("[aria-invalid=true]").count() == 1  # nothing else is blamed
    shot(page, "clinician-field-error")
    assert_accessible(page)


def test_a_stored_case_is_found_by_a_named_query_on_the_query_page(server: RealServer, page: Any) -> None:
    sign_in(page, server)
    fill_red_flag_case(page, server, case_id="web-foot-drop")
    page.click("#case-form .actions button:text-is('Assess and store the case')")
    sync_api.expect(page.locator(".stored")).to_contain_text("web-foot-drop")
    assert server.request("GET", "/cases/web-foot-drop", token=server.token).status == 200  # type: ignore[attr-defined]

    page.click(".stored a")  # the stored case's explanations: a named query, loaded with the case's IRI
    sync_api.expect(page.locator("#param-case")).to_have_value("https://w3id.org/esi-kg/case/north/web-foot-drop")
    page.click("#query-form button[type=submit]")
    sync_api.expect(page.locator("#results-table")).to_contain_text("esi:urgent-spine-surgeon-consultation")

    page.goto(f"{server.base_url}/query")
    assert page.locator(".cm-editor .cm-content").count() == 1  # the editor from npm, not the bare textarea
    page.select_option("#example", "cases-by-pathway")
    sync_api.expect(page.locator(".cm-content")).to_contain_text("SELECT")
    page.fill("#param-pathway", "urgent-spine-surgeon-consultation")
    page.click("#query-form button[type=submit]")
    sync_api.expect(page.locator("#query-status")).to_contain_text("GET /queries/cases-by-pathway")
    sync_api.expect(page.locator("#results-table")).to_contain_text("web-foot-drop")
    with page.expect_download() as download:
        page.click("button[data-ext=csv]")
    csv = Path(download.value.path()).read_text(encoding="utf-8")
    assert csv.splitlines()[0].startswith("pathway,case") and "web-foot-drop" in csv
    shot(page, "query-results")
    assert_accessible(page)


def test_an_edited_query_runs_on_the_sparql_endpoint_and_needs_a_token(server: RealServer, page: Any) -> None:
    page.goto(f"{server.base_url}/query")  # a new tab: no token yet
    page.click("#query-form button[type=submit]")
    sync_api.expect(page.locator("#query-status")).to_contain_text("Unauthorized")
    sign_in(page, server)
    page.goto(f"{server.base_url}/query")
    page.click(".cm-content")
    page.keyboard.press("Control+End")
    page.keyboard.type(" # edited")
    page.click("#query-form button[type=submit]")
    sync_api.expect(page.locator("#query-status")).to_contain_text("POST /sparql")
    sync_api.expect(page.locator("#results-table caption")).to_contain_text("row")
    page.click("#session button:text-is('Sign out')")
    page.wait_for_url("**/sign-in")
    sync_api.expect(page.locator("#sign-in-status")).to_have_text("Not signed in.")
    assert page.evaluate("sessionStorage.length") == 0


def test_a_rule_of_the_answer_links_to_its_documentation(server: RealServer, page: Any) -> None:
    sign_in(page, server)
    fill_red_flag_case(page, server)
    page.click("#case-form .actions button:text-is('Assess')")
    link = page.locator("ol.pathways > li").first.locator(".rule a")
    sync_api.expect(link).to_contain_text("urgent spine surgeon consultation")
    href = link.get_attribute("href")
    assert href.startswith("/docs#") and len(href) > len("/docs#"), href
    anchor = href.split("#", 1)[1]
    link.click()
    page.wait_for_url(f"**{href}")
    entry = page.locator(f"[id='{anchor}']")
    sync_api.expect(entry).to_be_visible()
    sync_api.expect(entry).to_contain_text("urgent spine surgeon consultation")
    assert entry.bounding_box()["y"] < page.viewport_size["height"]  # scrolled to the rule's entry
    shot(page, "docs-rule", full_page=False)  # the whole documentation is one very tall page
    assert_accessible(page)


def test_the_form_works_without_javascript(server: RealServer, browser: Any) -> None:
    """Progressive enhancement: with scripts off, rows are added by the server and the token is a form field."""
    context = new_context(browser, java_script_enabled=False)
    page = context.new_page()
    try:
        page.goto(f"{server.base_url}/clinician")
        page.fill("[name=age]", "55")
        page.check("input[name=pain_regions][value=leg]")
        page.fill("[name='injection.date']", "2026-06-10")
        page.fill("[name='pain_scores[0].date']", "2026-06-10")
        page.fill("[name='pain_scores[0].score']", "8")
        page.click("button.add >> nth=0")
        page.fill("[name='pain_scores[1].date']", "2026-06-22")
        page.fill("[name='pain_scores[1].score']", "8")
        page.check("input[name=red_flags][value=foot-drop]")
        page.fill("[name=token]", server.token)  # type: ignore[attr-defined]
        page.click("#case-form .actions button:text-is('Assess')")
        sync_api.expect(page.locator("ol.pathways > li").first).to_contain_text("urgent spine surgeon consultation")
        assert server.token not in page.url  # type: ignore[attr-defined]
        shot(page, "clinician-no-javascript")
    finally:
        context.close()
