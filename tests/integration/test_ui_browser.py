"""The status page in a real browser: Debian's Chromium, headless, driven by Playwright,
against the sandbox's runners serving the app (GET /api/ui and the API calls it makes).

Playwright's own browser builds cannot be fetched here: the project's set-up (`make test`)
installs Debian's ``chromium``, and this test uses that binary.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from playwright.sync_api import Browser, expect, sync_playwright

from sandbox.demo import save_timeline
from sandbox.stack import Sandbox
from tests.integration.sandbox_helpers import Driver

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
SVG = "{http://www.w3.org/2000/svg}"
KEY = "a-function-key"
IN_FLIGHT = ("admitted", "draining", "reimaging", "booting")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield instance
        instance.close()


def test_the_status_page_follows_a_rollout_in_a_real_browser(
    sandbox: Sandbox, driver: Driver, browser: Browser, tmp_path: Path
) -> None:
    nodes = driver.nodes_of("beta")[:4]
    driver.new_image(pools=["beta"])
    run_id = driver.start(nodes=nodes)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    calls: list[str] = []
    page.on("request", lambda request: calls.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{driver.url}/api/ui?code={KEY}#run={run_id}")

        # While it runs: the run is listed, its nodes have rows, the page says it refreshes.
        expect(page.locator(f"#runs tbody tr[data-run-id='{run_id}']")).to_be_visible()
        expect(page.locator("#run-id")).to_have_text(run_id)
        expect(page.locator("#run-state")).to_have_text("running")
        expect(page.locator("#refresh-status")).to_contain_text("refreshing every 3 s")
        rows = page.locator("#nodes tbody tr")
        expect(rows).to_have_count(len(nodes))
        assert sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.node)")) == sorted(nodes)
        page.screenshot(path=str(tmp_path / "running.png"))

        # Without a reload, the page follows the run to its end.
        expect(page.locator("#run-state")).to_have_text("succeeded", timeout=150_000)
        states = page.locator("#nodes tbody tr td:nth-child(3)")
        expect(states).to_have_text(["succeeded"] * len(nodes), timeout=10_000)
        expect(page.locator(f"#runs tbody tr[data-run-id='{run_id}'] .state")).to_have_text("succeeded")
        expect(page.locator("#timeline")).to_have_attribute("alt", f"timeline of run {run_id}")
        page.wait_for_function("() => document.getElementById('timeline').naturalWidth > 0")
        expect(page.locator("#message")).to_be_hidden()
        page.screenshot(path=str(tmp_path / "finished.png"))
    finally:
        page.close()
    assert not errors, errors

    # Every call the page made carried the key it was opened with (an <img> included).
    api_calls = [url for url in calls if urlsplit(url).path != "/api/ui"]
    assert any(urlsplit(url).path == f"/api/runs/{run_id}/timeline" for url in api_calls), api_calls
    assert all(parse_qs(urlsplit(url).query).get("code") == [KEY] for url in api_calls), api_calls

    # The finished run's timeline, as the runner serves it and the demo saves it: one row
    # per node, each ended well.
    answer = requests.get(f"{driver.url}/api/runs/{run_id}/timeline", timeout=30)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("image/svg+xml")
    saved = save_timeline(driver.url, run_id, tmp_path / "timeline.svg")
    drawn = ET.parse(saved).getroot().findall(f".//{SVG}g[@class='rows']/{SVG}g")
    assert sorted(g.get("data-node") or "" for g in drawn) == sorted(nodes)
    assert all(g.find(f"{SVG}path[@class='outcome success']") is not None for g in drawn)


def test_the_status_page_says_plainly_when_a_run_it_is_asked_for_does_not_exist(
    driver: Driver, browser: Browser
) -> None:
    page = browser.new_page()
    try:
        page.goto(f"{driver.url}/api/ui?code={KEY}#run=no-such-run")
        expect(page.locator("#message")).to_be_visible()
        expect(page.locator("#message")).to_contain_text("404")
        expect(page.locator("#message")).to_contain_text("run no-such-run not found")
        expect(page.locator("#run")).to_be_hidden()
    finally:
        page.close()
