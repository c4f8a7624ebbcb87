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
