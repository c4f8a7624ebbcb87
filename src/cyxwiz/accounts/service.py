"""Account operations: registration, login, bearer tokens, API keys. Flushes, never commits."""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import ApiKey, AuthToken, User
from cyxwiz.accounts.passwords import check_password, has_control_characters
from cyxwiz.db import utcnow
from cyxwiz.errors import Conflict, DomainError, InvalidInput, NotAuthenticated, NotFound

USERNAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){1,38}$")
EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
# Top-level URL segments the web UI uses; a user named like one would shadow it.
RESERVED_USERNAMES = frozenset(
    {
        "admin",
        "api",
        "auth",
        "categories",
        "chain",
        "creator",
        "dashboard",
        "docs",
        "health",
        "login",
        "logout",
        "me",
        "models",
        "new",
        "openapi",
        "redoc",
        "search",
        "settings",
        "signup",
        "static",
        "support",
        "v2",
        "library",
        "earnings",
        "wallet",
        "deposit",
        "payouts",
        "nodes",
        "favicon-ico",
        "robots-txt",
        "cyxwiz",
        "root",
        "system",
        "null",
        "undefined",
        "help",
        "about",
        "terms",
        "privacy",
    }
)
SCOPES = ("read", "write", "inference")
ACCESS_PREFIX = "cxw_at_"
SESSION_PREFIX = "cxw_ss_"
API_KEY_PREFIX = "cxw_sk_"

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile
_DUMMY_HASH = _hasher.hash("cyxwiz-timing-equaliser")


@dataclass(frozen=True)
class Principal:
    """Who is calling and with which scopes (None = everything the user may do)."""

    user: User
    via: str  # access | session | api_key
    scopes: frozenset[str] | None = None
    api_key_id: uuid.UUID | None = field(default=None)

    def has_scope(self, scope: str) -> bool:
        return self.scopes is None or scope in self.scopes


class InvalidCredentials(DomainError):
    code = "invalid_credentials"
    status = 401
    title = "Invalid credentials"


def _hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def normalize_username(username: str) -> str:
    return username.strip().lower()


def validate_username(username: str) -> str:
    """The canonical username, or InvalidInput saying what rule it breaks."""
    name = normalize_username(username)
    if not USERNAME_RE.match(name):
        raise InvalidInput(
            "username must be 2-39 characters of a-z, 0-9 and single hyphens, "
            "not starting or ending with a hyphen",
            code="invalid_username",
        )
    if name in RESERVED_USERNAMES:
        raise InvalidInput(f"username {name!r} is reserved", code="invalid_username")
    return name


def validate_password(password: str, *, username: str = "", email: str = "") -> None:
    """Return if ``password`` meets the policy (``cyxwiz.accounts.passwords``), else InvalidInput."""
    check_password(password, username=username, email=email)


def _usable_text(text: str) -> bool:
    """True if ``text`` can be stored and hashed (UTF-8 encodable, no control characters)."""
    return not has_control_characters(text)


def register(
    session: Session,
    *,
    username: str,
    email: str,
    password: str,
    role: str = "user",
    display_name: str = "",
) -> User:
    """Create an account; usernames are unique case-insensitively.

    Emails are contact data, not identities: they are not unique and never checked against
    other accounts, so registering never tells anyone whether an address has an account.
    """
    name = validate_username(username)
    mail = email.strip().lower()
    if not EMAIL_RE.match(mail) or len(mail) > 254 or not _usable_text(mail):
        raise InvalidInput("email is not a valid address", code="invalid_email")
    validate_password(password, username=name, email=mail)
    if role not in ("user", "admin"):
        raise InvalidInput("role must be 'user' or 'admin'")
    if session.scalar(select(User.id).where(User.username == name)) is not None:
        raise Conflict(f"username {name!r} is taken", code="username_taken")
    shown = display_name.strip()[:100]
    if not _usable_text(shown):
        raise InvalidInput(
            "display name must not contain control characters", code="invalid_display_name"
        )
    user = User(
        username=name,
        email=mail,
        password_hash=_hasher.hash(password),
        role=role,
        display_name=shown or name,
    )
    try:
        with session.begin_nested():  # a concurrent sign-up of the same name: 409, not 500
            session.add(user)
            session.flush()
    except sa_exc.IntegrityError:
        raise Conflict(f"username {name!r} is taken", code="username_taken") from None
    return user


def authenticate(session: Session, *, login: str, password: str) -> User:
    """The user whose username and password match, else InvalidCredentials.

    Login is by username only: emails are not unique (see ``register``)."""
    key = normalize_username(login)
    if not _usable_text(key) or not _usable_text(password):
        # Unencodable or control characters match no account and no stored hash.
        with contextlib.suppress(VerificationError):
            _hasher.verify(_DUMMY_HASH, "cyxwiz-timing-equaliser-miss")
        raise InvalidCredentials("username or password is wrong")
    user = session.scalar(select(User).where(User.username == key))
    if user is None:
        with contextlib.suppress(VerificationError):
            _hasher.verify(_DUMMY_HASH, password)
        raise InvalidCredentials("username or password is wrong")
    try:
        _hasher.verify(user.password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        raise InvalidCredentials("username or password is wrong") from None
    if not user.is_active:
        raise InvalidCredentials("this account is disabled", code="account_disabled")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return user


def issue_token(
    session: Session, *, user: User, kind: str, ttl_seconds: int
) -> tuple[str, AuthToken]:
    """A new bearer token (kind 'access') or browser session (kind 'session'); raw value once."""
    prefix = ACCESS_PREFIX if kind == "access" else SESSION_PREFIX
    raw = prefix + secrets.token_urlsafe(32)
    token = AuthToken(
        user_id=user.id,
        kind=kind,
        token_hash=_hash_token(raw),
        expires_at=utcnow() + timedelta(seconds=ttl_seconds),
    )
    session.add(token)
    session.flush()
    return raw, token


def revoke_token(session: Session, *, raw: str) -> None:
    """End a token or session; unknown tokens are ignored."""
    token = session.scalar(select(AuthToken).where(AuthToken.token_hash == _hash_token(raw)))
    if token is not None:
        session.delete(token)
        session.flush()


def _touch(obj: AuthToken | ApiKey, now: datetime) -> None:
    # Write last-used at most once a minute so a busy key does not write on every request.
    if obj.last_used_at is None or now - obj.last_used_at > timedelta(seconds=60):
        obj.last_used_at = now


def resolve_bearer(session: Session, *, raw: str) -> Principal:
    """The principal for an access token, session or API key; NotAuthenticated otherwise."""
    now = utcnow()
    if raw.startswith(API_KEY_PREFIX):
        key = session.scalar(select(ApiKey).where(ApiKey.key_hash == _hash_token(raw)))
        if key is None or key.revoked_at is not None:
            raise NotAuthenticated("API key is invalid or revoked", code="invalid_token")
        if key.expires_at is not None and key.expires_at <= now:
            raise NotAuthenticated("API key has expired", code="token_expired")
        if not key.user.is_active:
            raise NotAuthenticated("this account is disabled", code="account_disabled")
        _touch(key, now)
        return Principal(
            user=key.user, via="api_key", scopes=frozenset(key.scopes), api_key_id=key.id
        )
    if raw.startswith((ACCESS_PREFIX, SESSION_PREFIX)):
        token = session.scalar(select(AuthToken).where(AuthToken.token_hash == _hash_token(raw)))
        if token is None:
            raise NotAuthenticated("token is invalid", code="invalid_token")
        if token.expires_at <= now:
            raise NotAuthenticated("token has expired; log in again", code="token_expired")
        if not token.user.is_active:
            raise NotAuthenticated("this account is disabled", code="account_disabled")
        _touch(token, now)
        return Principal(user=token.user, via=token.kind)
    raise NotAuthenticated("token is invalid", code="invalid_token")


def create_api_key(
    session: Session,
    *,
    user: User,
    name: str,
    scopes: list[str],
    expires_at: datetime | None = None,
) -> tuple[str, ApiKey]:
    """A new API key with the given scopes; the raw key is returned once and never stored."""
    name = name.strip()
    if not name or len(name) > 100:
        raise InvalidInput("name must be 1-100 characters")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(
            f"scopes must be a non-empty subset of {list(SCOPES)}; unknown: {unknown}",
            code="invalid_scope",
        )
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput("expires_at must be in the future")
    raw = API_KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        user_id=user.id,
        name=name,
        prefix=raw[: len(API_KEY_PREFIX) + 6],
        key_hash=_hash_token(raw),
        scopes=sorted(set(scopes)),
        expires_at=expires_at,
    )
    session.add(key)
    session.flush()
    return raw, key


def list_api_keys(session: Session, *, user: User) -> list[ApiKey]:
    """The user's keys, newest first, revoked ones included."""
    return list(
        session.scalars(
            select(ApiKey).where(ApiKey.user_id == user.id).order_by(ApiKey.created_at.desc())
        )
    )


def revoke_api_key(session: Session, *, user: User, key_id: uuid.UUID) -> ApiKey:
    """Revoke one of the user's keys (idempotent); other users' keys are NotFound."""
    key = session.get(ApiKey, key_id)
    if key is None or key.user_id != user.id:
        raise NotFound("no such API key", code="api_key_not_found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def get_user_by_username(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == normalize_username(username)))
    if user is None:
        raise NotFound(f"no user {username!r}", code="user_not_found")
    return user


def count_users(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(User)) or 0
