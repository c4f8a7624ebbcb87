"""Domain errors: every failure a user can cause has a stable ``code`` and an HTTP status.

The web layer turns these into RFC 9457 ``application/problem+json`` bodies; the SDK maps the
codes back to typed exceptions. Imports nothing from cyxwiz.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A failure with a stable machine-readable code, an HTTP status and a human detail."""

    code: str = "error"
    status: int = 400
    title: str = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}
        self.extra = extra


class InvalidInput(DomainError):
    code = "invalid_input"
    status = 422
    title = "Invalid input"


class NotAuthenticated(DomainError):
    code = "not_authenticated"
    status = 401
    title = "Authentication required"


class PermissionDenied(DomainError):
    code = "forbidden"
    status = 403
    title = "Forbidden"


class NotFound(DomainError):
    code = "not_found"
    status = 404
    title = "Not found"


class Conflict(DomainError):
    code = "conflict"
    status = 409
    title = "Conflict"


class PayloadTooLarge(DomainError):
    code = "payload_too_large"
    status = 413
    title = "Payload too large"


class RangeNotSatisfiable(DomainError):
    code = "range_not_satisfiable"
    status = 416
    title = "Range not satisfiable"


class IntegrityError(DomainError):
    """Stored data failed an integrity check (tampered or truncated blob)."""

    code = "integrity_error"
    status = 500
    title = "Stored data failed its integrity check"


class TooManyAttempts(DomainError):
    """A sign-in or sign-up throttle is exhausted; ``Retry-After`` says when to try again."""

    code = "too_many_attempts"
    status = 429
    title = "Too many attempts"
