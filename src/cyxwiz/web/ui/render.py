"""Page rendering for the web UI: the Jinja2 environment, the shared page context (viewer, CSRF
token, flash message), display filters and the HTML error page."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import escape
from starlette.templating import Jinja2Templates

from cyxwiz.accounts.models import User
from cyxwiz.money import format_amount
from cyxwiz.web.deps import CSRF_COOKIE, SESSION_COOKIE

log = logging.getLogger("cyxwiz.web.ui")

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
FLASH_COOKIE = "cxw_flash"
CSRF_FIELD = "csrf_token"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
_FLASH_KINDS = ("success", "info", "error")


@dataclass(frozen=True)
class Viewer:
    """The signed-in user as pages show them (plain values: safe after the DB session ends)."""

    username: str
    display_name: str
    is_admin: bool

    @classmethod
    def of(cls, user: User) -> Viewer:
        return cls(user.username, user.display_name or user.username, user.is_admin)


@dataclass(frozen=True)
class Flash:
    kind: str
    text: str


# ---------------------------------------------------------------- filters


def filesize(n: int | None) -> str:
    """Bytes in human units (decimal, like most download pages): 1.5 MB."""
    if n is None:
        return ""
    if n < 1000:
        return f"{n} B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        value /= 1000
        if value < 1000 or unit == "PB":
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n} B"  # pragma: no cover


def compact(n: int | None) -> str:
    """Counts the way app stores show them: 950, 1.2k, 3.4M."""
    if n is None:
        return "0"
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k".replace(".0k", "k")
    return f"{n / 1_000_000:.1f}M".replace(".0M", "M")


def date(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%b %d, %Y") if value else ""


def isodate(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else ""


def ago(value: datetime | None) -> str:
    """'3 days ago' (UTC), falling back to the date after a month."""
    if value is None:
        return ""
    seconds = int((datetime.now(UTC) - value.astimezone(UTC)).total_seconds())
    if seconds < 60:
        return "just now"
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = seconds // size
            if unit == "day" and count > 30:
                return date(value)
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"  # pragma: no cover


def money(amount: int | None, currency: str) -> str:
    """Integer minor units as a display amount: 49_000_000, 'USDC' -> '49.00 USDC'."""
    return format_amount(amount or 0, currency)


def metric_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def page_url(path: str, params: Mapping[str, Any], **changes: Any) -> str:
    """``path`` with ``params`` updated by ``changes`` (empty values dropped)."""
    merged = {**params, **changes}
    query = urlencode([(k, v) for k, v in merged.items() if v not in (None, "")])
    return f"{path}?{query}" if query else path


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        filesize=filesize,
        compact=compact,
        date=date,
        isodate=isodate,
        ago=ago,
        metric=metric_value,
        money=money,
        urlquote=lambda s: quote(str(s), safe="/"),
    )
    env.globals.update(page_url=page_url)
    return env


templates = Jinja2Templates(env=_environment())


# ---------------------------------------------------------------- page context


def remember_viewer(request: Request, user: User | None) -> None:
    """Note who is signed in for this request's pages (error pages included)."""
    request.state.ui_viewer = Viewer.of(user) if user is not None else None


def viewer_of(request: Request) -> Viewer | None:
    viewer: Viewer | None = getattr(request.state, "ui_viewer", None)
    return viewer


def csrf_cookie(request: Request) -> str | None:
    """The well-formed CSRF cookie the browser sent, if any."""
    value = request.cookies.get(CSRF_COOKIE)
    return value if value and _TOKEN_RE.match(value) else None


def csrf_token(request: Request) -> str:
    """The token forms on this page carry: the browser's cookie, or a new one to set."""
    token = csrf_cookie(request)
    if token is not None:
        return token
    new: str | None = getattr(request.state, "csrf_new", None)
    if new is None:
        new = secrets.token_urlsafe(32)
        request.state.csrf_new = new
    return new


def rotate_csrf(response: Response, *, secure: bool) -> None:
    """Give the browser a fresh CSRF token (at sign-in and sign-out)."""
    set_csrf_cookie(response, secrets.token_urlsafe(32), secure=secure)


def set_csrf_cookie(response: Response, token: str, *, secure: bool) -> None:
    # Readable by no script, sent on same-site navigations; the double-submit pattern only
    # needs the server to compare it with the form field.
    response.set_cookie(
        CSRF_COOKIE,
        token,
        max_age=60 * 60 * 24 * 365,
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure,
    )


def set_flash(response: Response, text: str, kind: str = "success") -> None:
    """A one-time message for the next page the browser shows."""
    response.set_cookie(
        FLASH_COOKIE,
        quote(f"{kind}:{text[:300]}"),
        max_age=120,
        path="/",
        httponly=True,
        samesite="lax",
    )


def _read_flash(request: Request) -> Flash | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    kind, _, text = unquote(raw).partition(":")
    if kind not in _FLASH_KINDS or not text:
        return None
    return Flash(kind, text)


def _cookie_secure(request: Request) -> bool:
    ctx = getattr(request.app.state, "ctx", None)
    return bool(ctx is not None and ctx.settings.cookie_secure)


def page(
    request: Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Render ``template`` in the site layout with the shared page context."""
    flash = _read_flash(request)
    values: dict[str, Any] = {
        "viewer": viewer_of(request),
        "csrf_token": csrf_token(request),
        "flash": flash,
        "search_q": "",
        "error": None,
        "current_path": request.url.path,
        "login_next": _login_next(request),
    }
    values.update(context or {})
    response = templates.TemplateResponse(
        request, template, values, status_code=status, headers=dict(headers or {})
    )
    new = getattr(request.state, "csrf_new", None)
    if new is not None:
        set_csrf_cookie(response, new, secure=_cookie_secure(request))
    if request.cookies.get(FLASH_COOKIE):
        response.delete_cookie(FLASH_COOKIE, path="/", httponly=True, samesite="lax")
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def _login_next(request: Request) -> str:
    """Where 'Sign in' should come back to: this page, unless it is an auth page."""
    path = request.url.path
    if request.method != "GET" or path in ("/login", "/signup", "/logout"):
        return ""
    return path + (f"?{request.url.query}" if request.url.query else "")


# ---------------------------------------------------------------- errors


_HINTS = {
    401: "Sign in and try again.",
    403: "Your account may not do this. If you think it should, check that you are signed in "
    "as the right user.",
    404: "The page may have moved, or the model is private or not published yet.",
    413: "The upload is larger than this server accepts.",
    429: "Too many requests; wait a moment and try again.",
}


def _viewer_from_cookie(request: Request) -> None:
    """Best effort for error pages raised before a UI route resolved the viewer."""
    raw = request.cookies.get(SESSION_COOKIE)
    ctx = getattr(request.app.state, "ctx", None)
    if not raw or ctx is None:
        return
    from cyxwiz.accounts.service import resolve_bearer

    try:
        with ctx.db.session() as session:
            principal = resolve_bearer(session, raw=raw)
            if principal.via == "session":
                remember_viewer(request, principal.user)
    except Exception:  # an error page must render even when the lookup cannot
        log.debug("no viewer for the error page", exc_info=True)


def render_error(
    request: Request,
    *,
    status: int,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """A friendly error page in the site layout (browsers get this instead of problem+json)."""
    if not hasattr(request.state, "ui_viewer") and status < 500:
        _viewer_from_cookie(request)
    context = {"status": status, "title": title, "detail": detail, "hint": _HINTS.get(status, "")}
    try:
        return page(request, "error.html", context, status=status, headers=headers)
    except Exception:
        log.exception("could not render the error page")
        escaped = escape(f"{status} {title}: {detail}")
        return HTMLResponse(f"<!doctype html><title>Error</title><p>{escaped}</p>", status)
