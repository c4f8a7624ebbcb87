"""Ledger benchmark: purchases and transfers against plain INSERTs on the same database.

For SQLite (a file, WAL, synchronous=FULL — what `cyxwiz serve` uses) and PostgreSQL (a scratch
database created and dropped on --pg-url), measures:

- transfers/s through ``ledger.create_transfer`` (idempotency lookup, limit-checked balance
  UPDATEs, SAVEPOINT) with one transfer per commit and 100 per commit, and through
  ``ledger.create_transfers`` with 100 transfers as one linked set per commit, against raw
  INSERTs of the same rows into a scratch table with the same columns, one and 100 per commit;
- purchases/s in-process through ``flows.purchase`` (one purchase per commit, as a request does);
- purchases/s end to end through the HTTP API: a real `cyxwiz serve` (uvicorn) in a subprocess,
  httpx clients with keep-alive, each purchase its own model, 1 client and several at once.

Ratios are the figures: ledger ÷ raw INSERT on the same database in the same run, and the HTTP
API ÷ the in-process flow.

    python bench/ledger.py [--purchases 300] [--transfers 2000] [--clients 4]
                           [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test | --no-pg]
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from cyxwiz.accounts.models import User
from cyxwiz.billing import flows
from cyxwiz.catalog.models import Model
from cyxwiz.config import Settings
from cyxwiz.db import Database, make_engine
from cyxwiz.ledger import service as ledger
from cyxwiz.migrate import upgrade
from cyxwiz.money import Currency

PASSWORD = "bench-password-1"
PRICE = 1_000_001  # 1.000001 USDC: an odd amount, like real prices after discounts
RAW_TABLE = "bench_raw_transfers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Result:
    name: str
    rate: float
    baseline_name: str = ""
    baseline: float = 0.0

    @property
    def ratio(self) -> str:
        return f"{self.rate / self.baseline:.2f}" if self.baseline else ""


@dataclass
class Run:
    backend: str
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- databases


@contextmanager
def scratch_database(backend: str, pg_url: str, tmp: Path) -> Iterator[str]:
    """A fresh, migrated database: a file for SQLite, a created-then-dropped one on PostgreSQL."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'bench.db'}"
    else:
        base = make_url(pg_url)
        name = f"{base.database}_bench_ledger"
        admin = make_engine(
            base.set(database="postgres").render_as_string(hide_password=False),
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            c.execute(text(f'CREATE DATABASE "{name}"'))
        url = base.set(database=name).render_as_string(hide_password=False)
    eng = make_engine(url)
    upgrade(eng)
    eng.dispose()
    try:
        yield url
    finally:
        if backend != "sqlite":
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def timed(n: int, fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


# ---------------------------------------------------------------- ledger vs raw inserts


def bench_transfers(db: Database, n: int) -> list[Result]:
    with db.session() as s:
        src = ledger.get_or_create_account(
            s, code="bench:src", currency=Currency.USDC, kind="bench", no_overdraft=False
        )
        dst = ledger.get_or_create_account(
            s, code="bench:dst", currency=Currency.USDC, kind="bench"
        )
        src_id, dst_id = src.id, dst.id

    def spec() -> ledger.TransferSpec:
        return ledger.TransferSpec(
            id=uuid.uuid4(), code="bench", debit=src_id, credit=dst_id, amount=7, ref="bench"
        )

    def one_per_commit(count: int) -> None:
        for _ in range(count):
            with db.session() as s:
                ledger.create_transfer(s, spec())

    def hundred_per_commit(count: int) -> None:
        for _ in range(count // 100):
            with db.session() as s:
                for _ in range(100):
                    ledger.create_transfer(s, spec())

    def hundred_linked(count: int) -> None:
        for _ in range(count // 100):
            with db.session() as s:
                ledger.create_transfers(s, [spec() for _ in range(100)])

    # the same rows as ledger_transfers, with the same column types and indexes, written with
    # plain INSERTs: no idempotency lookup, no limit check, no balance updates, no SAVEPOINT
    pg = db.dialect == "postgresql"
    uid, ts = ("UUID", "TIMESTAMP WITH TIME ZONE") if pg else ("CHAR(32)", "DATETIME")
    with db.engine.begin() as c:
        c.execute(text(f"DROP TABLE IF EXISTS {RAW_TABLE}"))
        c.execute(
            text(
                f"CREATE TABLE {RAW_TABLE} (id {uid} PRIMARY KEY, created_at {ts} NOT NULL,"
                f" debit_account_id {uid} NOT NULL, credit_account_id {uid} NOT NULL,"
                " amount BIGINT NOT NULL, currency VARCHAR(8) NOT NULL, kind VARCHAR(16) NOT NULL,"
                f" pending_id {uid} UNIQUE, code VARCHAR(64) NOT NULL, ref VARCHAR(128), meta JSON)"
            )
        )
        for cols in (
            "debit_account_id, created_at",
            "credit_account_id, created_at",
            "code",
            "ref",
        ):
            name = f"ix_{RAW_TABLE}_{cols.split(',')[0].split('_')[0]}"
            c.execute(text(f"CREATE INDEX {name} ON {RAW_TABLE} ({cols})"))
    insert = text(
        f"INSERT INTO {RAW_TABLE} (id, created_at, debit_account_id, credit_account_id, amount,"
        " currency, kind, pending_id, code, ref, meta) VALUES (:id, CURRENT_TIMESTAMP, :d, :c, 7,"
        " 'USDC', 'posted', NULL, 'bench', 'bench', NULL)"
    )

    def row() -> dict[str, object]:
        if pg:
            return {"id": uuid.uuid4(), "d": src_id, "c": dst_id}
        return {"id": uuid.uuid4().hex, "d": src_id.hex, "c": dst_id.hex}

    def raw(count: int, per_commit: int) -> None:
        with db.engine.connect() as c:
            for _ in range(count // per_commit):
                with c.begin():
                    for _ in range(per_commit):
                        c.execute(insert, row())

    one_per_commit(50)  # warm up both paths
    raw(50, 1)
    big = n * 5
    return [
        Result(
            "ledger.create_transfer, 1 per commit",
            timed(n, lambda: one_per_commit(n)),
            "raw INSERT, 1 per commit",
            timed(n, lambda: raw(n, 1)),
        ),
        Result(
            "ledger.create_transfer, 100 per commit",
            timed(big, lambda: hundred_per_commit(big)),
            "raw INSERT, 100 per commit",
            raw_100 := timed(big, lambda: raw(big, 100)),
        ),
        Result(
            "ledger.create_transfers, 100 linked/commit",
            timed(big, lambda: hundred_linked(big)),
            "raw INSERT, 100 per commit",
            raw_100,
        ),
    ]


# ---------------------------------------------------------------- the HTTP API


class Shop:
    """Set-up and purchases over HTTP against a running server."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.c = httpx.Client(base_url=base_url, timeout=60)

    def user(self, name: str) -> dict[str, str]:
        self.c.post(
            "/api/v1/auth/register",
            json={"username": name, "email": f"{name}@example.com", "password": PASSWORD},
        ).raise_for_status()
        r = self.c.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
        r.raise_for_status()
        return {"Authorization": f"Bearer {r.json()['access_token']}"}

    def paid_model(self, owner: dict[str, str], name: str) -> str:
        c = self.c
        r = c.post(
            "/api/v1/models",
            json={
                "name": name,
                "title": "Bench model",
                "category": "tabular-classification",
                "visibility": "public",
            },
            headers=owner,
        )
        r.raise_for_status()
        full = r.json()["full_name"]
        base = f"/api/v1/models/{full}/versions"
        c.post(base, json={"version": "1.0.0"}, headers=owner).raise_for_status()
        c.put(f"{base}/1.0.0/files/model.onnx", content=b"w" * 64, headers=owner).raise_for_status()
        c.post(f"{base}/1.0.0/publish", headers=owner).raise_for_status()
        c.put(
            f"/api/v1/models/{full}/offers",
            json={"one_time": {"amount": PRICE, "currency": "USDC"}},
            headers=owner,
        ).raise_for_status()
        return str(full)


def fund(url: str, usernames: list[str], amount: int) -> None:
    """Credit each user straight from a bench source account (how money arrives — a faucet,
    a deposit — is not what this bench measures)."""
    db = Database.from_url(url)
    try:
        with db.session() as s:
            src = ledger.get_or_create_account(
                s,
                code="bench:source:USDC",
                currency=Currency.USDC,
                kind="bench",
                no_overdraft=False,
            )
            for name in usernames:
                uid = s.scalars(select(User.id).where(User.username == name)).one()
                ledger.create_transfer(
                    s,
                    ledger.TransferSpec(
                        id=uuid.uuid4(),
                        code="bench.fund",
                        debit=src.id,
                        credit=flows.user_account(s, uid, Currency.USDC).id,
                        amount=amount,
                    ),
                )
    finally:
        db.engine.dispose()


def buy_all(base_url: str, who: dict[str, str], models: list[str]) -> None:
    with httpx.Client(base_url=base_url, timeout=60) as c:
        for m in models:
            r = c.post(f"/api/v1/models/{m}/purchase", headers={**who, "Idempotency-Key": m})
            if r.status_code != 201:
                raise RuntimeError(f"purchase failed: {r.status_code} {r.text}")


@contextmanager
def server(url: str, data_dir: Path) -> Iterator[str]:
    env = {
        **os.environ,
        "CYXWIZ_DATA_DIR": str(data_dir),
        "CYXWIZ_DATABASE_URL": url,
        "CYXWIZ_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        "CYXWIZ_RELEASE_INTERVAL_SECONDS": "3600",
    }
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cyxwiz", "serve", "--port", str(port), "--no-node"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=5) as c:
            for _ in range(300):
                try:
                    if c.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            else:
                raise RuntimeError("the server did not start")
        yield base
    finally:
        proc.terminate()
        proc.wait(20)


def bench_purchases(url: str, tmp: Path, n: int, clients: int) -> list[Result]:
    data_dir = tmp / "data"
    with server(url, data_dir) as base:
        shop = Shop(base)
        owner = shop.user("bench-creator")
        models = [shop.paid_model(owner, f"m{i}") for i in range(n)]
        solo = shop.user("bench-solo")
        crowd = [shop.user(f"bench-crowd{i}") for i in range(clients)]
        shop.user("bench-inproc")
        shop.c.close()
        fund(url, ["bench-solo", *(f"bench-crowd{i}" for i in range(clients))], n * PRICE)
        buy_all(base, solo, models[:10])  # warm up
        http_1 = timed(n - 10, lambda: buy_all(base, solo, models[10:]))

        def together() -> None:
            share = n // clients
            threads = [
                threading.Thread(
                    target=buy_all, args=(base, who, models[i * share : (i + 1) * share])
                )
                for i, who in enumerate(crowd)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        http_n = timed(n // clients * clients, together)

    # the same purchase flow in-process: one session and one commit per purchase
    db = Database.from_url(url)
    settings = Settings(data_dir=data_dir)
    try:
        with db.session() as s:
            buyer_id = s.scalars(select(User.id).where(User.username == "bench-inproc")).one()
            model_ids = list(s.scalars(select(Model.id).order_by(Model.name)))
        fund(url, ["bench-inproc"], n * PRICE)

        def buy_in_process() -> None:
            for i, model_id in enumerate(model_ids):
                with db.session() as s:
                    flows.purchase(
                        s,
                        settings=settings,
                        buyer=s.get(User, buyer_id),
                        model=s.get(Model, model_id),
                        currency=Currency.USDC,
                        idempotency_key=f"p{i}",
                        now=datetime.now(UTC),
                    )

        in_process = timed(len(model_ids), buy_in_process)
        with db.session() as s:
            report = ledger.check(s)
            if not report.ok:
                raise RuntimeError(f"ledger check failed after the bench: {report.problems}")
    finally:
        db.engine.dispose()
    return [
        Result("purchase, in-process flows.purchase", in_process),
        Result("purchase via HTTP API, 1 client", http_1, "in-process flows.purchase", in_process),
        Result(
            f"purchase via HTTP API, {clients} clients",
            http_n,
            "in-process flows.purchase",
            in_process,
        ),
    ]


# ---------------------------------------------------------------- main


def run_backend(backend: str, args: argparse.Namespace) -> Run:
    run = Run(backend)
    with (
        tempfile.TemporaryDirectory(prefix="cyxwiz-ledger-bench-") as tmp,
        scratch_database(backend, args.pg_url, Path(tmp)) as url,
    ):
        db = Database.from_url(url)
        try:
            transfers = bench_transfers(db, args.transfers)
            with db.session() as s:
                if not ledger.check(s).ok:
                    raise RuntimeError("ledger check failed after the transfer bench")
        finally:
            db.engine.dispose()
        purchases = bench_purchases(url, Path(tmp), args.purchases, args.clients)
        # the in-process purchase's cost against one raw INSERT per commit
        purchases[0].baseline_name, purchases[0].baseline = (
            transfers[0].baseline_name,
            transfers[0].baseline,
        )
        run.results = transfers + purchases
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--purchases", type=int, default=200, help="purchases per HTTP figure")
    ap.add_argument("--transfers", type=int, default=1000, help="transfers at 1 per commit")
    ap.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--no-pg", action="store_true", help="SQLite only")
    args = ap.parse_args()

    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    runs = [run_backend("sqlite", args)]
    if not args.no_pg:
        runs.append(run_backend("postgresql", args))

    print(
        f"\nledger benchmark: {os.cpu_count()} CPUs (load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after), {args.transfers} transfers at 1/commit, "
        f"{args.transfers * 5} at 100/commit, {args.purchases} purchases per HTTP figure"
    )
    print("SQLite: file, WAL, synchronous=FULL; PostgreSQL: local server, default settings\n")
    head = f"{'backend':<11}{'path':<42}{'per s':>9}   {'against':<28}{'per s':>9}{'ratio':>7}"
    print(head)
    print("-" * len(head))
    for run in runs:
        for r in run.results:
            base = f"{r.baseline:>9.0f}" if r.baseline else f"{'':>9}"
            print(
                f"{run.backend:<11}{r.name:<42}{r.rate:>9.0f}   {r.baseline_name:<28}{base}"
                f"{r.ratio:>7}"
            )
    print(f"\n(total bench time {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
