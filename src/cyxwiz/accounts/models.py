"""Users, login tokens and API keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cyxwiz.db import Base


class User(Base):
    __tablename__ = "users"

    username: Mapped[str] = mapped_column(String(39), unique=True)
    # Contact data, not an identity: not unique and not a login name, so registration never
    # reveals whether an address already has an account (docs/security.md, accounts).
    email: Mapped[str] = mapped_column(String(254), index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="user")
    display_name: Mapped[str] = mapped_column(String(100), default="")
    bio: Mapped[str] = mapped_column(Text, default="")
    is_active: Mapped[bool] = mapped_column(default=True)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class AuthToken(Base):
    """A bearer access token (API) or a browser session; only its sha256 is stored."""

    __tablename__ = "auth_tokens"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))  # access | session
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(lazy="joined")


class ApiKey(Base):
    """A long-lived scoped key for programs; shown once, stored as a sha256 hash."""

    __tablename__ = "api_keys"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    last_used_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(lazy="joined")


class Wallet(Base):
    """A Solana wallet linked to an account by Sign-In With Solana (the platform never holds
    its key). An address belongs to at most one account."""

    __tablename__ = "wallets"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(44), unique=True)
    label: Mapped[str] = mapped_column(String(64), default="")
    unlinked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(lazy="joined")


class SignInNonce(Base):
    """One Sign-In With Solana challenge: usable once, before it expires, by the address it
    names, for the purpose it names (link a wallet to ``user_id``, or log in)."""

    __tablename__ = "siws_nonces"

    nonce: Mapped[str] = mapped_column(String(64), unique=True)
    address: Mapped[str] = mapped_column(String(44), index=True)
    purpose: Mapped[str] = mapped_column(String(8))  # link | login
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    message: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
