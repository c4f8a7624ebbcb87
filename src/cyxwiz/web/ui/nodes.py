"""The node status page of the web UI (``/nodes``): the node operator application (apply; an
admin approves, rejects or revokes), the inference nodes an operator runs (admins: every node)
with their status, the platform's own health check and latency, heartbeat age, what the node
reports (load, warm models), assigned models, and drain/resume buttons.

Like the rest of the UI it parses, calls the node service (``cyxwiz.inference.service``, the same
operations as ``/api/v1/nodes``) and renders; who may see or change a node is the service's
rule (its operator or an admin; anyone else gets the 404 page). The page only reads: a node that
missed its heartbeats shows as offline here even before the scheduler's eviction marks it so.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import Connection, exists, select
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.accounts.service import get_user_by_username
from cyxwiz.catalog.models import ModelVersion
from cyxwiz.db import Database
from cyxwiz.errors import NotFound, PermissionDenied
from cyxwiz.inference import service as nodes
from cyxwiz.inference.models import Node, NodeAssignment, NodeOperator
from cyxwiz.web.deps import AppContext, CtxDep, SessionDep
from cyxwiz.web.ui.forms import CsrfForm, UiActor, UiViewer, field, login_redirect, see_other
from cyxwiz.web.ui.render import page, set_flash, templates, viewer_of

log = logging.getLogger("cyxwiz.web.ui.nodes")
router = APIRouter()

STATUS_NOTES = {
    "online": "Takes new requests.",
    "draining": "Finishes its in-flight requests; takes no new ones until resumed.",
    "offline": "No heartbeat lately: out of routing; it is marked evicted soon.",
    "evicted": "Missed its heartbeats and was taken out of routing; it comes back when it "
    "heartbeats again.",
    "pending": "Not registered yet: start the node agent (cyxwiz node) with this node's token.",
}


@dataclass(frozen=True)
class NodeRow:
    """One node as the page shows it (plain values)."""

    id: uuid.UUID
    name: str
    operator: str
    url: str | None
    status: str  # online | draining | offline | evicted | pending
    note: str
    drain_requested: bool
    heartbeat_at: datetime | None
    heartbeat_age: str  # "3 s ago", "never"
    load: int  # as the node reports it (display only)
    capacity: int  # as the node reports it (display only)
    inflight: int  # this API replica's outstanding requests on the node
    health: str  # this gateway's own check: passing | failing | unchecked
    latency_ms: float | None  # this gateway's recent call time to the node (EWMA)
    warm: list[str]  # "owner/name@version"
    assigned: list[str]
    agent_version: str


def age(seconds: float | None) -> str:
    """A heartbeat's age for people: 'just now', '4.2 s ago', '17 s ago', '3 min ago'."""
    if seconds is None:
        return "never"
    if seconds < 1:
        return "just now"
    if seconds < 10:  # next to a staleness limit of a few seconds, tenths matter
        return f"{int(seconds * 10) / 10:.1f} s ago"
    s = int(seconds)
    if s < 120:
        return f"{s} s ago"
    if s < 2 * 3600:
        return f"{s // 60} min ago"
    if s < 2 * 86400:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"


def display_status(node: Node, *, now: datetime, stale_after: float) -> str:
    """online / draining / offline (missed heartbeats, not evicted yet) / evicted / pending."""
    if node.status == "pending" or node.gateway_secret is None:
        return "pending"
    if node.status == "offline":
        return "evicted"
    if nodes.is_stale(node, now=now, timeout=stale_after):
        return "offline"
    return "draining" if node.status == "draining" else "online"


def _labels(session: Session, version_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    """``owner/name@version`` of each version id (unknown ids are left out)."""
    if not version_ids:
        return {}
    versions = session.scalars(select(ModelVersion).where(ModelVersion.id.in_(version_ids)))
    return {v.id: f"{v.model.full_name}@{v.version}" for v in versions}


def node_rows(session: Session, ctx: AppContext, *, viewer: User) -> list[NodeRow]:
    """The nodes ``viewer`` may see (admins: all, operators: their own), as page rows."""
    found = nodes.list_nodes(session, viewer=viewer)
    if not found:
        return []
    assigned: dict[uuid.UUID, list[uuid.UUID]] = {n.id: [] for n in found}
    for node_id, version_id in session.execute(
        select(NodeAssignment.node_id, NodeAssignment.version_id)
        .where(NodeAssignment.node_id.in_(list(assigned)))
        .order_by(NodeAssignment.created_at)
    ):
        assigned[node_id].append(version_id)
    warm: dict[uuid.UUID, list[uuid.UUID]] = {}
    for n in found:
        ids = []
        for raw in n.warm_version_ids or []:
            try:
                ids.append(uuid.UUID(raw))
            except ValueError:
                continue
        warm[n.id] = ids
    labels = _labels(
        session,
        {v for vs in assigned.values() for v in vs} | {v for vs in warm.values() for v in vs},
    )
    now = ctx.clock.now()
    stale_after = ctx.settings.inference_node_stale_seconds
    gateway = ctx.gateway
    inflight = gateway.inflight if gateway is not None else {}
    checks = gateway.health if gateway is not None else {}
    latency = gateway.latency if gateway is not None else {}
    rows = []
    for n in found:
        check = checks.get(n.id)
        passed = None if check is None or check[0] != (n.url, n.gateway_secret or "") else check[1]
        seconds = latency.get(n.id)
        status = display_status(n, now=now, stale_after=stale_after)
        last = n.last_heartbeat_at
        rows.append(
            NodeRow(
                id=n.id,
                name=n.name,
                operator=n.operator.username,
                url=n.url,
                status=status,
                note=STATUS_NOTES[status],
                drain_requested=n.drained_at is not None,
                heartbeat_at=last,
                heartbeat_age=age((now - last).total_seconds() if last is not None else None),
                load=n.load,
                capacity=n.capacity,
                inflight=max(0, inflight.get(n.id, 0)),
                health="unchecked" if passed is None else ("passing" if passed else "failing"),
                latency_ms=round(seconds * 1000, 1) if seconds is not None else None,
                warm=[labels.get(v, str(v)) for v in warm[n.id]],
                assigned=[labels.get(v, str(v)) for v in assigned[n.id]],
                agent_version=n.agent_version,
            )
        )
    return rows


# ---------------------------------------------------------------- the nav link


_RUNS_NODES_SQL = (
    "SELECT EXISTS (SELECT 1 FROM inference_nodes n JOIN users u ON u.id = n.operator_id "
    "WHERE u.username = ? AND n.deleted_at IS NULL) OR EXISTS (SELECT 1 FROM "
    "inference_node_operators o JOIN users u ON u.id = o.user_id WHERE u.username = ?)"
)


def runs_nodes(db: Database, username: str) -> bool:
    """Whether ``username`` operates a live node or has a node operator record (two indexed
    EXISTS).

    Called while a page renders, i.e. inside the request's own transaction. On a SQLite file
    that transaction holds the write lock (``BEGIN IMMEDIATE``, see ``cyxwiz.db``) until the
    response is sent, so a second session would wait for it forever: read in autocommit
    instead (WAL readers never wait). PostgreSQL, and the tests' single shared connection,
    use an ordinary session.
    """
    stmt = select(
        exists().where(
            Node.operator_id == User.id, User.username == username, Node.deleted_at.is_(None)
        )
        | exists().where(NodeOperator.user_id == User.id, User.username == username)
    )
    if db.dialect != "sqlite" or isinstance(db.sessionmaker.kw.get("bind"), Connection):
        with db.session() as session:
            return bool(session.scalar(stmt))
    raw = db.engine.raw_connection()  # isolation_level None: no implicit BEGIN
    try:
        cursor = raw.cursor()
        try:
            cursor.execute(_RUNS_NODES_SQL, (username, username))
            row = cursor.fetchone()
        finally:
            cursor.close()
    finally:
        raw.close()
    return bool(row and row[0])


def operates_nodes(request: Request) -> bool:
    """Whether the signed-in viewer of this page is an admin or runs a node (the nav link);
    remembered for the request; False when it cannot be told."""
    cached = getattr(request.state, "operates_nodes", None)
    if cached is not None:
        return bool(cached)
    viewer = viewer_of(request)
    answer = False
    if viewer is not None:
        answer = viewer.is_admin
        ctx = getattr(request.app.state, "ctx", None)
        if not answer and ctx is not None:
            try:
                answer = runs_nodes(ctx.db, viewer.username)
            except Exception:  # a nav link never breaks a page
                log.debug("could not tell whether %s runs nodes", viewer.username, exc_info=True)
    request.state.operates_nodes = answer
    return answer


templates.env.globals["operates_nodes"] = operates_nodes


# ---------------------------------------------------------------- routes


def _node(session: Session, node_id: str, actor: User) -> Node:
    try:
        parsed = uuid.UUID(node_id)
    except ValueError:
        raise NotFound(f"no node {node_id}", code="node_not_found") from None
    return nodes.get_node(session, node_id=parsed, viewer=actor)


@router.get("/nodes")
def nodes_page(request: Request, session: SessionDep, viewer: UiViewer, ctx: CtxDep) -> Response:
    """Your inference nodes (admins: every node) with their status and drain/resume buttons."""
    if viewer is None:
        return login_redirect(request)
    rows = node_rows(session, ctx, viewer=viewer)
    context: dict[str, Any] = {
        "rows": rows,
        "operator": nodes.operator_record(session, user_id=viewer.id),
        "applications": (
            nodes.list_operators(session, actor=viewer, status="applied") if viewer.is_admin else []
        ),
        "approved": (
            nodes.list_operators(session, actor=viewer, status="approved")
            if viewer.is_admin
            else []
        ),
        "all_nodes": viewer.is_admin,
        "counts": {s: sum(1 for r in rows if r.status == s) for s in STATUS_NOTES},
        "stale_after": ctx.settings.inference_node_stale_seconds,
        "marketplace_url": ctx.settings.base_url,
    }
    return page(request, "nodes/index.html", context)


@router.post("/nodes/{node_id}/drain")
def drain_node(
    request: Request,
    node_id: str,
    form: CsrfForm,
    session: SessionDep,
    actor: UiActor,
    ctx: CtxDep,
) -> Response:
    """Stop routing new requests to the node (in-flight ones finish); sticky until resumed."""
    if actor is None:
        return login_redirect(request, "/nodes")
    node = nodes.drain(
        session, node=_node(session, node_id, actor), actor=actor, now=ctx.clock.now()
    )
    response = see_other(f"/nodes#node-{node.id}")
    set_flash(response, f"Node {node.name} is draining: it takes no new requests until resumed.")
    return response


@router.post("/nodes/{node_id}/resume")
def resume_node(
    request: Request, node_id: str, form: CsrfForm, session: SessionDep, actor: UiActor
) -> Response:
    """Undo a drain: the node takes new requests again while it is online."""
    if actor is None:
        return login_redirect(request, "/nodes")
    node = nodes.resume(session, node=_node(session, node_id, actor), actor=actor)
    response = see_other(f"/nodes#node-{node.id}")
    set_flash(response, f"Node {node.name} resumed: it takes new requests again.")
    return response


# ---------------------------------------------------------------- the operator trust tier


@router.post("/nodes/operator/apply")
def apply_as_operator(
    request: Request, form: CsrfForm, session: SessionDep, actor: UiActor, ctx: CtxDep
) -> Response:
    """Apply to run inference nodes (an admin decides)."""
    if actor is None:
        return login_redirect(request, "/nodes")
    nodes.apply_as_operator(
        session, user=actor, statement=field(form, "statement"), now=ctx.clock.now()
    )
    response = see_other("/nodes#operator")
    set_flash(response, "Application sent: an admin will review it.")
    return response


DECISION_FLASH = {
    "approve": "{name} is now an approved node operator.",
    "reject": "{name}'s application was rejected.",
    "revoke": "{name} is no longer a node operator: their nodes left routing at once.",
}


@router.post("/nodes/operators/{username}/{decision}")
def decide_operator(
    request: Request,
    username: str,
    decision: str,
    form: CsrfForm,
    session: SessionDep,
    actor: UiActor,
    ctx: CtxDep,
) -> Response:
    """(Admin) Approve, reject or revoke a node operator."""
    if actor is None:
        return login_redirect(request, "/nodes")
    if not actor.is_admin:
        raise PermissionDenied("only admins decide on node operators", code="admin_required")
    if decision not in DECISION_FLASH:
        raise NotFound(f"no action {decision!r}", code="not_found")
    user = get_user_by_username(session, username)
    nodes.decide_operator(
        session,
        user=user,
        decision=decision,
        actor=actor,
        now=ctx.clock.now(),
        reason=field(form, "reason"),
    )
    if decision == "revoke" and ctx.gateway is not None:
        ctx.gateway.forget_operator(user.id)
    response = see_other("/nodes#operators")
    set_flash(response, DECISION_FLASH[decision].format(name=user.username))
    return response
