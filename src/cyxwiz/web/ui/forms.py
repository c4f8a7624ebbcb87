"""Form plumbing for the web UI: CSRF-checked form parsing, who is acting, safe redirects."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse
from starlette.datastructures import FormData, UploadFile

from cyxwiz.accounts.models import User
from cyxwiz.errors import PermissionDenied
from cyxwiz.web.deps import PrincipalDep, ViewerDep
from cyxwiz.web.ui.render import CSRF_FIELD, csrf_cookie, remember_viewer

MAX_FORM_FIELDS = 50
MAX_FORM_FILES = 1


async def csrf_form(request: Request) -> AsyncIterator[FormData]:
    """The submitted form, once its ``csrf_token`` matches the CSRF cookie (double submit).

    A mismatch is a 403 ``csrf_failed`` raised before any handler runs, so nothing changes.
    Uploaded files are spooled to temporary files by the parser and closed after the handler.
    """
    form = await request.form(max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS)
    try:
        submitted = form.get(CSRF_FIELD)
        expected = csrf_cookie(request)
        if (
            not isinstance(submitted, str)
            or expected is None
            or not hmac.compare_digest(submitted.encode(), expected.encode())
        ):
            raise PermissionDenied(
                "the form's security token is missing or stale; reload the page and try again",
                code="csrf_failed",
            )
        yield form
    finally:
        await form.close()


CsrfForm = Annotated[FormData, Depends(csrf_form, scope="function")]


def ui_viewer(request: Request, viewer: ViewerDep) -> User | None:
    """The signed-in user (session cookie or bearer token) for pages, or None."""
    remember_viewer(request, viewer)
    return viewer


def ui_actor(request: Request, principal: PrincipalDep) -> User | None:
    """The user submitting a form (API keys need the 'write' scope), or None."""
    if principal is None:
        remember_viewer(request, None)
        return None
    remember_viewer(request, principal.user)
    if not principal.has_scope("write"):
        raise PermissionDenied("this API key lacks the 'write' scope", code="insufficient_scope")
    return principal.user


UiViewer = Annotated[User | None, Depends(ui_viewer)]
UiActor = Annotated[User | None, Depends(ui_actor)]


def field(form: FormData, name: str, default: str = "") -> str:
    """A text field's value ('' for a missing field or a file where text was expected)."""
    value = form.get(name, default)
    return value if isinstance(value, str) else default


def upload(form: FormData, name: str) -> UploadFile | None:
    """The file chosen in ``name``, None when the user chose none."""
    value = form.get(name)
    if isinstance(value, UploadFile) and value.filename:
        return value
    return None


def safe_next(value: str | None, default: str = "/") -> str:
    """A same-site relative path to go to after signing in; anything else gives ``default``."""
    if not value or len(value) > 2000:
        return default
    if not value.startswith("/") or value.startswith(("//", "/\\")):
        return default
    if any(ord(ch) < 0x20 or ch in "\\\x7f" for ch in value):
        return default
    return value


def see_other(url: str) -> RedirectResponse:
    """The redirect after a form post (303: the browser follows with GET)."""
    return RedirectResponse(url, status_code=303)


def login_redirect(request: Request, back: str | None = None) -> RedirectResponse:
    """Send an anonymous visitor to sign in, coming back to ``back`` (default: this page)."""
    if back is None:
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return see_other(f"/login?next={quote(safe_next(back), safe='/')}")
