"""Money and counts are read strictly everywhere (issue 9, item 6).

The attacks: JSON ``true`` and ``"100"`` accepted as amounts, ``{"amount": 2**63}`` and
``?page=2**63`` answered with a 500, ``/payouts/quote?amount=1e35`` answered with nonsense, and
decimal form fields in the UI parsed without bounds. Each one now gets a problem+json 4xx with
a stable code and changes nothing (balances, payouts, deposits; the ledger stays clean).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import func, select

from cyxwiz.billing import treasury
from cyxwiz.billing.models import Deposit, Payout
from cyxwiz.catalog.schemas import ContributorIn
from cyxwiz.chain import tokens
from cyxwiz.clock import TestClock
from cyxwiz.db import Database
from cyxwiz.errors import InvalidInput
from cyxwiz.inference.schemas import HeartbeatIn, RegisterIn
from cyxwiz.ledger import service as ledger
from cyxwiz.licensing.schemas import Price
from cyxwiz.money import MAX_AMOUNT, Currency, parse_amount
from tests.billing.test_payout_abuse import creator_with_earnings, money
from tests.chain_support import chain_of
from tests.factories import Api
from tests.web.test_api_auth import problem
from tests.web.test_ui import Browser
from tests.web.test_ui_money import form_fields, submit

BIG = 2**63  # one past the largest signed 64-bit integer
HOSTILE_JSON: tuple[Any, ...] = (True, False, "100", "1e3", 1.5, 100.0, None, [1], {}, BIG, -1, 0)
HOSTILE_QUERY = (
    str(BIG),
    str(2**64 + 5),
    "9" * 30,
    "0",
    "-1",
    "1.5",
    "1.0",
    "1e3",
    "true",
    "+2",
    " 2",
    "0x10",
    "²",
    "",
)


@pytest.fixture(autouse=True)
def books_balance(db: Database, client: TestClient) -> Iterator[None]:
    yield
    with db.session() as s:
        report = ledger.check(s)
        assert report.ok, report.problems
        vaults = treasury.reconcile(s, chain=chain_of(client))
    assert all(v.ok for v in vaults), [v.problem() for v in vaults]


def count(db: Database, table: type) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


# ---------------------------------------------------------------- JSON bodies


def test_payout_amounts_are_strict_integers(
    api: Api, client: TestClient, db: Database, clock: TestClock
) -> None:
    ada, _, earned, _ = creator_with_earnings(api, client, db, clock)
    before = money(client, ada)
    for amount in HOSTILE_JSON:
        r = client.post("/api/v1/payouts", json={"amount": amount}, headers=ada.headers)
        problem(r, 422, "validation_error")
    for field in ("currency", "source", "kind", "paid_in", "wallet"):
        r = client.post(
            "/api/v1/payouts", json={"amount": earned, field: True}, headers=ada.headers
        )
        problem(r, 422, "validation_error")
    assert money(client, ada) == before
    assert count(db, Payout) == 0


def test_deposit_and_faucet_amounts_are_strict_integers(
    api: Api, client: TestClient, db: Database
) -> None:
    ada = api.user()
    wallet = api.link_wallet(ada, tokens.new_keypair())
    for amount in HOSTILE_JSON:
        problem(
            client.post("/api/v1/deposits", json={"amount": amount}, headers=ada.headers),
            422,
            "validation_error",
        )
        problem(
            client.post(
                "/api/v1/chain/faucet",
                json={"amount": amount, "wallet": wallet["address"]},
                headers=ada.headers,
            ),
            422,
            "validation_error",
        )
    assert count(db, Deposit) == 0
    assert money(client, ada)["balance"]["available"] == 0
    chain = chain_of(client)
    held = chain.token_balance(chain.token_account_of(wallet["address"], Currency.USDC))
    assert held == 0


def test_prices_and_shares_are_strict_integers(api: Api, client: TestClient) -> None:
    ada = api.user()
    full = api.published_model(ada)["full_name"]
    url = f"/api/v1/models/{full}/offers"
    for amount in (True, "100", 1.0, BIG, 0):
        r = client.put(
            url, json={"one_time": {"amount": amount, "currency": "USDC"}}, headers=ada.headers
        )
        problem(r, 422, "validation_error")
    assert client.get(url).json()["free"] is True
    with pytest.raises(ValidationError):
        Price.model_validate({"amount": True, "currency": "USDC"})
    # the other request schemas that read counts (catalog shares, node capacity and load)
    for schema, body in (
        (ContributorIn, {"username": "bob", "share_bps": True}),
        (ContributorIn, {"username": "bob", "share_bps": "10000"}),
        (RegisterIn, {"url": "http://10.0.0.5:8801", "capacity": True}),
        (HeartbeatIn, {"load": "3"}),
    ):
        with pytest.raises(ValidationError):
            schema.model_validate(body)


# ---------------------------------------------------------------- query strings


PAGINATED = ("/api/v1/deposits", "/api/v1/payouts", "/api/v1/ledger/transfers", "/api/v1/models")


@pytest.mark.parametrize("url", PAGINATED)
def test_pages_are_bounded_everywhere(api: Api, client: TestClient, url: str) -> None:
    ada = api.user()
    assert client.get(url, headers=ada.headers).status_code == 200
    for value in HOSTILE_QUERY:
        for name in ("page", "per_page"):
            r = client.get(url, params={name: value}, headers=ada.headers)
            problem(r, 422, "validation_error")
    for name, value in (("page", "100001"), ("per_page", "101")):
        problem(client.get(url, params={name: value}, headers=ada.headers), 422, "validation_error")
    r = client.get(url, params={"page": "100000", "per_page": "100"}, headers=ada.headers)
    assert r.status_code == 200, r.text
    assert r.json()["items"] == []
    assert (r.json()["page"], r.json()["per_page"]) == (100_000, 100)


def test_payout_quote_is_strict_and_bounded(
    api: Api, client: TestClient, db: Database, clock: TestClock
) -> None:
    ada, _, _, _ = creator_with_earnings(api, client, db, clock)
    url = "/api/v1/payouts/quote"
    for value in ("1e35", "1" + "0" * 35, str(MAX_AMOUNT + 1), *HOSTILE_QUERY):
        problem(
            client.get(url, params={"amount": value}, headers=ada.headers), 422, "validation_error"
        )
    for name in ("currency", "paid_in", "kind", "source"):
        r = client.get(url, params={"amount": "5000000", name: "true"}, headers=ada.headers)
        problem(r, 422, "validation_error")
    ok = client.get(url, params={"amount": str(MAX_AMOUNT)}, headers=ada.headers)
    assert ok.status_code == 200, ok.text
    assert ok.json()["debited"]["amount"] == MAX_AMOUNT
    assert count(db, Payout) == 0


# ---------------------------------------------------------------- decimals typed in forms


def test_parse_amount_is_bounded_and_fast() -> None:
    assert parse_amount("9007199254.740991", Currency.USDC) == MAX_AMOUNT
    for text in (
        "1e35",
        "1" + "0" * 40,
        "9007199254.740992",
        "1e999999999",
        "-1e999999999",
        "NaN",
        "sNaN",
        "Infinity",
        "-0.1",
        "1" * 200,
    ):
        started = time.monotonic()
        with pytest.raises(InvalidInput) as exc:
            parse_amount(text, Currency.USDC)
        assert exc.value.code == "invalid_amount"
        assert time.monotonic() - started < 0.5, text


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


def test_ui_money_forms_refuse_huge_or_odd_decimals(
    api: Api,
    client: TestClient,
    db: Database,
    clock: TestClock,
    new_browser: Callable[[], Browser],
) -> None:
    ada, _, _, _ = creator_with_earnings(api, client, db, clock)
    b = new_browser()
    assert b.login(ada.username).status_code == 303
    before, deposits = money(client, ada), count(db, Deposit)
    model = api.published_model(ada)["full_name"]
    payout = form_fields(b.get("/payouts").text, "/payouts")
    deposit = form_fields(b.get("/deposit").text, "/deposit")
    pricing = form_fields(b.get(f"/{model}").text, f"/{model}/pricing")
    for amount in ("1e35", "1" + "0" * 40, "1e999999999", "NaN", "Infinity", "-5", "0x10"):
        started = time.monotonic()
        for action, fields in (
            ("/payouts/quote", payout),
            ("/payouts", payout),
            ("/deposit", deposit),
            (f"/{model}/pricing", pricing),
        ):
            key = "price" if action.endswith("/pricing") else "amount"
            r = submit(b, action, {**fields, key: amount})
            assert r.status_code == 422, (action, amount, r.text)
        assert time.monotonic() - started < 5, amount
    assert money(client, ada) == before
    assert count(db, Payout) == 0
    assert count(db, Deposit) == deposits
    offers = client.get(f"/api/v1/models/{model}/offers").json()
    assert offers["free"] is True


def test_ui_pages_clamp_page_numbers(api: Api, new_browser: Callable[[], Browser]) -> None:
    ada = api.user()
    b = new_browser()
    assert b.login(ada.username).status_code == 303
    for url in ("/earnings", "/models", f"/{ada.username}"):
        for value in (str(BIG), "9" * 5000, "-1", "1e3", "x"):
            r = b.get(url, params={"page": value})
            assert r.status_code == 200, (url, value, r.status_code)
