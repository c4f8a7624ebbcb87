"""Linked Solana wallets and Sign-In With Solana (SIWS, CAIP-122 text form). Flushes, never commits.

The server issues a one-time challenge naming its domain, the wallet's address, a random nonce and
an expiry; the wallet signs the exact message bytes with ed25519; the server checks the message is
the one it issued, unexpired and unused, and the signature is the address's. The platform never
holds a user's key: a linked wallet is only an address the user has proved they control.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

from solders.pubkey import Pubkey
from solders.signature import Signature
from sqlalchemy import CursorResult, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from cyxwiz.accounts import service as accounts
from cyxwiz.accounts.models import AuthToken, SignInNonce, User, Wallet
from cyxwiz.clock import Clock
from cyxwiz.config import ChainBackend, Settings
from cyxwiz.errors import Conflict, DomainError, InvalidInput, NotAuthenticated, NotFound

PURPOSES: tuple[str, ...] = ("link", "login")
MAX_MESSAGE_CHARS = 2048
MAX_LABEL_CHARS = 64
_NONCE_LINE = re.compile(r"^Nonce: ([A-Za-z0-9]{8,64})$", re.MULTILINE)


class InvalidSignature(DomainError):
    code = "invalid_signature"
    status = 401
    title = "Invalid signature"


class SiwsRefused(NotAuthenticated):
    """A Sign-In With Solana message that is not a live challenge of ours."""

    code = "siws_message_mismatch"
    title = "Sign-In With Solana refused"


class WalletNotLinked(DomainError):
    code = "wallet_not_linked"
    status = 409
    title = "Wallet not linked"


# ---------------------------------------------------------------- the message


def normalize_address(address: str) -> str:
    """The canonical base58 form of a Solana address, or a 422 invalid_address."""
    try:
        return str(Pubkey.from_string(address.strip()))
    except (ValueError, TypeError):
        raise InvalidInput(
            f"{address[:60]!r} is not a Solana address", code="invalid_address"
        ) from None


def chain_id(settings: Settings) -> str:
    """The CAIP-122 chain id the messages name: localnet for the embedded chain, else the
    cluster the RPC URL points at (devnet, testnet, localnet or mainnet)."""
    if settings.chain_backend is ChainBackend.local:
        return "localnet"
    host = urlsplit(settings.chain_rpc_url or "").hostname or ""
    for name in ("devnet", "testnet"):
        if name in host:
            return name
    if host in ("localhost", "127.0.0.1", "::1"):
        return "localnet"
    return "mainnet"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_message(
    *,
    settings: Settings,
    address: str,
    statement: str,
    nonce: str,
    issued_at: datetime,
    expires_at: datetime,
) -> str:
    """The SIWS / CAIP-122 message text a wallet signs."""
    uri = settings.base_url.rstrip("/")
    domain = urlsplit(uri).netloc or uri
    return (
        f"{domain} wants you to sign in with your Solana account:\n"
        f"{address}\n"
        f"\n"
        f"{statement}\n"
        f"\n"
        f"URI: {uri}\n"
        f"Version: 1\n"
        f"Chain ID: {chain_id(settings)}\n"
        f"Nonce: {nonce}\n"
        f"Issued At: {_iso(issued_at)}\n"
        f"Expiration Time: {_iso(expires_at)}"
    )


def _statement(purpose: str, user: User | None) -> str:
    free = "Signing proves you control this wallet; it costs nothing and moves no funds."
    if purpose == "link":
        assert user is not None
        return f"Link this wallet to @{user.username} on CyxWiz to receive payouts. {free}"
    return f"Log in to CyxWiz with this wallet. {free}"


def challenge(
    session: Session,
    *,
    settings: Settings,
    clock: Clock,
    address: str,
    purpose: str,
    user: User | None = None,
) -> SignInNonce:
    """A new one-time challenge for ``address`` (to link it to ``user``, or to log in)."""
    if purpose not in PURPOSES:
        raise InvalidInput(f"purpose must be one of {list(PURPOSES)}")
    if purpose == "link" and user is None:
        raise InvalidInput("linking a wallet needs the account to link it to")
    addr = normalize_address(address)
    now = clock.now()
    expires = now + timedelta(seconds=settings.siws_ttl_seconds)
    nonce = secrets.token_hex(16)  # 128 random bits, alphanumeric as CAIP-122 asks
    row = SignInNonce(
        nonce=nonce,
        address=addr,
        purpose=purpose,
        user_id=user.id if purpose == "link" and user is not None else None,
        message=build_message(
            settings=settings,
            address=addr,
            statement=_statement(purpose, user),
            nonce=nonce,
            issued_at=now,
            expires_at=expires,
        ),
        expires_at=expires,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


# ---------------------------------------------------------------- verification


def _signature_candidates(signature: str) -> list[bytes]:
    """The 64-byte values a signature string may encode: base58 (wallets' signMessage, bs58)
    or base64 (standard or URL-safe, padding optional)."""
    text = signature.strip()
    out: list[bytes] = []
    with contextlib.suppress(ValueError):
        out.append(bytes(Signature.from_string(text)))
    padded = text + "=" * (-len(text) % 4)
    for altchars in (None, b"-_"):
        try:
            raw = base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 64 and raw not in out:
            out.append(raw)
    return out


def signature_valid(*, address: str, message: str, signature: str) -> bool:
    """True when ``signature`` is ``address``'s ed25519 signature of the message's UTF-8 bytes."""
    try:
        key = Pubkey.from_string(address)
    except ValueError:
        return False
    data = message.encode("utf-8")
    return any(Signature(raw).verify(key, data) for raw in _signature_candidates(signature))


def _verify(
    session: Session,
    *,
    clock: Clock,
    message: str,
    signature: str,
    purpose: str | None,
    user_id: uuid.UUID | None = None,
) -> SignInNonce:
    if len(message) > MAX_MESSAGE_CHARS:
        raise SiwsRefused("this is not a sign-in message issued by this server")
    found = _NONCE_LINE.search(message)
    row = (
        session.scalar(select(SignInNonce).where(SignInNonce.nonce == found.group(1)))
        if found
        else None
    )
    if row is None or not hmac.compare_digest(row.message.encode(), message.encode()):
        raise SiwsRefused(
            "this is not a sign-in message issued by this server; request a new challenge "
            "and sign it unchanged"
        )
    if not signature_valid(address=row.address, message=message, signature=signature):
        raise InvalidSignature(
            f"the signature is not {row.address}'s signature of this message "
            "(send the signMessage output as base58 or base64)"
        )
    if purpose is not None and row.purpose != purpose:
        what = "link a wallet" if row.purpose == "link" else "log in"
        raise SiwsRefused(f"this challenge was issued to {what}; request a new one")
    if purpose == "link" and row.user_id != user_id:
        raise SiwsRefused("this challenge was issued to another account; request a new one")
    now = clock.now()
    if row.used_at is not None:
        raise SiwsRefused("this sign-in message was already used", code="siws_nonce_used")
    if row.expires_at <= now:
        raise SiwsRefused(
            "this sign-in message has expired; request a new challenge", code="siws_nonce_expired"
        )
    # One use, even under concurrency: only the first UPDATE finds used_at still NULL (on
    # PostgreSQL a concurrent one waits for the row lock, then re-checks the condition).
    result = cast(
        "CursorResult[Any]",
        session.execute(
            update(SignInNonce)
            .where(SignInNonce.id == row.id, SignInNonce.used_at.is_(None))
            .values(used_at=now)
        ),
    )
    if result.rowcount != 1:
        raise SiwsRefused("this sign-in message was already used", code="siws_nonce_used")
    session.flush()
    return row


def verify(
    session: Session, *, settings: Settings, clock: Clock, message: str, signature: str
) -> SignInNonce:
    """The challenge ``message`` answers, marked used, once its text, signature, expiry and
    single use check out; otherwise a 401 naming what failed."""
    return _verify(session, clock=clock, message=message, signature=signature, purpose=None)


# ---------------------------------------------------------------- wallets


def _active(session: Session, address: str) -> Wallet | None:
    return session.scalar(
        select(Wallet).where(Wallet.address == address, Wallet.unlinked_at.is_(None))
    )


def link_wallet(
    session: Session,
    *,
    settings: Settings,
    clock: Clock,
    user: User,
    message: str,
    signature: str,
    label: str = "",
) -> tuple[Wallet, bool]:
    """Link the wallet that signed a link challenge for ``user``; (wallet, newly linked).
    Linking it again to the same user changes nothing; another account's wallet is a 409."""
    label = label.strip()
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidInput(f"label must be at most {MAX_LABEL_CHARS} characters")
    nonce = _verify(
        session, clock=clock, message=message, signature=signature, purpose="link", user_id=user.id
    )
    now = clock.now()
    for _ in range(2):  # a second pass only after losing a race for the same address
        wallet = session.scalar(select(Wallet).where(Wallet.address == nonce.address))
        if wallet is not None and wallet.unlinked_at is None:
            if wallet.user_id != user.id:
                raise Conflict(
                    "this wallet is linked to another account; unlink it there first",
                    code="wallet_taken",
                )
            return wallet, False
        if wallet is not None:  # unlinked earlier (by anyone): link it again, to this user
            result = cast(
                "CursorResult[Any]",
                session.execute(
                    update(Wallet)
                    .where(Wallet.id == wallet.id, Wallet.unlinked_at.is_not(None))
                    .values(user_id=user.id, unlinked_at=None, label=label, created_at=now)
                    .execution_options(synchronize_session=False)
                ),
            )
            if result.rowcount == 1:
                session.flush()
                session.refresh(wallet)
                return wallet, True
            session.expire(wallet)
            continue
        try:
            with session.begin_nested():
                wallet = Wallet(user_id=user.id, address=nonce.address, label=label, created_at=now)
                session.add(wallet)
        except sa_exc.IntegrityError:  # linked concurrently by another request
            continue
        return wallet, True
    raise Conflict("this wallet is being linked by another request; try again", code="wallet_taken")


def login_with_wallet(
    session: Session, *, settings: Settings, clock: Clock, message: str, signature: str
) -> tuple[str, AuthToken]:
    """An access token (raw value once) for the active account the signing wallet is linked
    to, like a password login; 401 wallet_not_linked if there is none."""
    nonce = _verify(session, clock=clock, message=message, signature=signature, purpose="login")
    wallet = _active(session, nonce.address)
    if wallet is None or not wallet.user.is_active:
        raise WalletNotLinked(
            "this wallet is not linked to an active account; log in with your password and "
            "link it first",
            status=401,
        )
    return accounts.issue_token(
        session, user=wallet.user, kind="access", ttl_seconds=settings.access_token_ttl_seconds
    )


def list_wallets(session: Session, *, user: User) -> list[Wallet]:
    """The user's linked wallets, oldest link first (unlinked ones left out)."""
    return list(
        session.scalars(
            select(Wallet)
            .where(Wallet.user_id == user.id, Wallet.unlinked_at.is_(None))
            .order_by(Wallet.created_at, Wallet.address)
        )
    )


def unlink_wallet(session: Session, *, clock: Clock, user: User, address: str) -> Wallet:
    """Unlink one of the user's wallets (kept as history; it may be linked again later)."""
    addr = normalize_address(address)
    wallet = _active(session, addr)
    if wallet is None or wallet.user_id != user.id:
        raise NotFound(f"no wallet {addr} is linked to your account", code="wallet_not_found")
    wallet.unlinked_at = clock.now()
    session.flush()
    return wallet


def linked_wallet(session: Session, user_id: uuid.UUID, address: str | None = None) -> Wallet:
    """The user's active wallet (the given address, or the most recently linked), else a 409
    wallet_not_linked."""
    q = select(Wallet).where(Wallet.user_id == user_id, Wallet.unlinked_at.is_(None))
    if address:
        q = q.where(Wallet.address == address.strip())
    wallet = session.scalar(q.order_by(Wallet.created_at.desc()).limit(1))
    if wallet is None:
        raise WalletNotLinked(
            "payouts go only to a wallet linked to your account (Sign-In With Solana)"
            + (f"; {address} is not linked" if address else "; link one first")
        )
    return wallet
