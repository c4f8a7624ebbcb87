"""The batched ledger path: a linked set is checked transfer by transfer (same semantics as one
limit-checked UPDATE per transfer), costs a handful of statements whatever its size, and stays
exactly-once when two transactions race on the same ids or the same pending transfer."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from cyxwiz.db import Database, make_engine
from cyxwiz.errors import DomainError, NotFound
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.models import LedgerAccount, LedgerTransfer
from cyxwiz.ledger.service import InsufficientFunds, PendingResolved, TransferExists, TransferSpec
from cyxwiz.migrate import upgrade
from cyxwiz.money import Currency

USDC = Currency.USDC
PG_URL = os.environ.get("CYXWIZ_TEST_DATABASE_URL")


def accounts(s: Session, n: int = 3) -> list[LedgerAccount]:
    src = ledger.get_or_create_account(
        s, code="l:src", currency=USDC, kind="faucet", no_overdraft=False
    )
    users = [
        ledger.get_or_create_account(s, code=f"l:u{i}", currency=USDC, kind="user_balance")
        for i in range(n)
    ]
    return [src, *users]


def spec(debit: LedgerAccount, credit: LedgerAccount, amount: int, **kw: Any) -> TransferSpec:
    return TransferSpec(
        id=kw.pop("id", uuid.uuid4()),
        code=kw.pop("code", "t"),
        debit=debit.id,
        credit=credit.id,
        amount=amount,
        **kw,
    )


def available(s: Session, acct: LedgerAccount) -> int:
    return ledger.balance_of(s, acct.id).available


def test_limits_are_checked_transfer_by_transfer_in_order(db: Database) -> None:
    with db.session() as s:
        src, a, b, _ = accounts(s)
        # a is empty: paying out before being paid in fails, as it would one UPDATE at a time
        with pytest.raises(InsufficientFunds):
            ledger.create_transfers(s, [spec(a, b, 10), spec(src, a, 10)])
        assert (available(s, a), available(s, b)) == (0, 0)
        ledger.create_transfers(s, [spec(src, a, 10), spec(a, b, 10)])
        assert (available(s, a), available(s, b)) == (0, 10)
        assert ledger.check(s).ok


def test_pending_and_its_post_in_one_set_and_duplicates(db: Database) -> None:
    with db.session() as s:
        src, a, b, _ = accounts(s)
        ledger.create_transfer(s, spec(src, a, 100))
        p = uuid.uuid4()
        same = spec(a, b, 5)
        rows = ledger.create_transfers(
            s,
            [
                spec(a, b, 60, id=p, kind="pending"),
                TransferSpec(id=uuid.uuid4(), code="post", kind="post", pending_id=p, amount=40),
                same,
                same,  # the same id twice in one set: applied once
            ],
        )
        assert rows[2] is rows[3]
        bal = ledger.balance_of(s, a.id)
        assert (bal.posted, bal.pending_debits) == (55, 0)
        assert available(s, b) == 45
        with pytest.raises(PendingResolved):  # resolving one pending twice in one set
            ledger.create_transfers(
                s,
                [
                    spec(a, b, 10, id=(q := uuid.uuid4()), kind="pending"),
                    TransferSpec(id=uuid.uuid4(), code="void", kind="void", pending_id=q),
                    TransferSpec(id=uuid.uuid4(), code="void", kind="void", pending_id=q),
                ],
            )
        assert ledger.balance_of(s, a.id).available == 55  # nothing of that set moved
        with pytest.raises(NotFound):
            ledger.create_transfer(
                s, TransferSpec(id=uuid.uuid4(), code="x", kind="void", pending_id=uuid.uuid4())
            )
        assert ledger.check(s).ok


def test_a_retry_in_a_new_transaction_returns_the_original(db: Database) -> None:
    tid = uuid.uuid4()
    with db.session() as s:
        src, a, *_ = accounts(s)
        first = ledger.create_transfer(s, spec(src, a, 7, id=tid))
    with db.session() as s:  # a fresh session: the row is only in the database
        again = ledger.create_transfer(s, spec(src, a, 7, id=tid))
        assert (again.id, again.amount) == (first.id, 7)
        assert available(s, a) == 7
        with pytest.raises(TransferExists):
            ledger.create_transfer(s, spec(src, a, 8, id=tid))
        assert ledger.check(s).ok


def test_a_linked_set_costs_a_handful_of_statements(db: Database) -> None:
    with db.session() as s:
        src, *users = accounts(s, 4)
        ledger.create_transfer(s, spec(src, users[0], 1))  # warm up
        statements: list[str] = []

        def count(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
            statements.append(statement.split()[0].upper())

        bind = s.connection()
        event.listen(bind, "before_cursor_execute", count)
        try:
            ledger.create_transfers(s, [spec(src, users[i % 4], 3) for i in range(40)])
        finally:
            event.remove(bind, "before_cursor_execute", count)
        # SAVEPOINT, the account read, one INSERT for all 40, one UPDATE per account, RELEASE
        assert statements.count("INSERT") == 1
        assert statements.count("UPDATE") == 5
        assert len(statements) <= 4 + 5, statements
        assert ledger.check(s).ok


# ---------------------------------------------------------------- racing transactions


@pytest.fixture
def fresh_db(tmp_path: Path) -> Iterator[Database]:
    if PG_URL:
        base = make_url(PG_URL)
        name = f"{base.database}_linked_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
        admin = make_engine(
            base.set(database="postgres").render_as_string(hide_password=False),
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = base.set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{tmp_path / 'linked.db'}"
    database = Database.from_url(url)
    upgrade(database.engine)
    yield database
    database.engine.dispose()
    if PG_URL:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def race(n: int, work: Any) -> list[Any]:
    """Run ``work(i)`` in ``n`` threads released together; their results or errors."""
    start = threading.Barrier(n)
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        start.wait()
        try:
            out[i] = work(i)
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_racing_sets_move_money_exactly_once(fresh_db: Database) -> None:
    with fresh_db.session() as s:
        src, a, b, c = accounts(s)
        ledger.create_transfer(s, spec(src, a, 1000))
        p = ledger.create_transfer(s, spec(a, b, 600, kind="pending"))
        ids = (src.id, a.id, b.id, c.id, p.id)
    src_id, a_id, b_id, c_id, pending_id = ids
    tid = uuid.uuid4()

    def same_id(_i: int) -> str:  # 8 retries of one linked set with fixed ids
        with fresh_db.session() as s:
            ledger.create_transfers(
                s,
                [
                    TransferSpec(id=tid, code="t", debit=a_id, credit=c_id, amount=100),
                    TransferSpec(
                        id=uuid.uuid5(tid, "fee"), code="t", debit=c_id, credit=b_id, amount=1
                    ),
                ],
            )
        return "ok"

    assert race(8, same_id) == ["ok"] * 8

    def resolve(i: int) -> str:  # 8 different resolutions of one pending transfer
        with fresh_db.session() as s:
            kind = "void" if i % 2 else "post"
            ledger.create_transfer(
                s, TransferSpec(id=uuid.uuid4(), code=kind, kind=kind, pending_id=pending_id)
            )
        return kind

    results = race(8, resolve)
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1, results
    assert all(isinstance(r, PendingResolved) for r in results if not isinstance(r, str))

    def overdraw(_i: int) -> str:  # a's available balance covers exactly 2 of these
        with fresh_db.session() as s:
            ledger.create_transfer(
                s, TransferSpec(id=uuid.uuid4(), code="o", debit=a_id, credit=c_id, amount=150)
            )
        return "ok"

    with fresh_db.session() as s:
        left = ledger.balance_of(s, a_id).available
    results = race(8, overdraw)
    assert sum(r == "ok" for r in results) == left // 150
    assert all(r == "ok" or isinstance(r, DomainError) for r in results), results
    with fresh_db.session() as s:
        report = ledger.check(s)
        assert report.ok, report.problems
        assert s.scalar(select(func.count()).where(LedgerTransfer.id == tid)) == 1
        assert ledger.balance_of(s, a_id).available == left % 150
        assert ledger.balance_of(s, src_id).posted == -1000
