"""The inference gateway: authenticate, rate-limit, meter, route to a node, retry, cache.

Per request (docs/gateway.md):

1. the bearer (API key with the ``inference`` scope, or an access token) is resolved through
   ``accounts.service.resolve_bearer`` and cached in memory for ``inference_auth_cache_seconds``
   (a revoked key keeps working at most that long; no DB round trip per request);
2. ``owner/name[@version]`` → the published version (cached ``inference_model_cache_seconds``);
3. one token from the caller's bucket (per API key, else per user), else 429 ``rate_limited``;
4. ``meter.authorize`` → a Ticket (or 402/429/409 from metering);
5. a cached answer of a deterministic model, if any (still settled, with ``node_id`` None);
6. ``choose_node`` over the routing table (``healthy_nodes``, cached ~1 s) with this replica's
   own in-flight counts; a cold node gets ``ensure_assigned`` in its own committed session;
   a retryable ``NodeCallError`` is retried once on another node;
7. ``meter.settle`` on success (fresh request id, the node that served it), ``meter.cancel``
   on any failure: a failure is never billed and a ticket is settled at most once.

Nothing here knows about HTTP frameworks: methods take bytes/strings and answer bytes or raise
``DomainError``; ``cyxwiz.web.api.v1.inference`` turns those into responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import anyio.to_thread
import httptools
import orjson

from cyxwiz.accounts.service import resolve_bearer
from cyxwiz.catalog.service import find_model
from cyxwiz.clock import Clock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.errors import (
    DomainError,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
)
from cyxwiz.inference import service
from cyxwiz.inference.cache import ResultCache, TTLCache, input_digest
from cyxwiz.inference.interfaces import Meter, NodeCallError, NodeUnavailable, RoutableNode, Ticket
from cyxwiz.inference.metering import count_tokens
from cyxwiz.inference.node_client import (
    CLIENT_ERRORS,
    ModelMetadata,
    NodeClient,
    oip_to_simple,
    simple_to_oip,
)
from cyxwiz.inference.ratelimit import Limit, RateLimiter, rate_limiter_from_settings

log = logging.getLogger("cyxwiz.gateway")
T = TypeVar("T")

SCOPE = "inference"
SUSPECT_SECONDS = 5.0  # a node that just failed gets no new work for this long, if others can
META_DETERMINISTIC = "cyxwiz.deterministic"  # ONNX metadata "false" turns the result cache off
MAX_NODE_HEADER_BYTES = 64 * 1024  # a node's answer headers beyond this: a broken node
PLANS = ("demo", "paid", "owner")  # Ticket.kind: what a call's rate limit depends on
PLAN_MEMO_SECONDS = 300.0  # how long a caller's last plan on a model is remembered


class ModelUnavailable(DomainError):
    code = "model_unavailable"
    status = 503
    title = "Model unavailable"


class RateLimited(DomainError):
    code = "rate_limited"
    status = 429
    title = "Too many requests"


class MalformedJson(DomainError):
    code = "malformed_json"
    status = 400
    title = "Malformed JSON"


class UnsupportedMediaType(DomainError):
    code = "unsupported_media_type"
    status = 415
    title = "Unsupported media type"


class MeteringUnavailable(DomainError):
    code = "metering_unavailable"
    status = 503
    title = "Metering unavailable"


@dataclass(frozen=True)
class Caller:
    """Who is calling (a detached snapshot of the resolved bearer)."""

    user_id: uuid.UUID
    is_admin: bool
    via: str  # api_key | access | session
    api_key_id: uuid.UUID | None
    scopes: frozenset[str] | None

    @cached_property  # (a frozen dataclass still has a __dict__ for it)
    def bucket(self) -> str:
        return f"k:{self.api_key_id}" if self.api_key_id is not None else f"u:{self.user_id}"


def plan_limits(settings: Settings) -> dict[str, Limit]:
    """Each plan's token bucket (docs/gateway.md, "Rate limits")."""
    s = settings
    return {
        "demo": Limit(s.inference_demo_rate_per_second, s.inference_demo_burst),
        "paid": Limit(s.inference_rate_per_second, s.inference_burst),
        "owner": Limit(s.inference_owner_rate_per_second, s.inference_owner_burst),
    }


@dataclass(frozen=True)
class Target:
    """A published model version to run (cacheable; visibility checked per caller)."""

    model_id: uuid.UUID
    owner_id: uuid.UUID
    owner: str
    name: str
    visibility: str
    version_id: uuid.UUID
    version: str  # label

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @cached_property
    def node_path(self) -> str:
        """Where a node serves this version (its OIP name is the version id)."""
        return f"/v2/models/{self.version_id}/infer"

    @property
    def oip_name(self) -> str:
        return f"{self.owner}--{self.name}"

    def visible_to(self, caller: Caller) -> bool:
        return (
            self.visibility in ("public", "unlisted")
            or caller.user_id == self.owner_id
            or caller.is_admin
        )


@dataclass(frozen=True)
class Answer:
    body: bytes
    request_id: str
    cached: bool
    node_id: uuid.UUID | None


class NoMeter:
    """Used when no metering is configured: every inference is refused (503), never free."""

    async def authorize(self, **_: Any) -> Ticket:
        raise MeteringUnavailable("inference metering is not configured on this server")

    async def settle(self, ticket: Ticket, *, request_id: str, node_id: Any, units: int) -> None:
        return None

    async def cancel(self, ticket: Ticket) -> None:
        return None

    async def flush(self) -> None:
        return None

    async def close(self) -> None:
        return None


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedJson("the request body is not valid JSON") from None


def split_oip_name(name: str) -> tuple[str, str]:
    """``owner--name`` → (owner, name); usernames never contain ``--``."""
    owner, sep, model = name.partition("--")
    if not sep or not owner or not model:
        raise NotFound(
            f"model {name!r} not found (v2 model names are 'owner--name')", code="model_not_found"
        )
    return owner, model


class Gateway:
    """One per API process; ``start`` inside the event loop, ``close`` at shutdown."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        clock: Clock,
        meter: Meter | None = None,
        limiter: RateLimiter | None = None,
        nodes: NodeClient | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.meter: Meter = meter if meter is not None else NoMeter()
        self._limiter = limiter
        self._nodes = nodes
        self._conns: NodeConnections | None = None
        self.cache = ResultCache(
            ttl=settings.inference_cache_seconds, max_entries=settings.inference_cache_entries
        )
        self._auth: TTLCache[str, Caller | DomainError] = TTLCache(
            ttl=settings.inference_auth_cache_seconds, max_entries=100_000
        )
        self._targets: TTLCache[tuple[str, str, str], Target | DomainError] = TTLCache(
            ttl=settings.inference_model_cache_seconds, max_entries=10_000
        )
        self.limits = plan_limits(settings)
        # (caller bucket, model id) -> the plan of the caller's last ticket on that model
        self._plans: TTLCache[tuple[str, uuid.UUID], str] = TTLCache(
            ttl=PLAN_MEMO_SECONDS, max_entries=100_000
        )
        self._table: list[RoutableNode] = []
        self._table_loaded = False
        self._table_expires = 0.0
        self._refresh: asyncio.Future[None] | None = None
        self._assigned: set[tuple[uuid.UUID, uuid.UUID]] = set()
        self._deterministic: dict[uuid.UUID, bool] = {}
        self._meta: dict[uuid.UUID, ModelMetadata] = {}
        self._suspects: dict[uuid.UUID, float] = {}  # node id -> avoid until (monotonic)
        self.inflight: defaultdict[uuid.UUID, int] = defaultdict(int)
        # node_failures, retries, unavailable, cache_hits, cold_assignments (for operators)
        self.stats: Counter[str] = Counter()

    # ------------------------------------------------------------ life cycle

    @property
    def limiter(self) -> RateLimiter:
        if self._limiter is None:
            self._limiter = rate_limiter_from_settings(redis_url=self.settings.redis_url)
        return self._limiter

    @property
    def nodes(self) -> NodeClient:
        if self._nodes is None:
            self._nodes = NodeClient(timeout=self.settings.inference_node_timeout_seconds)
        return self._nodes

    async def start(self) -> None:
        """Start the meter's background work (its flusher), if it has any."""
        start = getattr(self.meter, "start", None)
        if start is not None:
            await start()

    @property
    def conns(self) -> NodeConnections:
        if self._conns is None:
            self._conns = NodeConnections(timeout=self.settings.inference_node_timeout_seconds)
        return self._conns

    async def close(self) -> None:
        if self._conns is not None:
            await self._conns.aclose()
            self._conns = None
        if self._refresh is not None:
            with contextlib.suppress(Exception):
                await self._refresh
        if self._nodes is not None:
            await self._nodes.aclose()
            self._nodes = None
        if self._limiter is not None:
            await self._limiter.close()
            self._limiter = None
        try:
            await self.meter.close()
        except Exception:  # shutdown goes on; the meter's own log says what was not flushed
            log.exception("closing the inference meter failed")

    # ------------------------------------------------------------ who and what

    async def authenticate(self, authorization: str | None) -> Caller:
        """The caller for an ``Authorization: Bearer`` header with the ``inference`` scope."""
        if not authorization:
            raise NotAuthenticated(
                "send 'Authorization: Bearer <API key with the inference scope>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        scheme, _, raw = authorization.partition(" ")
        raw = raw.strip()
        if scheme.lower() != "bearer" or not raw:
            raise NotAuthenticated(
                "Authorization header must be 'Bearer <token>'",
                code="invalid_token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        found = self._auth.get(raw)
        if found is None:
            found = await anyio.to_thread.run_sync(self._resolve_bearer, raw)
            self._auth.put(raw, found)
        if isinstance(found, DomainError):
            raise found
        if found.scopes is not None and SCOPE not in found.scopes:
            raise PermissionDenied(
                f"this API key lacks the {SCOPE!r} scope", code="insufficient_scope"
            )
        return found

    def _resolve_bearer(self, raw: str) -> Caller | DomainError:
        try:
            with self.db.session() as session:
                p = resolve_bearer(session, raw=raw)
                return Caller(
                    user_id=p.user.id,
                    is_admin=p.user.is_admin,
                    via=p.via,
                    api_key_id=p.api_key_id,
                    scopes=p.scopes,
                )
        except NotAuthenticated as exc:
            exc.headers.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')
            return exc

    async def target(self, *, owner: str, name: str, version: str | None, caller: Caller) -> Target:
        """The published version to run (latest unless ``version`` names one); NotFound for
        models the caller may not see, drafts and unknown versions."""
        key = (owner.lower(), name, version or "")
        found = self._targets.get(key)
        if found is None:
            found = await anyio.to_thread.run_sync(self._resolve_target, *key)
            self._targets.put(key, found)
        if isinstance(found, DomainError):
            raise found
        if not found.visible_to(caller):
            raise NotFound(f"model {owner}/{name} not found", code="model_not_found")
        return found

    def _resolve_target(self, owner: str, name: str, version: str) -> Target | DomainError:
        with self.db.session() as session:
            model = find_model(session, owner=owner, name=name)
            if model is None:
                return NotFound(f"model {owner}/{name} not found", code="model_not_found")
            published = [v for v in model.versions if v.status == "published"]
            if version and version.lower() not in ("latest", "main"):
                chosen = next((v for v in published if v.version == version), None)
            else:
                chosen = model.latest_version
            if chosen is None:
                what = f"version {version!r}" if version else "published version"
                return NotFound(f"{model.full_name} has no {what}", code="version_not_found")
            return Target(
                model_id=model.id,
                owner_id=model.owner_id,
                owner=model.owner.username,
                name=model.name,
                visibility=model.visibility,
                version_id=chosen.id,
                version=chosen.version,
            )

    # ------------------------------------------------------------ rate limits per plan

    def expected_plan(self, caller: Caller, target: Target) -> str | None:
        """The plan this call will most likely get from metering: the plan of the caller's
        last ticket on this model (remembered ``PLAN_MEMO_SECONDS``), else ``owner`` for the
        model's owner (metering's first rule), else None (not known before ``authorize``)."""
        plan = self._plans.get((caller.bucket, target.model_id))
        if plan is None and caller.user_id == target.owner_id:
            plan = "owner"
        return plan

    async def check_rate(self, caller: Caller, plan: str) -> None:
        """One token from the caller's bucket for ``plan`` (per API key, else per user), else
        429 ``rate_limited`` with ``Retry-After``."""
        limit = self.limits.get(plan)
        if limit is None:  # a kind this gateway does not know: limited as paid
            plan, limit = "paid", self.limits["paid"]
        wait = await self.limiter.take(f"{plan}:{caller.bucket}", limit)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise RateLimited(
                f"rate limit of {limit.rate:g} requests/s (burst {limit.burst}) for {plan} "
                f"calls reached; retry in {retry} s",
                headers={"Retry-After": str(retry)},
                plan=plan,
            )

    # ------------------------------------------------------------ routing

    async def routing_table(self, *, force: bool = False) -> list[RoutableNode]:
        """Healthy nodes, refreshed from the DB at most every ``inference_nodes_cache_seconds``
        (served stale while one refresh runs in the background)."""
        if not force and time.monotonic() < self._table_expires:
            return self._table
        if self._refresh is None:
            self._refresh = asyncio.ensure_future(self._load_table())
        if force or not self._table_loaded:
            await asyncio.shield(self._refresh)
        return self._table

    async def _load_table(self) -> None:
        try:
            table = await anyio.to_thread.run_sync(self._query_table)
            self._table = table
            self._table_loaded = True
            self._table_expires = time.monotonic() + self.settings.inference_nodes_cache_seconds
        finally:
            self._refresh = None

    def _query_table(self) -> list[RoutableNode]:
        with self.db.session() as session:
            return service.healthy_nodes(
                session, now=self.clock.now(), timeout=self.settings.inference_node_stale_seconds
            )

    async def _ensure_assigned(self, node: RoutableNode, version_id: uuid.UUID) -> None:
        if version_id in node.assigned or (node.id, version_id) in self._assigned:
            return

        def assign() -> None:
            with self.db.session() as session:  # committed before the node fetches the manifest
                service.ensure_assigned(session, node_id=node.id, version_id=version_id)

        try:
            await anyio.to_thread.run_sync(assign)
        except NodeUnavailable as exc:
            raise NodeCallError(exc.detail, retryable=True, code="node_unavailable") from None
        self._assigned.add((node.id, version_id))
        self.stats["cold_assignments"] += 1

    def _avoid(self, exclude: list[uuid.UUID]) -> list[uuid.UUID]:
        """``exclude`` plus nodes that failed in the last ``SUSPECT_SECONDS`` (until the
        routing table drops them, they would cost every request a failed attempt)."""
        if not self._suspects:
            return exclude
        now = time.monotonic()
        for node_id, until in list(self._suspects.items()):
            if until <= now:
                del self._suspects[node_id]
        return [*exclude, *self._suspects]

    async def run_on_node(
        self, target: Target, call: Callable[[RoutableNode], Awaitable[T]]
    ) -> tuple[T, RoutableNode]:
        """``call`` on the best node for ``target``; once more on another node if the first
        fails in a retryable way; ModelUnavailable (503) when there is none or both fail."""
        exclude: list[uuid.UUID] = []
        failure: NodeCallError | None = None
        force = False
        for _ in range(2):
            table = await self.routing_table(force=force)
            node = service.choose_node(
                table,
                version_id=target.version_id,
                exclude=self._avoid(exclude),
                inflight=self.inflight,
            ) or service.choose_node(  # only suspects left: try them rather than fail
                table, version_id=target.version_id, exclude=exclude, inflight=self.inflight
            )
            if node is None and not force:
                table = await self.routing_table(force=True)
                node = service.choose_node(
                    table, version_id=target.version_id, exclude=exclude, inflight=self.inflight
                )
            if node is None:
                break
            if exclude:
                self.stats["retries"] += 1
            self.inflight[node.id] += 1
            try:
                await self._ensure_assigned(node, target.version_id)
                return await call(node), node
            except NodeCallError as exc:
                if not exc.retryable:
                    raise _callers_fault(exc) from None
                log.warning("node %s failed for %s: %s", node.name, target.full_name, exc.detail)
                failure = exc
                self.stats["node_failures"] += 1
                self._suspects[node.id] = time.monotonic() + SUSPECT_SECONDS
                exclude.append(node.id)
                force = exc.code in ("invalid_gateway_secret", "node_unavailable")
            finally:
                self.inflight[node.id] -= 1
        self.stats["unavailable"] += 1
        if failure is None:
            raise ModelUnavailable(f"no healthy node can serve {target.full_name} right now")
        raise ModelUnavailable(
            f"{target.full_name} is unavailable: {failure.code} ({failure.detail})",
            reason=failure.code,
        )

    # ------------------------------------------------------------ metering around the work

    async def _metered(
        self,
        caller: Caller,
        target: Target,
        work: Callable[[], Awaitable[Answer]],
        *,
        units: int,
        checked: str | None,
    ) -> Answer:
        """``work`` under a ticket: settled on success, cancelled on any failure. ``checked``
        is the plan whose bucket the call already took a token from (``expected_plan``); if
        the ticket's plan differs (or none was known), the call takes a token from its own
        plan's bucket now — a refusal cancels the ticket (a demo credit comes back)."""
        ticket = await self.meter.authorize(
            user_id=caller.user_id,
            model_id=target.model_id,
            version_id=target.version_id,
            api_key_id=caller.api_key_id,
            units=units,
        )
        if ticket.kind != checked:
            self._plans.put((caller.bucket, target.model_id), ticket.kind)
            try:
                await self.check_rate(caller, ticket.kind)
            except BaseException:
                await _to_the_end(self.meter.cancel(ticket))
                raise
        try:
            answer = await work()
        except BaseException:
            await _to_the_end(self.meter.cancel(ticket))
            raise
        await _to_the_end(
            self.meter.settle(
                ticket, request_id=answer.request_id, node_id=answer.node_id, units=ticket.units
            )
        )
        return answer

    def _cacheable(self, version_id: uuid.UUID) -> bool:
        return self.cache.enabled and self._deterministic.get(version_id, False)

    def _simple_units(self, version_id: uuid.UUID, inputs: Any) -> int:
        """Tokens for per-1K-token pricing (metering's ``count_tokens``); models without
        string inputs always count 1, without walking the input."""
        meta = self._meta.get(version_id)
        if meta is not None and all(t.datatype != "BYTES" for t in meta.inputs):
            return 1
        return count_tokens(inputs)

    def _learn(self, version_id: uuid.UUID, meta: ModelMetadata) -> None:
        self._meta[version_id] = meta
        flag = meta.properties.get(META_DETERMINISTIC, "true").strip().lower()
        self._deterministic[version_id] = flag not in ("false", "0", "no")

    # ------------------------------------------------------------ the two forms

    async def infer_simple(self, *, caller: Caller, target: Target, body: bytes) -> Answer:
        """Simple JSON (``{"inputs": ...}`` as the model card shows) → simple JSON answer."""
        payload = parse_json(body)
        inputs = payload.get("inputs") if isinstance(payload, dict) else payload
        if inputs is None:
            raise InvalidInput('send {"inputs": ...}', code="invalid_input", status=400)
        plan = self.expected_plan(caller, target)
        if plan is not None:  # refused calls never reach metering
            await self.check_rate(caller, plan)

        async def work() -> Answer:
            request_id = os.urandom(16).hex()
            digest = ""
            if self._cacheable(target.version_id):
                digest = input_digest(inputs)
                hit = self.cache.get(target.version_id, "simple", digest)
                if hit is not None:
                    self.stats["cache_hits"] += 1
                    return Answer(
                        self._simple_body(target, request_id, hit), request_id, True, None
                    )

            async def call(node: RoutableNode) -> dict[str, Any]:
                meta = self._meta.get(target.version_id)  # versions are immutable
                if meta is None:
                    meta = await self.nodes.metadata(node, target.version_id)
                    self._learn(target.version_id, meta)
                request = simple_to_oip(meta, inputs, request_id=request_id)
                shape = request["inputs"][0]["shape"]
                raw = await self.conns.post(node, target.node_path, orjson.dumps(request))
                response = _json_object(node, raw)
                return oip_to_simple(meta, response, shape[0] if shape else 1)

            out, node = await self.run_on_node(target, call)
            if self._cacheable(target.version_id):
                self.cache.put(target.version_id, "simple", digest or input_digest(inputs), out)
            return Answer(self._simple_body(target, request_id, out), request_id, False, node.id)

        units = self._simple_units(target.version_id, inputs)
        return await self._metered(caller, target, work, units=units, checked=plan)

    @staticmethod
    def _simple_body(target: Target, request_id: str, out: dict[str, Any]) -> bytes:
        return orjson.dumps(
            {
                "model": target.full_name,
                "version": target.version,
                "request_id": request_id,
                **out,
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

    async def infer_v2(self, *, caller: Caller, target: Target, body: bytes) -> Answer:
        """An Open Inference Protocol request passed through to a node as is; the answer's
        ``model_name`` is ``owner--name``."""
        request = parse_json(body)
        if not isinstance(request, dict):
            raise InvalidInput("an inference request is a JSON object with 'inputs'", status=400)
        client_id = request.get("id")
        plan = self.expected_plan(caller, target)
        if plan is not None:  # refused calls never reach metering
            await self.check_rate(caller, plan)

        async def work() -> Answer:
            request_id = os.urandom(16).hex()
            answer_id = client_id if client_id is not None else request_id
            digest = ""
            if self._cacheable(target.version_id):
                digest = input_digest({k: v for k, v in request.items() if k != "id"})
                hit = self.cache.get(target.version_id, "v2", digest)
                if hit is not None:
                    self.stats["cache_hits"] += 1
                    return Answer(orjson.dumps({**hit, "id": answer_id}), request_id, True, None)

            async def call(node: RoutableNode) -> dict[str, Any]:
                if target.version_id not in self._deterministic:
                    self._learn(
                        target.version_id, await self.nodes.metadata(node, target.version_id)
                    )
                raw = await self.conns.post(node, target.node_path, body)
                return _json_object(node, raw)

            out, node = await self.run_on_node(target, call)
            out["model_name"] = target.oip_name
            out["id"] = answer_id
            if self._cacheable(target.version_id):
                digest = digest or input_digest({k: v for k, v in request.items() if k != "id"})
                self.cache.put(
                    target.version_id, "v2", digest, {k: v for k, v in out.items() if k != "id"}
                )
            return Answer(orjson.dumps(out), request_id, False, node.id)

        tensors = request.get("inputs")
        strings = [
            t.get("data")
            for t in (tensors if isinstance(tensors, list) else [])
            if isinstance(t, dict) and t.get("datatype") == "BYTES"
        ]
        units = count_tokens(strings) if strings else 1
        return await self._metered(caller, target, work, units=units, checked=plan)

    async def metadata_v2(self, *, target: Target) -> bytes:
        """``GET /v2/models/{owner--name}``: the node's model metadata under the OIP name."""

        async def call(node: RoutableNode) -> ModelMetadata:
            return await self.nodes.metadata(node, target.version_id)

        meta, _ = await self.run_on_node(target, call)
        self._learn(target.version_id, meta)

        def tensors(specs: Any) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in specs]

        return orjson.dumps(
            {
                "name": target.oip_name,
                "versions": [target.version],
                "platform": meta.platform,
                "inputs": tensors(meta.inputs),
                "outputs": tensors(meta.outputs),
                "parameters": {
                    "model": target.full_name,
                    "version": target.version,
                    "properties": dict(meta.properties),
                },
            }
        )

    # ------------------------------------------------------------ scheduler

    def evict_stale(self) -> int:
        """Mark nodes with missed heartbeats offline (run on a schedule, in a thread)."""
        with self.db.session() as session:
            return service.evict_stale(
                session, now=self.clock.now(), timeout=self.settings.inference_node_stale_seconds
            )


async def _to_the_end(coro: Coroutine[Any, Any, None]) -> None:
    """``await coro``, run to its end even if the calling task is cancelled meanwhile (what
    ``asyncio.shield`` gives), without a task of its own when it ends without suspending — as
    the meter's ``settle``/``cancel`` normally do (shield's task cost ~6 µs per call)."""
    try:
        first = coro.send(None)
    except StopIteration:
        return
    await asyncio.shield(asyncio.ensure_future(_finish(coro, first)))


async def _finish(coro: Coroutine[Any, Any, None], first: Any) -> None:
    await _Suspended(coro, first)


class _Suspended:
    """Awaiting this goes on with ``coro``, suspended on ``first`` (what it yielded)."""

    def __init__(self, coro: Coroutine[Any, Any, None], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # passed on to the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(sent)
                except StopIteration:
                    return


def _json_object(node: RoutableNode, raw: bytes) -> dict[str, Any]:
    try:
        out = orjson.loads(raw)
    except orjson.JSONDecodeError:
        out = None
    if not isinstance(out, dict):
        raise NodeCallError(
            f"node {node.url} answered invalid JSON", retryable=True, code="bad_node_answer"
        )
    return out


def _callers_fault(exc: NodeCallError) -> DomainError:
    """A node's non-retryable 4xx as the gateway's own error (the node's message kept; its
    specific code, e.g. ``wrong_shape``, as ``reason``): the request's fault → 400/413/415;
    a model file ONNX Runtime cannot load → 503 ``model_unavailable``."""
    status = exc.node_status or exc.status
    if exc.code == "model_not_servable":  # the file itself cannot run: no node will do better
        return ModelUnavailable(exc.detail, reason=exc.code)
    if status == 413:
        return PayloadTooLarge(exc.detail, reason=exc.code)
    if status == 415:
        return UnsupportedMediaType(exc.detail, reason=exc.code)
    return InvalidInput(exc.detail, code="invalid_input", status=400, reason=exc.code)


# ---------------------------------------------------------------- the hot call to a node


class _NodeConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a node: one request at a time, its answer parsed
    by httptools (Content-Length, chunked, or until the node closes)."""

    def __init__(self, pool: NodeConnections, key: str) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.head_bytes = 0
        self.headers_done = False
        self.until_eof = True  # no Content-Length / chunked: the body ends when the node closes
        self.answered = False  # bytes came back for the current request
        self.deadline = 0.0
        self.closed = False

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing asked: the connection is out of step, drop it
            self.close()
            return
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ValueError("the node upgraded the connection"))
        except (httptools.HttpParserError, ValueError) as exc:
            self._fail(ValueError(f"invalid HTTP answer ({exc})"))

    def eof_received(self) -> bool:
        return False  # close our side too (connection_lost follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if self.waiter is not None and self.headers_done and self.until_eof and exc is None:
            self._complete(self.parser.get_status_code(), keep=False)
            return
        self._fail(exc if exc is not None else ConnectionResetError("the node closed"))

    # ---------------------------------------------------------------- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_NODE_HEADER_BYTES:
            raise ValueError("the node's answer headers are too large")
        lower = name.lower()
        if lower == b"content-length" or lower == b"transfer-encoding":
            self.until_eof = False

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self._complete(self.parser.get_status_code(), keep=self.parser.should_keep_alive())

    # ---------------------------------------------------------------- one exchange

    def send(self, request: bytes, deadline: float) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        waiter: asyncio.Future[tuple[int, bytes]] = self.pool.loop.create_future()
        self.waiter = waiter
        self.body = []
        self.head_bytes = 0
        self.headers_done = False
        self.until_eof = True
        self.answered = False
        self.deadline = deadline
        self.transport.write(request)
        return waiter

    def _complete(self, status: int, *, keep: bool) -> None:
        waiter, self.waiter = self.waiter, None
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body = []
        if not keep:
            self.close()
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class NodeConnections:
    """A minimal HTTP/1.1 keep-alive client for the gateway's infer calls to nodes.

    httpx's AsyncClient cost ~1 ms per call here and collapsed to ~540 calls/s at 16 concurrent
    requests (its pool, measured against a bare ASGI server); asyncio streams cost a few tens of
    µs per call more than this: a Protocol per connection, httptools' parser, one future per
    call, and one timer for all calls (a call past its deadline is failed within
    ``timeout / 10``, at most 1 s, late) instead of a timeout context per call. Errors map like
    ``NodeClient``'s: unreachable/timeout → retryable ``NodeCallError``; a node's 4xx about the
    request → not retryable; anything else → retryable.
    """

    def __init__(self, *, timeout: float, connect_timeout: float = 2.0, max_idle: int = 64) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: dict[str, list[_NodeConnection]] = {}
        self._busy: set[_NodeConnection] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._tick = min(1.0, max(timeout / 10, 0.01))
        self._targets: dict[str, tuple[str, int, bytes, bool, bytes]] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _target(self, url: str) -> tuple[str, int, bytes, bool, bytes]:
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            tls = parts.scheme == "https"
            host = parts.hostname or "127.0.0.1"
            port = parts.port or (443 if tls else 80)
            host_header = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
            found = (host, port, parts.path.rstrip("/").encode(), tls, host_header.encode())
            self._targets[url] = found
        return found

    async def post(self, node: RoutableNode, path: str, body: bytes) -> bytes:
        """POST ``body`` (JSON) to ``node``; the answer's body, or NodeCallError."""
        host, port, prefix, tls, host_header = self._target(node.url)
        request = b"".join(
            (
                b"POST ",
                prefix,
                path.encode(),
                b" HTTP/1.1\r\nHost: ",
                host_header,
                b"\r\nAuthorization: Bearer ",
                node.gateway_secret.encode(),
                b"\r\nContent-Type: application/json\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
                body,
            )
        )
        try:
            status, raw = await self._exchange(node.url, host, port, tls, request)
        except TimeoutError:
            raise NodeCallError(
                f"node {node.url} timed out", retryable=True, code="node_timeout"
            ) from None
        except (OSError, ValueError) as exc:
            raise NodeCallError(
                f"node {node.url} is unreachable ({type(exc).__name__})",
                retryable=True,
                code="node_unreachable",
            ) from None
        if status >= 400:
            raise _node_failure(node, status, raw)
        return raw

    async def _exchange(
        self, key: str, host: str, port: int, tls: bool, request: bytes
    ) -> tuple[int, bytes]:
        deadline = self.loop.time() + self.timeout
        idle = self._idle.get(key)
        while idle:  # a kept-alive connection (the node may have closed it meanwhile)
            conn = idle.pop()
            if conn.closed:
                continue
            try:
                return await self._roundtrip(conn, request, deadline)
            except TimeoutError:
                raise
            except OSError:
                if conn.answered:
                    raise
                # nothing came back on a reused connection: the node had closed it; next one
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await self.loop.create_connection(
                lambda: _NodeConnection(self, key), host, port, ssl=True if tls else None
            )
        return await self._roundtrip(conn, request, deadline)

    async def _roundtrip(
        self, conn: _NodeConnection, request: bytes, deadline: float
    ) -> tuple[int, bytes]:
        waiter = conn.send(request, deadline)
        self._busy.add(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._tick, self._sweep)
        try:
            answer = await waiter
        except BaseException:
            conn.close()  # its answer may still come: never reuse it
            raise
        finally:
            self._busy.discard(conn)
        if not conn.closed:
            idle = self._idle.setdefault(conn.key, [])
            if len(idle) < self.max_idle:
                idle.append(conn)
            else:
                conn.close()
        return answer

    def _sweep(self) -> None:
        """Fail the calls past their deadline (one timer for all calls)."""
        self._sweeper = None
        now = self.loop.time()
        for conn in [c for c in self._busy if c.deadline <= now]:
            conn._fail(TimeoutError())
        if self._busy:
            self._sweeper = self.loop.call_later(self._tick, self._sweep)

    def _forget(self, conn: _NodeConnection) -> None:
        self._busy.discard(conn)

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn._fail(ConnectionResetError("the gateway is closing"))
        self._busy.clear()


def _node_failure(node: RoutableNode, status: int, raw: bytes) -> NodeCallError:
    code, detail = "model_unavailable", f"node {node.url} answered {status}"
    try:
        body = orjson.loads(raw)
        if isinstance(body, dict):
            code = str(body.get("code") or code)
            detail = str(body.get("detail") or body.get("error") or detail)
    except orjson.JSONDecodeError:
        pass
    if status in CLIENT_ERRORS:
        return NodeCallError(detail, retryable=False, code=code, status=status, node_status=status)
    return NodeCallError(
        f"node {node.url}: {detail}", retryable=True, code=code, status=503, node_status=status
    )
