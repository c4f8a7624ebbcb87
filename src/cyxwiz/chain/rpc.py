"""The ``rpc`` backend: a real Solana cluster (or the dev chain's /chain/rpc) over JSON-RPC.

Requests go through solana-py's client and solders' strict response types. solana-py 0.41
ships only ``AsyncClient``; ``RpcChain`` keeps its protocol synchronous (the marketplace calls
it from worker threads) by running one client on a private event loop in a daemon thread and
waiting on each call with a deadline.

* Commitment: reads (balances, history, ``transaction()``, ``block_height()``) use the
  configured commitment (``chain_commitment``, ``finalized`` by default: deposits are credited
  only once final); blockhashes and preflight use ``confirmed``, as Solana recommends, so a
  signed transaction gets the full ~150-block validity window.
* Retries: transport errors, timeouts, HTTP 429 (honouring a short ``Retry-After``) and 5xx
  are retried with exponential backoff and jitter, a bounded number of times; then
  ``ChainUnavailable``. Sending is safe to retry: the signature is the idempotency key (an
  ``AlreadyProcessed`` answer to a retried send means the first attempt landed).
* Expiry: "Blockhash not found" from preflight → ``BlockhashExpired``; waits for
  confirmation stop at the blockhash's last valid block height.
* Tokens: the classic SPL Token program (USDC's); mints are configured addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction_status import TransactionConfirmationStatus

from cyxwiz.chain import tokens, treasury
from cyxwiz.chain.interfaces import (
    COMMITMENT_ORDER,
    BlockhashExpired,
    ChainError,
    ChainUnavailable,
    FaucetUnavailable,
    Sent,
    SignatureInfo,
    TokenDelta,
    TransactionRejected,
    TxRecord,
    reached,
)
from cyxwiz.config import ConfigError
from cyxwiz.errors import InvalidInput
from cyxwiz.money import Currency

if TYPE_CHECKING:
    from solana.rpc.async_api import AsyncClient

    from cyxwiz.config import Settings

log = logging.getLogger("cyxwiz.chain.rpc")

T = TypeVar("T")

MINT_LEN = 82
WALLET_FEE_LAMPORTS = 10**9  # what mint_to tops a dev wallet up to, for fees (as LocalChain)
STATUS_BATCH = 256  # getSignatureStatuses' limit per call
HISTORY_PAGE = 1_000  # getSignaturesForAddress' limit per call
_STATUS_NAMES = {  # solders' enum is not hashable: key by its int value
    int(TransactionConfirmationStatus.Processed): "processed",
    int(TransactionConfirmationStatus.Confirmed): "confirmed",
    int(TransactionConfirmationStatus.Finalized): "finalized",
}
_MEMO = re.compile(rb"\[(\d+)\] ")


def treasury_path(settings: Settings) -> Path:
    """Where the sealed treasury keypair of the rpc backend lives."""
    if settings.chain_treasury_keypair is not None:
        return settings.chain_treasury_keypair
    return settings.resolved_chain_dir / "treasury.json"


def parse_memos(field: str | None) -> str | None:
    """``"[7] order-1; [2] hi"`` (getSignaturesForAddress' memo field) → ``"order-1; hi"``, the
    local backend's form. Lengths are byte counts, so memos containing "; " survive."""
    if field is None:
        return None
    raw, out, pos = field.encode(), [], 0
    while pos < len(raw):
        m = _MEMO.match(raw, pos)
        if m is None:
            return field  # not Solana's format: keep it whole
        start = m.end()
        end = start + int(m.group(1))
        out.append(raw[start:end].decode("utf-8", errors="replace"))
        pos = end + 2 if raw[end : end + 2] == b"; " else end
    return "; ".join(out) or None


class _Loop:
    """An asyncio loop in a daemon thread; ``run`` waits for a coroutine from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="cyxwiz-solana-rpc", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class _Transient(Exception):
    """A failure worth retrying (transport, timeout, 429, 5xx, node behind)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class RpcChain(tokens.MintAddresses):
    """The ``Chain`` protocol over a Solana cluster's JSON-RPC (see module docstring)."""

    backend = "rpc"

    def __init__(
        self,
        *,
        url: str,
        treasury_keypair: Keypair,
        mints: dict[Currency, str],
        commitment: str = "finalized",
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 0.25,
        max_backoff: float = 4.0,
        confirm_timeout: float = 90.0,
        poll_interval: float = 0.5,
    ) -> None:
        from solana.rpc.async_api import AsyncClient
        from solana.rpc.commitment import Commitment

        if commitment not in COMMITMENT_ORDER:
            raise ConfigError(f"unknown chain commitment {commitment!r}")
        for cur in Currency:
            if cur not in mints:
                raise ConfigError(f"no {cur.value} mint configured for the rpc chain backend")
            try:
                Pubkey.from_string(mints[cur])
            except ValueError:
                raise ConfigError(
                    f"the {cur.value} mint {mints[cur]!r} is not a Solana address"
                ) from None
        self.url = url
        self.commitment = commitment
        self._treasury = treasury_keypair
        self._mints = dict(mints)
        self._timeout = timeout
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._confirm_timeout = confirm_timeout
        self._poll = poll_interval
        self._level = Commitment(commitment)
        self._confirmed = Commitment("confirmed")
        self._loop = _Loop()

        async def make() -> AsyncClient:
            return AsyncClient(
                url, commitment=self._level, timeout=timeout, max_transport_retries=0
            )

        self._client = self._loop.run(make(), timeout)

    @classmethod
    def from_settings(cls, settings: Settings) -> RpcChain:
        """The configured cluster, mints and treasury (sealed with the master key)."""
        missing = [
            name
            for name, value in (
                ("CYXWIZ_CHAIN_RPC_URL", settings.chain_rpc_url),
                ("CYXWIZ_CHAIN_USDC_MINT", settings.chain_usdc_mint),
                ("CYXWIZ_CHAIN_CYX_MINT", settings.chain_cyx_mint),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"the rpc chain backend needs {', '.join(missing)}")
        path = treasury_path(settings)
        if not path.exists():
            raise ConfigError(
                f"no treasury keypair at {path}: seal one with `cyxwiz chain import-treasury "
                "KEYPAIR_FILE` (or set CYXWIZ_CHAIN_TREASURY_KEYPAIR)"
            )
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read the sealed treasury keypair ({exc})") from None
        kp = treasury.unseal(doc, settings.master_keys, str(path))
        return cls(
            url=str(settings.chain_rpc_url),
            treasury_keypair=kp,
            mints={
                Currency.USDC: str(settings.chain_usdc_mint),
                Currency.CYX: str(settings.chain_cyx_mint),
            },
            commitment=settings.chain_commitment,
        )

    # ------------------------------------------------------------ transport

    def _call(
        self,
        what: str,
        make: Callable[[AsyncClient], Coroutine[Any, Any, T]],
        failures: list[str] | None = None,
    ) -> T:
        """One RPC call with bounded retries; JSON-RPC errors (RPCException) pass through.
        ``failures`` collects the transient failures of attempts that were retried."""
        delay = self._backoff
        last = "no attempt"
        for attempt in range(self._attempts):
            try:
                return self._loop.run(self._guard(make(self._client)), self._timeout * 2 + 5)
            except _Transient as exc:
                last = exc.reason
                wait = exc.retry_after if exc.retry_after is not None else delay
            except TimeoutError:
                last = f"no answer within {self._timeout * 2 + 5:.0f}s"
                wait = delay
            if failures is not None:
                failures.append(last)
            if attempt + 1 < self._attempts:
                time.sleep(min(wait, self._max_backoff) * random.uniform(0.8, 1.2))  # noqa: S311
                delay = min(delay * 2, self._max_backoff)
        raise ChainUnavailable(
            f"the Solana cluster at {self.url} cannot be reached ({what}: {last}; "
            f"{self._attempts} attempts)"
        )

    @staticmethod
    async def _guard(coro: Coroutine[Any, Any, T]) -> T:
        import httpx2
        from solana.exceptions import SolanaRpcException
        from solana.rpc.core import RPCException
        from solders.errors import SerdeJSONError
        from solders.rpc.errors import NodeUnhealthyMessage

        try:
            return await coro
        except SolanaRpcException as exc:
            cause = exc.__cause__
            if isinstance(cause, httpx2.HTTPStatusError):
                status = cause.response.status_code
                if status == 429 or status >= 500:
                    after = cause.response.headers.get("retry-after", "")
                    raise _Transient(
                        f"HTTP {status}", float(after) if after.isdigit() else None
                    ) from None
                raise ChainUnavailable(
                    f"the Solana RPC endpoint answered HTTP {status} (check CYXWIZ_CHAIN_RPC_URL)"
                ) from None
            raise _Transient(f"{type(cause).__name__}: {cause}") from None
        except RPCException as exc:
            if isinstance(exc.args[0], NodeUnhealthyMessage):
                raise _Transient("node unhealthy (behind the cluster)") from None
            raise
        except (SerdeJSONError, ValueError) as exc:  # solders could not parse the answer
            raise ChainError(f"unexpected answer from the Solana RPC endpoint: {exc}") from None

    @staticmethod
    def _rpc_message(exc: Exception) -> str:
        err = exc.args[0] if exc.args else exc
        return str(getattr(err, "message", err))

    # ------------------------------------------------------------ reads

    @property
    def treasury(self) -> str:
        return str(self._treasury.pubkey())

    def _account(self, address: str) -> tuple[str, bytes] | None:
        key = tokens.pubkey(address)
        resp = self._call("getAccountInfo", lambda c: c.get_account_info(key, self._level))
        acc = resp.value
        return None if acc is None else (str(acc.owner), bytes(acc.data))

    def token_balance(self, token_account: str) -> int:
        found = self._account(token_account)
        if found is None:
            return 0
        state = tokens.parse_token_account(*found)
        return state.amount if state else 0

    def sol_balance(self, address: str) -> int:
        key = tokens.pubkey(address)
        return int(self._call("getBalance", lambda c: c.get_balance(key, self._level)).value)

    def block_height(self) -> int:
        return int(self._call("getBlockHeight", lambda c: c.get_block_height(self._level)).value)

    def latest_blockhash(self) -> tuple[str, int]:
        resp = self._call(
            "getLatestBlockhash", lambda c: c.get_latest_blockhash(self._confirmed)
        ).value
        return str(resp.blockhash), int(resp.last_valid_block_height)

    def statuses(self, signatures: list[str]) -> list[str | None]:
        out: list[str | None] = []
        for i in range(0, len(signatures), STATUS_BATCH):
            sigs = [Signature.from_string(s) for s in signatures[i : i + STATUS_BATCH]]
            resp = self._call(
                "getSignatureStatuses",
                lambda c, sigs=sigs: c.get_signature_statuses(
                    sigs, search_transaction_history=True
                ),  # type: ignore[misc]
            )
            for st in resp.value:
                if st is None:
                    out.append(None)
                elif st.err is not None:
                    out.append("failed")
                else:
                    out.append(_STATUS_NAMES[int(st.find_confirmation_status())])
        return out

    def signatures_for(
        self,
        address: str,
        *,
        limit: int = 1000,
        until: str | None = None,
        before: str | None = None,
    ) -> list[SignatureInfo]:
        key = tokens.pubkey(address)
        stop = None if until is None else Signature.from_string(until)
        cursor = None if before is None else Signature.from_string(before)
        out: list[SignatureInfo] = []
        while len(out) < limit:
            page = min(HISTORY_PAGE, limit - len(out))
            resp = self._call(
                "getSignaturesForAddress",
                lambda c, cursor=cursor, page=page: c.get_signatures_for_address(  # type: ignore[misc]
                    key, before=cursor, until=stop, limit=page, commitment=self._level
                ),
            )
            items = resp.value
            for item in items:
                status = item.confirmation_status
                out.append(
                    SignatureInfo(
                        signature=str(item.signature),
                        slot=item.slot,
                        err=None if item.err is None else str(item.err),
                        status=(
                            "failed"
                            if item.err is not None
                            else (_STATUS_NAMES[int(status)] if status is not None else None)
                        ),
                        memo=parse_memos(item.memo),
                        block_time=item.block_time,
                    )
                )
            if len(items) < page:
                break
            cursor = items[-1].signature
        return out

    def transaction(self, signature: str) -> TxRecord | None:
        from solders.transaction_status import UiRawMessage, UiTransaction

        from cyxwiz.chain.rpc_server import b58decode

        sig = Signature.from_string(signature)
        resp = self._call(
            "getTransaction",
            lambda c: c.get_transaction(
                sig, "json", commitment=self._level, max_supported_transaction_version=0
            ),
        )
        found = resp.value
        if found is None:
            return None
        tx, meta = found.transaction.transaction, found.transaction.meta
        if not isinstance(tx, UiTransaction) or not isinstance(tx.message, UiRawMessage):
            raise ChainError(f"getTransaction({signature}) did not answer the json encoding")
        msg = tx.message
        keys = [str(k) for k in msg.account_keys]
        if meta is not None and meta.loaded_addresses is not None:
            keys += [str(k) for k in meta.loaded_addresses.writable]
            keys += [str(k) for k in meta.loaded_addresses.readonly]
        memos = [
            b58decode(ix.data).decode("utf-8", errors="replace")
            for ix in msg.instructions
            if keys[ix.program_id_index] == tokens.MEMO_PROGRAM
        ]
        balances: dict[int, dict[str, Any]] = {}
        if meta is not None:
            for side, entries in (
                ("pre", meta.pre_token_balances),
                ("post", meta.post_token_balances),
            ):
                for b in entries or []:
                    entry = balances.setdefault(
                        b.account_index,
                        {"mint": str(b.mint), "owner": str(b.owner or ""), "pre": 0, "post": 0},
                    )
                    entry[side] = int(b.ui_token_amount.amount)
        deltas = tuple(
            TokenDelta(
                account=keys[i], mint=e["mint"], owner=e["owner"], pre=e["pre"], post=e["post"]
            )
            for i, e in sorted(balances.items())
        )
        err = None if meta is None or meta.err is None else str(meta.err)
        return TxRecord(
            signature=signature,
            slot=found.slot,
            block_time=found.block_time,
            err=err,
            status="failed" if err is not None else self.commitment,
            account_keys=tuple(keys),
            token_deltas=deltas,
            memos=tuple(memos),
            signers=tuple(keys[: msg.header.num_required_signatures]),
        )

    # ------------------------------------------------------------ writes

    def send_raw(self, raw: bytes) -> str:
        from solana.rpc.core import RPCException
        from solana.rpc.models import TxOpts
        from solders.rpc.errors import (
            InvalidParamsMessage,
            RpcCustomErrorFieldless,
            SendTransactionPreflightFailureMessage,
        )
        from solders.transaction import VersionedTransaction

        try:
            tx = VersionedTransaction.from_bytes(raw)
        except ValueError:
            raise InvalidInput(
                "not a serialized Solana transaction", code="invalid_transaction"
            ) from None
        sig = str(tx.signatures[0])
        opts = TxOpts(skip_confirmation=True, preflight_commitment=self._confirmed)
        retried: list[str] = []
        try:
            self._call("sendTransaction", lambda c: c.send_raw_transaction(raw, opts), retried)
        except RPCException as exc:
            err = exc.args[0] if exc.args else None
            text = self._rpc_message(exc)
            if isinstance(err, SendTransactionPreflightFailureMessage):
                data = err.data
                detail = str(getattr(data, "err", "") or "")
                logs = [line for line in (getattr(data, "logs", None) or []) if "failed" in line]
                if "Blockhash not found" in text or "BlockhashNotFound" in detail:
                    raise BlockhashExpired(
                        "the transaction's blockhash has expired; fetch a new one and sign again"
                    ) from None
                if "AlreadyProcessed" in detail:
                    if retried and self.statuses([sig])[0] not in (None, "failed"):
                        return sig  # this call's earlier attempt landed before its answer was lost
                    raise TransactionRejected(
                        "AlreadyProcessed: this transaction has already landed"
                    ) from None
                raise TransactionRejected(f"{text} {'; '.join(logs)}".strip()[:500]) from None
            if isinstance(err, RpcCustomErrorFieldless):
                raise TransactionRejected(f"the cluster refused the transaction: {err}") from None
            if isinstance(err, InvalidParamsMessage):
                raise TransactionRejected(text) from None
            raise ChainError(f"sendTransaction failed: {text}") from None
        return sig

    def _sign(self, ixs: list[Any], signers: list[Keypair]) -> Sent:
        blockhash, valid = self.latest_blockhash()
        tx = tokens.sign(ixs, signers, blockhash)
        return Sent(signature=str(tx.signatures[0]), last_valid_block_height=valid, raw=bytes(tx))

    def sign_treasury_transfer(
        self, *, currency: Currency, owner: str, amount: int, memo: str
    ) -> Sent:
        t = self._treasury.pubkey()
        mint = tokens.pubkey(self._mints[currency])
        dest = tokens.pubkey(owner, what="wallet")
        ixs = [
            tokens.create_ata_ix(t, dest, mint),
            tokens.transfer_ix(source_owner=t, dest_owner=dest, mint=mint, amount=amount),
            tokens.memo_ix(memo, t),
        ]
        return self._sign(ixs, [self._treasury])

    def sign_memo(self, text: str) -> Sent:
        return self._sign([tokens.memo_ix(text, self._treasury.pubkey())], [self._treasury])

    def _wait(self, signature: str, last_valid: int | None, wanted: str = "confirmed") -> None:
        """Poll until the signature reaches ``wanted``; BlockhashExpired once it cannot land."""
        deadline = time.monotonic() + self._confirm_timeout
        while True:
            status = self.statuses([signature])[0]
            if status == "failed":
                raise TransactionRejected(f"transaction {signature} failed on chain")
            if reached(status, wanted):
                return
            if last_valid is not None and status is None and self.block_height() > last_valid:
                raise BlockhashExpired(f"transaction {signature} expired before it landed")
            if time.monotonic() > deadline:
                raise ChainUnavailable(
                    f"transaction {signature} not {wanted} within {self._confirm_timeout:.0f}s"
                )
            time.sleep(self._poll)

    def mint_to(self, *, owner: str, currency: Currency, amount: int) -> str:
        from spl.token.constants import TOKEN_PROGRAM_ID
        from spl.token.instructions import mint_to
        from spl.token.models import MintToParams

        if amount <= 0:
            raise InvalidInput("amount must be positive", code="invalid_amount")
        t = self._treasury.pubkey()
        mint_address = self._mints[currency]
        found = self._account(mint_address)
        authority = None
        if found is not None and found[0] == tokens.TOKEN_PROGRAM and len(found[1]) == MINT_LEN:
            data = found[1]
            if int.from_bytes(data[0:4], "little") == 1:
                authority = str(Pubkey.from_bytes(data[4:36]))
        if authority != self.treasury:
            raise FaucetUnavailable(
                f"the {currency.value} mint {mint_address} on {self.url} is not minted by the "
                "treasury (only dev clusters with a treasury-owned test mint have a faucet)"
            )
        mint = tokens.pubkey(mint_address)
        dest = tokens.pubkey(owner, what="wallet")
        if self.sol_balance(owner) < WALLET_FEE_LAMPORTS // 10:
            try:
                self.airdrop(owner, WALLET_FEE_LAMPORTS)
            except (ChainError, FaucetUnavailable) as exc:  # best effort: fees, not tokens
                log.warning("airdrop of fee SOL to %s failed: %s", owner, exc.detail)
        ixs = [
            tokens.create_ata_ix(t, dest, mint),
            mint_to(
                MintToParams(
                    program_id=TOKEN_PROGRAM_ID,
                    mint=mint,
                    dest=Pubkey.from_string(tokens.ata(dest, mint)),
                    mint_authority=t,
                    amount=amount,
                )
            ),
        ]
        sent = self._sign(ixs, [self._treasury])
        self.send_raw(sent.raw)
        self._wait(sent.signature, sent.last_valid_block_height)
        return sent.signature

    def airdrop(self, address: str, lamports: int) -> None:
        from solana.rpc.core import RPCException

        key = tokens.pubkey(address)
        try:
            resp = self._call(
                "requestAirdrop", lambda c: c.request_airdrop(key, lamports, self._confirmed)
            )
        except RPCException as exc:
            raise FaucetUnavailable(
                f"the cluster at {self.url} refused the airdrop: {self._rpc_message(exc)}"
            ) from None
        self._wait(str(resp.value), None)

    def close(self) -> None:
        if self._loop.loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._loop.run(self._client.close(), self._timeout)
        self._loop.close()
