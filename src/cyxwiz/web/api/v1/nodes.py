"""/api/v1/nodes: the operator trust tier, node records for operators and admins, and the
calls nodes make themselves.

Running nodes is a trust tier: a user applies (``POST /nodes/operator``), an admin approves,
rejects or later revokes (``/nodes/operators/...``). Approved operators create nodes and get
a node token once. A node agent then authenticates with ``Authorization: Bearer cxw_nt_...``
to register, heartbeat, read the manifests (with data keys) of versions assigned to it and
download their encrypted blobs — each of those refused (403 ``operator_not_approved``) as
soon as its operator is no longer approved.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response, status

from cyxwiz.accounts.service import get_user_by_username
from cyxwiz.errors import NotFound
from cyxwiz.inference import service as nodes
from cyxwiz.inference.interfaces import InvalidNodeToken
from cyxwiz.inference.models import Node
from cyxwiz.inference.schemas import (
    AssignmentOut,
    HeartbeatIn,
    HeartbeatOut,
    ManifestOut,
    NodeCreate,
    NodeCreated,
    NodeOut,
    NodeStatus,
    OperatorApply,
    OperatorDecisionIn,
    OperatorOut,
    OperatorStatus,
    RegisterIn,
    RegisterOut,
)
from cyxwiz.netguard import AddressGuard
from cyxwiz.storage.crypto import validate_address
from cyxwiz.web.deps import (
    AdminUser,
    AppContext,
    BlobStoreDep,
    CtxDep,
    CurrentUser,
    ReaderDep,
    SessionDep,
)
from cyxwiz.web.files import BlobStreamResponse

router = APIRouter(tags=["nodes"])
NO_STORE = {"Cache-Control": "no-store"}


def current_node(request: Request, session: SessionDep) -> Node:
    """The node whose token is in ``Authorization: Bearer cxw_nt_...``; 401 otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if not header or scheme.lower() != "bearer" or not value.strip():
        raise InvalidNodeToken(
            "send 'Authorization: Bearer <node token>'",
            code="not_authenticated",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        return nodes.authenticate_node(session, raw_token=value.strip())
    except InvalidNodeToken as exc:
        exc.headers.setdefault("WWW-Authenticate", 'Bearer error="invalid_token"')
        raise


NodeDep = Annotated[Node, Depends(current_node)]


def _guard(ctx: AppContext) -> AddressGuard:
    """The gateway's address guard (the one it checks again at connect time)."""
    if ctx.gateway is not None:
        return ctx.gateway.guard
    return nodes.address_guard(ctx.settings)


# ---------------------------------------------------------------- called by node agents


@router.post("/nodes/register", response_model=RegisterOut)
def register_node(body: RegisterIn, node: NodeDep, session: SessionDep, ctx: CtxDep) -> RegisterOut:
    """(Node token) Announce where the node listens; returns the gateway secret the node must
    require on every call, and how often to heartbeat."""
    guard = _guard(ctx)
    secret = nodes.register(
        session,
        node=node,
        url=body.url,
        capacity=body.capacity,
        agent_version=body.agent_version,
        now=ctx.clock.now(),
        allow_private_urls=guard.allow_private,
        guard=guard,
    )
    return RegisterOut(
        node_id=node.id,
        status=node.status,
        gateway_secret=secret,
        heartbeat_seconds=ctx.settings.inference_node_heartbeat_seconds,
    )


@router.post("/nodes/heartbeat", response_model=HeartbeatOut)
def node_heartbeat(
    body: HeartbeatIn, node: NodeDep, session: SessionDep, ctx: CtxDep
) -> HeartbeatOut:
    """(Node token) Outstanding requests and warm versions; keeps the node in the routing
    table. 409 `node_not_registered` means: register (again)."""
    nodes.heartbeat(session, node=node, load=body.load, warm=body.warm, now=ctx.clock.now())
    return HeartbeatOut(
        status=node.status, heartbeat_seconds=ctx.settings.inference_node_heartbeat_seconds
    )


@router.get("/nodes/assignments/{version_id}", response_model=ManifestOut)
def node_manifest(
    version_id: uuid.UUID, node: NodeDep, session: SessionDep, ctx: CtxDep, response: Response
) -> ManifestOut:
    """(Node token) The files of an assigned version with their data keys (base64).
    403 `not_assigned` for any version not assigned to this node."""
    manifest = nodes.node_manifest(session, node=node, version_id=version_id, blobs=ctx.blobs)
    response.headers.update(NO_STORE)
    return ManifestOut.of(manifest)


@router.get(
    "/nodes/blobs/{address}",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def node_blob(address: str, node: NodeDep, session: SessionDep, blobs: BlobStoreDep) -> Response:
    """(Node token) The ENCRYPTED stored bytes of a blob of an assigned version (decrypt with
    the manifest's data key). 403 `not_assigned` otherwise."""
    validate_address(address)
    nodes.check_blob_access(session, node=node, address=address)
    size = blobs.stored_size(address)
    return BlobStreamResponse(
        blobs.read_encrypted(address),
        in_loop=blobs.reads_are_local,
        status_code=200,
        headers={"Content-Length": str(size), **NO_STORE},
        media_type="application/octet-stream",
    )


# ---------------------------------------------------------------- the operator trust tier


@router.get("/nodes/operator", response_model=OperatorOut)
def my_operator_application(session: SessionDep, user: ReaderDep) -> OperatorOut:
    """Your node operator application and its state (404 if you never applied)."""
    row = nodes.operator_record(session, user_id=user.id)
    if row is None:
        raise NotFound("you have not applied to run nodes", code="operator_application_not_found")
    return OperatorOut.of(row)


@router.post("/nodes/operator", response_model=OperatorOut)
def apply_as_operator(
    body: OperatorApply, session: SessionDep, user: CurrentUser, ctx: CtxDep
) -> OperatorOut:
    """Apply to run inference nodes (or update a pending application; apply again after a
    rejection or revocation). An admin decides; 409 ``already_operator`` if approved."""
    row = nodes.apply_as_operator(session, user=user, statement=body.statement, now=ctx.clock.now())
    return OperatorOut.of(row)


@router.get("/nodes/operators", response_model=list[OperatorOut])
def list_operators(
    session: SessionDep,
    user: ReaderDep,
    status_filter: Annotated[OperatorStatus | None, Query(alias="status")] = None,
) -> list[OperatorOut]:
    """(Admin) Operator applications and standings; ``?status=applied`` for pending ones."""
    rows = nodes.list_operators(session, actor=user, status=status_filter)
    return [OperatorOut.of(r) for r in rows]


def _decide(
    username: str,
    decision: str,
    body: OperatorDecisionIn | None,
    session: SessionDep,
    admin: AdminUser,
    ctx: AppContext,
    tasks: BackgroundTasks,
) -> OperatorOut:
    user = get_user_by_username(session, username)  # 404 user_not_found
    row = nodes.decide_operator(
        session,
        user=user,
        decision=decision,
        actor=admin,
        now=ctx.clock.now(),
        reason=body.reason if body is not None else "",
    )
    if decision == "revoke" and ctx.gateway is not None:
        ctx.gateway.forget_operator(user.id)  # out of this replica's routing now ...
        tasks.add_task(ctx.gateway.forget_operator, user.id)  # ... and after the commit
    return OperatorOut.of(row)


@router.post("/nodes/operators/{username}/approve", response_model=OperatorOut)
def approve_operator(
    username: str,
    session: SessionDep,
    admin: AdminUser,
    ctx: CtxDep,
    tasks: BackgroundTasks,
    body: OperatorDecisionIn | None = None,
) -> OperatorOut:
    """(Admin) Let the user run nodes (with or without an application; idempotent)."""
    return _decide(username, "approve", body, session, admin, ctx, tasks)


@router.post("/nodes/operators/{username}/reject", response_model=OperatorOut)
def reject_operator(
    username: str,
    session: SessionDep,
    admin: AdminUser,
    ctx: CtxDep,
    tasks: BackgroundTasks,
    body: OperatorDecisionIn | None = None,
) -> OperatorOut:
    """(Admin) Turn down a pending application (409 ``no_pending_application`` otherwise)."""
    return _decide(username, "reject", body, session, admin, ctx, tasks)


@router.post("/nodes/operators/{username}/revoke", response_model=OperatorOut)
def revoke_operator(
    username: str,
    session: SessionDep,
    admin: AdminUser,
    ctx: CtxDep,
    tasks: BackgroundTasks,
    body: OperatorDecisionIn | None = None,
) -> OperatorOut:
    """(Admin) Withdraw an approval, at once: the operator's nodes leave routing, lose their
    registration and assignments, and their manifest and blob calls are refused."""
    return _decide(username, "revoke", body, session, admin, ctx, tasks)


# ---------------------------------------------------------------- operators and admins


@router.post("/nodes", status_code=status.HTTP_201_CREATED, response_model=NodeCreated)
def create_node(body: NodeCreate, session: SessionDep, user: CurrentUser) -> NodeCreated:
    """Create a node you operate (approved node operators only: 403
    ``operator_not_approved`` otherwise); the response holds its token, shown only once."""
    token, node = nodes.create_node(session, operator=user, name=body.name)
    return NodeCreated(node=NodeOut.of(node), token=token)


@router.get("/nodes", response_model=list[NodeOut])
def list_nodes(
    session: SessionDep,
    user: ReaderDep,
    ctx: CtxDep,
    status_filter: Annotated[NodeStatus | None, Query(alias="status")] = None,
) -> list[NodeOut]:
    """Admins: every node. Others: the nodes they operate. A node whose heartbeat is older
    than ``inference_node_stale_seconds`` shows as offline (reading changes nothing)."""
    now, stale = ctx.clock.now(), ctx.settings.inference_node_stale_seconds
    shown = [
        NodeOut.of(n, now=now, stale_after=stale) for n in nodes.list_nodes(session, viewer=user)
    ]
    return [n for n in shown if status_filter is None or n.status == status_filter]


@router.get("/nodes/{node_id}", response_model=NodeOut)
def get_node(node_id: uuid.UUID, session: SessionDep, user: ReaderDep, ctx: CtxDep) -> NodeOut:
    """A node you operate (admins: any node); stale shows as offline, as in the list."""
    return NodeOut.of(
        nodes.get_node(session, node_id=node_id, viewer=user),
        now=ctx.clock.now(),
        stale_after=ctx.settings.inference_node_stale_seconds,
    )


@router.post("/nodes/{node_id}/drain", response_model=NodeOut)
def drain_node(node_id: uuid.UUID, session: SessionDep, user: CurrentUser, ctx: CtxDep) -> NodeOut:
    """Stop routing new requests to the node (in-flight ones finish); sticky until resumed."""
    node = nodes.get_node(session, node_id=node_id, viewer=user)
    return NodeOut.of(nodes.drain(session, node=node, actor=user, now=ctx.clock.now()))


@router.post("/nodes/{node_id}/resume", response_model=NodeOut)
def resume_node(node_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> NodeOut:
    """Undo a drain."""
    node = nodes.get_node(session, node_id=node_id, viewer=user)
    return NodeOut.of(nodes.resume(session, node=node, actor=user))


@router.post("/nodes/{node_id}/token", response_model=NodeCreated)
def rotate_node_token(node_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> NodeCreated:
    """Replace a leaked node token: the old one stops working at once; the node must register
    again with the new one (shown only this once)."""
    node = nodes.get_node(session, node_id=node_id, viewer=user)
    token = nodes.rotate_token(session, node=node, actor=user)
    return NodeCreated(node=NodeOut.of(node), token=token)


@router.delete("/nodes/{node_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_node(
    node_id: uuid.UUID, session: SessionDep, user: CurrentUser, ctx: CtxDep
) -> Response:
    """Retire the node: its token stops working at once and it leaves the routing table."""
    node = nodes.get_node(session, node_id=node_id, viewer=user)
    nodes.delete_node(session, node=node, actor=user, now=ctx.clock.now())
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/nodes/{node_id}/assignments", response_model=list[AssignmentOut])
def list_assignments(
    node_id: uuid.UUID, session: SessionDep, user: ReaderDep
) -> list[AssignmentOut]:
    """The versions the node may serve (its operator or an admin)."""
    node = nodes.get_node(session, node_id=node_id, viewer=user)
    return [AssignmentOut.of(a) for a in nodes.node_assignments(session, node=node)]


@router.put("/nodes/{node_id}/assignments/{version_id}", response_model=AssignmentOut)
def assign_version(
    node_id: uuid.UUID, version_id: uuid.UUID, session: SessionDep, admin: AdminUser
) -> AssignmentOut:
    """(Admin) Let the node fetch a published version's files and keys (idempotent). The
    gateway assigns on its own before a cold start."""
    node = nodes.get_node(session, node_id=node_id, viewer=admin)
    version = nodes.get_published_version(session, version_id=version_id)
    return AssignmentOut.of(nodes.assign(session, version=version, node=node, actor=admin))


@router.delete("/nodes/{node_id}/assignments/{version_id}", status_code=status.HTTP_204_NO_CONTENT)
def unassign_version(
    node_id: uuid.UUID, version_id: uuid.UUID, session: SessionDep, admin: AdminUser
) -> Response:
    """(Admin) Withdraw the node's right to fetch the version (what it already loaded stays
    in its memory until evicted or restarted)."""
    node = nodes.get_node(session, node_id=node_id, viewer=admin)
    nodes.unassign(session, version_id=version_id, node=node, actor=admin)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
