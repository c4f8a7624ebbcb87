"""Payouts that cost the platform or dodge a debt (issue 9, items 5 and 7), on the real local chain.

- dust: an instant payout of 1 unit was sent on chain with a fee of 0; now every payout starts
  at a per-currency minimum and the instant fee is rounded up (never below one unit);
- debt: a creator who owes the platform after a late refund could withdraw a deposited balance;
  now a payout first repays the debt from the same account, and only the rest is withdrawable.

Every refusal is a problem+json with a stable code and changes nothing; every scenario ends with
a clean ledger check and vaults that hold on chain what the ledger says.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cyxwiz.accounts.service import get_user_by_username
from cyxwiz.billing import payouts as pay
from cyxwiz.billing import treasury
from cyxwiz.billing.models import CreatorDebt, Payout
from cyxwiz.chain import tokens
from cyxwiz.chain.interfaces import Chain
from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.ledger import service as ledger
from cyxwiz.money import Currency
from tests.billing.test_api_money import USDC, buy, release_due
from tests.chain_support import chain_of
from tests.factories import Account, Api
from tests.web.test_api_auth import problem
from tests.web.test_ui import Browser
from tests.web.test_ui_money import form_fields, submit, text


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


def money(client: TestClient, who: Account, currency: str = "USDC") -> dict[str, Any]:
    return dict(client.get("/api/v1/balance", headers=who.headers).json()[currency])


def debt(client: TestClient, who: Account, currency: str = "USDC") -> int:
    r = client.get("/api/v1/creator/earnings", headers=who.headers)
    return int(r.json()["debt"][currency])


def payouts(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Payout)) or 0)


def post_payout(client: TestClient, who: Account, key: str | None = None, **body: Any) -> Any:
    headers = {**who.headers, **({"Idempotency-Key": key} if key else {})}
    return client.post("/api/v1/payouts", json=body, headers=headers)


def paid_model(api: Api, client: TestClient, owner: Account, price: int) -> str:
    """A published model (the factory's valid ONNX file) sold for ``price`` USDC."""
    full = str(api.published_model(owner)["full_name"])
    r = client.put(
        f"/api/v1/models/{full}/offers",
        json={"one_time": {"amount": price, "currency": "USDC"}},
        headers=owner.headers,
    )
    assert r.status_code == 200, r.text
    return full


def creator_with_earnings(
    api: Api, client: TestClient, db: Database, clock: TestClock, price: int = 50 * USDC
) -> tuple[Account, Account, int, dict[str, Any]]:
    """A creator (with a linked wallet) whose sale was released: earnings = price - 20% fee."""
    ada, bob = api.user(), api.user()
    model = paid_model(api, client, ada, price=price)
    api.fund(bob, price)
    sale = buy(client, bob, model)
    assert sale.status_code == 201
    clock.advance(timedelta(days=8))
    assert release_due(db, clock) == 1
    api.link_wallet(ada, tokens.new_keypair())
    return ada, bob, price - price // 5, sale.json()


def run_payouts(db: Database, settings: Settings, chain: Chain, clock: TestClock) -> None:
    for _ in range(2):
        pay.process_payouts(db, settings=settings, chain=chain, now=clock.now())


# ---------------------------------------------------------------- dust (item 5)


def test_dust_payouts_are_refused_and_change_nothing(
    api: Api, client: TestClient, db: Database, clock: TestClock, settings: Settings
) -> None:
    ada, _, earned, _ = creator_with_earnings(api, client, db, clock)
    minimum = 1 * USDC  # the default CYXWIZ_PAYOUT_MINIMUM_USDC
    before = money(client, ada)
    for amount in (1, 2, minimum - 1):
        for kind in ("instant", "scheduled"):
            body = problem(
                post_payout(client, ada, amount=amount, kind=kind), 422, "below_payout_minimum"
            )
            if kind == "instant":
                assert "1.00 USDC" in body["detail"]
        body = problem(
            client.get(f"/api/v1/payouts/quote?amount={amount}", headers=ada.headers),
            422,
            "below_payout_minimum",
        )
    # paid in CYX the minimum applies to what is debited (USDC earnings)
    problem(
        post_payout(client, ada, amount=minimum - 1, paid_in="CYX"), 422, "below_payout_minimum"
    )
    assert money(client, ada) == before
    assert payouts(db) == 0
    assert earned > minimum
    assert settings.payout_minimum_usdc == minimum


def test_instant_fee_is_rounded_up_and_the_quote_agrees_with_the_payout(
    api: Api,
    client: TestClient,
    db: Database,
    clock: TestClock,
    settings: Settings,
    chain: Chain,
) -> None:
    ada, _, earned, _ = creator_with_earnings(api, client, db, clock)
    amount = 1 * USDC + 50  # 1% of it is 10_000.5: the fee is 10_001, never 10_000
    quote = client.get(f"/api/v1/payouts/quote?amount={amount}", headers=ada.headers)
    assert quote.status_code == 200, quote.text
    q = quote.json()
    assert (q["debited"]["amount"], q["fee"]["amount"], q["paid"]["amount"]) == (
        amount,
        10_001,
        amount - 10_001,
    )
    r = post_payout(client, ada, amount=amount)
    assert r.status_code == 201, r.text
    out = r.json()
    assert (out["fee"]["amount"], out["paid"]["amount"]) == (
        q["fee"]["amount"],
        q["paid"]["amount"],
    )
    run_payouts(db, settings, chain, clock)
    done = client.get(f"/api/v1/payouts/{out['id']}", headers=ada.headers).json()
    assert done["status"] == "confirmed"
    assert money(client, ada)["earnings"]["available"] == earned - amount


def test_fee_rule_never_below_one_unit(settings: Settings) -> None:
    settings.payout_minimum_usdc = 1
    settings.payout_weekly_minimum = 0
    for amount, fee in ((2, 1), (99, 1), (100, 1), (101, 2), (10_000, 100), (10_001, 101)):
        q = pay.quote(
            settings=settings,
            currency=Currency.USDC,
            paid_in=Currency.USDC,
            amount=amount,
            instant=True,
        )
        assert q["fee"] == fee, amount
    q = pay.quote(
        settings=settings, currency=Currency.USDC, paid_in=Currency.USDC, amount=1, instant=False
    )
    assert q["fee"] == 0  # scheduled payouts are free
    settings.payout_instant_fee_bps = 0
    q = pay.quote(
        settings=settings, currency=Currency.USDC, paid_in=Currency.USDC, amount=5, instant=True
    )
    assert q["fee"] == 0  # an operator who sets no fee charges none


def test_an_amount_that_pays_nothing_after_the_fee_is_refused(
    api: Api, client: TestClient, db: Database, clock: TestClock, settings: Settings
) -> None:
    ada, _, _, _ = creator_with_earnings(api, client, db, clock)
    settings.payout_minimum_usdc = 1
    before = money(client, ada)
    problem(post_payout(client, ada, amount=1), 422, "invalid_amount")  # fee 1, nothing to send
    problem(
        client.get("/api/v1/payouts/quote?amount=1", headers=ada.headers), 422, "invalid_amount"
    )
    assert money(client, ada) == before
    assert payouts(db) == 0


# ---------------------------------------------------------------- debt (item 7)


def creator_in_debt(
    api: Api, client: TestClient, db: Database, clock: TestClock, settings: Settings, chain: Chain
) -> tuple[Account, int]:
    """A creator who paid out all their earnings, then lost the sale to an admin refund: the
    platform fronted the refund and the creator owes it (a CreatorDebt)."""
    ada, _, earned, sale = creator_with_earnings(api, client, db, clock)
    r = post_payout(client, ada, amount=earned)
    assert r.status_code == 201, r.text
    run_payouts(db, settings, chain, clock)
    root = api.user()
    with db.session() as s:
        get_user_by_username(s, root.username).role = "admin"
    r = client.post(f"/api/v1/licenses/{sale['license']['id']}/refund", headers=root.headers)
    assert r.status_code == 200, r.text
    assert debt(client, ada) == earned
    return ada, earned


def test_a_creator_in_debt_cannot_withdraw_a_deposited_balance(
    api: Api,
    client: TestClient,
    db: Database,
    clock: TestClock,
    settings: Settings,
    chain: Chain,
) -> None:
    ada, owed = creator_in_debt(api, client, db, clock, settings, chain)
    api.fund(ada, 100 * USDC)
    before, made = money(client, ada), payouts(db)
    # The attack: withdraw the whole deposited balance while owing the platform.
    body = problem(
        post_payout(client, ada, amount=100 * USDC, source="balance"), 402, "debt_outstanding"
    )
    assert "40.00 USDC" in body["detail"]
    assert (body["owed"], body["withdrawable"]) == (owed, 100 * USDC - owed)
    problem(
        post_payout(client, ada, amount=100 * USDC - owed + 1, source="balance"),
        402,
        "debt_outstanding",
    )
    assert money(client, ada) == before
    assert debt(client, ada) == owed
    assert payouts(db) == made

    # The quote says why less is withdrawable.
    q = client.get(
        f"/api/v1/payouts/quote?amount={60 * USDC}&source=balance", headers=ada.headers
    ).json()
    assert q["debt"]["amount"] == owed
    assert q["available"]["amount"] == 100 * USDC
    assert q["withdrawable"]["amount"] == 100 * USDC - owed
    assert q["debt_repaid"]["amount"] == owed

    # What is left after the debt can be paid out: the payout repays the debt first.
    r = post_payout(client, ada, amount=100 * USDC - owed, source="balance", key="rest")
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["debt_repaid"]["amount"] == owed
    assert debt(client, ada) == 0
    assert money(client, ada)["balance"]["available"] == 0
    with db.session() as s:
        assert ledger.balance_of_code(s, "platform:receivables:USDC", Currency.USDC).posted == 0
        remaining = s.scalar(select(func.sum(CreatorDebt.remaining)))
    assert remaining == 0
    again = post_payout(client, ada, amount=100 * USDC - owed, source="balance", key="rest")
    assert again.status_code == 200
    assert again.json()["debt_repaid"]["amount"] == owed
    run_payouts(db, settings, chain, clock)
    assert client.get(f"/api/v1/payouts/{out['id']}", headers=ada.headers).json()["status"] == (
        "confirmed"
    )


def test_a_failed_payout_keeps_the_debt_repaid(
    api: Api,
    client: TestClient,
    db: Database,
    clock: TestClock,
    settings: Settings,
    chain: Chain,
) -> None:
    """The repayment is the creator's debt settled, not part of the transfer: a payout the chain
    refuses gives back what was to leave, and the debt stays repaid."""
    from tests.billing.test_settlement import freeze

    ada, owed = creator_in_debt(api, client, db, clock, settings, chain)
    api.fund(ada, 50 * USDC)
    r = post_payout(client, ada, amount=10 * USDC, source="balance")
    assert r.status_code == 201, r.text
    freeze(chain, chain.vault_of(Currency.USDC))
    run_payouts(db, settings, chain, clock)
    done = client.get(f"/api/v1/payouts/{r.json()['id']}", headers=ada.headers).json()
    assert done["status"] == "failed"
    assert debt(client, ada) == 0
    assert money(client, ada)["balance"]["available"] == 50 * USDC - owed


def test_debt_in_another_currency_blocks_payouts(
    api: Api,
    client: TestClient,
    db: Database,
    clock: TestClock,
    settings: Settings,
    chain: Chain,
) -> None:
    ada, owed = creator_in_debt(api, client, db, clock, settings, chain)
    api.fund(ada, 100 * USDC, "CYX")
    before, made = money(client, ada, "CYX"), payouts(db)
    body = problem(
        post_payout(client, ada, amount=10 * USDC, currency="CYX", source="balance"),
        402,
        "debt_outstanding",
    )
    assert "USDC" in body["detail"]
    assert money(client, ada, "CYX") == before
    assert debt(client, ada) == owed
    assert payouts(db) == made


def unfreeze(chain: Chain, token_account: str) -> None:
    from solders.account import Account as SolAccount
    from solders.pubkey import Pubkey

    svm = chain._svm  # type: ignore[attr-defined]
    key = Pubkey.from_string(token_account)
    acc = svm.get_account(key)
    data = bytearray(bytes(acc.data))
    data[108] = 1  # AccountState::Initialized
    svm.set_account(
        key, SolAccount(acc.lamports, bytes(data), acc.owner, acc.executable, acc.rent_epoch)
    )


def test_earnings_beside_a_debt_repay_it_first_also_in_the_weekly_run(
    api: Api,
    client: TestClient,
    db: Database,
    clock: TestClock,
    settings: Settings,
    chain: Chain,
) -> None:
    """Earnings and a debt side by side: a payout was pending when an admin refunded a sale
    (so the refund found nothing available and the platform fronted it), then the chain
    refused the payout and gave the earnings back."""
    from tests.billing.test_settlement import freeze

    ada, bob = api.user(), api.user()
    first = paid_model(api, client, ada, price=50 * USDC)
    second = paid_model(api, client, ada, price=100 * USDC)
    api.fund(bob, 150 * USDC)
    sale = buy(client, bob, first, key="a").json()
    assert buy(client, bob, second, key="b").status_code == 201
    clock.advance(timedelta(days=8))
    assert release_due(db, clock) == 2
    api.link_wallet(ada, tokens.new_keypair())
    r = post_payout(client, ada, amount=120 * USDC)
    assert r.status_code == 201, r.text
    root = api.user()
    with db.session() as s:
        get_user_by_username(s, root.username).role = "admin"
    refund = client.post(f"/api/v1/licenses/{sale['license']['id']}/refund", headers=root.headers)
    assert refund.status_code == 200
    vault = chain.vault_of(Currency.USDC)
    freeze(chain, vault)
    run_payouts(db, settings, chain, clock)
    unfreeze(chain, vault)
    assert money(client, ada)["earnings"]["available"] == 120 * USDC
    assert debt(client, ada) == 40 * USDC

    before = money(client, ada)
    problem(post_payout(client, ada, amount=120 * USDC), 402, "debt_outstanding")
    assert money(client, ada) == before

    r = client.put("/api/v1/payouts/settings", json={"weekly": True}, headers=ada.headers)
    assert r.status_code == 200
    assert pay.schedule_weekly(db, settings=settings, now=clock.now()) == 1
    with db.session() as s:
        [row] = s.scalars(select(Payout).where(Payout.kind == "scheduled")).all()
        assert (row.amount, row.debt_repaid) == (80 * USDC, 40 * USDC)
    assert debt(client, ada) == 0
    earnings = money(client, ada)["earnings"]
    assert (earnings["available"], earnings["pending"]) == (0, 80 * USDC)
    run_payouts(db, settings, chain, clock)
    assert money(client, ada)["earnings"]["posted"] == 0


def test_the_web_withdraw_form_agrees_with_the_api(
    api: Api,
    client: TestClient,
    db: Database,
    clock: TestClock,
    settings: Settings,
    chain: Chain,
    app: FastAPI,
) -> None:
    ada, owed = creator_in_debt(api, client, db, clock, settings, chain)
    api.fund(ada, 100 * USDC)
    with TestClient(app, raise_server_exceptions=False) as c:
        b = Browser(c)
        assert b.login(ada.username).status_code == 303
        page = b.get("/payouts")
        assert page.status_code == 200
        assert "You owe the platform 40.00 USDC" in text(page.text)
        assert "at least 1.00 USDC, 4.00 CYX" in text(page.text)
        fields = {**form_fields(page.text, "/payouts"), "source": "balance"}
        quote = submit(b, "/payouts/quote", {**fields, "amount": "60"})
        assert quote.status_code == 200, quote.text
        assert "Debt repaid first 40.00 USDC Withdrawable 60.00 USDC" in text(quote.text)
        made = payouts(db)
        for amount, status, message in (
            ("0.5", 422, "payouts start at 1.00 USDC"),
            ("0.000001", 422, "payouts start at 1.00 USDC"),
            ("100", 402, "you owe the platform 40.00 USDC"),
        ):
            for action in ("/payouts/quote", "/payouts"):
                if action == "/payouts/quote" and status == 402:
                    continue  # a quote shows the debt instead of refusing
                r = submit(b, action, {**fields, "amount": amount})
                assert r.status_code == status, (action, amount, r.text)
                assert message in text(r.text), (action, amount)
        assert payouts(db) == made
        assert debt(client, ada) == owed
        r = submit(b, "/payouts", {**fields, "amount": "60"})
        assert r.status_code == 303, r.text
    assert debt(client, ada) == 0
    assert money(client, ada)["balance"]["available"] == 0
