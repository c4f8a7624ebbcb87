"""ASGI middleware: request body limits (checked on the header and while streaming)."""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cyxwiz.errors import PayloadTooLarge


class BodyTooLarge(PayloadTooLarge):
    """Raised from ``receive`` when a streamed body passes its limit."""


class BodyLimitMiddleware:
    """Reject bodies over the limit that ``limit_for(scope)`` gives for the request."""

    def __init__(self, app: ASGIApp, *, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _reject(scope, send, limit)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(f"request body is larger than the {limit} byte limit")
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reject(scope: Scope, send: Send, limit: int) -> None:
    detail = f"request body is larger than the {limit} byte limit"
    body = json.dumps(
        {
            "type": "https://cyxwiz.dev/problems/payload_too_large",
            "title": "Payload too large",
            "status": 413,
            "detail": detail,
            "code": "payload_too_large",
            "instance": scope.get("path", ""),
            "error": detail,  # as every inference error: what OIP clients (tritonclient) show
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# Self only: no inline script or style, no plugins, no framing. Model-card images (Markdown
# ``![](https://...)``) are limited to this host by img-src: an external image would tell its
# host who views the card, so the browser does not fetch it.
HTML_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Everything else (JSON, files, static assets) is never a document: if a browser opens one
# as a page, nothing in it may run or load.
OTHER_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"
PERMISSIONS_POLICY = (
    "accelerometer=(), autoplay=(), camera=(), display-capture=(), geolocation=(), "
    "gyroscope=(), magnetometer=(), microphone=(), midi=(), payment=(), usb=(), "
    "xr-spatial-tracking=()"
)


class SecurityHeadersMiddleware:
    """Security headers on every HTTP response (a header the route set itself wins):
    Content-Security-Policy (``HTML_CSP`` on HTML, ``OTHER_CSP`` elsewhere), Permissions-Policy,
    X-Content-Type-Options, Referrer-Policy, X-Frame-Options; in production also
    Strict-Transport-Security and ``Secure`` on every cookie, whatever ``cookie_secure`` says."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        production: bool,
        html_csp: str = HTML_CSP,
        hsts_seconds: int = 0,
    ) -> None:
        self.app = app
        self.production = production
        self.html_csp = html_csp.encode("latin-1")
        self.hsts = (
            f"max-age={hsts_seconds}; includeSubDomains".encode()
            if production and hsts_seconds > 0
            else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = self._headers(list(message.get("headers", [])))
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        present = {name.lower() for name, _ in headers}
        content_type = b""
        for name, value in headers:
            if name.lower() == b"content-type":
                content_type = value.lower()
        is_html = content_type.startswith(b"text/html")
        wanted = [
            (b"content-security-policy", self.html_csp if is_html else OTHER_CSP.encode()),
            (b"permissions-policy", PERMISSIONS_POLICY.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"x-frame-options", b"DENY"),
        ]
        if self.hsts is not None:
            wanted.append((b"strict-transport-security", self.hsts))
        out = [(k, v) for k, v in wanted if k not in present]
        for name, value in headers:
            if self.production and name.lower() == b"set-cookie":
                value = _force_secure(value)
            out.append((name, value))
        return out


def _force_secure(cookie: bytes) -> bytes:
    attributes = [part.strip().lower() for part in cookie.split(b";")[1:]]
    return cookie if b"secure" in attributes else cookie + b"; Secure"
