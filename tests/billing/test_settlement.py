"""Deposits (Solana Pay) and payouts on the real local chain (LiteSVM), through the API.

Every scenario ends with a clean ledger check *and* a clean vault reconciliation: what each
vault holds on chain equals what the ledger says it holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from solders.account import Account as SolAccount
from solders.pubkey import Pubkey

from cyxwiz.billing import payouts as pay
from cyxwiz.billing import treasury
from cyxwiz.billing.deposits import watch_once
from cyxwiz.chain import tokens
from cyxwiz.chain.interfaces import Chain
from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.ledger import service as ledger
from cyxwiz.money import Currency
from tests.billing.test_api_money import USDC, buy, paid_model, release_due
from tests.chain_support import chain_of, funded_wallet
from tests.chain_support import pay as wallet_pay
from tests.factories import Account, Api
from tests.web.test_api_auth import problem


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


def balance(client: TestClient, who: Account, currency: str = "USDC") -> dict[str, Any]:
    return dict(client.get("/api/v1/balance", headers=who.headers).json()[currency]["balance"])


def request(
    client: TestClient, who: Account, amount: int, currency: str = "USDC", key: str | None = None
) -> Any:
    headers = {**who.headers, **({"Idempotency-Key": key} if key else {})}
    return client.post(
        "/api/v1/deposits", json={"amount": amount, "currency": currency}, headers=headers
    )


def scan(client: TestClient, who: Account, dep: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/api/v1/deposits/{dep['id']}/scan", headers=who.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


# ---------------------------------------------------------------- deposits


def test_deposit_through_solana_pay_is_credited_once(
    api: Api, client: TestClient, chain: Chain, db: Database, settings: Settings, clock: TestClock
) -> None:
    ada = api.user()
    r = request(client, ada, 25 * USDC)
    assert r.status_code == 201, r.text
    dep = r.json()
    assert dep["status"] == "open"
    assert dep["url"].startswith(
        f"solana:{chain.treasury}?amount=25&spl-token={chain.mint_of(Currency.USDC)}"
    )
    assert f"reference={dep['reference']}" in dep["url"]
    qr = client.get(dep["qr"], headers=ada.headers)
    assert qr.status_code == 200
    assert qr.content.startswith(b"\x89PNG")
    wallet = funded_wallet(chain, Currency.USDC, 30 * USDC)
    sig = wallet_pay(chain, wallet, dep["url"])
    after = scan(client, ada, dep)
    assert after["status"] == "paid"
    assert after["credited"]["amount"] == 25 * USDC
    assert after["transactions"] == [
        {
            "signature": sig,
            "status": "credited",
            "slot": after["transactions"][0]["slot"],
            "payer": str(wallet.pubkey()),
            "amount": 25 * USDC,
            "currency": "USDC",
            "display": "25.00 USDC",
        }
    ]
    # The watcher, a rescan and a second watcher pass never credit the signature again.
    assert scan(client, ada, dep)["credited"]["amount"] == 25 * USDC
    assert watch_once(db, settings=settings, chain=chain, now=clock.now()) == 0
    assert balance(client, ada)["available"] == 25 * USDC
    assert (
        chain.token_balance(chain.token_account_of(str(wallet.pubkey()), Currency.USDC)) == 5 * USDC
    )


def test_watcher_credits_without_being_asked(
    api: Api, client: TestClient, chain: Chain, db: Database, settings: Settings, clock: TestClock
) -> None:
    ada = api.user()
    dep = request(client, ada, 7 * USDC, currency="CYX").json()
    wallet_pay(chain, funded_wallet(chain, Currency.CYX, 7 * USDC), dep["url"])
    assert balance(client, ada, "CYX")["available"] == 0
    assert watch_once(db, settings=settings, chain=chain, now=clock.now()) == 1
    assert balance(client, ada, "CYX")["available"] == 7 * USDC


def test_under_and_over_payment(api: Api, client: TestClient, chain: Chain) -> None:
    ada = api.user()
    dep = request(client, ada, 10 * USDC).json()
    wallet = funded_wallet(chain, Currency.USDC, 100 * USDC)
    wallet_pay(chain, wallet, dep["url"], amount=4 * USDC)
    partial = scan(client, ada, dep)
    assert partial["status"] == "partial"
    assert partial["credited"]["amount"] == 4 * USDC
    assert "amount=6&" in partial["url"]  # the request now asks for what is missing
    wallet_pay(chain, wallet, partial["url"], amount=9 * USDC)  # over-pays the rest
    paid = scan(client, ada, dep)
    assert paid["status"] == "paid"
    assert paid["credited"]["amount"] == 13 * USDC
    assert balance(client, ada)["available"] == 13 * USDC


def test_wrong_mint_or_recipient_credits_nothing_and_nothing_is_lost(
    api: Api, client: TestClient, chain: Chain, db: Database
) -> None:
    ada = api.user()
    dep = request(client, ada, 10 * USDC).json()
    wallet = funded_wallet(chain, Currency.CYX, 10 * USDC)
    # CYX sent with the USDC request's reference: it lands in the CYX vault, not the user's balance.
    wallet_pay(chain, wallet, dep["url"], mint=chain.mint_of(Currency.CYX))
    stranger = tokens.new_keypair().pubkey()
    usdc_wallet = funded_wallet(chain, Currency.USDC, 10 * USDC)
    # USDC with the reference but to someone else's account: nothing reached us.
    wallet_pay(chain, usdc_wallet, dep["url"], recipient=str(stranger))
    after = scan(client, ada, dep)
    assert after["status"] == "open"
    assert after["credited"]["amount"] == 0
    assert sorted(t["status"] for t in after["transactions"]) == ["ignored", "unclaimed"]
    assert balance(client, ada)["available"] == 0
    assert balance(client, ada, "CYX")["available"] == 0
    with db.session() as s:
        unclaimed = ledger.balance_of_code(s, "platform:unclaimed:CYX", Currency.CYX)
    assert unclaimed.posted == 10 * USDC  # booked for support to return; the vault still reconciles


def test_expired_request_is_closed_but_a_late_payment_is_still_credited(
    api: Api, client: TestClient, chain: Chain, clock: TestClock, settings: Settings
) -> None:
    ada = api.user()
    dep = request(client, ada, 5 * USDC).json()
    clock.advance(timedelta(seconds=settings.deposit_ttl_seconds + 1))
    assert scan(client, ada, dep)["status"] == "expired"
    wallet_pay(chain, funded_wallet(chain, Currency.USDC, 5 * USDC), dep["url"])
    late = scan(client, ada, dep)
    assert late["status"] == "paid"
    assert balance(client, ada)["available"] == 5 * USDC


def test_deposit_requests_are_idempotent_and_validated(api: Api, client: TestClient) -> None:
    ada, bob = api.user(), api.user()
    first = request(client, ada, 5 * USDC, key="dep-1")
    again = request(client, ada, 5 * USDC, key="dep-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    problem(request(client, ada, 6 * USDC, key="dep-1"), 409, "idempotency_key_reused")
    problem(request(client, ada, 0), 422, "validation_error")
    problem(request(client, ada, 5, currency="SOL"), 422, "validation_error")
    problem(
        client.get(f"/api/v1/deposits/{first.json()['id']}", headers=bob.headers),
        404,
        "deposit_not_found",
    )
    problem(client.post("/api/v1/deposits", json={"amount": 5}), 401, "not_authenticated")
    listing = client.get("/api/v1/deposits", headers=ada.headers).json()
    assert listing["total"] == 1
    assert listing["items"][0]["id"] == first.json()["id"]


# ---------------------------------------------------------------- payouts


def creator_with_earnings(
    api: Api, client: TestClient, db: Database, clock: TestClock, price: int = 50 * USDC
) -> tuple[Account, int]:
    """A creator whose sale (price) was released: earnings = price - 20% fee."""
    ada, bob = api.user(), api.user()
    model = paid_model(api, client, ada, price=price)
    api.fund(bob, price)
    assert buy(client, bob, model).status_code == 201
    clock.advance(timedelta(days=8))
    assert release_due(db, clock) == 1
    return ada, price - price // 5


def run_payouts(db: Database, settings: Settings, chain: Chain, clock: TestClock) -> dict[str, int]:
    return pay.process_payouts(db, settings=settings, chain=chain, now=clock.now())


def test_instant_payout_lands_in_the_linked_wallet(
    api: Api, client: TestClient, chain: Chain, db: Database, settings: Settings, clock: TestClock
) -> None:
    ada, earned = creator_with_earnings(api, client, db, clock)
    wallet = tokens.new_keypair()
    api.link_wallet(ada, wallet)
    r = client.post(
        "/api/v1/payouts", json={"amount": earned}, headers={**ada.headers, "Idempotency-Key": "p1"}
    )
    assert r.status_code == 201, r.text
    out = r.json()
    fee = earned * settings.payout_instant_fee_bps // 10_000
    assert (
        out["status"],
        out["debited"]["amount"],
        out["fee"]["amount"],
        out["paid"]["amount"],
    ) == ("pending", earned, fee, earned - fee)
    earnings = client.get("/api/v1/balance", headers=ada.headers).json()["USDC"]["earnings"]
    assert earnings["available"] == 0
    assert earnings["pending"] == earned
    again = client.post(
        "/api/v1/payouts", json={"amount": earned}, headers={**ada.headers, "Idempotency-Key": "p1"}
    )
    assert again.status_code == 200
    assert again.json()["id"] == out["id"]
    # The local chain finalizes at once: one pass signs, records, sends and confirms.
    assert run_payouts(db, settings, chain, clock) == {"sent": 0, "confirmed": 1, "failed": 0}
    done = client.get(f"/api/v1/payouts/{out['id']}", headers=ada.headers).json()
    assert done["status"] == "confirmed"
    assert done["signature"]
    assert (
        chain.token_balance(chain.token_account_of(str(wallet.pubkey()), Currency.USDC))
        == earned - fee
    )
    tx = chain.transaction(done["signature"])
    assert tx is not None
    assert any(m.startswith("cyxwiz:payout:") for m in tx.memos)
    earnings = client.get("/api/v1/balance", headers=ada.headers).json()["USDC"]["earnings"]
    assert (earnings["posted"], earnings["pending"]) == (0, 0)
    with db.session() as s:
        assert ledger.balance_of_code(s, "platform:payout_fees:USDC", Currency.USDC).posted == fee
    assert run_payouts(db, settings, chain, clock) == {
        "sent": 0,
        "confirmed": 0,
        "failed": 0,
    }


def test_payout_refusals_change_nothing(
    api: Api, client: TestClient, db: Database, clock: TestClock, chain: Chain
) -> None:
    ada, earned = creator_with_earnings(api, client, db, clock)
    mine, other = tokens.new_keypair(), tokens.new_keypair()
    problem(
        client.post("/api/v1/payouts", json={"amount": earned}, headers=ada.headers),
        409,
        "wallet_not_linked",
    )
    api.link_wallet(ada, mine)
    problem(
        client.post(
            "/api/v1/payouts",
            json={"amount": earned, "wallet": str(other.pubkey())},
            headers=ada.headers,
        ),
        409,
        "wallet_not_linked",
    )
    problem(
        client.post("/api/v1/payouts", json={"amount": earned + 1}, headers=ada.headers),
        402,
        "insufficient_funds",
    )
    problem(
        client.post(
            "/api/v1/payouts", json={"amount": 1, "kind": "scheduled"}, headers=ada.headers
        ),
        422,
        "below_payout_minimum",
    )
    problem(
        client.post(
            "/api/v1/payouts",
            json={"amount": 5, "source": "balance", "paid_in": "CYX"},
            headers=ada.headers,
        ),
        422,
        "invalid_currency",
    )
    assert (
        client.get("/api/v1/balance", headers=ada.headers).json()["USDC"]["earnings"]["available"]
        == earned
    )
    assert client.get("/api/v1/payouts", headers=ada.headers).json()["total"] == 0


def freeze(chain: Chain, token_account: str) -> None:
    """The cluster refuses transfers out of a frozen token account (AccountState::Frozen)."""
    svm = chain._svm  # type: ignore[attr-defined]
    key = Pubkey.from_string(token_account)
    acc = svm.get_account(key)
    data = bytearray(bytes(acc.data))
    data[108] = 2
    svm.set_account(
        key, SolAccount(acc.lamports, bytes(data), acc.owner, acc.executable, acc.rent_epoch)
    )


def test_a_payout_the_chain_refuses_is_reversed(
    api: Api, client: TestClient, chain: Chain, db: Database, settings: Settings, clock: TestClock
) -> None:
    ada, earned = creator_with_earnings(api, client, db, clock)
    api.link_wallet(ada, tokens.new_keypair())
    out = client.post("/api/v1/payouts", json={"amount": earned}, headers=ada.headers).json()
    vault = chain.vault_of(Currency.USDC)
    held = chain.token_balance(vault)
    freeze(chain, vault)
    assert run_payouts(db, settings, chain, clock)["failed"] == 1
    done = client.get(f"/api/v1/payouts/{out['id']}", headers=ada.headers).json()
    assert done["status"] == "failed"
    assert "frozen" in done["error"]
    earnings = client.get("/api/v1/balance", headers=ada.headers).json()["USDC"]["earnings"]
    assert (earnings["available"], earnings["pending"]) == (earned, 0)  # all of it back
    assert chain.token_balance(vault) == held


def test_creator_paid_in_cyx_gets_the_bonus_out_of_the_platform_fee(
    api: Api, client: TestClient, chain: Chain, db: Database, settings: Settings, clock: TestClock
) -> None:
    ada, earned = creator_with_earnings(api, client, db, clock, price=100 * USDC)
    wallet = tokens.new_keypair()
    api.link_wallet(ada, wallet)
    body = {"amount": earned, "paid_in": "CYX", "kind": "scheduled"}
    problem(
        client.post("/api/v1/payouts", json=body, headers=ada.headers), 503, "payout_unavailable"
    )
    with db.session() as s:
        treasury.record_float(s, chain=chain, currency=Currency.CYX, mint_amount=10_000 * USDC)
    r = client.post("/api/v1/payouts", json=body, headers=ada.headers)
    assert r.status_code == 201, r.text
    # 80 USDC at 0.25 USDC/CYX = 320 CYX, +5% = 336 CYX; scheduled payouts pay no fee.
    assert (r.json()["paid"]["amount"], r.json()["bonus"]["amount"], r.json()["fee"]["amount"]) == (
        336 * USDC,
        16 * USDC,
        0,
    )
    run_payouts(db, settings, chain, clock)
    run_payouts(db, settings, chain, clock)
    assert (
        chain.token_balance(chain.token_account_of(str(wallet.pubkey()), Currency.CYX))
        == 336 * USDC
    )
    with db.session() as s:
        assert (
            ledger.balance_of_code(s, "platform:revenue:USDC", Currency.USDC).posted
            == 20 * USDC - 4 * USDC
        )
        assert (
            ledger.balance_of_code(s, "platform:treasury:USDC", Currency.USDC).posted == 84 * USDC
        )
        assert (
            ledger.balance_of_code(s, "platform:treasury:CYX", Currency.CYX).posted
            == (10_000 - 336) * USDC
        )


def test_reconciliation_reports_tokens_the_ledger_does_not_know(
    client: TestClient, chain: Chain, db: Database
) -> None:
    chain.mint_to(owner=chain.treasury, currency=Currency.USDC, amount=3 * USDC)  # unbooked
    with db.session() as s:
        (usdc,) = [v for v in treasury.reconcile(s, chain=chain) if v.currency == "USDC"]
    assert not usdc.ok
    assert "difference +3.00 USDC" in (usdc.problem() or "")
    with db.session() as s:  # booking it as platform funds makes the books whole again
        treasury.record_float(
            s,
            chain=chain,
            currency=Currency.USDC,
            signature=chain.signatures_for(chain.vault_of(Currency.USDC), limit=1)[0].signature,
        )
