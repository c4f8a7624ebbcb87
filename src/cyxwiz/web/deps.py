"""Dependency aliases shared by API and UI routes (SessionDep, CurrentUser, ...)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.accounts.service import Principal, resolve_bearer
from cyxwiz.chain.interfaces import Chain
from cyxwiz.clock import Clock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.errors import NotAuthenticated, PermissionDenied
from cyxwiz.inference.gateway import Gateway
from cyxwiz.licensing.keys import LicenseSigner
from cyxwiz.storage import BlobStore
from cyxwiz.web.clientip import client_ip
from cyxwiz.web.throttle import AuthThrottle, counters_from_settings

SESSION_COOKIE = "cxw_session"
CSRF_COOKIE = "cxw_csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class AppContext:
    """What every request handler may use; built once per process by the app factory."""

    settings: Settings
    db: Database
    blobs: BlobStore
    clock: Clock
    signer: LicenseSigner
    gateway: Gateway | None = None  # the inference gateway (web/api/v1/inference.py)
    throttle: AuthThrottle | None = None  # sign-in / sign-up throttles (web/throttle.py)
    chain_factory: Callable[[], Chain] | None = None
    _chain: Chain | None = field(default=None, repr=False)
    _chain_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    owns_chain: bool = False

    @property
    def chain(self) -> Chain:
        """The settlement chain, opened on first use (the local one is owned by one process)."""
        if self._chain is None:
            with self._chain_lock:
                if self._chain is None:
                    if self.chain_factory is None:
                        from cyxwiz.chain.factory import open_chain

                        self._chain = open_chain(self.settings)
                        self.owns_chain = True
                    else:
                        self._chain = self.chain_factory()
        return self._chain

    def close_chain(self) -> None:
        if self._chain is not None and self.owns_chain:
            self._chain.close()
            self._chain = None


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def get_settings_dep(request: Request) -> Settings:
    return get_ctx(request).settings


def get_blobs(request: Request) -> BlobStore:
    return get_ctx(request).blobs


def get_session(request: Request) -> Iterator[Session]:
    """One session per request, committed before the response is sent (rolled back on error)."""
    with get_ctx(request).db.session() as session:
        yield session


def get_chain(request: Request) -> Chain:
    return get_ctx(request).chain


def get_throttle(request: Request) -> AuthThrottle:
    """The app's sign-in / sign-up throttles (built on first use from the settings)."""
    ctx = get_ctx(request)
    if ctx.throttle is None:
        ctx.throttle = AuthThrottle(ctx.settings, counters_from_settings(ctx.settings))
    return ctx.throttle


def get_client_ip(request: Request) -> str:
    """The caller's IP for throttles (``cyxwiz.web.clientip``)."""
    return client_ip(request.scope, trusted_proxies=get_ctx(request).settings.trusted_proxy_count)


CtxDep = Annotated[AppContext, Depends(get_ctx)]
ChainDep = Annotated[Chain, Depends(get_chain)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
BlobStoreDep = Annotated[BlobStore, Depends(get_blobs)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ThrottleDep = Annotated[AuthThrottle, Depends(get_throttle)]
ClientIpDep = Annotated[str, Depends(get_client_ip)]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise NotAuthenticated(
            "Authorization header must be 'Bearer <token>'",
            code="invalid_token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return value.strip()


def get_principal(request: Request, session: SessionDep) -> Principal | None:
    """The caller, from a bearer token or API key, or from the session cookie.

    The cookie counts on UI routes (which check CSRF on forms) and on safe methods of the API
    (browser downloads); a cookie never authorizes a state-changing API call.
    """
    raw = _bearer(request)
    if raw is not None:
        try:
            return resolve_bearer(session, raw=raw)
        except NotAuthenticated as exc:
            exc.headers.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')
            raise
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    is_api = request.url.path.startswith(("/api/", "/v2/"))
    if is_api and request.method not in SAFE_METHODS:
        return None
    try:
        principal = resolve_bearer(session, raw=cookie)
    except NotAuthenticated:
        return None
    return principal if principal.via == "session" else None


PrincipalDep = Annotated[Principal | None, Depends(get_principal)]


def require_scope(scope: str) -> Callable[..., User]:
    def dependency(principal: PrincipalDep) -> User:
        if principal is None:
            raise NotAuthenticated(
                "log in or send 'Authorization: Bearer <token or API key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not principal.has_scope(scope):
            raise PermissionDenied(
                f"this API key lacks the {scope!r} scope", code="insufficient_scope"
            )
        return principal.user

    return dependency


def optional_viewer(principal: PrincipalDep) -> User | None:
    """The caller if any (API keys need the 'read' scope to read as themselves)."""
    if principal is None:
        return None
    if not principal.has_scope("read"):
        raise PermissionDenied("this API key lacks the 'read' scope", code="insufficient_scope")
    return principal.user


ViewerDep = Annotated[User | None, Depends(optional_viewer)]
ReaderDep = Annotated[User, Depends(require_scope("read"))]
CurrentUser = Annotated[User, Depends(require_scope("write"))]


def require_admin(user: CurrentUser) -> User:
    if not user.is_admin:
        raise PermissionDenied("admins only", code="admin_required")
    return user


AdminUser = Annotated[User, Depends(require_admin)]
