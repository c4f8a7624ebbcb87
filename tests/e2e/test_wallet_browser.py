"""Solana settlement in a real browser against a real server: the built-in dev wallet (an
Ed25519 key made by the browser's WebCrypto) links itself by Sign-In With Solana, gets test
tokens, and pays a deposit request with a transaction the page serializes and signs itself and
sends through the server's Solana JSON-RPC (/chain/rpc) to the real Solana runtime (LiteSVM).

That the deposit is credited proves the script's base58, message layout, instruction encoding
and signature against the actual SPL Token and Memo programs."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from solders.pubkey import Pubkey
from sqlalchemy import select

from cyxwiz.accounts.models import User, Wallet
from cyxwiz.billing.models import Deposit
from cyxwiz.chain.interfaces import Chain
from cyxwiz.money import Currency
from tests.e2e.conftest import LiveServer
from tests.e2e.test_money_browser import (  # noqa: F401 (close_chain: a fixture)
    PHONE,
    _new_page,
    _no_sideways_scroll,
    _sign_up,
    close_chain,
)

pytestmark = pytest.mark.e2e
USDC = 1_000_000


def _chain(server: LiveServer) -> Chain:
    chain: Chain = server.app.state.ctx.chain
    return chain


def _dev_address(page: Page, username: str) -> str:
    saved = page.evaluate(f"JSON.parse(localStorage.getItem('cyxwiz.devWallet.{username}'))")
    assert set(saved) == {"address", "pkcs8"}
    return str(saved["address"])


def connect_dev_wallet(page: Page, base: str, username: str) -> str:
    """Create the dev wallet in this browser and link it (Sign-In With Solana)."""
    page.goto(f"{base}/wallet")
    expect(page.locator("[data-dev-address]")).to_have_text("No dev wallet in this browser yet.")
    page.get_by_role("button", name="Connect dev wallet").click()
    expect(page.locator(".flash")).to_contain_text("Linked wallet")
    address = _dev_address(page, username)
    expect(page.locator(".flash")).to_contain_text(address)
    expect(page.locator("[data-dev-address]")).to_have_text(address)
    expect(page.get_by_role("button", name="Dev wallet linked")).to_be_disabled()
    return address


def get_test_tokens(page: Page, address: str, currency: str = "USDC") -> None:
    card = page.locator(f'[data-address="{address}"]')
    card.get_by_role("button", name=f"Get 100 test {currency}").click()
    expect(page.locator(".flash")).to_contain_text(f"Minted 100.00 {currency} of test tokens")
    expect(page.locator(f'[data-address="{address}"] [data-balance="{currency}"]')).to_have_text(
        f"100.00 {currency}"
    )


def pay_deposit_with_dev_wallet(page: Page, amount: str) -> str:
    """On /deposit: request ``amount``, pay it with the dev wallet, wait for the live status."""
    page.get_by_label("Amount").fill(amount)
    page.get_by_role("button", name="Create deposit request").click()
    expect(page).to_have_url(re.compile(r"/deposit/[0-9a-f-]{36}(\?.*)?$"))
    expect(page.locator('[data-field="status_label"]')).to_have_text("Waiting for payment")
    expect(page.locator("[data-live]")).to_be_visible()  # polling
    page.get_by_role("button", name="Pay with dev wallet").click()
    status = page.locator("[data-pay-status]")
    expect(status).to_contain_text("Sent: ")
    signature = status.inner_text().removeprefix("Sent: ").strip()
    # the page's poll runs the scan: no reload, no watcher (the test server runs no scheduler)
    expect(page.locator('span[data-field="status"]')).to_have_text("paid")
    expect(page.locator('[data-field="status_label"]')).to_have_text("Paid")
    expect(page.locator('[data-field="credited"]')).to_contain_text(amount)
    expect(page.locator("[data-credits]")).to_contain_text(signature)
    expect(page.locator("[data-live]")).to_be_hidden()  # a paid request stops polling
    expect(page.get_by_role("button", name="Pay with dev wallet")).to_be_hidden()
    return signature


def test_dev_wallet_links_gets_test_tokens_and_pays_a_deposit(
    live_server: LiveServer, chromium: Any, screenshot_dir: Path
) -> None:
    base = live_server.url
    name = f"wallet{secrets.token_hex(3)}"
    page = _new_page(chromium)
    _sign_up(page, base, name)

    # ---- the dev wallet: a key made in this browser, linked by signing the SIWS challenge
    address = connect_dev_wallet(page, base, name)
    assert len(bytes(Pubkey.from_string(address))) == 32
    with live_server.app.state.ctx.db.session() as s:
        user = s.scalar(select(User).where(User.username == name))
        assert user is not None
        linked = s.scalars(select(Wallet.address).where(Wallet.user_id == user.id)).all()
    assert linked == [address]
    # the script's base58 agrees with solders on any bytes
    for raw in (b"", b"\x00\x00\x01", secrets.token_bytes(32), secrets.token_bytes(64)):
        encoded = page.evaluate(
            "(h) => window.cyxwizWallet.b58encode(Uint8Array.from(h))", list(raw)
        )
        decoded = page.evaluate("(s) => Array.from(window.cyxwizWallet.b58decode(s))", encoded)
        assert bytes(decoded) == raw
        if len(raw) == 32:
            assert encoded == str(Pubkey.from_bytes(raw))

    # ---- test tokens minted on the dev chain into the wallet (not the balance)
    get_test_tokens(page, address)
    chain = _chain(live_server)
    assert chain.token_balance(chain.token_account_of(address, Currency.USDC)) == 100 * USDC
    page.screenshot(path=str(screenshot_dir / "wallet.png"), full_page=True)

    # ---- a deposit request, paid from the browser through /chain/rpc
    page.get_by_role("link", name="Add funds").first.click()
    expect(page).to_have_url(f"{base}/deposit")
    expect(page.locator(".wallet")).to_contain_text("0.00 USDC")
    signature = pay_deposit_with_dev_wallet(page, "40")
    # the QR code (the API's qr.png, read with the session cookie) loaded
    assert page.evaluate("document.querySelector('img.qr').naturalWidth") > 100
    page.screenshot(path=str(screenshot_dir / "deposit-paid.png"), full_page=True)

    tx = chain.transaction(signature)
    assert tx is not None
    assert tx.signers == (address,)
    with live_server.app.state.ctx.db.session() as s:
        dep = s.scalar(select(Deposit).where(Deposit.last_signature == signature))
        assert dep is not None
        assert dep.status == "paid"
        assert dep.credited == 40 * USDC
        assert tx.memos == (dep.memo,)
        assert dep.reference in tx.account_keys
        assert tx.delta_of(dep.vault, dep.mint) == 40 * USDC
    assert chain.token_balance(chain.token_account_of(address, Currency.USDC)) == 60 * USDC

    # ---- the balance is spendable; the wallet shows what is left on chain
    page.goto(f"{base}/library")
    expect(page.locator(".wallet")).to_contain_text("40.00 USDC")
    page.goto(f"{base}/wallet")
    expect(page.locator(f'[data-address="{address}"] [data-balance="USDC"]')).to_have_text(
        "60.00 USDC"
    )
    # the same key is used again after a reload (kept in this browser)
    page.reload()
    expect(page.locator("[data-dev-address]")).to_have_text(address)

    # ---- the payouts page lists the wallet
    page.goto(f"{base}/payouts")
    expect(page.locator("h1")).to_have_text("Payouts")
    expect(page.locator("#p-wallet")).to_have_value(address)
    page.screenshot(path=str(screenshot_dir / "payouts.png"), full_page=True)

    # ---- phone-sized screens
    phone = _new_page(chromium, **PHONE)
    phone.context.add_cookies(page.context.cookies())
    for url, shot in (
        ("/wallet", "wallet-mobile.png"),
        ("/deposit", "deposit-mobile.png"),
        ("/payouts", "payouts-mobile.png"),
    ):
        phone.goto(f"{base}{url}")
        phone.screenshot(path=str(screenshot_dir / shot), full_page=True)
        _no_sideways_scroll(phone, url)
    for p in (page, phone):
        p.context.close()


PROVIDER = """
// A stand-in for a wallet extension with Phantom's API (connect, signMessage), backed by an
// Ed25519 key in WebCrypto: the page's extension path runs unchanged.
window.phantom = { solana: {
  isPhantom: true,
  connect: async function () {
    this._pair = await crypto.subtle.generateKey({ name: "Ed25519" }, false, ["sign", "verify"]);
    const raw = new Uint8Array(await crypto.subtle.exportKey("raw", this._pair.publicKey));
    const address = window.cyxwizWallet.b58encode(raw);
    sessionStorage.setItem("extensionAddress", address);
    this.publicKey = { toString: () => address };
    return { publicKey: this.publicKey };
  },
  signMessage: async function (bytes, display) {
    const sig = await crypto.subtle.sign({ name: "Ed25519" }, this._pair.privateKey, bytes);
    return { signature: new Uint8Array(sig), publicKey: this.publicKey };
  },
} };
"""


def test_a_wallet_extension_links_by_signing_the_message(
    live_server: LiveServer, chromium: Any
) -> None:
    base = live_server.url
    name = f"ext{secrets.token_hex(3)}"
    page = _new_page(chromium)
    page.context.add_init_script(PROVIDER)
    _sign_up(page, base, name)
    page.goto(f"{base}/wallet")
    page.get_by_role("button", name="Connect browser wallet").click()
    expect(page.locator(".flash")).to_contain_text("Linked wallet")
    address = page.evaluate("sessionStorage.getItem('extensionAddress')")
    card = page.locator(".wallet-card")
    expect(card).to_have_count(1)
    assert card.get_attribute("data-address") == address
    expect(card).to_contain_text("browser wallet")  # the label the page gave it
    # unlinking asks first, then the wallet is gone
    page.on("dialog", lambda d: d.accept())
    card.get_by_role("button", name="Unlink").click()
    expect(page.locator(".flash")).to_contain_text(f"Unlinked wallet {address}")
    expect(page.locator(".wallet-card")).to_have_count(0)
    page.context.close()
