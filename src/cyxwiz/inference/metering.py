"""Pay-per-inference metering: reservations that make overdraft impossible, batched charges.

How a call is paid (docs/metering.md has the full story):

1. ``authorize`` grants a :class:`~cyxwiz.inference.interfaces.Ticket` *before* any work.
   A paid ticket takes capacity from an in-process *block*: a pending ledger transfer from the
   caller's balance to the hold account ``platform:metering:{CUR}`` covering up to
   ``reservation_requests`` calls (or what the balance covers). No capacity and no money for a
   new block → ``insufficient_funds``: the automatic cutoff, exact to the unit.
2. ``settle`` (success) appends a usage event to an in-memory buffer — no DB write on the hot
   path; ``cancel`` (failure) gives the capacity (or the demo credit) back: never billed.
3. The flusher (every ``metering_flush_seconds``, or ``flush()``) bulk-inserts the buffered
   events (``INSERT .. ON CONFLICT (request_id) DO NOTHING``, so a replay is counted once) and,
   in the same transaction, one linked ledger set per batch: post each block's consumed part
   and re-reserve the rest, then pay from the hold account the platform fee, the node
   operators' compute share and the contributors' shares. Transfer ids derive from the batch
   id, so a retried flush lands on the same transfers.

All state lives on the event loop's thread; database work runs in worker threads, each with
its own session from the :class:`~cyxwiz.db.Database` given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from cyxwiz.billing import flows
from cyxwiz.catalog.models import Model
from cyxwiz.clock import Clock, SystemClock
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.errors import DomainError, NotFound
from cyxwiz.inference.interfaces import Ticket
from cyxwiz.inference.models import Node
from cyxwiz.inference.usage_models import DemoCredit, UsageEvent
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.models import LedgerAccount
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


@dataclass(eq=False)
class _Event:
    row: dict[str, Any]
    block: Block | None


@dataclass
class _Batch:
    id: uuid.UUID
    events: list[_Event]
    finalize: list[Block]  # reservations settled in this batch's transaction


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
    batches: int = 0
    charged: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _insert(dialect: str) -> Callable[..., Any]:
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


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
        self._blocks: dict[tuple[uuid.UUID, uuid.UUID], list[Block]] = defaultdict(list)
        self._locks: dict[tuple[uuid.UUID, uuid.UUID], asyncio.Lock] = {}
        self._tickets: dict[str, _Outstanding] = {}
        self._buffer: list[_Event] = []
        self._buffered_ids: set[str] = set()
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(kick.wait(), timeout=self.settings.metering_flush_seconds)
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
            else:  # started by a lifespan running on another event loop
                task.get_loop().call_soon_threadsafe(task.cancel)
        self._closing = True
        try:
            await self.flush()
        finally:
            self._closing = False

    # ------------------------------------------------------------ helpers

    def _wake_flusher(self) -> None:
        loop, kick = self._loop, self._kick
        if self._task is None or loop is None or kick is None:
            return
        try:
            same = asyncio.get_running_loop() is loop
        except RuntimeError:
            same = False
        if same:
            kick.set()
        else:
            loop.call_soon_threadsafe(kick.set)

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
        found = await self._run(self._load_pricing, model_id)
        self._pricing[model_id] = found
        return found

    def _load_pricing(self, model_id: uuid.UUID) -> Pricing:
        with self.db.session() as s:
            model = s.get(Model, model_id)
            if model is None:
                raise NotFound("model not found", code="model_not_found")
            offers = licensing.get_offers(s, model=model)
            shares = tuple((c.user_id, c.share_bps) for c in model.contributors)
            if not shares or sum(b for _, b in shares) <= 0:
                shares = ((model.owner_id, BPS),)
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
    ) -> Ticket:
        """A ticket for one call of ``units`` (input tokens for per-1K-token models; ignored
        for per-request models, where a call is 1 unit). Rules, in order:

        - the model's owner: kind ``owner``, free and unlimited;
        - no per-use offer: a demo credit, else ``quota_exhausted`` (429);
        - per-use offer, no API key (playground, signed-in session): a demo credit while any
          are left, then paid;
        - paid: capacity from a reservation on the caller's balance, else
          ``insufficient_funds`` (402).
        """
        price = await self.pricing(model_id)
        ids = _Ids(user_id, model_id, version_id, api_key_id)
        if user_id == price.owner_id:
            n = max(1, units) if price.unit == "token" else 1
            return self._ticket(
                "owner", ids, units=n, unit=price.unit or "request", currency=None, block=None
            )
        if price.unit is None or price.currency is None:
            if await self._take_demo(user_id, model_id):
                return self._ticket("demo", ids, units=1, unit="request", currency=None, block=None)
            self.stats.refused += 1
            raise QuotaExhausted(
                f"you have used your {self.settings.demo_credits_per_model} free demo "
                "inferences of this model, and it has no pay-per-use price"
            )
        n = max(1, units) if price.unit == "token" else 1
        if api_key_id is None and await self._take_demo(user_id, model_id):
            return self._ticket("demo", ids, units=1, unit="request", currency=None, block=None)
        block = await self._reserve(user_id, price, n)
        if block is None:
            self.stats.refused += 1
            raise InsufficientFunds(
                f"your {price.currency.value} balance does not cover this call "
                f"({format_amount(cost(n, price.per_1k), price.currency)}); add funds"
            )
        return self._ticket(
            "paid", ids, units=n, unit=price.unit, currency=price.currency.value, block=block
        )

    async def _reserve(self, user_id: uuid.UUID, price: Pricing, n: int) -> Block | None:
        key = (user_id, price.model_id)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            block = self._pick(key, price, n)
            if block is None:
                target = max(n, self.settings.reservation_requests * n)
                block = await self._run(self._open_block, user_id, price, n, target)
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
                            code="usage.reserve",
                            debit=user.id,
                            credit=hold.id,
                            amount=amount,
                            kind="pending",
                            ref=f"model:{price.model_id}",
                            meta={"units": capacity, "unit": price.unit},
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

    async def _take_demo(self, user_id: uuid.UUID, model_id: uuid.UUID) -> bool:
        key = (user_id, model_id)
        if key in self._demo_exhausted:
            return False
        ok = await self._run(self._consume_demo, user_id, model_id)
        if not ok:
            self._demo_exhausted.add(key)
        return ok

    def _consume_demo(self, user_id: uuid.UUID, model_id: uuid.UUID) -> bool:
        limit = self.settings.demo_credits_per_model
        if limit <= 0:
            return False
        D = DemoCredit
        with self.db.session() as s:
            for attempt in range(2):
                result = s.execute(
                    update(D)
                    .where(D.user_id == user_id, D.model_id == model_id, D.used < limit)
                    .values(used=D.used + 1)
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

    def _refund_demo(self, user_id: uuid.UUID, model_id: uuid.UUID) -> None:
        D = DemoCredit
        with self.db.session() as s:
            s.execute(
                update(D)
                .where(D.user_id == user_id, D.model_id == model_id, D.used > 0)
                .values(used=D.used - 1)
                .execution_options(synchronize_session=False)
            )

    # ------------------------------------------------------------ settle and cancel

    async def settle(
        self, ticket: Ticket, *, request_id: str, node_id: uuid.UUID | None, units: int
    ) -> None:
        """Record a successful call; idempotent by ``request_id`` (a replay, here or already
        stored, is counted and charged once) and by ticket (a second settle is a no-op)."""
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
        now = self.clock.now()
        self._buffer.append(
            _Event(
                {
                    "id": uuid.uuid4(),
                    "created_at": now,
                    "request_id": request_id,
                    "kind": ticket.kind,
                    "user_id": ticket.user_id,
                    "api_key_id": ticket.api_key_id,
                    "model_id": ticket.model_id,
                    "version_id": ticket.version_id,
                    "node_id": node_id,
                    "unit": ticket.unit,
                    "units": units,
                    "currency": ticket.currency,
                    "amount": amount,
                    "reservation_id": block.id if block is not None else None,
                    "occurred_at": now,
                    "day": now.date(),
                },
                block,
            )
        )
        self._buffered_ids.add(request_id)
        self.stats.settled += 1
        if len(self._buffer) >= self.settings.metering_batch_size:
            self._wake_flusher()

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
            await self._run(self._refund_demo, ticket.user_id, ticket.model_id)
            self._demo_exhausted.discard((ticket.user_id, ticket.model_id))

    # ------------------------------------------------------------ flush

    async def flush(self) -> None:
        """Write the buffered events now (batch by batch) and settle every reservation that is
        used up, idle or (during ``close``) still open."""
        if self._flush_lock is None:
            self._flush_lock = asyncio.Lock()
        async with self._flush_lock:
            while True:
                batch = self._retry or self._next_batch()
                if batch is None:
                    return
                self._retry = batch
                result = await self._run(self._write_batch, batch)
                self._retry = None
                self._apply(batch, result)

    def _next_batch(self) -> _Batch | None:
        events = self._buffer[: self.settings.metering_batch_size]
        del self._buffer[: len(events)]
        batch_id = uuid.uuid4()
        in_batch: dict[Block, int] = defaultdict(int)
        for e in events:
            e.row["batch_id"] = batch_id
            if e.block is not None:
                in_batch[e.block] += 1
        finalize: list[Block] = []
        now = time.monotonic()
        idle_after = self.settings.metering_idle_release_seconds
        for blocks in self._blocks.values():
            for block in blocks:
                if block.closing:
                    continue
                later = block.unflushed - in_batch.get(block, 0)  # events left in the buffer
                if block.inflight == 0 and (
                    now - block.last_used >= idle_after or now - block.opened >= MAX_BLOCK_SECONDS
                ):
                    block.retired = True
                if self._closing:
                    block.retired = True
                done = block.retired or block.free == 0
                if done and later == 0 and (block.inflight == 0 or self._closing):
                    block.closing = True  # no new tickets; settled in this batch's transaction
                    finalize.append(block)
        if not events and not finalize:
            return None
        return _Batch(batch_id, events, finalize)

    def _apply(self, batch: _Batch, result: _FlushResult) -> None:
        for e in batch.events:
            self._buffered_ids.discard(e.row["request_id"])
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
            accounts: dict[str, uuid.UUID] = {}
            operators: dict[uuid.UUID, uuid.UUID | None] = {}
            charges: dict[uuid.UUID, int] = {}
            specs: list[TransferSpec] = []
            for block in batch.finalize:
                charge, block_specs = self._settle_block(s, block, accounts, operators)
                charges[block.id] = charge
                specs.extend(block_specs)
            if specs:
                ledger.create_transfers(s, specs)
            return _FlushResult(inserted, charges, accounts, operators)

    def _insert_events(self, s: Session, batch: _Batch) -> set[str]:
        if not batch.events:
            return set()
        table = UsageEvent.__table__
        stmt = _insert(self.db.dialect)(table).on_conflict_do_nothing(index_elements=["request_id"])
        rows = [e.row for e in batch.events]
        result = s.execute(stmt, rows)
        if result.rowcount == len(rows):  # type: ignore[attr-defined]
            return {r["request_id"] for r in rows}  # the common case: no replay in the batch
        inserted: set[str] = set()
        # Rows stored with this batch's id are ours (inserted just now, or by a previous
        # attempt of this very batch whose commit went through); the rest are replays.
        missing = [r["request_id"] for r in rows]
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

    def _account(
        self,
        s: Session,
        new: dict[str, uuid.UUID],
        code: str,
        make: Callable[..., LedgerAccount],
        *args: Any,
    ) -> uuid.UUID:
        """The id of the account ``code`` (cached once committed), made by ``make(s, *args)``."""
        found = self._accounts.get(code) or new.get(code)
        if found is None:
            found = new[code] = make(s, *args).id
        return found

    def _settle_block(
        self,
        s: Session,
        block: Block,
        accounts: dict[str, uuid.UUID],
        operators: dict[uuid.UUID, uuid.UUID | None],
    ) -> tuple[int, list[TransferSpec]]:
        """The linked transfers that settle ``block``: post what its stored events charged
        (the rest of the reservation returns to the buyer), then pay the platform fee, the
        node operators' compute share and the contributors from the hold account."""
        per_node: dict[uuid.UUID | None, int] = {}
        charge = 0
        for node_id, units, amount in s.execute(
            select(UsageEvent.node_id, func.sum(UsageEvent.units), func.sum(UsageEvent.amount))
            .where(UsageEvent.reservation_id == block.id)
            .group_by(UsageEvent.node_id)
        ):
            per_node[node_id] = int(units or 0)
            charge += int(amount or 0)
        return charge, self._charge_specs(
            s,
            block.id,
            block.model_id,
            block.currency,
            block.shares,
            charge,
            per_node,
            accounts,
            operators,
        )

    def _charge_specs(
        self,
        s: Session,
        reservation_id: uuid.UUID,
        model_id: uuid.UUID,
        cur: Currency,
        shares: tuple[tuple[uuid.UUID, int], ...],
        charge: int,
        per_node: dict[uuid.UUID | None, int],
        accounts: dict[str, uuid.UUID],
        operators: dict[uuid.UUID, uuid.UUID | None],
    ) -> list[TransferSpec]:
        ref = f"model:{model_id}"
        rid = reservation_id
        if charge == 0:
            return [
                TransferSpec(
                    id=_tid(rid, "void"),
                    code="usage.release",
                    kind="void",
                    pending_id=rid,
                    ref=ref,
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
        hold = self._account(
            s, accounts, flows.platform_code(HOLD, cur), flows.platform_account, HOLD, cur
        )
        fee = bps_of(charge, self.settings.inference_platform_fee_bps)
        compute_total = bps_of(charge, self.settings.compute_share_bps)
        if fee + compute_total > charge:
            raise ValueError("platform fee + compute share exceed 100%")
        platform = fee
        nodes = sorted(per_node, key=str)
        unknown = [
            n for n in nodes if n is not None and n not in self._operators and n not in operators
        ]
        if unknown:
            found = dict(
                s.execute(select(Node.id, Node.operator_id).where(Node.id.in_(unknown))).all()
            )
            for n in unknown:
                operators[n] = found.get(n)  # an unknown node earns nothing: the platform's
        if compute_total and sum(per_node.values()) > 0:
            parts = allocate(compute_total, [per_node[n] for n in nodes])
            for node, part in zip(nodes, parts, strict=True):
                op = None
                if node is not None:
                    op = self._operators[node] if node in self._operators else operators.get(node)
                if node is None or op is None:
                    platform += part  # a cache hit (or an unknown node): the platform's share
                elif part:
                    specs.append(
                        TransferSpec(
                            id=_tid(rid, "compute", node),
                            code="usage.compute",
                            debit=hold,
                            credit=self._account(
                                s,
                                accounts,
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
                    credit=self._account(
                        s,
                        accounts,
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
                        credit=self._account(
                            s,
                            accounts,
                            flows.earnings_code(uid, cur),
                            flows.earnings_account,
                            uid,
                            cur,
                        ),
                        amount=part,
                        ref=ref,
                    )
                )
        return specs

    # ------------------------------------------------------------ introspection

    def reserved(self) -> dict[tuple[uuid.UUID, uuid.UUID], list[Block]]:
        """Open blocks per (user, model) (for tests and the operations view)."""
        return {k: list(v) for k, v in self._blocks.items() if v}

    @property
    def buffered(self) -> int:
        return len(self._buffer)
