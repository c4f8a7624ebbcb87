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
from cyxwiz.inference.interfaces import (
    Meter,
    NodeCallError,
    NodeUnavailable,
    OperatorNotApproved,
    RoutableNode,
    Ticket,
)
from cyxwiz.inference.metering import count_tokens
from cyxwiz.inference.node_client import (
    CLIENT_ERRORS,
    ModelMetadata,
    NodeAnswerTooLarge,
    NodeClient,
    oip_to_simple,
    simple_to_oip,
)
from cyxwiz.inference.ratelimit import Limit, RateLimiter, rate_limiter_from_settings
from cyxwiz.netguard import AddressGuard, UnsafeAddress

log = logging.getLogger("cyxwiz.gateway")
T = TypeVar("T")

SCOPE = "inference"
SUSPECT_SECONDS = 5.0  # a node that just failed gets no new work for this long, if others can
META_DETERMINISTIC = "cyxwiz.deterministic"  # ONNX metadata "false" turns the result cache off
META_MAX_BATCH_ROWS = "cyxwiz.max_batch_rows"  # ONNX metadata: most rows per call (a model's own)
MAX_NODE_HEADER_BYTES = 64 * 1024  # a node's answer headers beyond this: a broken node
PLANS = ("demo", "paid", "owner")  # Ticket.kind: what a call's rate limit depends on
PLAN_MEMO_SECONDS = 300.0  # how long a caller's last plan on a model is remembered
LATENCY_ALPHA = 0.3  # weight of the newest call in a node's latency EWMA
# A node's answer the gateway could not use: the call fails as the node's fault (502).
BAD_ANSWER_CODES = frozenset({"bad_node_answer", "node_answer_too_large"})


class ModelUnavailable(DomainError):
    code = "model_unavailable"
    status = 503
    title = "Model unavailable"


class BadNodeAnswer(DomainError):
    """Every node tried answered something unusable (too large, malformed): 502."""

    code = "bad_node_answer"
    status = 502
    title = "Bad answer from the inference node"


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


class EmptyBatch(DomainError):
    """A call with no rows (``shape [0, 4]``, ``{"inputs": []}``): refused, never billed."""

    code = "empty_batch"
    status = 422
    title = "Empty batch"


class BatchTooLarge(DomainError):
    """More rows than the model's ``cyxwiz.max_batch_rows`` (else ``inference_max_batch_rows``)."""

    code = "batch_too_large"
    status = 413
    title = "Batch too large"


def batch_rows(request: dict[str, Any]) -> int:
    """The batch size of an OIP request: the first dimension of its inputs (a scalar input is
    one row), the same for every input. ``invalid_input`` (400) for a missing or malformed
    shape or inputs that disagree; ``empty_batch`` (422) when a tensor holds no element."""
    tensors = request.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise InvalidInput(
            "'inputs' must be a non-empty array of tensors", code="invalid_input", status=400
        )
    rows: int | None = None
    for t in tensors:
        shape = t.get("shape") if isinstance(t, dict) else None
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise InvalidInput(
                "every input needs a 'shape': a list of non-negative integers",
                code="invalid_input",
                status=400,
                reason="wrong_shape",
            )
        if 0 in shape:
            raise EmptyBatch(f"input {t.get('name')!r} has shape {shape}: no rows to run")
        n = shape[0] if shape else 1
        if rows is not None and n != rows:
            raise InvalidInput(
                f"the inputs disagree on the batch size (their first dimension): {rows} and {n}",
                code="invalid_input",
                status=400,
                reason="inconsistent_batch",
            )
        rows = n
    assert rows is not None
    return rows


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


# Who calls without credentials (OIP model readiness): sees public and unlisted models only.
ANONYMOUS = Caller(
    user_id=uuid.UUID(int=0), is_admin=False, via="anonymous", api_key_id=None, scopes=None
)


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
        self._max_rows: dict[uuid.UUID, int] = {}  # most rows per call, per version
        self._suspects: dict[uuid.UUID, float] = {}  # node id -> avoid until (monotonic)
        self.inflight: defaultdict[uuid.UUID, int] = defaultdict(int)
        # The platform's own measurements per node (routing never believes a node's claims):
        # versions this gateway saw it answer, latency EWMA (s), failures, health checks.
        self.seen_warm: dict[uuid.UUID, set[uuid.UUID]] = {}
        self.latency: dict[uuid.UUID, float] = {}
        self.failures: Counter[uuid.UUID] = Counter()
        # node id -> ((url, secret) checked, passed); a new registration is checked anew
        self.health: dict[uuid.UUID, tuple[tuple[str, str], bool]] = {}
        self._checking: dict[uuid.UUID, asyncio.Future[bool]] = {}
        self._health_task: asyncio.Task[None] | None = None
        self.guard: AddressGuard = service.address_guard(settings)
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
            self._nodes = NodeClient(
                timeout=self.settings.inference_node_timeout_seconds,
                max_response_bytes=self.settings.node_max_response_bytes,
                guard=self.guard,
            )
        return self._nodes

    async def start(self) -> None:
        """Start the meter's background work (its flusher), if it has any, and the periodic
        health checks of nodes."""
        start = getattr(self.meter, "start", None)
        if start is not None:
            await start()
        if self._health_task is None:
            self._health_task = asyncio.ensure_future(self._health_loop())

    @property
    def conns(self) -> NodeConnections:
        if self._conns is None:
            self._conns = NodeConnections(
                timeout=self.settings.inference_node_timeout_seconds,
                max_response_bytes=self.settings.node_max_response_bytes,
                guard=self.guard,
            )
        return self._conns

    def set_guard(self, guard: AddressGuard) -> None:
        """Use ``guard`` for node addresses from now on (registration and connect time)."""
        self.guard = guard
        if self._conns is not None:
            self._conns.guard = guard
        if self._nodes is not None:
            self._nodes.guard = guard

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._health_task
            self._health_task = None
        for check in list(self._checking.values()):
            check.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await check
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
        except (NodeUnavailable, OperatorNotApproved) as exc:
            raise NodeCallError(exc.detail, retryable=True, code="node_unavailable") from None
        self._assigned.add((node.id, version_id))
        self.stats["cold_assignments"] += 1

    def forget_operator(self, operator_id: uuid.UUID) -> None:
        """Drop ``operator_id``'s nodes from this replica's routing table now (revocation)
        and reload the table on the next request."""
        self._table = [n for n in self._table if n.operator_id != operator_id]
        self._table_expires = 0.0

    # ------------------------------------------------------------ health checks (own)

    def _health_of(self, node: RoutableNode) -> bool | None:
        """Whether this gateway's latest check of ``node`` (at its current URL and secret)
        passed; None when it was never checked."""
        found = self.health.get(node.id)
        if found is None or found[0] != (node.url, node.gateway_secret):
            return None
        return found[1]

    async def check_health(self, node: RoutableNode) -> bool:
        """Check ``node``'s readiness now (one check at a time per node); record and return
        whether it passed. The check is the platform's own: GET /v2/health/ready with the
        gateway secret, within ``inference_node_health_timeout_seconds``."""
        running = self._checking.get(node.id)
        if running is None:
            running = asyncio.ensure_future(self._check(node))
            self._checking[node.id] = running
            running.add_done_callback(lambda _: self._checking.pop(node.id, None))
        return await asyncio.shield(running)

    async def _check(self, node: RoutableNode) -> bool:
        key = (node.url, node.gateway_secret)
        why = ""
        try:
            await self.nodes.ready(
                node, timeout=self.settings.inference_node_health_timeout_seconds
            )
            ok = True
        except NodeCallError as exc:
            ok, why = False, f"{exc.code}: {exc.detail}"
        except Exception as exc:  # a check never raises: it fails
            log.exception("health check of node %s failed", node.name)
            ok, why = False, repr(exc)
        previous = self.health.get(node.id)
        if previous is None or previous[0] != key:  # a new registration: nothing seen warm
            self.seen_warm.pop(node.id, None)
        self.health[node.id] = (key, ok)
        if not ok:
            self.stats["health_failures"] += 1
            if previous is None or previous[1]:
                log.warning("node %s failed its health check (%s): out of routing", node.name, why)
        return ok

    async def routable_nodes(self, *, force: bool = False) -> list[RoutableNode]:
        """The nodes this gateway may route to now: the routing table, less the nodes whose
        latest health check (the gateway's own) failed. What the infer path and the OIP
        readiness routes both ask."""
        return await self._routable(await self.routing_table(force=force))

    async def _routable(self, table: list[RoutableNode]) -> list[RoutableNode]:
        """The nodes of ``table`` whose latest health check passed. Unchecked ones (new or
        re-registered) are checked now — awaited only when no checked node passed."""
        unchecked = [n for n in table if self._health_of(n) is None]
        if unchecked:
            checks = [asyncio.ensure_future(self.check_health(n)) for n in unchecked]
            if not any(self._health_of(n) for n in table):
                await asyncio.gather(*checks)
        return [n for n in table if self._health_of(n)]

    async def _health_loop(self) -> None:
        """Re-check every node of the routing table every
        ``inference_node_health_interval_seconds`` (a failing node leaves routing until a
        check passes). Only nodes the table already holds: no database work here."""
        while True:
            await asyncio.sleep(self.settings.inference_node_health_interval_seconds)
            try:
                table = list(self._table)
                if table:
                    await asyncio.gather(*(self.check_health(n) for n in table))
                live = {n.id for n in table}
                for node_id in [k for k in self.health if k not in live]:
                    del self.health[node_id]
            except Exception:  # keep checking
                log.exception("node health checks failed")

    def _measure(self, node: RoutableNode, version_id: uuid.UUID, seconds: float) -> None:
        """Record a successful call: the version is warm there (as seen), latency EWMA."""
        self.seen_warm.setdefault(node.id, set()).add(version_id)
        before = self.latency.get(node.id)
        self.latency[node.id] = (
            seconds if before is None else before + LATENCY_ALPHA * (seconds - before)
        )

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

        def pick(table: list[RoutableNode], skip: list[uuid.UUID]) -> RoutableNode | None:
            return service.choose_node(
                table,
                version_id=target.version_id,
                exclude=skip,
                inflight=self.inflight,
                warm=self.seen_warm,
                latency=self.latency,
                max_inflight=self.settings.inference_node_max_inflight,
            )

        for _ in range(2):
            table = await self.routable_nodes(force=force)
            # only suspects left: try them rather than fail
            node = pick(table, self._avoid(exclude)) or pick(table, exclude)
            if node is None and not force:
                table = await self.routable_nodes(force=True)
                node = pick(table, exclude)
            if node is None:
                break
            if exclude:
                self.stats["retries"] += 1
            self.inflight[node.id] += 1
            started = time.perf_counter()
            try:
                await self._ensure_assigned(node, target.version_id)
                result = await call(node)
                self._measure(node, target.version_id, time.perf_counter() - started)
                return result, node
            except NodeCallError as exc:
                if not exc.retryable:
                    raise _callers_fault(exc) from None
                log.warning("node %s failed for %s: %s", node.name, target.full_name, exc.detail)
                failure = exc
                self.stats["node_failures"] += 1
                self.failures[node.id] += 1
                self._suspects[node.id] = time.monotonic() + SUSPECT_SECONDS
                exclude.append(node.id)
                force = exc.code in ("invalid_gateway_secret", "node_unavailable")
            finally:
                self.inflight[node.id] -= 1
        self.stats["unavailable"] += 1
        if failure is None:
            raise ModelUnavailable(f"no healthy node can serve {target.full_name} right now")
        if failure.code in BAD_ANSWER_CODES:
            raise BadNodeAnswer(
                f"{target.full_name}: the node's answer was refused: {failure.detail}",
                reason=failure.code,
            )
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
        rows: int,
        checked: str | None,
        client_ip: str | None,
    ) -> Answer:
        """``work`` under a ticket for ``rows`` rows (``units`` input tokens): settled on
        success — durably, before the answer is returned — cancelled on any failure.
        ``checked`` is the plan whose bucket the call already took a token from
        (``expected_plan``); if the ticket's plan differs (or none was known), the call takes
        a token from its own plan's bucket now — a refusal cancels the ticket (a demo credit
        comes back)."""
        ticket = await self.meter.authorize(
            user_id=caller.user_id,
            model_id=target.model_id,
            version_id=target.version_id,
            api_key_id=caller.api_key_id,
            units=units,
            rows=rows,
            client_ip=client_ip,
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
        raw = meta.properties.get(META_MAX_BATCH_ROWS, "").strip()
        most = int(raw) if raw.isdigit() and int(raw) > 0 else 0
        self._max_rows[version_id] = most or self.settings.inference_max_batch_rows

    async def _metadata(self, target: Target) -> ModelMetadata:
        """The version's metadata (from a node, once per version and replica; not metered):
        what a call's rows are checked against before anything is spent."""
        known = self._meta.get(target.version_id)
        if known is not None:
            return known

        async def call(node: RoutableNode) -> ModelMetadata:
            return await self.nodes.metadata(node, target.version_id)

        meta, _ = await self.run_on_node(target, call)
        self._learn(target.version_id, meta)
        return meta

    def _check_rows(self, target: Target, rows: int) -> None:
        """``batch_too_large`` (413) above the version's most rows per call."""
        most = self._max_rows.get(target.version_id, self.settings.inference_max_batch_rows)
        if rows > most:
            raise BatchTooLarge(
                f"this call has {rows} rows; {target.full_name} takes at most {most} per call "
                "(split the batch)",
                rows=rows,
                max_rows=most,
            )

    # ------------------------------------------------------------ the two forms

    async def infer_simple(
        self, *, caller: Caller, target: Target, body: bytes, client_ip: str | None = None
    ) -> Answer:
        """Simple JSON (``{"inputs": ...}`` as the model card shows) → simple JSON answer.
        Metered per row (a row = one instance of the batch); ``client_ip`` is what demo calls
        are budgeted by."""
        payload = parse_json(body)
        inputs = payload.get("inputs") if isinstance(payload, dict) else payload
        if inputs is None:
            raise InvalidInput('send {"inputs": ...}', code="invalid_input", status=400)
        plan = self.expected_plan(caller, target)
        if plan is not None:  # refused calls never reach metering
            await self.check_rate(caller, plan)
        if isinstance(inputs, list | dict | str) and not inputs:
            raise EmptyBatch('"inputs" is empty: no rows to run')
        meta = await self._metadata(target)
        converted = simple_to_oip(meta, inputs)  # 400 invalid_input when it does not fit
        shape = converted["inputs"][0]["shape"]
        if 0 in shape:
            raise EmptyBatch(f"the inputs make a tensor of shape {shape}: no rows to run")
        rows = shape[0] if shape else 1
        self._check_rows(target, rows)

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
                request = {**converted, "id": request_id}
                raw = await self.conns.post(node, target.node_path, orjson.dumps(request))
                response = _json_object(node, raw)
                return oip_to_simple(meta, response, rows)

            out, node = await self.run_on_node(target, call)
            if self._cacheable(target.version_id):
                self.cache.put(target.version_id, "simple", digest or input_digest(inputs), out)
            return Answer(self._simple_body(target, request_id, out), request_id, False, node.id)

        units = self._simple_units(target.version_id, inputs)
        return await self._metered(
            caller, target, work, units=units, rows=rows, checked=plan, client_ip=client_ip
        )

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

    async def infer_v2(
        self, *, caller: Caller, target: Target, body: bytes, client_ip: str | None = None
    ) -> Answer:
        """An Open Inference Protocol request passed through to a node as is; the answer's
        ``model_name`` is ``owner--name``. Metered per row: the first dimension of the inputs
        (``batch_rows``); ``client_ip`` is what demo calls are budgeted by."""
        request = parse_json(body)
        if not isinstance(request, dict):
            raise InvalidInput("an inference request is a JSON object with 'inputs'", status=400)
        client_id = request.get("id")
        plan = self.expected_plan(caller, target)
        if plan is not None:  # refused calls never reach metering
            await self.check_rate(caller, plan)
        rows = batch_rows(request)  # 400 / 422 empty_batch before anything is spent
        await self._metadata(target)
        self._check_rows(target, rows)

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

        tensors = request["inputs"]
        strings = [
            t.get("data") for t in tensors if isinstance(t, dict) and t.get("datatype") == "BYTES"
        ]
        units = count_tokens(strings) if strings else 1
        return await self._metered(
            caller, target, work, units=units, rows=rows, checked=plan, client_ip=client_ip
        )

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
    by httptools (Content-Length, chunked, or until the node closes). An answer whose
    Content-Length or received body exceeds the pool's ``max_response_bytes`` fails at once
    (``NodeAnswerTooLarge``) and the connection is closed: a node cannot make the gateway
    buffer more than that."""

    def __init__(self, pool: NodeConnections, key: str) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.too_large: NodeAnswerTooLarge | None = None
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
            if self.too_large is not None:  # raised by a callback: the answer is too large
                self._fail(self.too_large)
            else:
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
        if lower == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                raise ValueError("the node sent an invalid Content-Length") from None
            if declared > self.pool.max_response_bytes:
                self.too_large = NodeAnswerTooLarge(
                    f"the node announced a {declared}-byte answer (limit "
                    f"{self.pool.max_response_bytes})"
                )
                raise self.too_large

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.pool.max_response_bytes:
            self.too_large = NodeAnswerTooLarge(
                f"the node's answer exceeds {self.pool.max_response_bytes} bytes"
            )
            self.body = []
            raise self.too_large
        self.body.append(body)

    def on_message_complete(self) -> None:
        self._complete(self.parser.get_status_code(), keep=self.parser.should_keep_alive())

    # ---------------------------------------------------------------- one exchange

    def send(self, request: bytes, deadline: float) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        waiter: asyncio.Future[tuple[int, bytes]] = self.pool.loop.create_future()
        self.waiter = waiter
        self.body = []
        self.body_bytes = 0
        self.too_large = None
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
    ``timeout / 10``, at most 1 s, late) instead of a timeout context per call: the deadline
    holds however slowly the node sends (a node dripping a byte a second fails at it). Errors
    map like ``NodeClient``'s: unreachable/timeout → retryable ``NodeCallError``; a node's 4xx
    about the request → not retryable; an answer above ``max_response_bytes`` →
    ``node_answer_too_large`` (retryable, the node's fault); anything else → retryable.

    Every new connection goes to an address ``guard`` has just resolved and checked (never to
    the name again: DNS rebinding), with the Host header (and TLS server name) kept as the
    node's host name; a refused address fails the call as ``node_address_refused``.
    """

    def __init__(
        self,
        *,
        timeout: float,
        connect_timeout: float = 2.0,
        max_idle: int = 64,
        max_response_bytes: int = 32 * 1024 * 1024,
        guard: AddressGuard | None = None,
    ) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.max_response_bytes = max_response_bytes
        self.guard = guard if guard is not None else AddressGuard(allow_private=True)
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
        except NodeAnswerTooLarge as exc:
            raise NodeCallError(
                f"node {node.url}: {exc}", retryable=True, code="node_answer_too_large"
            ) from None
        except UnsafeAddress as exc:
            raise NodeCallError(
                f"node {node.url}: {exc}", retryable=True, code="node_address_refused"
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
        addresses = await self._addresses(host, port)
        async with asyncio.timeout(self.connect_timeout):
            for i, address in enumerate(addresses):
                try:
                    _, conn = await self.loop.create_connection(
                        lambda: _NodeConnection(self, key),
                        address,
                        port,
                        ssl=True if tls else None,
                        server_hostname=host if tls else None,
                    )
                    break
                except OSError:
                    if i == len(addresses) - 1:
                        raise
        return await self._roundtrip(conn, request, deadline)

    async def _addresses(self, host: str, port: int) -> list[str]:
        """Where to connect for ``host``: the guard's checked addresses (resolved in a
        thread; UnsafeAddress if refused), or ``[host]`` when private addresses are allowed."""
        guard = self.guard
        if guard.allow_private:
            return [host]
        return await self.loop.run_in_executor(None, guard.resolve, host, port)

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
            code = str(body.get("code") or code)[:64]
            detail = str(body.get("detail") or body.get("error") or detail)[:500]
    except orjson.JSONDecodeError:
        pass
    if status in CLIENT_ERRORS:
        return NodeCallError(detail, retryable=False, code=code, status=status, node_status=status)
    return NodeCallError(
        f"node {node.url}: {detail}", retryable=True, code=code, status=503, node_status=status
    )
