"""Offers (a model's pricing document) and licenses (what a buyer holds)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cyxwiz.accounts.models import User
from cyxwiz.catalog.models import Model
from cyxwiz.db import Base, utcnow


class Offer(Base):
    """The pricing document of one model (``{"one_time": {...}}``; later issues add more)."""

    __tablename__ = "offers"

    model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), unique=True
    )
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class License(Base):
    """A buyer's right to a model. At most one active license per buyer and model."""

    __tablename__ = "licenses"
    __table_args__ = (
        Index(
            "uq_licenses_active_buyer_model",
            "buyer_id",
            "model_id",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )

    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id"), index=True)
    buyer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32), default="perpetual")
    scope: Mapped[str] = mapped_column(String(32), default="download")
    status: Mapped[str] = mapped_column(String(16), default="active")  # active|refunded|revoked
    currency: Mapped[str] = mapped_column(String(8))
    amount_paid: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    downloads: Mapped[int] = mapped_column(BigInteger, default=0)

    model: Mapped[Model] = relationship(lazy="joined")
    buyer: Mapped[User] = relationship(lazy="joined")
