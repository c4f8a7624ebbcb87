"""Pay-per-inference metering: reservations that make overdraft impossible, batched charges.

How a call is paid (docs/metering.md has the full story):

1. ``authorize`` grants a :class:`~cyxwiz.inference.interfaces.Ticket` *before* any work.
   A paid ticket takes capacity from an in-process *block*: a pending ledger transfer from the
   caller's balance to the hold account ``platform:metering:{CUR}`` covering up to
   ``reservation_requests`` calls (or what the balance covers). No capacity and no money for a
   new block → ``insufficient_funds``: the automatic cutoff, exact to the unit.
2. ``settle`` (success) appends a usage event to the buffer and returns once that event is
   committed (group commit: the flusher writes whatever is buffered in one transaction while
   the next group gathers, so every call answered 200 is already durable — issue 9);
   ``cancel`` (failure) gives the capacity (or the demo credit) back: never billed.
3. The flusher (woken by every settle; every ``metering_flush_seconds`` for idle blocks and
   retries; or ``flush()``) bulk-inserts the buffered events (``INSERT .. ON CONFLICT (request_id) DO NOTHING``; on PostgreSQL a binary COPY into
   a session temp table first), so a replay is counted once, and in the same transaction
   settles every block that is done with one linked ledger set: post what its stored events
   charged (the rest returns to the buyer), then pay from the hold account the platform fee,
   the node operators' compute share and the contributors' shares. Transfer ids derive from
   the reservation id, so a retried flush lands on the same transfers.
4. Crash recovery: every reservation names its meter (``meta.owner``), and a meter holds an
   owner lock while it lives (a PostgreSQL advisory lock on a connection of its own, or a
   ``flock`` next to the SQLite file) — the operating system drops it when the process dies.
   :func:`sweep_reservations` settles reservations pending longer than
   ``metering_reservation_timeout_seconds`` whose owner lock is free, from their stored
   events, with the very transfer ids the meter would have used: exactly once.

All state lives on the event loop's thread; database work runs in worker threads, each with
its own session from the :class:`~cyxwiz.db.Database` given.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Connection, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from cyxwiz.billing import flows
from cyxwiz.catalog.models import Model
from cyxwiz.clock import Clock, SystemClock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.errors import DomainError, NotFound
from cyxwiz.inference.demo_budget import (
    BudgetKey,
    DemoBudget,
    DemoBudgetExhausted,
    DemoSpend,
    demo_budget_from_settings,
    utc_day,
)
from cyxwiz.inference.interfaces import Ticket
from cyxwiz.inference.models import Node
from cyxwiz.inference.usage_models import DemoCredit, UsageEvent
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.models import LedgerAccount, LedgerTransfer
from cyxwiz.ledger.service import InsufficientFunds, TransferSpec
from cyxwiz.licensing import service as licensing
from cyxwiz.money import BPS, Currency, allocate, bps_of, format_amount

log = logging.getLogger("cyxwiz.metering")
T = TypeVar("T")

NS = uuid.UUID("0f4a8c2e-6d1b-4f7a-9c3e-5b2d8e1f7a60")
TOKEN_BYTES = 4  # one token = up to 4 UTF-8 bytes of a string input
PRICE_TTL_SECONDS = 5.0  # how long a model's price and contributor shares are cached
MAX_BLOCK_SECONDS = 600.0  # a reservation is settled at the latest this long after opening
HOLD = "metering"  # platform:metering:{CUR} holds reserved-then-charged money for a moment
RESERVE_CODE = "usage.reserve"  # the pending transfer of a reservation
OWNER_LOCK_NS = uuid.UUID("6b1e0d52-3c47-4f0e-9a8d-2f5e7c9b1a34")


class QuotaExhausted(DomainError):
    code = "quota_exhausted"
    status = 429
    title = "Quota exhausted"


# ---------------------------------------------------------------- units and prices


def count_tokens(inputs: object) -> int:
    """Tokens of a call's inputs: each string counts ceil(UTF-8 bytes / 4), at least 1;
    numbers, booleans and None count 0; dict keys are not counted; a call counts at least 1."""
    total = 0
    stack: list[object] = [inputs]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            n = len(item.encode("utf-8", "surrogatepass"))
            total += max(1, -(-n // TOKEN_BYTES))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return max(total, 1)


def cost(units: int, per_1k: int) -> int:
    """What ``units`` cost at ``per_1k`` minor units per 1,000: ceil(units × per_1k / 1000)."""
    return -(-units * per_1k // 1000)


def _tid(*parts: object) -> uuid.UUID:
    return uuid.uuid5(NS, ":".join(str(p) for p in parts))


@dataclass(frozen=True)
class Pricing:
    """A model's per-use price (``unit`` None: no per-use offer) and who shares the revenue."""

    model_id: uuid.UUID
    owner_id: uuid.UUID
    unit: str | None  # request | token | None
    per_1k: int
    currency: Currency | None
    shares: tuple[tuple[uuid.UUID, int], ...]  # (contributor, share_bps)
    loaded_at: float


# ---------------------------------------------------------------- in-memory state


@dataclass(eq=False)
class Block:
    """Reserved capacity for one (user, model): ``capacity`` units, ``amount`` minor units.

    Its id is the id of its pending transfer (user → hold). Each settled call's ``amount``
    is stored on the usage event with ``reservation_id`` = this id; when the block is done
    (used up, idle, too old, or at close) one linked set posts the sum of those amounts and
    pays everyone out; the unused rest returns to the buyer.
    """

    id: uuid.UUID
    user_id: uuid.UUID
    model_id: uuid.UUID
    currency: Currency
    unit: str
    per_1k: int
    shares: tuple[tuple[uuid.UUID, int], ...]
    capacity: int
    amount: int
    opened: float = field(default_factory=time.monotonic)
    inflight: int = 0  # units held by outstanding tickets
    settled: int = 0  # units of settled calls
    charged: int = 0  # cost(settled): the sum of the amounts given to its events
    unflushed: int = 0  # its events still in the buffer
    retired: bool = False  # takes no new tickets (price changed, idle, closing)
    closing: bool = False  # a flush is resolving its pending transfer for good
    last_used: float = field(default_factory=time.monotonic)

    @property
    def free(self) -> int:
        return self.capacity - self.inflight - self.settled

    @property
    def key(self) -> tuple[uuid.UUID, uuid.UUID]:
        return (self.user_id, self.model_id)


@dataclass(frozen=True)
class _Ids:
    user_id: uuid.UUID
    model_id: uuid.UUID
    version_id: uuid.UUID
    api_key_id: uuid.UUID | None


@dataclass(eq=False)
class _Outstanding:
    kind: str
    units: int
    block: Block | None
    budget: DemoSpend | None = None  # a demo call's share of the daily demo budgets


@dataclass(eq=False, slots=True)
class _Event:
    """A settled call waiting in the buffer (its row is built by the writer thread)."""

    request_id: str
    kind: str
    user_id: uuid.UUID
    api_key_id: uuid.UUID | None
    model_id: uuid.UUID
    version_id: uuid.UUID
    node_id: uuid.UUID | None
    unit: str
    units: int
    currency: str | None
    amount: int
    at: datetime
    block: Block | None


@dataclass
class _Batch:
    id: uuid.UUID
    events: list[_Event]
    finalize: list[Block]  # reservations settled in this batch's transaction
    rows: list[tuple[Any, ...]] | None = None  # the events as bound values (kept for a retry)
    # resolved once committed: the settles waiting for their events (the group commit); set
    # on the batch that empties the buffer, so it covers every event buffered before it
    done: asyncio.Future[None] | None = None


@dataclass
class _FlushResult:
    inserted: set[str]
    charges: dict[uuid.UUID, int]  # reservation id -> charged
    accounts: dict[str, uuid.UUID]
    operators: dict[uuid.UUID, uuid.UUID | None]


@dataclass
class MeterStats:
    authorized: int = 0
    refused: int = 0
    settled: int = 0
    cancelled: int = 0
    duplicates: int = 0  # replays dropped (in the buffer or by the database)
    inserted: int = 0
    batches: int = 0  # transactions committed (group commits)
    demo_budget_refused: int = 0  # demo calls refused by the daily per-IP / per-model budgets
    charged: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _insert(dialect: str) -> Callable[..., Any]:
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def _resolve(done: asyncio.Future[None]) -> None:
    """Wake the settles waiting on ``done`` (from its own loop, or thread-safely)."""
    loop = done.get_loop()
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        if not done.done():
            done.set_result(None)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(_set_done, done)


def _set_done(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


# ---------------------------------------------------------------- the meter


class UsageMeter:
    """The :class:`~cyxwiz.inference.interfaces.Meter` the gateway uses (one per process).

    ``db_concurrency`` bounds the worker threads doing DB work at once (1 when the Database
    shares one connection, as the tests' rolled-back one does).
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock | None = None,
        *,
        db_concurrency: int = 4,
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock or SystemClock()
        self.stats = MeterStats()
        # A Database whose sessions share one connection (the tests' rolled-back one) must
        # never be used from two threads at once.
        shared = isinstance(db.sessionmaker.kw.get("bind"), Connection)
        self._db_concurrency = 1 if shared else db_concurrency
        self._limiter: anyio.CapacityLimiter | None = None
        self._pricing: dict[uuid.UUID, Pricing] = {}
        self._pricing_loads: dict[uuid.UUID, asyncio.Future[Pricing]] = {}
        self._blocks: dict[tuple[uuid.UUID, uuid.UUID], list[Block]] = defaultdict(list)
        self._locks: dict[tuple[uuid.UUID, uuid.UUID], asyncio.Lock] = {}
        self._tickets: dict[str, _Outstanding] = {}
        self._buffer: list[_Event] = []
        self._buffered_ids: set[str] = set()
        self._group: asyncio.Future[None] | None = None  # committed with the buffered events
        self._scan_due = True  # look at every open block (idle/old/retired) in the next batch
        self._budget: DemoBudget | None = None
        self._retry: _Batch | None = None
        self._flush_lock: asyncio.Lock | None = None
        self._kick: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._demo_exhausted: set[tuple[uuid.UUID, uuid.UUID]] = set()
        self._accounts: dict[str, uuid.UUID] = {}
        self._operators: dict[uuid.UUID, uuid.UUID | None] = {}
        self._closing = False  # close() is resolving every reservation
        self._starts = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # Every reservation names this meter; the owner lock tells sweepers it is alive.
        self.owner = uuid.uuid4()
        self._owner_lock = _OwnerLock(db, self.owner)
        self._opening = 0  # reservations being opened right now (in worker threads)
        self._encoder: _Encoder | None = None

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Start the background flusher (every ``metering_flush_seconds``, or sooner when a
        batch is full). Starts and closes are counted: an app whose lifespan runs more than
        once (several test clients) shares one flusher, and the last close resolves all."""
        self._starts += 1
        if self._task is None or self._task.done():
            self._loop = asyncio.get_running_loop()
            self._kick = asyncio.Event()
            self._task = asyncio.create_task(self._flush_loop(), name="metering-flusher")

    async def _flush_loop(self) -> None:
        kick = self._kick
        assert kick is not None
        while True:
            try:
                await asyncio.wait_for(kick.wait(), timeout=self.settings.metering_flush_seconds)
            except TimeoutError:
                self._scan_due = True  # the periodic tick: idle and old blocks are settled
            kick.clear()
            try:
                await self.flush()
            except Exception:  # the batch is kept and retried with the same ids next tick
                log.exception("metering flush failed; retrying")

    async def close(self) -> None:
        """Stop the flusher, flush, and resolve every reservation (charge what was used,
        release the rest). Outstanding tickets are dropped: they are never billed. The meter
        stays usable: a later call simply opens a new reservation."""
        self._starts = max(0, self._starts - 1)
        if self._starts > 0:
            await self.flush()
            return
        task, self._task = self._task, None
        if task is not None:
            if task.get_loop() is asyncio.get_running_loop():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif not task.get_loop().is_closed():  # started by a lifespan on another loop
                task.get_loop().call_soon_threadsafe(task.cancel)
        self._closing = True
        try:
            await self.flush()
        finally:
            self._closing = False
        if not self._blocks and not self._opening:  # nothing pending names this meter
            self._owner_lock.release()
        budget, self._budget = self._budget, None
        if budget is not None:
            await budget.close()

    # ------------------------------------------------------------ helpers

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._db_concurrency)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def invalidate(self, model_id: uuid.UUID) -> None:
        """Forget a model's cached price (call after its offers change)."""
        self._pricing.pop(model_id, None)

    async def pricing(self, model_id: uuid.UUID) -> Pricing:
        """The model's per-use price and revenue shares (cached for a few seconds)."""
        found = self._pricing.get(model_id)
        if found is not None and time.monotonic() - found.loaded_at < PRICE_TTL_SECONDS:
            return found
        # One load per model at a time: concurrent callers (a cold start, or the cache
        # expiring under load) wait for it instead of each loading it again.
        loading = self._pricing_loads.get(model_id)
        if loading is None or loading.get_loop() is not asyncio.get_running_loop():
            loading = asyncio.ensure_future(self._run(self._load_pricing, model_id))
            self._pricing_loads[model_id] = loading
            loading.add_done_callback(partial(self._loaded, model_id))
        found = await asyncio.shield(loading)
        self._pricing[model_id] = found
        return found

    def _loaded(self, model_id: uuid.UUID, loading: asyncio.Future[Pricing]) -> None:
        if self._pricing_loads.get(model_id) is loading:
            del self._pricing_loads[model_id]
        if not loading.cancelled():
            loading.exception()  # seen (its waiters raise it); never "never retrieved"

    def _load_pricing(self, model_id: uuid.UUID) -> Pricing:
        with self.db.session() as s:
            model = s.get(Model, model_id)
            if model is None:
                raise NotFound("model not found", code="model_not_found")
            offers = licensing.get_offers(s, model=model)
            shares = _shares_of(model)
            unit, price = None, None
            if offers.per_1k_requests is not None:
                unit, price = "request", offers.per_1k_requests
            elif offers.per_1k_tokens is not None:
                unit, price = "token", offers.per_1k_tokens
            return Pricing(
                model_id=model.id,
                owner_id=model.owner_id,
                unit=unit,
                per_1k=price.amount if price else 0,
                currency=Currency(price.currency) if price else None,
                shares=shares,
                loaded_at=time.monotonic(),
            )

    def _ticket(
        self,
        kind: str,
        ids: _Ids,
        *,
        units: int,
        unit: str,
        currency: str | None,
        block: Block | None,
    ) -> Ticket:
        token = uuid.uuid4().hex
        self._tickets[token] = _Outstanding(kind, units, block)
        self.stats.authorized += 1
        return Ticket(
            kind=kind,
            user_id=ids.user_id,
            model_id=ids.model_id,
            version_id=ids.version_id,
            api_key_id=ids.api_key_id,
            units=units,
            unit=unit,
            currency=currency,
            token=token,
        )

    # ------------------------------------------------------------ authorize

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
        """A ticket for one call of ``rows`` rows (the batch size; ``units`` = the input's
        tokens, for per-1K-token models). A per-request model counts one unit per row; a
        per-token model counts the tokens, at least one per row; demo credits count rows.
        Rules, in order:

        - the model's owner: kind ``owner``, free and unlimited;
        - no per-use offer: demo credits (and room in the daily demo budgets of the caller's
          IP and of the model), else ``quota_exhausted`` / ``demo_budget_exhausted`` (429);
        - per-use offer, no API key (playground, signed-in session): demo credits while any
          are left (and the budgets allow), then paid;
        - paid: capacity from a reservation on the caller's balance, else
          ``insufficient_funds`` (402).
        """
        price = await self.pricing(model_id)
        ids = _Ids(user_id, model_id, version_id, api_key_id)
        rows = max(1, rows)
        n = max(units, rows) if price.unit == "token" else rows
        if user_id == price.owner_id:
            return self._ticket(
                "owner", ids, units=n, unit=price.unit or "request", currency=None, block=None
            )
        if price.unit is None or price.currency is None:
            spend = await self._take_demo(user_id, model_id, rows, client_ip)
            if isinstance(spend, DemoSpend):
                return self._demo_ticket(ids, rows, spend)
            self.stats.refused += 1
            if isinstance(spend, DemoBudgetExhausted):
                raise spend
            raise QuotaExhausted(
                f"you have used your {self.settings.demo_credits_per_model} free demo "
                "inferences of this model"
                + (f" (this call has {rows} rows)" if rows > 1 else "")
                + ", and it has no pay-per-use price"
            )
        spent: DemoSpend | DemoBudgetExhausted | None = None
        if api_key_id is None:
            spent = await self._take_demo(user_id, model_id, rows, client_ip)
            if isinstance(spent, DemoSpend):
                return self._demo_ticket(ids, rows, spent)
        block = await self._reserve(user_id, price, n)
        if block is None:
            self.stats.refused += 1
            if isinstance(spent, DemoBudgetExhausted):
                raise spent  # the demo budget said no first: the more useful answer
            raise InsufficientFunds(
                f"your {price.currency.value} balance does not cover this call "
                f"({n} {price.unit}{'s' if n != 1 else ''}: "
                f"{format_amount(cost(n, price.per_1k), price.currency)}); add funds"
            )
        return self._ticket(
            "paid", ids, units=n, unit=price.unit, currency=price.currency.value, block=block
        )

    def _demo_ticket(self, ids: _Ids, rows: int, spend: DemoSpend) -> Ticket:
        ticket = self._ticket("demo", ids, units=rows, unit="request", currency=None, block=None)
        self._tickets[ticket.token].budget = spend
        return ticket

    async def _reserve(self, user_id: uuid.UUID, price: Pricing, n: int) -> Block | None:
        key = (user_id, price.model_id)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            block = self._pick(key, price, n)
            if block is None:
                target = max(n, self.settings.reservation_requests * n)
                self._opening += 1
                try:
                    block = await self._run(self._open_block, user_id, price, n, target)
                finally:
                    self._opening -= 1
                if block is None:
                    return None
                self._blocks[key].append(block)
            block.inflight += n
            block.last_used = time.monotonic()
            return block

    def _pick(self, key: tuple[uuid.UUID, uuid.UUID], price: Pricing, n: int) -> Block | None:
        for block in self._blocks.get(key, ()):
            if block.retired or block.closing:
                continue
            if block.per_1k != price.per_1k or block.unit != price.unit:
                block.retired = True  # the price changed: new calls use a new block
                continue
            if block.free >= n:
                return block
        return None

    def _open_block(self, user_id: uuid.UUID, price: Pricing, n: int, target: int) -> Block | None:
        assert price.currency is not None
        assert price.unit is not None
        cur = price.currency
        self._owner_lock.hold(self)  # before any reservation names this meter as its owner
        meta = {
            "unit": price.unit,
            "owner": str(self.owner),
            "shares": [[str(uid), bps] for uid, bps in price.shares],
        }
        with self.db.session() as s:
            user = flows.user_account(s, user_id, cur)
            hold = flows.platform_account(s, HOLD, cur)
            for _attempt in range(3):
                available = ledger.balance_of(s, user.id).available
                capacity = min(target, available * 1000 // price.per_1k)
                if capacity < n:
                    return None
                amount = cost(capacity, price.per_1k)
                block_id = uuid.uuid4()
                try:
                    ledger.create_transfer(
                        s,
                        TransferSpec(
                            id=block_id,
                            code=RESERVE_CODE,
                            debit=user.id,
                            credit=hold.id,
                            amount=amount,
                            kind="pending",
                            ref=f"model:{price.model_id}",
                            meta={"units": capacity, **meta},
                        ),
                    )
                except InsufficientFunds:  # another process spent in between: look again
                    continue
                return Block(
                    id=block_id,
                    user_id=user_id,
                    model_id=price.model_id,
                    currency=cur,
                    unit=price.unit,
                    per_1k=price.per_1k,
                    shares=price.shares,
                    capacity=capacity,
                    amount=amount,
                )
        return None

    # ------------------------------------------------------------ demo credits

    @property
    def demo_budget(self) -> DemoBudget:
        """The daily demo budgets (per client IP, per model): Redis when configured."""
        if self._budget is None:
            self._budget = demo_budget_from_settings(self.settings)
        return self._budget

    async def _take_demo(
        self, user_id: uuid.UUID, model_id: uuid.UUID, rows: int, client_ip: str | None
    ) -> DemoSpend | DemoBudgetExhausted | None:
        """``rows`` of the user's demo credits on the model, within the day's demo budgets of
        the caller's IP and of the model; None when the user has not that many credits left,
        ``DemoBudgetExhausted`` (not raised) when a budget refused (nothing is spent then)."""
        key = (user_id, model_id)
        if key in self._demo_exhausted or rows > self.settings.demo_credits_per_model:
            return None
        spend = DemoSpend(self._budget_keys(model_id, client_ip), rows, utc_day(self.clock))
        if spend.keys:
            refused = await self.demo_budget.take(spend.keys, rows, day=spend.day)
            if refused is not None:
                self.stats.demo_budget_refused += 1
                return DemoBudgetExhausted.for_(refused, rows, self.clock)
        ok = await self._run(self._consume_demo, user_id, model_id, rows)
        if not ok:
            if spend.keys:
                await self.demo_budget.give_back(spend.keys, rows, day=spend.day)
            if rows == 1:
                self._demo_exhausted.add(key)
            return None
        return spend

    def _budget_keys(self, model_id: uuid.UUID, client_ip: str | None) -> list[BudgetKey]:
        s = self.settings
        keys: list[BudgetKey] = []
        if client_ip is not None and s.demo_ip_daily_rows > 0:
            keys.append(BudgetKey(f"ip:{client_ip}", s.demo_ip_daily_rows, "ip"))
        if s.demo_model_daily_rows > 0:
            keys.append(BudgetKey(f"model:{model_id}", s.demo_model_daily_rows, "model"))
        return keys

    def _consume_demo(self, user_id: uuid.UUID, model_id: uuid.UUID, rows: int) -> bool:
        limit = self.settings.demo_credits_per_model
        if limit <= 0 or rows > limit:
            return False
        D = DemoCredit
        with self.db.session() as s:
            for attempt in range(2):
                result = s.execute(
                    update(D)
                    .where(D.user_id == user_id, D.model_id == model_id, D.used <= limit - rows)
                    .values(used=D.used + rows)
                    .execution_options(synchronize_session=False)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    return True
                if attempt == 0:
                    s.execute(
                        _insert(self.db.dialect)(D)
                        .values(
                            id=uuid.uuid4(),
                            created_at=self.clock.now(),
                            user_id=user_id,
                            model_id=model_id,
                            used=0,
                        )
                        .on_conflict_do_nothing(index_elements=["user_id", "model_id"])
                    )
            return False

    def _refund_demo(self, user_id: uuid.UUID, model_id: uuid.UUID, rows: int) -> None:
        D = DemoCredit
        with self.db.session() as s:
            s.execute(
                update(D)
                .where(D.user_id == user_id, D.model_id == model_id, D.used >= rows)
                .values(used=D.used - rows)
                .execution_options(synchronize_session=False)
            )

    # ------------------------------------------------------------ settle and cancel

    async def settle(
        self, ticket: Ticket, *, request_id: str, node_id: uuid.UUID | None, units: int
    ) -> None:
        """Record a successful call and return once its usage event is committed (so a call
        answered after ``settle`` is billed even if the process dies right after); idempotent
        by ``request_id`` (a replay, here or already stored, is counted and charged once) and
        by ticket (a second settle is a no-op). Concurrent settles share one commit."""
        if not 0 <= units <= ticket.units:
            raise ValueError(f"settled units {units} must be within 0..{ticket.units}")
        if not request_id or len(request_id) > 128:
            raise ValueError("request_id must be 1..128 characters")
        out = self._tickets.pop(ticket.token, None)
        if out is None:
            return
        if request_id in self._buffered_ids:
            self.stats.duplicates += 1
            await self._give_back(ticket, out)
            return
        amount = 0
        block = out.block
        if block is not None:
            block.inflight -= out.units
            block.settled += units
            charged = cost(block.settled, block.per_1k)
            amount = charged - block.charged
            block.charged = charged
            block.unflushed += 1
            block.last_used = time.monotonic()
        self._buffer.append(
            _Event(
                request_id,
                ticket.kind,
                ticket.user_id,
                ticket.api_key_id,
                ticket.model_id,
                ticket.version_id,
                node_id,
                ticket.unit,
                units,
                ticket.currency,
                amount,
                self.clock.now(),
                block,
            )
        )
        self._buffered_ids.add(request_id)
        self.stats.settled += 1
        await self._committed()

    async def _committed(self) -> None:
        """Wait until every event buffered so far is committed: the running flusher is woken
        and writes the whole buffer in one transaction (settles arriving meanwhile form the
        next group); without a flusher on this loop, the caller flushes."""
        loop = asyncio.get_running_loop()
        group = self._group
        if group is None:
            group = self._group = loop.create_future()
        elif group.get_loop() is not loop:  # another loop's group (tests with several loops)
            await self.flush()
            return
        kick, task = self._kick, self._task
        if self._loop is loop and kick is not None and task is not None and not task.done():
            kick.set()
            await asyncio.shield(group)  # one waiter cancelled never cancels the group
            return
        while not group.done():
            try:
                await self._flush(until=group)
            except Exception:  # kept and retried with the same ids: the answer waits
                log.exception("metering flush failed; retrying")
                await asyncio.sleep(self.settings.metering_flush_seconds)

    async def cancel(self, ticket: Ticket) -> None:
        """The call failed: its capacity (or demo credit) comes back; nothing is billed."""
        out = self._tickets.pop(ticket.token, None)
        if out is None:
            return
        self.stats.cancelled += 1
        await self._give_back(ticket, out)

    async def _give_back(self, ticket: Ticket, out: _Outstanding) -> None:
        if out.block is not None:
            out.block.inflight -= out.units
        elif out.kind == "demo":
            await self._run(self._refund_demo, ticket.user_id, ticket.model_id, out.units)
            self._demo_exhausted.discard((ticket.user_id, ticket.model_id))
            spend = out.budget
            if spend is not None and spend.keys:
                await self.demo_budget.give_back(spend.keys, spend.rows, day=spend.day)

    # ------------------------------------------------------------ flush

    async def flush(self) -> None:
        """Write the buffered events now (batch by batch) and settle every reservation that is
        used up, idle or (during ``close``) still open."""
        self._scan_due = True
        await self._flush()

    async def _flush(self, *, until: asyncio.Future[None] | None = None) -> None:
        """Commit batches until the buffer is empty (or ``until`` is done)."""
        if self._flush_lock is None:
            self._flush_lock = asyncio.Lock()
        async with self._flush_lock:
            while until is None or not until.done():
                batch = self._retry or self._next_batch()
                if batch is None:
                    return
                self._retry = batch
                result = await self._run(self._write_batch, batch)
                self._retry = None
                self._apply(batch, result)
                if batch.done is not None:
                    _resolve(batch.done)

    def _next_batch(self) -> _Batch | None:
        events = self._buffer[: self.settings.metering_batch_size]
        del self._buffer[: len(events)]
        done: asyncio.Future[None] | None = None
        if not self._buffer:  # this batch holds the last buffered event: it ends the group
            done, self._group = self._group, None
        batch_id = uuid.uuid4()
        in_batch: dict[Block, int] = defaultdict(int)
        for e in events:
            if e.block is not None:
                in_batch[e.block] += 1
        finalize: list[Block] = []
        now = time.monotonic()
        idle_after = self.settings.metering_idle_release_seconds
        # Every open block is looked at on the periodic tick, on flush() and while closing;
        # the group commits in between only look at the blocks their events used (one may
        # just have been used up).
        scan = self._scan_due or self._closing
        self._scan_due = False
        candidates = (
            [b for blocks in self._blocks.values() for b in blocks] if scan else list(in_batch)
        )
        for block in candidates:
            if block.closing:
                continue
            later = block.unflushed - in_batch.get(block, 0)  # events left in the buffer
            if block.inflight == 0 and (
                now - block.last_used >= idle_after or now - block.opened >= MAX_BLOCK_SECONDS
            ):
                block.retired = True
            if self._closing:
                block.retired = True
            finished = block.retired or block.free == 0
            if finished and later == 0 and (block.inflight == 0 or self._closing):
                block.closing = True  # no new tickets; settled in this batch's transaction
                finalize.append(block)
        if not events and not finalize:
            if done is not None:
                _resolve(done)
            return None
        return _Batch(batch_id, events, finalize, done=done)

    def _apply(self, batch: _Batch, result: _FlushResult) -> None:
        for e in batch.events:
            self._buffered_ids.discard(e.request_id)
            if e.block is not None:
                e.block.unflushed -= 1
        self._accounts.update(result.accounts)
        self._operators.update(result.operators)
        for block in batch.finalize:
            charged = result.charges.get(block.id, 0)
            self.stats.charged[block.currency.value] += charged
            blocks = self._blocks.get(block.key, [])
            if block in blocks:
                blocks.remove(block)
            if not blocks:
                self._blocks.pop(block.key, None)
            if block.inflight:  # only at close: its outstanding tickets are never billed
                for token in [t for t, o in self._tickets.items() if o.block is block]:
                    del self._tickets[token]
        self.stats.inserted += len(result.inserted)
        self.stats.duplicates += len(batch.events) - len(result.inserted)
        self.stats.batches += 1

    # ------------------------------------------------------------ the batch transaction

    def _write_batch(self, batch: _Batch) -> _FlushResult:
        with self.db.session() as s:
            inserted = self._insert_events(s, batch)
            look = _Lookups(self._accounts, self._operators)
            charges: dict[uuid.UUID, int] = {}
            specs: list[TransferSpec] = []
            if batch.finalize:
                ids = [b.id for b in batch.finalize]
                gone = _resolved(s, ids)
                usage = _usage_of(s, [i for i in ids if i not in gone])
                for block in batch.finalize:
                    if block.id in gone:  # only if this process lost its owner lock meanwhile
                        log.error("reservation %s was resolved by someone else (swept?)", block.id)
                        continue
                    per_node, charge = usage.get(block.id, ({}, 0))
                    charges[block.id] = charge
                    specs += _settlement_specs(
                        s,
                        self.settings,
                        look,
                        reservation_id=block.id,
                        model_id=block.model_id,
                        cur=block.currency,
                        shares=block.shares,
                        charge=charge,
                        per_node=per_node,
                    )
            if specs:
                ledger.create_transfers(s, specs)
            return _FlushResult(inserted, charges, look.new_accounts, look.new_operators)

    def _insert_events(self, s: Session, batch: _Batch) -> set[str]:
        """Insert the batch's events, skipping request ids already stored; the request ids of
        the rows that are this batch's (inserted now, or by an earlier try of this batch)."""
        if not batch.events:
            return set()
        dialect = self.db.engine.dialect
        if dialect.name == "sqlite" or (
            dialect.name == "postgresql" and dialect.driver == "psycopg"
        ):
            if self._encoder is None:
                self._encoder = _Encoder(dialect)
            if batch.rows is None:
                batch.rows = self._encoder.rows(batch.id, batch.events)
            if dialect.name == "sqlite":
                count = s.connection().exec_driver_sql(_INSERT_SQLITE, batch.rows).rowcount
            else:
                count = _copy_events(s, batch.rows)
        else:  # another driver: SQLAlchemy's own executemany of the plain values
            stmt = _insert(dialect.name)(UsageEvent.__table__)
            result = s.execute(
                stmt.on_conflict_do_nothing(index_elements=["request_id"]),
                _plain_rows(batch.id, batch.events),
            )
            count = result.rowcount  # type: ignore[attr-defined]
        if count == len(batch.events):  # the common case: no replay in the batch
            return {e.request_id for e in batch.events}
        inserted: set[str] = set()
        # Rows stored with this batch's id are ours (inserted just now, or by a previous
        # attempt of this very batch whose commit went through); the rest are replays.
        missing = [e.request_id for e in batch.events]
        for i in range(0, len(missing), 500):
            inserted.update(
                s.scalars(
                    select(UsageEvent.request_id).where(
                        UsageEvent.request_id.in_(missing[i : i + 500]),
                        UsageEvent.batch_id == batch.id,
                    )
                )
            )
        return inserted

    # ------------------------------------------------------------ introspection

    def reserved(self) -> dict[tuple[uuid.UUID, uuid.UUID], list[Block]]:
        """Open blocks per (user, model) (for tests and the operations view)."""
        return {k: list(v) for k, v in self._blocks.items() if v}

    @property
    def buffered(self) -> int:
        return len(self._buffer)


# ---------------------------------------------------------------- writing events

EVENT_COLUMNS = (
    "request_id",
    "batch_id",
    "kind",
    "user_id",
    "api_key_id",
    "model_id",
    "version_id",
    "node_id",
    "reservation_id",
    "unit",
    "units",
    "currency",
    "amount",
    "occurred_at",
    "day",
    "id",
    "created_at",
)
_COLS = ", ".join(EVENT_COLUMNS)
_MARKS = ", ".join("?" for _ in EVENT_COLUMNS)
_INSERT_SQLITE = (
    f"INSERT INTO usage_events ({_COLS}) VALUES ({_MARKS})"  # noqa: S608 (constants)
    " ON CONFLICT (request_id) DO NOTHING"
)
# PostgreSQL: a binary COPY into a temp table of this session, then one INSERT .. SELECT
_STAGE = "cyxwiz_usage_stage"
_STAGE_DDL = f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (LIKE usage_events) ON COMMIT DELETE ROWS"
_STAGE_COPY = f"COPY {_STAGE} ({_COLS}) FROM STDIN (FORMAT BINARY)"
_STAGE_MOVE = (
    f"WITH staged AS (DELETE FROM {_STAGE} RETURNING {_COLS})"  # noqa: S608 (constants)
    f" INSERT INTO usage_events ({_COLS}) SELECT {_COLS} FROM staged"
    " ON CONFLICT (request_id) DO NOTHING"
)
_PG_TYPES = {
    "units": "int8",
    "amount": "int8",
    "occurred_at": "timestamptz",
    "created_at": "timestamptz",
    "day": "date",
    **{c: "text" for c in ("request_id", "kind", "unit", "currency")},
}
_PG_COPY_TYPES = [_PG_TYPES.get(c, "uuid") for c in EVENT_COLUMNS]


class _Encoder:
    """Turns buffered events into row tuples (``EVENT_COLUMNS`` order) bound as the dialect
    binds them. SQLAlchemy's per-value processing dominated the writer, so the common cases
    take a shortcut that is checked at start-up against the dialect's own bind processors
    (SQLite: 32-hex UUIDs and ``YYYY-MM-DD HH:MM:SS.ffffff`` UTC text; psycopg: native
    values); anything else goes through the processors. Ids repeat across a batch (the same
    caller, model, node, reservation), so each distinct combination is converted once."""

    def __init__(self, dialect: Any) -> None:
        c = UsageEvent.__table__.c

        def conv(col: Any) -> Callable[[Any], Any]:
            found = col.type.dialect_impl(dialect).bind_processor(dialect) if dialect else None
            return found or (lambda v: v)

        self.uuid, self.ts, self.day = conv(c.id), conv(c.occurred_at), conv(c.day)
        at, some = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC), uuid.UUID(int=2**127 + 12345)
        zero = at.replace(microsecond=0)
        self.hex = self.uuid(some) == some.hex  # SQLite: a UUID is its 32 hex digits
        self.text_ts = (
            all(self.ts(t) == _sqlite_ts(t) for t in (at, zero))
            and self.day(at.date()) == _sqlite_ts(at)[:10]
        )
        self.native = (
            not self.hex
            and self.uuid(some) == some
            and self.ts(at) == at
            and self.day(at.date()) == at.date()
        )

    def rows(self, batch_id: uuid.UUID, events: list[_Event]) -> list[tuple[Any, ...]]:
        to_uuid, fast_hex, text_ts, native = self.uuid, self.hex, self.text_ts, self.native

        def u(v: uuid.UUID | None) -> Any:
            return None if v is None else to_uuid(v)

        ids: dict[tuple[int, ...], tuple[Any, ...]] = {}
        bid = u(batch_id)
        noise = bytearray(os.urandom(16 * len(events)))  # the rows' own ids, one syscall
        for i in range(0, len(noise), 16):  # random UUIDs: version 4, RFC 4122 variant
            noise[i + 6] = (noise[i + 6] & 0x0F) | 0x40
            noise[i + 8] = (noise[i + 8] & 0x3F) | 0x80
        rows: list[tuple[Any, ...]] = []
        for i, e in enumerate(events):
            block = e.block
            key = (
                id(e.user_id),
                id(e.api_key_id),
                id(e.model_id),
                id(e.version_id),
                id(e.node_id),
                id(block),
            )  # the events hold these objects for the batch's life: ids stay unique
            conv = ids.get(key)
            if conv is None:
                conv = ids[key] = (
                    u(e.user_id),
                    u(e.api_key_id),
                    u(e.model_id),
                    u(e.version_id),
                    u(e.node_id),
                    u(block.id) if block is not None else None,
                )
            at = e.at if e.at.tzinfo is UTC else e.at.astimezone(UTC)
            raw_id = bytes(noise[16 * i : 16 * i + 16])
            if text_ts:
                ts: Any = _sqlite_ts(at)
                day: Any = ts[:10]
            elif native:
                ts, day = at, at.date()
            else:
                ts, day = self.ts(at), self.day(at.date())
            row_id = raw_id.hex() if fast_hex else to_uuid(uuid.UUID(bytes=raw_id))
            rows.append(
                (
                    e.request_id,
                    bid,
                    e.kind,
                    *conv,
                    e.unit,
                    e.units,
                    e.currency,
                    e.amount,
                    ts,
                    day,
                    row_id,
                    ts,
                )
            )
        return rows


def _sqlite_ts(at: datetime) -> str:
    """A UTC datetime as SQLAlchemy stores it in SQLite (checked in ``_Encoder``)."""
    return at.replace(tzinfo=None).isoformat(" ", "microseconds")


def _plain_rows(batch_id: uuid.UUID, events: list[_Event]) -> list[dict[str, Any]]:
    """The events as plain Python values (for SQLAlchemy's own executemany)."""
    return [
        {
            "request_id": e.request_id,
            "batch_id": batch_id,
            "kind": e.kind,
            "user_id": e.user_id,
            "api_key_id": e.api_key_id,
            "model_id": e.model_id,
            "version_id": e.version_id,
            "node_id": e.node_id,
            "reservation_id": e.block.id if e.block is not None else None,
            "unit": e.unit,
            "units": e.units,
            "currency": e.currency,
            "amount": e.amount,
            "occurred_at": e.at,
            "day": e.at.astimezone(UTC).date(),
            "id": uuid.uuid4(),
            "created_at": e.at,
        }
        for e in events
    ]


def _copy_events(s: Session, rows: list[tuple[Any, ...]]) -> int:
    """PostgreSQL (psycopg): COPY the rows into the session's stage table and move them with
    ``INSERT .. SELECT .. ON CONFLICT (request_id) DO NOTHING``; the number inserted."""
    raw: Any = s.connection().connection.driver_connection
    with raw.cursor() as cur:
        cur.execute(_STAGE_DDL)
        with cur.copy(_STAGE_COPY) as copy:
            copy.set_types(_PG_COPY_TYPES)
            for row in rows:
                copy.write_row(row)
        cur.execute(_STAGE_MOVE)
        return int(cur.rowcount)


# ---------------------------------------------------------------- settling a reservation


@dataclass
class _Lookups:
    """Account ids by code and node operators: ``accounts``/``operators`` are known to be
    committed (the meter's caches, read only here); ``new_*`` are found in this transaction."""

    accounts: dict[str, uuid.UUID]
    operators: dict[uuid.UUID, uuid.UUID | None]
    new_accounts: dict[str, uuid.UUID] = field(default_factory=dict)
    new_operators: dict[uuid.UUID, uuid.UUID | None] = field(default_factory=dict)

    def account(
        self, s: Session, code: str, make: Callable[..., LedgerAccount], *args: Any
    ) -> uuid.UUID:
        found = self.accounts.get(code) or self.new_accounts.get(code)
        if found is None:
            found = self.new_accounts[code] = make(s, *args).id
        return found

    def operator(self, node: uuid.UUID) -> uuid.UUID | None:
        if node in self.operators:
            return self.operators[node]
        return self.new_operators.get(node)

    def load_operators(self, s: Session, nodes: list[uuid.UUID | None]) -> None:
        unknown = [
            n
            for n in nodes
            if n is not None and n not in self.operators and n not in self.new_operators
        ]
        if unknown:
            found = dict(
                s.execute(select(Node.id, Node.operator_id).where(Node.id.in_(unknown))).all()
            )
            for n in unknown:
                self.new_operators[n] = found.get(n)  # an unknown node earns nothing


def _resolved(s: Session, reservation_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these pending transfers were already posted or voided."""
    T = LedgerTransfer
    found: set[uuid.UUID] = set()
    for i in range(0, len(reservation_ids), 500):
        found.update(
            pid
            for pid in s.scalars(
                select(T.pending_id).where(T.pending_id.in_(reservation_ids[i : i + 500]))
            )
            if pid is not None
        )
    return found


def _usage_of(
    s: Session, reservation_ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[dict[uuid.UUID | None, int], int]]:
    """Per reservation, from its stored usage events: units per node, and the charge."""
    E = UsageEvent
    out: dict[uuid.UUID, tuple[dict[uuid.UUID | None, int], int]] = {}
    for i in range(0, len(reservation_ids), 500):
        for rid, node_id, units, amount in s.execute(
            select(E.reservation_id, E.node_id, func.sum(E.units), func.sum(E.amount))
            .where(E.reservation_id.in_(reservation_ids[i : i + 500]))
            .group_by(E.reservation_id, E.node_id)
        ):
            if rid is None:
                continue
            per_node, charge = out.get(rid, ({}, 0))
            per_node[node_id] = int(units or 0)
            out[rid] = (per_node, charge + int(amount or 0))
    return out


def _settlement_specs(
    s: Session,
    settings: Settings,
    look: _Lookups,
    *,
    reservation_id: uuid.UUID,
    model_id: uuid.UUID,
    cur: Currency,
    shares: tuple[tuple[uuid.UUID, int], ...],
    charge: int,
    per_node: dict[uuid.UUID | None, int],
) -> list[TransferSpec]:
    """The linked transfers that settle a reservation: post ``charge`` (what its stored events
    charged; the rest returns to the buyer), or void it when nothing was used; then pay from
    the hold account the platform fee, the nodes' compute share by units (cache hits and
    unknown nodes: the platform's) and the contributors by ``share_bps``. Ids derive from the
    reservation id, so whoever settles it (the meter, a sweeper) writes the same transfers."""
    ref = f"model:{model_id}"
    rid = reservation_id
    if charge == 0:
        return [
            TransferSpec(
                id=_tid(rid, "void"), code="usage.release", kind="void", pending_id=rid, ref=ref
            )
        ]
    specs = [
        TransferSpec(
            id=_tid(rid, "post"),
            code="usage.charge",
            kind="post",
            pending_id=rid,
            amount=charge,
            ref=ref,
        )
    ]
    hold = look.account(s, flows.platform_code(HOLD, cur), flows.platform_account, HOLD, cur)
    fee = bps_of(charge, settings.inference_platform_fee_bps)
    compute_total = bps_of(charge, settings.compute_share_bps)
    if fee + compute_total > charge:
        raise ValueError("platform fee + compute share exceed 100%")
    platform = fee
    nodes = sorted(per_node, key=str)
    look.load_operators(s, nodes)
    if compute_total and sum(per_node.values()) > 0:
        parts = allocate(compute_total, [per_node[n] for n in nodes])
        for node, part in zip(nodes, parts, strict=True):
            op = look.operator(node) if node is not None else None
            if op is None:
                platform += part  # a cache hit (or an unknown node): the platform's share
            elif part:
                specs.append(
                    TransferSpec(
                        id=_tid(rid, "compute", node),
                        code="usage.compute",
                        debit=hold,
                        credit=look.account(
                            s,
                            flows.node_earnings_code(op, cur),
                            flows.node_earnings_account,
                            op,
                            cur,
                        ),
                        amount=part,
                        ref=f"node:{node}",
                    )
                )
    else:
        platform += compute_total
    if platform:
        specs.append(
            TransferSpec(
                id=_tid(rid, "fee"),
                code="usage.fee",
                debit=hold,
                credit=look.account(
                    s,
                    flows.platform_code("revenue", cur),
                    flows.platform_account,
                    "revenue",
                    cur,
                ),
                amount=platform,
                ref=ref,
            )
        )
    creators = charge - fee - compute_total
    weights = [bps for _, bps in shares]
    for (uid, _bps), part in zip(shares, allocate(creators, weights), strict=True):
        if part:
            specs.append(
                TransferSpec(
                    id=_tid(rid, "share", uid),
                    code="usage.share",
                    debit=hold,
                    credit=look.account(
                        s, flows.earnings_code(uid, cur), flows.earnings_account, uid, cur
                    ),
                    amount=part,
                    ref=ref,
                )
            )
    return specs


def _shares_of(model: Model) -> tuple[tuple[uuid.UUID, int], ...]:
    """Who shares a model's revenue: its contributors by ``share_bps``, else its owner."""
    shares = tuple((c.user_id, c.share_bps) for c in model.contributors)
    if not shares or sum(b for _, b in shares) <= 0:
        shares = ((model.owner_id, BPS),)
    return shares


# ---------------------------------------------------------------- owners and the sweeper

_LIVE_OWNERS: set[uuid.UUID] = set()  # meters of this process holding their owner lock


def _lock_key(owner: uuid.UUID) -> int:
    """The PostgreSQL advisory lock key (a signed 64-bit int) of a meter."""
    return int.from_bytes(uuid.uuid5(OWNER_LOCK_NS, str(owner)).bytes[:8], "big", signed=True)


def _lock_dir(db: Database) -> Path | None:
    """Where SQLite meters keep their lock files: beside the database file (processes that
    share a SQLite database share a host). None: PostgreSQL, or a database in memory."""
    if db.dialect != "sqlite":
        return None
    name = db.engine.url.database
    if not name or name == ":memory:" or name.startswith("file:"):
        return None
    path = Path(name).resolve()
    return path.with_name(f"{path.name}-meters")


def _lock_file(directory: Path, owner: uuid.UUID) -> Path:
    return directory / f"{owner}.lock"


def _drop_owner(owner: uuid.UUID, handle: Any, path: Path | None) -> None:
    """Release an owner lock: what the operating system does when the process dies. With
    ``path`` (an orderly release) the lock file goes too; a dead meter's is left for the
    sweeper, exactly as after a crash."""
    _LIVE_OWNERS.discard(owner)
    if isinstance(handle, int):
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.close(handle)
    elif handle is not None:
        with contextlib.suppress(Exception):
            handle.close()


class _OwnerLock:
    """Held by a meter from its first reservation until it closes (or dies): a session
    advisory lock on a PostgreSQL connection of its own, or an exclusive ``flock`` on
    ``<database file>-meters/<owner>.lock``. Both vanish with the process."""

    def __init__(self, db: Database, owner: uuid.UUID) -> None:
        self.db = db
        self.owner = owner
        self._guard = threading.RLock()
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def hold(self, meter: UsageMeter) -> None:
        """Take the lock if not held (from a worker thread); released when ``meter`` is
        garbage-collected without closing, as if its process had died."""
        with self._guard:
            if self._finalizer is not None and self._finalizer.alive:
                if not self._lost():
                    return
                self._release()  # its connection died, the lock with it: take it anew
            handle = self._acquire()
            _LIVE_OWNERS.add(self.owner)
            self._finalizer = weakref.finalize(meter, _drop_owner, self.owner, handle, None)

    def _lost(self) -> bool:
        """PostgreSQL: whether the lock's session is gone (a round trip on its connection,
        once per reservation opened); a flock cannot be lost."""
        found = self._finalizer.peek() if self._finalizer is not None else None
        conn: Any = found[2][1] if found else None
        if conn is None or isinstance(conn, int):
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
        except Exception:
            return True
        return False

    def release(self) -> None:
        with self._guard:
            self._release()

    def _release(self) -> None:
        fin, self._finalizer = self._finalizer, None
        detached = fin.detach() if fin is not None else None
        if detached is None:
            return
        handle = detached[2][1]  # the args of _drop_owner(owner, handle, path)
        directory = _lock_dir(self.db)
        path = _lock_file(directory, self.owner) if directory is not None else None
        _drop_owner(self.owner, handle, path)

    def _acquire(self) -> Any:
        if self.db.dialect == "postgresql":
            # a DBAPI connection of its own, outside the pool: it lives exactly as long as
            # the lock is held, and its session ending (process death) releases the lock
            dialect = self.db.engine.dialect
            cargs, cparams = dialect.create_connect_args(self.db.engine.url)
            conn: Any = dialect.connect(*cargs, **cparams)
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(self.owner),))
                    row = cur.fetchone()
                if not row or not row[0]:
                    raise RuntimeError(f"metering owner lock {self.owner} is taken")
            except BaseException:
                conn.close()
                raise
            return conn
        directory = _lock_dir(self.db)
        if directory is None:
            return None  # an in-memory database: no other process can see it
        directory.mkdir(parents=True, exist_ok=True)
        path = _lock_file(directory, self.owner)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except (BlockingIOError, FileNotFoundError):
                pass  # a sweeper is removing a stale file of the same name: never ours
            os.close(fd)


@contextlib.contextmanager
def _claim_file(db: Database, owner: uuid.UUID) -> Iterator[bool]:
    """SQLite: True (and the owner's lock held until the block ends, then its file removed)
    when no live process holds ``owner``'s lock file."""
    directory = _lock_dir(db)
    if directory is None:
        yield True
        return
    path = _lock_file(directory, owner)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        yield True  # never created, or removed: that meter is gone
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False  # its process is alive
            return
        yield True
        with contextlib.suppress(OSError):
            os.unlink(path)
    finally:
        os.close(fd)


def _claim_pg(s: Session, owner: uuid.UUID) -> bool:
    """PostgreSQL: True, and the owner's advisory lock held until this transaction ends, when
    no live meter (nor another sweeper) holds it."""
    return bool(s.scalar(select(func.pg_try_advisory_xact_lock(_lock_key(owner)))))


@dataclass
class SweepReport:
    """What one sweep did: reservations settled from their stored events or released whole,
    what was charged, and how many were left (owner alive, or swept by another sweeper)."""

    settled: int = 0
    released: int = 0
    charged: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    skipped: int = 0

    @property
    def swept(self) -> int:
        return self.settled + self.released


def _owner_of(meta: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(meta["owner"]))
    except (KeyError, TypeError, ValueError):
        return None  # a reservation made before reservations named their meter


def sweep_reservations(
    db: Database, settings: Settings, *, now: datetime | None = None, limit: int = 1000
) -> SweepReport:
    """Settle metering reservations that a dead process left pending: every reservation
    pending longer than ``metering_reservation_timeout_seconds`` whose meter no longer holds
    its owner lock is posted for the sum of its stored usage events (split exactly as the
    meter would, with the same transfer ids) or voided when none were stored. Exactly once,
    also with several sweepers at once (the owner lock is claimed per transaction, and the
    ledger's ids and unique ``pending_id`` make any repeat a no-op). Up to ``limit`` per call.
    """
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=settings.metering_reservation_timeout_seconds)
    T, R = LedgerTransfer, aliased(LedgerTransfer)
    with db.session() as s:
        found = s.execute(
            select(T.id, T.meta)
            .where(
                T.code == RESERVE_CODE,
                T.kind == "pending",
                T.created_at <= cutoff,
                ~exists().where(R.pending_id == T.id),
            )
            .order_by(T.created_at, T.id)
            .limit(limit)
        ).all()
    owners: dict[uuid.UUID | None, list[uuid.UUID]] = defaultdict(list)
    for rid, meta in found:
        owners[_owner_of(meta)].append(rid)
    report = SweepReport()
    for owner, rids in owners.items():
        if owner is not None and owner in _LIVE_OWNERS:
            report.skipped += len(rids)  # a meter of this very process
            continue
        with contextlib.ExitStack() as stack:
            if owner is not None and not stack.enter_context(_claim_file(db, owner)):
                report.skipped += len(rids)
                continue
            with db.session() as s:
                if owner is not None and db.dialect == "postgresql" and not _claim_pg(s, owner):
                    report.skipped += len(rids)
                    continue
                _sweep(s, settings, rids, report)
    if found:
        log.info(
            "swept %d reservations (%d settled, %d released), %d left to live owners",
            report.swept,
            report.settled,
            report.released,
            report.skipped,
        )
    return report


def _sweep(s: Session, settings: Settings, rids: list[uuid.UUID], report: SweepReport) -> None:
    """Settle the still-unresolved reservations among ``rids`` (their owner is claimed)."""
    T = LedgerTransfer
    gone = _resolved(s, rids)
    pending = [
        p
        for p in s.scalars(select(T).where(T.id.in_(rids), T.kind == "pending"))
        if p.id not in gone
    ]
    report.skipped += len(rids) - len(pending)
    usage = _usage_of(s, [p.id for p in pending])
    look = _Lookups({}, {})
    for p in sorted(pending, key=lambda p: (p.created_at, str(p.id))):
        per_node, charge = usage.get(p.id, ({}, 0))
        try:
            model_id = uuid.UUID((p.ref or "").removeprefix("model:"))
            shares = _reservation_shares(s, p.meta, model_id)
            if charge > p.amount:
                raise ValueError(f"its events charged {charge} > reserved {p.amount}")
            specs = _settlement_specs(
                s,
                settings,
                look,
                reservation_id=p.id,
                model_id=model_id,
                cur=Currency(p.currency),
                shares=shares,
                charge=charge,
                per_node=per_node,
            )
            ledger.create_transfers(s, specs)
        except (DomainError, ValueError) as exc:
            log.error("cannot sweep reservation %s: %s", p.id, exc)
            report.skipped += 1
            continue
        if charge:
            report.settled += 1
            report.charged[p.currency] += charge
        else:
            report.released += 1


def _reservation_shares(
    s: Session, meta: Any, model_id: uuid.UUID
) -> tuple[tuple[uuid.UUID, int], ...]:
    """The revenue shares frozen on the reservation when it was opened (older reservations:
    the model's current contributors)."""
    frozen = (meta or {}).get("shares") if isinstance(meta, dict) else None
    if frozen:
        return tuple((uuid.UUID(str(uid)), int(bps)) for uid, bps in frozen)
    model = s.get(Model, model_id)
    if model is None:
        raise ValueError(f"model {model_id} is gone and the reservation names no shares")
    return _shares_of(model)
