"""The platform's own funds on chain (the CYX float for CYX payouts) and vault reconciliation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from cyxwiz.billing.flows import _tid, platform_account, platform_code
from cyxwiz.chain import tokens
from cyxwiz.chain.interfaces import Chain, FaucetUnavailable
from cyxwiz.config import ChainBackend, Settings
from cyxwiz.errors import Conflict, InvalidInput, PermissionDenied
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.models import LedgerAccount, LedgerTransfer
from cyxwiz.ledger.service import TransferSpec
from cyxwiz.money import Currency, format_amount


def record_float(
    session: Session,
    *,
    chain: Chain,
    currency: Currency,
    signature: str | None = None,
    mint_amount: int | None = None,
) -> LedgerTransfer:
    """Book tokens the platform put into its own vault as platform funds
    (``platform:treasury:<CUR>``): either a transaction that already landed (``signature``) or,
    on a dev chain, tokens minted now (``mint_amount``). Once per signature."""
    if (signature is None) == (mint_amount is None):
        raise InvalidInput("give exactly one of signature or mint_amount", code="invalid_input")
    if mint_amount is not None:
        if chain.backend != "local":
            raise FaucetUnavailable("minting a float is for the local dev chain only")
        signature = chain.mint_to(owner=chain.treasury, currency=currency, amount=mint_amount)
    assert signature is not None
    tx = chain.transaction(signature)
    if tx is None or tx.err is not None:
        raise Conflict(f"transaction {signature} has not landed", code="transaction_not_found")
    got = tx.delta_of(chain.vault_of(currency), chain.mint_of(currency))
    if got <= 0:
        raise Conflict(
            f"transaction {signature} did not pay {currency.value} into the vault",
            code="not_a_vault_transfer",
        )
    return ledger.create_transfer(
        session,
        TransferSpec(
            id=_tid("float", signature),
            code="treasury.float",
            debit=platform_account(session, "vault", currency).id,
            credit=platform_account(session, "treasury", currency).id,
            amount=got,
            ref=f"float:{signature}",
        ),
    )


@dataclass(frozen=True)
class VaultReport:
    currency: str
    vault: str
    on_chain: int
    ledger_posted: int  # the vault mirror's net debit (posted)
    incoming: int  # deposits seen, not yet at the commitment (pending debits)
    outgoing: int  # payouts in flight (pending credits)

    @property
    def low(self) -> int:
        return self.ledger_posted + self.incoming - self.outgoing

    @property
    def high(self) -> int:
        return self.ledger_posted + self.incoming

    @property
    def ok(self) -> bool:
        return self.low <= self.on_chain <= self.high

    def problem(self) -> str | None:
        if self.ok:
            return None
        expected = (
            format_amount(self.high, self.currency)
            if self.low == self.high
            else f"{format_amount(self.low, self.currency)}–{format_amount(self.high, self.currency)}"
        )
        diff = self.on_chain - (self.high if self.on_chain > self.high else self.low)
        return (
            f"vault {self.currency} {self.vault}: on chain {format_amount(self.on_chain, self.currency)}, "
            f"ledger says {expected} (difference {'+' if diff > 0 else ''}{format_amount(diff, self.currency)})"
        )


class VaultView(Protocol):
    def vault_of(self, currency: Currency) -> str: ...

    def token_balance(self, token_account: str) -> int: ...


def reconcile(session: Session, *, chain: VaultView) -> list[VaultReport]:
    """Each vault's on-chain balance next to what the ledger says it holds (user deposits,
    platform funds, unclaimed arrivals; payouts in flight allowed either way)."""
    out = []
    for cur in Currency:
        acct = session.scalar(
            select(LedgerAccount).where(LedgerAccount.code == platform_code("vault", cur))
        )
        posted = (acct.debits_posted - acct.credits_posted) if acct else 0
        out.append(
            VaultReport(
                currency=cur.value,
                vault=chain.vault_of(cur),
                on_chain=chain.token_balance(chain.vault_of(cur)),
                ledger_posted=posted,
                incoming=acct.debits_pending if acct else 0,
                outgoing=acct.credits_pending if acct else 0,
            )
        )
    return out


def dev_faucet(
    *, settings: Settings, chain: Chain, wallet: str, currency: Currency, amount: int
) -> tuple[str, int]:
    """Dev chains only: mint test tokens (and SOL for fees) to a wallet, which then deposits
    through a Solana Pay request — the ledger is never credited directly. Returns (signature,
    the wallet's token balance after)."""
    if settings.is_production:
        raise PermissionDenied("the faucet does not exist in production", code="faucet_disabled")
    if settings.chain_backend is not ChainBackend.local or chain.backend != "local":
        raise FaucetUnavailable("the faucet mints on the local dev chain only")
    if not 1 <= amount <= settings.faucet_max_amount:
        raise InvalidInput(
            f"amount must be between 0.000001 and "
            f"{format_amount(settings.faucet_max_amount, currency)} per call",
            code="invalid_amount",
        )
    tokens.pubkey(wallet, what="wallet")
    signature = chain.mint_to(owner=wallet, currency=currency, amount=amount)
    return signature, chain.token_balance(chain.token_account_of(wallet, currency))
