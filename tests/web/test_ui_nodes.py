"""The node status page (/nodes), driven like a browser without JavaScript: who may see which
nodes, what each shows (status, heartbeat age, load, warm and assigned models), and the
CSRF-checked drain/resume buttons changing what the gateway may route to."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.inference import service as nodes
from tests.factories import Account, Api
from tests.inference.test_nodes_api import bearer, make_admin, new_node, register, version_id
from tests.web.test_ui import Browser
from tests.web.test_ui_money import form_fields, forms

Response = object


@pytest.fixture
def new_browser(app: FastAPI, client: TestClient) -> Iterator[Callable[[Account], Browser]]:
    """A browser signed in as ``account`` (each with its own cookie jar); ``client``'s
    lifespan outlives theirs."""
    opened: list[TestClient] = []

    def make(account: Account) -> Browser:
        c = TestClient(app, raise_server_exceptions=False)
        c.__enter__()
        opened.append(c)
        b = Browser(c)
        r = b.login(account.username)
        assert r.status_code == 303, r.text
        return b

    yield make
    for c in opened:
        c.__exit__(None, None, None)


def _card(page: str, node_id: str) -> str:
    """The HTML of one node's card on the page."""
    for chunk in page.split('<li class="panel node-card" ')[1:]:
        if chunk.startswith(f'id="node-{node_id}"'):
            return chunk
    raise AssertionError(f"node {node_id} is not on the page")


def _status(page: str, node_id: str) -> str:
    m = re.search(r'data-status="(\w+)"', _card(page, node_id))
    assert m
    return m.group(1)


def _nav_has_nodes(page: str) -> bool:
    return 'href="/nodes"' in page


@pytest.fixture
def world(client: TestClient, api: Api, db: Database) -> dict[str, object]:
    """An admin, two operators (op1 with an online node and a pending one, op2 with one
    online node and a published model), and a user who runs nothing."""
    admin = make_admin(api, db)
    op1, op2, nobody = api.user(), api.user(), api.user()
    model = api.published_model(op2)
    vid = version_id(client, op2, model["full_name"])
    live_id, live_token = new_node(client, op1, "box-live")
    pending_id, _ = new_node(client, op1, "box-pending")
    other_id, other_token = new_node(client, op2, "box-other")
    register(client, live_token, url="http://10.0.0.7:8801", capacity=8)
    register(client, other_token, url="http://10.0.0.9:8801")
    r = client.put(f"/api/v1/nodes/{live_id}/assignments/{vid}", headers=admin.headers)
    assert r.status_code == 200, r.text
    r = client.post(
        "/api/v1/nodes/heartbeat", json={"load": 3, "warm": [vid]}, headers=bearer(live_token)
    )
    assert r.status_code == 200, r.text
    return {
        "admin": admin,
        "op1": op1,
        "op2": op2,
        "nobody": nobody,
        "model": f"{model['full_name']}@1.0.0",
        "live": live_id,
        "pending": pending_id,
        "other": other_id,
        "live_token": live_token,
    }


def test_anonymous_visitors_are_sent_to_sign_in(
    client: TestClient, world: dict[str, object]
) -> None:
    b = Browser(client)
    r = b.get("/nodes")
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=/nodes"
    r = b.post(f"/nodes/{world['live']}/drain")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login")


def test_a_user_without_nodes_sees_the_empty_state_and_no_nav_link(
    new_browser: Callable[[Account], Browser], world: dict[str, object]
) -> None:
    b = new_browser(world["nobody"])  # type: ignore[arg-type]
    r = b.get("/nodes")
    assert r.status_code == 200
    assert "You run no inference nodes" in r.text
    assert "box-live" not in r.text
    assert "box-other" not in r.text
    assert not forms(r.text, f"/nodes/{world['live']}/drain")
    assert not _nav_has_nodes(b.get("/models").text)


def test_operators_see_their_own_nodes_with_status_load_and_models(
    new_browser: Callable[[Account], Browser], world: dict[str, object], clock: TestClock
) -> None:
    clock.advance(timedelta(seconds=4))
    b = new_browser(world["op1"])  # type: ignore[arg-type]
    assert _nav_has_nodes(b.get("/models").text)
    r = b.get("/nodes")
    assert r.status_code == 200
    assert "box-other" not in r.text  # op2's node is not theirs
    live = _card(r.text, str(world["live"]))
    assert _status(r.text, str(world["live"])) == "online"
    assert "http://10.0.0.7:8801" in live
    assert "4.0 s ago" in live  # last heartbeat age on the app's clock
    assert '<span class="node-load">3 / 8</span>' in live
    assert f'node-warm"><li class="chip mono">{world["model"]}</li>' in live
    assert f'node-assigned"><li class="chip mono">{world["model"]}</li>' in live
    assert f"@{world['op1'].username}" in live  # type: ignore[attr-defined]
    assert _status(r.text, str(world["pending"])) == "pending"
    assert "never" in _card(r.text, str(world["pending"]))


def test_admins_see_every_node(
    new_browser: Callable[[Account], Browser], world: dict[str, object]
) -> None:
    b = new_browser(world["admin"])  # type: ignore[arg-type]
    assert _nav_has_nodes(b.get("/models").text)  # admins get the link without running nodes
    r = b.get("/nodes")
    assert r.status_code == 200
    assert "Every node on the network" in r.text
    for key in ("live", "pending", "other"):
        _card(r.text, str(world[key]))
    assert f"@{world['op2'].username}" in _card(r.text, str(world["other"]))  # type: ignore[attr-defined]


def test_drain_and_resume_buttons_change_routing(
    client: TestClient,
    new_browser: Callable[[Account], Browser],
    world: dict[str, object],
    db: Database,
    clock: TestClock,
) -> None:
    live = str(world["live"])
    op1: Account = world["op1"]  # type: ignore[assignment]
    b = new_browser(op1)
    page = b.get("/nodes").text
    r = b.post(f"/nodes/{live}/drain", form_fields(page, f"/nodes/{live}/drain", "Drain"))
    assert r.status_code == 303, r.text
    assert r.headers["location"] == f"/nodes#node-{live}"
    page = b.get("/nodes").text
    assert "is draining" in page  # the flash
    assert _status(page, live) == "draining"
    assert forms(page, f"/nodes/{live}/resume")
    assert not forms(page, f"/nodes/{live}/drain")
    assert client.get(f"/api/v1/nodes/{live}", headers=op1.headers).json()["status"] == "draining"
    with db.session() as s:
        assert live not in {str(n.id) for n in nodes.healthy_nodes(s, now=clock.now())}

    r = b.post(f"/nodes/{live}/resume", form_fields(page, f"/nodes/{live}/resume", "Resume"))
    assert r.status_code == 303, r.text
    page = b.get("/nodes").text
    assert _status(page, live) == "online"
    with db.session() as s:
        assert live in {str(n.id) for n in nodes.healthy_nodes(s, now=clock.now())}


def test_nobody_else_may_drain_and_a_form_without_csrf_changes_nothing(
    client: TestClient, new_browser: Callable[[Account], Browser], world: dict[str, object]
) -> None:
    live = str(world["live"])
    op1: Account = world["op1"]  # type: ignore[assignment]
    for who in ("op2", "nobody"):
        b = new_browser(world[who])  # type: ignore[arg-type]
        r = b.post(f"/nodes/{live}/drain")
        assert r.status_code == 404, r.text  # someone else's node does not exist for them
        assert "text/html" in r.headers["content-type"]
    b = new_browser(op1)
    r = b.post(f"/nodes/{live}/drain", csrf=False)
    assert r.status_code == 403
    r = b.post("/nodes/not-a-uuid/drain")
    assert r.status_code == 404
    assert client.get(f"/api/v1/nodes/{live}", headers=op1.headers).json()["status"] == "online"


def test_missed_heartbeats_show_offline_then_evicted(
    client: TestClient,
    new_browser: Callable[[Account], Browser],
    world: dict[str, object],
    db: Database,
    clock: TestClock,
    settings: Settings,
) -> None:
    live = str(world["live"])
    b = new_browser(world["op1"])  # type: ignore[arg-type]
    clock.advance(timedelta(seconds=settings.inference_node_stale_seconds + 1))
    page = b.get("/nodes").text
    assert _status(page, live) == "offline"  # out of routing; the page itself writes nothing
    with db.session() as s:
        nodes.evict_stale(s, now=clock.now(), timeout=settings.inference_node_stale_seconds)
    page = b.get("/nodes").text
    assert _status(page, live) == "evicted"
    r = client.post(
        "/api/v1/nodes/heartbeat",
        json={"load": 0, "warm": []},
        headers=bearer(str(world["live_token"])),
    )
    assert r.status_code == 200, r.text
    assert _status(b.get("/nodes").text, live) == "online"  # back with its next heartbeat
