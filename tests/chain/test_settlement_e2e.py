"""The whole settlement loop end to end, on the local backend and through the rpc backend.

A buyer links a wallet (Sign-In With Solana), gets test tokens from the faucet, pays a Solana
Pay deposit request from the wallet, is credited once, buys a model; the escrow is released; the
creator links a wallet and takes a payout, which lands in the creator's token account on chain;
the ledger check and the vault reconciliation are clean.

The rpc variant runs a second marketplace whose chain backend is ``rpc``: solana-py talking over
HTTP to the first one's local chain served at /chain/rpc, exactly as to a cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cyxwiz.billing import payouts, treasury
from cyxwiz.billing.deposits import watch_once
from cyxwiz.chain import tokens
from cyxwiz.chain.interfaces import Chain
from cyxwiz.clock import TestClock
from cyxwiz.config import ChainBackend, Settings
from cyxwiz.db import Database
from cyxwiz.ledger import service as ledger
from cyxwiz.money import Currency
from cyxwiz.storage import BlobStore
from cyxwiz.web.app import create_app
from tests.billing.test_api_money import USDC, buy, paid_model, release_due
from tests.chain.conftest import FakeTime, chain_settings, open_local, serve_chain
from tests.chain_support import chain_of, pay
from tests.factories import Api


def settlement_loop(client: TestClient, db: Database, settings: Settings, clock: TestClock) -> None:
    api = Api(client)
    chain: Chain = chain_of(client)
    ada, bob = api.user(), api.user()
    model = paid_model(api, client, ada, price=40 * USDC)

    # The buyer's wallet: linked by SIWS, funded by the dev faucet (tokens minted on chain).
    bob_wallet = tokens.new_keypair()
    api.link_wallet(bob, bob_wallet)
    if chain.backend == "local":
        r = client.post("/api/v1/chain/faucet", json={"amount": 50 * USDC}, headers=bob.headers)
        assert r.status_code == 201, r.text
        assert r.json()["wallet"] == str(bob_wallet.pubkey())
    else:  # the marketplace's faucet is local-only; the dev cluster's mint authority mints
        chain.mint_to(owner=str(bob_wallet.pubkey()), currency=Currency.USDC, amount=50 * USDC)
    bob_tokens = chain.token_account_of(str(bob_wallet.pubkey()), Currency.USDC)
    assert chain.token_balance(bob_tokens) == 50 * USDC

    # Deposit through the Solana Pay request; the watcher credits it exactly once.
    r = client.post("/api/v1/deposits", json={"amount": 40 * USDC}, headers=bob.headers)
    assert r.status_code == 201, r.text
    dep = r.json()
    pay(chain, bob_wallet, dep["url"])
    assert watch_once(db, settings=settings, chain=chain, now=clock.now()) == 1
    assert watch_once(db, settings=settings, chain=chain, now=clock.now()) == 0
    got = client.get(f"/api/v1/deposits/{dep['id']}", headers=bob.headers).json()
    assert got["status"] == "paid"
    assert [t["status"] for t in got["transactions"]] == ["credited"]
    assert chain.token_balance(bob_tokens) == 10 * USDC

    # Buy; the refund window closes; escrow is released to the creator (20% platform fee).
    assert buy(client, bob, model).status_code == 201
    balance = client.get("/api/v1/balance", headers=bob.headers).json()["USDC"]["balance"]
    assert balance["available"] == 0
    clock.advance(timedelta(days=8))
    assert release_due(db, clock) == 1
    earned = 32 * USDC

    # The creator's payout lands in the creator's token account on chain.
    ada_wallet = tokens.new_keypair()
    api.link_wallet(ada, ada_wallet)
    r = client.post(
        "/api/v1/payouts",
        json={"amount": earned, "kind": "scheduled"},
        headers={**ada.headers, "Idempotency-Key": "weekly-1"},
    )
    assert r.status_code == 201, r.text
    for _ in range(3):
        payouts.process_payouts(db, settings=settings, chain=chain, now=clock.now())
    done = client.get(f"/api/v1/payouts/{r.json()['id']}", headers=ada.headers).json()
    assert done["status"] == "confirmed", done
    assert (
        chain.token_balance(chain.token_account_of(str(ada_wallet.pubkey()), Currency.USDC))
        == earned
    )
    record = chain.transaction(done["signature"])
    assert record is not None
    assert record.delta_of(chain.vault_of(Currency.USDC), chain.mint_of(Currency.USDC)) == -earned

    # The books: double entry holds, and the vault holds what the ledger says (8 USDC of fees).
    with db.session() as s:
        report = ledger.check(s)
        assert report.ok, report.problems
        (usdc, cyx) = sorted(treasury.reconcile(s, chain=chain), key=lambda v: v.currency != "USDC")
    assert (usdc.ok, cyx.ok) == (True, True), (usdc.problem(), cyx.problem())
    assert usdc.on_chain == 8 * USDC


def test_settlement_loop_on_the_local_chain(
    client: TestClient, db: Database, settings: Settings, clock: TestClock
) -> None:
    settlement_loop(client, db, settings, clock)


@pytest.fixture
def rpc_client(
    tmp_path: Path, db: Database, blobs: BlobStore, clock: TestClock
) -> Iterator[tuple[TestClient, Settings]]:
    """A marketplace on the rpc backend, settling on another process-like app's local chain."""
    cluster_settings = chain_settings(tmp_path / "cluster")
    now = FakeTime()
    local = open_local(cluster_settings, now)
    served = serve_chain(tmp_path / "cluster", cluster_settings, local, now)
    assert cluster_settings.master_key is not None
    settings = Settings(
        data_dir=tmp_path / "market",
        master_key=cluster_settings.master_key.get_secret_value(),  # the treasury is sealed with it
        blob_chunk_size=64 * 1024,
        chain_backend=ChainBackend.rpc,
        chain_rpc_url=served.rpc_url,
        chain_usdc_mint=local.mint_of(Currency.USDC),
        chain_cyx_mint=local.mint_of(Currency.CYX),
        chain_treasury_keypair=cluster_settings.resolved_chain_dir / "treasury.json",
    )
    app = create_app(settings, database=db, blobs=blobs, clock=clock)
    try:
        with TestClient(app, raise_server_exceptions=False) as c:
            yield c, settings
    finally:
        served.stop()
        served.db.engine.dispose()
        local.close()


def test_settlement_loop_through_the_rpc_backend(
    rpc_client: tuple[TestClient, Settings], db: Database, clock: TestClock
) -> None:
    client, settings = rpc_client
    assert chain_of(client).backend == "rpc"
    settlement_loop(client, db, settings, clock)


def test_restart_keeps_balances_mints_and_pending_payouts(
    settings: Settings, db: Database, blobs: BlobStore, clock: TestClock
) -> None:
    """Stop the server between a payout's request and its sending; the new process finds the
    chain, its mints and balances as they were, and settles the payout exactly once."""

    def start() -> TestClient:
        return TestClient(
            create_app(settings, database=db, blobs=blobs, clock=clock),
            raise_server_exceptions=False,
        )

    with start() as client:
        api = Api(client)
        chain = chain_of(client)
        mints = {c: chain.mint_of(c) for c in Currency}
        ada = api.user()
        api.fund(ada, 20 * USDC)
        wallet = tokens.new_keypair()
        api.link_wallet(ada, wallet)
        r = client.post(
            "/api/v1/payouts", json={"amount": 15 * USDC, "source": "balance"}, headers=ada.headers
        )
        assert r.status_code == 201, r.text
        payout_id = r.json()["id"]
        vault_before = chain.token_balance(chain.vault_of(Currency.USDC))
    # The app is stopped: its chain is closed (the next process may open it).
    with start() as client:
        chain = chain_of(client)
        assert {c: chain.mint_of(c) for c in Currency} == mints
        assert chain.token_balance(chain.vault_of(Currency.USDC)) == vault_before == 20 * USDC
        assert (
            client.get(f"/api/v1/payouts/{payout_id}", headers=ada.headers).json()["status"]
            == "pending"
        )
        for _ in range(2):
            payouts.process_payouts(db, settings=settings, chain=chain, now=clock.now())
        done = client.get(f"/api/v1/payouts/{payout_id}", headers=ada.headers).json()
        assert done["status"] == "confirmed"
        paid = done["paid"]["amount"]
        assert (
            chain.token_balance(chain.token_account_of(str(wallet.pubkey()), Currency.USDC)) == paid
        )
        with db.session() as s:
            assert ledger.check(s).ok
            assert all(v.ok for v in treasury.reconcile(s, chain=chain))
