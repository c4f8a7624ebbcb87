"""Inference nodes (run by approved operators), the operator trust tier, and which model
versions each node may serve."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cyxwiz.accounts.models import User
from cyxwiz.db import Base

NODE_STATUSES = ("pending", "online", "draining", "offline")
OPERATOR_STATUSES = ("applied", "approved", "rejected", "revoked")


class NodeOperator(Base):
    """A user's standing as a node operator: an application an admin decides on.

    Only a user whose row is ``approved`` may create nodes, and a node is routed to, gets
    data keys and blobs only while its operator's row is ``approved`` (docs/inference.md,
    "Trust model"). One row per user: applying again after a rejection or a revocation
    moves the same row back to ``applied``.
    """

    __tablename__ = "inference_node_operators"
    __table_args__ = (
        CheckConstraint(
            "status IN ('applied', 'approved', 'rejected', 'revoked')", name="known_status"
        ),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), unique=True
    )
    status: Mapped[str] = mapped_column(String(16), default="applied", index=True)
    statement: Mapped[str] = mapped_column(String(2000), default="")
    applied_at: Mapped[datetime | None]
    decided_by_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    decided_at: Mapped[datetime | None]
    reason: Mapped[str] = mapped_column(String(500), default="")

    user: Mapped[User] = relationship(foreign_keys=[user_id], lazy="joined")
    decided_by: Mapped[User | None] = relationship(foreign_keys=[decided_by_id], lazy="joined")


class Node(Base):
    """A node agent process an operator runs; it authenticates with a node token (hash kept).

    ``gateway_secret`` is the bearer the marketplace's gateway presents on every call *to* the
    node. It is a platform credential, not the operator's: the marketplace must send it, so it
    is stored as is (a fresh one is issued at every registration).
    """

    __tablename__ = "inference_nodes"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'online', 'draining', 'offline')", name="known_status"
        ),
        CheckConstraint("capacity >= 0 AND load >= 0", name="non_negative_load"),
    )

    operator_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_prefix: Mapped[str] = mapped_column(String(16))
    gateway_secret: Mapped[str | None] = mapped_column(String(128))
    url: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    capacity: Mapped[int] = mapped_column(Integer, default=0)
    load: Mapped[int] = mapped_column(Integer, default=0)
    warm_version_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    agent_version: Mapped[str] = mapped_column(String(64), default="")
    registered_at: Mapped[datetime | None]
    last_heartbeat_at: Mapped[datetime | None]
    drained_at: Mapped[datetime | None]  # set = drain requested (sticky until resumed)
    deleted_at: Mapped[datetime | None]  # set = retired: token refused, row kept for history

    operator: Mapped[User] = relationship(lazy="joined")


class NodeAssignment(Base):
    """The platform allows ``node`` to fetch the files and data keys of ``version``."""

    __tablename__ = "inference_node_assignments"
    __table_args__ = (UniqueConstraint("node_id", "version_id"),)

    node_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("inference_nodes.id", ondelete="CASCADE"))
    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
