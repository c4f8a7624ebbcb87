"""security: per-file scan verdicts of model files

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 15:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import cyxwiz.db

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scan_status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("scan_format", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("scan_findings", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("scanner", sa.String(length=40), nullable=True))
        batch_op.add_column(
            sa.Column("scanned_at", cyxwiz.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("model_files", schema=None) as batch_op:
        batch_op.drop_column("scanned_at")
        batch_op.drop_column("scanner")
        batch_op.drop_column("scan_findings")
        batch_op.drop_column("scan_format")
        batch_op.drop_column("scan_status")
