"""Attestation records: which Memo transaction carries a version's manifest hash."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from cyxwiz.db import Base


class Attestation(Base):
    """One version's attestation. Written (pending, with the signed transaction) in the same
    commit as the publish; sent after commit; confirmed when the chain has it."""

    __tablename__ = "attestations"

    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), unique=True
    )
    slug: Mapped[str] = mapped_column(String(200))  # owner/name@version
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    memo: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    # pending -> sent -> confirmed | failed (re-signed and sent again)
    signature: Mapped[str | None] = mapped_column(String(88))
    raw_tx: Mapped[bytes | None]
    last_valid_block_height: Mapped[int | None] = mapped_column(BigInteger)
    slot: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(500))
    confirmed_at: Mapped[datetime | None]
