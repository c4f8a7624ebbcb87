"""Money through the API: offers, funding by deposits (test tokens from the dev chain's faucet),
purchase into escrow, licensed downloads, refunds, release with tiered fees and contributor
splits. Every scenario ends with a clean ledger and the vaults reconciled with the chain."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from cyxwiz.accounts.service import get_user_by_username
from cyxwiz.billing import flows, treasury
from cyxwiz.chain import tokens
from cyxwiz.clock import TestClock
from cyxwiz.db import Database
from cyxwiz.ledger import service as ledger
from cyxwiz.money import Currency
from tests.chain_support import chain_of
from tests.chain_support import pay as wallet_pay
from tests.factories import Account, Api, onnx_with_payload
from tests.web.test_api_auth import problem

USDC = 1_000_000  # one USDC in minor units
WEIGHTS = onnx_with_payload(b"\x00\x01secret-weights" * 100)  # a valid model file


@pytest.fixture(autouse=True)
def ledger_stays_clean(db: Database, client: TestClient) -> Iterator[None]:
    yield
    with db.session() as s:
        report = ledger.check(s)
        assert report.ok, report.problems
        vaults = treasury.reconcile(s, chain=chain_of(client))
    assert all(v.ok for v in vaults), [v.problem() for v in vaults]


def fund(client: TestClient, who: Account, amount: int, currency: str = "USDC") -> None:
    """Test tokens minted to a fresh wallet on the dev chain, deposited and credited."""
    Api(client).fund(who, amount, currency)


def balance(client: TestClient, who: Account, currency: str = "USDC") -> dict[str, Any]:
    return dict(client.get("/api/v1/balance", headers=who.headers).json()[currency])


def paid_model(
    api: Api, client: TestClient, owner: Account, price: int = 49 * USDC, **fields: Any
) -> str:
    m = api.published_model(owner, files={"model.onnx": WEIGHTS}, **fields)
    r = client.put(
        f"/api/v1/models/{m['full_name']}/offers",
        json={"one_time": {"amount": price, "currency": "USDC"}},
        headers=owner.headers,
    )
    assert r.status_code == 200, r.text
    return str(m["full_name"])


def buy(client: TestClient, who: Account, model: str, key: str = "k1", **body: Any) -> Any:
    return client.post(
        f"/api/v1/models/{model}/purchase",
        json=body or None,
        headers={**who.headers, "Idempotency-Key": key},
    )


def release_due(db: Database, clock: TestClock) -> int:
    with db.session() as s:
        return flows.release_due(s, now=clock.now())


def test_offers_are_owner_only_and_validated(api: Api, client: TestClient) -> None:
    ada, bob = api.user(), api.user()
    m = api.published_model(ada)["full_name"]
    url = f"/api/v1/models/{m}/offers"
    assert client.get(url).json() == {"free": True, "one_time": None, "one_time_cyx": None}
    problem(
        client.put(url, json={"one_time": {"amount": 5, "currency": "USDC"}}, headers=bob.headers),
        403,
        "forbidden",
    )
    problem(client.put(url, json={"one_time": {"amount": 5}}), 401, "not_authenticated")
    problem(
        client.put(url, json={"one_time": {"amount": 0}}, headers=ada.headers),
        422,
        "validation_error",
    )
    problem(
        client.put(url, json={"one_time": {"amount": 1.5}}, headers=ada.headers),
        422,
        "validation_error",
    )
    problem(
        client.put(url, json={"one_time": {"amount": 5, "currency": "CYX"}}, headers=ada.headers),
        422,
        "invalid_offer",
    )
    problem(
        client.put(url, json={"subscription": {}}, headers=ada.headers), 422, "validation_error"
    )
    r = client.put(
        url, json={"one_time": {"amount": 49 * USDC, "currency": "USDC"}}, headers=ada.headers
    )
    assert r.status_code == 200
    got = client.get(url).json()
    assert got["one_time"] == {"amount": 49_000_000, "currency": "USDC", "display": "49.00 USDC"}
    # 15% off, at the default 0.25 USDC per CYX: 41.65 USDC -> 166.6 CYX
    assert got["one_time_cyx"]["amount"] == 166_600_000


def test_chain_faucet_then_deposit_and_balance(api: Api, client: TestClient, settings) -> None:
    """Test tokens come from the dev chain's faucet into a wallet, which pays a deposit
    request; only the deposit credits the balance, once, however often it is retried."""
    ada = api.user()
    chain = chain_of(client)
    wallet = tokens.new_keypair()
    address = str(wallet.pubkey())
    r = client.post("/api/v1/dev/faucet", json={"amount": 1}, headers=ada.headers)
    assert r.status_code == 404  # the ledger-only faucet is gone
    problem(  # no wallet named and none linked
        client.post("/api/v1/chain/faucet", json={"amount": 1}, headers=ada.headers),
        409,
        "wallet_not_linked",
    )
    r = client.post(
        "/api/v1/chain/faucet",
        json={"wallet": address, "amount": 100 * USDC, "currency": "USDC"},
        headers=ada.headers,
    )
    assert r.status_code == 201, r.text
    assert r.json()["wallet_balance"]["display"] == "100.00 USDC"
    assert balance(client, ada)["balance"]["available"] == 0  # the ledger is not credited
    api.link_wallet(ada, wallet)  # the faucet's default wallet: the linked one
    r = client.post(
        "/api/v1/chain/faucet", json={"amount": 5 * USDC, "currency": "CYX"}, headers=ada.headers
    )
    assert r.status_code == 201, r.text
    assert r.json()["wallet"] == address
    for currency, amount in (("USDC", 100 * USDC), ("CYX", 5 * USDC)):
        headers = {**ada.headers, "Idempotency-Key": f"dep-{currency}"}
        dep = client.post(
            "/api/v1/deposits", json={"amount": amount, "currency": currency}, headers=headers
        )
        assert dep.status_code == 201, dep.text
        wallet_pay(chain, wallet, dep.json()["url"])
        for _ in range(2):  # a retried request and a second scan credit nothing more
            again = client.post(
                "/api/v1/deposits", json={"amount": amount, "currency": currency}, headers=headers
            )
            assert again.status_code == 200, again.text
            scanned = client.post(f"/api/v1/deposits/{dep.json()['id']}/scan", headers=ada.headers)
            assert scanned.json()["credited"]["amount"] == amount, scanned.text
    assert balance(client, ada)["balance"]["available"] == 100 * USDC
    assert balance(client, ada, "CYX")["balance"]["available"] == 5 * USDC
    problem(
        client.post(
            "/api/v1/chain/faucet",
            json={"wallet": address, "amount": settings.faucet_max_amount + 1},
            headers=ada.headers,
        ),
        422,
        "invalid_amount",
    )
    for body in ({"amount": -1}, {"amount": 1, "currency": "EUR"}):
        problem(
            client.post("/api/v1/chain/faucet", json=body, headers=ada.headers),
            422,
            "validation_error",
        )
    problem(client.get("/api/v1/balance"), 401, "not_authenticated")
    settings.env = "production"
    problem(
        client.post("/api/v1/chain/faucet", json={"amount": 1}, headers=ada.headers),
        403,
        "faucet_disabled",
    )


def test_purchase_escrow_download_and_idempotent_retry(api: Api, client: TestClient) -> None:
    ada, bob, eve = api.user(), api.user(), api.user()
    m = paid_model(api, client, ada)
    fund(client, bob, 100 * USDC)
    file_url = f"/api/v1/models/{m}/versions/main/files/model.onnx"
    problem(client.get(file_url, headers=bob.headers), 403, "license_required")
    problem(client.get(file_url), 403, "license_required")
    r = buy(client, bob, m)
    assert r.status_code == 201, r.text
    p = r.json()
    assert p["status"] == "escrow"
    assert p["price"] == {"amount": 49 * USDC, "currency": "USDC", "display": "49.00 USDC"}
    assert p["platform_fee_bps"] == 2000
    lic = p["license"]
    assert lic["status"] == "active"
    assert lic["refundable"] is True
    assert lic["key"].startswith("cxwl1.")
    bal = balance(client, bob)["balance"]
    assert (bal["posted"], bal["pending"], bal["available"]) == (100 * USDC, 49 * USDC, 51 * USDC)
    # retry: same purchase, no second charge
    again = buy(client, bob, m)
    assert again.status_code == 200
    assert again.json()["id"] == p["id"]
    assert balance(client, bob)["balance"]["available"] == 51 * USDC
    # the same key for a different purchase is refused
    other = paid_model(api, client, ada)
    problem(buy(client, bob, other), 409, "idempotency_key_reused")
    # a second purchase with a new key is refused: already licensed
    problem(buy(client, bob, m, key="k2"), 409, "already_licensed")
    # licensed download: by token, and by license key without an account
    assert client.get(file_url, headers=bob.headers).content == WEIGHTS
    assert client.get(file_url, headers={"X-License-Key": lic["key"]}).content == WEIGHTS
    problem(client.get(file_url, headers=eve.headers), 403, "license_required")
    problem(
        client.get(file_url, headers={"X-License-Key": lic["key"][:-4] + "AAAA"}),
        401,
        "invalid_license_key",
    )
    # HF-style route honours the license too
    assert client.get(f"/{m}/resolve/main/model.onnx", headers=bob.headers).content == WEIGHTS
    licenses = client.get("/api/v1/licenses", headers=bob.headers).json()
    assert [(x["model"], x["downloads"]) for x in licenses] == [(m, 3)]
    verified = client.post("/api/v1/licenses/verify", json={"key": lic["key"]}).json()
    assert verified["valid"] is True
    assert verified["model"] == m
    assert verified["buyer"] == bob.username


def test_purchase_refusals_move_nothing(api: Api, client: TestClient) -> None:
    ada, bob = api.user(), api.user()
    m = paid_model(api, client, ada)
    free = api.published_model(ada)["full_name"]
    fund(client, bob, 10 * USDC)
    fund(client, ada, 100 * USDC)
    problem(buy(client, bob, m), 402, "insufficient_funds")
    problem(buy(client, ada, m), 409, "own_model")
    problem(buy(client, bob, free, key="k3"), 409, "not_for_sale")
    draft = api.model(ada)["full_name"]
    problem(buy(client, bob, draft, key="k4"), 404, "model_not_found")
    problem(buy(client, bob, "nobody/nothing", key="k5"), 404, "model_not_found")
    problem(buy(client, bob, m, key="k6", currency="EUR"), 422, "validation_error")
    problem(client.post(f"/api/v1/models/{m}/purchase"), 401, "not_authenticated")
    assert balance(client, bob)["balance"] == {
        **balance(client, bob)["balance"],
        "posted": 10 * USDC,
        "pending": 0,
    }
    assert client.get("/api/v1/licenses", headers=bob.headers).json() == []
    # the insufficient-funds attempt left no purchase behind: a later top-up lets the same key buy
    fund(client, bob, 100 * USDC)
    assert buy(client, bob, m).status_code == 201


def test_refund_within_window_then_download_refused(
    api: Api, client: TestClient, clock: TestClock
) -> None:
    ada, bob = api.user(), api.user()
    m = paid_model(api, client, ada)
    fund(client, bob, 100 * USDC)
    lic = buy(client, bob, m).json()["license"]
    clock.advance(timedelta(days=6, hours=23))
    r = client.post(f"/api/v1/licenses/{lic['id']}/refund", headers=bob.headers)
    assert r.status_code == 200
    assert r.json()["status"] == "refunded"
    assert r.json()["key"] is None
    assert balance(client, bob)["balance"]["available"] == 100 * USDC
    assert balance(client, bob)["balance"]["pending"] == 0
    problem(
        client.get(f"/api/v1/models/{m}/versions/main/files/model.onnx", headers=bob.headers),
        403,
        "license_required",
    )
    problem(
        client.get(
            f"/api/v1/models/{m}/versions/main/files/model.onnx",
            headers={"X-License-Key": lic["key"]},
        ),
        403,
        "license_required",
    )
    assert client.post("/api/v1/licenses/verify", json={"key": lic["key"]}).json()["valid"] is False
    # idempotent: a second refund changes nothing
    assert (
        client.post(f"/api/v1/licenses/{lic['id']}/refund", headers=bob.headers).json()["status"]
        == "refunded"
    )
    assert balance(client, bob)["balance"]["available"] == 100 * USDC
    # the buyer may buy again
    assert buy(client, bob, m, key="again").status_code == 201


def test_refund_window_closed_and_other_users(
    api: Api, client: TestClient, clock: TestClock
) -> None:
    ada, bob, eve = api.user(), api.user(), api.user()
    m = paid_model(api, client, ada)
    fund(client, bob, 100 * USDC)
    lic = buy(client, bob, m).json()["license"]
    problem(
        client.post(f"/api/v1/licenses/{lic['id']}/refund", headers=eve.headers),
        404,
        "license_not_found",
    )
    problem(
        client.post(f"/api/v1/licenses/{lic['id']}/refund", headers=ada.headers),
        404,
        "license_not_found",
    )
    clock.advance(timedelta(days=7))
    problem(
        client.post(f"/api/v1/licenses/{lic['id']}/refund", headers=bob.headers),
        409,
        "refund_window_closed",
    )
    assert (
        client.get(f"/api/v1/licenses/{lic['id']}", headers=bob.headers).json()["status"]
        == "active"
    )


def test_release_pays_fee_and_contributor_splits_exactly(
    api: Api, client: TestClient, db: Database, clock: TestClock
) -> None:
    ada, cy, bob = api.user(), api.user(), api.user()
    m = paid_model(
        api, client, ada, price=10_000_001
    )  # odd amount: rounding must still sum exactly
    client.patch(
        f"/api/v1/models/{m}",
        json={
            "contributors": [
                {"username": ada.username, "share_bps": 6667},
                {"username": cy.username, "share_bps": 3333},
            ]
        },
        headers=ada.headers,
    )
    fund(client, bob, 100 * USDC)
    buy(client, bob, m)
    assert release_due(db, clock) == 0  # window still open
    earn = client.get("/api/v1/creator/earnings", headers=ada.headers).json()
    assert earn["pending"]["USDC"] > 0
    assert earn["available"]["USDC"] == 0
    clock.advance(timedelta(days=7, seconds=1))
    assert release_due(db, clock) == 1
    assert release_due(db, clock) == 0  # idempotent
    fee = 10_000_001 * 2000 // 10000  # 2_000_000 (floor)
    share = 10_000_001 - fee  # 8_000_001
    ada_part = balance(client, ada)["earnings"]["available"]
    cy_part = balance(client, cy)["earnings"]["available"]
    assert ada_part + cy_part == share
    assert (ada_part, cy_part) == (5_333_601, 2_666_400)
    assert balance(client, bob)["balance"]["posted"] == 100 * USDC - 10_000_001
    earn = client.get("/api/v1/creator/earnings", headers=ada.headers).json()
    assert earn["pending"]["USDC"] == 0
    assert earn["lifetime"]["USDC"] == ada_part
    assert earn["tier"] == {
        "name": "starter",
        "platform_fee_bps": 2000,
        "creator_share_bps": 8000,
        "lifetime_released_sales_usdc": 10_000_001,
    }
    assert earn["models"][0]["sales"] == 1
    assert earn["models"][0]["contributors"] == {
        ada.username: {"USDC": ada_part},
        cy.username: {"USDC": cy_part},
    }
    # the buyer's history shows the escrow hold and its capture
    hist = client.get("/api/v1/ledger/transfers?per_page=2", headers=bob.headers).json()
    assert hist["total"] == 3  # deposit, escrow (pending), capture (post)
    assert len(hist["items"]) == 2
    problem(
        client.get("/api/v1/ledger/transfers?per_page=1000", headers=bob.headers),
        422,
        "validation_error",
    )


def test_fee_tier_rises_with_lifetime_sales(
    api: Api, client: TestClient, db: Database, clock: TestClock
) -> None:
    ada = api.user()
    big = paid_model(api, client, ada, price=1_000 * USDC)
    small = paid_model(api, client, ada, price=10 * USDC)
    buyer1, buyer2 = api.user(), api.user()
    fund(client, buyer1, 1_000 * USDC)
    assert buy(client, buyer1, big).json()["platform_fee_bps"] == 2000
    clock.advance(timedelta(days=8))
    release_due(db, clock)
    fund(client, buyer2, 100 * USDC)
    assert buy(client, buyer2, small).json()["platform_fee_bps"] == 1800
    assert (
        client.get("/api/v1/creator/earnings", headers=ada.headers).json()["tier"]["name"]
        == "rising"
    )


def test_pay_in_cyx_with_discount(
    api: Api, client: TestClient, db: Database, clock: TestClock
) -> None:
    ada, bob = api.user(), api.user()
    m = paid_model(api, client, ada, price=10 * USDC)
    fund(client, bob, 100 * USDC, "CYX")
    p = buy(client, bob, m, currency="CYX").json()
    assert p["price"] == {
        "amount": 34_000_000,
        "currency": "CYX",
        "display": "34.00 CYX",
    }  # 8.5 USDC / 0.25
    clock.advance(timedelta(days=8))
    release_due(db, clock)
    assert balance(client, ada, "CYX")["earnings"]["available"] == 34_000_000 * 8000 // 10000


def test_admin_refund_after_release_records_creator_debt(
    api: Api, client: TestClient, db: Database, clock: TestClock
) -> None:
    ada, bob, root = api.user(), api.user(), api.user()
    with db.session() as s:
        get_user_by_username(s, root.username).role = "admin"
    m = paid_model(api, client, ada, price=10 * USDC)
    m2 = paid_model(api, client, ada, price=10 * USDC)
    fund(client, bob, 100 * USDC)
    lic = buy(client, bob, m).json()["license"]
    clock.advance(timedelta(days=8))
    release_due(db, clock)
    # the creator's earnings leave (as a payout would), so a late refund cannot be fully covered
    with db.session() as s:
        earn = flows.earnings_account(s, _user_id(s, ada.username), Currency.USDC)
        sink = flows.platform_account(s, "payouts-test", Currency.USDC)
        ledger.create_transfer(
            s,
            ledger.TransferSpec(
                id=uuid.uuid4(), code="payout", debit=earn.id, credit=sink.id, amount=5 * USDC
            ),
        )
    problem(
        client.post(f"/api/v1/licenses/{lic['id']}/refund", headers=bob.headers),
        409,
        "refund_window_closed",
    )
    r = client.post(f"/api/v1/licenses/{lic['id']}/refund", headers=root.headers)
    assert r.status_code == 200
    assert r.json()["status"] == "refunded"
    assert balance(client, bob)["balance"]["available"] == 100 * USDC
    assert balance(client, ada)["earnings"]["available"] == 0
    debt = client.get("/api/v1/creator/earnings", headers=ada.headers).json()["debt"]["USDC"]
    assert debt == 8 * USDC - 3 * USDC
    # the next sale repays the debt first
    buyer2 = api.user()
    fund(client, buyer2, 100 * USDC)
    buy(client, buyer2, m2)
    clock.advance(timedelta(days=8))
    release_due(db, clock)
    assert client.get("/api/v1/creator/earnings", headers=ada.headers).json()["debt"]["USDC"] == 0
    assert balance(client, ada)["earnings"]["available"] == 8 * USDC - 5 * USDC


def _user_id(session: Session, username: str) -> uuid.UUID:
    return get_user_by_username(session, username).id


def test_public_key_endpoint(client: TestClient) -> None:
    body = client.get("/api/v1/licenses/public-key").json()
    assert body["algorithm"] == "ed25519"
    assert body["keys"][0]["kid"] == body["active_kid"]
