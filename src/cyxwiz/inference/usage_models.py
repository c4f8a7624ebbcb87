"""Usage metering tables: one row per billed (or demo) inference, and demo-credit counters."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from cyxwiz.db import Base


class UsageEvent(Base):
    """One successful inference, written in batches by the meter (append-only).

    ``request_id`` is unique, so a replayed event is stored (and charged) once. ``amount`` is
    what this call added to the caller's charge in minor units of ``currency`` (0 for demo and
    owner calls); when reservation ``reservation_id`` is settled, the ledger posts exactly the
    sum of its events' amounts. The row deliberately has no foreign keys: it is a log that outlives deleted
    models, nodes and keys, and batch inserts stay cheap.
    """

    __tablename__ = "usage_events"
    __table_args__ = (
        CheckConstraint("units >= 0 AND amount >= 0", name="non_negative"),
        Index("ix_usage_events_user_day", "user_id", "day"),
        Index("ix_usage_events_model_day", "model_id", "day"),
        Index("ix_usage_events_node_day", "node_id", "day"),
    )

    request_id: Mapped[str] = mapped_column(String(128), unique=True)
    batch_id: Mapped[uuid.UUID]
    kind: Mapped[str] = mapped_column(String(8))  # paid | demo | owner
    user_id: Mapped[uuid.UUID]
    api_key_id: Mapped[uuid.UUID | None]
    model_id: Mapped[uuid.UUID]
    version_id: Mapped[uuid.UUID]
    node_id: Mapped[uuid.UUID | None]  # None: served from the gateway's result cache
    unit: Mapped[str] = mapped_column(String(8))  # request | token
    units: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(8))
    amount: Mapped[int] = mapped_column(BigInteger, default=0)
    # the reservation (its pending ledger transfer's id) the call was paid from; None: free
    reservation_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    occurred_at: Mapped[datetime]
    day: Mapped[date] = mapped_column(Date)  # UTC day of occurred_at (group-by without dialects)


class DemoCredit(Base):
    """How many of a user's free demo inferences of a model (any version) are used.

    The limit is a setting (``demo_credits_per_model``), applied in the consuming UPDATE
    (``... WHERE used < limit``), so concurrent calls can never use more than the limit.
    """

    __tablename__ = "demo_credits"
    __table_args__ = (
        UniqueConstraint("user_id", "model_id"),
        CheckConstraint("used >= 0", name="non_negative_used"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    model_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("models.id", ondelete="CASCADE"), index=True
    )
    used: Mapped[int] = mapped_column(Integer, default=0)
