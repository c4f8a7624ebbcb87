"""security: node operator trust tier and approval

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 15:20:00
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import cyxwiz.db

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inference_node_operators",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("statement", sa.String(length=2000), nullable=False),
        sa.Column("applied_at", cyxwiz.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("decided_by_id", sa.Uuid(), nullable=True),
        sa.Column("decided_at", cyxwiz.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", cyxwiz.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('applied', 'approved', 'rejected', 'revoked')",
            name=op.f("ck_inference_node_operators_known_status"),
        ),
        sa.ForeignKeyConstraint(
            ["decided_by_id"],
            ["users.id"],
            name=op.f("fk_inference_node_operators_decided_by_id_users"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_inference_node_operators_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_node_operators")),
        sa.UniqueConstraint("user_id", name=op.f("uq_inference_node_operators_user_id")),
    )
    with op.batch_alter_table("inference_node_operators", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inference_node_operators_status"), ["status"], unique=False
        )
    # Operators of nodes that already exist were never approved: their nodes leave routing
    # and lose access to data keys until an admin approves them (issue 9); they show up as
    # pending applications, so an admin sees whom to decide on.
    table = sa.table(
        "inference_node_operators",
        sa.column("id", sa.Uuid()),
        sa.column("user_id", sa.Uuid()),
        sa.column("status", sa.String()),
        sa.column("statement", sa.String()),
        sa.column("applied_at", cyxwiz.db.UTCDateTime(timezone=True)),
        sa.column("reason", sa.String()),
        sa.column("created_at", cyxwiz.db.UTCDateTime(timezone=True)),
    )
    now = datetime.now(UTC)
    operators = op.get_bind().execute(sa.text("SELECT DISTINCT operator_id FROM inference_nodes"))
    rows = [
        {
            "id": uuid.uuid4(),
            "user_id": uuid.UUID(str(user_id)),
            "status": "applied",
            "statement": "(ran nodes before operator approval existed)",
            "applied_at": now,
            "reason": "",
            "created_at": now,
        }
        for (user_id,) in operators
    ]
    if rows:
        op.bulk_insert(table, rows)


def downgrade() -> None:
    with op.batch_alter_table("inference_node_operators", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inference_node_operators_status"))
    op.drop_table("inference_node_operators")
