"""OIP model readiness (issue 9, item 13): ``GET /v2/models/{owner--name}[/versions/{v}]/ready``.

The attack: ``/v2/models/{anything}/ready`` answered ``{"ready": true}``, so anyone could probe
which names exist (and hidden models looked like served ones). Now, per the Open Inference
Protocol (200 = ready, an error status = not): 404 problem for a model the caller may not
see (unknown, someone else's private model, a draft with no published version, an unknown
version, a name that is not ``owner--name``), anonymous or authenticated; 200
``{"name", "ready": true}`` when a healthy node can serve it; 503 ``{"ready": false}`` while
no node can.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tests.gateway.conftest import GatewayStack, build_stack
from tests.gateway.paid import wait_until
from tests.node.conftest import TinyModels


@pytest.fixture(scope="module")
def ready_stack(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels
) -> Iterator[GatewayStack]:
    """No node at first (tests start one when they need it)."""
    for gs in build_stack(
        tmp_path_factory.mktemp("ready"),
        tiny_models,
        "ready",
        register_ip_max_accounts=10_000,  # every account here comes from 127.0.0.1
    ):
        st = gs.stack
        h = st.creator.headers
        # a private model, published
        r = st.http.post(
            "/api/v1/models",
            json={
                "name": "secret",
                "title": "Secret",
                "category": "tabular-classification",
                "visibility": "private",
            },
            headers=h,
        )
        assert r.status_code == 201, r.text
        full = r.json()["full_name"]
        assert (
            st.http.post(
                f"/api/v1/models/{full}/versions", json={"version": "1.0.0"}, headers=h
            ).status_code
            == 201
        )
        r = st.http.put(
            f"/api/v1/models/{full}/versions/1.0.0/files/model.onnx",
            content=tiny_models.iris,
            headers=h,
        )
        assert r.status_code in (200, 201), r.text
        r = st.http.post(f"/api/v1/models/{full}/versions/1.0.0/publish", headers=h)
        assert r.status_code == 200, r.text
        # a public model with a draft version only
        r = st.http.post(
            "/api/v1/models",
            json={
                "name": "drafty",
                "title": "Draft",
                "category": "tabular-classification",
                "visibility": "public",
            },
            headers=h,
        )
        assert r.status_code == 201, r.text
        r = st.http.post(
            "/api/v1/models/tiny-creator/drafty/versions", json={"version": "0.1.0"}, headers=h
        )
        assert r.status_code == 201, r.text
        yield gs


HIDDEN = [
    "tiny-creator--nope",  # unknown model
    "nobody--iris",  # unknown owner
    "tiny-creator--secret",  # someone else's private model
    "tiny-creator--drafty",  # no published version
    "iris",  # not owner--name
]


def _ready(gs: GatewayStack, name: str, headers: dict[str, str] | None = None) -> Any:
    return gs.http.get(f"/v2/models/{name}/ready", headers=headers or {})


@pytest.mark.parametrize("name", HIDDEN)
def test_unknown_and_hidden_models_are_404_anonymous(ready_stack: GatewayStack, name: str) -> None:
    r = _ready(ready_stack, name)
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] in ("model_not_found", "version_not_found")
    assert "ready" not in r.json()


@pytest.mark.parametrize("name", HIDDEN)
def test_unknown_and_hidden_models_are_404_authenticated(
    ready_stack: GatewayStack, name: str
) -> None:
    r = _ready(ready_stack, name, ready_stack.auth())  # the buyer's inference key
    assert r.status_code == 404, r.text
    assert r.json()["code"] in ("model_not_found", "version_not_found")


def test_unknown_versions_are_404(ready_stack: GatewayStack) -> None:
    gs = ready_stack
    r = gs.http.get("/v2/models/tiny-creator--iris/versions/9.9.9/ready")
    assert (r.status_code, r.json()["code"]) == (404, "version_not_found")
    r = gs.http.get("/v2/models/tiny-creator--drafty/versions/0.1.0/ready", headers=gs.auth())
    assert (r.status_code, r.json()["code"]) == (404, "version_not_found")  # a draft


def test_bad_credentials_are_401(ready_stack: GatewayStack) -> None:
    r = _ready(ready_stack, "tiny-creator--iris", {"Authorization": "Bearer cxw_sk_nope"})
    assert r.status_code == 401, r.text


def test_ready_follows_the_nodes_and_the_owner_sees_their_private_model(
    ready_stack: GatewayStack,
) -> None:
    gs = ready_stack
    owner_key, _ = gs.api_key(gs.stack.creator, ["inference"], name="ready-owner")
    owner = gs.auth(owner_key)
    admin_key, _ = gs.api_key(gs.stack.admin, ["inference"], name="ready-admin")
    admin = gs.auth(admin_key)

    # known and visible, but no node yet: not ready (503, OIP's "false")
    for name, headers in (
        ("tiny-creator--iris", None),
        ("tiny-creator--iris", gs.auth()),
        ("tiny-creator--secret", owner),
        ("tiny-creator--secret", admin),
    ):
        r = _ready(gs, name, headers)
        assert r.status_code == 503, (name, r.text)
        assert r.json() == {"name": name, "ready": False}

    gs.stack.start_node("ready-node")
    wait_until(  # the routing table is cached for inference_nodes_cache_seconds
        lambda: _ready(gs, "tiny-creator--iris").status_code == 200, what="ready"
    )
    r = _ready(gs, "tiny-creator--iris")
    assert (r.status_code, r.json()) == (200, {"name": "tiny-creator--iris", "ready": True})
    r = gs.http.get("/v2/models/tiny-creator--iris/versions/1.0.0/ready", headers=gs.auth())
    assert (r.status_code, r.json()["ready"]) == (200, True)
    for headers in (owner, admin):
        r = _ready(gs, "tiny-creator--secret", headers)
        assert (r.status_code, r.json()["ready"]) == (200, True)
    # still hidden from everyone else
    assert _ready(gs, "tiny-creator--secret").status_code == 404
    assert _ready(gs, "tiny-creator--secret", gs.auth()).status_code == 404
    assert _ready(gs, "tiny-creator--nope", owner).status_code == 404
