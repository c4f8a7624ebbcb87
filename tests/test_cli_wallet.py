"""``cyxwiz wallet``: keypair files, sign-in against the live app, and paying Solana Pay requests
on a real (LiteSVM) chain."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from solders.keypair import Keypair
from typer.testing import CliRunner

from cyxwiz.chain import tokens
from cyxwiz.chain.interfaces import BlockhashExpired
from cyxwiz.chain.local import LocalChain
from cyxwiz.chain.solana_pay import TransferRequest, build_url, parse_url
from cyxwiz.cli.main import app
from cyxwiz.cli.wallet import InsufficientFunds, WalletError, balances, send_payment
from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.money import Currency
from cyxwiz.web.app import create_app
from tests.factories import PASSWORD

runner = CliRunner()
USDC = 1_000_000


@pytest.fixture(autouse=True)
def _no_wallet_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("CYXWIZ_WALLET", "CYXWIZ_URL", "CYXWIZ_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def wallet(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, ["wallet", *args])
    return r.exit_code, r.stdout, r.stderr


# ---------------------------------------------------------------- keypair files


def test_help_imports_no_heavy_libraries() -> None:
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cyxwiz.cli.main import app; "
            "from typer.main import get_command; get_command(app)\n"
            "print(sorted(m for m in ('solders','solana','spl','httpx','fastapi','sqlalchemy') "
            "if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "[]"
    code, out, _ = wallet("--help")
    assert code == 0
    for cmd in ("new", "address", "balance", "pay", "sign-in"):
        assert cmd in out


def test_new_address_and_refusing_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "id.json"
    code, out, err = wallet("new", "--outfile", str(path))
    assert code == 0, err
    address = out.strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = json.loads(path.read_text())
    assert isinstance(secret, list)
    assert len(secret) == 64  # solana-keygen's format
    assert str(Keypair.from_bytes(bytes(secret)).pubkey()) == address
    code, out, _ = wallet("address", "--keypair", str(path))
    assert (code, out.strip()) == (0, address)

    before = path.read_bytes()
    code, _, err = wallet("new", "--outfile", str(path))
    assert code == 1
    assert "refusing to overwrite" in err
    assert path.read_bytes() == before

    code, out, err = wallet("new", "--outfile", str(path), "--force")
    assert code == 0, err
    assert out.strip() != address
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert wallet("address", "-k", str(path))[1].strip() == out.strip()


def test_default_keypair_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = wallet("new")
    assert code == 0
    assert (tmp_path / "home" / ".config" / "cyxwiz" / "id.json").exists()
    assert wallet("address")[1] == out
    monkeypatch.setenv("CYXWIZ_WALLET", str(tmp_path / "env.json"))
    code, out2, _ = wallet("new")
    assert code == 0
    assert (tmp_path / "env.json").exists()
    assert wallet("address")[1] == out2 != out


def test_missing_or_broken_keypair(tmp_path: Path) -> None:
    code, _, err = wallet("address", "-k", str(tmp_path / "none.json"))
    assert code == 1
    assert "cyxwiz wallet new" in err
    (tmp_path / "bad.json").write_text("[1, 2, 3]")
    code, _, err = wallet("address", "-k", str(tmp_path / "bad.json"))
    assert code == 1
    assert "not a Solana keypair file" in err


# ---------------------------------------------------------------- paying on a real chain


@pytest.fixture
def chain(tmp_path: Path, settings: Settings) -> Iterator[LocalChain]:
    c = LocalChain(directory=tmp_path / "chain", master_keys=settings.master_keys)
    yield c
    c.close()


def deposit_request(chain: LocalChain, amount: int, **extra: str) -> TransferRequest:
    return parse_url(
        build_url(
            TransferRequest(
                recipient=chain.treasury,
                amount=amount,
                spl_token=chain.mint_of(Currency.USDC),
                references=(str(Keypair().pubkey()),),
                label=extra.get("label", "CyxWiz"),
                memo=extra.get("memo"),
            )
        )
    )


def test_send_payment_pays_what_the_request_asks(chain: LocalChain) -> None:
    payer = tokens.new_keypair()
    chain.mint_to(owner=str(payer.pubkey()), currency=Currency.USDC, amount=50 * USDC)
    req = deposit_request(chain, 12_500_000, memo="cyxwiz deposit 42")
    steps: list[str] = []
    signature = send_payment(chain, payer, req, on_status=steps.append)
    assert any("confirmation" in s for s in steps)
    record = chain.transaction(signature)
    assert record is not None
    assert record.memos == ("cyxwiz deposit 42",)
    assert req.references[0] in record.account_keys  # findable by reference
    mint = chain.mint_of(Currency.USDC)
    assert record.delta_of(chain.vault_of(Currency.USDC), mint) == 12_500_000
    held = balances(chain, str(payer.pubkey()), {"USDC": mint, "CYX": chain.mint_of(Currency.CYX)})
    assert held["USDC"] == 37_500_000
    assert held["CYX"] == 0
    assert 0 < held["SOL"] < 10**9


def test_send_payment_refuses_clearly(chain: LocalChain) -> None:
    payer = tokens.new_keypair()
    chain.mint_to(owner=str(payer.pubkey()), currency=Currency.USDC, amount=5 * USDC)
    with pytest.raises(InsufficientFunds, match=r"holds 5 .* asks for 12\.5"):
        send_payment(chain, payer, deposit_request(chain, 12_500_000))
    no_amount = TransferRequest(
        recipient=chain.treasury, amount=None, spl_token=chain.mint_of(Currency.USDC)
    )
    with pytest.raises(WalletError, match="no amount"):
        send_payment(chain, payer, no_amount)
    assert send_payment(chain, payer, no_amount, amount=USDC)  # the payer names it
    with pytest.raises(WalletError, match="SPL token"):
        send_payment(
            chain, payer, TransferRequest(recipient=chain.treasury, amount=1, spl_token=None)
        )
    assert (
        chain.token_balance(chain.token_account_of(str(payer.pubkey()), Currency.USDC)) == 4 * USDC
    )


class ExpiringChain:
    """The real chain, but the cluster moves past each signed blockhash before the first
    ``expire`` transactions reach it (as when a wallet waits too long to send)."""

    def __init__(self, chain: LocalChain, now: list[float], expire: int) -> None:
        self.chain, self.now, self.expire = chain, now, expire
        self.sent = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.chain, name)

    def send_raw(self, raw: bytes) -> str:
        self.sent += 1
        if self.sent <= self.expire:
            self.now[0] += 120
            self.chain.latest_blockhash()
        return self.chain.send_raw(raw)


def test_expired_blockhash_is_retried_once(tmp_path: Path, settings: Settings) -> None:
    now = [1_000_000.0]
    chain = LocalChain(
        directory=tmp_path / "chain", master_keys=settings.master_keys, now=lambda: now[0]
    )
    try:
        payer = tokens.new_keypair()
        chain.mint_to(owner=str(payer.pubkey()), currency=Currency.USDC, amount=10 * USDC)
        once = ExpiringChain(chain, now, expire=1)
        assert send_payment(once, payer, deposit_request(chain, USDC))  # type: ignore[arg-type]
        assert once.sent == 2
        twice = ExpiringChain(chain, now, expire=2)
        with pytest.raises(BlockhashExpired):
            send_payment(twice, payer, deposit_request(chain, USDC))  # type: ignore[arg-type]
        assert twice.sent == 2
        held = chain.token_balance(chain.token_account_of(str(payer.pubkey()), Currency.USDC))
        assert held == 9 * USDC  # paid exactly once
    finally:
        chain.close()


def test_pay_refuses_bad_requests_before_sending(tmp_path: Path) -> None:
    key = tmp_path / "id.json"
    assert wallet("new", "-o", str(key))[0] == 0
    code, _, err = wallet("pay", "solana:not-an-address?amount=1", "-k", str(key), "--yes")
    assert code == 1
    assert "not a Solana address" in err
    code, _, err = wallet("pay", "https://example.com", "-k", str(key), "--yes")
    assert code == 1
    assert "not a Solana Pay transfer request" in err
    sol_request = f"solana:{Keypair().pubkey()}?amount=1"
    code, _, err = wallet(
        "pay", sol_request, "-k", str(key), "--url", "http://127.0.0.1:9", "--yes"
    )
    assert code == 1
    assert "only SPL token requests" in err


# ---------------------------------------------------------------- against the live app


@dataclass
class Live:
    url: str
    chain: LocalChain


@pytest.fixture
def live(settings: Settings, db: Database, clock: TestClock, chain: LocalChain) -> Iterator[Live]:
    """The real app behind uvicorn (on this test's rolled-back database) with a local chain."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    settings.base_url = url  # the domain sign-in messages name
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, database=db, clock=clock, chain=chain),
            log_level="critical",
            lifespan="on",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Live(url, chain)
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def register(url: str, username: str) -> str:
    with httpx.Client(base_url=url) as c:
        r = c.post(
            "/api/v1/auth/register",
            json={"username": username, "email": f"{username}@example.com", "password": PASSWORD},
        )
        assert r.status_code == 201, r.text
        r = c.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
        return str(r.json()["access_token"])


def test_sign_in_links_the_wallet_and_logs_in(live: Live, tmp_path: Path) -> None:
    token = register(live.url, "ada")
    key = tmp_path / "id.json"
    address = wallet("new", "-o", str(key))[1].strip()

    code, _, err = wallet("sign-in", "-k", str(key), "--url", live.url)
    assert code == 1
    assert "access token" in err

    code, out, err = wallet(
        "sign-in", "-k", str(key), "--url", live.url, "--token", token, "--label", "cli"
    )
    assert code == 0, err
    assert address in out
    with httpx.Client(base_url=live.url, headers={"Authorization": f"Bearer {token}"}) as c:
        linked = c.get("/api/v1/wallets").json()
    assert [(w["address"], w["label"]) for w in linked] == [(address, "cli")]

    code, out, err = wallet("sign-in", "-k", str(key), "--url", live.url, "--login")
    assert code == 0, err
    with httpx.Client(base_url=live.url) as c:
        me = c.get("/api/v1/me", headers={"Authorization": f"Bearer {out.strip()}"})
    assert me.status_code == 200
    assert me.json()["username"] == "ada"

    # another account cannot take it; the server's problem code is shown
    other = register(live.url, "eve")
    code, _, err = wallet("sign-in", "-k", str(key), "--url", live.url, "--token", other)
    assert code == 1
    assert "wallet_taken" in err
    # a wallet nobody linked cannot log in
    stranger = tmp_path / "stranger.json"
    assert wallet("new", "-o", str(stranger))[0] == 0
    code, _, err = wallet("sign-in", "-k", str(stranger), "--url", live.url, "--login")
    assert code == 1
    assert "wallet_not_linked" in err


def test_sign_in_refuses_a_message_for_another_domain(
    live: Live, tmp_path: Path, settings: Settings
) -> None:
    token = register(live.url, "ada")
    key = tmp_path / "id.json"
    assert wallet("new", "-o", str(key))[0] == 0
    settings.base_url = "https://evil.example"  # the server now asks for another site's sign-in
    code, _, err = wallet("sign-in", "-k", str(key), "--url", live.url, "--token", token)
    assert code == 1
    assert "refusing to sign" in err


def test_pay_and_balance_over_the_marketplace_rpc(live: Live, tmp_path: Path) -> None:
    """Through the app's JSON-RPC endpoint for the local chain (/chain/rpc)."""
    key = tmp_path / "id.json"
    address = wallet("new", "-o", str(key))[1].strip()
    live.chain.mint_to(owner=address, currency=Currency.USDC, amount=20 * USDC)
    req = deposit_request(live.chain, 7_250_000, memo="cyxwiz test")
    code, out, err = wallet("pay", build_url(req), "-k", str(key), "--url", live.url, "--yes")
    assert code == 0, err
    signature = out.strip().splitlines()[-1]
    record = live.chain.transaction(signature)
    assert record is not None
    assert record.memos == ("cyxwiz test",)
    assert req.references[0] in record.account_keys

    code, out, err = wallet("balance", "-k", str(key), "--url", live.url)
    assert code == 0, err
    assert "USDC     12.75" in out
    assert "CYX      0" in out
    code, out, err = wallet(
        "pay",
        build_url(deposit_request(live.chain, 100 * USDC)),
        "-k",
        str(key),
        "--url",
        live.url,
        "--yes",
    )
    assert code == 1
    assert "asks for 100" in err


def test_rpc_errors_are_named(live: Live) -> None:
    """What the cluster refuses comes back as the wallet's clear errors, not raw JSON-RPC."""
    from solders.hash import Hash

    from cyxwiz.cli.wallet import RpcWallet, build_payment

    payer = tokens.new_keypair()
    live.chain.mint_to(owner=str(payer.pubkey()), currency=Currency.USDC, amount=2 * USDC)
    rpc = RpcWallet(live.url + "/chain/rpc")
    try:
        ixs = build_payment(payer, deposit_request(live.chain, 5 * USDC), 5 * USDC)
        blockhash, _ = rpc.latest_blockhash()
        with pytest.raises(InsufficientFunds):
            rpc.send_raw(bytes(tokens.sign(ixs, [payer], blockhash)))
        ixs = build_payment(payer, deposit_request(live.chain, USDC), USDC)
        stale = str(Hash.new_unique())
        with pytest.raises(BlockhashExpired):
            rpc.send_raw(bytes(tokens.sign(ixs, [payer], stale)))
        assert (
            rpc.token_balance(
                tokens.ata(str(Keypair().pubkey()), live.chain.mint_of(Currency.USDC))
            )
            == 0
        )
        signature = rpc.send_raw(bytes(tokens.sign(ixs, [payer], blockhash)))
        assert rpc.statuses([signature, str(payer.sign_message(b"x"))])[0] in (
            "confirmed",
            "finalized",
        )
        assert rpc.statuses([str(payer.sign_message(b"x"))]) == [None]
    finally:
        rpc.close()
