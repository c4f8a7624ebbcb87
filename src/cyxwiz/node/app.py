"""The node agent: a plain ASGI app speaking the Open Inference Protocol (KServe v2) JSON.

No web framework on purpose: on this machine class a plain ASGI endpoint costs about 60 µs of
CPU per request against about 300 µs for FastAPI with pydantic, and ONNX Runtime runs a small
model in about 10 µs, so the framework would be the cost of every inference.

Routes (all but the health probes need ``Authorization: Bearer <gateway secret>``):

    GET  /v2/health/live                   the process is up
    GET  /v2/health/ready                  registered with the marketplace (has a secret)
    GET  /v2                               server metadata
    GET  /v2/models/{name}                 model metadata (loads the model if cold)
    GET  /v2/models/{name}/ready           200 if warm, 400 otherwise
    POST /v2/models/{name}/infer           inference
    POST /v2/repository/models/{name}/load load ahead of traffic (Triton's repository API)

``{name}`` is a model version id (UUID) assigned to this node by the marketplace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import random
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from starlette.types import Receive, Scope, Send

from cyxwiz import __version__
from cyxwiz.errors import IntegrityError
from cyxwiz.inference.oip import ProtocolError, decode_inputs, encode_output, requested_outputs
from cyxwiz.node.cache import BlobCache
from cyxwiz.node.config import NodeConfig
from cyxwiz.node.marketplace import Manifest, MarketplaceClient, MarketplaceError, RemoteFile
from cyxwiz.node.runtime import (
    READ_PIECE,
    LoadedModel,
    LoadError,
    ModelRegistry,
    build_model,
    decrypt_verified,
    prepare_workdir,
)

log = logging.getLogger("cyxwiz.node")

_TITLES = {
    400: "Bad request",
    401: "Authentication required",
    404: "Not found",
    405: "Method not allowed",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Model not servable",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
}
_JSON = b"application/json"
_PROBLEM = b"application/problem+json"
MODELS_PREFIX = "/v2/models/"
REPOSITORY_PREFIX = "/v2/repository/models/"


class _ClientGone(Exception):
    pass


def _problem_body(status: int, code: str, detail: str) -> bytes:
    return json.dumps(
        {
            "type": f"https://cyxwiz.dev/problems/{code}",
            "title": _TITLES.get(status, "Error"),
            "status": status,
            "detail": detail,
            "code": code,
            "error": detail,  # the OIP error field (tritonclient reads it)
        }
    ).encode()


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = _JSON,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _problem(
    send: Send,
    status: int,
    code: str,
    detail: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await _respond(send, status, _problem_body(status, code, detail), _PROBLEM, headers)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _canonical(name: str) -> str | None:
    try:
        return str(uuid.UUID(name))
    except ValueError:
        return None


class NodeAgent:
    """The agent's state and its ASGI entry point (``agent`` is the app)."""

    def __init__(self, config: NodeConfig, *, market: MarketplaceClient | None = None) -> None:
        self.config = config
        self.market = market or MarketplaceClient(
            config.marketplace_url, config.token, timeout=config.marketplace_timeout
        )
        # absolute paths: `cyxwiz node` changes its working directory after this
        self.cache = BlobCache(config.cache_dir.resolve(), config.max_cache_bytes)
        self.workdir = prepare_workdir(config.workdir)
        self.models = ModelRegistry(max_bytes=config.max_model_bytes, loader=self._load)
        self.executor = ThreadPoolExecutor(config.capacity, thread_name_prefix="cyxwiz-infer")
        self.load_executor = ThreadPoolExecutor(2, thread_name_prefix="cyxwiz-load")
        self.outstanding = 0
        self.node_id: str | None = None
        self.status = "starting"  # as the marketplace sees us: online, draining, ...
        self.heartbeat_seconds = 5.0
        self._auth: bytes | None = None  # b"Bearer <gateway secret>"
        self._control: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                await self._http(scope, receive, send)
            except _ClientGone:
                return
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Start registering (with backoff) and heartbeating in the background."""
        self._control = asyncio.create_task(self._control_loop())

    async def shutdown(self) -> None:
        if self._control is not None:
            self._control.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._control
        await self.market.aclose()
        self.models.evict_all()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.load_executor.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        return self._auth is not None

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if path == "/v2/health/live":
            await _respond(send, 200, b'{"live":true}')
            return
        if path == "/v2/health/ready":
            if self.ready:
                await _respond(send, 200, b'{"ready":true}')
            else:
                await _respond(send, 503, b'{"ready":false}')
            return
        if self._auth is None:
            await _problem(send, 503, "node_not_ready", "the node is not registered yet")
            return
        given = _header(scope, b"authorization")
        if given is None or not hmac.compare_digest(given, self._auth):
            await _problem(
                send,
                401,
                "invalid_gateway_secret",
                "send 'Authorization: Bearer <gateway secret>'",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if path in ("/v2", "/v2/"):
            if method != "GET":
                await _problem(send, 405, "method_not_allowed", "use GET")
                return
            body = {"name": "cyxwiz-node", "version": __version__, "extensions": []}
            await _respond(send, 200, json.dumps(body).encode())
            return
        if path.startswith(MODELS_PREFIX):
            name, _, action = path[len(MODELS_PREFIX) :].partition("/")
            if action == "infer":
                if method != "POST":
                    await _problem(send, 405, "method_not_allowed", "use POST")
                    return
                await self._infer(scope, receive, send, name)
                return
            if action in ("", "ready"):
                if method != "GET":
                    await _problem(send, 405, "method_not_allowed", "use GET")
                    return
                if action == "":
                    await self._metadata(send, name)
                else:
                    await self._model_ready(send, name)
                return
        if path.startswith(REPOSITORY_PREFIX):
            name, _, action = path[len(REPOSITORY_PREFIX) :].partition("/")
            if action == "load" and method == "POST":
                model = await self._model_or_problem(send, name)
                if model is not None:
                    await _respond(send, 200, b"{}")
                return
        await _problem(send, 404, "not_found", f"nothing at {path}")

    # ------------------------------------------------------------ endpoints

    async def _model_or_problem(self, send: Send, name: str) -> LoadedModel | None:
        warm = self.models.peek(name)  # the hot path: a warm model by its canonical name
        if warm is not None:
            return warm
        canonical = _canonical(name)
        if canonical is None:
            await _problem(send, 404, "model_not_found", f"no model {name!r} on this node")
            return None
        try:
            return await self.models.get(canonical)
        except LoadError as exc:
            await _problem(send, exc.status, exc.code, exc.detail)
            return None

    async def _metadata(self, send: Send, name: str) -> None:
        model = await self._model_or_problem(send, name)
        if model is not None:
            await _respond(send, 200, model.metadata_body)

    async def _model_ready(self, send: Send, name: str) -> None:
        canonical = _canonical(name)
        if canonical is not None and self.models.peek(canonical) is not None:
            await _respond(send, 200, json.dumps({"name": canonical, "ready": True}).encode())
        else:
            await _problem(send, 400, "model_not_ready", f"model {name!r} is not loaded")

    async def _infer(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        self.outstanding += 1
        try:
            try:
                body = await self._read_body(scope, receive)
                request = _parse_json(body)
            except ProtocolError as exc:
                extra = [(b"connection", b"close")] if exc.status == 413 else []
                await _problem(send, exc.status, exc.code, exc.detail, extra)
                return
            model = await self._model_or_problem(send, name)
            if model is None:
                return
            try:
                feed = decode_inputs(request, model.inputs)
                names = requested_outputs(request, model.outputs)
                request_id = request.get("id")
                if request_id is not None and not isinstance(request_id, str):
                    raise ProtocolError("'id' must be a string")
            except ProtocolError as exc:
                await _problem(send, exc.status, exc.code, exc.detail)
                return
            elements = sum(a.size for a in feed.values())
            try:
                if model.cost.inline(elements):
                    results = model.run(names, feed, elements)
                else:
                    results = await asyncio.get_running_loop().run_in_executor(
                        self.executor, model.run, names, feed, elements
                    )
            except Exception as exc:
                if type(exc).__name__ in ("InvalidArgument", "InvalidGraph", "NotImplemented"):
                    await _problem(send, 400, "inference_failed", str(exc)[:500])
                else:
                    log.exception("inference failed on model %s", model.name)
                    await _problem(send, 500, "inference_failed", "the model failed to run")
                return
            out = {
                "model_name": model.name,
                "model_version": model.version,
                "id": request_id if request_id is not None else str(uuid.uuid4()),
                "outputs": [encode_output(n, r) for n, r in zip(names, results, strict=True)],
            }
            await _respond(send, 200, json.dumps(out, separators=(",", ":")).encode())
        finally:
            self.outstanding -= 1

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.config.max_request_bytes
        too_large = ProtocolError(
            f"request body is larger than the {limit} byte limit",
            status=413,
            code="payload_too_large",
        )
        content_type = _header(scope, b"content-type") or b""
        if _header(scope, b"inference-header-content-length") is not None or (
            content_type and not content_type.startswith(b"application/json")
        ):
            raise ProtocolError(
                "send the request as application/json (binary tensors are not supported)",
                status=415,
                code="unsupported_media_type",
            )
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    # ------------------------------------------------------------ loading models

    async def _load(self, name: str) -> LoadedModel:
        """Manifest (with data keys) -> encrypted blob (cache or download) -> decrypt and
        verify in memory -> ORT session. Nothing but ciphertext touches the disk."""
        try:
            manifest = await self.market.manifest(name)
        except MarketplaceError as exc:
            raise _load_error(exc, name) from None
        entry = manifest.file(manifest.entrypoint) if manifest.entrypoint else None
        if entry is None:
            raise LoadError(
                f"version {name} has no ONNX model file", status=422, code="model_not_servable"
            )
        if entry.size > self.models.max_bytes:
            raise LoadError(
                f"the model has {entry.size} bytes; this node keeps at most "
                f"{self.models.max_bytes} bytes of models",
                status=503,
                code="model_too_large",
            )
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            f = self.cache.open_cached(entry.address, entry.stored_size)
            if f is None:
                f = await self._download(entry)
            try:
                return await loop.run_in_executor(
                    self.load_executor, self._build, f, entry, manifest, name
                )
            except IntegrityError:
                self.cache.discard(entry.address)
                log.warning(
                    "blob %s failed its integrity check (attempt %d)", entry.address, attempt
                )
            finally:
                f.close()
        raise LoadError(
            f"the model file of {name} failed its integrity check",
            status=502,
            code="integrity_error",
        )

    async def _download(self, entry: RemoteFile) -> BinaryIO:
        tmp, writer = self.cache.temp_writer()
        try:
            n = await self.market.download(
                entry.address, max_bytes=entry.stored_size, sink=writer.write
            )
            writer.close()
            if n != entry.stored_size:
                raise LoadError(
                    f"blob {entry.address} ended after {n} of {entry.stored_size} bytes",
                    status=502,
                    code="blob_size_mismatch",
                )
            return self.cache.commit(tmp, entry.address)
        except MarketplaceError as exc:
            raise _load_error(exc, entry.address) from None
        finally:
            writer.close()
            tmp.unlink(missing_ok=True)

    def _build(self, f: BinaryIO, entry: RemoteFile, manifest: Manifest, name: str) -> LoadedModel:
        pieces = iter(lambda: f.read(READ_PIECE), b"")
        plaintext = decrypt_verified(pieces, entry.data_key, entry.address, entry.size)
        try:
            return build_model(
                name=name,
                model=manifest.model,
                version=manifest.version,
                model_bytes=plaintext,
                intra_op_threads=self.config.intra_op_threads,
                workdir=self.workdir,
                path=entry.path,
            )
        except LoadError:
            raise
        except Exception as exc:
            raise LoadError(
                f"ONNX Runtime cannot load the model: {str(exc)[:300]}",
                status=422,
                code="model_not_servable",
            ) from None

    # ------------------------------------------------------------ marketplace control loop

    async def _control_loop(self) -> None:
        delay = 0.25
        while True:
            try:
                reg = await self.market.register(
                    url=self.config.url,
                    capacity=self.config.capacity,
                    agent_version=self.config.agent_version,
                )
            except MarketplaceError as exc:
                log.warning("registration failed (%s: %s); retrying", exc.code, exc.detail)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311
                delay = min(delay * 2, 30.0 if exc.status == 401 else 10.0)
                continue
            delay = 0.25
            self.node_id = str(reg["node_id"])
            self.status = str(reg["status"])
            self.heartbeat_seconds = self.config.heartbeat_seconds or float(
                reg["heartbeat_seconds"]
            )
            self._auth = f"Bearer {reg['gateway_secret']}".encode()
            log.info("registered node %s as %s (%s)", self.node_id, self.config.url, self.status)
            await self._heartbeats()

    async def _heartbeats(self) -> None:
        """Heartbeat until the marketplace asks for a new registration."""
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            try:
                hb = await self.market.heartbeat(load=self.outstanding, warm=self.models.warm())
            except MarketplaceError as exc:
                if exc.status == 409:
                    log.warning("marketplace forgot our registration; registering again")
                    return
                if exc.status == 401:
                    log.error("the marketplace refused our node token (%s)", exc.detail)
                    self._auth = None
                    return
                log.warning("heartbeat failed (%s: %s)", exc.code, exc.detail)
                continue
            self.status = str(hb["status"])
            if self.config.heartbeat_seconds is None:
                self.heartbeat_seconds = float(hb.get("heartbeat_seconds", self.heartbeat_seconds))


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise ProtocolError("the request body is not valid JSON", code="malformed_json") from None


def _load_error(exc: MarketplaceError, what: str) -> LoadError:
    if exc.status in (403, 404):
        return LoadError(f"no model {what!r} on this node", status=404, code="model_not_found")
    if exc.status == 401:
        return LoadError(
            "the marketplace refused this node's token", status=503, code="node_unauthorized"
        )
    return LoadError(
        f"the marketplace is unavailable ({exc.code})", status=503, code="marketplace_unavailable"
    )


def create_node_app(config: NodeConfig, *, market: MarketplaceClient | None = None) -> NodeAgent:
    """The node agent's ASGI app for ``config`` (serve it with uvicorn, lifespan on)."""
    return NodeAgent(config, market=market)
