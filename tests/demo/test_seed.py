"""Loading the demo catalogue: what a visitor of a fresh `cyxwiz serve --demo` sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from cyxwiz.billing import treasury
from cyxwiz.billing.models import Deposit
from cyxwiz.chain import tokens
from cyxwiz.chain.factory import open_chain
from cyxwiz.chain.interfaces import Chain
from cyxwiz.cli.main import app as cli
from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.demo.models import run_onnx
from cyxwiz.demo.seed import (
    DEMO_BUYERS,
    DEMO_CYX_FLOAT,
    DEMO_FUNDS,
    DEMO_PASSWORD,
    DEMO_PURCHASES,
    demo_wallet_path,
    load_models,
    load_money,
    seed,
)
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.models import LedgerTransfer
from cyxwiz.money import Currency
from cyxwiz.storage import BlobStore
from tests.chain_support import chain_of
from tests.demo.conftest import Built


def chain_state(chain: Chain, settings: Settings) -> dict[str, int]:
    """Each vault's and each demo wallet's token balances."""
    out = {f"vault:{c.value}": chain.token_balance(chain.vault_of(c)) for c in Currency}
    for username, _, _ in DEMO_BUYERS:
        owner = str(tokens.read_keypair(demo_wallet_path(settings, username)).pubkey())
        for c in Currency:
            out[f"{username}:{c.value}"] = chain.token_balance(chain.token_account_of(owner, c))
    return out


def assert_books_reconcile(db: Database, chain: Chain) -> None:
    with db.session() as s:
        report = ledger.check(s)
        assert report.ok, report.problems
        vaults = treasury.reconcile(s, chain=chain)
    assert all(v.ok for v in vaults), [v.problem() for v in vaults]


def test_demo_catalogue_is_browsable_and_runs(
    built: Built,
    db: Database,
    blobs: BlobStore,
    client: TestClient,
    settings: Settings,
    clock: TestClock,
) -> None:
    models = built[0]
    with db.session() as s:
        report = load_models(s, blobs, models)
    assert report.models_created == len(models) >= 24
    chain = chain_of(client)  # the app's own chain: deposits land where the server looks
    made = load_money(db, settings=settings, chain=chain, models=models, now=clock.now())
    assert made == len(DEMO_PURCHASES)
    funded = sum(amount for c, amount in DEMO_FUNDS if c == "USDC") * len(DEMO_BUYERS)
    cyx = sum(amount for c, amount in DEMO_FUNDS if c == "CYX") * len(DEMO_BUYERS)
    before = chain_state(chain, settings)
    assert before["vault:USDC"] == funded  # every buyer's USDC came in by a deposit
    assert before["vault:CYX"] == cyx + DEMO_CYX_FLOAT
    assert_books_reconcile(db, chain)
    with db.session() as s:
        again = load_models(s, blobs, models)  # idempotent: nothing duplicated
    # nothing minted, paid or credited twice
    assert load_money(db, settings=settings, chain=chain, models=models, now=clock.now()) == 0
    assert chain_state(chain, settings) == before
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Deposit)) == len(DEMO_BUYERS) * len(
            DEMO_FUNDS
        )
        codes = s.scalars(
            select(LedgerTransfer.code).where(
                LedgerTransfer.code.in_(("deposit", "treasury.float"))
            )
        ).all()
    assert sorted(codes) == ["deposit"] * len(DEMO_BUYERS) * len(DEMO_FUNDS) + ["treasury.float"]
    assert_books_reconcile(db, chain)
    assert again.models_created == 0
    assert again.models_existing == len(models)

    listing = client.get("/api/v1/models?per_page=100").json()
    assert listing["total"] == len(models)
    subcats = {m["category"]["slug"] for m in listing["items"]}
    tops = {m["category"]["parent"] or m["category"]["slug"] for m in listing["items"]}
    assert len(subcats) >= 8
    assert len(tops) >= 4
    tree = {c["slug"]: c["model_count"] for c in client.get("/api/v1/categories").json()}
    assert sum(tree.values()) == len(models)

    # Every listing carries its real held-out metrics and a sample; the published file runs.
    iris = next(m for m in models if m.name == "iris-species-classifier")
    page = client.get(f"/api/v1/models/{iris.owner}/{iris.name}").json()
    shown = {m["type"]: m["value"] for m in page["metrics"]}
    assert shown == iris.metrics
    onnx_bytes = client.get(
        f"/api/v1/models/{iris.owner}/{iris.name}/versions/main/files/model.onnx"
    ).content
    assert onnx_bytes == iris.files["model.onnx"]
    assert run_onnx(onnx_bytes, iris.sample_input) == iris.sample_output
    config = json.loads(
        client.get(
            f"/api/v1/models/{iris.owner}/{iris.name}/versions/main/files/config.json"
        ).content
    )
    assert config
    co = next(m for m in models if m.contributors)
    shares = client.get(f"/api/v1/models/{co.owner}/{co.name}").json()["contributors"]
    assert sorted((c["username"], c["share_bps"]) for c in shares) == sorted(co.contributors)

    home = client.get("/", headers={"accept": "text/html"})
    assert home.status_code == 200
    assert "Newest" in home.text
    found = client.get("/models?q=iris", headers={"accept": "text/html"})
    assert iris.title in found.text

    # a realistic mix of free and priced models, and creators with real earnings
    offers = [
        client.get(f"/api/v1/models/{m.owner}/{m.name}/offers").json()["free"] for m in models
    ]
    assert 0 < offers.count(True) < len(models)
    tok = client.post(
        "/api/v1/auth/login", json={"username": "orbit-analytics", "password": DEMO_PASSWORD}
    ).json()
    licenses = client.get(
        "/api/v1/licenses", headers={"Authorization": f"Bearer {tok['access_token']}"}
    ).json()
    assert {lic["refundable"] for lic in licenses} == {
        True,
        False,
    }  # some still in the window, some past it
    tok = client.post(
        "/api/v1/auth/login", json={"username": "tabula-labs", "password": DEMO_PASSWORD}
    ).json()
    earnings = client.get(
        "/api/v1/creator/earnings", headers={"Authorization": f"Bearer {tok['access_token']}"}
    ).json()
    assert earnings["available"]["USDC"] > 0


def test_seed_funds_on_the_servers_chain_and_ledger_check_stays_clean(
    built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `cyxwiz demo` / `serve --demo` do, on a real data dir: the buyers are funded by
    deposits on the chain the server will open (closed again once seeded), a re-run changes
    nothing on chain, and `cyxwiz ledger check` reconciles the vaults clean."""
    data = tmp_path / "demo-data"
    monkeypatch.setenv("CYXWIZ_DATA_DIR", str(data))
    monkeypatch.delenv("CYXWIZ_DATABASE_URL", raising=False)
    runner = CliRunner()
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    settings = Settings(data_dir=data)
    said: list[str] = []
    assert seed(settings, echo=said.append, models=built[0]).purchases == len(DEMO_PURCHASES)
    assert "dev wallets" in said[-1]
    chain = open_chain(settings)  # seeding released the chain: the server can open it
    try:
        before = chain_state(chain, settings)
    finally:
        chain.close()
    assert seed(settings, echo=said.append, models=built[0]).purchases == 0
    chain = open_chain(settings)
    try:
        assert chain_state(chain, settings) == before
    finally:
        chain.close()
    r = runner.invoke(cli, ["ledger", "check"])
    assert r.exit_code == 0, r.output
    assert "vault USDC: on chain 3,000.00 USDC, ledger 3,000.00 USDC" in r.output, r.output
    assert "ledger check: clean" in r.output
