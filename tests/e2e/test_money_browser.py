"""Money in a real browser against a real server: a creator prices a model; a buyer connects the
built-in dev wallet, gets test tokens, deposits them by paying a Solana Pay request from the
browser, buys through the confirm page, downloads, refunds from the library and is refused after."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect

from tests.e2e.conftest import LiveServer
from tests.factories import onnx_with_payload

pytestmark = pytest.mark.e2e
PASSWORD = "correct horse battery staple"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True}


def _new_page(chromium: Any, **options: Any) -> Page:
    browser: Browser = chromium
    options.setdefault("viewport", DESKTOP)
    context = browser.new_context(accept_downloads=True, **options)
    context.set_default_timeout(15_000)
    return context.new_page()


@pytest.fixture(scope="module", autouse=True)
def close_chain(live_server: LiveServer) -> Iterator[None]:
    """The chain the pages opened is closed after this module (the server itself runs no
    lifespan; a later module reopens it on first use)."""
    yield
    live_server.app.state.ctx.close_chain()


def _sign_up(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/signup")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Email").fill(f"{username}@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.locator(".flash")).to_contain_text("Welcome to CyxWiz")


def _sign_in(page: Page, base: str, username: str) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".flash")).to_contain_text("Signed in")


def _no_sideways_scroll(page: Page, what: str) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the {what} must not scroll sideways on a phone ({width}px)"


def test_price_buy_download_refund(
    live_server: LiveServer, chromium: Any, screenshot_dir: Path, tmp_path: Path
) -> None:
    base = live_server.url
    creator_name = f"maker{secrets.token_hex(3)}"
    buyer_name = f"buyer{secrets.token_hex(3)}"
    model_bytes = onnx_with_payload(secrets.token_bytes(249_800))  # a valid model file
    upload = tmp_path / "model.onnx"
    upload.write_bytes(model_bytes)
    full = f"{creator_name}/sentiment-pro"

    # ---- the creator lists, uploads, publishes and prices a model
    creator = _new_page(chromium)
    _sign_up(creator, base, creator_name)
    creator.goto(f"{base}/new")
    creator.get_by_label("Repository name").fill("sentiment-pro")
    creator.get_by_label("Title").fill("Sentiment Pro")
    creator.get_by_label("Summary").fill(
        "Production-grade sentiment for product reviews, tuned on 2M labelled examples."
    )
    creator.get_by_label("Category").select_option("tabular-classification")
    creator.get_by_label("Tags").fill("onnx, sentiment, reviews")
    creator.get_by_label("License").select_option("proprietary")
    creator.get_by_role("button", name="Create listing").click()
    expect(creator).to_have_url(f"{base}/{full}")
    creator.get_by_role("link", name="New version").first.click()
    creator.get_by_role("button", name="Create draft version").click()
    creator.get_by_label("File", exact=True).set_input_files(str(upload))
    creator.get_by_role("button", name="Upload").click()
    expect(creator.locator(".flash")).to_contain_text("Uploaded model.onnx")
    creator.get_by_role("button", name="Publish v1.0.0").click()
    expect(creator).to_have_url(f"{base}/{full}")
    expect(creator.locator(".download-box")).to_contain_text("Free")

    creator.get_by_label("One-time price").fill("49.00")
    creator.get_by_role("button", name="Set price").click()
    expect(creator.locator(".flash")).to_contain_text(
        "Price set: 49.00 USDC (or 166.60 CYX paying in CYX)"
    )
    expect(creator.locator(".download-box .price")).to_contain_text("49.00")
    expect(creator.get_by_label("One-time price")).to_have_value("49.00")
    creator.screenshot(path=str(screenshot_dir / "money-model-owner.png"), full_page=True)

    # ---- a buyer sees the price and a Buy button, not downloads
    buyer = _new_page(chromium)
    _sign_up(buyer, base, buyer_name)
    buyer.goto(f"{base}/{full}")
    box = buyer.locator(".download-box")
    expect(box).to_contain_text("49.00")
    expect(box).to_contain_text("166.60 CYX")
    expect(box).to_contain_text("15% off")
    expect(buyer.locator(".files-table")).to_contain_text("model.onnx")
    expect(buyer.locator(".files-table a[download]")).to_have_count(0)
    expect(buyer.locator(".buy-prompt")).to_contain_text("Downloads need a license")
    buyer.screenshot(path=str(screenshot_dir / "money-model-page.png"), full_page=True)

    # ---- funds: the dev wallet gets test tokens and deposits them, then buy
    from tests.e2e.test_wallet_browser import (
        connect_dev_wallet,
        get_test_tokens,
        pay_deposit_with_dev_wallet,
    )

    box.get_by_role("link", name="Buy for 49.00 USDC").click()
    expect(buyer).to_have_url(f"{base}/{full}/buy")
    expect(buyer.locator("h1")).to_have_text("Confirm your purchase")
    expect(buyer.locator(".pay-option").first).to_contain_text("Your balance: 0.00 USDC")
    buyer.get_by_role("button", name="Confirm and pay").click()  # with an empty balance
    expect(buyer.locator(".alert-error")).to_contain_text("Nothing was charged.")
    expect(buyer.locator(".alert-error")).to_contain_text("Your USDC balance does not cover")
    buyer.screenshot(path=str(screenshot_dir / "money-confirm-error.png"), full_page=True)
    buyer.get_by_role("link", name="Get test tokens").click()
    expect(buyer).to_have_url(f"{base}/wallet")
    address = connect_dev_wallet(buyer, base, buyer_name)
    get_test_tokens(buyer, address)
    buyer.goto(f"{base}/{full}/buy")
    buyer.locator(".dev-panel").get_by_role("link", name="Add funds").click()
    expect(buyer).to_have_url(re.compile(r"/deposit\?currency=USDC&next="))
    pay_deposit_with_dev_wallet(buyer, "100")
    buyer.screenshot(path=str(screenshot_dir / "money-deposit-paid.png"), full_page=True)
    buyer.get_by_role("link", name="Continue").click()  # back to the confirm page
    expect(buyer).to_have_url(f"{base}/{full}/buy?currency=USDC")
    usdc = buyer.locator(".pay-option").filter(has_text="USDC").first
    expect(usdc).to_contain_text("Your balance: 100.00 USDC")
    expect(buyer.locator(".refund-promise")).to_contain_text("7-day refund promise")
    expect(buyer.get_by_role("radio", name="USDC")).to_be_checked()
    buyer.screenshot(path=str(screenshot_dir / "money-confirm.png"), full_page=True)
    buyer.get_by_role("button", name="Confirm and pay").click()

    # ---- the library: the license, its key, downloads and the refund button
    expect(buyer).to_have_url(re.compile(r"/library#license-[0-9a-f-]+$"))
    expect(buyer.locator(".flash")).to_contain_text(f"You bought {full} for 49.00 USDC")
    card = buyer.locator(".license-card").first
    expect(card).to_contain_text("Sentiment Pro")
    expect(card.locator(".badge")).to_have_text("active")
    key = card.locator("input.key-input")
    expect(key).to_have_attribute("readonly", "")
    assert key.input_value().startswith("cxwl1.")
    expect(card.get_by_role("button", name="Copy the license key")).to_be_visible()
    expect(buyer.locator(".wallet")).to_contain_text("51.00 USDC")
    expect(buyer.locator(".wallet")).to_contain_text("49.00 USDC on hold")
    buyer.evaluate("window.scrollTo(0, 0)")
    buyer.screenshot(path=str(screenshot_dir / "money-library.png"), full_page=True)

    with buyer.expect_download() as download_info:
        card.get_by_role("link", name="Download model.onnx").click()
    download = download_info.value
    assert download.suggested_filename == "model.onnx"
    assert Path(download.path()).read_bytes() == model_bytes

    # the model page now says so
    buyer.goto(f"{base}/{full}")
    expect(buyer.locator(".owned-note")).to_have_text("You own this")
    expect(buyer.locator(".files-table a[download]")).to_have_count(1)
    buyer.screenshot(path=str(screenshot_dir / "money-model-owned.png"), full_page=True)

    # ---- the creator's earnings: the sale is pending in escrow
    creator.goto(f"{base}/earnings")
    expect(creator.locator(".tier-card")).to_contain_text("Starter tier")
    expect(creator.locator(".stat-card").first).to_contain_text("39.20 USDC")
    expect(creator.locator(".earnings-table")).to_contain_text(full)
    creator.screenshot(path=str(screenshot_dir / "money-earnings.png"), full_page=True)

    # ---- phone-sized screens
    visitor_phone = _new_page(chromium, **PHONE)
    visitor_phone.goto(f"{base}/{full}")
    cta = visitor_phone.locator(".mobile-cta")
    expect(cta).to_be_visible()
    expect(cta).to_contain_text("49.00")
    expect(cta.get_by_role("link", name="Buy")).to_have_attribute("href", f"/{full}/buy")
    visitor_phone.screenshot(
        path=str(screenshot_dir / "money-model-page-visitor-mobile.png"), full_page=True
    )
    _no_sideways_scroll(visitor_phone, "model page")
    expect(buyer.locator(".mobile-cta")).to_be_hidden()  # desktop: the aside has the price
    phone = _new_page(chromium, **PHONE)
    _sign_in(phone, base, buyer_name)
    for url, shot in (
        (f"/{full}", "money-model-page-mobile.png"),
        (f"/{full}/buy", "money-confirm-mobile.png"),
        ("/library", "money-library-mobile.png"),
        ("/earnings", "money-earnings-mobile.png"),
    ):
        phone.goto(f"{base}{url}")
        phone.screenshot(path=str(screenshot_dir / shot), full_page=True)
        _no_sideways_scroll(phone, url)
    phone.locator("summary.nav-user").click()
    expect(phone.locator(".menu").get_by_role("link", name="Library")).to_be_visible()
    phone.screenshot(path=str(screenshot_dir / "money-menu-mobile.png"))
    phone_creator = _new_page(chromium, **PHONE)
    _sign_in(phone_creator, base, creator_name)
    phone_creator.goto(f"{base}/earnings")
    phone_creator.screenshot(
        path=str(screenshot_dir / "money-earnings-creator-mobile.png"), full_page=True
    )
    _no_sideways_scroll(phone_creator, "earnings page")

    # ---- refund from the library (the browser asks first), then downloads are refused
    buyer.goto(f"{base}/library")
    dialogs: list[str] = []

    def accept(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    buyer.on("dialog", accept)
    buyer.locator(".license-card").first.get_by_role("button", name="Refund").click()
    expect(buyer.locator(".flash")).to_contain_text(
        f"Refunded {full}: 49.00 USDC is back in your balance"
    )
    assert dialogs
    assert "Refund" in dialogs[0]
    card = buyer.locator(".license-card").first
    expect(card.locator(".badge")).to_have_text("refunded")
    expect(card.locator("input.key-input")).to_have_count(0)
    expect(card.get_by_role("link", name="Download model.onnx")).to_have_count(0)
    expect(buyer.locator(".wallet")).to_contain_text("100.00 USDC")
    buyer.screenshot(path=str(screenshot_dir / "money-library-refunded.png"), full_page=True)
    refused = buyer.request.get(f"{base}/{full}/resolve/main/model.onnx")
    assert refused.status == 403
    buyer.goto(f"{base}/{full}")
    expect(buyer.locator(".download-box")).to_contain_text("Buy for 49.00 USDC")

    for p in (creator, buyer, phone, phone_creator, visitor_phone):
        p.context.close()
