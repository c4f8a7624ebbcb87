"""Rate limits per plan: demo callers, paying callers and a model's owner have buckets of their
own, so a demo caller cannot spend paid capacity (and is limited at the demo rate)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tests.gateway.conftest import GatewayStack, LedgerMeter
from tests.node.conftest import _account, serve

from cyxwiz.catalog.models import Model
from cyxwiz.inference.interfaces import Ticket
from cyxwiz.inference.ratelimit import Limit, MemoryRateLimiter, RedisRateLimiter
from cyxwiz.web.app import create_app

SIMPLE = "/api/v1/models/tiny-creator/iris/infer"
V2 = "/v2/models/tiny-creator--iris/infer"
ROWS = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
REDIS = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


needs_redis = pytest.mark.skipif(
    not _redis_up() and not os.environ.get("CYXWIZ_CI"),
    reason="no Redis at 127.0.0.1:6379 (CI has one, and there this test must run)",
)


@dataclass
class PlanMeter(LedgerMeter):
    """LedgerMeter granting tickets of metering's plans: ``owner`` for the model's owner,
    ``paid`` for API keys, ``demo`` for everyone else (no key: demo credits first, as
    UsageMeter does); records who reached ``authorize``."""

    owners: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)  # model id -> owner id
    authorized: list[uuid.UUID] = field(default_factory=list)

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
        ticket = await super().authorize(
            user_id=user_id,
            model_id=model_id,
            version_id=version_id,
            api_key_id=api_key_id,
            units=units,
        )
        if self.owners.get(model_id) == user_id:
            kind = "owner"
        else:
            kind = "paid" if api_key_id is not None else "demo"
        planned = dataclasses.replace(ticket, kind=kind)
        with self.lock:
            self.open[ticket.token] = planned
            self.authorized.append(user_id)
        return planned

    def reached(self, user_id: uuid.UUID) -> int:
        with self.lock:
            return self.authorized.count(user_id)


def _replica(gw: GatewayStack, meter: PlanMeter, **overrides: Any) -> str:
    """An API replica on the gateway stack's database with ``meter`` and these settings."""
    settings = gw.stack.settings.model_copy(update=overrides)
    served = serve(create_app(settings, database=gw.stack.db, meter=meter))
    gw.extra.append(served)
    return served.url


def _meter(gw: GatewayStack) -> PlanMeter:
    with gw.stack.db.session() as s:
        iris = s.scalars(select(Model).where(Model.name == "iris")).one()
        return PlanMeter(owners={iris.id: iris.owner_id})


def _user_id(gw: GatewayStack, headers: dict[str, str]) -> uuid.UUID:
    return uuid.UUID(gw.http.get("/api/v1/me", headers=headers).json()["id"])


def _rate_limited(r: httpx.Response, plan: str) -> dict[str, Any]:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["code"] == "rate_limited", body
    assert body["plan"] == plan
    assert int(r.headers["retry-after"]) >= 1
    return body


def test_demo_caller_is_limited_while_a_paid_caller_is_not(gw: GatewayStack) -> None:
    meter = _meter(gw)
    url = _replica(
        gw,
        meter,
        inference_demo_rate_per_second=0.05,
        inference_demo_burst=3,
        inference_rate_per_second=50.0,
        inference_burst=100,
    )
    demo = _account(gw.http, "plan-demo").headers  # an access token, no API key: demo calls
    paid = gw.auth()  # the buyer's API key: paid calls
    demo_id = _user_id(gw, demo)
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(3):
            r = http.post(SIMPLE, json=ROWS, headers=demo)
            assert r.status_code == 200, r.text
        body = _rate_limited(http.post(SIMPLE, json=ROWS, headers=demo), "demo")
        assert "demo" in body["detail"]
        assert "retry" in body["detail"]
        _rate_limited(http.post(V2, json={"inputs": []}, headers=demo), "demo")  # one bucket
        for _ in range(10):  # the same model, at the same time: the paying caller goes on
            r = http.post(SIMPLE, json=ROWS, headers=paid)
            assert r.status_code == 200, r.text
        _rate_limited(http.post(SIMPLE, json=ROWS, headers=demo), "demo")
    # the first call's plan is learnt from metering; refused calls never reach it after that
    assert meter.reached(demo_id) == 3
    assert len(meter.settled_for(demo_id)) == 3
    assert not meter.open
    assert not meter.errors


def test_a_demo_call_over_the_limit_gives_its_ticket_back(gw: GatewayStack) -> None:
    """The plan of a caller's first call is only known from its ticket: if that bucket is
    empty, the ticket is cancelled (a demo credit comes back) and the call is refused."""
    meter = _meter(gw)
    url = _replica(gw, meter, inference_demo_rate_per_second=0.05, inference_demo_burst=1)
    other = _replica(gw, meter, inference_demo_rate_per_second=0.05, inference_demo_burst=1)
    demo = _account(gw.http, "plan-demo-first").headers
    demo_id = _user_id(gw, demo)
    r = httpx.post(url + SIMPLE, json=ROWS, headers=demo, timeout=30)
    assert r.status_code == 200, r.text
    # another replica has not seen this caller: metering first, then the (own) demo bucket
    r = httpx.post(other + SIMPLE, json=ROWS, headers=demo, timeout=30)
    assert r.status_code == 200, r.text
    r = httpx.post(other + SIMPLE, json=ROWS, headers=demo, timeout=30)
    _rate_limited(r, "demo")
    assert meter.reached(demo_id) == 2
    assert len(meter.settled_for(demo_id)) == 2
    assert not meter.open
    assert not meter.errors


def test_the_owner_has_a_bucket_of_its_own(gw: GatewayStack) -> None:
    meter = _meter(gw)
    url = _replica(
        gw,
        meter,
        inference_owner_rate_per_second=0.05,
        inference_owner_burst=2,
        inference_demo_rate_per_second=0.05,
        inference_demo_burst=2,
    )
    owner = gw.stack.creator.headers
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(2):
            r = http.post(SIMPLE, json=ROWS, headers=owner)
            assert r.status_code == 200, r.text
        _rate_limited(http.post(SIMPLE, json=ROWS, headers=owner), "owner")
        demo = _account(gw.http, "plan-demo-2").headers
        for _ in range(2):
            r = http.post(SIMPLE, json=ROWS, headers=demo)
            assert r.status_code == 200, r.text
        _rate_limited(http.post(SIMPLE, json=ROWS, headers=demo), "demo")
    assert not meter.open
    assert not meter.errors


@needs_redis
def test_demo_limit_is_shared_by_replicas_in_redis(gw: GatewayStack) -> None:
    meter = _meter(gw)
    overrides: dict[str, Any] = {
        "redis_url": REDIS,
        "inference_demo_rate_per_second": 0.05,
        "inference_demo_burst": 2,
    }
    one, two = _replica(gw, meter, **overrides), _replica(gw, meter, **overrides)
    demo = _account(gw.http, "plan-demo-redis").headers
    answers = [httpx.post(u + SIMPLE, json=ROWS, headers=demo, timeout=30) for u in (one, two)]
    assert [a.status_code for a in answers] == [200, 200], answers[-1].text
    _rate_limited(httpx.post(one + SIMPLE, json=ROWS, headers=demo, timeout=30), "demo")
    _rate_limited(httpx.post(two + SIMPLE, json=ROWS, headers=demo, timeout=30), "demo")
    for url in (one, two, one, two):  # paid capacity is not the demo caller's
        r = httpx.post(url + SIMPLE, json=ROWS, headers=gw.auth(), timeout=30)
        assert r.status_code == 200, r.text
    assert not meter.open
    assert not meter.errors


# ---------------------------------------------------------------- the limiters themselves


def test_memory_limiter_keeps_each_buckets_own_limit() -> None:
    limiter = MemoryRateLimiter()
    small, large = Limit(rate=1.0, burst=2), Limit(rate=100.0, burst=5)
    assert [limiter.take_now("demo:k", small, 0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert [limiter.take_now("paid:k", large, 0.0) for _ in range(5)] == [0.0] * 5
    assert limiter.take_now("paid:k", large, 0.0) == pytest.approx(0.01)
    assert limiter.take_now("demo:k", small, 1.0) == 0.0  # one token back after 1 s
    with pytest.raises(ValueError, match="rate must be"):
        Limit(rate=0, burst=1)
    with pytest.raises(ValueError, match="rate must be"):
        Limit(rate=1, burst=0)


@needs_redis
def test_redis_limiter_takes_the_limit_per_call() -> None:
    prefix = f"cyxwiz:test:{uuid.uuid4().hex}:"

    async def run() -> tuple[list[float], list[float]]:
        a = RedisRateLimiter(url=REDIS, prefix=prefix)
        b = RedisRateLimiter(url=REDIS, prefix=prefix)  # another replica
        small, large = Limit(rate=0.5, burst=2), Limit(rate=1000.0, burst=50)
        try:
            demo = [await (a if i % 2 else b).take("demo:k", small) for i in range(3)]
            paid = [await a.take("paid:k", large) for _ in range(50)]
        finally:
            await a.close()
            await b.close()
        return demo, paid

    demo, paid = asyncio.run(run())
    assert demo[:2] == [0.0, 0.0]
    assert 1.0 < demo[2] <= 2.0  # 0.5 token/s: about 2 s until the next one
    assert paid == [0.0] * 50
