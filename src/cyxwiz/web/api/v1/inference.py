"""Inference routes: the marketplace's simple JSON form and the Open Inference Protocol (v2).

- ``POST /api/v1/models/{owner}/{name}/infer`` (``?version=`` or ``/versions/{v}/infer``)
- ``POST /v2/models/{owner}--{name}/infer`` (and ``/versions/{v}/infer``), ``GET /v2/models/
  {owner}--{name}``, ``GET /v2/health/ready|live``, ``GET /v2`` — so OIP clients (tritonclient)
  work against the marketplace.

The two infer routes are the hot path. They are declared here as FastAPI routes (so they are in
the OpenAPI document, schemas via ``openapi_extra``) taking ``Request`` and returning bytes; and,
with ``settings.inference_fast_path`` (default), ``InferenceFastPath`` — the app's ASGI entry
(``cyxwiz.web.app.CyxwizApp``), in front of FastAPI and its whole middleware stack — serves the
very same paths (no telemetry check, middleware, routing table walk, dependency solving or
pydantic), which bench/inference.py measured at about twice FastAPI's throughput.
Both answer through ``handle_*`` below, so they behave identically; errors are problem+json with
the OIP ``error`` field that tritonclient reads.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson
from fastapi import APIRouter, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cyxwiz import __version__
from cyxwiz.errors import DomainError, PayloadTooLarge
from cyxwiz.inference.gateway import (
    ANONYMOUS,
    Answer,
    Gateway,
    UnsupportedMediaType,
    split_oip_name,
)
from cyxwiz.web.clientip import client_ip

log = logging.getLogger("cyxwiz.gateway")
router = APIRouter(tags=["inference"])

Headers = list[tuple[bytes, bytes]]
Reply = tuple[int, Headers, bytes]
JSON = b"application/json"
PROBLEM = b"application/problem+json"


def problem_reply(exc: DomainError, instance: str) -> Reply:
    body: dict[str, Any] = {
        "type": f"https://cyxwiz.dev/problems/{exc.code}",
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "code": exc.code,
        "instance": instance,
        "error": exc.detail,  # what OIP clients (tritonclient) show
    }
    body.update(exc.extra)
    headers: Headers = [(b"content-type", PROBLEM)]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    return exc.status, headers, orjson.dumps(body, default=str)


def _answer_reply(answer: Answer) -> Reply:
    return (
        200,
        [
            (b"content-type", JSON),
            (b"x-request-id", answer.request_id.encode()),
            (b"x-cache", b"hit" if answer.cached else b"miss"),
        ],
        answer.body,
    )


async def _guard(path: str, fn: Callable[[], Awaitable[Reply]]) -> Reply:
    try:
        return await fn()
    except DomainError as exc:
        if exc.status >= 500:
            log.warning("%s on %s: %s", exc.code, path, exc.detail)
        return problem_reply(exc, path)
    except Exception:
        return _internal_error(path)


def _internal_error(path: str) -> Reply:
    """500 problem for an unexpected exception (logged with its traceback, never sent)."""
    log.exception("unhandled error on %s", path)
    err = DomainError(
        "something went wrong on our side; you were not billed",
        code="internal_error",
        status=500,
    )
    err.title = "Internal server error"
    return problem_reply(err, path)


async def handle_simple(
    gw: Gateway,
    *,
    path: str,
    owner: str,
    name: str,
    version: str | None,
    authorization: str | None,
    body: bytes,
    ip: str | None = None,
) -> Reply:
    async def run() -> Reply:
        caller = await gw.authenticate(authorization)
        target = await gw.target(owner=owner, name=name, version=version, caller=caller)
        return _answer_reply(
            await gw.infer_simple(caller=caller, target=target, body=body, client_ip=ip)
        )

    return await _guard(path, run)


async def handle_v2(
    gw: Gateway,
    *,
    path: str,
    model: str,
    version: str | None,
    authorization: str | None,
    body: bytes,
    binary: bool = False,
    ip: str | None = None,
) -> Reply:
    async def run() -> Reply:
        caller = await gw.authenticate(authorization)
        if binary:
            raise UnsupportedMediaType(
                "the binary tensor extension is not supported: send JSON tensors "
                "(tritonclient: binary_data=False)",
                code="binary_data_unsupported",
            )
        owner, name = split_oip_name(model)
        target = await gw.target(owner=owner, name=name, version=version, caller=caller)
        return _answer_reply(
            await gw.infer_v2(caller=caller, target=target, body=body, client_ip=ip)
        )

    return await _guard(path, run)


async def handle_v2_metadata(
    gw: Gateway, *, path: str, model: str, version: str | None, authorization: str | None
) -> Reply:
    async def run() -> Reply:
        caller = await gw.authenticate(authorization)
        owner, name = split_oip_name(model)
        target = await gw.target(owner=owner, name=name, version=version, caller=caller)
        await gw.check_rate(caller, gw.expected_plan(caller, target) or "demo")
        return 200, [(b"content-type", JSON)], await gw.metadata_v2(target=target)

    return await _guard(path, run)


def _response(reply: Reply, *, close: bool = False) -> Response:
    status, headers, body = reply
    r = Response(content=body, status_code=status)
    for k, v in headers:
        r.headers[k.decode()] = v.decode()
    if close:
        r.headers["connection"] = "close"
    return r


async def _body(request: Request) -> bytes | Response:
    """The request's body, or the 413 problem the fast path would give (the body limit
    middleware stops it while streaming)."""
    try:
        return await request.body()
    except PayloadTooLarge as exc:
        return _response(problem_reply(exc, request.url.path), close=True)


def _gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.ctx.gateway
    return gw


def _ip(scope: Scope, gw: Gateway) -> str:
    """The caller's IP (what demo calls are budgeted by; docs/metering.md)."""
    return client_ip(scope, trusted_proxies=gw.settings.trusted_proxy_count)


# ---------------------------------------------------------------- OpenAPI schemas

_SIMPLE_BODY = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "inputs": {
            "description": (
                "What the model card's sample shows: a list of rows of numbers, one row, rows "
                "as {feature: value} objects, a string or a list of strings."
            ),
            "example": [[5.1, 3.5, 1.4, 0.2]],
        }
    },
}
_SIMPLE_ANSWER = {
    "type": "object",
    "properties": {
        "model": {"type": "string", "example": "acme/iris"},
        "version": {"type": "string", "example": "1.0.0"},
        "request_id": {"type": "string"},
        "predictions": {"type": "array", "items": {"type": "object"}},
        "embeddings": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        "outputs": {"type": "object"},
    },
}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype", "data"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string", "example": "FP32"},
        "data": {"type": "array", "items": {}},
    },
}
_OIP_BODY = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {
            "type": "array",
            "items": {"type": "object", "properties": {"name": {"type": "string"}}},
        },
    },
}
_OIP_ANSWER = {
    "type": "object",
    "properties": {
        "model_name": {"type": "string", "example": "acme--iris"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": _TENSOR},
    },
}
_PROBLEM = {"application/problem+json": {"schema": {"type": "object"}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "invalid_input / malformed_json", "content": _PROBLEM},
    401: {"description": "not_authenticated / invalid_token", "content": _PROBLEM},
    402: {"description": "insufficient_funds", "content": _PROBLEM},
    403: {"description": "insufficient_scope (the key lacks 'inference')", "content": _PROBLEM},
    404: {"description": "model_not_found / version_not_found", "content": _PROBLEM},
    409: {"description": "not_for_sale", "content": _PROBLEM},
    413: {"description": "payload_too_large / batch_too_large", "content": _PROBLEM},
    422: {"description": "empty_batch (no rows; not billed)", "content": _PROBLEM},
    429: {
        "description": "rate_limited (Retry-After) / quota_exhausted / demo_budget_exhausted "
        "(Retry-After)",
        "content": _PROBLEM,
    },
    503: {"description": "model_unavailable", "content": _PROBLEM},
}


def _doc(body: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi_extra": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}}
        },
        "responses": {
            200: {
                "description": "the model's answer",
                "content": {"application/json": {"schema": answer}},
            },
            **_ERRORS,
        },
        "response_class": Response,
    }


# ---------------------------------------------------------------- routes of record


@router.post("/api/v1/models/{owner}/{name}/infer", **_doc(_SIMPLE_BODY, _SIMPLE_ANSWER))
async def infer_simple(
    request: Request, owner: str, name: str, version: str | None = None
) -> Response:
    """Run the model (latest published version unless ``version``) on simple JSON inputs.

    Needs an API key with the ``inference`` scope (or an access token); metered per request."""
    body = await _body(request)
    if isinstance(body, Response):
        return body
    return _response(
        await handle_simple(
            _gateway(request),
            path=request.url.path,
            owner=owner,
            name=name,
            version=version,
            authorization=request.headers.get("authorization"),
            body=body,
            ip=_ip(request.scope, _gateway(request)),
        )
    )


@router.post(
    "/api/v1/models/{owner}/{name}/versions/{version}/infer",
    **_doc(_SIMPLE_BODY, _SIMPLE_ANSWER),
)
async def infer_simple_version(request: Request, owner: str, name: str, version: str) -> Response:
    """Run one published version of the model on simple JSON inputs."""
    return await infer_simple(request, owner, name, version)


@router.post("/v2/models/{model}/infer", **_doc(_OIP_BODY, _OIP_ANSWER))
async def infer_v2(request: Request, model: str, version: str | None = None) -> Response:
    """Open Inference Protocol (KServe v2) inference; ``model`` is ``owner--name``.

    JSON tensors only (tritonclient: ``binary_data=False``)."""
    body = await _body(request)
    if isinstance(body, Response):
        return body
    return _response(
        await handle_v2(
            _gateway(request),
            path=request.url.path,
            model=model,
            version=version,
            authorization=request.headers.get("authorization"),
            body=body,
            binary="inference-header-content-length" in request.headers,
            ip=_ip(request.scope, _gateway(request)),
        )
    )


@router.post("/v2/models/{model}/versions/{version}/infer", **_doc(_OIP_BODY, _OIP_ANSWER))
async def infer_v2_version(request: Request, model: str, version: str) -> Response:
    """Open Inference Protocol inference on one published version."""
    return await infer_v2(request, model, version)


@router.get("/v2/models/{model}", response_class=Response)
async def model_metadata(request: Request, model: str, version: str | None = None) -> Response:
    """OIP model metadata (inputs, outputs, datatypes, shapes) of ``owner--name``."""
    return _response(
        await handle_v2_metadata(
            _gateway(request),
            path=request.url.path,
            model=model,
            version=version,
            authorization=request.headers.get("authorization"),
        )
    )


@router.get("/v2/models/{model}/versions/{version}", response_class=Response)
async def model_version_metadata(request: Request, model: str, version: str) -> Response:
    """OIP model metadata of one published version."""
    return await model_metadata(request, model, version)


async def handle_v2_ready(
    gw: Gateway, *, path: str, model: str, version: str | None, authorization: str | None
) -> Reply:
    """OIP model readiness: 404 (problem) for a model the caller may not see — unknown,
    private to someone else, no published version (drafts), unknown version; else 200
    ``{"name", "ready": true}`` when a healthy node can serve it now, or 503
    ``{"name", "ready": false}`` when none can. Anonymous callers see public and unlisted
    models only; a bearer (API key or access token) sees what it may call."""

    async def run() -> Reply:
        caller = ANONYMOUS if authorization is None else await gw.authenticate(authorization)
        owner, name = split_oip_name(model)
        target = await gw.target(owner=owner, name=name, version=version, caller=caller)
        ready = bool(await gw.routable_nodes())  # any routable node can take the version
        body = orjson.dumps({"name": target.oip_name, "ready": ready})
        return (200 if ready else 503), [(b"content-type", JSON)], body

    return await _guard(path, run)


_READY_DOC: dict[str, Any] = {
    "response_class": Response,
    "responses": {
        200: {"description": "ready: a healthy node can serve the model now"},
        404: {"description": "model_not_found / version_not_found", "content": _PROBLEM},
        503: {"description": "known, but no healthy node can serve it now (ready false)"},
    },
}


@router.get("/v2/models/{model}/ready", **_READY_DOC)
async def model_ready(request: Request, model: str, version: str | None = None) -> Response:
    """OIP model readiness of ``owner--name`` (404 for unknown or hidden models)."""
    return _response(
        await handle_v2_ready(
            _gateway(request),
            path=request.url.path,
            model=model,
            version=version,
            authorization=request.headers.get("authorization"),
        )
    )


@router.get("/v2/models/{model}/versions/{version}/ready", **_READY_DOC)
async def model_version_ready(request: Request, model: str, version: str) -> Response:
    """OIP model readiness of one published version."""
    return await model_ready(request, model, version)


@router.get("/v2/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", response_class=Response)
async def ready(request: Request) -> Response:
    """200 once at least one inference node is routable (registered, heartbeating, passing
    the gateway's own health checks), else 503."""
    table = await _gateway(request).routable_nodes()
    return Response(
        content=orjson.dumps({"ready": bool(table)}),
        status_code=200 if table else 503,
        media_type="application/json",
    )


@router.get("/v2")
async def server_metadata() -> dict[str, Any]:
    return {"name": "cyxwiz", "version": __version__, "extensions": []}


# ---------------------------------------------------------------- the fast path

_SIMPLE_RE = re.compile(r"^/api/v1/models/([^/]+)/([^/]+)(?:/versions/([^/]+))?/infer$")
_V2_RE = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")


class InferenceFastPath:
    """The app's ASGI entry (``cyxwiz.web.app.CyxwizApp`` calls it first): ``POST`` to the two
    infer routes is served right here — before FastAPI, Starlette's middleware stack and
    routing — by the same handlers as the FastAPI routes above, so the answers are the same;
    everything else goes on to ``app``.

    What the framework would otherwise give these routes is done here: the body limit
    (``inference_max_body_bytes``, on Content-Length and while reading), problem+json for every
    error, and a bare 500 problem (logged, no stack trace in the answer) for anything
    unexpected.
    """

    def __init__(self, app: ASGIApp, *, gateway: Callable[[], Gateway | None]) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        simple = _SIMPLE_RE.match(path) if path.startswith("/api/v1/models/") else None
        v2 = _V2_RE.match(path) if simple is None and path.startswith("/v2/models/") else None
        gw = self.gateway() if (simple or v2) else None
        if gw is None or not gw.settings.inference_fast_path:
            await self.app(scope, receive, send)
            return
        try:
            reply, close = await _serve(gw, scope, receive, path, simple, v2)
        except Exception:
            reply, close = _internal_error(path), False
        await _send(send, reply, close=close)


async def _serve(
    gw: Gateway,
    scope: Scope,
    receive: Receive,
    path: str,
    simple: re.Match[str] | None,
    v2: re.Match[str] | None,
) -> tuple[Reply, bool]:
    authorization: str | None = None
    length: int | None = None
    binary = False
    for k, v in scope["headers"]:
        if k == b"authorization":
            authorization = v.decode("latin-1")
        elif k == b"inference-header-content-length":
            binary = True
        elif k == b"content-length":
            try:
                length = int(v)
            except ValueError:
                length = None
    limit = gw.settings.inference_max_body_bytes
    try:
        if length is not None and length > limit:
            raise PayloadTooLarge(f"request body is larger than the {limit} byte limit")
        body = await _read_body(receive, limit)
    except PayloadTooLarge as exc:
        return problem_reply(exc, path), True
    version = _query_version(scope)
    if simple is not None:
        reply = await handle_simple(
            gw,
            path=path,
            owner=unquote(simple.group(1)),
            name=unquote(simple.group(2)),
            version=unquote(simple.group(3)) if simple.group(3) else version,
            authorization=authorization,
            body=body,
            ip=_ip(scope, gw),
        )
    else:
        assert v2 is not None
        reply = await handle_v2(
            gw,
            path=path,
            model=unquote(v2.group(1)),
            version=unquote(v2.group(2)) if v2.group(2) else version,
            authorization=authorization,
            body=body,
            binary=binary,
            ip=_ip(scope, gw),
        )
    return reply, False


def _query_version(scope: Scope) -> str | None:
    qs: bytes = scope.get("query_string", b"")
    if not qs or b"version=" not in qs:
        return None
    values = parse_qs(qs.decode("latin-1")).get("version")
    return values[0] if values else None


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        if chunk:
            seen += len(chunk)
            if seen > limit:
                raise PayloadTooLarge(f"request body is larger than the {limit} byte limit")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, reply: Reply, *, close: bool = False) -> None:
    status, headers, body = reply
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
