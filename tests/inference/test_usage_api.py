"""The usage routes (buyers, creators, node operators, demo credits): who may see what, and
per-use offers through PUT /api/v1/models/{owner}/{name}/offers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.inference.metering import UsageMeter
from cyxwiz.ledger import service as ledger
from tests.factories import Api
from tests.inference.test_metering import PER_CALL_1000, World, make_world
from tests.web.test_api_auth import problem


@pytest.fixture(autouse=True)
def ledger_stays_clean(db: Database) -> Iterator[None]:
    yield
    with db.session() as s:
        report = ledger.check(s)
    assert report.ok, report.problems


def api_key(client: TestClient, w: World) -> uuid.UUID:
    r = client.post(
        "/api/v1/api-keys",
        json={"name": "prod", "scopes": ["read", "inference"]},
        headers=w.buyer.headers,
    )
    assert r.status_code == 201, r.text
    return uuid.UUID(r.json()["id"])


def drive(db: Database, settings: Settings, w: World, key: uuid.UUID, paid: int, demo: int) -> None:
    """``paid`` calls with the API key (node 0 serves them) and ``demo`` playground calls."""
    meter = UsageMeter(db, settings.model_copy(update={"demo_credits_per_model": 5}))

    async def scenario() -> None:
        for i in range(paid + demo):
            t = await meter.authorize(
                user_id=w.uid(w.buyer),
                model_id=w.model_id,
                version_id=w.version_id,
                api_key_id=key if i < paid else None,
                units=1,
            )
            await meter.settle(t, request_id=f"u{i}", node_id=w.nodes[0], units=1)
        await meter.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------- offers


def test_per_use_offers_are_validated_and_shown(api: Api, client: TestClient) -> None:
    ada, bob = api.user(), api.user()
    m = api.published_model(ada)["full_name"]
    url = f"/api/v1/models/{m}/offers"
    assert client.get(url).json() == {"free": True, "one_time": None, "one_time_cyx": None}
    r = client.put(url, json={"per_1k_requests": {"amount": 1_500_000}}, headers=ada.headers)
    assert r.status_code == 200, r.text
    got = client.get(url).json()
    assert got["per_1k_requests"] == {
        "amount": 1_500_000,
        "currency": "USDC",
        "display": "1.50 USDC",
    }
    assert "per_1k_tokens" not in got
    assert got["free"] is True
    both = {"per_1k_requests": {"amount": 1}, "per_1k_tokens": {"amount": 1}}
    problem(client.put(url, json=both, headers=ada.headers), 422, "invalid_offer")
    cyx = {"per_1k_tokens": {"amount": 5, "currency": "CYX"}}
    problem(client.put(url, json=cyx, headers=ada.headers), 422, "invalid_offer")
    problem(
        client.put(url, json={"per_1k_tokens": {"amount": 0}}, headers=ada.headers),
        422,
        "validation_error",
    )
    r = client.put(url, json={"per_1k_tokens": {"amount": 5}}, headers=bob.headers)
    assert r.status_code in (403, 404), r.text
    r = client.put(
        url,
        json={"one_time": {"amount": 9_000_000}, "per_1k_tokens": {"amount": 20_000}},
        headers=ada.headers,
    )
    assert r.status_code == 200, r.text
    got = client.get(url).json()
    assert got["one_time"]["amount"] == 9_000_000
    assert got["per_1k_tokens"]["amount"] == 20_000
    assert "per_1k_requests" not in got  # a PUT replaces the whole document


# ---------------------------------------------------------------- buyers


def test_buyer_usage_grouped_by_model_day_and_key(
    api: Api, client: TestClient, db: Database, settings: Settings
) -> None:
    w = make_world(api, db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=10**6)
    key = api_key(client, w)
    drive(db, settings, w, key, paid=4, demo=2)

    by_model = client.get("/api/v1/usage?group_by=model", headers=w.buyer.headers).json()
    [row] = by_model["items"]
    assert row["model"] == w.full_name
    assert (row["calls"], row["paid_calls"], row["demo_calls"], row["units"]) == (6, 4, 2, 6)
    assert row["spent"] == {"USDC": 4000}
    assert by_model["total"]["spent"] == {"USDC": 4000}

    by_key = client.get("/api/v1/usage?group_by=key", headers=w.buyer.headers).json()
    keyed = {r["key_id"]: r for r in by_key["items"]}
    assert keyed[str(key)]["key_name"] == "prod"
    assert keyed[str(key)]["calls"] == 4
    assert keyed[None]["calls"] == 2
    assert keyed[None]["spent"] == {}

    by_day = client.get("/api/v1/usage?group_by=day", headers=w.buyer.headers).json()
    [day] = by_day["items"]
    assert day["calls"] == 6
    d = day["day"]
    assert (
        client.get(f"/api/v1/usage?from={d}&to={d}", headers=w.buyer.headers).json()["total"][
            "calls"
        ]
        == 6
    )
    empty = client.get("/api/v1/usage?from=2000-01-01&to=2000-01-02", headers=w.buyer.headers)
    assert empty.json()["items"] == []

    # nobody else sees this usage; anonymous callers and bad parameters are refused
    assert client.get("/api/v1/usage", headers=w.owner.headers).json()["items"] == []
    problem(client.get("/api/v1/usage"), 401, "not_authenticated")
    problem(
        client.get("/api/v1/usage?group_by=nope", headers=w.buyer.headers), 422, "validation_error"
    )
    problem(
        client.get("/api/v1/usage?from=2026-02-02&to=2026-02-01", headers=w.buyer.headers),
        422,
        "invalid_range",
    )


# ---------------------------------------------------------------- creators and operators


def test_creator_usage_and_operator_earnings(
    api: Api, client: TestClient, db: Database, settings: Settings
) -> None:
    w = make_world(
        api,
        db,
        offers={"per_1k_requests": {"amount": PER_CALL_1000}},
        fund=10**6,
        split=(6000, 4000),
    )
    key = api_key(client, w)
    drive(db, settings, w, key, paid=10, demo=1)

    owner_view = client.get("/api/v1/creator/usage", headers=w.owner.headers).json()
    [row] = owner_view["items"]
    assert row["model"] == w.full_name
    assert (row["calls"], row["paid_calls"], row["demo_calls"]) == (11, 10, 1)
    assert row["revenue"] == {"USDC": 10_000}
    creators = 10_000 - 2000 - 3000  # platform 20%, compute 30%
    assert row["my_earnings"] == {"USDC": creators * 6000 // 10_000}
    cy_view = client.get("/api/v1/creator/usage", headers=w.cy.headers).json()
    assert cy_view["items"][0]["my_earnings"] == {"USDC": creators * 4000 // 10_000}
    assert client.get("/api/v1/creator/usage", headers=w.buyer.headers).json()["items"] == []
    problem(client.get("/api/v1/creator/usage"), 401, "not_authenticated")

    op = client.get("/api/v1/operator/earnings", headers=w.operator.headers).json()
    [node] = op["nodes"]
    assert node["node_id"] == str(w.nodes[0])
    assert (node["calls"], node["units"], node["earned"]) == (11, 11, {"USDC": 3000})
    assert op["balance"]["USDC"]["available"] == 3000
    other = client.get("/api/v1/operator/earnings", headers=w.operator2.headers).json()
    assert [(n["calls"], n["earned"]) for n in other["nodes"]] == [(0, {})]
    assert other["balance"]["USDC"]["available"] == 0
    assert client.get("/api/v1/operator/earnings", headers=w.buyer.headers).json()["nodes"] == []
    problem(client.get("/api/v1/operator/earnings"), 401, "not_authenticated")


# ---------------------------------------------------------------- demo credits


def test_demo_credits_route(api: Api, client: TestClient, db: Database, settings: Settings) -> None:
    w = make_world(api, db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=10**6)
    url = f"/api/v1/demo-credits/{w.full_name}"
    limit = settings.demo_credits_per_model
    fresh = client.get(url, headers=w.buyer.headers).json()
    assert fresh == {"model": w.full_name, "limit": limit, "used": 0, "remaining": limit}
    key = api_key(client, w)
    drive(db, settings, w, key, paid=1, demo=2)
    assert client.get(url, headers=w.buyer.headers).json()["remaining"] == limit - 2
    assert client.get(url, headers=w.owner.headers).json()["remaining"] == limit  # per user
    problem(client.get(url), 401, "not_authenticated")
    problem(
        client.get(f"/api/v1/demo-credits/{w.owner.username}/nope", headers=w.buyer.headers),
        404,
        "model_not_found",
    )
    hidden = api.model(w.owner)["full_name"]  # a draft: invisible to others
    problem(
        client.get(f"/api/v1/demo-credits/{hidden}", headers=w.buyer.headers),
        404,
        "model_not_found",
    )
