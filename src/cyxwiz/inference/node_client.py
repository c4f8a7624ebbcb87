"""The gateway's client for inference nodes: OIP calls with the gateway secret, and the
conversion between the marketplace's simple JSON form and the Open Inference Protocol.

The simple form is exactly the one ``cyxwiz.demo.models.run_onnx`` defines (a list of rows
of numbers, one row, rows as {feature: value} objects, or a list of strings; answers shaped by
the model's ``cyxwiz.*`` ONNX metadata: classifiers give label/score/probabilities,
regressors {target: value}, embedders vectors). The conversion reuses that code through a
read-only view of the node's model metadata, so a model answers the same JSON whether it is
run in-process or on a node.

Usage (in the gateway)::

    async with NodeClient(timeout=30) as nodes:
        meta = await nodes.metadata(node, version_id)           # cached per version
        answer = await nodes.infer_simple(node, version_id, [[5.1, 3.5, 1.4, 0.2]])
        raw = await nodes.infer(node, version_id, {"inputs": [...]})      # OIP dicts
        status, body = await nodes.forward(node, version_id, request_bytes)  # OIP bytes
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import httpx
import numpy as np
import numpy.typing as npt

from cyxwiz.errors import InvalidInput
from cyxwiz.inference import simple_json
from cyxwiz.inference.interfaces import NodeCallError, NodeEndpoint
from cyxwiz.inference.oip import (
    OIP_TO_NUMPY,
    ORT_TO_OIP,
    ProtocolError,
    TensorSpec,
    decode_output,
)
from cyxwiz.netguard import AddressGuard, UnsafeAddress

OIP_TO_ORT = {v: k for k, v in ORT_TO_OIP.items()}
# Node answers that are the caller's fault: passed on as is, never retried elsewhere.
CLIENT_ERRORS = frozenset({400, 413, 415, 422})
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024


class NodeAnswerTooLarge(ValueError):
    """A node's answer body is above the gateway's cap (announced or received)."""


@dataclass(frozen=True)
class NodeAnswer:
    """A node's answer, its body read within the cap."""

    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


@dataclass(frozen=True)
class ModelMetadata:
    """A node's ``GET /v2/models/{version_id}`` answer."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    model: str = ""  # owner/name
    version: str = ""  # version label
    properties: Mapping[str, str] = field(default_factory=dict)  # the cyxwiz.* ONNX metadata

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelMetadata:
        def specs(items: Any) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(name=t["name"], datatype=t["datatype"], shape=tuple(t["shape"]))
                for t in items
            )

        params = data.get("parameters") or {}
        return cls(
            name=str(data["name"]),
            versions=tuple(data.get("versions") or ()),
            platform=str(data.get("platform", "")),
            inputs=specs(data.get("inputs", [])),
            outputs=specs(data.get("outputs", [])),
            model=str(params.get("model", "")),
            version=str(params.get("version", "")),
            properties=dict(params.get("properties") or {}),
        )

    @property
    def kind(self) -> str | None:
        """classifier | regressor | embedding (from ``cyxwiz.kind``), None if not set."""
        return self.properties.get(simple_json.META_KIND)


# ---------------------------------------------------------------- simple JSON <-> OIP


class _Arg:
    def __init__(self, spec: TensorSpec) -> None:
        self.name = spec.name
        self.type = OIP_TO_ORT.get(spec.datatype, "")
        self.shape = [d if d >= 0 else None for d in spec.shape]


class _Meta:
    def __init__(self, properties: Mapping[str, str]) -> None:
        self.custom_metadata_map = dict(properties)


class _SessionView:
    """The slice of an ORT InferenceSession that the simple-JSON conventions read."""

    def __init__(self, meta: ModelMetadata) -> None:
        self._inputs = [_Arg(s) for s in meta.inputs]
        self._meta = _Meta(meta.properties)

    def get_inputs(self) -> list[_Arg]:
        return self._inputs

    def get_modelmeta(self) -> _Meta:
        return self._meta


def simple_to_oip(
    meta: ModelMetadata, inputs: Any, *, request_id: str | None = None
) -> dict[str, Any]:
    """The OIP request for simple JSON ``inputs`` (rows of numbers, one row, rows of
    {feature: value}, or strings; optionally wrapped as {"inputs": ...}).

    InvalidInput (400, ``invalid_input``) when they do not fit the model.
    """
    if len(meta.inputs) != 1:
        raise InvalidInput(
            f"this model takes {len(meta.inputs)} inputs; call it with the v2 protocol",
            code="invalid_input",
            status=400,
        )
    spec = meta.inputs[0]
    try:
        feed = simple_json.to_feed(_SessionView(meta), inputs)
    except ValueError as exc:
        raise InvalidInput(str(exc), code="invalid_input", status=400) from None
    arr = next(iter(feed.values()))
    if spec.datatype != "BYTES":
        target = np.dtype(OIP_TO_NUMPY[spec.datatype])
        if target.kind in "iub" and not np.array_equal(arr, np.round(arr)):
            raise InvalidInput(
                f"input {spec.name!r} takes integers", code="invalid_input", status=400
            )
        arr = arr.astype(target)
    tensor = {
        "name": spec.name,
        "shape": list(arr.shape),
        "datatype": spec.datatype,
        "data": arr.ravel().tolist(),
    }
    body: dict[str, Any] = {
        "inputs": [tensor],
        "outputs": [{"name": o.name} for o in meta.outputs],
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def oip_outputs(meta: ModelMetadata, response: Mapping[str, Any]) -> list[npt.NDArray[Any]]:
    """The response's output tensors as numpy arrays, in the model's output order."""
    by_name = {o.get("name"): o for o in response.get("outputs") or []}
    try:
        return [decode_output(by_name[o.name]) for o in meta.outputs if o.name in by_name]
    except (ProtocolError, ValueError, TypeError) as exc:
        raise NodeCallError(
            f"the node answered malformed outputs: {exc}", retryable=True, code="bad_node_answer"
        ) from None


def oip_to_simple(meta: ModelMetadata, response: Mapping[str, Any], n_rows: int) -> dict[str, Any]:
    """Simple JSON for an OIP response, by the model's ``cyxwiz.kind`` (as run_onnx answers);
    models without it answer ``{"outputs": {name: nested lists}}``."""
    arrays = oip_outputs(meta, response)
    if meta.kind is None:
        return {"outputs": {o.name: a.tolist() for o, a in zip(meta.outputs, arrays, strict=False)}}
    return simple_json.format_outputs(_SessionView(meta), arrays, n_rows)


# ---------------------------------------------------------------- the client


class NodeClient:
    """Async calls to nodes with the gateway secret; one connection pool for all nodes.

    Failures raise ``NodeCallError``: ``retryable`` tells the gateway whether to try another
    node (unreachable, timeout, 5xx, 401 after a secret rotation, model missing there) or to
    pass the error to the caller (400/413/415/422: the request itself is bad; ``status`` and
    ``code`` are the node's).

    Limits a node cannot talk its way past: ``timeout`` bounds each whole call (connect,
    headers and body together, however slowly the node sends); an answer above
    ``max_response_bytes`` (by Content-Length or by bytes received, after any decoding) fails
    as ``node_answer_too_large`` without reading further. With a ``guard`` that refuses
    private addresses, each call goes to an address the guard has just resolved and checked
    (Host header and TLS server name kept), never to the name again (DNS rebinding).
    """

    def __init__(
        self,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 2.0,
        max_connections: int = 256,
        metadata_cache_size: int = 4096,
        transport: httpx.AsyncBaseTransport | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        guard: AddressGuard | None = None,
    ) -> None:
        self.timeout = timeout
        self.max_response_bytes = max_response_bytes
        self.guard = guard if guard is not None else AddressGuard(allow_private=True)
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )
        self._meta: OrderedDict[str, ModelMetadata] = OrderedDict()
        self._meta_size = metadata_cache_size

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _request(
        self,
        node: NodeEndpoint,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        timeout: float | None = None,
    ) -> NodeAnswer:
        headers = {"Authorization": f"Bearer {node.gateway_secret}"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        limit = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(limit):  # the whole call, not per read
                url, extensions = await self._checked_url(node.url + path, headers)
                request = self._http.build_request(
                    method,
                    url,
                    content=content,
                    headers=headers,
                    timeout=limit,
                    extensions=extensions,
                )
                r = await self._http.send(request, stream=True)
                try:
                    body = await self._read_capped(r)
                finally:
                    await r.aclose()
        except (TimeoutError, httpx.TimeoutException):
            raise NodeCallError(
                f"node {node.url} timed out", retryable=True, code="node_timeout"
            ) from None
        except NodeAnswerTooLarge as exc:
            raise NodeCallError(
                f"node {node.url}: {exc}", retryable=True, code="node_answer_too_large"
            ) from None
        except UnsafeAddress as exc:
            raise NodeCallError(
                f"node {node.url}: {exc}", retryable=True, code="node_address_refused"
            ) from None
        except httpx.HTTPError as exc:
            raise NodeCallError(
                f"node {node.url} is unreachable ({type(exc).__name__})",
                retryable=True,
                code="node_unreachable",
            ) from None
        answer = NodeAnswer(r.status_code, body)
        if answer.status_code >= 400:
            raise _node_error(node, answer)
        return answer

    async def _checked_url(
        self, url: str, headers: dict[str, str]
    ) -> tuple[httpx.URL, dict[str, Any]]:
        """``url`` aimed at an address the guard just resolved and checked (Host header and
        TLS server name keep the node's name), or as is when private addresses are allowed."""
        parsed = httpx.URL(url)
        if self.guard.allow_private:
            return parsed, {}
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        loop = asyncio.get_running_loop()
        addresses = await loop.run_in_executor(None, self.guard.resolve, parsed.host, port)
        headers["Host"] = parsed.netloc.decode("ascii")
        extensions: dict[str, Any] = {}
        if parsed.scheme == "https":
            extensions["sni_hostname"] = parsed.host
        return parsed.copy_with(host=addresses[0]), extensions

    async def _read_capped(self, r: httpx.Response) -> bytes:
        """The (decoded) body of ``r``, or NodeAnswerTooLarge as soon as Content-Length or
        the bytes received exceed ``max_response_bytes``."""
        cap = self.max_response_bytes
        declared = r.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > cap:
            raise NodeAnswerTooLarge(f"the node announced a {declared}-byte answer (limit {cap})")
        chunks: list[bytes] = []
        size = 0
        async for chunk in r.aiter_bytes():
            size += len(chunk)
            if size > cap:
                raise NodeAnswerTooLarge(f"the node's answer exceeds {cap} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def live(self, node: NodeEndpoint, *, timeout: float = 2.0) -> bool:
        """Whether the node answers its liveness probe."""
        try:
            await self._request(node, "GET", "/v2/health/live", timeout=timeout)
        except NodeCallError:
            return False
        return True

    async def ready(self, node: NodeEndpoint, *, timeout: float = 2.0) -> None:
        """The platform's own health check: the node answers its readiness probe
        (``GET /v2/health/ready``, with the gateway secret) with 200 within ``timeout``;
        NodeCallError (saying why) otherwise."""
        await self._request(node, "GET", "/v2/health/ready", timeout=timeout)

    async def metadata(self, node: NodeEndpoint, version_id: uuid.UUID | str) -> ModelMetadata:
        """The model's inputs and outputs (loads it on the node if cold); cached per version
        (published versions are immutable)."""
        key = str(version_id)
        cached = self._meta.get(key)
        if cached is not None:
            self._meta.move_to_end(key)
            return cached
        r = await self._request(node, "GET", f"/v2/models/{key}")
        try:
            meta = ModelMetadata.from_json(r.json())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise NodeCallError(
                f"node {node.url} answered malformed metadata: {exc!r}",
                retryable=True,
                code="bad_node_answer",
            ) from None
        self._meta[key] = meta
        while len(self._meta) > self._meta_size:
            self._meta.popitem(last=False)
        return meta

    async def load(self, node: NodeEndpoint, version_id: uuid.UUID | str) -> None:
        """Ask the node to load the model now (after ``assign``), ahead of traffic."""
        await self._request(node, "POST", f"/v2/repository/models/{version_id}/load")

    async def forward(self, node: NodeEndpoint, version_id: uuid.UUID | str, body: bytes) -> bytes:
        """POST an OIP request body as is; the node's JSON answer as bytes (no re-encoding:
        the v2 gateway route can pass it straight through)."""
        r = await self._request(node, "POST", f"/v2/models/{version_id}/infer", content=body)
        return r.content

    async def infer(
        self, node: NodeEndpoint, version_id: uuid.UUID | str, request: Mapping[str, Any]
    ) -> dict[str, Any]:
        """An OIP inference: request and response as dicts."""
        raw = await self.forward(node, version_id, json.dumps(request).encode())
        try:
            out: dict[str, Any] = json.loads(raw)
        except ValueError:
            raise NodeCallError(
                f"node {node.url} answered invalid JSON", retryable=True, code="bad_node_answer"
            ) from None
        return out

    async def infer_simple(
        self,
        node: NodeEndpoint,
        version_id: uuid.UUID | str,
        inputs: Any,
        *,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Simple JSON in, simple JSON out (the shapes ``run_onnx`` uses)."""
        meta = await self.metadata(node, version_id)
        request = simple_to_oip(meta, inputs, request_id=request_id)
        n_rows = request["inputs"][0]["shape"][0] if request["inputs"][0]["shape"] else 1
        response = await self.infer(node, version_id, request)
        return oip_to_simple(meta, response, n_rows)


def _node_error(node: NodeEndpoint, r: NodeAnswer) -> NodeCallError:
    code, detail = "model_unavailable", f"node {node.url} answered {r.status_code}"
    try:
        body = r.json()
        if isinstance(body, dict):
            code = str(body.get("code") or code)[:64]
            detail = str(body.get("detail") or body.get("error") or detail)[:500]
    except ValueError:
        pass
    if r.status_code in CLIENT_ERRORS:
        return NodeCallError(
            detail, retryable=False, code=code, status=r.status_code, node_status=r.status_code
        )
    return NodeCallError(
        f"node {node.url}: {detail}",
        retryable=True,
        code=code,
        status=503,
        node_status=r.status_code,
    )
