"""/chain/rpc through solana-py's client (its solders parsers are strict) and raw JSON-RPC."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastapi.testclient import TestClient
from solana.rpc.async_api import AsyncClient
from solana.rpc.core import RPCException
from solana.rpc.models import TokenAccountOpts
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.rpc.errors import (
    RpcCustomErrorFieldless,
    SendTransactionPreflightFailureMessage,
)
from solders.signature import Signature
from solders.transaction import Transaction, VersionedTransaction
from solders.transaction_status import TransactionConfirmationStatus, UiTransaction
from spl.token.constants import TOKEN_PROGRAM_ID

from cyxwiz.chain import tokens
from cyxwiz.chain.local import LocalChain
from cyxwiz.chain.rpc_server import API_VERSION, b58decode, b58encode, handle
from cyxwiz.clock import TestClock
from cyxwiz.config import ChainBackend, Env, Settings
from cyxwiz.db import Database
from cyxwiz.money import Currency
from cyxwiz.storage import BlobStore
from cyxwiz.web.app import create_app
from tests.chain.conftest import Served


def _funded(served: Served, usdc: int = 0) -> Keypair:
    """A new wallet with fee SOL (and USDC when asked), funded by the dev faucet."""
    kp = Keypair()
    if usdc:
        served.chain.mint_to(owner=str(kp.pubkey()), currency=Currency.USDC, amount=usdc)
    else:
        served.chain.airdrop(str(kp.pubkey()), 10**9)
    return kp


def _usdc(served: Served) -> Pubkey:
    return Pubkey.from_string(served.chain.mint_of(Currency.USDC))


def _transfer(
    served: Served, payer: Keypair, to: Pubkey, amount: int, blockhash: Hash, memo: str = ""
) -> Transaction:
    mint = _usdc(served)
    ixs = [
        tokens.create_ata_ix(payer.pubkey(), to, mint),
        tokens.transfer_ix(source_owner=payer.pubkey(), dest_owner=to, mint=mint, amount=amount),
    ]
    if memo:
        ixs.append(tokens.memo_ix(memo, payer.pubkey()))
    return tokens.sign(ixs, [payer], str(blockhash))


def _error(answer: dict[str, Any]) -> dict[str, Any]:
    assert "result" not in answer, answer
    err: dict[str, Any] = answer["error"]
    return err


# ---------------------------------------------------------------- cluster methods


def test_cluster_methods(served: Served) -> None:
    async def run(c: AsyncClient) -> dict[str, Any]:
        return {
            "connected": await c.is_connected(),
            "version": await c.get_version(),
            "genesis": await c.get_genesis_hash(),
            "genesis2": await c.get_genesis_hash(),
            "slot": await c.get_slot(),
            "height": await c.get_block_height(),
            "epoch": await c.get_epoch_info(),
            "blockhash": await c.get_latest_blockhash(),
            "rent": await c.get_minimum_balance_for_rent_exemption(165),
            "fees": await c.get_recent_prioritization_fees(),
        }

    out = served.solana(run)
    chain = served.chain
    assert out["connected"] is True
    assert out["version"].value.solana_core == API_VERSION
    assert out["genesis"].value == out["genesis2"].value
    assert out["slot"].value == out["height"].value == chain.block_height()
    assert out["epoch"].value.absolute_slot == chain.block_height()
    bh = out["blockhash"]
    assert (str(bh.value.blockhash), bh.value.last_valid_block_height) == chain.latest_blockhash()
    assert bh.context.slot == chain.block_height()
    assert bh.context.api_version == API_VERSION
    assert out["rent"].value == chain.rent_exempt(165)
    assert out["fees"].value == []


def test_is_blockhash_valid_and_fee_for_message(served: Served) -> None:
    current, _ = served.chain.latest_blockhash()
    ok = served.call("isBlockhashValid", current)["result"]
    assert ok["value"] is True
    assert ok["context"]["slot"] == served.chain.block_height()
    assert served.call("isBlockhashValid", str(Hash.new_unique()))["result"]["value"] is False
    payer = Keypair()
    tx = tokens.sign([tokens.memo_ix("fee?", payer.pubkey())], [payer], current)

    async def fee(c: AsyncClient) -> Any:
        return await c.get_fee_for_message(VersionedTransaction.from_bytes(bytes(tx)).message)

    assert served.solana(fee).value == 5000
    stale = tokens.sign([tokens.memo_ix("x", payer.pubkey())], [payer], str(Hash.new_unique()))
    msg = base64.b64encode(bytes(stale.message)).decode()
    assert served.call("getFeeForMessage", msg)["result"]["value"] is None


# ---------------------------------------------------------------- a wallet's round trip


def test_wallet_flow_through_solana_py(served: Served) -> None:
    """Airdrop, balances, a token transfer sent and confirmed, history, the transaction."""
    alice = _funded(served, usdc=5_000_000)
    bob = Keypair()
    mint = _usdc(served)
    alice_ata = Pubkey.from_string(tokens.ata(alice.pubkey(), mint))
    bob_ata = Pubkey.from_string(tokens.ata(bob.pubkey(), mint))

    async def run(c: AsyncClient) -> dict[str, Any]:
        out: dict[str, Any] = {}
        drop = await c.request_airdrop(bob.pubkey(), 2 * 10**9)
        out["drop_status"] = await c.get_signature_statuses([drop.value])
        out["bob_sol"] = await c.get_balance(bob.pubkey())
        bh = (await c.get_latest_blockhash()).value
        tx = _transfer(served, alice, bob.pubkey(), 1_250_000, bh.blockhash, memo="order-1")
        sent = await c.send_raw_transaction(bytes(tx))
        out["sig"] = sent.value
        out["confirm"] = await c.confirm_transaction(
            sent.value, last_valid_block_height=bh.last_valid_block_height
        )
        out["statuses"] = await c.get_signature_statuses(
            [sent.value, Signature.new_unique()], search_transaction_history=True
        )
        out["bob_tokens"] = await c.get_token_account_balance(bob_ata)
        out["alice_tokens"] = await c.get_token_account_balance(alice_ata)
        out["history"] = await c.get_signatures_for_address(bob.pubkey())
        out["tx"] = await c.get_transaction(sent.value, "json")
        out["tx64"] = await c.get_transaction(sent.value, "base64")
        out["raw"] = bytes(tx)
        return out

    out = served.solana(run)
    drop = out["drop_status"].value[0]
    assert drop.confirmation_status == TransactionConfirmationStatus.Finalized
    assert out["bob_sol"].value == 2 * 10**9
    status = out["statuses"].value
    assert status[1] is None
    assert status[0].confirmation_status == TransactionConfirmationStatus.Finalized
    assert status[0].confirmations is None
    assert status[0].err is None
    assert out["bob_tokens"].value.amount == "1250000"
    assert out["bob_tokens"].value.ui_amount_string == "1.25"
    assert out["bob_tokens"].value.decimals == 6
    assert out["alice_tokens"].value.amount == "3750000"
    [item] = out["history"].value
    assert item.signature == out["sig"]
    assert item.memo == "[7] order-1"
    assert item.confirmation_status == TransactionConfirmationStatus.Finalized
    assert item.err is None
    assert item.slot == status[0].slot

    found = out["tx"].value
    assert found.slot == item.slot
    meta = found.transaction.meta
    ui = found.transaction.transaction
    assert isinstance(ui, UiTransaction)
    keys = [str(k) for k in ui.message.account_keys]
    assert keys[0] == str(alice.pubkey())
    assert ui.signatures == [out["sig"]]
    assert ui.message.header.num_required_signatures == 1
    memo_ix = ui.message.instructions[-1]
    assert keys[memo_ix.program_id_index] == tokens.MEMO_PROGRAM
    assert b58decode(memo_ix.data) == b"order-1"
    assert meta.err is None
    assert meta.fee == 5000
    assert meta.pre_balances[0] - meta.post_balances[0] >= 5000  # fee (+ rent of bob's ATA)
    assert any("Memo" in line for line in meta.log_messages or [])
    assert (meta.compute_units_consumed or 0) > 0
    pre = {(b.account_index, b.ui_token_amount.amount) for b in meta.pre_token_balances}
    post = {(b.account_index, b.ui_token_amount.amount) for b in meta.post_token_balances}
    a, b = keys.index(str(alice_ata)), keys.index(str(bob_ata))
    assert pre == {(a, "5000000")}  # bob's account did not exist before
    assert post == {(a, "3750000"), (b, "1250000")}
    entry = meta.post_token_balances[0]
    assert str(entry.mint) == str(mint)
    assert entry.program_id == TOKEN_PROGRAM_ID
    assert {str(x.owner) for x in meta.post_token_balances} == {
        str(alice.pubkey()),
        str(bob.pubkey()),
    }
    binary = out["tx64"].value.transaction.transaction
    assert isinstance(binary, VersionedTransaction)
    assert bytes(binary) == out["raw"]


def test_send_base58_and_duplicate(served: Served) -> None:
    sent = served.chain.sign_memo("base58 please")
    answer = served.call("sendTransaction", b58encode(sent.raw))  # base58 is the default
    assert answer["result"] == sent.signature
    again = _error(served.call("sendTransaction", b58encode(sent.raw)))
    assert again["code"] == -32002
    assert again["data"]["err"] == "AlreadyProcessed"
    raw64 = base64.b64encode(sent.raw).decode()
    dup = _error(served.call("sendTransaction", raw64, {"encoding": "base64"}))
    assert (
        dup["message"]
        == "Transaction simulation failed: This transaction has already been processed"
    )


def test_preflight_failure_changes_nothing(served: Served) -> None:
    alice = _funded(served, usdc=1_000_000)
    ata = served.chain.token_account_of(str(alice.pubkey()), Currency.USDC)
    history = served.chain.signatures_for(str(alice.pubkey()))

    async def run(c: AsyncClient) -> Any:
        bh = (await c.get_latest_blockhash()).value.blockhash
        tx = _transfer(served, alice, Keypair().pubkey(), 2_000_000, bh)
        with pytest.raises(RPCException) as info:
            await c.send_raw_transaction(bytes(tx))
        return info.value.args[0]

    err = served.solana(run)
    assert isinstance(err, SendTransactionPreflightFailureMessage)
    assert "custom program error: 0x1" in err.message
    assert (
        str(err.data.err)
        == "TransactionErrorInstructionError((1, Tagged(InstructionErrorCustom(1))))"
    )
    assert any("insufficient funds" in line for line in err.data.logs or [])
    assert served.chain.token_balance(ata) == 1_000_000
    assert served.chain.signatures_for(str(alice.pubkey())) == history


def test_signature_verification_failure(served: Served) -> None:
    raw = bytearray(served.chain.sign_memo("tampered").raw)
    raw[-1] ^= 0xFF

    async def run(c: AsyncClient) -> Any:
        with pytest.raises(RPCException) as info:
            await c.send_raw_transaction(bytes(raw))
        return info.value.args[0]

    assert served.solana(run) == RpcCustomErrorFieldless.TransactionSignatureVerificationFailure
    answer = _error(
        served.call("sendTransaction", base64.b64encode(raw).decode(), {"encoding": "base64"})
    )
    assert answer == {"code": -32003, "message": "Transaction signature verification failure"}


def test_expired_blockhash_is_refused(served: Served) -> None:
    sent = served.chain.sign_memo("late")
    served.time.advance(served.settings.chain_blockhash_ttl_seconds + 1)
    err = _error(
        served.call("sendTransaction", base64.b64encode(sent.raw).decode(), {"encoding": "base64"})
    )
    assert err["code"] == -32002
    assert err["message"] == "Transaction simulation failed: Blockhash not found"
    assert err["data"]["err"] == "BlockhashNotFound"
    assert (
        served.call(
            "isBlockhashValid",
            str(VersionedTransaction.from_bytes(sent.raw).message.recent_blockhash),
        )["result"]["value"]
        is False
    )


# ---------------------------------------------------------------- accounts


def test_account_reads(served: Served) -> None:
    alice = _funded(served, usdc=2_000_001)
    mint = _usdc(served)
    ata = Pubkey.from_string(tokens.ata(alice.pubkey(), mint))
    missing = Keypair().pubkey()

    async def run(c: AsyncClient) -> dict[str, Any]:
        return {
            "b64": await c.get_account_info(ata),
            "b58": await c.get_account_info(ata, encoding="base58"),
            "parsed": await c.get_account_info_json_parsed(ata),
            "mint": await c.get_account_info_json_parsed(mint),
            "wallet_parsed": await c.get_account_info_json_parsed(alice.pubkey()),
            "missing": await c.get_account_info(missing),
            "multi": await c.get_multiple_accounts([ata, alice.pubkey(), missing]),
            "multi_parsed": await c.get_multiple_accounts_json_parsed([ata, missing]),
            "sol": await c.get_balance(alice.pubkey()),
            "sol_missing": await c.get_balance(missing),
            "by_mint": await c.get_token_accounts_by_owner(
                alice.pubkey(), TokenAccountOpts(mint=mint)
            ),
            "by_program": await c.get_token_accounts_by_owner_json_parsed(
                alice.pubkey(), TokenAccountOpts(program_id=TOKEN_PROGRAM_ID)
            ),
            "other_mint": await c.get_token_accounts_by_owner(
                alice.pubkey(),
                TokenAccountOpts(mint=Pubkey.from_string(served.chain.mint_of(Currency.CYX))),
            ),
            "supply": await c.get_token_supply(mint),
        }

    out = served.solana(run)
    live = served.chain.account(str(ata))
    assert live is not None
    assert out["b64"].value.data == bytes(live.data)
    assert out["b58"].value.data == bytes(live.data)
    assert out["b64"].value.owner == TOKEN_PROGRAM_ID
    assert out["b64"].value.lamports == live.lamports
    parsed = out["parsed"].value.data
    assert parsed.program == "spl-token"
    assert parsed.space == 165
    info = parsed.parsed["info"]
    assert parsed.parsed["type"] == "account"
    assert info["mint"] == str(mint)
    assert info["owner"] == str(alice.pubkey())
    assert info["state"] == "initialized"
    assert info["tokenAmount"] == {
        "amount": "2000001",
        "decimals": 6,
        "uiAmount": 2.000001,
        "uiAmountString": "2.000001",
    }
    mint_info = out["mint"].value.data.parsed
    assert mint_info["type"] == "mint"
    assert mint_info["info"]["mintAuthority"] == served.chain.treasury
    assert mint_info["info"]["decimals"] == 6
    assert out["wallet_parsed"].value.data == b""  # no parser: base64 fallback
    assert out["missing"].value is None
    multi = out["multi"].value
    assert multi[0].data == bytes(live.data)
    assert multi[1].lamports == served.chain.sol_balance(str(alice.pubkey()))
    assert multi[2] is None
    assert out["multi_parsed"].value[1] is None
    assert out["sol"].value == served.chain.sol_balance(str(alice.pubkey()))
    assert out["sol_missing"].value == 0
    [keyed] = out["by_mint"].value
    assert keyed.pubkey == ata
    assert keyed.account.data == bytes(live.data)
    [keyed_parsed] = out["by_program"].value
    assert keyed_parsed.account.data.parsed["info"]["tokenAmount"]["amount"] == "2000001"
    assert out["other_mint"].value == []
    live_mint = served.chain.account(str(mint))
    assert live_mint is not None
    supply = int.from_bytes(bytes(live_mint.data)[36:44], "little")
    assert out["supply"].value.amount == str(supply)
    assert mint_info["info"]["supply"] == str(supply)


def test_data_slice_and_raw_account_errors(served: Served) -> None:
    vault = served.chain.vault_of(Currency.USDC)
    sliced = served.call(
        "getAccountInfo", vault, {"encoding": "base64", "dataSlice": {"offset": 32, "length": 32}}
    )
    data = base64.b64decode(sliced["result"]["value"]["data"][0])
    assert str(Pubkey.from_bytes(data)) == served.chain.treasury
    assert sliced["result"]["value"]["space"] == 165
    wallet = str(Keypair().pubkey())
    assert _error(served.call("getTokenAccountBalance", wallet))["code"] == -32602
    assert _error(served.call("getTokenAccountBalance", served.chain.treasury))["message"] == (
        "Invalid param: not a Token account"
    )
    assert (
        _error(served.call("getAccountInfo", vault, {"encoding": "base64+zstd"}))["code"] == -32602
    )
    assert _error(served.call("getTokenSupply", served.chain.treasury))["code"] == -32602
    assert _error(served.call("getTokenAccountsByOwner", wallet, {}))["code"] == -32602
    assert (
        _error(
            served.call("getTokenAccountsByOwner", wallet, {"programId": str(Keypair().pubkey())})
        )["code"]
        == -32602
    )


# ---------------------------------------------------------------- history


def test_signatures_for_address_paging(served: Served) -> None:
    alice = _funded(served, usdc=10_000_000)
    treasury = Pubkey.from_string(served.chain.treasury)
    sigs = []
    for n in range(4):
        bh, _ = served.chain.latest_blockhash()
        tx = _transfer(served, alice, treasury, n + 1, Hash.from_string(bh), memo=f"n{n}; ok")
        sigs.append(served.chain.send_raw(bytes(tx)))
    newest_first = sigs[::-1]
    who = alice.pubkey()

    async def run(c: AsyncClient) -> dict[str, Any]:
        return {
            "all": await c.get_signatures_for_address(who),
            "two": await c.get_signatures_for_address(who, limit=2),
            "before": await c.get_signatures_for_address(
                who, before=Signature.from_string(sigs[2]), limit=2
            ),
            "until": await c.get_signatures_for_address(who, until=Signature.from_string(sigs[1])),
        }

    out = served.solana(run)
    assert [str(i.signature) for i in out["all"].value][:4] == newest_first
    assert [str(i.signature) for i in out["two"].value] == newest_first[:2]
    assert [str(i.signature) for i in out["before"].value] == [sigs[1], sigs[0]]
    assert [str(i.signature) for i in out["until"].value] == [sigs[3], sigs[2]]
    assert out["all"].value[0].memo == "[6] n3; ok"
    assert out["all"].value[0].block_time is not None
    assert (
        _error(served.call("getSignaturesForAddress", str(who), {"limit": 1001}))["code"] == -32602
    )
    assert (
        _error(served.call("getSignaturesForAddress", str(who), {"before": "nope"}))["code"]
        == -32602
    )


def test_get_transaction_unknown_and_versioned(served: Served) -> None:
    assert served.call("getTransaction", str(Signature.new_unique()))["result"] is None
    payer = _funded(served)
    bh, _ = served.chain.latest_blockhash()
    msg = MessageV0.try_compile(
        payer.pubkey(), [tokens.memo_ix("v0", payer.pubkey())], [], Hash.from_string(bh)
    )
    tx = VersionedTransaction(msg, [payer])
    sig = served.chain.send_raw(bytes(tx))
    err = _error(served.call("getTransaction", sig, {"encoding": "json"}))
    assert err["code"] == -32015

    async def run(c: AsyncClient) -> Any:
        return await c.get_transaction(
            Signature.from_string(sig), "json", max_supported_transaction_version=0
        )

    found = served.solana(run).value
    assert found is not None
    assert str(found.transaction.version) != "legacy"
    ui = found.transaction.transaction
    assert isinstance(ui, UiTransaction)
    assert ui.message.address_table_lookups == []
    assert _error(served.call("getTransaction", sig, {"encoding": "jsonParsed"}))["code"] == -32602


# ---------------------------------------------------------------- JSON-RPC envelope


def test_json_rpc_errors(served: Served) -> None:
    parse = served.post(content=b"{not json")
    assert parse.status_code == 200
    assert parse.json() == {
        "jsonrpc": "2.0",
        "error": {"code": -32700, "message": "Parse error"},
        "id": None,
    }
    for bad in (
        [],
        7,
        "x",
        {"jsonrpc": "1.0", "id": 1, "method": "getSlot"},
        {"jsonrpc": "2.0", "id": 1},
    ):
        answer = served.post(bad).json()
        assert answer["error"]["code"] == -32600, bad
    assert _error(served.call("getNothing"))["code"] == -32601
    assert _error(served.call("getBalance"))["code"] == -32602  # missing param
    assert _error(served.call("getBalance", "not-a-key"))["code"] == -32602
    assert (
        _error(served.call("getBalance", served.chain.treasury, {"commitment": "soon"}))["code"]
        == -32602
    )
    params_object = served.post(
        {"jsonrpc": "2.0", "id": 2, "method": "getBalance", "params": {"x": 1}}
    )
    assert params_object.json()["error"]["code"] == -32602
    too_far = _error(served.call("getSlot", {"minContextSlot": 10**12}))
    assert too_far["code"] == -32016
    assert _error(served.call("sendTransaction", "!!", {"encoding": "base64"}))["code"] == -32602
    garbage = base64.b64encode(b"\x01" + b"\x00" * 100).decode()
    assert _error(served.call("sendTransaction", garbage, {"encoding": "base64"}))["code"] == -32602
    too_big = base64.b64encode(b"\x00" * 1300).decode()
    assert (
        "too large"
        in _error(served.call("sendTransaction", too_big, {"encoding": "base64"}))["message"]
    )
    assert _error(served.call("requestAirdrop", served.chain.treasury, 0))["code"] == -32602
    assert _error(served.call("getSignatureStatuses", ["x"] * 257))["code"] == -32602


def test_batches_and_notifications(served: Served) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": "a", "method": "getSlot"},
        {"jsonrpc": "2.0", "method": "getHealth"},  # a notification: no answer
        {"jsonrpc": "2.0", "id": 3, "method": "nope"},
        {"jsonrpc": "2.0", "id": 4, "method": "getBalance", "params": [served.chain.treasury]},
        5,
    ]
    answers = served.post(batch).json()
    assert [a["id"] for a in answers] == ["a", 3, 4, None]
    assert answers[0]["result"] == served.chain.block_height()
    assert answers[1]["error"]["code"] == -32601
    assert answers[2]["result"]["value"] == served.chain.sol_balance(served.chain.treasury)
    assert answers[3]["error"]["code"] == -32600
    only = served.post([{"jsonrpc": "2.0", "method": "getHealth"}])
    assert only.status_code == 204
    assert served.post({"jsonrpc": "2.0", "method": "getHealth"}).status_code == 204
    assert (
        served.post([{"jsonrpc": "2.0", "id": 1, "method": "getHealth"}] * 257).json()["error"][
            "code"
        ]
        == -32600
    )


def test_handle_is_pure(served: Served) -> None:
    """The dispatcher works without HTTP, on decoded JSON or raw bytes."""
    req = {"jsonrpc": "2.0", "id": 9, "method": "getHealth"}
    assert handle(served.chain, req) == {"jsonrpc": "2.0", "result": "ok", "id": 9}
    assert handle(served.chain, b'{"jsonrpc":"2.0","id":9,"method":"getHealth"}')["result"] == "ok"


# ---------------------------------------------------------------- the route


def test_body_limit(served: Served) -> None:
    huge = (
        b'{"jsonrpc":"2.0","id":1,"method":"getHealth","params":["'
        + b"x" * (served.settings.max_json_bytes + 1)
        + b'"]}'
    )
    r = served.post(content=huge)
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"


def test_openapi_documents_the_endpoint(served: Served) -> None:
    import httpx

    spec = httpx.get(f"{served.url}/openapi.json", timeout=30).json()
    op = spec["paths"]["/chain/rpc"]["post"]
    assert "getLatestBlockhash" in op["description"]
    assert "requestBody" in op


@pytest.mark.parametrize(
    "overrides",
    [{"chain_serve_rpc": False}, {"chain_backend": ChainBackend.rpc}, {"env": Env.production}],
    ids=["serve-off", "rpc-backend", "production"],
)
def test_not_served_outside_dev_local(
    overrides: dict[str, Any],
    settings: Settings,
    db: Database,
    blobs: BlobStore,
    clock: TestClock,
    local_chain: LocalChain,
) -> None:
    s = settings.model_copy(update=overrides)
    app = create_app(s, database=db, blobs=blobs, clock=clock, chain=local_chain)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/chain/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "getHealth"})
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "chain_rpc_disabled"
