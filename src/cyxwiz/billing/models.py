"""Purchases (escrowed one-time sales), creator debts and idempotency records."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cyxwiz.catalog.models import Model
from cyxwiz.db import Base
from cyxwiz.licensing.models import License


class Purchase(Base):
    """A one-time sale: the buyer's funds sit in escrow (a pending transfer) until the refund
    window closes, then the fee and the contributors' shares are posted in one linked set."""

    __tablename__ = "purchases"
    __table_args__ = (UniqueConstraint("buyer_id", "idempotency_key"),)

    buyer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id"), index=True)
    creator_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    license_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("licenses.id"))
    idempotency_key: Mapped[str] = mapped_column(String(128))
    currency: Mapped[str] = mapped_column(String(8))
    list_price_usdc: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    fee_bps: Mapped[int] = mapped_column(Integer)
    splits: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{"user_id", "share_bps"}]
    status: Mapped[str] = mapped_column(String(16), default="escrow", index=True)
    escrow_transfer_id: Mapped[uuid.UUID]
    refund_window_ends_at: Mapped[datetime] = mapped_column(index=True)
    released_at: Mapped[datetime | None]
    refunded_at: Mapped[datetime | None]

    model: Mapped[Model] = relationship(lazy="joined")
    license: Mapped[License] = relationship(lazy="joined")


class CreatorDebt(Base):
    """What a creator owes the platform after a late refund their earnings could not cover;
    later earnings repay it first."""

    __tablename__ = "creator_debts"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    currency: Mapped[str] = mapped_column(String(8))
    amount: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    purchase_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("purchases.id"))


class Deposit(Base):
    """A Solana Pay transfer request: pay ``amount`` of ``currency`` into the vault, found on
    chain by its unique ``reference`` key. Credits arrive per transaction signature."""

    __tablename__ = "deposits"
    __table_args__ = (UniqueConstraint("user_id", "idempotency_key"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    currency: Mapped[str] = mapped_column(String(8))
    amount: Mapped[int] = mapped_column(BigInteger)  # asked for
    credited: Mapped[int] = mapped_column(BigInteger, default=0)  # arrived (posted)
    pending: Mapped[int] = mapped_column(BigInteger, default=0)  # seen, commitment not reached
    reference: Mapped[str] = mapped_column(String(44), unique=True)
    recipient: Mapped[str] = mapped_column(String(44))  # the vault owner (Solana Pay recipient)
    vault: Mapped[str] = mapped_column(String(44))  # the vault token account
    mint: Mapped[str] = mapped_column(String(44))
    memo: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    # open | partial (under-paid, still open) | paid | expired
    last_signature: Mapped[str | None] = mapped_column(String(88))


class DepositCredit(Base):
    """One on-chain transaction credited to a deposit, exactly once per signature."""

    __tablename__ = "deposit_credits"

    deposit_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("deposits.id"), index=True)
    signature: Mapped[str] = mapped_column(String(88), unique=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    slot: Mapped[int] = mapped_column(BigInteger)
    payer: Mapped[str] = mapped_column(String(44))
    status: Mapped[str] = mapped_column(String(16))  # pending | credited
    transfer_id: Mapped[uuid.UUID]
    credited_at: Mapped[datetime | None]


class Payout(Base):
    """Money out to a linked wallet. The ledger debit is written first (pending), the chain
    transfer is signed and recorded here (the outbox) before it is sent, and the pending
    transfer is posted on confirmation or voided on failure/expiry."""

    __tablename__ = "payouts"
    __table_args__ = (UniqueConstraint("user_id", "idempotency_key"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16))  # balance | earnings
    currency: Mapped[str] = mapped_column(String(8))  # what leaves the ledger account
    amount: Mapped[int] = mapped_column(BigInteger)  # debited from the account
    fee: Mapped[int] = mapped_column(BigInteger)  # instant payout fee (in `currency`)
    bonus: Mapped[int] = mapped_column(BigInteger, default=0)  # CYX bonus (in `paid_currency`)
    paid_currency: Mapped[str] = mapped_column(String(8))
    paid_amount: Mapped[int] = mapped_column(BigInteger)  # what lands in the wallet
    # what this payout repaid of the user's debt first (posted at once; stays repaid if the
    # transfer fails): the `debt.repay` transfer of the payout's linked set
    debt_repaid: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    wallet: Mapped[str] = mapped_column(String(44))
    kind: Mapped[str] = mapped_column(String(16))  # instant | scheduled
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    # pending (ledger debited) -> sent (signed + submitted) -> confirmed | failed (reversed)
    transfer_id: Mapped[uuid.UUID]
    signature: Mapped[str | None] = mapped_column(String(88))
    raw_tx: Mapped[bytes | None]
    last_valid_block_height: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(500))
    sent_at: Mapped[datetime | None]
    settled_at: Mapped[datetime | None]


class PayoutSettings(Base):
    """How a creator wants to be paid: the currency (CYX earns a bonus) and weekly payouts."""

    __tablename__ = "payout_settings"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), unique=True)
    paid_in: Mapped[str] = mapped_column(String(8), default="USDC")
    weekly: Mapped[bool] = mapped_column(default=False)
    wallet: Mapped[str | None] = mapped_column(String(44))
