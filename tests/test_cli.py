"""The cyxwiz command line (run in-process with Typer's runner on a temp data dir)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cyxwiz.accounts.service import authenticate
from cyxwiz.cli.main import app
from cyxwiz.config import Settings
from cyxwiz.db import Database

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "data"
    monkeypatch.setenv("CYXWIZ_DATA_DIR", str(d))
    monkeypatch.delenv("CYXWIZ_DATABASE_URL", raising=False)
    return d


def test_help_is_fast_and_lists_nouns() -> None:
    start = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cyxwiz.cli.main import run; sys.argv=['cyxwiz','--help']; run()",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    assert out.returncode == 0
    for noun in ("serve", "demo", "db", "user"):
        assert noun in out.stdout
    # --help must not import the web app, ORM or ML stacks
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, cyxwiz.cli.main; print(sorted(m for m in ('fastapi','sqlalchemy','onnxruntime','sklearn') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "[]"
    assert elapsed < 10


def test_db_upgrade_and_check(data_dir: Path) -> None:
    r = runner.invoke(app, ["db", "upgrade"])
    assert r.exit_code == 0, r.output
    assert "revision" in r.output
    assert (data_dir / "cyxwiz.db").exists()
    r = runner.invoke(app, ["db", "check"])
    assert r.exit_code == 0, r.output
    assert "no drift" in r.output


def test_user_create_admin_and_duplicate(data_dir: Path) -> None:
    r = runner.invoke(
        app,
        ["user", "create", "root-admin", "--email", "root@example.com", "--admin"],
        input="s3cret-pass\ns3cret-pass\n",
    )
    assert r.exit_code == 0, r.output
    assert "created admin root-admin" in r.output
    db = Database.from_url(Settings(data_dir=data_dir).resolved_database_url)
    with db.session() as s:
        user = authenticate(s, login="root-admin", password="s3cret-pass")
        assert user.is_admin
    db.engine.dispose()
    r = runner.invoke(
        app,
        ["user", "create", "root-admin", "--email", "x@example.com"],
        input="s3cret-pass\ns3cret-pass\n",
    )
    assert r.exit_code == 1
    assert "username_taken" in r.output


def test_production_without_key_refuses_to_start(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CYXWIZ_ENV", "production")
    r = runner.invoke(app, ["db", "upgrade"])
    assert r.exit_code == 2
    assert "CYXWIZ_MASTER_KEY" in r.output


def test_ledger_check_clean_and_broken(data_dir: Path) -> None:
    import uuid

    from sqlalchemy import update

    from cyxwiz.ledger import service as ledger
    from cyxwiz.ledger.models import LedgerAccount
    from cyxwiz.money import Currency

    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    r = runner.invoke(app, ["ledger", "check"])
    assert r.exit_code == 0, r.output
    assert "clean" in r.output
    db = Database.from_url(Settings(data_dir=data_dir).resolved_database_url)
    with db.session() as s:
        src = ledger.get_or_create_account(
            s, code="x:src", currency=Currency.USDC, kind="test_source", no_overdraft=False
        )
        dst = ledger.get_or_create_account(
            s, code="x:dst", currency=Currency.USDC, kind="user_balance"
        )
        ledger.create_transfer(
            s, ledger.TransferSpec(id=uuid.uuid4(), code="t", debit=src.id, credit=dst.id, amount=5)
        )
    assert runner.invoke(app, ["ledger", "check"]).exit_code == 0
    with db.session() as s:
        s.execute(
            update(LedgerAccount).where(LedgerAccount.code == "x:dst").values(credits_posted=6)
        )
    db.engine.dispose()
    r = runner.invoke(app, ["ledger", "check"])
    assert r.exit_code == 1
    assert "x:dst" in r.output


HOLD_CHAIN = """
import sys
from cyxwiz.chain.factory import open_chain
from cyxwiz.config import Settings
from cyxwiz.money import Currency

chain = open_chain(Settings())  # CYXWIZ_DATA_DIR: the test's data dir
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "mint":  # tokens reach the vault with no ledger record
        chain.mint_to(owner=chain.treasury, currency=Currency.USDC, amount=3_000_000)
        print("minted", flush=True)
chain.close()
"""


def test_ledger_check_reconciles_the_vaults_even_while_a_server_owns_the_chain(
    data_dir: Path,
) -> None:
    """`ledger check` puts each vault's on-chain balance next to the ledger's: clean after a
    real deposit, also while another process (a running `serve`) holds the local chain's lock
    (it reads the persisted state), and exit 1 naming the difference once tokens reach the
    vault without a ledger record."""
    from cyxwiz.accounts.service import register
    from cyxwiz.billing import deposits
    from cyxwiz.chain.factory import open_chain
    from cyxwiz.chain.interfaces import ChainUnavailable
    from cyxwiz.clock import SystemClock
    from cyxwiz.money import Currency
    from tests.chain_support import funded_wallet, pay

    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    r = runner.invoke(app, ["ledger", "check"])
    assert r.exit_code == 0, r.output
    assert "chain: not reconciled (no local chain has been created yet)" in r.output

    settings = Settings(data_dir=data_dir)
    db = Database.from_url(settings.resolved_database_url)
    chain = open_chain(settings)
    try:
        now = SystemClock().now()
        with db.session() as s:
            ada = register(s, username="ada", email="ada@example.com", password="pw-123456789")
            dep, _ = deposits.create_deposit(
                s,
                settings=settings,
                chain=chain,
                user=ada,
                currency=Currency.USDC,
                amount=25_000_000,
                idempotency_key="d1",
                now=now,
            )
            wallet = funded_wallet(chain, Currency.USDC, 25_000_000)
            pay(chain, wallet, deposits.payment_url(dep, username="ada"))
            assert deposits.scan_deposit(s, settings=settings, chain=chain, deposit=dep, now=now)
    finally:
        chain.close()
        db.engine.dispose()
    r = runner.invoke(app, ["ledger", "check"])
    assert r.exit_code == 0, r.output
    assert "vault USDC: on chain 25.00 USDC, ledger 25.00 USDC" in r.output
    assert "vault CYX: on chain 0.00 CYX, ledger 0.00 CYX" in r.output
    assert "ledger check: clean" in r.output

    with subprocess.Popen(  # the server: it owns the chain's lock
        [sys.executable, "-c", HOLD_CHAIN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as server:
        assert server.stdout is not None
        assert server.stdin is not None
        assert server.stdout.readline().strip() == "ready"
        with pytest.raises(ChainUnavailable):
            open_chain(settings)  # the lock is the other process's
        r = runner.invoke(app, ["ledger", "check"])
        assert r.exit_code == 0, r.output
        assert "vault USDC: on chain 25.00 USDC, ledger 25.00 USDC" in r.output

        server.stdin.write("mint\n")
        server.stdin.flush()
        assert server.stdout.readline().strip() == "minted"
        r = runner.invoke(app, ["ledger", "check"])
        assert r.exit_code == 1, r.output
        assert "vault USDC: on chain 28.00 USDC, ledger 25.00 USDC" in r.output
        assert "difference +3.00 USDC" in r.output
        server.stdin.close()  # the server stops and releases the chain
        assert server.wait(30) == 0
    r = runner.invoke(app, ["ledger", "check"])  # the chain itself, opened directly
    assert r.exit_code == 1, r.output
    assert "difference +3.00 USDC" in r.output
