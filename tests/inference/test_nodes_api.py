"""The node registry API: who may call what, the node life cycle and the key-release rule."""

from __future__ import annotations

import base64
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from cyxwiz.accounts.service import get_user_by_username
from cyxwiz.clock import TestClock
from cyxwiz.db import Database
from cyxwiz.inference import service as nodes
from cyxwiz.inference.interfaces import RoutableNode
from cyxwiz.netguard import AddressGuard
from cyxwiz.storage.crypto import decrypt_stream
from tests.factories import Account, Api, onnx_with_payload, tiny_onnx

NODES = "/api/v1/nodes"


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_admin(api: Api, db: Database) -> Account:
    admin = api.user()
    with db.session() as s:
        user = get_user_by_username(s, admin.username)
        assert user is not None
        user.role = "admin"
    return admin


def approve_operator(client: TestClient, operator: Account) -> None:
    """Make ``operator`` an approved node operator (the platform's decision, as the CLI)."""
    db: Database = client.app.state.ctx.db  # type: ignore[attr-defined]
    with db.session() as s:
        user = get_user_by_username(s, operator.username)
        nodes.decide_operator(s, user=user, decision="approve", actor=None, now=datetime.now(UTC))


def new_node(client: TestClient, operator: Account, name: str = "box-1") -> tuple[str, str]:
    approve_operator(client, operator)
    r = client.post(NODES, json={"name": name}, headers=operator.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    return body["node"]["id"], body["token"]


def register(
    client: TestClient, token: str, url: str = "http://127.0.0.1:8801", capacity: int = 4
) -> dict[str, Any]:
    r = client.post(
        f"{NODES}/register",
        json={"url": url, "capacity": capacity, "agent_version": "test/1"},
        headers=bearer(token),
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def healthy(db: Database, clock: TestClock) -> list[RoutableNode]:
    with db.session() as s:
        return nodes.healthy_nodes(s, now=clock.now())


def version_id(client: TestClient, owner: Account, full_name: str, label: str = "1.0.0") -> str:
    r = client.get(f"/api/v1/models/{full_name}/versions/{label}", headers=owner.headers)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


# ---------------------------------------------------------------- operators, admins, others


def test_operator_creates_a_node_and_sees_its_token_once(client: TestClient, api: Api) -> None:
    op = api.user()
    approve_operator(client, op)
    r = client.post(NODES, json={"name": "gpu-box"}, headers=op.headers)
    assert r.status_code == 201, r.text
    body = r.json()
    token = body["token"]
    assert token.startswith("cxw_nt_")
    assert len(token) > 40
    node = body["node"]
    assert node["status"] == "pending"
    assert node["operator"] == op.username
    assert token.startswith(node["token_prefix"])
    # the token is never shown again, nor the gateway secret
    r = client.get(f"{NODES}/{node['id']}", headers=op.headers)
    assert r.status_code == 200
    assert token not in r.text
    assert "gateway_secret" not in r.json()
    listed = client.get(NODES, headers=op.headers).json()
    assert [n["id"] for n in listed] == [node["id"]]
    assert token not in str(listed)
    # names are unique per operator, and validated
    problem(
        client.post(NODES, json={"name": "gpu-box"}, headers=op.headers), 409, "node_name_taken"
    )
    problem(
        client.post(NODES, json={"name": "bad name!"}, headers=op.headers), 422, "invalid_node_name"
    )


def test_who_sees_and_manages_which_nodes(client: TestClient, api: Api, db: Database) -> None:
    op, other = api.user(), api.user()
    admin = make_admin(api, db)
    node_id, _ = new_node(client, op)
    other_id, _ = new_node(client, other, "theirs")

    # anonymous: nothing
    problem(client.get(NODES), 401, "not_authenticated")
    problem(client.post(NODES, json={"name": "x"}), 401, "not_authenticated")
    problem(client.get(f"{NODES}/{node_id}"), 401, "not_authenticated")
    problem(client.post(f"{NODES}/{node_id}/drain"), 401, "not_authenticated")
    problem(client.delete(f"{NODES}/{node_id}"), 401, "not_authenticated")

    # another user: sees only their own; someone else's node does not exist for them
    assert [n["id"] for n in client.get(NODES, headers=other.headers).json()] == [other_id]
    problem(client.get(f"{NODES}/{node_id}", headers=other.headers), 404, "node_not_found")
    problem(client.post(f"{NODES}/{node_id}/drain", headers=other.headers), 404, "node_not_found")
    problem(client.post(f"{NODES}/{node_id}/resume", headers=other.headers), 404, "node_not_found")
    problem(client.delete(f"{NODES}/{node_id}", headers=other.headers), 404, "node_not_found")
    problem(
        client.get(f"{NODES}/{node_id}/assignments", headers=other.headers), 404, "node_not_found"
    )

    # admin: everything
    ids = {n["id"] for n in client.get(NODES, headers=admin.headers).json()}
    assert ids == {node_id, other_id}
    assert client.get(f"{NODES}/{node_id}", headers=admin.headers).status_code == 200
    r = client.post(f"{NODES}/{other_id}/drain", headers=admin.headers)
    assert r.status_code == 200
    assert r.json()["drained"] is True

    # a read-only API key may list but not create
    r = client.post("/api/v1/api-keys", json={"name": "ro", "scopes": ["read"]}, headers=op.headers)
    key = r.json()["key"]
    assert client.get(NODES, headers=bearer(key)).status_code == 200
    problem(client.post(NODES, json={"name": "k"}, headers=bearer(key)), 403, "insufficient_scope")


# ---------------------------------------------------------------- node-token routes


def test_node_routes_accept_only_a_live_node_token(client: TestClient, api: Api) -> None:
    op = api.user()
    node_id, token = new_node(client, op)
    body = {"url": "http://127.0.0.1:9", "capacity": 2}
    some_version = str(uuid.uuid4())
    calls = [
        ("POST", f"{NODES}/register", body),
        ("POST", f"{NODES}/heartbeat", {"load": 0, "warm": []}),
        ("GET", f"{NODES}/assignments/{some_version}", None),
        ("GET", f"{NODES}/blobs/{'a' * 64}", None),
    ]
    forged = "cxw_nt_" + "A" * 43
    for method, url, payload in calls:
        problem(client.request(method, url, json=payload), 401, "not_authenticated")
        problem(
            client.request(method, url, json=payload, headers=bearer(forged)),
            401,
            "invalid_node_token",
        )
        # a user's own token is not a node token
        problem(
            client.request(method, url, json=payload, headers=op.headers), 401, "invalid_node_token"
        )
        problem(
            client.request(method, url, json=payload, headers={"Authorization": "Basic abc"}),
            401,
            "not_authenticated",
        )
    # and a node token is not a user token
    problem(client.get(NODES, headers=bearer(token)), 401, "invalid_token")
    problem(client.post(NODES, json={"name": "x"}, headers=bearer(token)), 401, "invalid_token")

    reg = register(client, token)
    assert reg["node_id"] == node_id
    assert reg["status"] == "online"
    assert reg["gateway_secret"].startswith("cxw_gs_")
    assert reg["heartbeat_seconds"] == nodes.HEARTBEAT_SECONDS
    # every registration rotates the gateway secret
    assert register(client, token)["gateway_secret"] != reg["gateway_secret"]

    # the token dies with its node (a stale token)
    assert client.delete(f"{NODES}/{node_id}", headers=op.headers).status_code == 204
    for method, url, payload in calls:
        problem(
            client.request(method, url, json=payload, headers=bearer(token)),
            401,
            "invalid_node_token",
        )
    problem(client.get(f"{NODES}/{node_id}", headers=op.headers), 404, "node_not_found")
    assert client.get(NODES, headers=op.headers).json() == []


def test_a_disabled_operator_s_nodes_are_refused(
    client: TestClient, api: Api, db: Database
) -> None:
    op = api.user()
    _, token = new_node(client, op)
    register(client, token)
    with db.session() as s:
        user = get_user_by_username(s, op.username)
        assert user is not None
        user.is_active = False
    problem(
        client.post(f"{NODES}/heartbeat", json={"load": 0}, headers=bearer(token)),
        401,
        "invalid_node_token",
    )


def test_registration_is_validated(client: TestClient, api: Api) -> None:
    op = api.user()
    _, token = new_node(client, op)
    bad_urls = [
        "ftp://host:1",
        "http://user:pw@host:1",
        "http://host:1/?q=1",
        "not a url",
        "http://",
    ]
    for url in bad_urls:
        r = client.post(
            f"{NODES}/register", json={"url": url, "capacity": 1}, headers=bearer(token)
        )
        assert r.status_code == 422, (url, r.text)
        assert r.json()["code"] in ("invalid_node_url", "validation_error")
    r = client.post(
        f"{NODES}/register", json={"url": "http://h:1", "capacity": 0}, headers=bearer(token)
    )
    problem(r, 422, "validation_error")
    # nothing changed: still pending
    assert client.get(NODES, headers=op.headers).json()[0]["status"] == "pending"
    # heartbeats need a registration first
    problem(
        client.post(f"{NODES}/heartbeat", json={"load": 0}, headers=bearer(token)),
        409,
        "node_not_registered",
    )


def test_production_refuses_private_node_urls() -> None:
    def dns(host: str, port: int) -> list[str]:  # no internet DNS here: a table
        if host == "node.example.com":
            return ["93.184.216.34"]
        raise socket.gaierror(socket.EAI_NONAME, "unknown")

    guard = AddressGuard(allow_private=False, resolver=dns)
    ok = nodes.validate_node_url("https://node.example.com:8443/", allow_private=False, guard=guard)
    assert ok == "https://node.example.com:8443"
    for url in (
        "http://127.0.0.1:8801",
        "http://10.1.2.3",
        "http://localhost:1",
        "http://[::1]:5",
        "http://169.254.169.254/",
    ):
        assert nodes.validate_node_url(url, allow_private=True)
        with pytest.raises(Exception, match="not publicly routable"):
            nodes.validate_node_url(url, allow_private=False, guard=guard)


# ---------------------------------------------------------------- heartbeats, eviction, drain


def test_heartbeats_update_the_node_and_stale_nodes_are_evicted(
    client: TestClient, api: Api, db: Database, clock: TestClock
) -> None:
    op = api.user()
    node_id, token = new_node(client, op)
    register(client, token)
    warm = [str(uuid.uuid4()), str(uuid.uuid4())]
    clock.advance(timedelta(seconds=3))
    r = client.post(f"{NODES}/heartbeat", json={"load": 3, "warm": warm}, headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "online", "heartbeat_seconds": nodes.HEARTBEAT_SECONDS}
    shown = client.get(f"{NODES}/{node_id}", headers=op.headers).json()
    assert shown["load"] == 3
    assert shown["warm"] == warm
    assert shown["last_heartbeat_at"].startswith(clock.now().isoformat()[:19])
    [routable] = healthy(db, clock)
    # what the node reports is shown, never handed to routing (issue 9)
    assert not hasattr(routable, "load")
    assert not hasattr(routable, "warm")
    assert routable.url == "http://127.0.0.1:8801"

    problem(
        client.post(f"{NODES}/heartbeat", json={"load": -1}, headers=bearer(token)),
        422,
        "validation_error",
    )

    # two missed heartbeats: still routable; the third one: out of the routing table
    clock.advance(timedelta(seconds=nodes.STALE_AFTER_SECONDS))
    assert [n.id for n in healthy(db, clock)] == [uuid.UUID(node_id)]
    clock.advance(timedelta(seconds=1))
    assert healthy(db, clock) == []
    with db.session() as s:
        assert nodes.evict_stale(s, now=clock.now()) == 1
        assert nodes.evict_stale(s, now=clock.now()) == 0
    assert client.get(f"{NODES}/{node_id}", headers=op.headers).json()["status"] == "offline"
    assert client.get(f"{NODES}?status=offline", headers=op.headers).json()[0]["id"] == node_id

    # a node that comes back is routable again at its next heartbeat
    r = client.post(f"{NODES}/heartbeat", json={"load": 0}, headers=bearer(token))
    assert r.json()["status"] == "online"
    assert len(healthy(db, clock)) == 1


def test_listing_shows_stale_nodes_offline(client: TestClient, api: Api, clock: TestClock) -> None:
    op = api.user()
    _, token = new_node(client, op)
    register(client, token)
    clock.advance(timedelta(seconds=nodes.HEARTBEAT_SECONDS * nodes.MISSED_HEARTBEATS + 1))
    assert client.get(NODES, headers=op.headers).json()[0]["status"] == "offline"


def test_drain_stops_routing_until_resumed(
    client: TestClient, api: Api, db: Database, clock: TestClock
) -> None:
    op = api.user()
    node_id, token = new_node(client, op)
    register(client, token)
    assert len(healthy(db, clock)) == 1
    r = client.post(f"{NODES}/{node_id}/drain", headers=op.headers)
    assert r.status_code == 200
    assert r.json()["status"] == "draining"
    assert healthy(db, clock) == []
    # heartbeats tell the node it is draining; a restart (new registration) does not undo it
    r = client.post(f"{NODES}/heartbeat", json={"load": 1}, headers=bearer(token))
    assert r.json()["status"] == "draining"
    assert register(client, token)["status"] == "draining"
    assert healthy(db, clock) == []
    # nor does eviction and a comeback
    clock.advance(timedelta(seconds=nodes.STALE_AFTER_SECONDS + 1))
    client.get(NODES, headers=op.headers)
    r = client.post(f"{NODES}/heartbeat", json={"load": 0}, headers=bearer(token))
    assert r.json()["status"] == "draining"
    r = client.post(f"{NODES}/{node_id}/resume", headers=op.headers)
    assert r.json()["status"] == "online"
    assert r.json()["drained"] is False
    assert len(healthy(db, clock)) == 1


def test_choose_node_uses_only_the_gateways_own_measurements() -> None:
    v = uuid.uuid4()

    def node(assigned: bool = False) -> RoutableNode:
        return RoutableNode(
            id=uuid.uuid4(),
            operator_id=uuid.uuid4(),
            name="n",
            url="http://n",
            gateway_secret="s",
            assigned=frozenset({v}) if assigned else frozenset(),
        )

    cold, seen, assigned = node(), node(), node(assigned=True)
    pool = [cold, seen, assigned]
    warm = {seen.id: {v}}
    # seen warm by the gateway first, then assigned by the platform, then anyone
    assert nodes.choose_node(pool, version_id=v, warm=warm) == seen
    assert nodes.choose_node(pool, version_id=v) == assigned
    # the gateway's own in-flight count fills the warm node: the assigned one next
    busy = {seen.id: 2}
    assert nodes.choose_node(pool, version_id=v, warm=warm, inflight=busy, max_inflight=2) == (
        assigned
    )
    assert nodes.choose_node(pool, version_id=v, warm=warm, exclude={seen.id}) == assigned
    # everyone full: the fewest outstanding requests, then the fastest
    full = {cold.id: 3, seen.id: 2, assigned.id: 2}
    fast = {seen.id: 0.5, assigned.id: 0.01}
    assert (
        nodes.choose_node(pool, version_id=v, inflight=full, latency=fast, max_inflight=1)
        == assigned
    )
    assert nodes.choose_node([], version_id=v) is None


# ---------------------------------------------------------------- assignments and keys


def test_keys_and_blobs_only_for_assigned_versions(
    client: TestClient, api: Api, db: Database
) -> None:
    creator, op = api.user(), api.user()
    admin = make_admin(api, db)
    model_bytes = onnx_with_payload(b"onnx-model-bytes" * 1000)  # publish takes real ONNX only
    m = api.published_model(creator, files={"model.onnx": model_bytes, "config.json": b"{}"})
    other = api.published_model(creator, files={"model.onnx": tiny_onnx(3.0)})
    vid = version_id(client, creator, m["full_name"])
    other_vid = version_id(client, creator, other["full_name"])
    node_id, token = new_node(client, op)
    register(client, token)
    address = next(
        f["sha256"]
        for f in client.get(f"/api/v1/models/{m['full_name']}/versions/1.0.0").json()["files"]
        if f["path"] == "model.onnx"
    )

    # not assigned: no manifest, no keys, no blobs (and an unknown version looks the same)
    problem(client.get(f"{NODES}/assignments/{vid}", headers=bearer(token)), 403, "not_assigned")
    problem(
        client.get(f"{NODES}/assignments/{uuid.uuid4()}", headers=bearer(token)),
        403,
        "not_assigned",
    )
    problem(client.get(f"{NODES}/blobs/{address}", headers=bearer(token)), 403, "not_assigned")
    problem(
        client.get(f"{NODES}/blobs/not-an-address", headers=bearer(token)), 422, "invalid_input"
    )

    # only admins assign (the gateway does it in-process); operators cannot pick models
    put = f"{NODES}/{node_id}/assignments/{vid}"
    problem(client.put(put), 401, "not_authenticated")
    problem(client.put(put, headers=op.headers), 403, "admin_required")
    problem(client.put(put, headers=creator.headers), 403, "admin_required")
    problem(client.put(put, headers=bearer(token)), 401, "invalid_token")
    problem(
        client.put(f"{NODES}/{node_id}/assignments/{uuid.uuid4()}", headers=admin.headers),
        404,
        "version_not_found",
    )
    r = client.put(put, headers=admin.headers)
    assert r.status_code == 200, r.text
    assert client.put(put, headers=admin.headers).json()["created_at"] == r.json()["created_at"]
    listed = client.get(f"{NODES}/{node_id}/assignments", headers=op.headers).json()
    assert [a["version_id"] for a in listed] == [vid]

    r = client.get(f"{NODES}/assignments/{vid}", headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    manifest = r.json()
    assert manifest["model"] == m["full_name"]
    assert manifest["version"] == "1.0.0"
    assert manifest["entrypoint"] == "model.onnx"
    assert sorted(f["path"] for f in manifest["files"]) == ["config.json", "model.onnx"]
    entry = next(f for f in manifest["files"] if f["path"] == "model.onnx")
    assert entry["address"] == entry["sha256"] == address
    assert entry["size"] == len(model_bytes)

    # the blob comes encrypted; the manifest's key opens it
    r = client.get(f"{NODES}/blobs/{address}", headers=bearer(token))
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert int(r.headers["content-length"]) == entry["stored_size"] == len(r.content)
    assert model_bytes[:64] not in r.content
    key = base64.b64decode(entry["data_key"])
    assert b"".join(decrypt_stream([r.content], key, address)) == model_bytes

    # the other model stays closed to this node
    other_address = client.get(f"/api/v1/models/{other['full_name']}/versions/1.0.0").json()[
        "files"
    ][0]["sha256"]
    problem(
        client.get(f"{NODES}/assignments/{other_vid}", headers=bearer(token)), 403, "not_assigned"
    )
    problem(
        client.get(f"{NODES}/blobs/{other_address}", headers=bearer(token)), 403, "not_assigned"
    )

    # another operator's node gets nothing for the assigned version either
    _, token2 = new_node(client, api.user(), "box-2")
    register(client, token2)
    problem(client.get(f"{NODES}/assignments/{vid}", headers=bearer(token2)), 403, "not_assigned")
    problem(client.get(f"{NODES}/blobs/{address}", headers=bearer(token2)), 403, "not_assigned")

    # unassigning closes it again
    problem(client.delete(put, headers=op.headers), 403, "admin_required")
    assert client.delete(put, headers=admin.headers).status_code == 204
    problem(client.get(f"{NODES}/assignments/{vid}", headers=bearer(token)), 403, "not_assigned")
    problem(client.get(f"{NODES}/blobs/{address}", headers=bearer(token)), 403, "not_assigned")


def test_assignment_rules(client: TestClient, api: Api, db: Database, clock: TestClock) -> None:
    creator, op = api.user(), api.user()
    admin = make_admin(api, db)
    m = api.model(creator)
    api.version(creator, m["full_name"])
    api.upload(creator, m["full_name"], "1.0.0", "model.onnx", tiny_onnx())
    draft = version_id(client, creator, m["full_name"])
    node_id, token = new_node(client, op)
    # drafts change: never served by nodes
    problem(
        client.put(f"{NODES}/{node_id}/assignments/{draft}", headers=admin.headers),
        404,
        "version_not_found",
    )
    api.publish(creator, m["full_name"])
    put = f"{NODES}/{node_id}/assignments/{draft}"
    # a node that is not online takes no new assignments
    problem(client.put(put, headers=admin.headers), 409, "node_unavailable")
    register(client, token)
    client.post(f"{NODES}/{node_id}/drain", headers=op.headers)
    problem(client.put(put, headers=admin.headers), 409, "node_unavailable")
    client.post(f"{NODES}/{node_id}/resume", headers=op.headers)
    assert client.put(put, headers=admin.headers).status_code == 200
    [routable] = healthy(db, clock)
    assert routable.assigned == {uuid.UUID(draft)}
    # deleting the node drops its assignments
    assert client.delete(f"{NODES}/{node_id}", headers=admin.headers).status_code == 204
    problem(
        client.get(f"{NODES}/assignments/{draft}", headers=bearer(token)), 401, "invalid_node_token"
    )
    assert healthy(db, clock) == []


def test_rotating_a_leaked_token(
    client: TestClient, api: Api, db: Database, clock: TestClock
) -> None:
    op, other = api.user(), api.user()
    node_id, old = new_node(client, op)
    register(client, old)
    problem(client.post(f"{NODES}/{node_id}/token", headers=other.headers), 404, "node_not_found")
    problem(client.post(f"{NODES}/{node_id}/token"), 401, "not_authenticated")
    r = client.post(f"{NODES}/{node_id}/token", headers=op.headers)
    assert r.status_code == 200, r.text
    new = r.json()["token"]
    assert new != old
    assert new.startswith(r.json()["node"]["token_prefix"])
    assert r.json()["node"]["status"] == "pending"
    assert healthy(db, clock) == []  # out of routing until it registers with the new token
    problem(
        client.post(f"{NODES}/heartbeat", json={"load": 0}, headers=bearer(old)),
        401,
        "invalid_node_token",
    )
    problem(
        client.post(f"{NODES}/heartbeat", json={"load": 0}, headers=bearer(new)),
        409,
        "node_not_registered",
    )
    register(client, new)
    assert len(healthy(db, clock)) == 1


def test_the_gateway_assigns_before_a_cold_start(
    client: TestClient, api: Api, db: Database, clock: TestClock
) -> None:
    creator, op = api.user(), api.user()
    m = api.published_model(creator)
    vid = uuid.UUID(version_id(client, creator, m["full_name"]))
    _, token = new_node(client, op)
    register(client, token)
    [target] = healthy(db, clock)
    assert nodes.choose_node([target], version_id=vid) == target  # cold, but the only one
    with db.session() as s:
        assert nodes.ensure_assigned(s, node_id=target.id, version_id=vid) is True
        assert nodes.ensure_assigned(s, node_id=target.id, version_id=vid) is False
    assert client.get(f"{NODES}/assignments/{vid}", headers=bearer(token)).status_code == 200
    [target] = healthy(db, clock)
    assert target.assigned == {vid}
    with db.session() as s, pytest.raises(Exception, match="gone"):
        nodes.ensure_assigned(s, node_id=uuid.uuid4(), version_id=vid)
