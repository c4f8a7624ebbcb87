"""Request and response shapes of the node registry API (/api/v1/nodes...)."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from cyxwiz.inference.interfaces import NodeManifest
from cyxwiz.inference.models import Node, NodeOperator
from cyxwiz.inference.models import NodeAssignment as NodeAssignmentRow

NodeStatus = Literal["pending", "online", "draining", "offline"]
OperatorStatus = Literal["applied", "approved", "rejected", "revoked"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeCreate(Strict):
    name: str = Field(min_length=1, max_length=64, examples=["gpu-box-1"])


class NodeOut(BaseModel):
    id: uuid.UUID
    name: str
    operator: str
    status: NodeStatus = Field(
        description="online/draining, or offline once its heartbeat is older than "
        "inference_node_stale_seconds (computed when read; the scheduler records it)"
    )
    drained: bool = Field(description="a drain was requested (no new work until resumed)")
    url: str | None
    capacity: int = Field(
        description="as reported by the node at registration: display only, routing ignores it"
    )
    load: int = Field(
        description="outstanding requests the node reported at its last heartbeat: display "
        "only, routing uses the gateway's own counts"
    )
    warm: list[str] = Field(
        description="version ids the node reported loaded at its last heartbeat: display only"
    )
    agent_version: str
    token_prefix: str
    created_at: datetime
    registered_at: datetime | None
    last_heartbeat_at: datetime | None

    @classmethod
    def of(
        cls, node: Node, *, now: datetime | None = None, stale_after: float | None = None
    ) -> NodeOut:
        """``node`` as shown; with ``now`` and ``stale_after``, an online or draining node
        whose heartbeat is older than ``stale_after`` seconds shows as offline."""
        status = node.status
        if now is not None and stale_after is not None and status in ("online", "draining"):
            last = node.last_heartbeat_at
            if last is None or now - last > timedelta(seconds=stale_after):
                status = "offline"
        return cls(
            id=node.id,
            name=node.name,
            operator=node.operator.username,
            status=status,
            drained=node.drained_at is not None,
            url=node.url,
            capacity=node.capacity,
            load=node.load,
            warm=list(node.warm_version_ids),
            agent_version=node.agent_version,
            token_prefix=node.token_prefix,
            created_at=node.created_at,
            registered_at=node.registered_at,
            last_heartbeat_at=node.last_heartbeat_at,
        )


class NodeCreated(BaseModel):
    node: NodeOut
    token: str = Field(description="the node token (cxw_nt_...): shown once, store it now")


class OperatorApply(Strict):
    statement: str = Field(
        min_length=1,
        max_length=2000,
        description="who you are, what hardware you run and where (read by an admin)",
    )


class OperatorDecisionIn(Strict):
    reason: str = Field(default="", max_length=500, description="shown to the applicant")


class OperatorOut(BaseModel):
    username: str
    status: OperatorStatus = Field(
        description="applied (waiting for an admin), approved (may run nodes), rejected, revoked"
    )
    statement: str
    applied_at: datetime | None
    decided_by: str | None = Field(description="the admin; null for the platform (CLI)")
    decided_at: datetime | None
    reason: str

    @classmethod
    def of(cls, row: NodeOperator) -> OperatorOut:
        return cls(
            username=row.user.username,
            status=row.status,
            statement=row.statement,
            applied_at=row.applied_at,
            decided_by=row.decided_by.username if row.decided_by is not None else None,
            decided_at=row.decided_at,
            reason=row.reason,
        )


class RegisterIn(Strict):
    url: str = Field(
        min_length=8,
        max_length=255,
        description="where the gateway reaches this node",
        examples=["http://10.0.0.5:8801"],
    )
    capacity: StrictInt = Field(
        ge=1,
        le=10_000,
        description="requests the node says it runs at once (shown to operators; routing "
        "ignores it)",
    )
    agent_version: str = Field(default="", max_length=64)


class RegisterOut(BaseModel):
    node_id: uuid.UUID
    status: NodeStatus
    gateway_secret: str = Field(
        description="the gateway sends 'Authorization: Bearer <this>' on every call to the node"
    )
    heartbeat_seconds: float


class HeartbeatIn(Strict):
    load: StrictInt = Field(ge=0, le=1_000_000, description="outstanding requests right now")
    warm: list[uuid.UUID] = Field(default_factory=list, max_length=1000)


class HeartbeatOut(BaseModel):
    status: NodeStatus
    heartbeat_seconds: float


class ManifestFileOut(BaseModel):
    path: str
    size: int = Field(description="plaintext bytes")
    sha256: str = Field(description="sha256 of the plaintext = the blob's address")
    address: str
    stored_size: int = Field(description="encrypted bytes served by /nodes/blobs/{address}")
    data_key: str = Field(description="base64 AES-256 data key; keep it in memory only")


class ManifestOut(BaseModel):
    version_id: uuid.UUID
    model: str
    version: str
    entrypoint: str | None
    files: list[ManifestFileOut]

    @classmethod
    def of(cls, m: NodeManifest) -> ManifestOut:
        return cls(
            version_id=m.version_id,
            model=m.model,
            version=m.version,
            entrypoint=m.entrypoint,
            files=[
                ManifestFileOut(
                    path=f.path,
                    size=f.size,
                    sha256=f.sha256,
                    address=f.sha256,
                    stored_size=f.stored_size,
                    data_key=base64.b64encode(f.data_key).decode(),
                )
                for f in m.files
            ],
        )


class AssignmentOut(BaseModel):
    node_id: uuid.UUID
    version_id: uuid.UUID
    created_at: datetime

    @classmethod
    def of(cls, row: NodeAssignmentRow) -> AssignmentOut:
        return cls(node_id=row.node_id, version_id=row.version_id, created_at=row.created_at)
