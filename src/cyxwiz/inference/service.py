"""The node registry: the operator trust tier, node records, their life cycle, assignments
and manifests.

Flushes, never commits; time comes in as ``now`` (the app's clock). Trust (docs/inference.md,
"Trust model"): only a user an admin approved as a node operator (``NodeOperator``) may create
nodes, and a node registers, is routed to, is assigned versions and gets manifests (data keys)
and blobs only while its operator is approved; revoking an operator withdraws all of it at
once. Timing comes from ``Settings`` (``inference_node_heartbeat_seconds``,
``inference_node_stale_seconds``); the defaults below are for callers without settings.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import exc as sa_exc
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.catalog.models import ModelFile, ModelVersion
from cyxwiz.config import Settings
from cyxwiz.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from cyxwiz.inference.interfaces import (
    InvalidNodeToken,
    ManifestFile,
    NodeManifest,
    NodeNotRegistered,
    NodeUnavailable,
    NotAssigned,
    OperatorNotApproved,
    RoutableNode,
)
from cyxwiz.inference.models import Node, NodeAssignment, NodeOperator
from cyxwiz.netguard import AddressGuard, UnsafeAddress, parse_networks
from cyxwiz.storage import BlobStore

HEARTBEAT_SECONDS = 5.0
MISSED_HEARTBEATS = 3
STALE_AFTER_SECONDS = HEARTBEAT_SECONDS * MISSED_HEARTBEATS
MAX_NODES_PER_OPERATOR = 50
MAX_CAPACITY = 10_000
MAX_WARM_REPORTED = 1_000
MAX_STATEMENT_CHARS = 2000
MAX_REASON_CHARS = 500
OPERATOR_DECISIONS = ("approve", "reject", "revoke")
# What migration 0007 wrote as the statement of operators who ran nodes before approval existed.
MIGRATED_OPERATOR_STATEMENT = "(ran nodes before operator approval existed)"

NODE_TOKEN_PREFIX = "cxw_nt_"  # noqa: S105 - a prefix, not a secret
GATEWAY_SECRET_PREFIX = "cxw_gs_"  # noqa: S105
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
AGENT_VERSION_RE = re.compile(r"^[\x20-\x7e]{0,64}$")


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


# ---------------------------------------------------------------- the operator trust tier


def operator_record(session: Session, *, user_id: uuid.UUID) -> NodeOperator | None:
    """``user_id``'s operator application / standing, None if they never applied."""
    return session.scalar(select(NodeOperator).where(NodeOperator.user_id == user_id))


def is_approved_operator(session: Session, *, user_id: uuid.UUID) -> bool:
    """Whether ``user_id`` is an approved node operator right now."""
    return bool(
        session.scalar(
            select(
                exists().where(NodeOperator.user_id == user_id, NodeOperator.status == "approved")
            )
        )
    )


def require_approved_operator(session: Session, *, user_id: uuid.UUID) -> None:
    """OperatorNotApproved (403 ``operator_not_approved``) unless ``user_id`` is approved."""
    if not is_approved_operator(session, user_id=user_id):
        raise OperatorNotApproved(
            "running inference nodes needs an approved node operator: apply with "
            "POST /api/v1/nodes/operator (or on /nodes) and wait for an admin"
        )


def _clean_text(value: str, *, limit: int, what: str, required: bool) -> str:
    clean = value.strip()
    if required and not clean:
        raise InvalidInput(f"{what} must not be empty", code=f"invalid_{what}")
    if len(clean) > limit:
        raise InvalidInput(f"{what} is at most {limit} characters", code=f"invalid_{what}")
    if any(ord(c) < 32 and c not in "\n\t" for c in clean):
        raise InvalidInput(f"{what} must not contain control characters", code=f"invalid_{what}")
    return clean


def apply_as_operator(
    session: Session, *, user: User, statement: str, now: datetime
) -> NodeOperator:
    """``user`` asks to run nodes (``statement``: who they are, what hardware, where).

    A pending application gets the new statement; a rejected or revoked one becomes pending
    again (an admin decides anew). Conflict ``already_operator`` when already approved.
    """
    text = _clean_text(statement, limit=MAX_STATEMENT_CHARS, what="statement", required=True)
    row = operator_record(session, user_id=user.id)
    if row is None:
        row = NodeOperator(user_id=user.id, user=user, status="applied", reason="")
        session.add(row)
    elif row.status == "approved":
        raise Conflict("you are already an approved node operator", code="already_operator")
    row.status = "applied"
    row.statement = text
    row.applied_at = now
    row.decided_by_id = None
    row.decided_at = None
    row.reason = ""
    session.flush()
    return row


def list_operators(
    session: Session, *, actor: User, status: str | None = None
) -> list[NodeOperator]:
    """(Admin) Operator applications and standings, oldest application first."""
    if not actor.is_admin:
        raise PermissionDenied("only admins decide on node operators", code="admin_required")
    query = select(NodeOperator)
    if status is not None:
        query = query.where(NodeOperator.status == status)
    return list(session.scalars(query.order_by(NodeOperator.applied_at, NodeOperator.created_at)))


def decide_operator(
    session: Session,
    *,
    user: User,
    decision: str,
    actor: User | None,
    now: datetime,
    reason: str = "",
) -> NodeOperator:
    """Approve, reject or revoke ``user`` as a node operator; returns their record.

    ``actor`` None is the platform itself (the ``cyxwiz operators`` CLI, ``serve``'s local
    node); a user must be an admin. ``approve`` works from any state (an admin may grant
    without an application) and is idempotent; ``reject`` needs a pending application;
    ``revoke`` needs an approved operator and takes effect at once: every node of the
    operator loses its registration (gateway secret) and its assignments, so it leaves
    routing and its manifest and blob calls are refused (they are anyway: they check the
    operator on every call). Approving again later lets the nodes register again.
    """
    if actor is not None and not actor.is_admin:
        raise PermissionDenied("only admins decide on node operators", code="admin_required")
    if decision not in OPERATOR_DECISIONS:
        raise InvalidInput(
            f"decision must be one of {', '.join(OPERATOR_DECISIONS)}", code="invalid_decision"
        )
    why = _clean_text(reason, limit=MAX_REASON_CHARS, what="reason", required=False)
    row = operator_record(session, user_id=user.id)
    if decision == "approve":
        if row is None:
            row = NodeOperator(user_id=user.id, user=user, statement="", reason="")
            session.add(row)
        elif row.status == "approved":
            return row
        row.status = "approved"
    elif decision == "reject":
        if row is None or row.status != "applied":
            raise Conflict(
                f"{user.username} has no pending operator application",
                code="no_pending_application",
            )
        row.status = "rejected"
    else:
        if row is None or row.status != "approved":
            raise Conflict(
                f"{user.username} is not an approved node operator", code="operator_not_approved"
            )
        row.status = "revoked"
        _withdraw_nodes(session, operator_id=user.id)
    row.decided_by_id = actor.id if actor is not None else None
    row.decided_at = now
    row.reason = why
    session.flush()
    return row


def _withdraw_nodes(session: Session, *, operator_id: uuid.UUID) -> None:
    """Every live node of ``operator_id``: no registration, no assignments (revocation)."""
    live = list(
        session.scalars(
            select(Node).where(Node.operator_id == operator_id, Node.deleted_at.is_(None))
        )
    )
    for node in live:
        node.gateway_secret = None
        node.status = "pending"
    if live:
        for row in session.scalars(
            select(NodeAssignment).where(NodeAssignment.node_id.in_([n.id for n in live]))
        ):
            session.delete(row)
    session.flush()


# ---------------------------------------------------------------- operators' side


def create_node(session: Session, *, operator: User, name: str) -> tuple[str, Node]:
    """A new pending node for ``operator``, who must be an approved node operator (403
    ``operator_not_approved``); the raw node token is returned once, never stored."""
    require_approved_operator(session, user_id=operator.id)
    clean = name.strip()
    if not NODE_NAME_RE.match(clean):
        raise InvalidInput(
            "node name must be 1-64 characters of letters, digits, '.', '_' and '-'",
            code="invalid_node_name",
        )
    mine = list(
        session.scalars(
            select(Node.name).where(Node.operator_id == operator.id, Node.deleted_at.is_(None))
        )
    )
    if clean in mine:
        raise Conflict(f"you already have a node named {clean!r}", code="node_name_taken")
    if len(mine) >= MAX_NODES_PER_OPERATOR:
        raise Conflict(
            f"an operator may run at most {MAX_NODES_PER_OPERATOR} nodes",
            code="too_many_nodes",
        )
    raw, token_hash, token_prefix = _new_token()
    node = Node(
        operator_id=operator.id,
        operator=operator,
        name=clean,
        token_hash=token_hash,
        token_prefix=token_prefix,
        status="pending",
        capacity=0,
        load=0,
        warm_version_ids=[],
    )
    session.add(node)
    session.flush()
    return raw, node


def _new_token() -> tuple[str, str, str]:
    raw = NODE_TOKEN_PREFIX + secrets.token_urlsafe(32)
    return raw, hash_token(raw), raw[: len(NODE_TOKEN_PREFIX) + 5]


def rotate_token(session: Session, *, node: Node, actor: User) -> str:
    """A new node token for ``node`` (returned once); the old one stops working at once.

    The node must register again with the new token (its gateway secret is withdrawn, so it
    leaves the routing table until then).
    """
    if not _can_manage(node, actor) or node.deleted_at is not None:
        raise NotFound(f"no node {node.id}", code="node_not_found")
    raw, node.token_hash, node.token_prefix = _new_token()
    node.gateway_secret = None
    node.status = "pending"
    session.flush()
    return raw


def _can_manage(node: Node, user: User) -> bool:
    return user.is_admin or node.operator_id == user.id


def get_node(session: Session, *, node_id: uuid.UUID, viewer: User) -> Node:
    """A live node its operator or an admin may see; NotFound for everyone else."""
    node = session.get(Node, node_id)
    if node is None or node.deleted_at is not None or not _can_manage(node, viewer):
        raise NotFound(f"no node {node_id}", code="node_not_found")
    return node


def list_nodes(session: Session, *, viewer: User, status: str | None = None) -> list[Node]:
    """Live nodes: all of them for an admin, an operator's own otherwise; by name."""
    query = select(Node).where(Node.deleted_at.is_(None))
    if not viewer.is_admin:
        query = query.where(Node.operator_id == viewer.id)
    if status is not None:
        query = query.where(Node.status == status)
    return list(session.scalars(query.order_by(Node.name, Node.created_at)))


def drain(session: Session, *, node: Node, actor: User, now: datetime) -> Node:
    """Stop routing new work to ``node`` (in-flight work finishes); sticky until resumed."""
    if not _can_manage(node, actor) or node.deleted_at is not None:
        raise NotFound(f"no node {node.id}", code="node_not_found")
    if node.drained_at is None:
        node.drained_at = now
    if node.status == "online":
        node.status = "draining"
    session.flush()
    return node


def resume(session: Session, *, node: Node, actor: User) -> Node:
    """Undo ``drain``: the node takes new work again once it is online."""
    if not _can_manage(node, actor) or node.deleted_at is not None:
        raise NotFound(f"no node {node.id}", code="node_not_found")
    node.drained_at = None
    if node.status == "draining":
        node.status = "online"
    session.flush()
    return node


def delete_node(session: Session, *, node: Node, actor: User, now: datetime) -> None:
    """Retire ``node``: its token stops working at once and its assignments are dropped.

    The row stays (usage and earnings will refer to it); it no longer appears anywhere.
    """
    if not _can_manage(node, actor) or node.deleted_at is not None:
        raise NotFound(f"no node {node.id}", code="node_not_found")
    node.deleted_at = now
    node.status = "offline"
    node.gateway_secret = None
    for row in session.scalars(select(NodeAssignment).where(NodeAssignment.node_id == node.id)):
        session.delete(row)
    session.flush()


# ---------------------------------------------------------------- the node's side


def authenticate_node(session: Session, *, raw_token: str) -> Node:
    """The live node holding ``raw_token``; InvalidNodeToken (401) otherwise."""
    if not raw_token.startswith(NODE_TOKEN_PREFIX):
        raise InvalidNodeToken("not a node token (cxw_nt_...)")
    node = session.scalar(select(Node).where(Node.token_hash == hash_token(raw_token)))
    if node is None or node.deleted_at is not None:
        raise InvalidNodeToken("node token is invalid or the node was deleted")
    if not node.operator.is_active:
        raise InvalidNodeToken("the node's operator account is disabled")
    return node


def address_guard(settings: Settings) -> AddressGuard:
    """Where the platform may connect to nodes: anywhere in development (the local node on
    127.0.0.1); in production only public addresses plus ``inference_node_allowed_networks``,
    every name resolved and each of its addresses checked (``cyxwiz.netguard``)."""
    return AddressGuard(
        allow_private=not settings.is_production,
        allowed_networks=parse_networks(settings.inference_node_allowed_networks.split(",")),
    )


def validate_node_url(url: str, *, allow_private: bool, guard: AddressGuard | None = None) -> str:
    """``url`` if the gateway may call it: http(s), a host, no credentials, query or fragment.

    With ``allow_private`` False (production) the host is checked by ``guard`` (default: the
    system resolver, public addresses only): numeric hosts in any spelling the OS accepts
    (``127.1``, ``2130706433``, ``0x7f000001``) are normalised, names are resolved and refused
    if any address is not public or the name does not resolve. The gateway checks again at
    connect time (DNS rebinding), so this is a first line, not the only one.
    """
    clean = url.strip().rstrip("/")
    try:
        parts = urlsplit(clean)
        port = parts.port
    except ValueError:
        raise InvalidInput(
            f"node url {url!r} is not a valid URL", code="invalid_node_url"
        ) from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.query
        or parts.fragment
        or len(clean) > 255
        or any(c.isspace() or ord(c) < 32 for c in clean)
    ):
        raise InvalidInput(
            "node url must be http(s)://host[:port][/path] without credentials, query or "
            "fragment, at most 255 characters",
            code="invalid_node_url",
        )
    if port == 0:
        raise InvalidInput("node url has port 0", code="invalid_node_url")
    if not allow_private:
        checker = guard if guard is not None and not guard.allow_private else None
        if checker is None:
            checker = AddressGuard(
                allow_private=False, allowed_networks=guard.allowed_networks if guard else ()
            )
        default_port = 443 if parts.scheme == "https" else 80
        try:
            checker.resolve(parts.hostname, port or default_port)
        except UnsafeAddress as exc:
            raise InvalidInput(f"node url: {exc}", code="invalid_node_url") from None
    return clean


def register(
    session: Session,
    *,
    node: Node,
    url: str,
    capacity: int,
    agent_version: str,
    now: datetime,
    allow_private_urls: bool = True,
    guard: AddressGuard | None = None,
) -> str:
    """Record where ``node`` listens and put it online; returns a fresh gateway secret.

    Every registration issues a new secret (the old one stops working): a restarted node gets
    its own. A drained node stays draining until resumed. The node's operator must be
    approved (403 ``operator_not_approved``). ``capacity`` is stored as the node reported it,
    for display only: routing never uses it.
    """
    require_approved_operator(session, user_id=node.operator_id)
    if not 1 <= capacity <= MAX_CAPACITY:
        raise InvalidInput(f"capacity must be 1-{MAX_CAPACITY}", code="invalid_capacity")
    if not AGENT_VERSION_RE.match(agent_version):
        raise InvalidInput("agent_version must be at most 64 printable ASCII characters")
    node.url = validate_node_url(url, allow_private=allow_private_urls, guard=guard)
    node.capacity = capacity
    node.agent_version = agent_version
    node.gateway_secret = GATEWAY_SECRET_PREFIX + secrets.token_urlsafe(32)
    node.registered_at = now
    node.last_heartbeat_at = now
    node.load = 0
    node.warm_version_ids = []
    node.status = "draining" if node.drained_at is not None else "online"
    session.flush()
    return node.gateway_secret


def heartbeat(
    session: Session, *, node: Node, load: int, warm: Sequence[uuid.UUID], now: datetime
) -> Node:
    """Record that ``node`` is alive, with the ``load`` and ``warm`` versions it reports
    (stored for display only: routing uses the gateway's own measurements).

    An evicted (offline) node that heartbeats again comes back (online, or draining if a
    drain was requested). A node that never registered (or lost its registration when its
    operator was revoked) gets NodeNotRegistered (409: register again); a node whose
    operator is not approved gets OperatorNotApproved (403).
    """
    if node.status == "pending" or node.gateway_secret is None:
        raise NodeNotRegistered("register the node before sending heartbeats")
    require_approved_operator(session, user_id=node.operator_id)
    if load < 0:
        raise InvalidInput("load must be >= 0")
    node.load = load
    node.warm_version_ids = [str(v) for v in dict.fromkeys(warm)][:MAX_WARM_REPORTED]
    node.last_heartbeat_at = now
    if node.status == "offline":
        node.status = "draining" if node.drained_at is not None else "online"
    session.flush()
    return node


def evict_stale(session: Session, *, now: datetime, timeout: float = STALE_AFTER_SECONDS) -> int:
    """Mark offline every online or draining node whose last heartbeat is older than
    ``timeout`` seconds; returns how many. Idempotent: run it on a schedule."""
    cutoff = now - timedelta(seconds=timeout)
    stale = session.scalars(
        select(Node).where(
            Node.status.in_(("online", "draining")),
            Node.deleted_at.is_(None),
            (Node.last_heartbeat_at.is_(None)) | (Node.last_heartbeat_at < cutoff),
        )
    ).all()
    for node in stale:
        node.status = "offline"
    session.flush()
    return len(stale)


def is_stale(node: Node, *, now: datetime, timeout: float = STALE_AFTER_SECONDS) -> bool:
    last = node.last_heartbeat_at
    return last is None or now - last > timedelta(seconds=timeout)


# ---------------------------------------------------------------- the gateway's side


def healthy_nodes(
    session: Session, *, now: datetime, timeout: float = STALE_AFTER_SECONDS
) -> list[RoutableNode]:
    """Nodes the gateway may route to now: online, registered, heartbeat fresher than
    ``timeout`` (whether or not ``evict_stale`` has run), operator active and an approved node
    operator. Detached snapshots with each node's assigned version ids (what the node itself
    reports — load, capacity, warm models — is left out: routing never believes it)."""
    cutoff = now - timedelta(seconds=timeout)
    rows = session.execute(
        select(Node)
        .join(User, User.id == Node.operator_id)
        .join(NodeOperator, NodeOperator.user_id == Node.operator_id)
        .where(
            NodeOperator.status == "approved",
            Node.status == "online",
            Node.deleted_at.is_(None),
            Node.gateway_secret.is_not(None),
            Node.url.is_not(None),
            Node.last_heartbeat_at >= cutoff,
            User.is_active.is_(True),
        )
        .order_by(Node.id)
    ).scalars()
    nodes = list(rows)
    assigned: dict[uuid.UUID, set[uuid.UUID]] = {n.id: set() for n in nodes}
    if nodes:
        for node_id, version_id in session.execute(
            select(NodeAssignment.node_id, NodeAssignment.version_id).where(
                NodeAssignment.node_id.in_(list(assigned))
            )
        ):
            assigned[node_id].add(version_id)
    out = []
    for n in nodes:
        assert n.url is not None
        assert n.gateway_secret is not None
        out.append(
            RoutableNode(
                id=n.id,
                operator_id=n.operator_id,
                name=n.name,
                url=n.url,
                gateway_secret=n.gateway_secret,
                assigned=frozenset(assigned[n.id]),
                last_heartbeat_at=n.last_heartbeat_at,
            )
        )
    return out


def choose_node(
    nodes: Iterable[RoutableNode],
    *,
    version_id: uuid.UUID,
    exclude: Collection[uuid.UUID] = (),
    inflight: Mapping[uuid.UUID, int] | None = None,
    warm: Mapping[uuid.UUID, Collection[uuid.UUID]] | None = None,
    latency: Mapping[uuid.UUID, float] | None = None,
    max_inflight: int = 32,
) -> RoutableNode | None:
    """The node to send a request for ``version_id`` to, or None if there is none.

    Only the platform's own measurements count, never what a node says about itself:
    ``inflight`` (the gateway's outstanding requests per node), ``warm`` (the versions the
    gateway has itself seen each node answer), ``latency`` (its own recent call times per
    node) and ``max_inflight`` (platform-set concurrency per node). Preference: nodes seen
    warm with spare room, then nodes the platform assigned the version to, then any node
    with spare room (a cold start there), then any node; within a tier the fewest
    outstanding requests, then the lowest latency (an unmeasured node counts as fastest, so
    new nodes get tried). ``exclude`` skips nodes that just failed.
    """
    busy = inflight or {}
    seen = warm or {}
    times = latency or {}
    pool = [n for n in nodes if n.id not in exclude]
    if not pool:
        return None

    def key(n: RoutableNode) -> tuple[int, float, str]:
        return (busy.get(n.id, 0), times.get(n.id, 0.0), str(n.id))

    spare = [n for n in pool if busy.get(n.id, 0) < max_inflight]
    seen_warm = [n for n in spare if version_id in seen.get(n.id, ())]
    assigned = [n for n in spare if version_id in n.assigned]
    for tier in (seen_warm, assigned, spare, pool):
        if tier:
            return min(tier, key=key)
    return None  # pragma: no cover - pool is not empty


def _require_servable(session: Session, node: Node) -> None:
    if node.deleted_at is not None or node.status != "online":
        raise NodeUnavailable(
            f"node {node.name} is {'deleted' if node.deleted_at else node.status}; "
            "it takes no new work"
        )
    require_approved_operator(session, user_id=node.operator_id)


def assign(
    session: Session, *, version: ModelVersion, node: Node, actor: User | None = None
) -> NodeAssignment:
    """Allow ``node`` to fetch ``version``'s files and keys (idempotent).

    ``actor`` None means the platform itself (the gateway before a cold start); a user must
    be an admin: operators never choose what their nodes may decrypt. Only published
    (immutable) versions are assigned, only to online nodes of approved operators.
    """
    if actor is not None and not actor.is_admin:
        raise PermissionDenied("only admins assign models to nodes", code="admin_required")
    if version.status != "published":
        raise Conflict(
            "only published versions can be served by nodes", code="version_not_published"
        )
    existing = session.scalar(
        select(NodeAssignment).where(
            NodeAssignment.node_id == node.id, NodeAssignment.version_id == version.id
        )
    )
    if existing is not None:
        return existing
    _require_servable(session, node)
    row = NodeAssignment(node_id=node.id, version_id=version.id)
    try:
        with session.begin_nested():
            session.add(row)
    except sa_exc.IntegrityError:  # a concurrent assign (another API replica) won the race
        won = session.scalar(
            select(NodeAssignment).where(
                NodeAssignment.node_id == node.id, NodeAssignment.version_id == version.id
            )
        )
        if won is None:
            raise
        return won
    return row


def ensure_assigned(session: Session, *, node_id: uuid.UUID, version_id: uuid.UUID) -> bool:
    """The gateway's call before a cold start: assign ``version_id`` to ``node_id`` if it is
    not yet; True if a new assignment was made. COMMIT before calling the node: the node
    fetches the manifest in its own request, which must see the assignment."""
    node = session.get(Node, node_id)
    if node is None or node.deleted_at is not None:
        raise NodeUnavailable(f"node {node_id} is gone")
    if _assigned(session, node, version_id):
        return False
    assign(session, version=get_published_version(session, version_id=version_id), node=node)
    return True


def unassign(
    session: Session, *, version_id: uuid.UUID, node: Node, actor: User | None = None
) -> bool:
    """Withdraw ``node``'s right to fetch ``version_id``; False if it had none."""
    if actor is not None and not actor.is_admin:
        raise PermissionDenied("only admins assign models to nodes", code="admin_required")
    row = session.scalar(
        select(NodeAssignment).where(
            NodeAssignment.node_id == node.id, NodeAssignment.version_id == version_id
        )
    )
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def node_assignments(session: Session, *, node: Node) -> list[NodeAssignment]:
    return list(
        session.scalars(
            select(NodeAssignment)
            .where(NodeAssignment.node_id == node.id)
            .order_by(NodeAssignment.created_at)
        )
    )


def get_published_version(session: Session, *, version_id: uuid.UUID) -> ModelVersion:
    version = session.get(ModelVersion, version_id)
    if version is None or version.status != "published":
        raise NotFound(f"no published version {version_id}", code="version_not_found")
    return version


def _assigned(session: Session, node: Node, version_id: uuid.UUID) -> bool:
    return bool(
        session.scalar(
            select(
                exists().where(
                    NodeAssignment.node_id == node.id, NodeAssignment.version_id == version_id
                )
            )
        )
    )


def entrypoint_of(paths: Sequence[str]) -> str | None:
    """The ONNX file a node loads: ``model.onnx`` if present, else the only ``.onnx`` file."""
    if "model.onnx" in paths:
        return "model.onnx"
    onnx = [p for p in paths if p.lower().endswith(".onnx")]
    return onnx[0] if len(onnx) == 1 else None


def node_manifest(
    session: Session, *, node: Node, version_id: uuid.UUID, blobs: BlobStore
) -> NodeManifest:
    """The files of ``version_id`` with their unwrapped data keys, for a node it is assigned
    to whose operator is approved right now (403 ``operator_not_approved`` otherwise);
    NotAssigned (403) for any other version, known or not."""
    require_approved_operator(session, user_id=node.operator_id)
    if not _assigned(session, node, version_id):
        raise NotAssigned(f"version {version_id} is not assigned to node {node.name}")
    version = session.get(ModelVersion, version_id)
    if version is None:  # pragma: no cover - the assignment's foreign key cascades
        raise NotAssigned(f"version {version_id} is not assigned to node {node.name}")
    files = tuple(
        ManifestFile(
            path=f.path,
            size=f.size,
            sha256=f.sha256,
            stored_size=blobs.stored_size(f.sha256),
            data_key=blobs.data_key(f.sha256),
        )
        for f in version.files
    )
    return NodeManifest(
        version_id=version.id,
        model=version.model.full_name,
        version=version.version,
        entrypoint=entrypoint_of([f.path for f in files]),
        files=files,
    )


def check_blob_access(session: Session, *, node: Node, address: str) -> None:
    """NotAssigned (403) unless ``address`` is a file of a version assigned to ``node``;
    OperatorNotApproved (403) unless the node's operator is approved right now."""
    require_approved_operator(session, user_id=node.operator_id)
    allowed = session.scalar(
        select(
            exists()
            .where(ModelFile.sha256 == address)
            .where(ModelFile.version_id == NodeAssignment.version_id)
            .where(NodeAssignment.node_id == node.id)
        )
    )
    if not allowed:
        raise NotAssigned(f"blob {address} is not part of a version assigned to this node")
