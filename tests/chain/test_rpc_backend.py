"""The rpc backend (solana-py over HTTP) against the dev chain served at /chain/rpc: it must
see exactly what the local backend sees."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from solders.hash import Hash
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature

from cyxwiz.chain import rpc as rpc_module
from cyxwiz.chain import tokens
from cyxwiz.chain.factory import open_chain
from cyxwiz.chain.interfaces import (
    BlockhashExpired,
    ChainUnavailable,
    FaucetUnavailable,
    TransactionRejected,
)
from cyxwiz.chain.local import VALID_BLOCKS
from cyxwiz.chain.rpc import RpcChain, parse_memos
from cyxwiz.config import ChainBackend, ConfigError, Settings
from cyxwiz.errors import InvalidInput
from cyxwiz.money import Currency
from tests.chain.conftest import Served, free_socket, serve_app


def rpc_settings(served: Served, **overrides: Any) -> Settings:
    """The served chain's own settings switched to the rpc backend (same data dir, so the
    default treasury path is the local chain's sealed treasury: the mint authority)."""
    values: dict[str, Any] = {
        "chain_backend": ChainBackend.rpc,
        "chain_rpc_url": served.rpc_url,
        "chain_usdc_mint": served.chain.mint_of(Currency.USDC),
        "chain_cyx_mint": served.chain.mint_of(Currency.CYX),
    }
    values.update(overrides)
    return served.settings.model_copy(update=values)


@pytest.fixture
def rpc(served: Served) -> Iterator[RpcChain]:
    chain = open_chain(rpc_settings(served))
    assert isinstance(chain, RpcChain)
    yield chain
    chain.close()


def _mints(served: Served) -> dict[Currency, str]:
    return {c: served.chain.mint_of(c) for c in Currency}


def test_same_view_as_local(rpc: RpcChain, served: Served) -> None:
    local = served.chain
    assert rpc.backend == "rpc"
    assert rpc.treasury == local.treasury
    for cur in Currency:
        assert rpc.mint_of(cur) == local.mint_of(cur)
        assert rpc.vault_of(cur) == local.vault_of(cur)
        assert rpc.token_balance(rpc.vault_of(cur)) == local.token_balance(local.vault_of(cur))
    owner = str(Keypair().pubkey())
    assert rpc.token_account_of(owner, Currency.CYX) == local.token_account_of(owner, Currency.CYX)
    assert rpc.token_balance(rpc.token_account_of(owner, Currency.CYX)) == 0
    assert rpc.sol_balance(owner) == 0
    assert rpc.sol_balance(rpc.treasury) == local.sol_balance(local.treasury)
    assert rpc.block_height() == local.block_height()
    assert rpc.latest_blockhash() == local.latest_blockhash()
    assert rpc.token_balance(rpc.treasury) == 0  # a wallet, not a token account


def test_mint_to_and_airdrop(rpc: RpcChain, served: Served) -> None:
    owner = str(Keypair().pubkey())
    sig = rpc.mint_to(owner=owner, currency=Currency.USDC, amount=3_000_000)
    account = rpc.token_account_of(owner, Currency.USDC)
    assert rpc.token_balance(account) == 3_000_000
    assert served.chain.token_balance(account) == 3_000_000
    assert rpc.sol_balance(owner) >= 10**9  # fee SOL from the faucet, as the local backend
    assert rpc.statuses([sig]) == ["finalized"]
    assert rpc.transaction(sig) == served.chain.transaction(sig)
    other = str(Keypair().pubkey())
    rpc.airdrop(other, 123_456_789)
    assert rpc.sol_balance(other) == 123_456_789
    with pytest.raises(InvalidInput):
        rpc.mint_to(owner=owner, currency=Currency.USDC, amount=0)


def test_mint_to_needs_the_mint_authority(served: Served) -> None:
    stranger = RpcChain(url=served.rpc_url, treasury_keypair=Keypair(), mints=_mints(served))
    try:
        with pytest.raises(FaucetUnavailable, match="not minted by the treasury"):
            stranger.mint_to(owner=str(Keypair().pubkey()), currency=Currency.CYX, amount=1)
    finally:
        stranger.close()


def test_sign_and_send_treasury_transfer(rpc: RpcChain, served: Served) -> None:
    rpc.mint_to(owner=rpc.treasury, currency=Currency.CYX, amount=50_000_000)
    vault_before = rpc.token_balance(rpc.vault_of(Currency.CYX))
    owner = str(Keypair().pubkey())
    sent = rpc.sign_treasury_transfer(
        currency=Currency.CYX, owner=owner, amount=12_345_678, memo="payout:7; weekly"
    )
    assert sent.last_valid_block_height == served.chain.block_height() + VALID_BLOCKS
    assert rpc.statuses([sent.signature]) == [None]  # signed, not sent
    assert rpc.send_raw(sent.raw) == sent.signature
    assert rpc.statuses([sent.signature, str(Signature.new_unique())]) == ["finalized", None]
    assert rpc.token_balance(rpc.token_account_of(owner, Currency.CYX)) == 12_345_678
    assert rpc.token_balance(rpc.vault_of(Currency.CYX)) == vault_before - 12_345_678
    record = rpc.transaction(sent.signature)
    assert record == served.chain.transaction(sent.signature)
    assert record is not None
    assert record.memos == ("payout:7; weekly",)
    assert record.signers == (rpc.treasury,)
    assert record.delta_of(rpc.vault_of(Currency.CYX), rpc.mint_of(Currency.CYX)) == -12_345_678
    with pytest.raises(TransactionRejected, match="AlreadyProcessed"):
        rpc.send_raw(sent.raw)  # the same as the local backend: a duplicate is refused
    memo = rpc.sign_memo("audit")
    assert rpc.send_raw(memo.raw) == memo.signature
    assert rpc.transaction(memo.signature) == served.chain.transaction(memo.signature)


def test_refusals(rpc: RpcChain, served: Served) -> None:
    owner = Keypair()
    rpc.mint_to(owner=str(owner.pubkey()), currency=Currency.USDC, amount=10)
    mint = Pubkey.from_string(rpc.mint_of(Currency.USDC))
    bh, _ = rpc.latest_blockhash()
    ix = tokens.transfer_ix(
        source_owner=owner.pubkey(),
        dest_owner=Pubkey.from_string(rpc.treasury),
        mint=mint,
        amount=11,
    )
    raw = bytes(tokens.sign([ix], [owner], bh))
    with pytest.raises(TransactionRejected, match="custom program error: 0x1"):
        rpc.send_raw(raw)
    assert rpc.token_balance(rpc.token_account_of(str(owner.pubkey()), Currency.USDC)) == 10
    tampered = bytearray(rpc.sign_memo("x").raw)
    tampered[-1] ^= 0xFF
    with pytest.raises(TransactionRejected, match="SignatureVerificationFailure"):
        rpc.send_raw(bytes(tampered))
    with pytest.raises(InvalidInput):
        rpc.send_raw(b"not a transaction")


def test_blockhash_expired(rpc: RpcChain, served: Served) -> None:
    sent = rpc.sign_memo("too late")
    served.time.advance(served.settings.chain_blockhash_ttl_seconds + 1)
    with pytest.raises(BlockhashExpired):
        rpc.send_raw(sent.raw)
    assert rpc.statuses([sent.signature]) == [None]
    fresh = rpc.sign_memo("on time")
    assert rpc.send_raw(fresh.raw) == fresh.signature


def test_signatures_for_reference_keys_and_paging(
    rpc: RpcChain, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    payer = Keypair()
    rpc.mint_to(owner=str(payer.pubkey()), currency=Currency.USDC, amount=10_000_000)
    mint = Pubkey.from_string(rpc.mint_of(Currency.USDC))
    treasury = Pubkey.from_string(rpc.treasury)
    reference = Keypair().pubkey()  # a Solana Pay reference: read-only, non-signer key
    sigs = []
    for n in range(5):
        bh, _ = rpc.latest_blockhash()
        ixs = [
            tokens.transfer_ix(
                source_owner=payer.pubkey(),
                dest_owner=treasury,
                mint=mint,
                amount=n + 1,
                references=(reference,),
            ),
            tokens.memo_ix(f"deposit {n}; [x]", payer.pubkey()),
        ]
        sigs.append(rpc.send_raw(bytes(tokens.sign(ixs, [payer], bh))))
    ref = str(reference)
    local = served.chain
    found = rpc.signatures_for(ref)
    assert [i.signature for i in found] == sigs[::-1]
    assert found == local.signatures_for(ref)
    assert found[0].memo == "deposit 4; [x]"
    assert found[0].status == "finalized"
    monkeypatch.setattr(rpc_module, "HISTORY_PAGE", 2)  # force paging through before=
    for kwargs in (
        {},
        {"limit": 3},
        {"until": sigs[1]},
        {"before": sigs[3]},
        {"before": sigs[4], "until": sigs[0], "limit": 2},
    ):
        assert rpc.signatures_for(ref, **kwargs) == local.signatures_for(ref, **kwargs), kwargs
    record = rpc.transaction(sigs[2])
    assert record == local.transaction(sigs[2])
    assert record is not None
    assert ref in record.account_keys
    assert record.delta_of(rpc.vault_of(Currency.USDC), str(mint)) == 3
    assert rpc.transaction(str(Signature.new_unique())) is None


def test_statuses_in_batches(rpc: RpcChain) -> None:
    sent = rpc.sign_memo("batch")
    rpc.send_raw(sent.raw)
    unknown = [str(Signature.new_unique()) for _ in range(300)]
    out = rpc.statuses([*unknown, sent.signature])
    assert out == [None] * 300 + ["finalized"]
    assert rpc.statuses([]) == []


def test_parse_memos() -> None:
    assert parse_memos(None) is None
    assert parse_memos("[7] order-1") == "order-1"
    assert parse_memos("[4] a; b; [2] hi") == "a; b; hi"
    assert parse_memos("[5] é€") == "é€"  # lengths count bytes
    assert parse_memos("free text") == "free text"


# ---------------------------------------------------------------- unavailability


def test_dead_url_is_unavailable_quickly(served: Served) -> None:
    dead = RpcChain(
        url=f"http://127.0.0.1:{_closed_port()}", treasury_keypair=Keypair(), mints=_mints(served)
    )
    try:
        start = time.monotonic()
        with pytest.raises(ChainUnavailable, match="cannot be reached"):
            dead.block_height()
        assert time.monotonic() - start < 10
    finally:
        dead.close()


def test_retries_5xx_then_gives_up(served: Served) -> None:
    hits: list[str] = []

    async def flaky(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        hits.append(scope["path"])
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b"busy"})

    url, stop = serve_app(flaky)
    chain = RpcChain(
        url=url, treasury_keypair=Keypair(), mints=_mints(served), attempts=3, backoff=0.05
    )
    try:
        with pytest.raises(ChainUnavailable, match="HTTP 503"):
            chain.sol_balance(chain.treasury)
        assert len(hits) == 3
    finally:
        chain.close()
        stop()


def test_not_found_endpoint_is_not_retried(served: Served) -> None:
    chain = RpcChain(url=f"{served.url}/nope", treasury_keypair=Keypair(), mints=_mints(served))
    try:
        start = time.monotonic()
        with pytest.raises(ChainUnavailable, match=r"HTTP 40[45]"):
            chain.block_height()
        assert time.monotonic() - start < 2
    finally:
        chain.close()


# ---------------------------------------------------------------- configuration


def test_from_settings_errors(served: Served, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CYXWIZ_CHAIN_RPC_URL"):
        RpcChain.from_settings(rpc_settings(served, chain_rpc_url=None))
    with pytest.raises(ConfigError, match="CYXWIZ_CHAIN_CYX_MINT"):
        RpcChain.from_settings(rpc_settings(served, chain_cyx_mint=None))
    with pytest.raises(ConfigError, match="not a Solana address"):
        RpcChain.from_settings(rpc_settings(served, chain_usdc_mint="nope"))
    missing = tmp_path / "none.json"
    with pytest.raises(ConfigError, match="import-treasury"):
        RpcChain.from_settings(rpc_settings(served, chain_treasury_keypair=missing))
    sealed = json.loads((served.settings.resolved_chain_dir / "treasury.json").read_text())
    copy = tmp_path / "treasury.json"
    copy.write_text(json.dumps(sealed))
    other = Settings(
        data_dir=tmp_path / "other",
        master_key=base64.b64encode(os.urandom(32)).decode(),
        chain_backend=ChainBackend.rpc,
        chain_rpc_url=served.rpc_url,
        chain_usdc_mint=served.chain.mint_of(Currency.USDC),
        chain_cyx_mint=served.chain.mint_of(Currency.CYX),
        chain_treasury_keypair=copy,
    )
    with pytest.raises(ConfigError, match="not configured"):
        RpcChain.from_settings(other)


def test_explicit_treasury_path(served: Served, tmp_path: Path) -> None:
    from cyxwiz.chain import treasury

    kp = Keypair()
    path = tmp_path / "sealed.json"
    path.write_text(json.dumps(treasury.seal(kp, served.settings.master_keys)))
    chain = RpcChain.from_settings(rpc_settings(served, chain_treasury_keypair=path))
    try:
        assert chain.treasury == str(kp.pubkey())
        assert chain.commitment == "finalized"
        assert chain.block_height() == served.chain.block_height()
    finally:
        chain.close()


def test_blockhash_helpers_match(rpc: RpcChain) -> None:
    blockhash, last_valid = rpc.latest_blockhash()
    assert Hash.from_string(blockhash)
    assert last_valid == rpc.block_height() + VALID_BLOCKS


# ---------------------------------------------------------------- the CLI


def test_cli_import_treasury_and_info(served: Served, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cyxwiz.cli.main import app

    runner = CliRunner()
    kp = Keypair()
    keyfile = tmp_path / "id.json"
    tokens.write_keypair(keyfile, kp)
    master = served.settings.master_key
    assert master is not None
    env = {
        "CYXWIZ_DATA_DIR": str(tmp_path / "ops"),
        "CYXWIZ_MASTER_KEY": master.get_secret_value(),
        "CYXWIZ_CHAIN_BACKEND": "rpc",
        "CYXWIZ_CHAIN_RPC_URL": served.rpc_url,
        "CYXWIZ_CHAIN_USDC_MINT": served.chain.mint_of(Currency.USDC),
        "CYXWIZ_CHAIN_CYX_MINT": served.chain.mint_of(Currency.CYX),
    }
    r = runner.invoke(app, ["chain", "info"], env=env)
    assert r.exit_code == 2
    assert "import-treasury" in r.output
    r = runner.invoke(app, ["chain", "import-treasury", str(keyfile)], env=env)
    assert r.exit_code == 0, r.output
    sealed = tmp_path / "ops" / "chain" / "treasury.json"
    assert str(kp.pubkey()) in r.output
    assert sealed.stat().st_mode & 0o777 == 0o600
    assert json.dumps(list(bytes(kp))) not in sealed.read_text()
    r = runner.invoke(app, ["chain", "import-treasury", str(keyfile)], env=env)
    assert r.exit_code == 0
    assert "already sealed" in r.output
    other = tmp_path / "other.json"
    tokens.write_keypair(other, Keypair())
    r = runner.invoke(app, ["chain", "import-treasury", str(other)], env=env)
    assert r.exit_code == 1
    assert "--force" in r.output
    r = runner.invoke(app, ["chain", "import-treasury", str(tmp_path / "missing.json")], env=env)
    assert r.exit_code == 1
    assert "keypair_not_found" in r.output

    r = runner.invoke(app, ["chain", "info"], env=env)
    assert r.exit_code == 0, r.output
    assert "backend:      rpc" in r.output
    assert str(kp.pubkey()) in r.output
    assert served.chain.mint_of(Currency.USDC) in r.output
    vault = tokens.ata(kp.pubkey(), served.chain.mint_of(Currency.CYX))
    assert f"{vault}  0.00 CYX" in r.output

    dead = {**env, "CYXWIZ_CHAIN_RPC_URL": f"http://127.0.0.1:{_closed_port()}"}
    r = runner.invoke(app, ["chain", "info"], env=dead)
    assert r.exit_code == 1
    assert "chain_unavailable" in r.output


def test_cli_info_local(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cyxwiz.cli.main import app

    env = {
        "CYXWIZ_DATA_DIR": str(tmp_path / "dev"),
        "CYXWIZ_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
        "CYXWIZ_CHAIN_BACKEND": "local",
    }
    r = CliRunner().invoke(app, ["chain", "info"], env=env)
    assert r.exit_code == 0, r.output
    assert "backend:      local" in r.output
    assert "USDC  vault:" in r.output


def _closed_port() -> int:
    sock = free_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port
