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
            s, code="x:src", currency=Currency.USDC, kind="faucet", no_overdraft=False
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
