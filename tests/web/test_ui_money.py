"""The money pages of the web UI, driven like a browser without JavaScript: prices on the model
page, the buy confirm page, the library (keys, downloads, refunds; funds come in by deposit) and
earnings.
Every scenario ends with a clean ledger."""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Callable, Iterator
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cyxwiz.accounts.service import get_user_by_username
from cyxwiz.billing import deposits, flows
from cyxwiz.billing.models import Purchase
from cyxwiz.clock import TestClock
from cyxwiz.config import Env, Settings
from cyxwiz.db import Database
from cyxwiz.ledger import service as ledger
from cyxwiz.licensing.models import License
from cyxwiz.money import Currency
from tests.chain_support import chain_of, funded_wallet
from tests.chain_support import pay as wallet_pay
from tests.factories import Account, Api, onnx_with_payload
from tests.web.test_ui import HTML, Browser

USDC = 1_000_000
WEIGHTS = onnx_with_payload(b"\x00\x01paid-weights" * 200)  # a valid model file
Response = Any


@pytest.fixture(autouse=True)
def ledger_stays_clean(db: Database) -> Iterator[None]:
    yield
    with db.session() as s:
        report = ledger.check(s)
    assert report.ok, report.problems


@pytest.fixture
def browser(client: TestClient) -> Browser:
    return Browser(client)


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


# ---------------------------------------------------------------- helpers


class _Forms(HTMLParser):
    """The forms of a page: action, and the values a browser would submit (checked radios,
    hidden and text inputs), plus the labels of their submit buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self._current: dict[str, Any] | None = None
        self._in_button = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self._current = {"action": a.get("action", ""), "fields": {}, "buttons": []}
            self.forms.append(self._current)
        elif self._current is not None and tag == "input" and a.get("name"):
            if a.get("type") in ("radio", "checkbox") and "checked" not in a:
                return
            self._current["fields"][a["name"]] = a.get("value") or ""
        elif self._current is not None and tag == "button":
            self._in_button = True
            self._current["buttons"].append("")

    def handle_data(self, data: str) -> None:
        if self._current is not None and self._in_button:
            self._current["buttons"][-1] += data.strip()

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None
        elif tag == "button":
            self._in_button = False


def all_forms(html: str) -> list[dict[str, Any]]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


def forms(html: str, action: str) -> list[dict[str, Any]]:
    return [f for f in all_forms(html) if f["action"] == action]


def refund_forms(html: str) -> list[dict[str, Any]]:
    return [f for f in all_forms(html) if f["action"].endswith("/refund")]


def form_fields(html: str, action: str, button: str | None = None) -> dict[str, str]:
    """The fields of the (first) form posting to ``action`` whose button reads ``button``."""
    found = [f for f in forms(html, action) if button is None or button in f["buttons"]]
    assert found, f"no form posting to {action} ({button}) on the page"
    return dict(found[0]["fields"])


def submit(b: Browser, action: str, fields: dict[str, str]) -> Response:
    return b.client.post(action, data=fields, headers=HTML, follow_redirects=False)


def text(page: str) -> str:
    """The page's visible text, entities decoded and whitespace collapsed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def _name() -> str:
    return f"u{secrets.token_hex(4)}"


def paid_model(api: Api, owner: Account, price: int = 49 * USDC) -> str:
    m = api.published_model(owner, files={"model.onnx": WEIGHTS}, title="Paid Net")
    r = api.client.put(
        f"/api/v1/models/{m['full_name']}/offers",
        json={"one_time": {"amount": price, "currency": "USDC"}},
        headers=owner.headers,
    )
    assert r.status_code == 200, r.text
    return str(m["full_name"])


def available(db: Database, username: str, currency: Currency = Currency.USDC) -> int:
    with db.session() as s:
        user = get_user_by_username(s, username)
        return int(flows.balances(s, user=user)[currency.value]["balance"]["available"])


def purchases(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Purchase)) or 0)


def add_funds(b: Browser, currency: str = "USDC") -> Response:
    """Deposit 100 <currency> the way a user does: a request on /deposit, paid by a wallet
    holding test tokens on the dev chain, then 'Check now' (the answer: back to the request)."""
    fields = form_fields(b.get("/deposit").text, "/deposit")
    r = submit(b, "/deposit", {**fields, "amount": "100", "currency": currency})
    assert r.status_code == 303, r.text
    request = b.get(r.headers["location"])
    m = re.search(r'data-copy="(solana:[^"]+)"', request.text)
    assert m, request.text
    chain = chain_of(b.client)
    wallet_pay(chain, funded_wallet(chain, Currency(currency), 100 * USDC), html.unescape(m[1]))
    scan = f"{r.headers['location']}/scan"
    r = submit(b, scan, form_fields(request.text, scan))
    assert r.status_code == 303, r.text
    return r


def buyer(new_browser: Callable[[], Browser], funds: tuple[str, ...] = ("USDC",)) -> Browser:
    b = new_browser()
    b.signup(_name())
    for cur in funds:
        add_funds(b, cur)
    return b


def username(b: Browser) -> str:
    page = b.get("/library")
    m = re.search(r'<span class="nav-username">([^<]+)</span>', page.text)
    assert m
    return m.group(1)


def buy_via_form(b: Browser, model: str, currency: str = "USDC") -> tuple[Response, dict[str, str]]:
    page = b.get(f"/{model}/buy")
    assert page.status_code == 200, page.text
    fields = form_fields(page.text, f"/{model}/buy")
    fields["currency"] = currency
    return submit(b, f"/{model}/buy", fields), fields


# ---------------------------------------------------------------- who may see what


def test_money_pages_need_sign_in(
    browser: Browser, new_browser: Callable[[], Browser], api: Api
) -> None:
    m = paid_model(api, api.user())
    for url in ("/library", "/earnings", f"/{m}/buy"):
        r = browser.get(url)
        assert r.status_code == 303, url
        assert r.headers["location"] == f"/login?next={url}"
    for url in ("/deposit", f"/{m}/buy"):
        r = browser.post(url, {"currency": "USDC", "amount": "100"})
        assert r.status_code == 303
        assert r.headers["location"].startswith("/login?next=")
    home = browser.get("/")
    assert 'href="/library"' not in home.text
    assert 'href="/earnings"' not in home.text

    b = buyer(new_browser, funds=())
    for url in ("/library", "/earnings", f"/{m}/buy"):
        assert b.get(url).status_code == 200, url
    home = b.get("/")
    assert 'href="/library"' in home.text
    assert 'href="/earnings"' in home.text


def test_model_page_shows_price_and_hides_downloads_until_bought(
    browser: Browser, new_browser: Callable[[], Browser], api: Api, db: Database
) -> None:
    owner = api.user()
    free = api.published_model(owner, title="Free Net")["full_name"]
    r = browser.get(f"/{free}")
    assert "Free" in text(r.text)
    assert f"/{free}/resolve/1.0.0/model.onnx" in r.text
    assert f"/{free}/buy" not in r.text
    # a free model has no confirm page
    visitor = buyer(new_browser, funds=())
    r = visitor.get(f"/{free}/buy")
    assert r.status_code == 303
    assert r.headers["location"] == f"/{free}"

    m = paid_model(api, owner)
    for who in (browser, visitor):  # anonymous and signed-in without a license
        page = who.get(f"/{m}")
        assert page.status_code == 200
        t = text(page.text)
        assert "49.00 USDC" in t
        assert "166.60 CYX" in t  # 15% off at 0.25 USDC per CYX
        assert "15% off" in t
        assert f'href="/{m}/buy"' in page.text
        assert "Downloads need a license" in t
        assert "model.onnx" in t  # the files list stays public: names, sizes, hashes
        assert "/resolve/" not in page.text
        assert "You own this" not in t
        assert "Pricing" not in t
        version = who.get(f"/{m}/versions/1.0.0")
        assert "/resolve/" not in version.text
        assert "Downloads need a license" in text(version.text)

    creator = new_browser()
    assert creator.login(owner.username).status_code == 303
    page = creator.get(f"/{m}")
    assert f"/{m}/resolve/1.0.0/model.onnx" in page.text
    assert f'action="/{m}/pricing"' in page.text
    assert 'value="49.00"' in page.text
    assert f'href="/{m}/buy"' not in page.text


def test_owner_sets_and_clears_the_price_through_the_form(
    browser: Browser, new_browser: Callable[[], Browser], client: TestClient
) -> None:
    name = _name()
    browser.signup(name)
    browser.create_model("priced")
    full = f"{name}/priced"
    page = browser.get(f"/{full}")
    assert "Set price" in page.text

    r = browser.post(f"/{full}/pricing", {"price": "49.00"})
    assert r.status_code == 303
    assert r.headers["location"] == f"/{full}"
    assert "Price set: 49.00 USDC (or 166.60 CYX paying in CYX)" in browser.get(f"/{full}").text
    offers = client.get(f"/api/v1/models/{full}/offers").json()
    assert offers["one_time"]["amount"] == 49_000_000

    for bad, message in (
        ("abc", "is not a number"),
        ("0", "more than 0"),
        ("1.0000001", "more than 6 decimals"),
        ("-3", "not a non-negative amount"),
        ("", "enter a price"),
        ("99999999999", "at most"),
    ):
        r = browser.post(f"/{full}/pricing", {"price": bad})
        assert r.status_code == 422, bad
        assert message in r.text, bad
        assert "Price not saved" in r.text
        assert f'value="{bad}"' in r.text  # what the owner typed is kept
    assert client.get(f"/api/v1/models/{full}/offers").json()["one_time"]["amount"] == 49 * USDC

    r = browser.post(f"/{full}/pricing", {"price": "$1,250.5"})
    assert r.status_code == 303
    assert client.get(f"/api/v1/models/{full}/offers").json()["one_time"]["amount"] == 1_250_500_000

    # only the owner may price the model
    stranger = buyer(new_browser, funds=())
    r = stranger.post(f"/{full}/pricing", {"price": "1"})
    assert r.status_code in (403, 404)
    assert client.get(f"/api/v1/models/{full}/offers").json()["one_time"]["amount"] == 1_250_500_000

    r = browser.post(f"/{full}/pricing", {"price": "12", "action": "free"})
    assert r.status_code == 303
    assert client.get(f"/api/v1/models/{full}/offers").json()["free"] is True
    assert "is now free" in browser.get(f"/{full}").text


# ---------------------------------------------------------------- buying


def test_buy_through_the_forms_charges_once(
    new_browser: Callable[[], Browser], api: Api, db: Database
) -> None:
    m = paid_model(api, api.user())
    b = buyer(new_browser, funds=())
    who = username(b)
    r = add_funds(b, "USDC")
    assert r.headers["location"].startswith("/deposit/")
    assert "Received 100.00 USDC: 100.00 USDC credited" in b.get(r.headers["location"]).text
    library = b.get("/library")
    assert "100.00 USDC" in text(library.text)
    assert available(db, who) == 100 * USDC

    page = b.get(f"/{m}/buy")
    t = text(page.text)
    assert "Confirm your purchase" in t
    assert "49.00 USDC" in t
    assert "166.60 CYX" in t
    assert "Your balance: 100.00 USDC" in t
    assert "Your balance: 0.00 CYX" in t
    assert "7-day refund promise" in t
    key = form_fields(page.text, f"/{m}/buy")["idempotency_key"]
    assert len(key) >= 16
    assert form_fields(b.get(f"/{m}/buy").text, f"/{m}/buy")["idempotency_key"] != key

    fields = form_fields(page.text, f"/{m}/buy")
    assert fields["currency"] == "USDC"
    r = submit(b, f"/{m}/buy", fields)
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith("/library#license-")
    library = b.get("/library")
    t = text(library.text)
    assert f"You bought {m} for 49.00 USDC." in t
    assert "Paid Net" in t
    assert "49.00 USDC" in t
    assert "active" in t
    assert "Refundable until" in t
    assert "Dec 01, 2026" in t  # the test clock starts on Nov 24, 2026
    key_input = re.search(
        r'<input id="key-[^"]+" type="text" class="key-input" value="([^"]+)" readonly',
        library.text,
    )
    assert key_input
    assert key_input.group(1).startswith("cxwl1.")
    assert f'href="/{m}/resolve/main/model.onnx"' in library.text
    assert available(db, who) == 51 * USDC

    # the same confirm form posted again (double click, reload, retry): charged once
    again = submit(b, f"/{m}/buy", fields)
    assert again.status_code == 303
    assert "charged once" in b.get("/library").text
    assert available(db, who) == 51 * USDC
    assert purchases(db) == 1

    # the license works for downloads and shows up on the model page
    r = b.get(f"/{m}/resolve/main/model.onnx")
    assert r.status_code == 200
    assert r.content == WEIGHTS
    page = b.get(f"/{m}")
    assert "You own this" in page.text
    assert f"/{m}/resolve/1.0.0/model.onnx" in page.text
    assert f'href="/{m}/buy"' not in page.text
    assert "You own this" in b.get(f"/{m}/buy").text
    assert "Downloads</dt><dd>1</dd>" in b.get("/library").text.replace("\n", "")


def test_pay_with_cyx(new_browser: Callable[[], Browser], api: Api, db: Database) -> None:
    m = paid_model(api, api.user())
    b = buyer(new_browser, funds=("CYX", "CYX"))
    who = username(b)
    assert available(db, who, Currency.CYX) == 200 * USDC
    page = b.get(f"/{m}/buy?currency=CYX")
    assert form_fields(page.text, f"/{m}/buy")["currency"] == "CYX"
    r, _ = buy_via_form(b, m, "CYX")
    assert r.status_code == 303
    assert "166.60 CYX" in text(b.get("/library").text)
    assert available(db, who, Currency.CYX) == 200 * USDC - 166_600_000
    assert available(db, who) == 0


def test_insufficient_funds_shows_the_message_and_moves_nothing(
    new_browser: Callable[[], Browser], api: Api, db: Database
) -> None:
    m = paid_model(api, api.user(), price=150 * USDC)
    b = buyer(new_browser)
    who = username(b)
    page = b.get(f"/{m}/buy")
    assert "50.00 USDC short" in text(page.text)
    r, _ = buy_via_form(b, m)
    assert r.status_code == 402
    t = text(r.text)
    assert "Nothing was charged." in t
    assert "Your USDC balance does not cover this price" in t
    assert "Confirm and pay" in t  # the confirm page again, ready for another try
    assert available(db, who) == 100 * USDC
    assert purchases(db) == 0
    assert "No purchases yet" in b.get("/library").text
    assert b.get(f"/{m}/resolve/main/model.onnx").status_code == 403

    r, _ = buy_via_form(b, m, "CYX")
    assert r.status_code == 402
    assert "Your CYX balance does not cover" in text(r.text)
    r, _ = buy_via_form(b, m, "EUR")
    assert r.status_code == 422
    assert "unknown currency" in r.text
    assert purchases(db) == 0


def test_own_model_already_licensed_and_stale_forms(
    new_browser: Callable[[], Browser], api: Api, db: Database
) -> None:
    owner = api.user()
    m = paid_model(api, owner)
    creator = new_browser()
    creator.login(owner.username)
    page = creator.get(f"/{m}/buy")
    assert "This is your model." in page.text
    assert "Confirm and pay" not in page.text
    r = submit(
        creator,
        f"/{m}/buy",
        {"csrf_token": creator.csrf(), "currency": "USDC", "idempotency_key": "k" * 20},
    )
    assert r.status_code == 409
    assert "your own model" in r.text

    b = buyer(new_browser)
    page = b.get(f"/{m}/buy")
    first = form_fields(page.text, f"/{m}/buy")
    second = form_fields(b.get(f"/{m}/buy").text, f"/{m}/buy")
    assert submit(b, f"/{m}/buy", first).status_code == 303
    r = submit(b, f"/{m}/buy", second)  # a second tab's confirm form
    assert r.status_code == 409
    assert "You already own" in r.text
    r = submit(b, f"/{m}/buy", {**first, "currency": "CYX"})  # the used key, another choice
    assert r.status_code == 409
    assert "already used for a different choice" in r.text
    r = submit(b, f"/{m}/buy", {**first, "idempotency_key": "short"})
    assert r.status_code == 422
    assert "reload the page" in r.text
    assert purchases(db) == 1
    assert available(db, username(b)) == 51 * USDC


# ---------------------------------------------------------------- refunds


def test_refund_from_the_library(
    new_browser: Callable[[], Browser], api: Api, db: Database
) -> None:
    m = paid_model(api, api.user())
    b = buyer(new_browser)
    who = username(b)
    r, _ = buy_via_form(b, m)
    assert r.status_code == 303
    assert b.get(f"/{m}/resolve/main/model.onnx").content == WEIGHTS
    library = b.get("/library")
    [refund] = refund_forms(library.text)
    assert refund["buttons"] == ["Refund"]
    r = submit(b, refund["action"], refund["fields"])
    assert r.status_code == 303
    assert r.headers["location"] == "/library"
    library = b.get("/library")
    t = text(library.text)
    assert f"Refunded {m}: 49.00 USDC is back in your balance." in t
    assert "refunded" in t
    assert "key-input" not in library.text
    assert "/resolve/" not in library.text
    assert not refund_forms(library.text)
    assert available(db, who) == 100 * USDC
    assert b.get(f"/{m}/resolve/main/model.onnx").status_code == 403
    # refunding again changes nothing
    assert submit(b, refund["action"], refund["fields"]).status_code == 303
    assert available(db, who) == 100 * USDC
    # and the model can be bought again
    r, _ = buy_via_form(b, m)
    assert r.status_code == 303
    assert available(db, who) == 51 * USDC


def test_refund_button_is_gone_after_the_window(
    new_browser: Callable[[], Browser], api: Api, db: Database, clock: TestClock
) -> None:
    m = paid_model(api, api.user())
    b = buyer(new_browser)
    buy_via_form(b, m)
    [refund] = refund_forms(b.get("/library").text)
    clock.advance(timedelta(days=8))
    library = b.get("/library")
    assert not refund_forms(library.text)
    assert "Closed Dec 01, 2026" in text(library.text)
    r = submit(b, refund["action"], refund["fields"])  # the stale form is refused
    assert r.status_code == 409
    assert "Not refunded." in r.text
    assert "window closed" in r.text
    assert available(db, username(b)) == 51 * USDC
    assert b.get(f"/{m}/resolve/main/model.onnx").status_code == 200


def test_only_the_buyer_may_refund(
    new_browser: Callable[[], Browser], api: Api, db: Database
) -> None:
    m = paid_model(api, api.user())
    b = buyer(new_browser)
    buy_via_form(b, m)
    [refund] = refund_forms(b.get("/library").text)
    eve = buyer(new_browser, funds=())
    r = eve.post(refund["action"])
    assert r.status_code == 404
    assert eve.post("/library/not-a-uuid/refund").status_code == 404
    with db.session() as s:
        assert s.scalar(select(License.status)) == "active"


# ---------------------------------------------------------------- earnings


def test_earnings_show_pending_then_available(
    new_browser: Callable[[], Browser], api: Api, db: Database, clock: TestClock
) -> None:
    owner = api.user()
    m = paid_model(api, owner)
    creator = new_browser()
    creator.login(owner.username)
    page = creator.get("/earnings")
    t = text(page.text)
    assert "Starter tier" in t
    assert "Platform fee 20% · you keep 80%" in t
    assert "No sales yet" in t
    assert "1,000.00 USDC more to reach Rising (18% fee)" in t

    b = buyer(new_browser)
    buy_via_form(b, m)
    b.get(f"/{m}/resolve/main/model.onnx")
    t = text(creator.get("/earnings").text)
    # 49.00 - 20% fee = 39.20 USDC, held in escrow for 7 days
    assert re.search(r"Pending in escrow 39\.20 USDC 0\.00 CYX", t), t
    assert re.search(r"Available 0\.00 USDC", t)
    assert re.search(rf"{re.escape(m)} 1 0 1 39\.20 USDC —", t), t

    clock.advance(timedelta(days=8))
    with db.session() as s:
        assert flows.release_due(s, now=clock.now()) == 1
    page = creator.get("/earnings")
    t = text(page.text)
    assert re.search(r"Pending in escrow 0\.00 USDC", t)
    assert re.search(r"Available 39\.20 USDC", t)
    assert re.search(r"Lifetime earnings 39\.20 USDC", t)
    assert "49.00 USDC in released sales" in t
    assert re.search(rf"{re.escape(m)} 1 0 1 — 39\.20 USDC", t), t
    assert "Sale earnings released" in t
    assert "+39.20 USDC" in t
    assert "Debt" not in t

    # the buyer's own transfers: a deposit in, the purchase held then captured
    t = text(b.get("/earnings").text)
    assert "Deposit Balance +100.00 USDC" in t
    assert "+100.00 USDC" in t
    assert "Purchase, held in escrow" in t
    assert "−49.00 USDC on hold" in t
    assert "Purchase completed" in t


def test_transfers_are_paginated(
    browser: Browser, db: Database, settings: Settings, clock: TestClock
) -> None:
    name = _name()
    browser.signup(name)
    chain = chain_of(browser.client)
    wallet = funded_wallet(chain, Currency.USDC, sum(range(1, 24)) * USDC)
    with db.session() as s:  # 23 deposits from one wallet, credited by the watcher's scan
        user = get_user_by_username(s, name)
        for i in range(23):
            dep, _ = deposits.create_deposit(
                s,
                settings=settings,
                chain=chain,
                user=user,
                currency=Currency.USDC,
                amount=(i + 1) * USDC,
                idempotency_key=f"seed-{i}",
                now=clock.now(),
            )
            wallet_pay(chain, wallet, deposits.payment_url(dep, username=name))
            deposits.scan_deposit(s, settings=settings, chain=chain, deposit=dep, now=clock.now())
    credited = re.compile(r"\+(\d+)\.00 USDC")
    first = browser.get("/earnings")
    assert 'Transfers <span class="muted">23</span>' in first.text
    on_first = credited.findall(first.text)
    assert len(on_first) == 20
    assert 'href="/earnings?page=2"' in first.text
    second = browser.get("/earnings?page=2")
    on_second = credited.findall(second.text)
    assert len(on_second) == 3
    assert sorted(int(x) for x in on_first + on_second) == list(range(1, 24))
    assert "Page 2 of 2" in second.text
    assert browser.get("/earnings?page=oops").status_code == 200


# ---------------------------------------------------------------- adding funds and CSRF


def test_library_offers_deposits_and_dev_test_tokens(browser: Browser, settings: Settings) -> None:
    browser.signup(_name())
    page = browser.get("/library")
    assert 'href="/deposit">Add funds</a>' in page.text
    assert 'href="/wallet">Get test tokens</a>' in page.text
    # the ledger-only faucet is gone: money comes in through deposits only
    assert "/library/faucet" not in page.text
    r = browser.post("/library/faucet", {"currency": "USDC", "amount": "100"})
    assert r.status_code in (404, 405)

    settings.env = Env.production
    page = browser.get("/library")
    assert page.status_code == 200
    assert 'href="/deposit">Add funds</a>' in page.text
    assert "Get test tokens" not in page.text


def test_test_tokens_not_offered_on_the_buy_page_in_production(
    new_browser: Callable[[], Browser], api: Api, settings: Settings
) -> None:
    m = paid_model(api, api.user())
    b = buyer(new_browser, funds=())
    page = b.get(f"/{m}/buy")
    assert "Need funds?" in page.text
    back = f"next=/{m}/buy%3Fcurrency%3DUSDC"  # a deposit comes back to this page
    assert f'href="/deposit?currency=USDC&amp;{back}"' in page.text
    assert 'href="/wallet">Get test tokens</a>' in page.text
    settings.env = Env.production
    page = b.get(f"/{m}/buy")
    assert f'href="/deposit?currency=USDC&amp;{back}"' in page.text
    assert "Get test tokens" not in page.text


def test_money_forms_without_csrf_are_refused_and_move_nothing(
    new_browser: Callable[[], Browser], api: Api, db: Database
) -> None:
    owner = api.user()
    m = paid_model(api, owner)
    b = buyer(new_browser)
    who = username(b)
    page = b.get(f"/{m}/buy")
    fields = form_fields(page.text, f"/{m}/buy")
    no_token = {k: v for k, v in fields.items() if k != "csrf_token"}

    r = submit(b, f"/{m}/buy", no_token)
    assert r.status_code == 403
    assert "security token" in r.text
    r = submit(b, f"/{m}/buy", {**fields, "csrf_token": "x" * 43})
    assert r.status_code == 403
    assert purchases(db) == 0
    assert available(db, who) == 100 * USDC

    deposit = form_fields(b.get("/deposit").text, "/deposit")
    r = submit(b, "/deposit", {k: v for k, v in deposit.items() if k != "csrf_token"})
    assert r.status_code == 403
    assert available(db, who) == 100 * USDC

    assert submit(b, f"/{m}/buy", fields).status_code == 303
    [refund] = refund_forms(b.get("/library").text)
    r = submit(b, refund["action"], {})
    assert r.status_code == 403
    assert available(db, who) == 51 * USDC
    with db.session() as s:
        assert s.scalar(select(License.status)) == "active"

    creator = new_browser()
    creator.login(owner.username)
    r = creator.post(f"/{m}/pricing", {"price": "1"}, csrf=False)
    assert r.status_code == 403
    offers = api.client.get(f"/api/v1/models/{m}/offers").json()
    assert offers["one_time"]["amount"] == 49 * USDC
