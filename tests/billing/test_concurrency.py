"""Money under real concurrency: real threads, real commits, a fresh database per test (never the
shared rolled-back one), the real app behind uvicorn and one httpx client per thread.

Runs on SQLite (one writer at a time: writers must wait on busy_timeout, never fail) and on
PostgreSQL (row locks). Buyers are funded the way users are: test tokens minted to a wallet on
the app's dev chain, a deposit request paid by that wallet, scanned over HTTP. Every test ends
with `ledger check` clean, money conserved and the vaults reconciled with the chain.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.billing import flows, treasury
from cyxwiz.billing.models import CreatorDebt, Purchase
from cyxwiz.db import Database
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.models import LedgerAccount, LedgerTransfer
from cyxwiz.licensing.models import License
from cyxwiz.money import Currency, allocate, bps_of
from tests.billing.conftest import LiveServer, register
from tests.chain_support import funded_wallet, pay
from tests.factories import Account, Api, tiny_onnx

pytestmark = pytest.mark.slow

USDC = 1_000_000
T = TypeVar("T")


# ---------------------------------------------------------------- helpers


def run_together(fns: list[Callable[[], T]], timeout: float = 120) -> list[T | BaseException]:
    """Run every fn in its own thread, released at the same instant by a barrier; returns each
    result or the exception it raised, in order."""
    barrier = threading.Barrier(len(fns))
    out: list[Any] = [None] * len(fns)

    def runner(i: int, fn: Callable[[], T]) -> None:
        barrier.wait()
        try:
            out[i] = fn()
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=runner, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a thread hung"
    return out


def paid_model(c: httpx.Client, owner: Account, price: int, contributors: Any = None) -> str:
    m = Api(c).published_model(owner, files={"model.onnx": tiny_onnx()})  # type: ignore[arg-type]
    full = str(m["full_name"])
    r = c.put(
        f"/api/v1/models/{full}/offers",
        json={"one_time": {"amount": price, "currency": "USDC"}},
        headers=owner.headers,
    )
    assert r.status_code == 200, r.text
    if contributors:
        r = c.patch(
            f"/api/v1/models/{full}", json={"contributors": contributors}, headers=owner.headers
        )
        assert r.status_code == 200, r.text
    return full


def fund(live: LiveServer, c: httpx.Client, who: Account, amount: int) -> None:
    """A deposit of ``amount`` USDC from a fresh wallet holding test tokens, credited."""
    wallet = funded_wallet(live.chain, Currency.USDC, amount)
    r = c.post("/api/v1/deposits", json={"amount": amount}, headers=who.headers)
    assert r.status_code == 201, r.text
    pay(live.chain, wallet, r.json()["url"])
    r = c.post(f"/api/v1/deposits/{r.json()['id']}/scan", headers=who.headers)
    assert r.status_code == 200, r.text
    assert r.json()["credited"]["amount"] == amount, r.text


def balance(c: httpx.Client, who: Account) -> dict[str, int]:
    r = c.get("/api/v1/balance", headers=who.headers)
    assert r.status_code == 200, r.text
    return dict(r.json()["USDC"]["balance"])


def buy(c: httpx.Client, who: Account, model: str, key: str) -> httpx.Response:
    return c.post(
        f"/api/v1/models/{model}/purchase", headers={**who.headers, "Idempotency-Key": key}
    )


def outcome(r: httpx.Response | BaseException) -> tuple[int, str]:
    if isinstance(r, BaseException):
        return (0, f"{type(r).__name__}: {r}")
    body = r.json()
    return r.status_code, str(body.get("code", "ok")) if r.status_code >= 400 else "ok"


def user_id(db: Database, username: str) -> uuid.UUID:
    with db.session() as s:
        return s.scalars(select(User.id).where(User.username == username)).one()


def assert_ledger_clean_and_conserved(live: LiveServer) -> None:
    """`ledger check` is clean; per currency, what every account holds sums to what the vault
    mirror took in (deposits are the only source of money in these tests), and that is what
    the vault holds on chain."""
    with live.db.session() as s:
        report = ledger.check(s)
        assert report.ok, report.problems
        vaults = {v.currency: v for v in treasury.reconcile(s, chain=live.chain)}
        for cur in Currency:
            vault = flows.platform_account(s, "vault", cur)
            took_in = vault.debits_posted - vault.credits_posted
            assert vault.debits_pending == vault.credits_pending == 0
            assert vaults[cur.value].ok, vaults[cur.value].problem()
            assert vaults[cur.value].on_chain == took_in
            held = s.execute(
                select(
                    func.coalesce(func.sum(LedgerAccount.credits_posted), 0)
                    - func.coalesce(func.sum(LedgerAccount.debits_posted), 0)
                ).where(LedgerAccount.currency == cur.value, LedgerAccount.id != vault.id)
            ).scalar_one()
            assert held == took_in, (cur, held, took_in)
            pending = s.execute(
                select(
                    func.coalesce(func.sum(LedgerAccount.credits_pending), 0),
                    func.coalesce(func.sum(LedgerAccount.debits_pending), 0),
                ).where(LedgerAccount.currency == cur.value)
            ).one()
            assert pending[0] == pending[1]


def transfers_for(s: Session, purchase_id: uuid.UUID) -> Counter[str]:
    codes = s.scalars(
        select(LedgerTransfer.code).where(LedgerTransfer.ref == f"purchase:{purchase_id}")
    ).all()
    return Counter(codes)


# ---------------------------------------------------------------- (a) one balance, 32 buyers


def test_32_concurrent_purchases_against_one_balance_exactly_k_succeed(live: LiveServer) -> None:
    """32 threads buy 32 different paid models with ONE buyer whose balance covers exactly k:
    k get 201, the other 32−k get 402 insufficient_funds, nothing else; the balance is charged
    exactly k times and never goes below zero."""
    n, k, price = 32, 11, 3_000_001  # odd price
    initial = k * price + price - 1  # covers k purchases, one unit short of k+1
    with live.client() as c:
        owner, buyer = register(c, "conc-owner"), register(c, "conc-buyer")
        models = [paid_model(c, owner, price) for _ in range(n)]
        fund(live, c, buyer, initial)

    def attempt(i: int) -> Callable[[], httpx.Response]:
        def go() -> httpx.Response:
            with live.client() as c:
                return buy(c, buyer, models[i], key=f"buy-{i}")

        return go

    results = run_together([attempt(i) for i in range(n)])
    outcomes = Counter(outcome(r) for r in results)
    assert outcomes == Counter({(201, "ok"): k, (402, "insufficient_funds"): n - k}), outcomes
    for r in results:
        assert isinstance(r, httpx.Response)
        if r.status_code == 402:
            assert r.headers["content-type"].startswith("application/problem+json")

    with live.client() as c:
        bal = balance(c, buyer)
        assert (bal["posted"], bal["pending"], bal["available"]) == (
            initial,
            k * price,
            initial - k * price,
        )
        licenses = c.get("/api/v1/licenses", headers=buyer.headers).json()
        assert len(licenses) == k
    bid = user_id(live.db, buyer.username)
    with live.db.session() as s:
        rows = s.scalars(select(Purchase).where(Purchase.buyer_id == bid)).all()
        assert len(rows) == k
        bought = {r.json()["id"] for r in results if isinstance(r, httpx.Response) and r.is_success}
        assert {str(p.id) for p in rows} == bought
        for p in rows:
            assert transfers_for(s, p.id) == Counter({"purchase.escrow": 1})
        assert (
            s.scalar(select(func.count()).select_from(License).where(License.buyer_id == bid)) == k
        )
    assert_ledger_clean_and_conserved(live)


# ---------------------------------------------------------------- (b) one key, 16 retries


def test_16_concurrent_retries_with_one_idempotency_key_charge_once(live: LiveServer) -> None:
    """16 threads send the same purchase with the same Idempotency-Key at the same instant:
    one purchase row, one escrow charge, every response names the same purchase (201 once,
    200 for the others)."""
    price = 7_000_003
    with live.client() as c:
        owner, buyer = register(c, "idem-owner"), register(c, "idem-buyer")
        model = paid_model(c, owner, price)
        fund(live, c, buyer, 100 * USDC)

    def attempt() -> httpx.Response:
        with live.client() as c:
            return buy(c, buyer, model, key="same-key")

    results = run_together([attempt for _ in range(16)])
    statuses = Counter(outcome(r) for r in results)
    assert statuses == Counter({(201, "ok"): 1, (200, "ok"): 15}), statuses
    ids = {r.json()["id"] for r in results if isinstance(r, httpx.Response)}
    assert len(ids) == 1
    license_ids = {r.json()["license"]["id"] for r in results if isinstance(r, httpx.Response)}
    assert len(license_ids) == 1

    with live.client() as c:
        bal = balance(c, buyer)
        assert (bal["posted"], bal["pending"]) == (100 * USDC, price)
    bid = user_id(live.db, buyer.username)
    with live.db.session() as s:
        rows = s.scalars(select(Purchase).where(Purchase.buyer_id == bid)).all()
        assert [str(p.id) for p in rows] == list(ids)
        assert transfers_for(s, rows[0].id) == Counter({"purchase.escrow": 1})
    assert_ledger_clean_and_conserved(live)


# ---------------------------------------------------------------- (c) two release runners


def _expected_release(p: Purchase) -> dict[str, int]:
    fee = bps_of(p.amount, p.fee_bps)
    parts = allocate(p.amount - fee, [int(x["share_bps"]) for x in p.splits])
    return {x["user_id"]: part for x, part in zip(p.splits, parts, strict=True)} | {"fee": fee}


def test_two_release_runners_release_each_purchase_exactly_once(live: LiveServer) -> None:
    """Two release_due runners (two threads, two sessions, small batches like the CLI loop)
    over the same 24 due purchases: each purchase is released exactly once, the fee and each
    contributor's share are paid exactly once and sum to the purchase amount, and neither
    runner fails."""
    n = 24
    with live.client() as c:
        ada, cy = register(c, "rel-ada"), register(c, "rel-cy")
        split = [
            {"username": ada.username, "share_bps": 6667},
            {"username": cy.username, "share_bps": 3333},
        ]
        models = [paid_model(c, ada, 1_000_001 + 2 * i, split) for i in range(n)]
        buyers = [register(c, f"rel-buyer{i}") for i in range(3)]
        for b in buyers:
            fund(live, c, b, 1_000 * USDC)
        for i, m in enumerate(models):
            r = buy(c, buyers[i % 3], m, key=f"k{i}")
            assert r.status_code == 201, r.text
    live.clock.advance(timedelta(days=7, seconds=1))
    now = live.clock.now()

    def runner() -> int:
        total = 0
        while True:
            with live.db.session() as s:
                got = flows.release_due(s, now=now, limit=2)
            total += got
            if got == 0:
                return total

    results = run_together([runner, runner])
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sum(r for r in results if isinstance(r, int)) == n, results

    ada_id, cy_id = user_id(live.db, ada.username), user_id(live.db, cy.username)
    expect = Counter[str]()
    with live.db.session() as s:
        rows = s.scalars(select(Purchase).where(Purchase.creator_id == ada_id)).all()
        assert len(rows) == n
        for p in rows:
            assert p.status == "released"
            codes = transfers_for(s, p.id)
            assert codes == Counter(
                {
                    "purchase.escrow": 1,
                    "purchase.capture": 1,
                    "purchase.fee": 1,
                    "purchase.share": 2,
                }
            ), codes
            paid = s.scalars(
                select(LedgerTransfer.amount).where(
                    LedgerTransfer.ref == f"purchase:{p.id}",
                    LedgerTransfer.code.in_(("purchase.fee", "purchase.share")),
                )
            ).all()
            assert sum(paid) == p.amount
            expect.update(_expected_release(p))
        for uid in (ada_id, cy_id):
            earn = ledger.balance_of(s, flows.earnings_account(s, uid, Currency.USDC).id)
            assert earn.posted == expect[str(uid)]
        revenue = ledger.balance_of(s, flows.platform_account(s, "revenue", Currency.USDC).id)
        assert revenue.posted == expect["fee"]
        escrow = ledger.balance_of(s, flows.platform_account(s, "escrow", Currency.USDC).id)
        assert (escrow.posted, escrow.pending_credits) == (0, 0)
    assert_ledger_clean_and_conserved(live)


def test_concurrent_releases_repay_a_creator_debt_at_most_once(live: LiveServer) -> None:
    """A creator owes the platform D after a late (admin) refund. Two of their purchases are
    released by two runners at the same time: together they may repay at most D, and the debt
    left plus what was repaid must equal D (receivables stay equal to the debts' remaining)."""
    price = 10 * USDC
    with live.client() as c:
        ada, root = register(c, "debt-ada"), register(c, "debt-root")
        b1, b2, b3 = (register(c, f"debt-buyer{i}") for i in range(3))
        m1, m2, m3 = (paid_model(c, ada, price) for _ in range(3))
        for b in (b1, b2, b3):
            fund(live, c, b, 100 * USDC)
        lic = buy(c, b1, m1, "k").json()["license"]
    with live.db.session() as s:
        s.scalars(select(User).where(User.username == root.username)).one().role = "admin"
    ada_id = user_id(live.db, ada.username)
    live.clock.advance(timedelta(days=8))
    with live.db.session() as s:
        assert flows.release_due(s, now=live.clock.now()) == 1
    with live.db.session() as s:  # the creator's earnings leave (a payout)
        earn = flows.earnings_account(s, ada_id, Currency.USDC)
        out = flows.platform_account(s, "payouts-test", Currency.USDC)
        ledger.create_transfer(
            s,
            ledger.TransferSpec(
                id=uuid.uuid4(),
                code="payout",
                debit=earn.id,
                credit=out.id,
                amount=ledger.balance_of(s, earn.id).available,
            ),
        )
    with live.client() as c:
        r = c.post(f"/api/v1/licenses/{lic['id']}/refund", headers=root.headers)
        assert r.status_code == 200, r.text
        debt = c.get("/api/v1/creator/earnings", headers=ada.headers).json()["debt"]["USDC"]
        assert debt == 8 * USDC  # the whole 80% share was fronted by the platform
        # two more sales whose shares (8 USDC each) could each repay the whole debt
        assert buy(c, b2, m2, "k").status_code == 201
        assert buy(c, b3, m3, "k").status_code == 201
    live.clock.advance(timedelta(days=8))
    now = live.clock.now()

    # Runner A releases one purchase and holds its transaction open; runner B starts while
    # A is uncommitted, then A commits. This is the interleaving two scheduler processes hit.
    first = live.db.sessionmaker()
    b_result: list[Any] = []
    try:
        assert flows.release_due(first, now=now, limit=1) == 1

        def runner_b() -> None:
            try:
                with live.db.session() as s:
                    b_result.append(flows.release_due(s, now=now, limit=1))
            except BaseException as exc:
                b_result.append(exc)

        tb = threading.Thread(target=runner_b)
        tb.start()
        tb.join(1.5)  # B is now blocked on A's locks (or done, if it found nothing)
        first.commit()
    finally:
        first.close()
    tb.join(60)
    assert not tb.is_alive()
    with live.db.session() as s:
        got = flows.release_due(s, now=now)  # whatever is left
    released_b = b_result[0] if isinstance(b_result[0], int) else 0

    with live.db.session() as s:
        debts = s.scalars(select(CreatorDebt).where(CreatorDebt.user_id == ada_id)).all()
        owed = sum(d.amount for d in debts)
        remaining = sum(d.remaining for d in debts)
        repaid = sum(
            s.scalars(
                select(LedgerTransfer.amount).where(LedgerTransfer.code == "debt.repay")
            ).all()
        )
        recv = flows.platform_account(s, "receivables", Currency.USDC)
        outstanding = recv.debits_posted - recv.credits_posted
        statuses = Counter(
            s.scalars(select(Purchase.status).where(Purchase.creator_id == ada_id)).all()
        )
    assert statuses == Counter({"refunded": 1, "released": 2}), (statuses, b_result, got)
    assert 1 + released_b + got == 2
    assert repaid <= owed, f"repaid {repaid} on a debt of {owed}"
    assert owed - remaining == repaid
    assert outstanding == remaining
    assert not [r for r in b_result if isinstance(r, BaseException)], b_result
    assert_ledger_clean_and_conserved(live)


def test_purchases_while_a_release_runner_works_do_not_fail(live: LiveServer) -> None:
    """While a release runner releases 12 buyers' due purchases (one transaction, like the
    scheduler's tick), the same 12 buyers each buy another model. Every purchase succeeds
    (201), the runner releases all 12, nothing fails with a deadlock or a 500."""
    n, price = 12, 2_000_001
    with live.client() as c:
        ada = register(c, "busy-ada")
        buyers = [register(c, f"busy-buyer{i}") for i in range(n)]
        first = [paid_model(c, ada, price) for _ in range(n)]
        second = [paid_model(c, ada, price) for _ in range(n)]
        for b, m in zip(buyers, first, strict=True):
            fund(live, c, b, 10 * USDC)
            assert buy(c, b, m, "first").status_code == 201
    live.clock.advance(timedelta(days=7, seconds=1))

    def release() -> int:
        with live.db.session() as s:
            return flows.release_due(s, now=live.clock.now())

    def purchase(i: int) -> Callable[[], httpx.Response]:
        def go() -> httpx.Response:
            with live.client() as c:
                return buy(c, buyers[i], second[i], "second")

        return go

    results = run_together([release] + [purchase(i) for i in range(n)])
    assert results[0] == n, repr(results[0])
    assert Counter(outcome(r) for r in results[1:]) == Counter({(201, "ok"): n}), [
        outcome(r) for r in results[1:]
    ]
    with live.client() as c:
        for b in buyers:
            bal = balance(c, b)
            assert (bal["posted"], bal["pending"]) == (10 * USDC - price, price)
    assert_ledger_clean_and_conserved(live)


# ---------------------------------------------------------------- (d) refund vs release


def test_refund_and_release_race_at_the_window_edge(live: LiveServer) -> None:
    """Buyers ask for refunds 1 µs before their windows close while a release runner (whose
    clock says the windows just closed) releases the same purchases. Per purchase exactly one
    side wins: refunded (200, buyer whole, creator unpaid) or released (refund 409, creator
    paid, license active). No 500s, money conserved."""
    n = 8
    price = 5_000_001
    with live.client() as c:
        ada = register(c, "edge-ada")
        buyers = [register(c, f"edge-buyer{i}") for i in range(n)]
        models = [paid_model(c, ada, price) for _ in range(n)]
        lics = []
        for b, m in zip(buyers, models, strict=True):
            fund(live, c, b, 50 * USDC)
            r = buy(c, b, m, "k")
            assert r.status_code == 201, r.text
            lics.append(r.json()["license"]["id"])
    ada_id = user_id(live.db, ada.username)
    with live.db.session() as s:
        ends = s.scalars(select(Purchase.refund_window_ends_at)).first()
    assert ends is not None
    live.clock.set(ends - timedelta(microseconds=1))  # the app (refunds) is still inside

    def refund(i: int) -> Callable[[], httpx.Response]:
        def go() -> httpx.Response:
            with live.client() as c:
                return c.post(f"/api/v1/licenses/{lics[i]}/refund", headers=buyers[i].headers)

        return go

    def release() -> int:
        total = 0
        while True:
            with live.db.session() as s:
                got = flows.release_due(s, now=ends, limit=1)
            total += got
            if got == 0:
                return total

    results = run_together([release] + [refund(i) for i in range(n)])
    released = results[0]
    assert not isinstance(released, BaseException), repr(released)
    refunds = results[1:]
    assert all(outcome(r)[0] in (200, 409) for r in refunds), [outcome(r) for r in refunds]

    with live.db.session() as s:
        rows = {
            str(p.license_id): p
            for p in s.scalars(select(Purchase).where(Purchase.creator_id == ada_id))
        }
        for lic_id, r, b in zip(lics, refunds, buyers, strict=True):
            assert isinstance(r, httpx.Response)
            p = rows[lic_id]
            codes = transfers_for(s, p.id)
            bal = ledger.balance_of(s, flows.user_account(s, p.buyer_id, Currency.USDC).id)
            lic = s.get(License, p.license_id)
            assert lic is not None
            if r.status_code == 200:
                assert p.status == "refunded", (b.username, codes)
                assert lic.status == "refunded"
                assert (bal.posted, bal.pending_debits) == (50 * USDC, 0)
            else:
                assert p.status == "released", (b.username, r.json())
                assert lic.status == "active"
                assert (bal.posted, bal.pending_debits) == (50 * USDC - price, 0)
                assert codes["purchase.capture"] == 1
        n_released = sum(1 for p in rows.values() if p.status == "released")
        n_refunded_after_release = sum(
            1
            for p in rows.values()
            if p.status == "refunded" and transfers_for(s, p.id)["purchase.capture"]
        )
    assert released == n_released + n_refunded_after_release
    assert_ledger_clean_and_conserved(live)
