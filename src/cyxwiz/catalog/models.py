"""Listings, versions, files, categories, tags and contributors."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cyxwiz.accounts.models import User
from cyxwiz.db import Base, utcnow

VISIBILITIES = ("draft", "public", "unlisted", "private")


class Category(Base):
    __tablename__ = "categories"

    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    parent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("categories.id"), index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)

    parent: Mapped[Category | None] = relationship(remote_side="Category.id", lazy="joined")


class Model(Base):
    """A listing: ``owner/name``, its metadata, card and contributors."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(120))
    summary: Mapped[str] = mapped_column(String(300), default="")
    category_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("categories.id"), index=True)
    task: Mapped[str] = mapped_column(String(64), default="")
    framework: Mapped[str] = mapped_column(String(32), default="onnx")
    license: Mapped[str] = mapped_column(String(64), default="other")
    visibility: Mapped[str] = mapped_column(String(16), default="draft", index=True)
    card: Mapped[str] = mapped_column(Text, default="")
    downloads: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(index=True)

    owner: Mapped[User] = relationship(lazy="joined")
    category: Mapped[Category] = relationship(lazy="joined")
    tag_rows: Mapped[list[ModelTag]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="ModelTag.tag"
    )
    contributors: Mapped[list[ModelContributor]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="ModelContributor.position"
    )
    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model",
        cascade="all, delete-orphan",
        order_by="ModelVersion.created_at.desc()",
        lazy="selectin",
    )

    @property
    def full_name(self) -> str:
        return f"{self.owner.username}/{self.name}"

    @property
    def tags(self) -> list[str]:
        return sorted(t.tag for t in self.tag_rows)

    @property
    def latest_version(self) -> ModelVersion | None:
        published = [v for v in self.versions if v.status == "published"]
        return max(published, key=lambda v: v.published_at or v.created_at) if published else None


class ModelTag(Base):
    __tablename__ = "model_tags"
    __table_args__ = (UniqueConstraint("model_id", "tag"),)

    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    tag: Mapped[str] = mapped_column(String(40), index=True)


class ModelContributor(Base):
    """A share of a model's revenue in basis points; a model's shares sum to 10000."""

    __tablename__ = "model_contributors"
    __table_args__ = (UniqueConstraint("model_id", "user_id"),)

    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    share_bps: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(40), default="creator")
    position: Mapped[int] = mapped_column(Integer, default=0)

    user: Mapped[User] = relationship(lazy="joined")


class ModelVersion(Base):
    """A version: files may change while it is a draft; once published it is immutable."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    model_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="draft")
    notes: Mapped[str] = mapped_column(Text, default="")
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    published_at: Mapped[datetime | None]

    model: Mapped[Model] = relationship(back_populates="versions")
    files: Mapped[list[ModelFile]] = relationship(
        back_populates="version",
        cascade="all, delete-orphan",
        order_by="ModelFile.path",
        lazy="selectin",
    )

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)


class ModelFile(Base):
    """A file of a version; its bytes live encrypted in the blob store under ``sha256``."""

    __tablename__ = "model_files"
    __table_args__ = (UniqueConstraint("version_id", "path"),)

    version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    path: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    content_type: Mapped[str] = mapped_column(String(100), default="application/octet-stream")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # The safety scan made at publish (cyxwiz.scanning); all None until then (drafts, and files
    # published before scanning existed). scan_status: clean | suspicious | dangerous |
    # not_applicable; scan_findings: the findings list (imports, problems); scanner: name/version.
    scan_status: Mapped[str | None] = mapped_column(String(16))
    scan_format: Mapped[str | None] = mapped_column(String(32))
    scan_findings: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    scanner: Mapped[str | None] = mapped_column(String(40))
    scanned_at: Mapped[datetime | None]

    version: Mapped[ModelVersion] = relationship(back_populates="files")
