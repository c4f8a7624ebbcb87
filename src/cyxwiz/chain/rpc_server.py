"""Solana JSON-RPC 2.0 over a ``LocalChain``: the subset wallets and the rpc backend use.

``handle(chain, payload)`` is pure (no HTTP): ``payload`` is the raw body (bytes/str) or
already-decoded JSON; the answer is the JSON value to send back (``None`` when every request
was a notification). Results have the shapes a real cluster gives, so solana-py, solders and
wallets parse them unchanged: methods the real API wraps answer ``{"context": {"slot",
"apiVersion"}, "value": ...}``; errors are JSON-RPC error objects with Solana's codes.

Deviations from a real cluster, all consequences of a single-node chain that refuses failed
transactions (see ``cyxwiz.chain.local``):

* every landed transaction is ``finalized`` at once (``confirmations`` is null); commitment
  parameters are accepted and validated but change nothing;
* a transaction that fails execution is refused with -32002 even with ``skipPreflight`` (it
  never lands, so there is no failed transaction to look up later);
* ``requestAirdrop`` answers a random signature-like id; this process remembers it (bounded)
  so ``getSignatureStatuses`` reports it finalized, but it has no ``getTransaction`` record;
* ``getTokenAccountsByOwner`` scans the chain's persisted ``accounts`` table (a read-only
  SQLite connection; every landed transaction updates that table before it is acknowledged),
  then reads each match from the live chain. Fine for a dev chain; no index is kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import secrets
import sqlite3
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from solders.account import Account
from solders.hash import Hash
from solders.message import Message, MessageV0, from_bytes_versioned
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import VersionedTransaction

from cyxwiz.chain import tokens
from cyxwiz.chain.interfaces import BlockhashExpired, ChainError, TransactionRejected
from cyxwiz.errors import DomainError

if TYPE_CHECKING:
    from cyxwiz.chain.local import LocalChain

log = logging.getLogger("cyxwiz.chain.rpc_server")

API_VERSION = "2.2.0"
FEATURE_SET = 3_294_202_862
LAMPORTS_PER_SIGNATURE = 5_000
MAX_BATCH = 256
MAX_MULTIPLE_ACCOUNTS = 100
MAX_SIGNATURE_STATUSES = 256
MAX_SIGNATURES_LIMIT = 1_000
PACKET_DATA_SIZE = 1_232
MAX_AIRDROP_IDS = 10_000
MINT_LEN = 82

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
PREFLIGHT_FAILURE = -32002
SIGNATURE_VERIFICATION_FAILURE = -32003
UNSUPPORTED_TRANSACTION_VERSION = -32015
MIN_CONTEXT_SLOT_NOT_REACHED = -32016

COMMITMENTS = frozenset({"processed", "confirmed", "finalized"})
ACCOUNT_ENCODINGS = frozenset({"base64", "base58", "jsonParsed"})


class RpcError(Exception):
    """A JSON-RPC error object (code, message, optional data)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out


def invalid_params(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, message)


# ---------------------------------------------------------------- base58

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 (what Solana uses for keys, signatures and instruction data)."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """The bytes of a base58 string (ValueError on a character outside the alphabet)."""
    n = 0
    for ch in text:
        digit = _B58_INDEX.get(ch)
        if digit is None:
            raise ValueError(f"invalid base58 character {ch!r}")
        n = n * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


# ---------------------------------------------------------------- entry point


def handle(chain: LocalChain, payload: Any) -> Any:
    """Answer one JSON-RPC request or a batch (see module docstring)."""
    if isinstance(payload, bytes | bytearray | memoryview | str):
        try:
            payload = json.loads(bytes(payload) if not isinstance(payload, str) else payload)
        except (ValueError, UnicodeDecodeError):
            return _response(None, error=RpcError(PARSE_ERROR, "Parse error"))
    if isinstance(payload, list):
        if not payload:
            return _response(None, error=RpcError(INVALID_REQUEST, "Invalid request"))
        if len(payload) > MAX_BATCH:
            return _response(
                None, error=RpcError(INVALID_REQUEST, f"batch larger than {MAX_BATCH} requests")
            )
        answers = [a for a in (_one(chain, item) for item in payload) if a is not None]
        return answers or None
    return _one(chain, payload)


def _response(rid: Any, *, result: Any = None, error: RpcError | None = None) -> dict[str, Any]:
    if error is not None:
        return {"jsonrpc": "2.0", "error": error.as_dict(), "id": rid}
    return {"jsonrpc": "2.0", "result": result, "id": rid}


def _one(chain: LocalChain, req: Any) -> dict[str, Any] | None:
    if not isinstance(req, dict):
        return _response(None, error=RpcError(INVALID_REQUEST, "Invalid request"))
    rid = req.get("id")
    notification = "id" not in req
    if not isinstance(rid, str | int | None) or isinstance(rid, bool):
        return _response(None, error=RpcError(INVALID_REQUEST, "Invalid request"))
    method = req.get("method")
    params = req.get("params", [])
    if req.get("jsonrpc") != "2.0" or not isinstance(method, str):
        return _response(rid, error=RpcError(INVALID_REQUEST, "Invalid request"))
    if params is None:
        params = []
    if not isinstance(params, list):
        return _response(rid, error=invalid_params("Invalid params: expected an array"))
    fn = METHODS.get(method)
    if fn is None:
        answer = _response(rid, error=RpcError(METHOD_NOT_FOUND, "Method not found"))
    else:
        try:
            answer = _response(rid, result=fn(chain, params))
        except RpcError as exc:
            answer = _response(rid, error=exc)
        except DomainError as exc:  # e.g. a malformed address from a chain helper
            answer = _response(rid, error=invalid_params(f"Invalid param: {exc.detail}"))
        except Exception:
            log.exception("JSON-RPC %s failed", method)
            answer = _response(rid, error=RpcError(INTERNAL_ERROR, "Internal error"))
    return None if notification else answer


# ---------------------------------------------------------------- params


def _param(params: list[Any], index: int, default: Any = None) -> Any:
    return params[index] if len(params) > index else default


def _config(params: list[Any], index: int, chain: LocalChain) -> dict[str, Any]:
    cfg = _param(params, index)
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise invalid_params("Invalid params: expected a configuration object")
    commitment = cfg.get("commitment", cfg.get("preflightCommitment"))
    if commitment is not None and commitment not in COMMITMENTS:
        raise invalid_params(f"Invalid params: unknown commitment {commitment!r}")
    min_slot = cfg.get("minContextSlot")
    if min_slot is not None:
        if not isinstance(min_slot, int):
            raise invalid_params("Invalid params: minContextSlot must be an integer")
        slot = chain.block_height()
        if min_slot > slot:
            raise RpcError(
                MIN_CONTEXT_SLOT_NOT_REACHED,
                "Minimum context slot has not been reached",
                {"contextSlot": slot},
            )
    return cfg


def _pubkey(value: Any) -> Pubkey:
    if not isinstance(value, str):
        raise invalid_params("Invalid param: expected a base58 public key string")
    try:
        return Pubkey.from_string(value)
    except ValueError:
        raise invalid_params("Invalid param: Invalid") from None


def _required(params: list[Any], index: int, what: str) -> Any:
    if len(params) <= index:
        raise invalid_params(f"Invalid params: missing {what}")
    return params[index]


def _context(chain: LocalChain, value: Any) -> dict[str, Any]:
    return {"context": {"slot": chain.block_height(), "apiVersion": API_VERSION}, "value": value}


# ---------------------------------------------------------------- accounts


def _decimals(chain: LocalChain, mint: str) -> int:
    acc = chain.account(mint)
    if acc is None or len(acc.data) != MINT_LEN:
        return tokens.DECIMALS
    return int(bytes(acc.data)[44])


def ui_amount_string(amount: int, decimals: int) -> str:
    """Solana's trimmed decimal string of a token amount ("1.5", "5", "0.000001")."""
    if decimals == 0:
        return str(amount)
    digits = str(amount).rjust(decimals + 1, "0")
    whole, frac = digits[:-decimals], digits[-decimals:].rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def ui_token_amount(amount: int, decimals: int) -> dict[str, Any]:
    # uiAmount is a float because the wire format says so; it is display-only here.
    return {
        "amount": str(amount),
        "decimals": decimals,
        "uiAmount": amount / 10**decimals,
        "uiAmountString": ui_amount_string(amount, decimals),
    }


def _coption_pubkey(data: bytes, offset: int) -> str | None:
    if int.from_bytes(data[offset : offset + 4], "little") == 0:
        return None
    return str(Pubkey.from_bytes(data[offset + 4 : offset + 36]))


def _parsed_token_data(chain: LocalChain, acc: Account) -> dict[str, Any] | None:
    """The ``jsonParsed`` form of an SPL Token account or mint (None for anything else)."""
    if str(acc.owner) != tokens.TOKEN_PROGRAM:
        return None
    data = bytes(acc.data)
    if len(data) == MINT_LEN:
        info: dict[str, Any] = {
            "decimals": data[44],
            "freezeAuthority": _coption_pubkey(data, 46),
            "isInitialized": bool(data[45]),
            "mintAuthority": _coption_pubkey(data, 0),
            "supply": str(int.from_bytes(data[36:44], "little")),
        }
        kind = "mint"
    else:
        state = tokens.parse_token_account(str(acc.owner), data)
        if state is None:
            return None
        decimals = _decimals(chain, state.mint)
        info = {
            "isNative": int.from_bytes(data[109:113], "little") != 0,
            "mint": state.mint,
            "owner": state.owner,
            "state": {0: "uninitialized", 1: "initialized", 2: "frozen"}.get(data[108], "invalid"),
            "tokenAmount": ui_token_amount(state.amount, decimals),
        }
        delegate = _coption_pubkey(data, 72)
        if delegate is not None:
            info["delegate"] = delegate
            info["delegatedAmount"] = ui_token_amount(
                int.from_bytes(data[121:129], "little"), decimals
            )
        close_authority = _coption_pubkey(data, 129)
        if close_authority is not None:
            info["closeAuthority"] = close_authority
        kind = "account"
    return {
        "program": "spl-token",
        "parsed": {"info": info, "type": kind},
        "space": len(data),
    }


def _ui_account(chain: LocalChain, acc: Account, cfg: dict[str, Any]) -> dict[str, Any]:
    encoding = cfg.get("encoding", "base64")
    if encoding not in ACCOUNT_ENCODINGS:
        raise invalid_params(f"Invalid params: unsupported encoding {encoding!r}")
    data = bytes(acc.data)
    ui_data: Any = None
    if encoding == "jsonParsed":
        ui_data = _parsed_token_data(chain, acc)
        encoding = "base64"  # what a cluster falls back to when it has no parser
    if ui_data is None:
        sliced = data
        data_slice = cfg.get("dataSlice")
        if data_slice is not None:
            if not isinstance(data_slice, dict):
                raise invalid_params("Invalid params: dataSlice must be {offset, length}")
            off, length = data_slice.get("offset"), data_slice.get("length")
            if not isinstance(off, int) or not isinstance(length, int) or off < 0 or length < 0:
                raise invalid_params("Invalid params: dataSlice must be {offset, length}")
            sliced = data[off : off + length]
        if encoding == "base58":
            ui_data = [b58encode(sliced), "base58"]
        else:
            ui_data = [base64.b64encode(sliced).decode(), "base64"]
    return {
        "data": ui_data,
        "executable": bool(acc.executable),
        "lamports": int(acc.lamports),
        "owner": str(acc.owner),
        "rentEpoch": int(acc.rent_epoch),
        "space": len(data),
    }


def _get_account_info(chain: LocalChain, params: list[Any]) -> Any:
    key = _pubkey(_required(params, 0, "the account address"))
    cfg = _config(params, 1, chain)
    acc = chain.account(str(key))
    return _context(chain, None if acc is None else _ui_account(chain, acc, cfg))


def _get_multiple_accounts(chain: LocalChain, params: list[Any]) -> Any:
    keys = _required(params, 0, "the account addresses")
    if not isinstance(keys, list):
        raise invalid_params("Invalid params: expected an array of addresses")
    if len(keys) > MAX_MULTIPLE_ACCOUNTS:
        raise invalid_params(f"Too many inputs provided; max {MAX_MULTIPLE_ACCOUNTS}")
    cfg = _config(params, 1, chain)
    out = []
    for k in keys:
        acc = chain.account(str(_pubkey(k)))
        out.append(None if acc is None else _ui_account(chain, acc, cfg))
    return _context(chain, out)


def _get_balance(chain: LocalChain, params: list[Any]) -> Any:
    key = _pubkey(_required(params, 0, "the address"))
    _config(params, 1, chain)
    return _context(chain, chain.sol_balance(str(key)))


def _token_state(chain: LocalChain, address: str) -> tokens.TokenAccountState:
    acc = chain.account(address)
    if acc is None:
        raise invalid_params("Invalid param: could not find account")
    state = tokens.parse_token_account(str(acc.owner), bytes(acc.data))
    if state is None:
        raise invalid_params("Invalid param: not a Token account")
    return state


def _get_token_account_balance(chain: LocalChain, params: list[Any]) -> Any:
    key = _pubkey(_required(params, 0, "the token account"))
    _config(params, 1, chain)
    state = _token_state(chain, str(key))
    return _context(chain, ui_token_amount(state.amount, _decimals(chain, state.mint)))


def _get_token_supply(chain: LocalChain, params: list[Any]) -> Any:
    key = _pubkey(_required(params, 0, "the mint"))
    _config(params, 1, chain)
    acc = chain.account(str(key))
    if acc is None or str(acc.owner) != tokens.TOKEN_PROGRAM or len(acc.data) != MINT_LEN:
        raise invalid_params("Invalid param: not a Token mint")
    data = bytes(acc.data)
    return _context(chain, ui_token_amount(int.from_bytes(data[36:44], "little"), data[44]))


def _token_accounts_of(chain: LocalChain, owner: Pubkey, mint: Pubkey | None) -> list[str]:
    """Addresses of SPL token accounts owned by ``owner`` (optionally of one mint), from a scan
    of the persisted accounts table (read-only connection; see module docstring)."""
    sql = (
        "SELECT pubkey FROM accounts WHERE owner = ? AND length(data) = 165 "
        "AND substr(data, 33, 32) = ?"
    )
    args: list[Any] = [tokens.TOKEN_PROGRAM, bytes(owner)]
    if mint is not None:
        sql += " AND substr(data, 1, 32) = ?"
        args.append(bytes(mint))
    uri = f"{(chain.directory / 'chain.sqlite').resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        return [r[0] for r in conn.execute(sql + " ORDER BY pubkey", args)]
    finally:
        conn.close()


def _get_token_accounts_by_owner(chain: LocalChain, params: list[Any]) -> Any:
    owner = _pubkey(_required(params, 0, "the owner"))
    flt = _required(params, 1, "a filter ({mint} or {programId})")
    if not isinstance(flt, dict) or len(flt) != 1 or not ({"mint", "programId"} & set(flt)):
        raise invalid_params("Invalid params: filter must be {mint} or {programId}")
    cfg = _config(params, 2, chain)
    mint: Pubkey | None = None
    if "mint" in flt:
        mint = _pubkey(flt["mint"])
    elif str(_pubkey(flt["programId"])) != tokens.TOKEN_PROGRAM:
        raise invalid_params("Invalid param: unrecognized Token program id")
    out = []
    for address in _token_accounts_of(chain, owner, mint):
        acc = chain.account(address)
        state = None if acc is None else tokens.parse_token_account(str(acc.owner), bytes(acc.data))
        if acc is None or state is None or state.owner != str(owner):
            continue
        out.append({"pubkey": address, "account": _ui_account(chain, acc, cfg)})
    return _context(chain, out)


def _get_minimum_balance_for_rent_exemption(chain: LocalChain, params: list[Any]) -> Any:
    size = _required(params, 0, "the data length")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise invalid_params("Invalid params: data length must be a non-negative integer")
    _config(params, 1, chain)
    return chain.rent_exempt(size)


# ---------------------------------------------------------------- cluster


def _genesis_hash(chain: LocalChain) -> str:
    seed = f"cyxwiz-local:{chain.treasury}".encode()
    return str(Hash(hashlib.sha256(seed).digest()))


def _get_health(chain: LocalChain, params: list[Any]) -> Any:
    return "ok"


def _get_version(chain: LocalChain, params: list[Any]) -> Any:
    return {"solana-core": API_VERSION, "feature-set": FEATURE_SET}


def _get_genesis_hash(chain: LocalChain, params: list[Any]) -> Any:
    return _genesis_hash(chain)


def _get_slot(chain: LocalChain, params: list[Any]) -> Any:
    _config(params, 0, chain)
    return chain.block_height()


def _get_epoch_info(chain: LocalChain, params: list[Any]) -> Any:
    _config(params, 0, chain)
    slot = chain.block_height()
    return {
        "absoluteSlot": slot,
        "blockHeight": slot,
        "epoch": 0,
        "slotIndex": slot,
        "slotsInEpoch": 432_000,
        "transactionCount": None,
    }


def _get_latest_blockhash(chain: LocalChain, params: list[Any]) -> Any:
    _config(params, 0, chain)
    blockhash, last_valid = chain.latest_blockhash()
    return _context(chain, {"blockhash": blockhash, "lastValidBlockHeight": last_valid})


def _is_blockhash_valid(chain: LocalChain, params: list[Any]) -> Any:
    value = _required(params, 0, "the blockhash")
    if not isinstance(value, str):
        raise invalid_params("Invalid param: expected a base58 blockhash")
    try:
        wanted = str(Hash.from_string(value))
    except ValueError:
        raise invalid_params("Invalid param: Invalid") from None
    _config(params, 1, chain)
    return _context(chain, chain.latest_blockhash()[0] == wanted)


def _get_fee_for_message(chain: LocalChain, params: list[Any]) -> Any:
    encoded = _required(params, 0, "the message")
    _config(params, 1, chain)
    try:
        msg = from_bytes_versioned(base64.b64decode(encoded, validate=True))
    except (ValueError, TypeError, binascii.Error):
        raise invalid_params("Invalid params: cannot deserialize the message") from None
    if str(msg.recent_blockhash) != chain.latest_blockhash()[0]:
        return _context(chain, None)  # a cluster answers null for an unknown blockhash
    return _context(chain, LAMPORTS_PER_SIGNATURE * msg.header.num_required_signatures)


def _get_recent_prioritization_fees(chain: LocalChain, params: list[Any]) -> Any:
    return []


# ---------------------------------------------------------------- transactions


def _decode_transaction(params: list[Any]) -> bytes:
    encoded = _required(params, 0, "the transaction")
    cfg = _param(params, 1) or {}
    if not isinstance(encoded, str) or not isinstance(cfg, dict):
        raise invalid_params("Invalid params: expected an encoded transaction")
    encoding = cfg.get("encoding", "base58")
    try:
        if encoding == "base64":
            raw = base64.b64decode(encoded, validate=True)
        elif encoding == "base58":
            raw = b58decode(encoded)
        else:
            raise invalid_params(f"Invalid params: unsupported encoding {encoding!r}")
    except (ValueError, binascii.Error):
        raise invalid_params(f"invalid {encoding} encoding") from None
    if len(raw) > PACKET_DATA_SIZE:
        raise invalid_params(
            f"{encoding} encoded transaction too large: {len(raw)} bytes (max: {PACKET_DATA_SIZE})"
        )
    return raw


def _transaction_error(text: str) -> Any:
    """Solana's JSON form of the TransactionError named in a LocalChain refusal message (the
    local chain raises with solders' text of the error; this reads it back)."""
    text = text.split(": ", 1)[0]  # "<error>: <log lines>"
    if "AlreadyProcessed" in text:
        return "AlreadyProcessed"
    m = re.search(r"TransactionErrorFieldless\.(\w+)", text)
    if m:
        return m.group(1)
    m = re.search(r"TransactionErrorInstructionError\(\((\d+), (.*)\)\)", text)
    if m:
        index, inner = int(m.group(1)), m.group(2)
        custom = re.search(r"InstructionErrorCustom\((\d+)\)", inner)
        if custom:
            return {"InstructionError": [index, {"Custom": int(custom.group(1))}]}
        named = re.search(r"Fieldless[.(](\w+)", inner)
        return {"InstructionError": [index, named.group(1) if named else "GenericError"]}
    m = re.search(r"InsufficientFundsForRent\D*(\d+)", text)
    if m:
        return {"InsufficientFundsForRent": {"account_index": int(m.group(1))}}
    m = re.search(r"TransactionErrorDuplicateInstruction\((\d+)\)", text)
    if m:
        return {"DuplicateInstruction": int(m.group(1))}
    m = re.search(r"ProgramExecutionTemporarilyRestricted\D*(\d+)", text)
    if m:
        return {"ProgramExecutionTemporarilyRestricted": {"account_index": int(m.group(1))}}
    return "AccountNotFound"  # not reached for the errors solders defines


def describe_error(err: Any) -> str:
    """The human text a cluster puts in a preflight failure's message."""
    if err == "AlreadyProcessed":
        return "This transaction has already been processed"
    if err == "BlockhashNotFound":
        return "Blockhash not found"
    if isinstance(err, dict) and "InstructionError" in err:
        index, inner = err["InstructionError"]
        if isinstance(inner, dict) and "Custom" in inner:
            return (
                f"Error processing Instruction {index}: custom program error: {inner['Custom']:#x}"
            )
        return f"Error processing Instruction {index}: {inner}"
    return str(next(iter(err))) if isinstance(err, dict) else str(err)


def _preflight_failure(message: str, err: Any, logs: list[str]) -> RpcError:
    return RpcError(
        PREFLIGHT_FAILURE,
        f"Transaction simulation failed: {message}",
        {
            "err": err,
            "logs": logs,
            "accounts": None,
            "unitsConsumed": 0,
            "returnData": None,
            "innerInstructions": None,
        },
    )


def _send_transaction(chain: LocalChain, params: list[Any]) -> Any:
    raw = _decode_transaction(params)
    _config(params, 1, chain)
    chain.latest_blockhash()  # let the blockhash age out on time, as a cluster's does
    try:
        return chain.send_raw(raw)
    except BlockhashExpired:
        raise _preflight_failure(
            describe_error("BlockhashNotFound"), "BlockhashNotFound", []
        ) from None
    except TransactionRejected as exc:
        err = _transaction_error(exc.detail)
        if err == "SignatureFailure":
            raise RpcError(
                SIGNATURE_VERIFICATION_FAILURE, "Transaction signature verification failure"
            ) from None
        logs = [line for line in exc.detail.partition(": ")[2].split("; ") if line]
        raise _preflight_failure(describe_error(err), err, logs) from None
    except DomainError as exc:
        raise invalid_params(
            f"failed to deserialize solana_transaction::versioned::VersionedTransaction: "
            f"{exc.detail}"
        ) from None


def _signature(value: Any) -> str:
    if not isinstance(value, str):
        raise invalid_params("Invalid param: expected a base58 signature")
    try:
        return str(Signature.from_string(value))
    except ValueError:
        raise invalid_params("Invalid param: Invalid") from None


def _get_signature_statuses(chain: LocalChain, params: list[Any]) -> Any:
    sigs = _required(params, 0, "the signatures")
    if not isinstance(sigs, list):
        raise invalid_params("Invalid params: expected an array of signatures")
    if len(sigs) > MAX_SIGNATURE_STATUSES:
        raise invalid_params(f"Too many inputs provided; max {MAX_SIGNATURE_STATUSES}")
    wanted = [_signature(s) for s in sigs]
    _config(params, 1, chain)
    known = _airdrops(chain)
    out: list[Any] = []
    for sig in wanted:
        slot = known.get(sig)
        if slot is None:
            found = chain.raw_transaction(sig)
            slot = found[1].slot if found is not None else None
        out.append(
            None
            if slot is None
            else {
                "slot": slot,
                "confirmations": None,
                "err": None,
                "status": {"Ok": None},
                "confirmationStatus": "finalized",
            }
        )
    return _context(chain, out)


def format_memos(memos: list[str] | tuple[str, ...]) -> str | None:
    """Solana's ``memo`` field of getSignaturesForAddress: ``[len] text`` joined by ``; ``."""
    if not memos:
        return None
    return "; ".join(f"[{len(m.encode())}] {m}" for m in memos)


def _get_signatures_for_address(chain: LocalChain, params: list[Any]) -> Any:
    address = _pubkey(_required(params, 0, "the address"))
    cfg = _config(params, 1, chain)
    limit = cfg.get("limit", MAX_SIGNATURES_LIMIT)
    if limit is None:
        limit = MAX_SIGNATURES_LIMIT
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
        raise invalid_params(f"Invalid limit; max {MAX_SIGNATURES_LIMIT}")
    before, until = cfg.get("before"), cfg.get("until")
    infos = chain.signatures_for(
        str(address),
        limit=limit,
        before=None if before is None else _signature(before),
        until=None if until is None else _signature(until),
    )
    out = []
    for info in infos:
        memo = None
        if info.memo is not None:
            found = chain.raw_transaction(info.signature)
            memo = format_memos(found[1].memos) if found is not None else info.memo
        out.append(
            {
                "signature": info.signature,
                "slot": info.slot,
                "err": None,
                "memo": memo,
                "blockTime": info.block_time,
                "confirmationStatus": "finalized",
            }
        )
    return out


def _get_transaction(chain: LocalChain, params: list[Any]) -> Any:
    sig = _signature(_required(params, 0, "the signature"))
    cfg = _param(params, 1)
    if isinstance(cfg, str):  # the deprecated positional encoding
        cfg = {"encoding": cfg}
    cfg = _config([cfg], 0, chain)
    encoding = cfg.get("encoding", "json")
    if encoding not in ("json", "base64", "base58"):
        raise invalid_params(f"Invalid params: unsupported encoding {encoding!r}")
    found = chain.raw_transaction(sig)
    if found is None:
        return None
    raw, record, doc = found
    tx = VersionedTransaction.from_bytes(raw)
    msg = tx.message
    legacy = isinstance(msg, Message)
    if not legacy and not isinstance(msg, MessageV0):
        raise RpcError(UNSUPPORTED_TRANSACTION_VERSION, "Transaction version is not supported")
    max_version = cfg.get("maxSupportedTransactionVersion")
    if not legacy and max_version is None:
        raise RpcError(
            UNSUPPORTED_TRANSACTION_VERSION,
            "Transaction version (0) is not supported by the requesting client. Please try the "
            'request again with the following configuration parameter: "maxSupportedTransactionVersion": 0',
        )
    keys: list[str] = list(doc["account_keys"])
    transaction: Any
    if encoding == "base64":
        transaction = [base64.b64encode(raw).decode(), "base64"]
    elif encoding == "base58":
        transaction = [b58encode(raw), "base58"]
    else:
        header = msg.header
        message: dict[str, Any] = {
            "accountKeys": keys,
            "header": {
                "numRequiredSignatures": header.num_required_signatures,
                "numReadonlySignedAccounts": header.num_readonly_signed_accounts,
                "numReadonlyUnsignedAccounts": header.num_readonly_unsigned_accounts,
            },
            "recentBlockhash": str(msg.recent_blockhash),
            "instructions": [
                {
                    "programIdIndex": ix.program_id_index,
                    "accounts": list(bytes(ix.accounts)),
                    "data": b58encode(bytes(ix.data)),
                    "stackHeight": None,
                }
                for ix in msg.instructions
            ],
        }
        if isinstance(msg, MessageV0):
            message["addressTableLookups"] = [
                {
                    "accountKey": str(lookup.account_key),
                    "writableIndexes": list(bytes(lookup.writable_indexes)),
                    "readonlyIndexes": list(bytes(lookup.readonly_indexes)),
                }
                for lookup in msg.address_table_lookups
            ]
        transaction = {"signatures": [str(s) for s in tx.signatures], "message": message}
    pre_tokens, post_tokens = [], []
    decimals: dict[str, int] = {}
    for d in doc["token_deltas"]:
        index = keys.index(d["account"])
        dec = decimals.setdefault(d["mint"], _decimals(chain, d["mint"]))
        base = {"accountIndex": index, "mint": d["mint"], "owner": d["owner"]}
        base["programId"] = tokens.TOKEN_PROGRAM
        if doc["pre_lamports"][index] > 0:  # the account existed before the transaction
            pre_tokens.append({**base, "uiTokenAmount": ui_token_amount(d["pre"], dec)})
        if doc["post_lamports"][index] > 0:  # ... and after it (not closed)
            post_tokens.append({**base, "uiTokenAmount": ui_token_amount(d["post"], dec)})
    meta = {
        "err": None,
        "status": {"Ok": None},
        "fee": doc["fee"],
        "preBalances": doc["pre_lamports"],
        "postBalances": doc["post_lamports"],
        "innerInstructions": [],
        "logMessages": doc["logs"],
        "preTokenBalances": pre_tokens,
        "postTokenBalances": post_tokens,
        "rewards": [],
        "loadedAddresses": {"writable": [], "readonly": []},
        "computeUnitsConsumed": doc["compute_units"],
    }
    return {
        "slot": record.slot,
        "blockTime": record.block_time,
        "transaction": transaction,
        "meta": meta,
        "version": "legacy" if legacy else 0,
    }


# ---------------------------------------------------------------- dev faucet

_airdrop_ids: weakref.WeakKeyDictionary[Any, OrderedDict[str, int]] = weakref.WeakKeyDictionary()
_airdrop_lock = threading.Lock()


def _airdrops(chain: LocalChain) -> OrderedDict[str, int]:
    with _airdrop_lock:
        return _airdrop_ids.setdefault(chain, OrderedDict())


def _request_airdrop(chain: LocalChain, params: list[Any]) -> Any:
    address = _pubkey(_required(params, 0, "the address"))
    lamports = _required(params, 1, "the lamports")
    if not isinstance(lamports, int) or isinstance(lamports, bool) or lamports <= 0:
        raise invalid_params("Invalid params: lamports must be a positive integer")
    _config(params, 2, chain)
    try:
        chain.airdrop(str(address), lamports)
    except ChainError as exc:
        raise RpcError(INTERNAL_ERROR, f"airdrop request failed: {exc.detail}") from None
    sig = str(Signature(secrets.token_bytes(64)))
    known = _airdrops(chain)
    with _airdrop_lock:
        known[sig] = chain.block_height()
        while len(known) > MAX_AIRDROP_IDS:
            known.popitem(last=False)
    return sig


METHODS: dict[str, Callable[[LocalChain, list[Any]], Any]] = {
    "getAccountInfo": _get_account_info,
    "getBalance": _get_balance,
    "getBlockHeight": _get_slot,
    "getEpochInfo": _get_epoch_info,
    "getFeeForMessage": _get_fee_for_message,
    "getGenesisHash": _get_genesis_hash,
    "getHealth": _get_health,
    "getLatestBlockhash": _get_latest_blockhash,
    "getMinimumBalanceForRentExemption": _get_minimum_balance_for_rent_exemption,
    "getMultipleAccounts": _get_multiple_accounts,
    "getRecentPrioritizationFees": _get_recent_prioritization_fees,
    "getSignatureStatuses": _get_signature_statuses,
    "getSignaturesForAddress": _get_signatures_for_address,
    "getSlot": _get_slot,
    "getTokenAccountBalance": _get_token_account_balance,
    "getTokenAccountsByOwner": _get_token_accounts_by_owner,
    "getTokenSupply": _get_token_supply,
    "getTransaction": _get_transaction,
    "getVersion": _get_version,
    "isBlockhashValid": _is_blockhash_valid,
    "requestAirdrop": _request_airdrop,
    "sendTransaction": _send_transaction,
}
