"""What the inference domain hands to its callers (the gateway, the web layer, nodes).

Plain frozen dataclasses, detached from any database session, so the gateway may cache them
between requests; and the domain's errors with their stable codes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cyxwiz.errors import Conflict, DomainError, NotAuthenticated, PermissionDenied


class NodeEndpoint(Protocol):
    """Where a node listens and the secret the gateway presents to it."""

    @property
    def url(self) -> str: ...

    @property
    def gateway_secret(self) -> str: ...


@dataclass(frozen=True)
class RoutableNode:
    """A node the gateway may send work to right now (online, fresh heartbeat, approved
    operator). What the node reports about itself (load, capacity, warm models) is
    deliberately absent: routing uses the gateway's own measurements only."""

    id: uuid.UUID
    operator_id: uuid.UUID
    name: str
    url: str
    gateway_secret: str
    assigned: frozenset[uuid.UUID] = field(default_factory=frozenset)
    last_heartbeat_at: datetime | None = None


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int  # plaintext bytes
    sha256: str  # = the blob's content address
    stored_size: int  # encrypted bytes the node downloads
    data_key: bytes  # the blob's unwrapped AES-256 data key: never log or persist it


@dataclass(frozen=True)
class NodeManifest:
    """What a node needs to serve one version: its files and their data keys."""

    version_id: uuid.UUID
    model: str  # owner/name
    version: str  # the version label
    entrypoint: str | None  # the ONNX file to load (model.onnx, or the only .onnx file)
    files: tuple[ManifestFile, ...]


class InvalidNodeToken(NotAuthenticated):
    code = "invalid_node_token"


class OperatorNotApproved(PermissionDenied):
    """The user (or the node's operator) is not an approved node operator right now."""

    code = "operator_not_approved"


class NotAssigned(PermissionDenied):
    """The node asked for a version (or blob) the platform has not assigned to it."""

    code = "not_assigned"


class NodeNotRegistered(Conflict):
    code = "node_not_registered"


class NodeUnavailable(Conflict):
    """The node is draining, offline, retired or not registered: no new work for it."""

    code = "node_unavailable"


class NodeCallError(DomainError):
    """A call from the gateway to a node failed.

    ``retryable`` is True when another node may well succeed (connection refused, timeout,
    5xx, the node not knowing its secret yet); False for the caller's own fault (bad input).
    """

    code = "model_unavailable"
    status = 503
    title = "Model unavailable"

    def __init__(
        self,
        detail: str,
        *,
        retryable: bool,
        code: str | None = None,
        status: int | None = None,
        node_status: int | None = None,
    ) -> None:
        super().__init__(detail, code=code, status=status)
        self.retryable = retryable
        self.node_status = node_status  # the node's HTTP status, None if it never answered


# ---------------------------------------------------------------- metering (gateway <-> meter)


@dataclass(frozen=True)
class Ticket:
    """Permission to run one inference, granted by the meter before any work is done.

    ``kind`` is ``paid`` (covered by a reservation on the caller's balance), ``demo`` (one of
    the caller's free demo inferences) or ``owner`` (the model's owner: free, still recorded). A ticket is settled exactly once: ``settle`` after a
    successful answer (billed), ``cancel`` after a failure (never billed).
    """

    kind: str  # paid | demo | owner
    user_id: uuid.UUID
    model_id: uuid.UUID
    version_id: uuid.UUID
    api_key_id: uuid.UUID | None
    units: int  # requests (per_1k_requests) or tokens (per_1k_tokens) reserved for this call
    unit: str  # request | token
    currency: str | None  # None for demo
    token: str  # the meter's own handle for the reserved capacity


class Meter(Protocol):
    """What the gateway needs from metering; implemented in ``cyxwiz.inference.metering``."""

    async def authorize(
        self,
        *,
        user_id: uuid.UUID,
        model_id: uuid.UUID,
        version_id: uuid.UUID,
        api_key_id: uuid.UUID | None,
        units: int,
        rows: int = 1,
        client_ip: str | None = None,
    ) -> Ticket:
        """A ticket for a call of ``rows`` rows (batch size) and ``units`` input tokens from
        ``client_ip``, or raise ``insufficient_funds`` (402), ``quota_exhausted`` (429, demo
        credits used up, no paid offer), ``demo_budget_exhausted`` (429, the day's demo budget
        of the caller's IP or of the model is spent) or ``not_for_sale`` (409)."""
        ...

    async def settle(
        self, ticket: Ticket, *, request_id: str, node_id: uuid.UUID | None, units: int
    ) -> None:
        """Record a successful inference (idempotent by ``request_id``); ``units`` ≤ reserved;
        ``node_id`` None for a cache hit (no compute share). Returns once the record is
        durable: the answer may leave only after this."""
        ...

    async def cancel(self, ticket: Ticket) -> None:
        """Give the ticket's capacity back: the inference failed and is never billed."""
        ...

    async def flush(self) -> None:
        """Write buffered usage events and post their charges through the ledger now."""
        ...

    async def close(self) -> None:
        """Flush and release every outstanding reservation (process shutdown)."""
        ...
