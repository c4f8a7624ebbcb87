"""The settlement pages (/wallet, /deposit, /payouts), driven like a browser without JavaScript
plus the JSON calls the page script makes, against the real local chain (LiteSVM).

Wallets sign in Python (solders) exactly what the page script signs in the browser; payments
are made on the app's chain the way a wallet makes them (tests/chain_support.py). Every scenario
ends with a clean ledger and vaults that hold on chain what the ledger says they hold.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from solders.keypair import Keypair
from sqlalchemy import func, select

from cyxwiz.billing import payouts as pay
from cyxwiz.billing import treasury
from cyxwiz.billing.models import Deposit, Payout
from cyxwiz.chain import solana_pay, tokens
from cyxwiz.chain.interfaces import Chain
from cyxwiz.clock import TestClock
from cyxwiz.config import ChainBackend, Env, Settings
from cyxwiz.db import Database
from cyxwiz.ledger import service as ledger
from cyxwiz.money import Currency
from tests.billing.test_api_money import buy, paid_model, release_due
from tests.chain_support import chain_of, funded_wallet, sign_message
from tests.chain_support import pay as wallet_pay
from tests.factories import Api
from tests.web.test_ui import Browser
from tests.web.test_ui_money import _name, available, form_fields, submit, text

USDC = 1_000_000
JSON = {"Accept": "application/json"}


@pytest.fixture
def chain(client: TestClient) -> Chain:
    return chain_of(client)


@pytest.fixture(autouse=True)
def books_balance(db: Database, client: TestClient) -> Iterator[None]:
    yield
    with db.session() as s:
        report = ledger.check(s)
        assert report.ok, report.problems
        vaults = treasury.reconcile(s, chain=chain_of(client))
    assert all(v.ok for v in vaults), [v.problem() for v in vaults]


@pytest.fixture
def new_browser(app: FastAPI) -> Iterator[Callable[[], Browser]]:
    opened: list[TestClient] = []

    def make() -> Browser:
        c = TestClient(app, raise_server_exceptions=False)
        c.__enter__()
        opened.append(c)
        return Browser(c)

    yield make
    for c in opened:
        c.__exit__(None, None, None)


def signed_up(new_browser: Callable[[], Browser]) -> tuple[Browser, str]:
    b = new_browser()
    name = _name()
    b.signup(name)
    return b, name


def post_json(b: Browser, url: str, data: dict[str, str], *, csrf: bool = True) -> Any:
    form = {**data, **({"csrf_token": b.csrf()} if csrf else {})}
    return b.client.post(url, data=form, headers=JSON, follow_redirects=False)


def link_via_script(b: Browser, wallet: Keypair) -> Any:
    """What wallet.js does: fetch a challenge, sign its exact bytes, submit the signature."""
    r = post_json(b, "/wallet/challenge", {"address": str(wallet.pubkey())})
    assert r.status_code == 201, r.text
    message = r.json()["message"]
    return post_json(
        b, "/wallet/link", {"message": message, "signature": sign_message(wallet, message)}
    )


def deposit_id(location: str) -> str:
    m = re.fullmatch(r"/deposit/([0-9a-f-]{36})(\?.*)?", location)
    assert m, location
    return m.group(1)


def new_deposit(b: Browser, amount: str = "100", currency: str = "USDC") -> str:
    fields = form_fields(b.get("/deposit").text, "/deposit")
    r = submit(b, "/deposit", {**fields, "amount": amount, "currency": currency})
    assert r.status_code == 303, r.text
    return deposit_id(r.headers["location"])


def payment_url(page: str) -> str:
    m = re.search(r'<input id="pay-url" type="text" class="key-input mono" value="([^"]+)"', page)
    assert m, page
    return html.unescape(m.group(1))


def deposits(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Deposit)) or 0)


# ---------------------------------------------------------------- who may


def test_settlement_pages_need_sign_in(new_browser: Callable[[], Browser]) -> None:
    browser = new_browser()
    some = uuid.uuid4()
    for url in ("/wallet", "/deposit", "/payouts", f"/deposit/{some}", f"/payouts/{some}"):
        r = browser.get(url)
        assert r.status_code == 303, url
        assert r.headers["location"].startswith("/login?next=/"), url
    for url in (
        "/wallet/challenge",
        "/wallet/link",
        "/wallet/unlink",
        "/wallet/faucet",
        "/deposit",
        f"/deposit/{some}/scan",
        "/payouts",
        "/payouts/quote",
        "/payouts/settings",
    ):
        r = browser.post(url, {})
        assert r.status_code == 303, url
        assert r.headers["location"].startswith("/login?next="), url


def test_every_settlement_form_needs_the_csrf_token(
    new_browser: Callable[[], Browser], db: Database
) -> None:
    b, _ = signed_up(new_browser)
    dep = new_deposit(b)
    for url in (
        "/wallet/challenge",
        "/wallet/link",
        "/wallet/unlink",
        "/wallet/faucet",
        "/deposit",
        f"/deposit/{dep}/scan",
        "/payouts",
        "/payouts/quote",
        "/payouts/settings",
    ):
        r = b.post(url, {"amount": "5", "address": str(Keypair().pubkey())}, csrf=False)
        assert r.status_code == 403, url
        assert "security token" in r.text, url
        r = post_json(b, url, {}, csrf=False)
        assert r.status_code == 403, url
        assert r.json()["code"] == "csrf_failed"
    assert deposits(db) == 1


# ---------------------------------------------------------------- wallets


def test_link_a_wallet_without_javascript(new_browser: Callable[[], Browser]) -> None:
    b, name = signed_up(new_browser)
    page = b.get("/wallet")
    assert page.status_code == 200
    assert "No wallet linked yet" in page.text
    wallet = Keypair()
    address = str(wallet.pubkey())
    fields = form_fields(page.text, "/wallet/challenge")
    shown = submit(b, "/wallet/challenge", {**fields, "address": address})
    assert shown.status_code == 200, shown.text
    m = re.search(r'<textarea id="w-message"[^>]*>(.*?)</textarea>', shown.text, re.DOTALL)
    assert m
    message = html.unescape(m.group(1))
    assert f"Link this wallet to @{name} on CyxWiz" in message
    assert address in message
    link = form_fields(shown.text, "/wallet/link")
    # a browser sends a textarea's line breaks as CRLF
    link.update(message=message.replace("\n", "\r\n"), signature=sign_message(wallet, message))

    bad = submit(b, "/wallet/link", {**link, "signature": sign_message(Keypair(), message)})
    assert bad.status_code == 401
    assert "is not" in text(bad.text)
    assert "signature of this message" in text(bad.text)

    r = submit(b, "/wallet/link", {**link, "label": "cold storage"})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/wallet"
    page = b.get("/wallet")
    t = text(page.text)
    assert f"Linked wallet {address}" in t
    assert address in t
    assert "cold storage" in t
    assert "payouts default" in t
    assert "USDC 0.00 USDC" in t  # its balances on chain

    again = submit(b, "/wallet/link", link)  # the same signed message twice
    assert again.status_code == 401
    assert "already used" in again.text

    for junk in ("", "not-an-address"):
        r = submit(b, "/wallet/challenge", {**fields, "address": junk})
        assert r.status_code == 422
        assert "is not a Solana address" in html.unescape(r.text)


def test_link_through_the_script_endpoints(
    new_browser: Callable[[], Browser], api: Api, client: TestClient
) -> None:
    b, _ = signed_up(new_browser)
    wallet = Keypair()
    r = link_via_script(b, wallet)
    assert r.status_code == 201, r.text
    assert r.json() == {"address": str(wallet.pubkey()), "linked": True}
    r = link_via_script(b, wallet)
    assert r.status_code == 200
    assert r.json()["linked"] is False
    assert "already linked" in b.get("/wallet").text

    # the same wallet cannot be linked to someone else
    other, _ = signed_up(new_browser)
    r = link_via_script(other, wallet)
    assert r.status_code == 409
    assert r.json()["code"] == "wallet_taken"
    # a forged message is refused as JSON for the script
    r = post_json(b, "/wallet/link", {"message": "hello", "signature": "x"})
    assert r.status_code == 401
    assert r.json()["code"] == "siws_message_mismatch"

    # an API key cannot link a wallet through the UI either (as on the API)
    acct = api.user()
    key = client.post(
        "/api/v1/api-keys", json={"name": "w", "scopes": ["write"]}, headers=acct.headers
    ).json()["key"]
    client.cookies.set("cxw_csrf", "t" * 43)
    r = client.post(
        "/wallet/challenge",
        data={"address": str(Keypair().pubkey()), "csrf_token": "t" * 43},
        headers={"Authorization": f"Bearer {key}", **JSON},
    )
    assert r.status_code == 403
    assert r.json()["code"] == "forbidden"

    # unlink
    page = b.get("/wallet")
    fields = form_fields(page.text, "/wallet/unlink")
    assert fields["address"] == str(wallet.pubkey())
    r = submit(b, "/wallet/unlink", fields)
    assert r.status_code == 303
    page = b.get("/wallet")
    assert "Unlinked wallet" in page.text
    assert "No wallet linked yet" in page.text
    assert submit(b, "/wallet/unlink", fields).status_code == 404


def test_test_tokens_are_minted_on_chain_to_a_linked_wallet(
    new_browser: Callable[[], Browser], chain: Chain, db: Database, settings: Settings
) -> None:
    b, name = signed_up(new_browser)
    page = b.get("/wallet")
    assert "Dev wallet" in page.text  # dev server on its local chain
    assert "/wallet/faucet" not in page.text  # nothing linked to mint to yet
    wallet = Keypair()
    address = str(wallet.pubkey())
    assert link_via_script(b, wallet).status_code == 201
    page = b.get("/wallet")
    fields = form_fields(page.text, "/wallet/faucet", "Get 100 test USDC")
    assert fields["wallet"] == address
    r = submit(b, "/wallet/faucet", fields)
    assert r.status_code == 303, r.text
    assert chain.token_balance(chain.token_account_of(address, Currency.USDC)) == 100 * USDC
    assert chain.sol_balance(address) > 0  # and SOL for the fees of depositing it
    t = text(b.get("/wallet").text)
    assert f"Minted 100.00 USDC of test tokens to {address}" in t
    assert "USDC 100.00 USDC" in t
    cyx = form_fields(b.get("/wallet").text, "/wallet/faucet", "Get 100 test CYX")
    assert submit(b, "/wallet/faucet", cyx).status_code == 303
    assert chain.token_balance(chain.token_account_of(address, Currency.CYX)) == 100 * USDC
    assert available(db, name) == 0  # test tokens are in the wallet, not in the balance

    # only to your own linked wallets
    stranger = str(Keypair().pubkey())
    r = submit(b, "/wallet/faucet", {**fields, "wallet": stranger})
    assert r.status_code == 409
    assert chain.token_balance(chain.token_account_of(stranger, Currency.USDC)) == 0

    settings.env = Env.production
    page = b.get("/wallet")
    assert "/wallet/faucet" not in page.text
    assert "data-dev-wallet" not in page.text
    r = submit(b, "/wallet/faucet", fields)
    assert r.status_code == 403
    assert "faucet does not exist in production" in r.text
    assert chain.token_balance(chain.token_account_of(address, Currency.USDC)) == 100 * USDC


def test_no_dev_wallet_or_test_tokens_on_a_real_cluster(
    new_browser: Callable[[], Browser],
    settings: Settings,
    chain: Chain,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b, _ = signed_up(new_browser)
    link_via_script(b, Keypair())
    # read by the pages; the (local) chain is already open
    monkeypatch.setattr(settings, "chain_backend", ChainBackend.rpc)
    page = b.get("/wallet")
    assert page.status_code == 200
    assert "data-dev-wallet" not in page.text
    assert "/wallet/faucet" not in page.text
    assert "Get test tokens" not in b.get("/library").text


# ---------------------------------------------------------------- deposits


def test_deposit_paid_by_a_wallet_is_credited_once(
    new_browser: Callable[[], Browser], chain: Chain, db: Database
) -> None:
    b, name = signed_up(new_browser)
    page = b.get("/deposit")
    assert page.status_code == 200
    fields = form_fields(page.text, "/deposit")
    assert fields["amount"] == "100.00"
    r = submit(b, "/deposit", {**fields, "amount": "25.5"})
    assert r.status_code == 303
    dep = deposit_id(r.headers["location"])
    again = submit(b, "/deposit", {**fields, "amount": "25.5"})  # a double submit
    assert deposit_id(again.headers["location"]) == dep
    assert deposits(db) == 1

    page = b.get(f"/deposit/{dep}")
    assert page.status_code == 200
    t = text(page.text)
    assert "Deposit 25.50 USDC" in t
    assert "Waiting for payment" in t
    assert "No payment seen yet" in t
    assert f'src="/api/v1/deposits/{dep}/qr.png"' in page.text
    url = payment_url(page.text)
    req = solana_pay.parse_url(url)
    assert (req.recipient, req.amount, req.spl_token) == (
        chain.treasury,
        25_500_000,
        chain.mint_of(Currency.USDC),
    )
    qr = b.client.get(f"/api/v1/deposits/{dep}/qr.png")  # the session cookie reads it
    assert qr.status_code == 200
    assert qr.headers["content-type"] == "image/png"
    assert qr.content.startswith(b"\x89PNG")

    scan = form_fields(page.text, f"/deposit/{dep}/scan")
    r = submit(b, f"/deposit/{dep}/scan", scan)
    assert r.status_code == 303
    assert "No payment found yet" in b.get(r.headers["location"]).text

    wallet = funded_wallet(chain, Currency.USDC, 30 * USDC)
    signature = wallet_pay(chain, wallet, url)
    r = submit(b, f"/deposit/{dep}/scan", scan)
    assert r.status_code == 303
    page = b.get(f"/deposit/{dep}")
    t = text(page.text)
    assert "Received 25.50 USDC: 25.50 USDC credited to your balance." in t
    assert "Paid" in t
    assert signature in t
    assert "credited" in t
    assert "Pay with dev wallet" not in page.text  # nothing left to pay
    assert available(db, name) == 25_500_000
    r = submit(b, f"/deposit/{dep}/scan", scan)  # scanning again credits nothing more
    assert "This deposit is paid and credited" in b.get(r.headers["location"]).text
    assert available(db, name) == 25_500_000
    listing = text(b.get("/deposit").text)
    assert "Recent requests 1" in listing
    assert "paid 25.50 USDC 25.50 USDC" in listing
    assert "25.50 USDC" in text(b.get("/library").text)

    # a deposit started from another page offers the way back once paid
    for given, back in (("/library", "/library"), ("https://evil.example/", "")):
        fields = form_fields(b.get(f"/deposit?currency=CYX&next={given}").text, "/deposit")
        assert fields["currency"] == "CYX"
        assert fields.get("next", "") == back
        r = submit(b, "/deposit", fields)
        assert r.status_code == 303
        detail = b.get(r.headers["location"])
        assert ('href="/library">Continue</a>' in detail.text) is bool(back)

    # someone else's request does not exist for you
    other, _ = signed_up(new_browser)
    assert other.get(f"/deposit/{dep}").status_code == 404
    assert other.post(f"/deposit/{dep}/scan", {}).status_code == 404
    assert other.get("/deposit/not-a-uuid").status_code == 404


def test_live_status_updates_after_a_payment(
    new_browser: Callable[[], Browser], chain: Chain, db: Database
) -> None:
    b, name = signed_up(new_browser)
    dep = new_deposit(b, "40", "CYX")
    url = payment_url(b.get(f"/deposit/{dep}").text)
    r = post_json(b, f"/deposit/{dep}/scan", {})
    assert r.status_code == 200
    out = r.json()
    assert (out["status"], out["status_label"], out["final"]) == (
        "open",
        "Waiting for payment",
        False,
    )
    assert out["requested"]["display"] == "40.00 CYX"
    assert out["transactions"] == []

    wallet = funded_wallet(chain, Currency.CYX, 100 * USDC)
    first = wallet_pay(chain, wallet, url, amount=15 * USDC)  # under-pays
    out = post_json(b, f"/deposit/{dep}/scan", {}).json()
    assert (out["status"], out["credited"]["display"], out["final"]) == (
        "partial",
        "15.00 CYX",
        False,
    )
    assert [t["signature"] for t in out["transactions"]] == [first]
    rest = payment_url(b.get(f"/deposit/{dep}").text)
    assert solana_pay.parse_url(rest).amount == 25 * USDC  # the link asks for what is still due
    second = wallet_pay(chain, wallet, rest)
    out = post_json(b, f"/deposit/{dep}/scan", {}).json()
    assert (out["status"], out["credited"]["amount"], out["final"]) == ("paid", 40 * USDC, True)
    assert [t["signature"] for t in out["transactions"]] == [first, second]
    assert all(t["status"] == "credited" for t in out["transactions"])
    assert available(db, name, Currency.CYX) == 40 * USDC


def test_deposit_form_errors_create_nothing(
    new_browser: Callable[[], Browser], db: Database
) -> None:
    b, _ = signed_up(new_browser)
    fields = form_fields(b.get("/deposit").text, "/deposit")
    for amount, message in (
        ("", "enter an amount"),
        ("0", "more than 0"),
        ("abc", "is not a number"),
        ("1.0000001", "more than 6 decimals"),
        ("1000001", "amount must be between"),
    ):
        r = submit(b, "/deposit", {**fields, "amount": amount})
        assert r.status_code == 422, amount
        assert message in html.unescape(r.text), amount
        assert "No request was created" in r.text
    r = submit(b, "/deposit", {**fields, "idempotency_key": "short"})
    assert r.status_code == 422
    assert deposits(db) == 0


def test_dev_wallet_payment_context(
    new_browser: Callable[[], Browser], chain: Chain, settings: Settings
) -> None:
    """The page hands the script the token accounts it cannot derive itself (PDAs)."""
    b, _ = signed_up(new_browser)
    dep = new_deposit(b)
    page = b.get(f"/deposit/{dep}")
    assert "data-dev-pay" in page.text
    assert "data-atas='{}'" in page.text  # no linked wallet to pay from yet
    wallet = Keypair()
    link_via_script(b, wallet)
    page = b.get(f"/deposit/{dep}")
    atas = re.search(r"data-atas='([^']*)'", page.text)
    assert atas
    mint = chain.mint_of(Currency.USDC)
    assert html.unescape(atas.group(1)) == (
        f'{{"{wallet.pubkey()}": "{tokens.ata(str(wallet.pubkey()), mint)}"}}'
    )
    assert f'data-vault="{chain.vault_of(Currency.USDC)}"' in page.text
    assert 'data-rpc="/chain/rpc"' in page.text

    settings.chain_serve_rpc = False  # no /chain/rpc: no dev wallet payments
    assert "data-dev-pay" not in b.get(f"/deposit/{dep}").text


# ---------------------------------------------------------------- payouts


def creator_with_earnings(
    api: Api, client: TestClient, db: Database, clock: TestClock, new_browser: Callable[[], Browser]
) -> tuple[Browser, str]:
    """A creator signed in to the UI whose 50 USDC sale was released: 40 USDC earnings."""
    ada, bob = api.user(), api.user()
    model = paid_model(api, client, ada, price=50 * USDC)
    api.fund(bob, 50 * USDC)
    assert buy(client, bob, model).status_code == 201
    clock.advance(timedelta(days=8))
    assert release_due(db, clock) == 1
    b = new_browser()
    assert b.login(ada.username).status_code == 303
    return b, ada.username


def test_payout_form_creates_one_payout_and_shows_its_signature(
    api: Api,
    client: TestClient,
    db: Database,
    clock: TestClock,
    chain: Chain,
    settings: Settings,
    new_browser: Callable[[], Browser],
) -> None:
    b, _ = creator_with_earnings(api, client, db, clock, new_browser)
    page = b.get("/payouts")
    assert page.status_code == 200
    t = text(page.text)
    assert "Creator earnings available 40.00 USDC" in t
    assert "Link a wallet first" in t
    assert "Instant payout of 40.00 USDC" in t
    assert "in USDC: 39.60 USDC (0.40 USDC fee)" in t
    assert "in CYX: 166.32 CYX" in t  # 39.60 + 5% bonus at 0.25 USDC per CYX
    fields = form_fields(page.text, "/payouts")
    r = submit(b, "/payouts", {**fields, "amount": "10"})
    assert r.status_code == 409
    assert "link one first" in r.text

    wallet = Keypair()
    link_via_script(b, wallet)
    page = b.get("/payouts")
    assert f'<option value="{wallet.pubkey()}" selected>' in page.text
    assert '<option value="earnings" selected>' in page.text
    fields = form_fields(page.text, "/payouts")
    assert (fields["currency"], fields["paid_in"], fields["kind"]) == ("USDC", "USDC", "instant")
    fields["amount"] = "20"
    quote = submit(b, "/payouts/quote", fields)
    assert quote.status_code == 200
    t = text(quote.text)
    assert "Taken 20.00 USDC Fee 0.20 USDC You receive 19.80 USDC" in t
    quoted = form_fields(quote.text, "/payouts")
    assert quoted["idempotency_key"] == fields["idempotency_key"]  # still the same form
    assert quoted["amount"] == "20"
    cyx = text(submit(b, "/payouts/quote", {**fields, "paid_in": "CYX"}).text)
    assert "Bonus 3.96 CYX You receive 83.16 CYX" in cyx
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Payout)) == 0  # a quote moves nothing

    r = submit(b, "/payouts", fields)
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith("/payouts#payout-")
    assert f"Payout requested: 19.80 USDC goes to {wallet.pubkey()} now" in b.get("/payouts").text
    assert submit(b, "/payouts", fields).status_code == 303  # a double submit
    with db.session() as s:
        [row] = s.scalars(select(Payout)).all()
    page = b.get("/payouts")
    t = text(page.text)
    assert "already requested; it is paid once" in t
    assert "Creator earnings available 20.00 USDC 20.00 USDC held" in t
    assert "History 1" in t
    assert "Queued" in t
    assert "not sent yet" in t

    for _ in range(3):  # the settlement loop's job: sign, send, confirm
        pay.process_payouts(db, settings=settings, chain=chain, now=clock.now())
    with db.session() as s:
        row = s.get(Payout, row.id)
        assert row is not None
        assert row.status == "confirmed"
        assert row.signature
        signature = row.signature
    page = b.get("/payouts")
    assert "Confirmed" in page.text
    assert f'href="/payouts/{row.id}" title="{signature}"' in page.text
    detail = b.get(f"/payouts/{row.id}")
    assert detail.status_code == 200
    assert f'value="{signature}"' in detail.text
    assert f'data-copy="{signature}"' in detail.text
    t = text(detail.text)
    assert "Chain status finalized" in t
    assert f"cyxwiz:payout:{row.id.hex[:16]}" in t
    assert "explorer.solana.com" not in detail.text  # no public explorer for a dev chain
    owner = str(wallet.pubkey())
    assert chain.token_balance(chain.token_account_of(owner, Currency.USDC)) == 19_800_000

    other, _ = signed_up(new_browser)
    assert other.get(f"/payouts/{row.id}").status_code == 404
    assert other.get("/payouts/nope").status_code == 404


def test_payout_refusals_and_settings(
    api: Api,
    client: TestClient,
    db: Database,
    clock: TestClock,
    new_browser: Callable[[], Browser],
) -> None:
    b, _ = creator_with_earnings(api, client, db, clock, new_browser)
    wallet = Keypair()
    link_via_script(b, wallet)
    fields = form_fields(b.get("/payouts").text, "/payouts")
    for changes, status, message in (
        ({"amount": "41"}, 402, "more than your creator earnings available"),
        ({"amount": "abc"}, 422, "is not a number"),
        ({"amount": "5", "kind": "scheduled"}, 422, "scheduled payouts start at 10.00 USDC"),
        ({"amount": "5", "source": "balance", "paid_in": "CYX"}, 422, "own currency"),
        ({"amount": "5", "wallet": str(Keypair().pubkey())}, 409, "is not linked"),
    ):
        r = submit(b, "/payouts", {**fields, **changes})
        assert r.status_code == status, (changes, r.text)
        assert message in html.unescape(r.text)
        assert "Nothing was paid out" in r.text
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Payout)) == 0

    settings_form = form_fields(b.get("/payouts").text, "/payouts/settings")
    assert settings_form["paid_in"] == "USDC"
    assert "weekly" not in settings_form
    r = submit(b, "/payouts/settings", {**settings_form, "paid_in": "CYX", "weekly": "on"})
    assert r.status_code == 303
    page = b.get("/payouts")
    assert "Payout settings saved." in page.text
    saved = form_fields(page.text, "/payouts/settings")
    assert saved["paid_in"] == "CYX"
    assert saved["weekly"] == ""
    assert form_fields(page.text, "/payouts")["paid_in"] == "CYX"  # the form follows it
    r = submit(b, "/payouts/settings", {**settings_form, "wallet": str(Keypair().pubkey())})
    assert r.status_code == 409
