"""The Content-Security-Policy in a real browser (issue 9, item 11): pages and /docs work
under it with no violation, and a model card's external image is never fetched."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Response, expect

from tests.e2e.conftest import LiveServer

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"
CARD = "# Pixel\n\n![tracker](https://tracker.example/pixel.gif)\n\nA model card.\n"


def _watched_page(chromium: Any) -> tuple[Page, list[str], list[str]]:
    browser: Browser = chromium
    context = browser.new_context()
    context.set_default_timeout(15_000)
    page = context.new_page()
    violations: list[str] = []
    requests: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            violations.append(f"{page.url}: {message.text}")

    def on_response(response: Response) -> None:  # requests the browser actually made
        requests.append(response.url)

    page.on("console", on_console)
    page.on("response", on_response)
    return page, violations, requests


def test_pages_and_docs_work_under_the_csp(live_server: LiveServer, chromium: Any) -> None:
    base = live_server.url
    page, violations, requests = _watched_page(chromium)
    username = f"csp{secrets.token_hex(3)}"

    page.goto(f"{base}/signup")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Email").fill(f"{username}@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.locator(".site-header")).to_contain_text(username)

    page.goto(f"{base}/new")
    page.get_by_label("Repository name").fill("pixel")
    page.get_by_label("Title").fill("Pixel tracker card")
    page.get_by_label("Summary").fill("A card with an external image.")
    page.get_by_label("Category").select_option("tabular-classification")
    page.get_by_label("Model card").fill(CARD)
    page.get_by_role("button", name="Create listing").click()
    expect(page).to_have_url(f"{base}/{username}/pixel")
    expect(page.locator("body")).to_contain_text("A model card.")

    for path in ("/", "/models", f"/{username}", "/library"):
        page.goto(f"{base}{path}")
        expect(page.locator(".site-footer")).to_be_visible()

    page.goto(f"{base}/docs")  # Swagger UI from the package, no CDN, no inline script
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("CyxWiz")
    expect(page.locator(".opblock").first).to_be_visible()

    assert not [u for u in requests if not u.startswith(base)], "only this host is contacted"
    assert "https://tracker.example/pixel.gif" not in requests
    assert any("tracker.example" in v for v in violations), violations  # refused by the CSP
    assert [v for v in violations if "tracker.example" not in v] == [], "no other violation"
