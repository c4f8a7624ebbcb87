"""The core creator-to-buyer journey in a real browser against a real server."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.conftest import LiveServer
from tests.factories import onnx_with_payload

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"
CARD = """---
license: mit
model-index:
  - name: e2e-iris
    results:
      - dataset: {name: Iris}
        metrics:
          - {type: accuracy, value: 0.96}
---

# E2E Iris

A **small** classifier.
"""


def _new_page(chromium: Any, **options: Any) -> Page:
    browser: Browser = chromium
    context = browser.new_context(accept_downloads=True, **options)
    context.set_default_timeout(15_000)
    return context.new_page()


def test_create_upload_publish_search_and_download(
    live_server: LiveServer, chromium: Any, screenshot_dir: Path, tmp_path: Path
) -> None:
    base = live_server.url
    username = f"e2e{secrets.token_hex(3)}"
    model_bytes = onnx_with_payload(secrets.token_bytes(299_800))  # a valid model file
    upload = tmp_path / "model.onnx"
    upload.write_bytes(model_bytes)

    page = _new_page(chromium, viewport={"width": 1280, "height": 900})

    # sign up
    page.goto(f"{base}/")
    page.get_by_role("link", name="Sign up").click()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Email").fill(f"{username}@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page).to_have_url(f"{base}/")
    expect(page.locator(".site-header")).to_contain_text(username)
    expect(page.locator(".flash")).to_contain_text("Welcome to CyxWiz")

    # create a listing
    page.get_by_role("link", name="New model", exact=True).click()
    expect(page).to_have_url(f"{base}/new")
    page.get_by_label("Repository name").fill("e2e-iris")
    page.get_by_label("Title").fill("E2E Iris Classifier")
    page.get_by_label("Summary").fill("Tells three iris species apart from four measurements.")
    page.get_by_label("Category").select_option("tabular-classification")
    page.get_by_label("Task").fill("tabular-classification")
    page.get_by_label("Tags").fill("onnx, iris, e2e")
    expect(page.get_by_label("Visibility")).to_have_value("public")
    page.get_by_label("Model card").fill(CARD)
    page.get_by_label("License").select_option("mit")
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(screenshot_dir / "new-model.png"), full_page=True)
    page.get_by_role("button", name="Create listing").click()
    expect(page).to_have_url(f"{base}/{username}/e2e-iris")
    expect(page.locator(".model-header h1")).to_have_text("E2E Iris Classifier")

    # create a version, upload a file through the form, publish
    page.get_by_role("link", name="New version").first.click()
    expect(page.get_by_label("Version")).to_have_value("1.0.0")
    page.get_by_role("button", name="Create draft version").click()
    expect(page).to_have_url(f"{base}/{username}/e2e-iris/versions/1.0.0")
    page.get_by_label("File", exact=True).set_input_files(str(upload))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator(".flash")).to_contain_text("Uploaded model.onnx (300 kB)")
    expect(page.locator(".files-table")).to_contain_text("model.onnx")
    page.screenshot(path=str(screenshot_dir / "version-draft.png"), full_page=True)
    page.get_by_role("button", name="Publish v1.0.0").click()
    expect(page).to_have_url(f"{base}/{username}/e2e-iris")
    expect(page.locator(".flash")).to_contain_text("Published version 1.0.0")
    page.screenshot(path=str(screenshot_dir / "model-page-owner.png"), full_page=True)

    # a visitor finds it from the home page's search box
    visitor = _new_page(chromium, viewport={"width": 1280, "height": 900})
    visitor.goto(f"{base}/")
    expect(visitor.locator(".model-card")).to_contain_text(["E2E Iris Classifier"])
    visitor.screenshot(path=str(screenshot_dir / "home.png"), full_page=True)
    visitor.get_by_role("search").last.get_by_label("Search models").fill("iris classifier")
    visitor.keyboard.press("Enter")
    expect(visitor).to_have_url(re.compile(r"/models\?q=iris\+classifier$"))
    results = visitor.locator(".model-card")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text(f"{username}/e2e-iris")
    visitor.screenshot(path=str(screenshot_dir / "search.png"), full_page=True)
    results.first.get_by_role("heading", name="E2E Iris Classifier").click()
    expect(visitor).to_have_url(f"{base}/{username}/e2e-iris")
    expect(visitor.locator(".markdown strong")).to_have_text("small")
    expect(visitor.locator(".model-aside")).to_contain_text("0.96")
    visitor.screenshot(path=str(screenshot_dir / "model-page.png"), full_page=True)

    # download the file and compare bytes
    with visitor.expect_download() as download_info:
        visitor.locator(".download-box").get_by_role("link", name="Download model.onnx").click()
    download = download_info.value
    assert download.suggested_filename == "model.onnx"
    assert Path(download.path()).read_bytes() == model_bytes

    # a friendly error page in the site layout
    response = visitor.goto(f"{base}/nobody/nothing")
    assert response is not None
    assert response.status == 404
    expect(visitor.locator(".error-page h1")).to_have_text("Not found")
    visitor.screenshot(path=str(screenshot_dir / "not-found.png"), full_page=True)

    # the same pages on a phone-sized screen
    phone = _new_page(chromium, viewport={"width": 390, "height": 844}, is_mobile=True)
    phone.goto(f"{base}/")
    phone.screenshot(path=str(screenshot_dir / "home-mobile.png"), full_page=True)
    phone.goto(f"{base}/{username}/e2e-iris")
    expect(phone.locator(".model-header h1")).to_have_text("E2E Iris Classifier")
    phone.screenshot(path=str(screenshot_dir / "model-page-mobile.png"), full_page=True)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, "the model page must not scroll sideways on a phone"

    for p in (page, visitor, phone):
        p.context.close()
