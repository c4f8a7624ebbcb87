"""Metering against the real ledger: exact cutoff (also concurrent, also across replicas),
partial blocks, cancel never bills, replays counted once, exact splits, demo credits, close."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from cyxwiz.accounts.service import get_user_by_username
from cyxwiz.billing import flows
from cyxwiz.catalog.service import find_model
from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database, make_engine
from cyxwiz.inference.interfaces import Meter, Ticket
from cyxwiz.inference.metering import QuotaExhausted, UsageMeter, cost, count_tokens
from cyxwiz.inference.usage_models import DemoCredit, UsageEvent
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.service import InsufficientFunds
from cyxwiz.migrate import upgrade
from cyxwiz.money import Currency, allocate, bps_of
from cyxwiz.web.app import create_app
from tests.factories import Account, Api
from tests.inference.test_nodes_api import approve_operator

USDC = Currency.USDC
PER_CALL_1000 = 1_000_000  # per 1k requests: 1000 minor units (0.001 USDC) per call
PG_URL = os.environ.get("CYXWIZ_TEST_DATABASE_URL")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(autouse=True)
def ledger_stays_clean(db: Database) -> Iterator[None]:
    yield
    with db.session() as s:
        report = ledger.check(s)
    assert report.ok, report.problems


@dataclass
class World:
    api: Api
    db: Database
    owner: Account
    cy: Account
    buyer: Account
    operator: Account
    operator2: Account
    full_name: str
    model_id: uuid.UUID
    version_id: uuid.UUID
    ids: dict[str, uuid.UUID]
    nodes: list[uuid.UUID]

    def uid(self, who: Account) -> uuid.UUID:
        return self.ids[who.username]


def make_world(
    api: Api,
    db: Database,
    *,
    offers: dict[str, Any] | None = None,
    fund: int = 0,
    split: tuple[int, int] | None = None,
) -> World:
    """A model of ``owner`` (optionally shared with ``cy``), a buyer funded with ``fund``,
    and two nodes of two operators."""
    client = api.client
    owner, cy, buyer, op1, op2 = api.user(), api.user(), api.user(), api.user(), api.user()
    m = api.published_model(owner)
    full = m["full_name"]
    if split is not None:
        r = client.patch(
            f"/api/v1/models/{full}",
            json={
                "contributors": [
                    {"username": owner.username, "share_bps": split[0]},
                    {"username": cy.username, "share_bps": split[1]},
                ]
            },
            headers=owner.headers,
        )
        assert r.status_code == 200, r.text
    if offers is not None:
        r = client.put(f"/api/v1/models/{full}/offers", json=offers, headers=owner.headers)
        assert r.status_code == 200, r.text
    if fund:
        api.fund(buyer, fund)  # a deposit from a wallet holding test tokens on the app's chain
    nodes = []
    for op in (op1, op2):
        approve_operator(client, op)  # running nodes is a trust tier an admin grants
        r = client.post("/api/v1/nodes", json={"name": "box"}, headers=op.headers)
        assert r.status_code == 201, r.text
        nodes.append(uuid.UUID(r.json()["node"]["id"]))
    ids = {}
    with db.session() as s:
        for acc in (owner, cy, buyer, op1, op2):
            user = get_user_by_username(s, acc.username)
            assert user is not None
            ids[acc.username] = user.id
        model = find_model(s, owner=owner.username, name=m["name"])
        assert model is not None
        assert model.latest_version is not None
        model_id, version_id = model.id, model.latest_version.id
    return World(api, db, owner, cy, buyer, op1, op2, full, model_id, version_id, ids, nodes)


def meter_for(
    db: Database, settings: Settings, concurrency: int = 1, **overrides: Any
) -> UsageMeter:
    return UsageMeter(db, settings.model_copy(update=overrides), db_concurrency=concurrency)


def bal(db: Database, code: str) -> ledger.Balance:
    with db.session() as s:
        return ledger.balance_of_code(s, code, USDC)


def user_bal(w: World, who: Account) -> ledger.Balance:
    return bal(w.db, flows.user_code(w.uid(who), USDC))


def earn(w: World, who: Account) -> int:
    return bal(w.db, flows.earnings_code(w.uid(who), USDC)).posted


def node_earn(w: World, who: Account) -> int:
    return bal(w.db, flows.node_earnings_code(w.uid(who), USDC)).posted


def revenue(w: World) -> int:
    return bal(w.db, "platform:revenue:USDC").posted


def hold(w: World) -> ledger.Balance:
    return bal(w.db, "platform:metering:USDC")


async def call(
    meter: Meter,
    w: World,
    who: Account | None = None,
    *,
    units: int = 1,
    key: uuid.UUID | None = None,
) -> Ticket:
    return await meter.authorize(
        user_id=w.uid(who or w.buyer),
        model_id=w.model_id,
        version_id=w.version_id,
        api_key_id=key,
        units=units,
    )


def run(fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(fn())  # type: ignore[arg-type]


API_KEY = uuid.UUID(int=7)  # usage events keep the key id as a plain value


# ---------------------------------------------------------------- units


def test_count_tokens_is_utf8_bytes_over_four_rounded_up() -> None:
    assert count_tokens("abcd") == 1
    assert count_tokens("abcde") == 2
    assert count_tokens("") == 1  # every string counts at least 1
    assert count_tokens("ééé") == 2  # 6 bytes
    assert count_tokens(["ab", "cd"]) == 2
    assert count_tokens({"text": ["x" * 9], "lang": "en"}) == 4  # keys are not counted
    assert count_tokens([1.5, 2, None, True]) == 1  # no strings: a call is at least 1
    assert cost(1, 1) == 1
    assert cost(1000, 1) == 1
    assert cost(1001, 1) == 2
    assert cost(3, 1_234_567) == 3704  # ceil(3703.701)


# ---------------------------------------------------------------- cutoff


def test_balance_covering_k_calls_allows_k_then_402(
    api: Api, db: Database, settings: Settings
) -> None:
    k = 7
    w = make_world(api, db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=k * 1000)
    meter = meter_for(db, settings, reservation_requests=3)

    async def scenario() -> None:
        for i in range(k):
            t = await call(meter, w, key=API_KEY)
            assert (t.kind, t.units, t.unit, t.currency) == ("paid", 1, "request", "USDC")
            await meter.settle(t, request_id=f"r{i}", node_id=w.nodes[0], units=1)
        with pytest.raises(InsufficientFunds) as err:
            await call(meter, w, key=API_KEY)
        assert err.value.status == 402
        assert err.value.code == "insufficient_funds"
        assert user_bal(w, w.buyer).available == 0  # all reserved, nothing overdrawn
        await meter.flush()
        b = user_bal(w, w.buyer)
        assert (b.posted, b.pending_debits) == (0, 0)  # 3 blocks (3+3+1) fully used and posted
        with pytest.raises(InsufficientFunds):
            await call(meter, w, key=API_KEY)
        await meter.close()

    run(scenario)
    # 1000 per call: 200 platform, 300 compute, 500 creator — exact, per block
    assert revenue(w) == k * 200
    assert node_earn(w, w.operator) == k * 300
    assert earn(w, w.owner) == k * 500
    assert hold(w).posted == 0
    assert hold(w).pending_credits == 0


def test_partial_block_covers_what_the_balance_covers(
    api: Api, db: Database, settings: Settings
) -> None:
    w = make_world(api, db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=2500)
    meter = meter_for(db, settings, reservation_requests=100)

    async def scenario() -> None:
        a = await call(meter, w, key=API_KEY)
        [block] = meter.reserved()[(w.uid(w.buyer), w.model_id)]
        assert (block.capacity, block.amount) == (2, 2000)  # not 100 calls: 2 are affordable
        b = await call(meter, w, key=API_KEY)
        with pytest.raises(InsufficientFunds):
            await call(meter, w, key=API_KEY)  # 500 left: less than one call
        await meter.settle(a, request_id="a", node_id=w.nodes[0], units=1)
        await meter.settle(b, request_id="b", node_id=w.nodes[0], units=1)
        await meter.close()

    run(scenario)
    b = user_bal(w, w.buyer)
    assert (b.posted, b.pending_debits, b.available) == (500, 0, 500)


def test_cancel_never_bills_and_returns_capacity(
    api: Api, db: Database, settings: Settings
) -> None:
    w = make_world(api, db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=1000)
    meter = meter_for(db, settings)

    async def scenario() -> None:
        t = await call(meter, w, key=API_KEY)
        with pytest.raises(InsufficientFunds):
            await call(meter, w, key=API_KEY)  # the one affordable call is taken
        await meter.cancel(t)
        await meter.cancel(t)  # a second cancel is a no-op
        await meter.settle(t, request_id="late", node_id=None, units=1)  # settled? never
        await meter.flush()
        assert user_bal(w, w.buyer).posted == 1000
        again = await call(meter, w, key=API_KEY)  # the capacity came back
        await meter.cancel(again)
        await meter.close()

    run(scenario)
    b = user_bal(w, w.buyer)
    assert (b.posted, b.pending_debits) == (1000, 0)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(UsageEvent)) == 0
    assert revenue(w) == 0


def test_replayed_request_id_is_counted_and_charged_once(
    api: Api, db: Database, settings: Settings
) -> None:
    w = make_world(api, db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=10_000)
    meter = meter_for(db, settings, reservation_requests=5)

    async def scenario() -> None:
        for _ in range(2):  # a replay while the first is still buffered
            t = await call(meter, w, key=API_KEY)
            await meter.settle(t, request_id="req-1", node_id=w.nodes[0], units=1)
        await meter.flush()
        t = await call(meter, w, key=API_KEY)  # a replay after the first was stored
        await meter.settle(t, request_id="req-1", node_id=w.nodes[0], units=1)
        await meter.flush()
        assert meter.stats.duplicates == 2
        await meter.close()

    run(scenario)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(UsageEvent)) == 1
    assert user_bal(w, w.buyer).posted == 10_000 - 1000
    assert revenue(w) + node_earn(w, w.operator) + earn(w, w.owner) == 1000


# ---------------------------------------------------------------- splits


def test_odd_price_splits_exactly_across_nodes_cache_and_contributors(
    api: Api, db: Database, settings: Settings
) -> None:
    price = 1_234_567  # 1234.567 minor units per call
    w = make_world(
        api, db, offers={"per_1k_requests": {"amount": price}}, fund=10**8, split=(6667, 3333)
    )
    meter = meter_for(db, settings, reservation_requests=50)
    served = [w.nodes[0]] * 6 + [w.nodes[1]] * 3 + [None]

    async def scenario() -> None:
        for i, node in enumerate(served):
            t = await call(meter, w, key=API_KEY)
            await meter.settle(t, request_id=f"r{i}", node_id=node, units=1)
        await meter.close()

    run(scenario)
    charge = cost(len(served), price)
    assert charge == 12_346
    assert user_bal(w, w.buyer).posted == 10**8 - charge
    fee, compute = bps_of(charge, 2000), bps_of(charge, 3000)
    per_node = {w.nodes[0]: 6, w.nodes[1]: 3, None: 1}
    order = sorted(per_node, key=str)
    parts = dict(zip(order, allocate(compute, [per_node[n] for n in order]), strict=True))
    assert node_earn(w, w.operator) == parts[w.nodes[0]]
    assert node_earn(w, w.operator2) == parts[w.nodes[1]]
    assert revenue(w) == fee + parts[None]  # a cache hit's compute share is the platform's
    creators = charge - fee - compute
    assert [earn(w, w.owner), earn(w, w.cy)] == allocate(creators, [6667, 3333])
    assert (
        revenue(w)
        + node_earn(w, w.operator)
        + node_earn(w, w.operator2)
        + earn(w, w.owner)
        + earn(w, w.cy)
        == charge
    )
    with db.session() as s:
        amounts = s.scalar(select(func.sum(UsageEvent.amount)))
    assert amounts == charge  # what buyers see in their usage equals what the ledger charged


def test_per_1k_tokens_charges_ceil_of_tokens(api: Api, db: Database, settings: Settings) -> None:
    w = make_world(api, db, offers={"per_1k_tokens": {"amount": 20_001}}, fund=10**6)
    meter = meter_for(db, settings, reservation_requests=10)
    inputs = [["hello world"], ["a" * 400], ["ééé", "x"]]  # 3, 100, 2+1 tokens

    async def scenario() -> None:
        for i, inp in enumerate(inputs):
            t = await call(meter, w, units=count_tokens(inp), key=API_KEY)
            assert (t.kind, t.unit, t.units) == ("paid", "token", count_tokens(inp))
            await meter.settle(t, request_id=f"t{i}", node_id=w.nodes[1], units=t.units)
        await meter.close()

    run(scenario)
    tokens = 3 + 100 + 3
    with db.session() as s:
        assert s.scalar(select(func.sum(UsageEvent.units))) == tokens
    # blocks: the first call reserved 10×3 tokens, the 100-token call needed a block of its
    # own, the last call fit the first block again: rounding up happens once per block
    total = user_bal(w, w.buyer)
    assert total.pending_debits == 0
    spent = 10**6 - total.posted
    assert spent == cost(3 + 3, 20_001) + cost(100, 20_001)
    assert revenue(w) + node_earn(w, w.operator2) + earn(w, w.owner) == spent


def test_owner_calls_are_free_and_recorded(api: Api, db: Database, settings: Settings) -> None:
    w = make_world(api, db, offers={"per_1k_requests": {"amount": PER_CALL_1000}})
    meter = meter_for(db, settings, demo_credits_per_model=0)

    async def scenario() -> None:
        for i in range(3):
            t = await call(meter, w, w.owner, key=API_KEY)
            assert t.kind == "owner"
            await meter.settle(t, request_id=f"o{i}", node_id=w.nodes[0], units=1)
        await meter.close()

    run(scenario)
    with db.session() as s:
        assert s.scalar(select(func.count()).where(UsageEvent.kind == "owner")) == 3
    assert revenue(w) == 0


# ---------------------------------------------------------------- demo credits


def test_demo_credits_without_offer_then_quota_exhausted(
    api: Api, db: Database, settings: Settings
) -> None:
    w = make_world(api, db, fund=10**6)
    meter = meter_for(db, settings, demo_credits_per_model=3)

    async def scenario() -> None:
        tickets = [await call(meter, w, key=API_KEY) for _ in range(3)]
        assert {t.kind for t in tickets} == {"demo"}
        with pytest.raises(QuotaExhausted) as err:
            await call(meter, w, key=API_KEY)
        assert (err.value.status, err.value.code) == (429, "quota_exhausted")
        await meter.cancel(tickets[0])  # a failed demo call gives its credit back
        again = await call(meter, w, key=API_KEY)
        assert again.kind == "demo"
        for i, t in enumerate([*tickets[1:], again]):
            await meter.settle(t, request_id=f"d{i}", node_id=w.nodes[0], units=1)
        await meter.close()

    run(scenario)
    with db.session() as s:
        credit = s.scalar(select(DemoCredit).where(DemoCredit.model_id == w.model_id))
        assert credit is not None
        assert credit.used == 3
        assert s.scalar(select(func.count()).where(UsageEvent.kind == "demo")) == 3
    assert user_bal(w, w.buyer).posted == 10**6  # demo calls cost nothing


def test_demo_credits_first_without_key_paid_with_key(
    api: Api, db: Database, settings: Settings
) -> None:
    w = make_world(api, db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=1000)
    meter = meter_for(db, settings, demo_credits_per_model=2)

    async def scenario() -> None:
        keyed = await call(meter, w, key=API_KEY)
        assert keyed.kind == "paid"  # an API key is billed, credits or not
        playground = [await call(meter, w) for _ in range(2)]
        assert [t.kind for t in playground] == ["demo", "demo"]
        with pytest.raises(InsufficientFunds):
            await call(meter, w)  # credits gone, the balance is reserved by the keyed call
        await meter.cancel(keyed)
        paid = await call(meter, w)
        assert paid.kind == "paid"
        for i, t in enumerate([*playground, paid]):
            await meter.settle(t, request_id=f"p{i}", node_id=w.nodes[0], units=1)
        await meter.close()

    run(scenario)
    assert user_bal(w, w.buyer).posted == 0


# ---------------------------------------------------------------- close and idle release


def test_close_resolves_every_reservation(api: Api, db: Database, settings: Settings) -> None:
    w = make_world(api, db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=50_000)
    meter = meter_for(db, settings, reservation_requests=20)

    async def scenario() -> None:
        done = await call(meter, w, key=API_KEY)
        await meter.settle(done, request_id="x1", node_id=w.nodes[0], units=1)
        await meter.flush()
        b = user_bal(w, w.buyer)
        # the event is stored; the reservation stays open until used up, idle or closed
        assert (b.posted, b.pending_debits) == (50_000, 20_000)
        stuck = await call(meter, w, key=API_KEY)  # in flight at shutdown
        await meter.close()
        await meter.settle(stuck, request_id="x2", node_id=w.nodes[0], units=1)  # dropped
        assert meter.reserved() == {}
        assert meter.buffered == 0
        b = user_bal(w, w.buyer)
        assert (b.posted, b.pending_debits) == (49_000, 0)
        again = await call(meter, w, key=API_KEY)  # still usable: a new reservation
        await meter.settle(again, request_id="x3", node_id=w.nodes[0], units=1)
        await meter.close()

    run(scenario)
    b = user_bal(w, w.buyer)
    assert (b.posted, b.pending_debits) == (48_000, 0)
    assert hold(w).pending_credits == 0
    assert hold(w).posted == 0


def test_idle_reservation_is_released(api: Api, db: Database, settings: Settings) -> None:
    w = make_world(api, db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=50_000)
    meter = meter_for(db, settings, reservation_requests=20, metering_idle_release_seconds=0.01)

    async def scenario() -> None:
        t = await call(meter, w, key=API_KEY)
        await meter.settle(t, request_id="i1", node_id=w.nodes[0], units=1)
        await asyncio.sleep(0.02)
        await meter.flush()
        assert meter.reserved() == {}
        b = user_bal(w, w.buyer)
        assert (b.posted, b.pending_debits) == (49_000, 0)
        t = await call(meter, w, key=API_KEY)  # a fresh block on the next call
        await meter.cancel(t)
        await meter.close()

    run(scenario)
    assert user_bal(w, w.buyer).pending_debits == 0


def test_price_change_takes_effect_on_a_new_block(
    api: Api, db: Database, settings: Settings
) -> None:
    w = make_world(api, db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=50_000)
    meter = meter_for(db, settings, reservation_requests=20)

    async def scenario() -> None:
        t = await call(meter, w, key=API_KEY)
        await meter.settle(t, request_id="c1", node_id=w.nodes[0], units=1)
        r = w.api.client.put(
            f"/api/v1/models/{w.full_name}/offers",
            json={"per_1k_requests": {"amount": 2 * PER_CALL_1000}},
            headers=w.owner.headers,
        )
        assert r.status_code == 200, r.text
        meter.invalidate(w.model_id)
        t = await call(meter, w, key=API_KEY)
        await meter.settle(t, request_id="c2", node_id=w.nodes[0], units=1)
        await meter.close()

    run(scenario)
    assert user_bal(w, w.buyer).posted == 50_000 - 1000 - 2000


# ---------------------------------------------------------------- real commits, concurrency


@pytest.fixture
def committed_db(tmp_path: Path) -> Iterator[Database]:
    """A fresh migrated database of this test's own (real commits, never the shared one)."""
    if PG_URL:
        base = make_url(PG_URL)
        name = f"{base.database}_meter_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
        admin = make_engine(
            base.set(database="postgres").render_as_string(hide_password=False),
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = base.set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{tmp_path / 'metering.db'}"
    database = Database.from_url(url)
    upgrade(database.engine)
    yield database
    database.engine.dispose()
    if PG_URL:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def committed_api(committed_db: Database, tmp_path: Path) -> Iterator[Api]:
    settings = Settings(
        data_dir=tmp_path / "data",
        master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    app = create_app(
        settings, database=committed_db, clock=TestClock(datetime(2026, 11, 24, tzinfo=UTC))
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client)


async def hammer(meter: UsageMeter, w: World, tasks: int, key: uuid.UUID | None) -> int:
    """``tasks`` concurrent callers, each calling until refused; returns the calls granted."""
    granted = 0

    async def caller(n: int) -> None:
        nonlocal granted
        i = 0
        while True:
            try:
                t = await call(meter, w, key=key)
            except (InsufficientFunds, QuotaExhausted):
                return
            granted += 1
            await asyncio.sleep(0)
            await meter.settle(t, request_id=f"{id(meter)}-{n}-{i}", node_id=w.nodes[0], units=1)
            i += 1

    await asyncio.gather(*(caller(n) for n in range(tasks)))
    return granted


def test_exact_cutoff_under_16_concurrent_callers_and_two_replicas(
    committed_api: Api, committed_db: Database, settings: Settings
) -> None:
    k = 53
    w = make_world(
        committed_api,
        committed_db,
        offers={"per_1k_requests": {"amount": PER_CALL_1000}},
        fund=k * 1000,
    )
    replicas = [meter_for(committed_db, settings, 8, reservation_requests=4) for _ in range(2)]

    async def scenario() -> None:
        counts = await asyncio.gather(*(hammer(m, w, 16, API_KEY) for m in replicas))
        assert sum(counts) == k
        for m in replicas:
            await m.close()

    run(scenario)
    b = user_bal(w, w.buyer)
    assert (b.posted, b.pending_debits) == (0, 0)
    assert revenue(w) + node_earn(w, w.operator) + earn(w, w.owner) == k * 1000
    with committed_db.session() as s:
        assert s.scalar(select(func.count()).select_from(UsageEvent)) == k
        assert ledger.check(s).ok


def test_demo_credits_are_atomic_under_concurrency(
    committed_api: Api, committed_db: Database, settings: Settings
) -> None:
    w = make_world(committed_api, committed_db)
    replicas = [meter_for(committed_db, settings, 8, demo_credits_per_model=10) for _ in range(2)]

    async def scenario() -> None:
        counts = await asyncio.gather(*(hammer(m, w, 16, None) for m in replicas))
        assert sum(counts) == 10
        for m in replicas:
            await m.close()

    run(scenario)
    with committed_db.session() as s:
        used = s.scalar(select(DemoCredit.used).where(DemoCredit.model_id == w.model_id))
        assert used == 10
        assert s.scalar(select(func.count()).select_from(UsageEvent)) == 10
