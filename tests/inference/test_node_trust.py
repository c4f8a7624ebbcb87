"""Issue 9, items 1 and 3: node operators are a trust tier, and node URLs cannot point the
platform at its own internals.

Each test reproduces an attack that worked before the fix: any signed-in user created a node,
which went online at once and could read data keys; a revoked operator kept access; a node URL
like ``http://127.1`` or ``http://localtest.me`` passed; ``GET /api/v1/nodes`` wrote (evicted
nodes with a hard-coded 15 s).
"""

from __future__ import annotations

import base64
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.inference import service as nodes
from cyxwiz.inference.models import Node, NodeAssignment, NodeOperator
from cyxwiz.netguard import AddressGuard, UnsafeAddress, literal_ip
from cyxwiz.storage import BlobStore
from cyxwiz.storage.crypto import decrypt_stream
from cyxwiz.web.app import create_app
from tests.factories import Account, Api, onnx_with_payload
from tests.inference.test_nodes_api import (
    NODES,
    bearer,
    healthy,
    make_admin,
    new_node,
    problem,
    register,
)

OPERATOR = f"{NODES}/operator"
OPERATORS = f"{NODES}/operators"


def _published(api: Api, client: TestClient, creator: Account) -> tuple[str, str, bytes]:
    """A published model; (version id, model.onnx address, plaintext)."""
    data = onnx_with_payload(b"secret weights " * 500)
    m = api.published_model(creator, files={"model.onnx": data})
    r = client.get(f"/api/v1/models/{m['full_name']}/versions/1.0.0", headers=creator.headers)
    assert r.status_code == 200, r.text
    version = r.json()
    address = next(f["sha256"] for f in version["files"] if f["path"] == "model.onnx")
    return str(version["id"]), address, data


# ---------------------------------------------------------------- who may run nodes


def test_a_user_who_was_not_approved_cannot_create_a_node(
    client: TestClient, api: Api, db: Database
) -> None:
    """The attack: sign up, POST /api/v1/nodes, register, wait for a model's data key."""
    mallory = api.user()
    problem(
        client.post(NODES, json={"name": "steal"}, headers=mallory.headers),
        403,
        "operator_not_approved",
    )
    # applying is not enough: an admin has to approve
    r = client.post(OPERATOR, json={"statement": "trust me"}, headers=mallory.headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "applied"
    problem(
        client.post(NODES, json={"name": "steal"}, headers=mallory.headers),
        403,
        "operator_not_approved",
    )
    with db.session() as s:
        assert s.scalar(select(Node).where(Node.name == "steal")) is None


def test_the_application_flow(client: TestClient, api: Api, db: Database) -> None:
    alice, other = api.user(), api.user()
    admin = make_admin(api, db)
    problem(client.get(OPERATOR, headers=alice.headers), 404, "operator_application_not_found")
    problem(
        client.post(OPERATOR, json={"statement": "   "}, headers=alice.headers),
        422,
        "invalid_statement",
    )
    r = client.post(OPERATOR, json={"statement": "2 GPU boxes in Frankfurt"}, headers=alice.headers)
    assert r.status_code == 200, r.text
    mine = client.get(OPERATOR, headers=alice.headers).json()
    assert mine["status"] == "applied"
    assert mine["statement"] == "2 GPU boxes in Frankfurt"
    assert mine["decided_by"] is None

    # only admins list and decide
    problem(client.get(OPERATORS, headers=other.headers), 403, "admin_required")
    for action in ("approve", "reject", "revoke"):
        problem(
            client.post(f"{OPERATORS}/{alice.username}/{action}", headers=other.headers),
            403,
            "admin_required",
        )
    pending = client.get(f"{OPERATORS}?status=applied", headers=admin.headers).json()
    assert [p["username"] for p in pending] == [alice.username]

    # rejected with a reason the applicant sees; applying again starts over
    r = client.post(
        f"{OPERATORS}/{alice.username}/reject",
        json={"reason": "tell us more"},
        headers=admin.headers,
    )
    assert r.status_code == 200, r.text
    mine = client.get(OPERATOR, headers=alice.headers).json()
    assert (mine["status"], mine["reason"], mine["decided_by"]) == (
        "rejected",
        "tell us more",
        admin.username,
    )
    problem(
        client.post(f"{OPERATORS}/{alice.username}/reject", headers=admin.headers),
        409,
        "no_pending_application",
    )
    problem(
        client.post(f"{OPERATORS}/{alice.username}/revoke", headers=admin.headers),
        409,
        "operator_not_approved",
    )
    client.post(OPERATOR, json={"statement": "2 boxes, ISO 27001"}, headers=alice.headers)
    assert client.get(OPERATOR, headers=alice.headers).json()["status"] == "applied"

    r = client.post(f"{OPERATORS}/{alice.username}/approve", headers=admin.headers)
    assert r.json()["status"] == "approved"
    assert client.post(NODES, json={"name": "box"}, headers=alice.headers).status_code == 201
    problem(
        client.post(OPERATOR, json={"statement": "again"}, headers=alice.headers),
        409,
        "already_operator",
    )
    problem(
        client.post(f"{OPERATORS}/nobody-here/approve", headers=admin.headers),
        404,
        "user_not_found",
    )
    # an admin may grant without an application
    r = client.post(f"{OPERATORS}/{other.username}/approve", headers=admin.headers)
    assert r.json()["status"] == "approved"


def test_an_unapproved_operators_node_gets_no_keys_no_blobs_no_routing(
    client: TestClient, api: Api, db: Database, clock: TestClock
) -> None:
    """A node that exists while its operator is not approved (e.g. created before issue 9:
    migration 0007 leaves such operators as pending applications) gets nothing."""
    creator, op = api.user(), api.user()
    admin = make_admin(api, db)
    vid, address, _ = _published(api, client, creator)
    node_id, token = new_node(client, op)
    register(client, token)
    r = client.put(f"{NODES}/{node_id}/assignments/{vid}", headers=admin.headers)
    assert r.status_code == 200, r.text
    with db.session() as s:  # the operator's standing goes back to a pending application
        row = s.scalar(select(NodeOperator).where(NodeOperator.user_id == _uid(s, op)))
        assert row is not None
        row.status = "applied"
    problem(
        client.get(f"{NODES}/assignments/{vid}", headers=bearer(token)),
        403,
        "operator_not_approved",
    )
    problem(
        client.get(f"{NODES}/blobs/{address}", headers=bearer(token)), 403, "operator_not_approved"
    )
    assert healthy(db, clock) == []
    problem(
        client.post(
            f"{NODES}/register",
            json={"url": "http://127.0.0.1:8801", "capacity": 1},
            headers=bearer(token),
        ),
        403,
        "operator_not_approved",
    )
    # and no new version is assigned to it (by an admin, or by the gateway: same rule)
    other_vid = _published(api, client, creator)[0]
    problem(
        client.put(f"{NODES}/{node_id}/assignments/{other_vid}", headers=admin.headers),
        403,
        "operator_not_approved",
    )


def test_revoking_an_operator_takes_effect_at_once(
    client: TestClient, api: Api, db: Database, clock: TestClock, blobs: BlobStore
) -> None:
    creator, op = api.user(), api.user()
    admin = make_admin(api, db)
    vid, address, plaintext = _published(api, client, creator)
    node_id, token = new_node(client, op)
    register(client, token)
    assert client.put(f"{NODES}/{node_id}/assignments/{vid}", headers=admin.headers).is_success
    manifest = client.get(f"{NODES}/assignments/{vid}", headers=bearer(token))
    assert manifest.status_code == 200, manifest.text
    entry = manifest.json()["files"][0]
    blob = client.get(f"{NODES}/blobs/{address}", headers=bearer(token))
    assert blob.status_code == 200
    key = base64.b64decode(entry["data_key"])
    assert b"".join(decrypt_stream([blob.content], key, address)) == plaintext
    assert [n.id for n in healthy(db, clock)] == [uuid.UUID(node_id)]

    r = client.post(
        f"{OPERATORS}/{op.username}/revoke", json={"reason": "abuse"}, headers=admin.headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "revoked"
    # at once: no keys, no blobs, no routing, no registration, no assignments
    problem(
        client.get(f"{NODES}/assignments/{vid}", headers=bearer(token)),
        403,
        "operator_not_approved",
    )
    problem(
        client.get(f"{NODES}/blobs/{address}", headers=bearer(token)), 403, "operator_not_approved"
    )
    assert healthy(db, clock) == []
    problem(
        client.post(f"{NODES}/heartbeat", json={"load": 0}, headers=bearer(token)),
        409,
        "node_not_registered",
    )
    problem(
        client.post(
            f"{NODES}/register",
            json={"url": "http://127.0.0.1:8801", "capacity": 1},
            headers=bearer(token),
        ),
        403,
        "operator_not_approved",
    )
    problem(
        client.post(NODES, json={"name": "another"}, headers=op.headers),
        403,
        "operator_not_approved",
    )
    with db.session() as s:
        assert list(s.scalars(select(NodeAssignment))) == []
    assert client.get(f"{NODES}/{node_id}", headers=op.headers).json()["status"] == "pending"

    # approved again: the node registers again (a fresh secret), nothing else comes back
    client.post(f"{OPERATORS}/{op.username}/approve", headers=admin.headers)
    register(client, token)
    assert [n.id for n in healthy(db, clock)] == [uuid.UUID(node_id)]
    problem(client.get(f"{NODES}/assignments/{vid}", headers=bearer(token)), 403, "not_assigned")


def _uid(s: Any, account: Account) -> uuid.UUID:
    from cyxwiz.accounts.service import get_user_by_username

    return get_user_by_username(s, account.username).id


# ---------------------------------------------------------------- reading never writes


@pytest.fixture
def slow_app(
    settings: Settings, db: Database, blobs: BlobStore, clock: TestClock
) -> Iterator[TestClient]:
    """The app with ``inference_node_stale_seconds`` = 40 (not the old hard-coded 15)."""
    app: FastAPI = create_app(
        settings.model_copy(update={"inference_node_stale_seconds": 40.0}),
        database=db,
        blobs=blobs,
        clock=clock,
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_reading_nodes_never_writes_and_uses_the_stale_setting(
    slow_app: TestClient, db: Database, clock: TestClock
) -> None:
    client, api = slow_app, Api(slow_app)
    op = api.user()
    node_id, token = new_node(client, op)
    register(client, token)
    clock.advance(timedelta(seconds=20))  # stale by the old 15 s, fresh by the setting (40 s)
    assert client.get(NODES, headers=op.headers).json()[0]["status"] == "online"
    assert client.get(f"{NODES}/{node_id}", headers=op.headers).json()["status"] == "online"
    clock.advance(timedelta(seconds=21))
    assert client.get(NODES, headers=op.headers).json()[0]["status"] == "offline"
    assert client.get(f"{NODES}/{node_id}", headers=op.headers).json()["status"] == "offline"
    assert client.get(f"{NODES}?status=offline", headers=op.headers).json()[0]["id"] == node_id
    assert client.get(f"{NODES}?status=online", headers=op.headers).json() == []
    with db.session() as s:  # shown offline, but the GETs wrote nothing
        node = s.get(Node, uuid.UUID(node_id))
        assert node is not None
        assert node.status == "online"
    # the scheduler's job (web/app.py's eviction loop) writes, with the same setting
    gateway = client.app.state.ctx.gateway  # type: ignore[attr-defined]
    assert gateway.evict_stale() == 1
    with db.session() as s:
        node = s.get(Node, uuid.UUID(node_id))
        assert node is not None
        assert node.status == "offline"


# ---------------------------------------------------------------- node URLs (SSRF)


class Dns:
    """A resolver table (this machine has no internet DNS); a list value is served in turn,
    its last entry repeated (``rebind.example``: public first, then loopback)."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self.table = table
        self.asked: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        answers = self.table.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers.pop(0) if len(answers) > 1 else answers[0]


def production_dns() -> Dns:
    return Dns(
        {
            "localtest.me": [["127.0.0.1"]],
            "metadata.google.internal": [["169.254.169.254"]],
            "rebind.example": [["93.184.216.34"], ["127.0.0.1"]],
            "mixed.example": [["93.184.216.34", "10.0.0.7"]],
            "v6.example": [["::1"]],
            "mapped.example": [["::ffff:169.254.169.254"]],
            "cgnat.example": [["100.64.0.1"]],
            "public.example": [["93.184.216.34"]],
        }
    )


BYPASSES = [
    "http://127.1:8801",  # shortened dotted form
    "http://2130706433:8801",  # decimal
    "http://0x7f000001:8801",  # hex
    "http://0177.0.0.1:8801",  # octal
    "http://0:8801",  # 0.0.0.0
    "http://localtest.me:8801",  # a public name for 127.0.0.1
    "http://metadata.google.internal/",  # cloud metadata (169.254.169.254)
    "http://mixed.example/",  # one public and one private address
    "http://v6.example/",
    "http://mapped.example/",  # IPv4-mapped IPv6 of the metadata address
    "http://cgnat.example/",
    "http://[::ffff:127.0.0.1]:8801",
    "http://[fe80::1%25eth0]:8801",
    "http://224.0.0.1/",
    "http://does-not-resolve.example/",
    "http://localhost:8801",
    "http://app.localhost:8801",
]


@pytest.mark.parametrize("url", BYPASSES)
def test_registration_refuses_every_internal_address_in_production(
    client: TestClient, api: Api, url: str
) -> None:
    gateway = client.app.state.ctx.gateway  # type: ignore[attr-defined]
    gateway.set_guard(AddressGuard(allow_private=False, resolver=production_dns()))
    op = api.user()
    node_id, token = new_node(client, op)
    r = client.post(f"{NODES}/register", json={"url": url, "capacity": 1}, headers=bearer(token))
    problem(r, 422, "invalid_node_url")
    shown = client.get(f"{NODES}/{node_id}", headers=op.headers).json()
    assert (shown["status"], shown["url"]) == ("pending", None)  # nothing changed


def test_registration_accepts_public_names_and_allowed_networks(
    client: TestClient, api: Api
) -> None:
    gateway = client.app.state.ctx.gateway  # type: ignore[attr-defined]
    dns = production_dns()
    gateway.set_guard(AddressGuard(allow_private=False, resolver=dns))
    op = api.user()
    _, token = new_node(client, op)
    assert register(client, token, url="http://public.example:8801")["status"] == "online"
    assert "public.example" in dns.asked
    # the first answer of rebind.example is public: registration passes (the gateway checks
    # again at connect time: tests/gateway/test_node_trust_gateway.py)
    assert register(client, token, url="http://rebind.example:8801")["status"] == "online"
    # a platform that runs its nodes in its own private network allows that network
    gateway.set_guard(
        AddressGuard(
            allow_private=False,
            allowed_networks=nodes.address_guard(
                Settings(inference_node_allowed_networks="10.0.0.0/8")
            ).allowed_networks,
            resolver=dns,
        )
    )
    assert register(client, token, url="http://10.1.2.3:8801")["status"] == "online"
    problem(
        client.post(
            f"{NODES}/register",
            json={"url": "http://192.168.1.1:8801", "capacity": 1},
            headers=bearer(token),
        ),
        422,
        "invalid_node_url",
    )


def test_development_still_allows_the_local_node(client: TestClient, api: Api) -> None:
    op = api.user()
    _, token = new_node(client, op)
    assert register(client, token, url="http://127.0.0.1:8801")["status"] == "online"
    assert register(client, token, url="http://localhost:8801")["status"] == "online"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("[::1]", "::1"),
        ("node.example.com", None),
        ("deadbeef", None),
        ("face.cafe", None),
    ],
)
def test_numeric_hosts_are_read_as_the_os_resolver_reads_them(
    host: str, expected: str | None
) -> None:
    ip = literal_ip(host)
    assert (str(ip) if ip is not None else None) == expected
    if expected is not None and ":" not in host:  # the OS agrees
        assert socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)[0][4][0] == expected


def test_the_guard_connects_only_to_what_it_checked() -> None:
    dns = production_dns()
    guard = AddressGuard(allow_private=False, resolver=dns)
    assert guard.resolve("rebind.example", 80) == ["93.184.216.34"]
    with pytest.raises(UnsafeAddress, match=r"127\.0\.0\.1"):  # the rebinding answer
        guard.resolve("rebind.example", 80)
    assert AddressGuard(allow_private=True, resolver=dns).resolve("localtest.me", 80) == [
        "localtest.me"
    ]
    assert dns.asked == ["rebind.example", "rebind.example"]  # dev mode resolves nothing


# ---------------------------------------------------------------- the admin CLI


def test_the_operators_cli_decides_on_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cyxwiz.accounts.service import register as register_user
    from cyxwiz.cli.main import app

    data = tmp_path / "data"
    monkeypatch.setenv("CYXWIZ_DATA_DIR", str(data))
    monkeypatch.delenv("CYXWIZ_DATABASE_URL", raising=False)
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    db = Database.from_url(Settings(data_dir=data).resolved_database_url)
    try:
        with db.session() as s:
            user = register_user(
                s, username="carol", email="carol@example.com", password="long enough pw 1"
            )
            nodes.apply_as_operator(s, user=user, statement="one box", now=datetime.now(UTC))
        r = runner.invoke(app, ["operators", "list", "--status", "applied"])
        assert r.exit_code == 0, r.output
        assert "carol" in r.output
        assert "one box" in r.output
        r = runner.invoke(app, ["operators", "approve", "carol"])
        assert (r.exit_code, r.output.strip()) == (0, "carol: approved"), r.output
        r = runner.invoke(app, ["operators", "revoke", "carol", "--reason", "left"])
        assert (r.exit_code, r.output.strip()) == (0, "carol: revoked"), r.output
        r = runner.invoke(app, ["operators", "reject", "carol"])
        assert r.exit_code == 1
        assert "no_pending_application" in r.output
        r = runner.invoke(app, ["operators", "approve", "nobody"])
        assert r.exit_code == 1
        assert "user_not_found" in r.output
        with db.session() as s:
            row = nodes.operator_record(s, user_id=_uid(s, Account("carol", "")))
            assert row is not None
            assert (row.status, row.reason, row.decided_by_id) == ("revoked", "left", None)
    finally:
        db.engine.dispose()


# ---------------------------------------------------------------- the /nodes page


def test_the_nodes_page_lets_users_apply_and_admins_decide(
    app: FastAPI, client: TestClient, api: Api, db: Database
) -> None:
    from tests.web.test_ui import Browser
    from tests.web.test_ui_money import form_fields, forms

    dave = api.user()
    admin = make_admin(api, db)

    def browser(who: Account) -> Browser:
        c = TestClient(app, raise_server_exceptions=False)
        c.__enter__()
        b = Browser(c)
        assert b.login(who.username).status_code == 303
        return b

    b = browser(dave)
    page = b.get("/nodes").text
    assert 'data-operator-status="none"' in page
    fields = form_fields(page, "/nodes/operator/apply")
    r = b.post("/nodes/operator/apply", {**fields, "statement": "A rack in Lyon"})
    assert r.status_code == 303, r.text
    page = b.get("/nodes").text
    assert 'data-operator-status="applied"' in page
    assert "waiting for an admin" in page
    assert not forms(page, f"/nodes/operators/{dave.username}/approve")  # not an admin
    r = b.post(f"/nodes/operators/{dave.username}/approve")
    assert r.status_code == 403
    # a form without the CSRF token changes nothing
    a = browser(admin)
    r = a.post(f"/nodes/operators/{dave.username}/approve", csrf=False)
    assert r.status_code == 403
    page = a.get("/nodes").text
    assert "A rack in Lyon" in page
    fields = form_fields(page, f"/nodes/operators/{dave.username}/approve", "Approve")
    r = a.post(f"/nodes/operators/{dave.username}/approve", fields)
    assert r.status_code == 303, r.text
    assert client.get(OPERATOR, headers=dave.headers).json()["status"] == "approved"
    page = b.get("/nodes").text
    assert 'data-operator-status="approved"' in page
    assert not forms(page, "/nodes/operator/apply")
    # and revoked from the admin's list of approved operators
    page = a.get("/nodes").text
    fields = form_fields(page, f"/nodes/operators/{dave.username}/revoke", "Revoke")
    r = a.post(f"/nodes/operators/{dave.username}/revoke", {**fields, "reason": "gone"})
    assert r.status_code == 303, r.text
    mine = client.get(OPERATOR, headers=dave.headers).json()
    assert (mine["status"], mine["reason"]) == ("revoked", "gone")
    for c in (a.client, b.client):
        c.__exit__(None, None, None)
