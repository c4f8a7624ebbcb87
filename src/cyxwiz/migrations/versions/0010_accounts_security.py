"""security: login and registration throttles; emails are contact data, not unique

Throttles keep their counters in Redis or in process memory (no tables). A unique email let
registration disclose whether an address had an account, so the unique constraint becomes a
plain index and login is by username only.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 15:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_users_email"), type_="unique")
        batch_op.create_index(batch_op.f("ix_users_email"), ["email"], unique=False)


def downgrade() -> None:
    # Fails if two accounts share an email by then: merge or edit them first.
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_users_email"))
        batch_op.create_unique_constraint(batch_op.f("uq_users_email"), ["email"])
