"""The reservation sweeper: a meter that dies (its object dropped without flushing or closing,
as a killed process leaves it) leaves a pending reservation; the sweeper charges the events that
were stored, releases the rest, exactly once — also with two sweepers at once — and never
touches the reservations of a meter that is alive."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import secrets
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database, make_engine
from cyxwiz.inference.metering import SweepReport, UsageMeter, cost, sweep_reservations
from cyxwiz.inference.usage_models import UsageEvent
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.models import LedgerTransfer
from cyxwiz.migrate import upgrade
from cyxwiz.money import allocate, bps_of
from cyxwiz.web.app import create_app
from tests.factories import Api
from tests.inference.test_metering import (
    API_KEY,
    PER_CALL_1000,
    World,
    call,
    earn,
    hold,
    make_world,
    node_earn,
    revenue,
    user_bal,
)

PG_URL = os.environ.get("CYXWIZ_TEST_DATABASE_URL")
PRICE = 1_234_567  # per 1K requests: 1234.567 minor units a call (rounding per reservation)
LATER = timedelta(seconds=301)  # past the default 300 s reservation timeout


def after_timeout() -> datetime:
    return datetime.now(UTC) + LATER


@pytest.fixture
def fresh_db(tmp_path: Path) -> Iterator[Database]:
    """A migrated database of this test's own with real commits (two sweepers in two threads
    must really race on it)."""
    if PG_URL:
        base = make_url(PG_URL)
        name = f"{base.database}_sweep_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
        admin = make_engine(
            base.set(database="postgres").render_as_string(hide_password=False),
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = base.set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{tmp_path / 'sweep.db'}"
    database = Database.from_url(url)
    upgrade(database.engine)
    yield database
    database.engine.dispose()
    if PG_URL:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def fresh_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        reservation_requests=20,
    )


@pytest.fixture
def fresh_api(fresh_db: Database, fresh_settings: Settings) -> Iterator[Api]:
    app = create_app(
        fresh_settings, database=fresh_db, clock=TestClock(datetime(2026, 11, 24, tzinfo=UTC))
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client)


def crash(box: list[UsageMeter]) -> None:
    """The process dies: its only meter (held in ``box``) is dropped as it is — no flush, no
    close; the operating system's part (the owner lock goes with the process) happens when the
    object is collected."""
    gone = weakref.ref(box.pop())
    gc.collect()
    assert gone() is None, "the meter is still referenced: the crash did not happen"


def sweep_twice_at_once(db: Database, settings: Settings) -> list[SweepReport]:
    reports: list[SweepReport] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def sweeper() -> None:
        try:
            start.wait()
            reports.append(sweep_reservations(db, settings, now=after_timeout()))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sweeper) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(reports) == 2
    return reports


def pending_reservations(db: Database) -> int:
    T = LedgerTransfer
    with db.session() as s:
        resolved = select(T.pending_id).where(T.pending_id.is_not(None))
        return (
            s.scalar(
                select(func.count()).where(
                    T.code == "usage.reserve", T.kind == "pending", T.id.not_in(resolved)
                )
            )
            or 0
        )


def check(db: Database) -> None:
    with db.session() as s:
        report = ledger.check(s)
    assert report.ok, report.problems


# ---------------------------------------------------------------- the crash


def test_crashed_meter_stored_events_are_charged_the_rest_released_exactly_once(
    fresh_api: Api, fresh_db: Database, fresh_settings: Settings
) -> None:
    fund = 10**8
    w = make_world(
        fresh_api,
        fresh_db,
        offers={"per_1k_requests": {"amount": PRICE}},
        fund=fund,
        split=(6667, 3333),
    )
    box = [UsageMeter(fresh_db, fresh_settings, db_concurrency=4)]
    served = [w.nodes[0]] * 4 + [w.nodes[1]] * 2 + [None]  # stored: 7 calls, one a cache hit

    async def work(meter: UsageMeter) -> None:
        tickets = [await call(meter, w, key=API_KEY) for _ in range(10)]
        for i, node in enumerate(served):
            await meter.settle(tickets[i], request_id=f"stored-{i}", node_id=node, units=1)
        await meter.flush()  # these 7 events are in the database
        for i in (7, 8):  # settled just before the crash: settle returns once it is committed
            await meter.settle(tickets[i], request_id=f"late-{i}", node_id=w.nodes[0], units=1)
        # ticket 9 is still running when the process dies

    asyncio.run(work(box[0]))
    reserved = cost(20, PRICE)  # one block of reservation_requests calls
    b = user_bal(w, w.buyer)
    assert (b.posted, b.pending_debits) == (fund, reserved)
    crash(box)

    # not yet timed out: a sweep now leaves it alone
    early = sweep_reservations(fresh_db, fresh_settings)
    assert (early.swept, early.skipped) == (0, 0)
    assert pending_reservations(fresh_db) == 1

    reports = sweep_twice_at_once(fresh_db, fresh_settings)
    assert sum(r.settled for r in reports) == 1  # exactly once between the two
    assert sum(r.released for r in reports) == 0
    stored = len(served) + 2  # the two late settles are durable too (issue 9)
    charge = cost(stored, PRICE)  # cumulative rounding: the stored events' amounts
    assert sum(r.charged.get("USDC", 0) for r in reports) == charge
    assert pending_reservations(fresh_db) == 0

    b = user_bal(w, w.buyer)
    assert (b.posted, b.pending_debits) == (fund - charge, 0)  # the call in flight: not billed
    fee, compute = bps_of(charge, 2000), bps_of(charge, 3000)
    per_node = {w.nodes[0]: 6, w.nodes[1]: 2, None: 1}
    order = sorted(per_node, key=str)
    parts = dict(zip(order, allocate(compute, [per_node[n] for n in order]), strict=True))
    assert node_earn(w, w.operator) == parts[w.nodes[0]]
    assert node_earn(w, w.operator2) == parts[w.nodes[1]]
    assert revenue(w) == fee + parts[None]
    assert [earn(w, w.owner), earn(w, w.cy)] == allocate(charge - fee - compute, [6667, 3333])
    assert (hold(w).posted, hold(w).pending_credits) == (0, 0)
    with fresh_db.session() as s:
        assert s.scalar(select(func.count()).select_from(UsageEvent)) == stored
        assert s.scalar(select(func.sum(UsageEvent.amount))) == charge
    check(fresh_db)

    again = sweep_reservations(fresh_db, fresh_settings, now=after_timeout())
    assert (again.swept, again.skipped) == (0, 0)
    assert user_bal(w, w.buyer).posted == fund - charge
    check(fresh_db)


def test_crash_before_any_event_was_stored_releases_everything(
    fresh_api: Api, fresh_db: Database, fresh_settings: Settings
) -> None:
    w = make_world(
        fresh_api, fresh_db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=50_000
    )
    box = [UsageMeter(fresh_db, fresh_settings)]

    async def work(meter: UsageMeter) -> None:
        await call(meter, w, key=API_KEY)  # still running when the process dies: never answered

    asyncio.run(work(box[0]))
    assert user_bal(w, w.buyer).pending_debits == 20_000
    crash(box)
    reports = sweep_twice_at_once(fresh_db, fresh_settings)
    assert sum(r.released for r in reports) == 1
    assert sum(r.settled for r in reports) == 0
    b = user_bal(w, w.buyer)
    assert (b.posted, b.pending_debits) == (50_000, 0)
    assert revenue(w) == 0
    check(fresh_db)


def test_a_live_meter_keeps_its_reservation_and_settles_it_itself(
    fresh_api: Api, fresh_db: Database, fresh_settings: Settings
) -> None:
    w = make_world(
        fresh_api, fresh_db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=50_000
    )
    meter = UsageMeter(fresh_db, fresh_settings)

    async def first() -> None:
        t = await call(meter, w, key=API_KEY)
        await meter.settle(t, request_id="alive-1", node_id=w.nodes[0], units=1)
        await meter.flush()

    asyncio.run(first())
    for report in sweep_twice_at_once(fresh_db, fresh_settings):  # timed out, but owned
        assert (report.swept, report.skipped) == (0, 1)
    assert pending_reservations(fresh_db) == 1

    async def more() -> None:
        t = await call(meter, w, key=API_KEY)  # the same block, still the meter's
        await meter.settle(t, request_id="alive-2", node_id=w.nodes[0], units=1)
        await meter.close()

    asyncio.run(more())
    b = user_bal(w, w.buyer)
    assert (b.posted, b.pending_debits) == (48_000, 0)
    assert sweep_reservations(fresh_db, fresh_settings, now=after_timeout()).swept == 0
    assert revenue(w) + node_earn(w, w.operator) + earn(w, w.owner) == 2000
    check(fresh_db)


def test_a_meter_that_lost_its_lock_never_charges_twice(
    fresh_api: Api, fresh_db: Database, fresh_settings: Settings
) -> None:
    """If a live process loses its owner lock (e.g. its database session was killed) and a
    sweeper settles its reservation, the meter's own settlement is skipped, not repeated, and
    its flusher does not get stuck."""
    w = make_world(
        fresh_api, fresh_db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=50_000
    )
    meter = UsageMeter(fresh_db, fresh_settings)

    async def first() -> None:
        t = await call(meter, w, key=API_KEY)
        await meter.settle(t, request_id="l-1", node_id=w.nodes[0], units=1)
        await meter.flush()

    asyncio.run(first())
    meter._owner_lock.release()  # what a killed lock connection does
    assert sweep_reservations(fresh_db, fresh_settings, now=after_timeout()).settled == 1

    async def close() -> None:
        await meter.close()

    asyncio.run(close())
    assert meter.reserved() == {}
    b = user_bal(w, w.buyer)
    assert (b.posted, b.pending_debits) == (49_000, 0)
    assert revenue(w) + node_earn(w, w.operator) + earn(w, w.owner) == 1000
    check(fresh_db)


CHILD = """
import asyncio, base64, secrets, sys, time, uuid
from pathlib import Path
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.inference.metering import UsageMeter

url, data, user, model, version, node = sys.argv[1:]
settings = Settings(data_dir=Path(data), reservation_requests=20,
                    master_key=base64.b64encode(secrets.token_bytes(32)).decode())
meter = UsageMeter(Database.from_url(url), settings)

async def main():
    t = await meter.authorize(user_id=uuid.UUID(user), model_id=uuid.UUID(model),
                              version_id=uuid.UUID(version), api_key_id=uuid.UUID(int=7), units=1)
    await meter.settle(t, request_id="child-1", node_id=uuid.UUID(node), units=1)
    await meter.flush()

asyncio.run(main())
print("ready", flush=True)
time.sleep(600)
"""


def test_owner_lock_of_another_process_until_it_is_killed(
    fresh_api: Api, fresh_db: Database, fresh_settings: Settings, tmp_path: Path
) -> None:
    """A real process holds a reservation: sweepers leave it alone while the process lives
    (its owner lock is held), and settle it once the process is killed (SIGKILL: no cleanup)."""
    w = make_world(
        fresh_api, fresh_db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=50_000
    )
    url = fresh_db.engine.url.render_as_string(hide_password=False)
    args = [str(a) for a in (w.uid(w.buyer), w.model_id, w.version_id, w.nodes[0])]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(tmp_path / "child"), *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        assert user_bal(w, w.buyer).pending_debits == 20_000
        alive = sweep_reservations(fresh_db, fresh_settings, now=after_timeout())
        assert (alive.swept, alive.skipped) == (0, 1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        if child.stdout is not None:
            child.stdout.close()
    reports = sweep_twice_at_once(fresh_db, fresh_settings)
    assert sum(r.settled for r in reports) == 1
    b = user_bal(w, w.buyer)
    assert (b.posted, b.pending_debits) == (49_000, 0)
    assert revenue(w) + node_earn(w, w.operator) + earn(w, w.owner) == 1000
    check(fresh_db)


# ---------------------------------------------------------------- in the shared test database


def test_sweep_in_a_rolled_back_test_transaction(
    api: Api, db: Database, settings: Settings
) -> None:
    w: World = make_world(
        api, db, offers={"per_1k_requests": {"amount": PER_CALL_1000}}, fund=10_000
    )
    box = [UsageMeter(db, settings.model_copy(update={"reservation_requests": 5}))]

    async def work(meter: UsageMeter) -> None:
        for i in range(3):
            t = await call(meter, w, key=API_KEY)
            await meter.settle(t, request_id=f"s-{i}", node_id=w.nodes[1], units=1)
        await meter.flush()

    asyncio.run(work(box[0]))
    crash(box)
    report = sweep_reservations(db, settings, now=after_timeout())
    assert (report.settled, report.released, dict(report.charged)) == (1, 0, {"USDC": 3000})
    b = user_bal(w, w.buyer)
    assert (b.posted, b.pending_debits) == (7_000, 0)
    assert node_earn(w, w.operator2) == 900
    check(db)


def test_cli_billing_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cyxwiz.cli.main import app

    monkeypatch.setenv("CYXWIZ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CYXWIZ_DATABASE_URL", raising=False)
    r = CliRunner().invoke(app, ["billing", "sweep"])
    assert r.exit_code == 0, r.output
    assert "swept 0 reservations" in r.output
