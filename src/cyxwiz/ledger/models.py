"""Double-entry ledger tables: accounts with running balances, immutable transfers."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from cyxwiz.db import Base


class LedgerAccount(Base):
    """An account in one currency. Balances are maintained with every transfer and must
    always equal the replay of that account's transfers (``cyxwiz ledger check`` proves it)."""

    __tablename__ = "ledger_accounts"
    __table_args__ = (
        CheckConstraint(
            "debits_pending >= 0 AND debits_posted >= 0"
            " AND credits_pending >= 0 AND credits_posted >= 0",
            name="non_negative_totals",
        ),
    )

    code: Mapped[str] = mapped_column(String(128), unique=True)
    currency: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(32), index=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"), index=True)
    # TigerBeetle-style limit flags, checked atomically with every balance update.
    debits_must_not_exceed_credits: Mapped[bool] = mapped_column(default=False)
    credits_must_not_exceed_debits: Mapped[bool] = mapped_column(default=False)
    debits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    debits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_posted: Mapped[int] = mapped_column(BigInteger, default=0)


class LedgerTransfer(Base):
    """An immutable movement of ``amount`` from one account to another (same currency).

    ``id`` is chosen by the client, so a retried request maps to the same row. A pending
    transfer reserves funds; exactly one later transfer may post (≤ amount) or void it, which
    the unique ``pending_id`` enforces in the database.
    """

    __tablename__ = "ledger_transfers"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="non_negative_amount"),
        CheckConstraint("debit_account_id <> credit_account_id", name="distinct_accounts"),
        Index("ix_ledger_transfers_debit", "debit_account_id", "created_at"),
        Index("ix_ledger_transfers_credit", "credit_account_id", "created_at"),
    )

    debit_account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ledger_accounts.id"))
    credit_account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("ledger_accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(16), default="posted")  # posted|pending|post|void
    pending_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ledger_transfers.id"), unique=True
    )
    code: Mapped[str] = mapped_column(String(64), index=True)
    ref: Mapped[str | None] = mapped_column(String(128), index=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON)
