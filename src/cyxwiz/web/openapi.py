"""The OpenAPI document: security schemes, the ProblemDetails schema, and for every operation
the problem+json responses it can return, so generated clients see them.

Most of it is derived from each route's dependencies, parameters and method, not declared by
hand in every route module: a route depending on ``get_principal`` can answer 401 (a bad
token), one requiring a user or a scope 401/403, one on a node token (``current_node``) uses
the node bearer scheme, every route with parameters or a body can answer 422, with a path
parameter 404, a state-changing method 409, a body 400/413. Routes add what cannot be derived
(429 throttles, 402, 503...) with ``responses=problem_responses(...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_REF = {"$ref": "#/components/schemas/ProblemDetails"}
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "ProblemDetails",
    "description": "RFC 9457 problem details; `code` is stable and machine-readable "
    "(docs/api.md lists them). Some problems add members (`errors`, `retry_after`, ...).",
    "type": "object",
    "properties": {
        "type": {"type": "string", "example": "https://cyxwiz.dev/problems/not_found"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "code": {"type": "string", "example": "not_found"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "validation errors (422 validation_error)",
            "items": {
                "type": "object",
                "properties": {
                    "loc": {"type": "array", "items": {"type": "string"}},
                    "msg": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
    "required": ["type", "title", "status", "detail", "code"],
    "additionalProperties": True,
}
SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An access token (`cxw_at_…`, from POST /api/v1/auth/login) or an API "
        "key (`cxw_sk_…`, scopes read / write / inference).",
    },
    "nodeToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "An inference node's token (`cxw_nt_…`), for the node agent's calls.",
    },
    "licenseKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-License-Key",
        "description": "A signed license key: downloads and verification of a licensed "
        "model without an account token.",
    },
}
DESCRIPTIONS: dict[int, str] = {
    400: "malformed_json / bad_request",
    401: "not_authenticated / invalid_token / token_expired (WWW-Authenticate: Bearer)",
    402: "insufficient_funds",
    403: "forbidden / insufficient_scope / admin_required",
    404: "not_found (hidden models are 404 too)",
    409: "conflict (the resource's state does not allow this)",
    413: "payload_too_large",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    422: "validation_error / invalid_input (the `code` says which rule)",
    429: "too_many_attempts / rate_limited (Retry-After)",
    503: "unavailable; try again later",
}
_READY_SCHEMA = {"type": "object", "properties": {"ready": {"type": "boolean"}}}
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Route paths that take the X-License-Key header (the key is read in web/files.py and the
# provenance verify route).
_LICENSE_KEY_MARKERS = ("/resolve/", "/download", "/verify")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these statuses, each a problem+json ProblemDetails."""
    return {
        status: {
            "description": DESCRIPTIONS.get(status, "problem"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_REF}},
        }
        for status in statuses
    }


def _calls(dependant: Dependant) -> set[str]:
    names: set[str] = set()
    stack = list(dependant.dependencies)
    while stack:
        sub = stack.pop()
        call: Callable[..., Any] | None = sub.call
        if call is not None:
            names.add(getattr(call, "__qualname__", repr(call)))
        stack.extend(sub.dependencies)
    return names


def api_routes(routes: Iterable[Any]) -> list[Any]:
    """Every API route with its full path (``path_format``), ``methods`` and ``dependant``,
    through included routers too (FastAPI >= 0.16x keeps included routers as one route each)."""
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if iter_contexts is None:  # older FastAPI: include_router copies the routes
        return [r for r in routes if isinstance(r, APIRoute)]
    return [c for c in iter_contexts(list(routes)) if isinstance(c.original_route, APIRoute)]


def _statuses(route: Any, method: str, calls: set[str]) -> set[int]:
    out: set[int] = set()
    dependant = route.dependant
    has_params = bool(
        dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.body_params
        or dependant.cookie_params
    )
    for sub in _walk(dependant):
        has_params = has_params or bool(
            sub.query_params or sub.header_params or sub.body_params or sub.path_params
        )
    if has_params:
        out.add(422)
    if dependant.path_params or "{" in route.path_format:
        out.add(404)
    if method in _WRITE_METHODS:
        out.update({409, 413})
        if dependant.body_params:
            out.add(400)
    if "get_principal" in calls or "current_node" in calls:
        out.add(401)
    if any(c.startswith(("require_scope", "require_admin", "optional_viewer")) for c in calls):
        out.add(403)
    return out


def _walk(dependant: Dependant) -> Iterable[Dependant]:
    stack = list(dependant.dependencies)
    while stack:
        sub = stack.pop()
        yield sub
        stack.extend(sub.dependencies)


def _security(route: Any, calls: set[str]) -> list[dict[str, list[str]]] | None:
    if "current_node" in calls:
        return [{"nodeToken": []}]
    required = any(c.startswith(("require_scope", "require_admin")) for c in calls)
    path = route.path_format
    if path.endswith("/infer") or (path.startswith("/v2/") and "get_principal" not in calls):
        required = True  # the gateway reads the Authorization header itself
    license_key = any(m in path for m in _LICENSE_KEY_MARKERS)
    if required:
        return [{"bearerAuth": []}]
    if "get_principal" in calls or license_key:
        options: list[dict[str, list[str]]] = [{}, {"bearerAuth": []}]
        if license_key:
            options.append({"licenseKey": []})
        return options
    return None


def _problem_content(response: dict[str, Any]) -> None:
    content = response.setdefault("content", {})
    content.pop("application/json", None)  # FastAPI's HTTPValidationError: never sent
    content[PROBLEM_MEDIA_TYPE] = {"schema": PROBLEM_REF}


def enrich(doc: dict[str, Any], routes: Iterable[Any]) -> dict[str, Any]:
    """Add security schemes, ProblemDetails and each operation's problem responses to ``doc``."""
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {})["ProblemDetails"] = PROBLEM_SCHEMA
    components["securitySchemes"] = SECURITY_SCHEMES
    paths: dict[str, Any] = doc.get("paths", {})
    for route in api_routes(routes):
        if not route.include_in_schema:
            continue
        calls = _calls(route.dependant)
        for method in route.methods:
            op = paths.get(route.path_format, {}).get(method.lower())
            if op is None:
                continue
            security = _security(route, calls)
            if security is not None:
                op["security"] = security
            responses: dict[str, Any] = op.setdefault("responses", {})
            for status in sorted(_statuses(route, method, calls)):
                key = str(status)
                if key not in responses:
                    responses[key] = {"description": DESCRIPTIONS.get(status, "problem")}
                if status == 422:
                    responses[key]["description"] = DESCRIPTIONS[422]
            for key, response in responses.items():
                if key[:1] in ("4", "5"):
                    _problem_content(response)
            if route.path_format.startswith("/v2/") and route.path_format.endswith("/ready"):
                responses["503"] = {  # the Open Inference Protocol's "not ready" answer
                    "description": "not ready",
                    "content": {"application/json": {"schema": _READY_SCHEMA}},
                }
    schemas = components["schemas"]
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return doc


def install(app: FastAPI) -> None:
    """Serve the enriched document at ``app.openapi_url`` (built once, on first request)."""
    base = type(app).openapi

    def openapi() -> dict[str, Any]:
        doc = base(app)  # FastAPI's own, cached until the routes change
        if "securitySchemes" not in doc.get("components", {}):
            enrich(doc, app.routes)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
