"""Metering benchmark: usage events through the meter vs. raw bulk INSERTs of the same rows.

For each database (a temp SQLite file; PostgreSQL when reachable) it migrates a fresh database,
creates buyers with funded balances, a per-request-priced model and a node, then measures:

- ``meter settle+flush``: ``settle()`` of N pre-authorized tickets by 1000 concurrent callers,
  each settling its calls one after another (``settle`` returns once its event is committed,
  issue 9: the settles that arrive while one commit runs share the next one) with the meter's
  own flusher running — the event rows (SQLite: executemany of ``INSERT .. ON CONFLICT DO NOTHING``; PostgreSQL: binary COPY
  into a temp table + one ``INSERT .. SELECT .. ON CONFLICT DO NOTHING``) plus, in the same
  transaction, one linked ledger set settling the used-up blocks (post, fee, compute share,
  contributor shares);
- ``meter authorize+settle+flush``: the same with ``authorize()`` per call as well (a new
  reservation every ``reservation_requests`` calls per buyer);
- ``meter settle, 16 callers``: N/5 calls settled by 16 concurrent callers, each waiting for
  its commit before its next call (what the gateway does at concurrency 16): commits of up to
  16 events, the price of durability before the answer;
- ``raw INSERT``: the same rows inserted with plain executemany, one commit per batch — the
  limit of the database on this machine.

    python bench/metering.py [--events 100000] [--repeat 3] [--no-pg | --no-sqlite]
                             [--pg postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url

from cyxwiz.accounts import service as accounts
from cyxwiz.billing import flows
from cyxwiz.catalog import service as catalog
from cyxwiz.config import Settings
from cyxwiz.db import Database, make_engine
from cyxwiz.inference import service as nodes
from cyxwiz.inference.interfaces import Ticket
from cyxwiz.inference.metering import UsageMeter
from cyxwiz.inference.usage_models import UsageEvent
from cyxwiz.ledger import service as ledger
from cyxwiz.licensing import service as licensing
from cyxwiz.licensing.schemas import OffersDocument
from cyxwiz.migrate import upgrade
from cyxwiz.money import Currency

BUYERS = 20
PRICE = 1_000_000  # per 1k requests: 1000 minor units a call
FUND = 10_000 * 10**6  # per buyer: 10,000 USDC


@dataclass
class World:
    buyers: list[uuid.UUID]
    model_id: uuid.UUID
    version_id: uuid.UUID
    node_id: uuid.UUID


def setup(db: Database, settings: Settings) -> World:
    with db.session() as s:
        owner = accounts.register(
            s, username="bench-owner", email="o@example.com", password="bench password 1"
        )
        op = accounts.register(
            s, username="bench-operator", email="p@example.com", password="bench password 1"
        )
        model = catalog.create_model(
            s,
            owner=owner,
            name="bench-model",
            title="Bench",
            category="tabular-classification",
            visibility="public",
        )
        version = catalog.create_version(s, model=model, actor=owner, version="1.0.0")
        licensing.set_offers(
            s,
            model=model,
            actor=owner,
            document=OffersDocument.model_validate({"per_1k_requests": {"amount": PRICE}}),
        )
        nodes.decide_operator(s, user=op, decision="approve", actor=None, now=datetime.now(UTC))
        _, node = nodes.create_node(s, operator=op, name="bench-node")
        source = ledger.get_or_create_account(
            s, code="bench:source:USDC", currency=Currency.USDC, kind="bench", no_overdraft=False
        )
        buyers = []
        for i in range(BUYERS):
            u = accounts.register(
                s, username=f"bench-buyer{i}", email=f"b{i}@example.com", password="bench pw 12345"
            )
            ledger.create_transfer(  # funds straight from a bench source account
                s,
                ledger.TransferSpec(
                    id=uuid.uuid4(),
                    code="bench.fund",
                    debit=source.id,
                    credit=flows.user_account(s, u.id, Currency.USDC).id,
                    amount=FUND,
                ),
            )
            buyers.append(u.id)
        return World(buyers, model.id, version.id, node.id)


async def metered(
    db: Database,
    settings: Settings,
    w: World,
    n: int,
    with_authorize: bool,
    callers: int | None = None,
) -> float:
    meter = UsageMeter(db, settings, db_concurrency=4)
    await meter.start()  # the flusher the gateway's meter runs: settles wait on its commits
    tag = uuid.uuid4().hex[:8]

    # "no API key" calls would take demo credits first: give every call a key id
    async def auth_keyed(i: int) -> Ticket:
        return await meter.authorize(
            user_id=w.buyers[i % len(w.buyers)],
            model_id=w.model_id,
            version_id=w.version_id,
            api_key_id=w.node_id,
            units=1,
        )

    tickets: list[Ticket] = []
    if not with_authorize:
        tickets = [await auth_keyed(i) for i in range(n)]

    async def one(i: int) -> None:
        t = tickets[i] if tickets else await auth_keyed(i)
        await meter.settle(t, request_id=f"{tag}-{i}", node_id=w.node_id, units=1)

    async def caller(k: int, step: int) -> None:
        for i in range(k, n, step):
            await one(i)

    step = callers or settings.metering_batch_size  # default: as many callers as a batch holds
    batches = meter.stats.batches
    t0 = time.perf_counter()
    await asyncio.gather(*(caller(k, step) for k in range(step)))
    await meter.flush()
    elapsed = time.perf_counter() - t0
    COMMITS.append((n, meter.stats.batches - batches))
    await meter.close()
    return n / elapsed


COMMITS: list[tuple[int, int]] = []  # (events, transactions) per measurement


def raw_inserts(db: Database, w: World, n: int, batch: int) -> float:
    now_rows = []
    now = datetime.now(UTC)
    bid = uuid.uuid4()
    blocks = [uuid.uuid4() for _ in w.buyers]  # like the meter's: one reservation per buyer
    for i in range(n):
        now_rows.append(
            {
                "id": uuid.uuid4(),
                "created_at": now,
                "request_id": f"raw-{bid.hex[:8]}-{i}",
                "batch_id": bid,
                "kind": "paid",
                "user_id": w.buyers[i % len(w.buyers)],
                "api_key_id": w.node_id,
                "model_id": w.model_id,
                "version_id": w.version_id,
                "node_id": w.node_id,
                "unit": "request",
                "units": 1,
                "currency": "USDC",
                "amount": 1000,
                "reservation_id": blocks[i % len(blocks)],
                "occurred_at": now,
                "day": now.date(),
            }
        )
    table = UsageEvent.__table__
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        with db.session() as s:
            s.execute(insert(table), now_rows[i : i + batch])
    return n / (time.perf_counter() - t0)


def run_one(label: str, url: str, events: int, repeat: int) -> list[tuple[str, str, float]]:
    """``repeat`` rounds of the three measurements, interleaved so that each round's ratios
    are taken under the same machine load; each figure is the median of its rounds."""
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp()),
        master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        reservation_requests=1000,
        metering_batch_size=1000,
    )
    db = Database.from_url(url)
    upgrade(db.engine)
    w = setup(db, settings)
    asyncio.run(metered(db, settings, w, 2000, with_authorize=False))  # warm up
    rounds: dict[str, list[float]] = {"raw": [], "settle": [], "full": [], "c16": []}
    small = max(1000, events // 5)
    for _ in range(repeat):
        rounds["raw"].append(raw_inserts(db, w, events, settings.metering_batch_size))
        rounds["settle"].append(asyncio.run(metered(db, settings, w, events, False)))
        rounds["full"].append(asyncio.run(metered(db, settings, w, events, True)))
        rounds["c16"].append(asyncio.run(metered(db, settings, w, small, False, callers=16)))
        n16, commits16 = COMMITS[-1]
        print(f"{label}: 16 callers: {n16:,} events in {commits16:,} commits")
    with db.session() as s:
        report = ledger.check(s)
        stored = s.scalar(select(func.count()).select_from(UsageEvent))
    assert report.ok, report.problems
    assert stored == 2000 + (3 * events + small) * repeat, stored
    db.engine.dispose()
    ratios = [m / r for m, r in zip(rounds["settle"], rounds["raw"], strict=True)]
    print(
        f"{label}: settle+flush/raw per round: "
        + ", ".join(f"{x:.0%}" for x in ratios)
        + " | settle+flush ev/s per round: "
        + ", ".join(f"{x:,.0f}" for x in rounds["settle"])
    )
    return [
        (label, "raw INSERT (executemany, commit per 1000)", statistics.median(rounds["raw"])),
        (label, "meter settle+flush", statistics.median(rounds["settle"])),
        (label, "meter authorize+settle+flush", statistics.median(rounds["full"])),
        (label, "meter settle, 16 callers (commit each)", statistics.median(rounds["c16"])),
    ]


def pg_database(base_url: str) -> tuple[str, str] | None:
    base = make_url(base_url)
    name = "cyxwiz_bench_metering"
    try:
        admin = make_engine(
            base.set(database="postgres").render_as_string(hide_password=False),
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:  # no PostgreSQL here: SQLite only
        print(f"(PostgreSQL skipped: {type(exc).__name__})")
        return None
    return base.set(database=name).render_as_string(hide_password=False), name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="rounds; figures are medians")
    parser.add_argument(
        "--pg",
        default=os.environ.get(
            "CYXWIZ_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--no-pg", action="store_true", help="SQLite only")
    parser.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            rows += run_one(
                "SQLite", f"sqlite:///{Path(tmp) / 'bench.db'}", args.events, args.repeat
            )
    pg = None if args.no_pg else pg_database(args.pg)
    if pg is not None:
        rows += run_one("PostgreSQL", pg[0], args.events, args.repeat)
    print(
        f"\nmetering: {args.events:,} usage events per measurement, batches of 1000, median of "
        f"{args.repeat} rounds ({os.cpu_count()} CPUs, load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after)\n"
    )
    print(f"{'database':<11} {'path':<42} {'events/s':>10} {'vs raw':>7}")
    raw_of = {db: r for db, what, r in rows if what.startswith("raw")}
    for db, what, rate in rows:
        print(f"{db:<11} {what:<42} {rate:>10,.0f} {rate / raw_of[db]:>6.0%}")
    target = 20_000
    worst = min(r for _db, what, r in rows if what == "meter settle+flush")
    print(
        f"\ntarget ≥ {target:,} events/s for settle+flush: {'met' if worst >= target else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
