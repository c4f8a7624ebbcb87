"""The chain protocol every backend implements, its records and its errors.

Amounts are integer base units of a token (USDC and CYX: 6 decimals). Addresses are base58
strings at this boundary so callers never depend on solders types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from cyxwiz.errors import DomainError
from cyxwiz.money import Currency

Commitment = Literal["processed", "confirmed", "finalized"]
COMMITMENT_ORDER: dict[str, int] = {"processed": 0, "confirmed": 1, "finalized": 2}


def reached(status: str | None, wanted: str) -> bool:
    """True when a confirmation status is at least the wanted commitment."""
    return status is not None and COMMITMENT_ORDER.get(status, -1) >= COMMITMENT_ORDER[wanted]


class ChainError(DomainError):
    code = "chain_error"
    status = 502
    title = "Chain error"


class ChainUnavailable(ChainError):
    code = "chain_unavailable"
    status = 503
    title = "Chain unavailable"


class TransactionRejected(ChainError):
    """The cluster refused or failed the transaction (it moved nothing)."""

    code = "transaction_rejected"
    status = 422
    title = "Transaction rejected"


class BlockhashExpired(ChainError):
    code = "blockhash_expired"
    status = 409
    title = "Blockhash expired"


class FaucetUnavailable(DomainError):
    code = "faucet_unavailable"
    status = 409
    title = "Faucet unavailable"


@dataclass(frozen=True)
class TokenDelta:
    """A token account's balance before and after one transaction."""

    account: str
    mint: str
    owner: str
    pre: int
    post: int

    @property
    def change(self) -> int:
        return self.post - self.pre


@dataclass(frozen=True)
class TxRecord:
    """What the chain says about a landed transaction (RPC ``getTransaction`` distilled)."""

    signature: str
    slot: int
    block_time: int | None
    err: str | None
    status: str | None  # processed | confirmed | finalized
    account_keys: tuple[str, ...] = ()
    token_deltas: tuple[TokenDelta, ...] = ()
    memos: tuple[str, ...] = ()
    signers: tuple[str, ...] = ()

    def delta_of(self, account: str, mint: str) -> int:
        """Net change of one token account in one mint (0 if untouched)."""
        return sum(d.change for d in self.token_deltas if d.account == account and d.mint == mint)


@dataclass(frozen=True)
class SignatureInfo:
    signature: str
    slot: int
    err: str | None
    status: str | None
    memo: str | None = None
    block_time: int | None = None


@dataclass(frozen=True)
class Sent:
    """A transaction handed to the cluster, with the block height after which it can never land."""

    signature: str
    last_valid_block_height: int
    raw: bytes = field(repr=False, default=b"")


class Chain(Protocol):
    """Settlement operations the marketplace needs; `local` and `rpc` implement it."""

    backend: str

    @property
    def treasury(self) -> str: ...

    def mint_of(self, currency: Currency) -> str: ...

    def vault_of(self, currency: Currency) -> str: ...

    def token_account_of(self, owner: str, currency: Currency) -> str: ...

    def token_balance(self, token_account: str) -> int:
        """Base units held by a token account (0 if it does not exist)."""
        ...

    def sol_balance(self, address: str) -> int: ...

    def block_height(self) -> int: ...

    def latest_blockhash(self) -> tuple[str, int]:
        """(blockhash, last valid block height) for a new transaction."""
        ...

    def send_raw(self, raw: bytes) -> str:
        """Submit a signed transaction; returns its signature or raises TransactionRejected."""
        ...

    def statuses(self, signatures: list[str]) -> list[str | None]:
        """Confirmation status per signature (None = unknown to the cluster); failed → 'failed'."""
        ...

    def signatures_for(
        self,
        address: str,
        *,
        limit: int = 1000,
        until: str | None = None,
        before: str | None = None,
    ) -> list[SignatureInfo]:
        """Signatures touching an address, newest first (stops before ``until``)."""
        ...

    def transaction(self, signature: str) -> TxRecord | None: ...

    def sign_treasury_transfer(
        self, *, currency: Currency, owner: str, amount: int, memo: str
    ) -> Sent:
        """Sign (not send) vault → owner's token account (created if missing), with a memo.
        The caller records the signed transaction before sending it with ``send_raw``."""
        ...

    def sign_memo(self, text: str) -> Sent:
        """Sign (not send) a Memo program transaction from the treasury."""
        ...

    def mint_to(self, *, owner: str, currency: Currency, amount: int) -> str:
        """Dev chains only: mint test tokens to an owner's token account."""
        ...

    def airdrop(self, address: str, lamports: int) -> None:
        """Dev chains only: SOL for fees."""
        ...

    def close(self) -> None: ...
