"""Crash safety of the money flows: a failure injected between the steps of a purchase, a refund
or a release (a real exception raised from inside the database work — SQLAlchemy events on our
real rows and statements, no mocks of our code) leaves no partial state, answers a clean 500
problem+json, and the same request retried after the fault is gone succeeds exactly once.

These run on a fresh database with real commits (the fault must really roll back a transaction
the app would have committed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, event, func, select
from sqlalchemy.orm import Mapper

from cyxwiz.accounts.models import User
from cyxwiz.billing import flows, treasury
from cyxwiz.billing.models import Purchase
from cyxwiz.clock import TestClock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.models import LedgerAccount, LedgerTransfer
from cyxwiz.licensing.models import License
from cyxwiz.money import Currency
from cyxwiz.web.app import create_app
from tests.chain_support import chain_of
from tests.factories import Account, Api

USDC = 1_000_000
PRICE = 9_000_007
SECRET = "s3cr3t-fault-marker"


class InjectedFault(RuntimeError):
    pass


@pytest.fixture
def app_client(
    committed_db: Database, settings: Settings, clock: TestClock
) -> Iterator[TestClient]:
    app = create_app(settings, database=committed_db, clock=clock)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@contextmanager
def fault_after_insert(model: type, when: Callable[[Any], bool]) -> Iterator[list[Any]]:
    """Raise from inside the flush right after a matching row of ``model`` was INSERTed."""
    hits: list[Any] = []

    def boom(_mapper: Mapper[Any], _conn: Connection, target: Any) -> None:
        if when(target):
            hits.append(target)
            raise InjectedFault(f"injected after insert of {model.__name__} {SECRET}")

    event.listen(model, "after_insert", boom)
    try:
        yield hits
    finally:
        event.remove(model, "after_insert", boom)


@contextmanager
def fault_after_statement(db: Database, prefix: str, nth: int) -> Iterator[list[str]]:
    """Raise right after the ``nth`` statement starting with ``prefix`` ran on ``db``."""
    hits: list[str] = []

    def boom(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith(prefix):
            hits.append(statement)
            if len(hits) == nth:
                raise InjectedFault(f"injected after {prefix} {SECRET}")

    event.listen(db.engine, "after_cursor_execute", boom)
    try:
        yield hits
    finally:
        event.remove(db.engine, "after_cursor_execute", boom)


@contextmanager
def fault_on_commit(db: Database) -> Iterator[list[int]]:
    """The COMMIT itself fails (raised just before it reaches the database)."""
    hits: list[int] = []

    def boom(_conn: Any) -> None:
        hits.append(1)
        raise InjectedFault(f"injected on commit {SECRET}")

    event.listen(db.engine, "commit", boom)
    try:
        yield hits
    finally:
        event.remove(db.engine, "commit", boom)


def assert_clean_500(r: Any) -> None:
    assert r.status_code == 500, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == "internal_error"
    assert body["status"] == 500
    for leak in (SECRET, "Traceback", "InjectedFault", 'File "', "sqlalchemy", "INSERT", "UPDATE"):
        assert leak not in r.text


def state(db: Database, buyer: str) -> dict[str, Any]:
    """Everything a purchase by ``buyer`` could have left behind, plus the ledger's health."""
    with db.session() as s:
        uid = s.scalars(select(User.id).where(User.username == buyer)).one()
        acct = flows.user_account(s, uid, Currency.USDC)
        escrow = flows.platform_account(s, "escrow", Currency.USDC)
        purchases = s.scalars(select(Purchase).where(Purchase.buyer_id == uid)).all()
        report = ledger.check(s)
        return {
            "purchases": [(str(p.id), p.status) for p in purchases],
            "licenses": s.scalars(
                select(License.status).where(License.buyer_id == uid).order_by(License.created_at)
            ).all(),
            "purchase_transfers": sorted(
                s.scalars(
                    select(LedgerTransfer.code).where(
                        LedgerTransfer.ref.in_([f"purchase:{p.id}" for p in purchases])
                    )
                ).all()
            ),
            "transfers": s.scalar(select(func.count()).select_from(LedgerTransfer)),
            "balance": (acct.credits_posted - acct.debits_posted, acct.debits_pending),
            "escrow": (escrow.credits_posted - escrow.debits_posted, escrow.credits_pending),
            "accounts": sorted(
                (a.code, a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending)
                for a in s.scalars(select(LedgerAccount))
            ),
            "ledger_ok": (report.ok, report.problems),
        }


@pytest.fixture
def shop(app_client: TestClient) -> dict[str, Any]:
    """A creator with a paid model and a funded buyer."""
    api = Api(app_client)
    ada, bob = api.user(), api.user()
    m = api.published_model(ada)["full_name"]
    r = app_client.put(
        f"/api/v1/models/{m}/offers",
        json={"one_time": {"amount": PRICE, "currency": "USDC"}},
        headers=ada.headers,
    )
    assert r.status_code == 200, r.text
    api.fund(bob, 50 * USDC)  # a deposit on the app's chain
    return {"model": m, "ada": ada, "bob": bob}


def buy(c: TestClient, who: Account, model: str, key: str) -> Any:
    return c.post(
        f"/api/v1/models/{model}/purchase", headers={**who.headers, "Idempotency-Key": key}
    )


PURCHASE_FAULTS: dict[str, Callable[[Database], Any]] = {
    # step 1: the license row is flushed, nothing else yet
    "after_license_insert": lambda db: fault_after_insert(License, lambda t: True),
    # step 2: license and purchase rows flushed
    "after_purchase_insert": lambda db: fault_after_insert(Purchase, lambda t: True),
    # step 3: the escrow (pending) transfer row is inserted, balances not yet moved
    "after_escrow_transfer_insert": lambda db: fault_after_insert(
        LedgerTransfer, lambda t: t.code == "purchase.escrow"
    ),
    # step 4: both balance UPDATEs of the escrow transfer ran (the flow's last write)
    "after_balances_moved": lambda db: fault_after_statement(db, "UPDATE LEDGER_ACCOUNTS", 2),
    # step 5: all the work is done and the COMMIT fails
    "on_commit": fault_on_commit,
}


@pytest.mark.parametrize("fault", list(PURCHASE_FAULTS))
def test_purchase_crash_leaves_nothing_and_the_retry_charges_once(
    fault: str, app_client: TestClient, committed_db: Database, shop: dict[str, Any]
) -> None:
    c, bob, m = app_client, shop["bob"], shop["model"]
    before = state(committed_db, bob.username)
    assert before["balance"] == (50 * USDC, 0)
    assert before["ledger_ok"] == (True, [])

    with PURCHASE_FAULTS[fault](committed_db) as hits:
        r = buy(c, bob, m, key="crash-1")
    assert hits, "the fault never fired: the test did not test anything"
    assert_clean_500(r)
    after = state(committed_db, bob.username)
    assert after == before  # no purchase, no license, no transfer, every account unchanged

    # the fault is gone: the same key now buys, exactly once
    r1 = buy(c, bob, m, key="crash-1")
    assert r1.status_code == 201, r1.text
    r2 = buy(c, bob, m, key="crash-1")
    assert r2.status_code == 200, r2.text
    assert r2.json()["id"] == r1.json()["id"]
    done = state(committed_db, bob.username)
    assert done["purchases"] == [(r1.json()["id"], "escrow")]
    assert done["licenses"] == ["active"]
    assert done["purchase_transfers"] == ["purchase.escrow"]
    assert done["balance"] == (50 * USDC, PRICE)
    assert done["escrow"] == (0, PRICE)
    assert done["ledger_ok"] == (True, [])


REFUND_FAULTS: dict[str, Callable[[Database], Any]] = {
    "after_void_insert": lambda db: fault_after_insert(
        LedgerTransfer, lambda t: t.code == "refund.void"
    ),
    "after_balances_moved": lambda db: fault_after_statement(db, "UPDATE LEDGER_ACCOUNTS", 2),
    "after_purchase_status": lambda db: fault_after_statement(db, "UPDATE PURCHASES", 1),
    "on_commit": fault_on_commit,
}


@pytest.mark.parametrize("fault", list(REFUND_FAULTS))
def test_refund_crash_leaves_the_purchase_intact_and_the_retry_refunds_once(
    fault: str, app_client: TestClient, committed_db: Database, shop: dict[str, Any]
) -> None:
    c, bob, m = app_client, shop["bob"], shop["model"]
    lic = buy(c, bob, m, key="k").json()["license"]
    before = state(committed_db, bob.username)
    assert before["balance"] == (50 * USDC, PRICE)

    with REFUND_FAULTS[fault](committed_db) as hits:
        r = c.post(f"/api/v1/licenses/{lic['id']}/refund", headers=bob.headers)
    assert hits
    assert_clean_500(r)
    assert state(committed_db, bob.username) == before
    assert c.get(f"/api/v1/licenses/{lic['id']}", headers=bob.headers).json()["status"] == "active"

    for _ in range(2):  # the retry refunds; a second retry changes nothing
        r = c.post(f"/api/v1/licenses/{lic['id']}/refund", headers=bob.headers)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "refunded"
    done = state(committed_db, bob.username)
    assert done["purchase_transfers"] == ["purchase.escrow", "refund.void"]
    assert done["balance"] == (50 * USDC, 0)
    assert done["escrow"] == (0, 0)
    assert done["licenses"] == ["refunded"]
    assert done["ledger_ok"] == (True, [])


RELEASE_FAULTS: dict[str, Callable[[Database], Any]] = {
    "after_capture_insert": lambda db: fault_after_insert(
        LedgerTransfer, lambda t: t.code == "purchase.capture"
    ),
    "after_fee_insert": lambda db: fault_after_insert(
        LedgerTransfer, lambda t: t.code == "purchase.fee"
    ),
    "after_share_insert": lambda db: fault_after_insert(
        LedgerTransfer, lambda t: t.code == "purchase.share"
    ),
    "after_purchase_status": lambda db: fault_after_statement(db, "UPDATE PURCHASES", 1),
    "on_commit": fault_on_commit,
}


@pytest.mark.parametrize("fault", list(RELEASE_FAULTS))
def test_release_crash_pays_nothing_and_the_next_run_pays_once(
    fault: str,
    app_client: TestClient,
    committed_db: Database,
    clock: TestClock,
    shop: dict[str, Any],
) -> None:
    c, bob, ada, m = app_client, shop["bob"], shop["ada"], shop["model"]
    assert buy(c, bob, m, key="k").status_code == 201
    clock.advance(timedelta(days=7, seconds=1))
    before = state(committed_db, bob.username)

    with (
        RELEASE_FAULTS[fault](committed_db) as hits,
        pytest.raises(InjectedFault),
        committed_db.session() as s,
    ):
        flows.release_due(s, now=clock.now())
    assert hits
    assert state(committed_db, bob.username) == before

    with committed_db.session() as s:
        assert flows.release_due(s, now=clock.now()) == 1
    with committed_db.session() as s:
        assert flows.release_due(s, now=clock.now()) == 0
    done = state(committed_db, bob.username)
    assert done["purchases"][0][1] == "released"
    assert done["purchase_transfers"] == [
        "purchase.capture",
        "purchase.escrow",
        "purchase.fee",
        "purchase.share",
    ]
    assert done["balance"] == (50 * USDC - PRICE, 0)
    assert done["escrow"] == (0, 0)
    fee = PRICE * 2000 // 10_000
    earned = c.get("/api/v1/balance", headers=ada.headers).json()["USDC"]["earnings"]
    assert earned["available"] == PRICE - fee
    assert done["ledger_ok"] == (True, [])


def test_a_fault_in_one_request_does_not_poison_the_next(
    app_client: TestClient, committed_db: Database, shop: dict[str, Any]
) -> None:
    """After a crashed purchase the pooled connection is healthy: unrelated money requests by
    another user succeed at once and see consistent balances."""
    c, bob, m = app_client, shop["bob"], shop["model"]
    eve = Api(c).user()
    with fault_after_insert(LedgerTransfer, lambda t: t.code == "purchase.escrow"):
        assert_clean_500(buy(c, bob, m, key="x"))
    Api(c).fund(eve, 20 * USDC)
    assert buy(c, eve, m, key="x").status_code == 201
    with committed_db.session() as s:
        assert ledger.check(s).ok
        assert all(v.ok for v in treasury.reconcile(s, chain=chain_of(c)))
