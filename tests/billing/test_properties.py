"""Property tests of the money flows: Hypothesis drives random sequences of deposits (a Solana
Pay request, paid on the real local chain by a wallet holding test tokens, then scanned; retried
and reused Idempotency-Keys), purchase (random buyer, model, odd prices, USDC or CYX, retried
Idempotency-Keys), refund (buyer, admin, stranger), clock advance + release_due, payouts draining
creator earnings, and admin refunds after release — through the real flows on the real database
and chain, one session per step like a request.

A plain-Python model of the money predicts every outcome; after every step the database must
match it exactly and every invariant must hold:

- `ledger.check` is clean and no account with a limit is below it;
- every purchase fully happened (purchase row + license + pending escrow transfer, with the
  later transfers its status implies) or left no trace (no row, no transfer, balance unchanged);
- a release pays fee + shares (+ debt repayments) summing exactly to the amount, the fee is
  floor(amount × tier bps / 10000) for the creator's tier at purchase time;
- a refund gives back exactly what was paid, never more (the buyer's balance returns to what it
  would have been without the purchase);
- a deposit credits exactly what reached the vault, once: a retried request or a second scan
  credits nothing, a key reused for another request is refused;
- money is conserved: per currency, all user balances + earnings + platform accounts (revenue,
  escrow, receivables, payouts) sum to what the vault mirror (``platform:vault``) took in, and
  that is exactly what the vault received on chain.

Each example runs inside a SAVEPOINT of the test's rolled-back transaction, so examples start
from the same users and models and never see each other's money. The chain is one per test
function (cheap examples) and the buyers' wallets are minted once: the chain is not rolled back,
so each example reconciles the vault against its balance when the example started.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from solders.keypair import Keypair
from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.billing import deposits, flows
from cyxwiz.billing.models import CreatorDebt, Deposit, Purchase
from cyxwiz.catalog.models import Model
from cyxwiz.chain import tokens
from cyxwiz.chain.interfaces import Chain
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.errors import DomainError
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.models import LedgerAccount, LedgerTransfer
from cyxwiz.licensing import service as licensing
from cyxwiz.licensing.models import License
from cyxwiz.licensing.schemas import OffersDocument
from cyxwiz.money import Currency, allocate, bps_of
from tests.chain_support import chain_of, pay
from tests.factories import Api

USDC = 1_000_000
START = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
CURRENCIES = (Currency.USDC, Currency.CYX)
WEEK = 7 * 86_400  # the refund window

# the world every example starts from: (name, role)
BUYERS = ("b0", "b1", "ada")  # ada is also a creator: she may buy cy's model, not her own
CREATORS = ("ada", "cy", "dee")
STRANGER = "dee"
ADMIN = "root"
# models: (owner, contributors (name, share_bps)) — odd splits so rounding matters
MODELS = (
    ("ada", (("ada", 10_000),)),
    ("ada", (("ada", 6667), ("dee", 3333))),
    ("cy", (("cy", 3334), ("dee", 3333), ("ada", 3333))),
    ("cy", (("cy", 10_000),)),
    ("dee", (("dee", 9999), ("cy", 1))),
)

prices = st.one_of(
    st.integers(1, 60 * USDC),
    st.sampled_from(
        [1, 2, 3, 7, 999_999, 10_000_001, 333_333_333, 999 * USDC + 999_999, 1_500 * USDC + 1]
    ),
)
DEPOSIT_MAX = 1_000_000 * USDC  # Settings.deposit_max_amount
WALLET_TOKENS = 10**18  # test tokens in each buyer's wallet: more than any run deposits
deposit_amounts = st.one_of(
    st.integers(1, 200 * USDC),
    st.sampled_from([1, 3, 50 * USDC, 500 * USDC, 2_000 * USDC, 10_000 * USDC]),
    st.just(DEPOSIT_MAX + 1),  # over the per-request maximum: refused
)
# 0-7: a new Idempotency-Key; 8: retry an earlier key unchanged; 9: reuse a key for a new request
key_choice = st.integers(0, 9)


@dataclass
class World:
    db: Database
    connection: Connection
    settings: Settings
    chain: Chain
    wallets: dict[str, Keypair]  # each buyer's wallet, holding test tokens from the dev chain
    users: dict[str, uuid.UUID]
    models: list[uuid.UUID]


@dataclass
class ModelPurchase:
    id: uuid.UUID
    key: str
    buyer: str
    model: int
    currency: Currency
    amount: int
    list_price: int
    fee_bps: int
    ends: datetime
    status: str = "escrow"
    after_release: bool = False


@dataclass
class Money:
    """What the database must hold, computed independently of the code under test."""

    deposited: dict[Currency, int] = field(default_factory=lambda: defaultdict(int))
    posted: dict[tuple[str, Currency], int] = field(default_factory=lambda: defaultdict(int))
    pending: dict[tuple[str, Currency], int] = field(default_factory=lambda: defaultdict(int))
    earnings: dict[tuple[str, Currency], int] = field(default_factory=lambda: defaultdict(int))
    debt: dict[tuple[str, Currency], int] = field(default_factory=lambda: defaultdict(int))
    revenue: dict[Currency, int] = field(default_factory=lambda: defaultdict(int))
    paid_out: dict[Currency, int] = field(default_factory=lambda: defaultdict(int))
    released_usdc: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def assert_error(err: DomainError | None, code: str) -> None:
    assert err is not None, f"expected {code}, the step succeeded"
    assert err.code == code, err


def fee_bps_for(lifetime_usdc: int) -> int:
    """The tier table, restated: 20% below 1,000 USDC, 18% to 10,000, 15% to 100,000, then 12%."""
    if lifetime_usdc >= 100_000 * USDC:
        return 1200
    if lifetime_usdc >= 10_000 * USDC:
        return 1500
    if lifetime_usdc >= 1_000 * USDC:
        return 1800
    return 2000


def cyx_price(usdc: int) -> int:
    """15% off, at 0.25 USDC per CYX, rounded up (the buyer never pays less than the price)."""
    discounted = usdc - usdc * 1500 // 10_000
    return -(-discounted * 4)


class Shop:
    """Drives the real flows one step at a time and keeps the model of what must be true."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.savepoint = world.connection.begin_nested()
        self.now = START
        self.m = Money()
        self.prices: list[int] = []
        self.purchases: dict[uuid.UUID, ModelPurchase] = {}
        self.deposit_keys: dict[tuple[str, str], tuple[Currency, int]] = {}
        chain = world.chain  # not rolled back with the database: earlier examples' tokens stay
        self.vault_base = {c: chain.token_balance(chain.vault_of(c)) for c in CURRENCIES}
        self.keys_used: dict[str, list[str]] = defaultdict(list)
        self.seq = 0

    # ------------------------------------------------------------ helpers

    def session(self) -> Any:
        return self.world.db.session()

    def uid(self, name: str) -> uuid.UUID:
        return self.world.users[name]

    def new_key(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.seq}"

    def attempt(self, fn: Any) -> tuple[Any, DomainError | None]:
        """Run ``fn(session)`` as one request: committed on success, rolled back on error."""
        try:
            with self.session() as s:
                return fn(s), None
        except DomainError as exc:
            return None, exc

    # ------------------------------------------------------------ set-up

    def set_up(self, ps: list[int], funds: list[int]) -> None:
        """Random prices for the models and random starting balances for the buyers."""
        for (who, cur), amount in zip(
            [(b, c) for b in BUYERS for c in CURRENCIES], funds, strict=True
        ):
            if amount:
                self.deposit(who, cur, amount, 0, 0)
        self.prices = list(ps)
        with self.session() as s:
            for model_id, price in zip(self.world.models, ps, strict=True):
                model = s.get(Model, model_id)
                assert model is not None
                licensing.set_offers(
                    s,
                    model=model,
                    actor=model.owner,
                    document=OffersDocument.model_validate(
                        {"one_time": {"amount": price, "currency": "USDC"}}
                    ),
                )

    # ------------------------------------------------------------ rules

    def deposit(self, who: str, currency: Currency, amount: int, choice: int, pick: int) -> None:
        """A deposit request (new key, a plain retry, or a key reused for another request); a
        new one is paid on chain by the buyer's wallet; then the scan."""
        mine = [k for (u, k) in self.deposit_keys if u == who]
        key = mine[pick % len(mine)] if mine and choice >= 8 else self.new_key("d")
        if choice == 8 and mine:
            currency, amount = self.deposit_keys[(who, key)]  # a plain retry
        user, chain, settings = self.uid(who), self.world.chain, self.world.settings

        def request(s: Session) -> tuple[uuid.UUID, str, bool]:
            row, created = deposits.create_deposit(
                s,
                settings=settings,
                chain=chain,
                user=s.get(User, user),
                currency=currency,
                amount=amount,
                idempotency_key=key,
                now=self.now,
            )
            return row.id, deposits.payment_url(row, username=f"prop-{who}"), created

        result, err = self.attempt(request)
        previous = self.deposit_keys.get((who, key))
        event(f"deposit: {'new' if previous is None else 'retry'}: {err.code if err else 'ok'}")
        if previous is None and amount > settings.deposit_max_amount:
            assert_error(err, "invalid_amount")
            return
        if previous is not None and previous != (currency, amount):
            assert_error(err, "idempotency_key_reused")  # refused, nothing moves
            return
        assert err is None, err
        dep_id, url, created = result
        assert created is (previous is None)  # a retry answers with the first request
        if created:
            pay(chain, self.world.wallets[who], url)

        def scan(s: Session) -> int:
            row = s.get(Deposit, dep_id)
            assert row is not None
            return deposits.scan_deposit(
                s, settings=settings, chain=chain, deposit=row, now=self.now
            )

        changed, err = self.attempt(scan)
        assert err is None, err
        assert changed == int(created)  # a retried request and a rescan credit nothing more
        if created:
            self.deposit_keys[(who, key)] = (currency, amount)
            self.m.deposited[currency] += amount
            self.m.posted[(who, currency)] += amount

    def purchase(self, who: str, model: int, currency: Currency, choice: int, pick: int) -> None:
        keys = self.keys_used[who]
        key = keys[pick % len(keys)] if keys and choice >= 8 else self.new_key("p")
        if choice == 8 and keys:  # a plain retry of that purchase
            first = next(p for p in self.purchases.values() if p.buyer == who and p.key == key)
            model, currency = first.model, first.currency
        pid = uuid.uuid5(flows.NS, f"purchase:{self.uid(who)}:{key}")
        before_licenses = self.license_count(who)
        result, err = self.attempt(
            lambda s: flows.purchase(
                s,
                settings=self.world.settings,
                buyer=s.get(User, self.uid(who)),
                model=s.get(Model, self.world.models[model]),
                currency=currency,
                idempotency_key=key,
                now=self.now,
            )
        )
        expected = self.expect_purchase(who, model, currency, key, pid)
        event(f"purchase: {expected}")
        if expected in ("created", "retry"):
            assert err is None, (expected, err)
            row, created = result
            assert row.id == pid
            assert created is (expected == "created")
            if expected == "created":
                p = self.purchases[pid]
                assert (row.amount, row.currency, row.fee_bps) == (
                    p.amount,
                    p.currency.value,
                    p.fee_bps,
                )
            return
        assert_error(err, expected)
        if expected != "idempotency_key_reused":
            # no trace: no purchase row, no escrow transfer, no license (balances: invariants)
            with self.session() as s:
                assert s.get(Purchase, pid) is None
                assert s.get(LedgerTransfer, uuid.uuid5(flows.NS, f"{pid}:escrow")) is None
            assert self.license_count(who) == before_licenses

    def expect_purchase(
        self, who: str, model: int, currency: Currency, key: str, pid: uuid.UUID
    ) -> str:
        """Update the model for this purchase attempt; returns "created", "retry" or an error code."""
        if pid in self.purchases:
            p = self.purchases[pid]
            same = p.model == model and p.currency == currency
            return "retry" if same else "idempotency_key_reused"
        owner = MODELS[model][0]
        if owner == who:
            return "own_model"
        if any(
            p.buyer == who and p.model == model and p.status != "refunded"
            for p in self.purchases.values()
        ):
            return "already_licensed"
        price = self.prices[model]
        amount = price if currency is Currency.USDC else cyx_price(price)
        available = self.m.posted[(who, currency)] - self.m.pending[(who, currency)]
        if amount > available:
            return "insufficient_funds"
        self.purchases[pid] = ModelPurchase(
            id=pid,
            key=key,
            buyer=who,
            model=model,
            currency=currency,
            amount=amount,
            list_price=price,
            fee_bps=fee_bps_for(self.m.released_usdc[owner]),
            ends=self.now + timedelta(seconds=WEEK),
        )
        self.keys_used[who].append(key)
        self.m.pending[(who, currency)] += amount
        return "created"

    def refund(self, pick: int, actor: str) -> None:
        """Mostly a purchase not refunded yet; one time in five any (a repeated refund)."""
        live = [p for p in self.purchases.values() if p.status != "refunded"]
        pool = live if live and pick % 5 else list(self.purchases.values())
        if pool:
            self.refund_one(pool[pick % len(pool)], actor)

    def refund_one(self, p: ModelPurchase, actor: str) -> None:
        who = {"buyer": p.buyer, "admin": ADMIN, "stranger": STRANGER}[actor]

        def go(s: Session) -> Purchase:
            row = s.get(Purchase, p.id)
            assert row is not None
            return flows.refund(
                s, license=row.license, actor=s.get(User, self.uid(who)), now=self.now
            )

        before = self.m.posted[(p.buyer, p.currency)] - self.m.pending[(p.buyer, p.currency)]
        row, err = self.attempt(go)
        event(f"refund by {actor} of {p.status}: {err.code if err else 'ok'}")
        if actor == "stranger":
            assert_error(err, "license_not_found")
            return
        if p.status == "refunded":
            assert err is None, err
            assert row.status == "refunded"
            return
        if actor == "buyer" and self.now >= p.ends:
            assert_error(err, "refund_window_closed")
            return
        assert err is None, err
        assert row.status == "refunded"
        self.apply_refund(p)
        after = self.m.posted[(p.buyer, p.currency)] - self.m.pending[(p.buyer, p.currency)]
        assert after - before == p.amount  # exactly what was paid comes back

    def admin_refund_released(self, pick: int) -> None:
        """An admin refunds a purchase whose escrow was already released (late refund)."""
        released = [p for p in self.purchases.values() if p.status == "released"]
        if released:
            self.refund_one(released[pick % len(released)], "admin")

    def apply_refund(self, p: ModelPurchase) -> None:
        cur = p.currency
        if p.status == "escrow":
            self.m.pending[(p.buyer, cur)] -= p.amount
        else:  # after release: fee from revenue, shares from earnings, the rest fronted
            fee = bps_of(p.amount, p.fee_bps)
            self.m.revenue[cur] -= fee
            contributors = MODELS[p.model][1]
            parts = allocate(p.amount - fee, [bps for _, bps in contributors])
            for (name, _), part in zip(contributors, parts, strict=True):
                take = min(part, max(self.m.earnings[(name, cur)], 0))
                if take < part:
                    event("late refund fronted by the platform: creator debt")
                self.m.earnings[(name, cur)] -= take
                self.m.debt[(name, cur)] += part - take
            self.m.posted[(p.buyer, cur)] += p.amount
            self.m.released_usdc[MODELS[p.model][0]] -= p.list_price
            p.after_release = True
        p.status = "refunded"

    def advance(self, seconds: int) -> None:
        """Time passes (the scheduler may not have run yet: windows can close unreleased)."""
        self.now += timedelta(seconds=seconds)

    def release_due(self, limit: int) -> None:
        """A scheduler tick; with a small ``limit`` only the earliest-due purchases go."""
        with self.session() as s:
            released = flows.release_due(s, now=self.now, limit=limit)
            now_released = set(
                s.scalars(
                    select(Purchase.id).where(
                        Purchase.status == "released",
                        Purchase.id.in_([p.id for p in self.purchases.values()]),
                    )
                )
            )
        due = sorted(
            (p for p in self.purchases.values() if p.status == "escrow" and p.ends <= self.now),
            key=lambda p: p.ends,
        )
        assert released == min(len(due), limit)
        if released < len(due):  # which of equally-due purchases went first is the DB's choice
            picked = [p for p in due if p.id in now_released]
            assert len(picked) == released
            assert max(p.ends for p in picked) <= min(
                (p.ends for p in due if p.id not in now_released), default=self.now
            )
            due = picked
        event(f"release_due released {min(released, 2)}{'+' if released > 2 else ''}")
        for p in due:
            cur = p.currency
            fee = bps_of(p.amount, p.fee_bps)
            contributors = MODELS[p.model][1]
            parts = allocate(p.amount - fee, [bps for _, bps in contributors])
            assert fee + sum(parts) == p.amount
            self.m.revenue[cur] += fee
            for (name, _), part in zip(contributors, parts, strict=True):
                repay = min(self.m.debt[(name, cur)], part)
                if repay:
                    event("release repaid creator debt")
                self.m.debt[(name, cur)] -= repay
                self.m.earnings[(name, cur)] += part - repay
            self.m.pending[(p.buyer, cur)] -= p.amount
            self.m.posted[(p.buyer, cur)] -= p.amount
            self.m.released_usdc[MODELS[p.model][0]] += p.list_price
            p.status = "released"

    def payout(self, who: str, currency: Currency, pct: int) -> None:
        """Creator earnings leave the platform (as a payout would), so late refunds create debt."""
        amount = self.m.earnings[(who, currency)] * pct // 100
        if amount == 0:
            return
        with self.session() as s:
            earn = flows.earnings_account(s, self.uid(who), currency)
            sink = flows.platform_account(s, "payouts-test", currency)
            ledger.create_transfer(
                s,
                ledger.TransferSpec(
                    id=uuid.uuid4(), code="payout", debit=earn.id, credit=sink.id, amount=amount
                ),
            )
        self.m.earnings[(who, currency)] -= amount
        self.m.paid_out[currency] += amount

    # ------------------------------------------------------------ invariants

    def license_count(self, who: str) -> int:
        with self.session() as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(License)
                    .where(License.buyer_id == self.uid(who))
                )
                or 0
            )

    def every_invariant_holds(self) -> None:
        """One consistent read of the whole database after each step (a few bulk queries)."""
        with self.session() as s:
            report = ledger.check(s)
            assert report.ok, report.problems
            accounts = {
                a.code: a
                for a in s.scalars(select(LedgerAccount).execution_options(populate_existing=True))
            }
            for a in accounts.values():  # no balance below its limit
                if a.debits_must_not_exceed_credits:
                    assert a.debits_posted + a.debits_pending <= a.credits_posted, a.code
            debts = {
                (uid, cur): int(total)
                for uid, cur, total in s.execute(
                    select(
                        CreatorDebt.user_id, CreatorDebt.currency, func.sum(CreatorDebt.remaining)
                    ).group_by(CreatorDebt.user_id, CreatorDebt.currency)
                )
            }
            self.check_balances(accounts, debts)
            self.check_conservation(accounts)
            self.check_purchases(s, accounts)

    def check_balances(
        self, accounts: dict[str, LedgerAccount], debts: dict[tuple[uuid.UUID, str], int]
    ) -> None:
        m = self.m
        for cur in CURRENCIES:
            for name in {*BUYERS, *CREATORS}:
                uid = self.uid(name)
                bal = balance(accounts, f"user:{uid}:{cur}")
                assert bal == (m.posted[(name, cur)], m.pending[(name, cur)], 0), (name, cur)
                assert bal[0] - bal[1] >= 0
                earned = balance(accounts, f"earnings:{uid}:{cur}")
                assert earned == (m.earnings[(name, cur)], 0, 0), (name, cur)
                assert debts.get((uid, cur.value), 0) == m.debt[(name, cur)], (name, cur)
            assert balance(accounts, f"platform:revenue:{cur}") == (m.revenue[cur], 0, 0)
            in_escrow = sum(
                p.amount
                for p in self.purchases.values()
                if p.status == "escrow" and p.currency == cur
            )
            assert balance(accounts, f"platform:escrow:{cur}") == (0, 0, in_escrow)
            owed = sum(v for (_, c), v in m.debt.items() if c == cur)
            assert balance(accounts, f"platform:receivables:{cur}") == (-owed, 0, 0)

    def check_conservation(self, accounts: dict[str, LedgerAccount]) -> None:
        m, chain = self.m, self.world.chain
        for cur in CURRENCIES:
            vault = balance(accounts, f"platform:vault:{cur}")
            assert vault == (-m.deposited[cur], 0, 0)  # debit-normal: what it took in
            received = chain.token_balance(chain.vault_of(cur)) - self.vault_base[cur]
            assert received == m.deposited[cur]  # the vault on chain agrees with its mirror
            held = sum(
                a.credits_posted - a.debits_posted
                for code, a in accounts.items()
                if a.currency == cur.value and code != f"platform:vault:{cur}"
            )
            assert held == m.deposited[cur]
            assert (
                sum(v for (_, c), v in m.posted.items() if c == cur)
                + sum(v for (_, c), v in m.earnings.items() if c == cur)
                + m.revenue[cur]
                + m.paid_out[cur]
                - sum(v for (_, c), v in m.debt.items() if c == cur)
                == m.deposited[cur]
            )

    def check_purchases(self, s: Session, accounts: dict[str, LedgerAccount]) -> None:
        rows = {p.id: p for p in s.scalars(select(Purchase))}
        assert set(rows) == set(self.purchases)
        licenses = {lic.id: lic for lic in s.scalars(select(License))}
        transfers: dict[str, list[LedgerTransfer]] = defaultdict(list)
        for t in s.scalars(select(LedgerTransfer).where(LedgerTransfer.ref.like("purchase:%"))):
            transfers[t.ref or ""].append(t)
        for pid, p in self.purchases.items():
            row = rows[pid]
            assert (row.status, row.amount, row.currency, row.fee_bps) == (
                p.status,
                p.amount,
                p.currency.value,
                p.fee_bps,
            )
            lic = licenses[row.license_id]
            assert (lic.buyer_id, lic.model_id, lic.amount_paid) == (
                self.uid(p.buyer),
                self.world.models[p.model],
                p.amount,
            )
            assert lic.status == ("refunded" if p.status == "refunded" else "active")
            self.check_transfers(transfers.pop(f"purchase:{pid}", []), accounts, row, p)
        assert not transfers, f"transfers of purchases that do not exist: {list(transfers)}"
        active = [
            (lic.buyer_id, lic.model_id) for lic in licenses.values() if lic.status == "active"
        ]
        assert len(active) == len(set(active))  # at most one active license per buyer and model

    def check_transfers(
        self,
        ts: list[LedgerTransfer],
        accounts: dict[str, LedgerAccount],
        row: Purchase,
        p: ModelPurchase,
    ) -> None:
        by_code: dict[str, list[LedgerTransfer]] = defaultdict(list)
        for t in ts:
            by_code[t.code].append(t)
        buyer_acct = accounts[f"user:{self.uid(p.buyer)}:{p.currency}"].id
        escrow_acct = accounts[f"platform:escrow:{p.currency}"].id
        (hold,) = by_code.pop("purchase.escrow")
        assert hold.id == row.escrow_transfer_id
        assert (hold.kind, hold.amount, hold.debit_account_id, hold.credit_account_id) == (
            "pending",
            p.amount,
            buyer_acct,
            escrow_acct,
        )
        if p.status == "released" or p.after_release:
            (post,) = by_code.pop("purchase.capture")
            assert (post.kind, post.amount, post.pending_id) == ("post", p.amount, hold.id)
            (fee,) = by_code.pop("purchase.fee")
            assert fee.amount == bps_of(p.amount, p.fee_bps)
            shares = by_code.pop("purchase.share")
            assert len(shares) == len(MODELS[p.model][1])
            repays = by_code.pop("debt.repay", [])
            assert fee.amount + sum(t.amount for t in shares + repays) == p.amount
        if p.status == "refunded" and not p.after_release:
            (void,) = by_code.pop("refund.void")
            assert (void.kind, void.amount, void.pending_id) == ("void", p.amount, hold.id)
        if p.after_release:
            back = (
                by_code.pop("refund.fee")
                + by_code.pop("refund.share")
                + by_code.pop("refund.fronted", [])
            )
            assert all(t.credit_account_id == buyer_acct for t in back)
            assert sum(t.amount for t in back) == p.amount  # never more than was paid
        assert not by_code, f"unexpected transfers for {p}: {dict(by_code)}"


def balance(accounts: dict[str, LedgerAccount], code: str) -> tuple[int, int, int]:
    """(posted credit-normal, pending debits, pending credits); zeros for a missing account."""
    a = accounts.get(code)
    if a is None:
        return (0, 0, 0)
    return (a.credits_posted - a.debits_posted, a.debits_pending, a.credits_pending)


PURCHASE = st.tuples(
    st.just("purchase"),
    st.sampled_from(BUYERS),
    st.integers(0, len(MODELS) - 1),
    st.sampled_from(CURRENCIES),
    key_choice,
    st.integers(0, 10**6),
)
OPS = st.one_of(
    PURCHASE,
    PURCHASE,  # twice: purchases are what the other operations act on
    st.tuples(
        st.just("deposit"),
        st.sampled_from(BUYERS),
        st.sampled_from(CURRENCIES),
        deposit_amounts,
        key_choice,
        st.integers(0, 10**6),
    ),
    st.tuples(
        st.just("refund"),
        st.integers(0, 10**6),
        st.sampled_from(("buyer", "buyer", "admin", "stranger")),
    ),
    st.tuples(
        st.just("advance"),
        # the refund window's edges, and smaller steps
        st.sampled_from([WEEK, WEEK - 1, WEEK + 1, 2 * 86_400, WEEK, 3_600, 1]),
    ),
    st.tuples(st.just("release_due"), st.sampled_from([200, 1])),
    st.tuples(st.just("admin_refund_released"), st.integers(0, 10**6)),
    st.tuples(
        st.just("payout"),
        st.sampled_from(CREATORS),
        st.sampled_from(CURRENCIES),
        st.integers(1, 100),
    ),
)


def build_world(
    api: Api, client: TestClient, db: Database
) -> tuple[dict[str, uuid.UUID], list[uuid.UUID]]:
    accounts = {name: api.user(f"prop-{name}") for name in {*BUYERS, *CREATORS, ADMIN}}
    model_names = []
    for owner, contributors in MODELS:
        full = api.published_model(accounts[owner])["full_name"]
        if len(contributors) > 1:
            r = client.patch(
                f"/api/v1/models/{full}",
                json={
                    "contributors": [
                        {"username": accounts[n].username, "share_bps": bps}
                        for n, bps in contributors
                    ]
                },
                headers=accounts[owner].headers,
            )
            assert r.status_code == 200, r.text
        model_names.append(full)
    with db.session() as s:
        users = {
            name: s.scalars(select(User).where(User.username == acct.username)).one()
            for name, acct in accounts.items()
        }
        users[ADMIN].role = "admin"
        models = []
        for (owner, contributors), full in zip(MODELS, model_names, strict=True):
            model = s.scalars(
                select(Model).where(
                    Model.owner_id == users[owner].id, Model.name == full.split("/")[1]
                )
            ).one()
            assert [(c.user_id, c.share_bps) for c in model.contributors] == [
                (users[n].id, bps) for n, bps in contributors
            ]
            models.append(model.id)
        return {n: u.id for n, u in users.items()}, models


@pytest.fixture
def world(
    db: Database, connection: Connection, api: Api, client: TestClient, settings: Settings
) -> World:
    users, models = build_world(api, client, db)
    assert settings.deposit_max_amount == DEPOSIT_MAX
    chain = chain_of(client)  # one chain per test function, shared by its examples
    wallets = {}
    for name in BUYERS:  # minted once: each deposit is then one transfer (one chain write)
        wallets[name] = tokens.new_keypair()
        for cur in CURRENCIES:
            chain.mint_to(owner=str(wallets[name].pubkey()), currency=cur, amount=WALLET_TOKENS)
    return World(
        db=db,
        connection=connection,
        settings=settings,
        chain=chain,
        wallets=wallets,
        users=users,
        models=models,
    )


@hsettings(
    max_examples=30,
    deadline=None,
    database=None,
    # shrinking a failure replays the database work thousands of times (minutes); the full
    # failing sequence is printed either way. CYXWIZ_SHRINK=1 turns shrinking on.
    phases=[Phase.explicit, Phase.reuse, Phase.generate]
    + ([Phase.shrink] if os.environ.get("CYXWIZ_SHRINK") else []),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ps=st.lists(prices, min_size=len(MODELS), max_size=len(MODELS)),
    funds=st.lists(
        st.one_of(
            st.sampled_from([2_000 * USDC, 200 * USDC, 50 * USDC, 0]), st.integers(0, 300 * USDC)
        ),
        min_size=6,
        max_size=6,
    ),
    ops=st.lists(OPS, min_size=20, max_size=50),
)
def test_money_flows_keep_every_invariant(
    world: World, ps: list[int], funds: list[int], ops: list[tuple[Any, ...]]
) -> None:
    """Random prices, starting balances and up to 40 operations; after set-up and after every
    operation the database matches the model and every invariant holds. Each example runs in
    its own SAVEPOINT, rolled back at its end."""
    shop = Shop(world)
    try:
        shop.set_up(ps, funds)
        shop.every_invariant_holds()
        for name, *args in ops:
            getattr(shop, name)(*args)
            shop.every_invariant_holds()
    finally:
        shop.savepoint.rollback()
