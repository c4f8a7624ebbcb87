"""Demo-credit farming (issue 9, item 9, second half), with the real meter and a real node.

The attack: every new account gets ``demo_credits_per_model`` free calls on every model, so
registering many accounts farms free inference. Now demo rows are also taken from daily budgets
shared by every account: per client IP (``demo_ip_daily_rows``; the socket peer, or the
X-Forwarded-For hop the trusted proxies vouch for) and per model (``demo_model_daily_rows``).
A spent budget answers 429 ``demo_budget_exhausted`` with ``Retry-After`` (the next UTC
midnight) and spends nothing; paid callers are never affected; a demo call that fails gives
its rows back. The counters live in the process, or in Redis when configured.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from tests.gateway.paid import PaidStack, build_paid_stack
from tests.node.conftest import Served, TinyModels, serve

from cyxwiz.inference.demo_budget import (
    BudgetKey,
    MemoryDemoBudget,
    RedisDemoBudget,
    seconds_to_midnight,
)
from cyxwiz.web.app import create_app

PRICE = 1_000_000
IP_ROWS = 6
ROW = [5.1, 3.5, 1.4, 0.2]
REDIS = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def paid(tmp_path_factory: pytest.TempPathFactory, tiny_models: TinyModels) -> Iterator[PaidStack]:
    for st in build_paid_stack(
        tmp_path_factory.mktemp("demo-budget"),
        tiny_models,
        "demobudget",
        price=PRICE,
        demo_credits_per_model=10,
        demo_ip_daily_rows=IP_ROWS,
        inference_demo_burst=1000,
        inference_demo_rate_per_second=1000.0,
        register_ip_max_accounts=10_000,  # every account here comes from 127.0.0.1
    ):
        st.stack.publish("free-iris", {"model.onnx": tiny_models.iris})  # no price: demo only
        st.stack.start_node("demo-budget-node")
        yield st


def _free(paid: PaidStack) -> str:
    return f"/api/v1/models/{paid.stack.creator.username}/free-iris/infer"


def _call(http: httpx.Client, path: str, who: Any, rows: int, **headers: str) -> httpx.Response:
    return http.post(path, json={"inputs": [ROW] * rows}, headers={**who.headers, **headers})


def test_many_accounts_from_one_ip_share_one_daily_demo_budget(paid: PaidStack) -> None:
    farm = [paid.account(f"farm-{i}") for i in range(4)]
    path = _free(paid)
    for who in farm[:3]:  # 3 accounts × 2 rows = the IP's 6 rows of the day
        r = _call(paid.http, path, who, 2)
        assert r.status_code == 200, r.text
    fresh = farm[3]  # a brand-new account, all its own credits left
    before = paid.meter.stats.authorized
    r = _call(paid.http, path, fresh, 1)
    assert r.status_code == 429, r.text
    body = r.json()
    assert (body["code"], body["scope"], body["limit"]) == ("demo_budget_exhausted", "ip", IP_ROWS)
    retry = int(r.headers["retry-after"])
    assert abs(retry - seconds_to_midnight(datetime.now(UTC))) <= 5  # the next UTC midnight
    assert paid.meter.stats.authorized == before  # no ticket, nothing recorded
    assert paid.events(fresh) == []
    free = f"{paid.stack.creator.username}/free-iris"
    credits = paid.http.get(f"/api/v1/demo-credits/{free}", headers=fresh.headers).json()
    assert credits["used"] == 0  # its own credits untouched
    # the v2 form and the playground's owner are budgeted alike; the model's owner is not
    r = paid.http.post(
        f"/v2/models/{paid.stack.creator.username}--free-iris/infer",
        json={"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ROW}]},
        headers=fresh.headers,
    )
    assert (r.status_code, r.json()["code"]) == (429, "demo_budget_exhausted")
    r = _call(paid.http, path, paid.stack.creator, 3)
    assert r.status_code == 200, r.text  # owner calls are not demo calls


def test_paid_callers_are_unaffected(paid: PaidStack) -> None:
    # the IP's demo budget is spent by the test above (same process, same day) or now
    spender = paid.account("budget-spender")
    for _ in range(IP_ROWS):
        _call(paid.http, _free(paid), spender, 1)
    assert _call(paid.http, _free(paid), spender, 1).status_code == 429
    buyer = paid.account("budget-buyer")
    paid.fund(buyer, 1_000_000)
    key = paid.inference_key(buyer)
    r = paid.http.post(f"/api/v1/models/{paid.model}/infer", json={"inputs": [ROW]}, headers=key)
    assert r.status_code == 200, r.text
    [event] = paid.events(buyer)
    assert event.kind == "paid"
    # a signed-in caller without an API key on a priced model: the demo budget is spent, so
    # the call is paid from the balance (as when demo credits run out)
    r = paid.http.post(
        f"/api/v1/models/{paid.model}/infer", json={"inputs": [ROW]}, headers=buyer.headers
    )
    assert r.status_code == 200, r.text
    assert sorted(e.kind for e in paid.events(buyer)) == ["paid", "paid"]
    # ... and without money, the budget's 429 says why no demo call was possible
    broke = paid.account("budget-broke")
    r = paid.http.post(
        f"/api/v1/models/{paid.model}/infer", json={"inputs": [ROW]}, headers=broke.headers
    )
    assert (r.status_code, r.json()["code"]) == (429, "demo_budget_exhausted")


@pytest.fixture(scope="module")
def proxied(paid: PaidStack) -> Iterator[tuple[str, Any]]:
    """A second replica behind one trusted proxy, with a small per-model demo budget."""
    settings = paid.settings.model_copy(
        update={"trusted_proxy_count": 1, "demo_model_daily_rows": 10}
    )
    app = create_app(settings, database=paid.db)
    served: Served = serve(app)
    try:
        yield served.url, app
    finally:
        served.stop()


def test_budgets_per_ip_behind_a_proxy_and_per_model(
    paid: PaidStack, proxied: tuple[str, Any]
) -> None:
    url, _app = proxied
    path = _free(paid)
    users = [paid.account(f"proxied-{i}") for i in range(4)]
    with httpx.Client(base_url=url, timeout=30) as http:
        a = {"X-Forwarded-For": "198.51.100.1"}
        b = {"X-Forwarded-For": "spoofed, 198.51.100.2"}  # only the proxy's hop is believed
        assert _call(http, path, users[0], IP_ROWS, **a).status_code == 200
        r = _call(http, path, users[1], 1, **a)
        assert (r.status_code, r.json()["scope"]) == (429, "ip")
        # a failed demo call (the node refuses the input) gives its rows back
        bad = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "INT64", "data": [1] * 4}]}
        model = f"{paid.stack.creator.username}--free-iris"
        r = http.post(f"/v2/models/{model}/infer", json=bad, headers={**users[2].headers, **b})
        assert r.status_code == 400, r.text
        assert _call(http, path, users[2], 4, **b).status_code == 200  # 4 of IP b's 6
        # the model's 10 rows of the day are spent (6 + 4): any IP is refused now
        r = _call(http, path, users[3], 1, **{"X-Forwarded-For": "198.51.100.3"})
        assert r.status_code == 429, r.text
        assert (r.json()["code"], r.json()["scope"]) == ("demo_budget_exhausted", "model")
        assert "Retry-After" in r.headers


async def _exercise(budget: Any) -> None:
    day = f"test-{uuid.uuid4().hex}"
    ip = BudgetKey(f"ip:{uuid.uuid4().hex}", 5, "ip")
    model = BudgetKey(f"model:{uuid.uuid4().hex}", 7, "model")
    assert await budget.take([ip, model], 3, day=day) is None
    assert await budget.take([ip, model], 3, day=day) == ip  # all or none: nothing taken
    assert await budget.take([model], 4, day=day) is None  # the model had 4 left
    assert await budget.take([ip, model], 1, day=day) == model
    await budget.give_back([ip, model], 3, day=day)
    assert await budget.take([ip, model], 3, day=day) is None
    other = f"{day}-next"
    assert await budget.take([ip, model], 5, day=other) is None  # a new day, fresh budgets
    await budget.close()


def test_memory_budget_semantics() -> None:
    asyncio.run(_exercise(MemoryDemoBudget()))


@pytest.mark.skipif(
    not _redis_up() and not os.environ.get("CYXWIZ_CI"),
    reason="no Redis at 127.0.0.1:6379 (CI has one, and there this test must run)",
)
def test_redis_budget_semantics_shared_by_replicas() -> None:
    async def both() -> None:
        await _exercise(RedisDemoBudget(url=REDIS))
        one, two = RedisDemoBudget(url=REDIS), RedisDemoBudget(url=REDIS)
        day, key = uuid.uuid4().hex, BudgetKey(f"ip:{uuid.uuid4().hex}", 4, "ip")
        assert await one.take([key], 3, day=day) is None
        assert await two.take([key], 2, day=day) == key  # the second replica sees the first
        assert await two.take([key], 1, day=day) is None
        await one.close()
        await two.close()

    asyncio.run(both())
