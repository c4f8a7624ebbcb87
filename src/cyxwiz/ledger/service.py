"""The ledger: TigerBeetle's semantics on SQL. Flushes, never commits.

- Transfers are immutable and carry a client-chosen id: re-applying the same id with the same
  fields returns the original; different fields raise ``transfer_exists``.
- ``pending`` reserves funds (counted against limits), then exactly one ``post`` (≤ the pending
  amount) or ``void`` resolves it; the unique ``pending_id`` makes that at-most-once in the DB.
- A batch passed to :func:`create_transfers` is linked: all or nothing (one SAVEPOINT).
- Limits are enforced inside the same UPDATE that moves the balance, so two racing writers can
  never both pass the check (row lock on PostgreSQL, single writer on SQLite).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Table, and_, bindparam, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from cyxwiz.db import utcnow
from cyxwiz.errors import Conflict, DomainError, InvalidInput, NotFound
from cyxwiz.ledger.models import LedgerAccount, LedgerTransfer
from cyxwiz.money import Currency, format_amount

TransferKind = Literal["posted", "pending", "post", "void"]


class InsufficientFunds(DomainError):
    code = "insufficient_funds"
    status = 402
    title = "Insufficient funds"


class TransferExists(Conflict):
    code = "transfer_exists"


class PendingResolved(Conflict):
    code = "pending_transfer_resolved"


@dataclass(frozen=True)
class TransferSpec:
    """One transfer to apply. For ``post``/``void`` the accounts come from the pending one."""

    id: uuid.UUID
    code: str
    debit: uuid.UUID | None = None
    credit: uuid.UUID | None = None
    amount: int | None = None
    kind: TransferKind = "posted"
    pending_id: uuid.UUID | None = None
    ref: str | None = None
    meta: dict[str, Any] | None = None


@dataclass(frozen=True)
class Balance:
    """A credit-normal view (what the holder is owed): posted, pending debits, available."""

    currency: str
    posted: int
    pending_debits: int
    pending_credits: int

    @property
    def available(self) -> int:
        return self.posted - self.pending_debits

    def as_dict(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "posted": self.posted,
            "pending": self.pending_debits,
            "incoming": self.pending_credits,
            "available": self.available,
            "display": format_amount(self.available, self.currency),
        }


# ---------------------------------------------------------------- accounts


def get_or_create_account(
    session: Session,
    *,
    code: str,
    currency: Currency,
    kind: str,
    user_id: uuid.UUID | None = None,
    no_overdraft: bool = True,
) -> LedgerAccount:
    """The account with ``code``, created if missing (race-safe: the unique code decides)."""
    found = session.scalar(select(LedgerAccount).where(LedgerAccount.code == code))
    if found is not None:
        return found
    acct = LedgerAccount(
        code=code,
        currency=currency.value,
        kind=kind,
        user_id=user_id,
        debits_must_not_exceed_credits=no_overdraft,
    )
    try:
        with session.begin_nested():
            session.add(acct)
            session.flush()
    except DBIntegrityError:
        found = session.scalar(select(LedgerAccount).where(LedgerAccount.code == code))
        if found is None:
            raise
        return found
    return acct


def balance_of(session: Session, account_id: uuid.UUID) -> Balance:
    acct = session.scalar(
        select(LedgerAccount)
        .where(LedgerAccount.id == account_id)
        .execution_options(populate_existing=True)
    )
    if acct is None:
        raise NotFound("no such ledger account", code="account_not_found")
    return Balance(
        currency=acct.currency,
        posted=acct.credits_posted - acct.debits_posted,
        pending_debits=acct.debits_pending,
        pending_credits=acct.credits_pending,
    )


def find_accounts(session: Session, codes: list[str]) -> dict[str, LedgerAccount]:
    """Existing accounts by code (read-only: missing codes are simply absent)."""
    rows = session.scalars(
        select(LedgerAccount)
        .where(LedgerAccount.code.in_(codes))
        .execution_options(populate_existing=True)
    )
    return {a.code: a for a in rows}


def balance_of_code(session: Session, code: str, currency: Currency) -> Balance:
    """The balance of the account with ``code``; zero if it was never created (no write)."""
    acct = find_accounts(session, [code]).get(code)
    if acct is None:
        return Balance(currency=currency.value, posted=0, pending_debits=0, pending_credits=0)
    return Balance(
        currency=acct.currency,
        posted=acct.credits_posted - acct.debits_posted,
        pending_debits=acct.debits_pending,
        pending_credits=acct.credits_pending,
    )


# ---------------------------------------------------------------- transfers

_TOTALS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
_ACCOUNT_COLUMNS = (
    "id",
    "currency",
    "debits_must_not_exceed_credits",
    "credits_must_not_exceed_debits",
    *_TOTALS,
)
_ATTEMPTS = 3  # a linked set that lost a race (a row inserted meanwhile) is re-evaluated


class _Lost(Exception):
    """Internal: another transaction wrote one of our rows meanwhile; re-read and retry."""


@dataclass
class _Account:
    """An account's row as read (and, on PostgreSQL, locked) for one linked set."""

    id: uuid.UUID
    currency: str
    no_overdraft: bool  # debits_must_not_exceed_credits
    no_overcredit: bool  # credits_must_not_exceed_debits
    read: tuple[int, int, int, int]  # the four totals as read, in _TOTALS order
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int

    @property
    def changed(self) -> bool:
        return self.totals != self.read

    @property
    def totals(self) -> tuple[int, int, int, int]:
        return (self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted)


def create_transfers(session: Session, specs: list[TransferSpec]) -> list[LedgerTransfer]:
    """Apply ``specs`` as one linked set: every one succeeds (or already existed) or none.

    One SAVEPOINT and a handful of statements whatever the number of transfers: the
    referenced pending transfers and the transfers that already exist are read at once, the
    accounts are locked and read in the global order (:func:`lock_accounts`), every transfer
    is checked in order against those values (limits counting pending debits, exactly as one
    UPDATE per transfer would), then all new rows are inserted in one statement and each
    account's totals are written with a compare-and-set UPDATE (``WHERE`` the totals still
    equal what the limits were checked against).
    """
    if not specs:
        return []
    session.flush()  # pending ORM changes (e.g. a new account) go first
    for attempt in range(_ATTEMPTS):
        try:
            with session.begin_nested():
                return _create(session, specs, lookup=attempt > 0)
        except _Lost:
            continue
    raise Conflict(
        "the transfers conflicted with concurrent writes; retry", code="transfer_conflict"
    )


def create_transfer(session: Session, spec: TransferSpec) -> LedgerTransfer:
    return create_transfers(session, [spec])[0]


def lock_accounts(session: Session, ids: set[uuid.UUID]) -> None:
    """Row-lock accounts in the one global order — platform accounts first, then by id — so
    concurrent linked sets (a purchase, a release batch) never wait on each other in a cycle.
    A no-op on SQLite, whose single writer already serializes transactions."""
    if not ids or session.get_bind().dialect.name == "sqlite":
        return
    session.execute(_ACCOUNTS_LOCKED, {"ids": list(ids)}).all()


# Statements built once (building and cache-keying them per call cost more than running them)
_A = cast(Table, LedgerAccount.__table__)
_ACCOUNTS = select(*(_A.c[c] for c in _ACCOUNT_COLUMNS)).where(
    _A.c.id.in_(bindparam("ids", expanding=True))
)
_ACCOUNTS_LOCKED = (
    _ACCOUNTS.order_by(case((_A.c.kind.like("platform_%"), 0), else_=1), _A.c.id)
).with_for_update()
_CAS = (
    update(_A)
    .where(_A.c.id == bindparam("_id"), *(_A.c[t] == bindparam(f"_old_{t}") for t in _TOTALS))
    .values({t: bindparam(f"_new_{t}") for t in _TOTALS})
)
_T = LedgerTransfer
_KNOWN = select(_T).where(_T.id.in_(bindparam("ids", expanding=True)))
_KNOWN_AND_RESOLVED = select(_T).where(
    or_(
        _T.id.in_(bindparam("ids", expanding=True)),
        _T.pending_id.in_(bindparam("pids", expanding=True)),
    )
)


def _read_accounts(session: Session, ids: set[uuid.UUID]) -> dict[uuid.UUID, _Account]:
    if not ids:
        return {}
    lock = session.get_bind().dialect.name != "sqlite"
    found: dict[uuid.UUID, _Account] = {}
    for row in session.execute(_ACCOUNTS_LOCKED if lock else _ACCOUNTS, {"ids": list(ids)}):
        totals = (row.debits_pending, row.debits_posted, row.credits_pending, row.credits_posted)
        found[row.id] = _Account(
            row.id,
            row.currency,
            bool(row.debits_must_not_exceed_credits),
            bool(row.credits_must_not_exceed_debits),
            totals,
            *totals,
        )
    return found


def _same(existing: LedgerTransfer, row: LedgerTransfer) -> bool:
    return (
        existing.debit_account_id == row.debit_account_id
        and existing.credit_account_id == row.credit_account_id
        and existing.amount == row.amount
        and existing.kind == row.kind
        and existing.pending_id == row.pending_id
        and existing.code == row.code
        and existing.ref == row.ref
    )


def _create(session: Session, specs: list[TransferSpec], *, lookup: bool) -> list[LedgerTransfer]:
    T = LedgerTransfer
    pending_ids = {s.pending_id for s in specs if s.kind in ("post", "void") and s.pending_id}
    known: dict[uuid.UUID, LedgerTransfer] = {}  # existing rows: our ids and their pendings
    resolved: dict[uuid.UUID, uuid.UUID] = {}  # pending id -> the transfer that resolved it
    for spec in specs:  # ids this session already holds (a retry in the same transaction)
        held = session.identity_map.get(identity_key(T, spec.id))
        if isinstance(held, T):
            known[held.id] = held
    if pending_ids or lookup:
        ids = list(pending_ids | {s.id for s in specs})
        query, params = (
            (_KNOWN_AND_RESOLVED, {"ids": ids, "pids": list(pending_ids)})
            if pending_ids
            else (_KNOWN, {"ids": ids})
        )
        for row in session.scalars(query, params):
            known[row.id] = row
            if row.pending_id is not None:
                resolved[row.pending_id] = row.id
    account_ids: set[uuid.UUID] = set()
    for spec in specs:
        account_ids.update(a for a in (spec.debit, spec.credit) if a is not None)
        pending = known.get(spec.pending_id) if spec.pending_id is not None else None
        if pending is not None:
            account_ids.update((pending.debit_account_id, pending.credit_account_id))
    accounts = _read_accounts(session, account_ids)

    out: list[LedgerTransfer] = []
    new: dict[uuid.UUID, LedgerTransfer] = {}
    now = utcnow()
    for spec in specs:
        row = _build(spec, known, new, accounts, now)
        existing = new.get(spec.id) or known.get(spec.id)
        if existing is not None:
            if _same(existing, row):
                out.append(existing)
                continue
            raise TransferExists(f"transfer {spec.id} exists with different fields")
        if row.pending_id is not None and row.pending_id in resolved:
            raise PendingResolved(f"pending transfer {row.pending_id} was already resolved")
        pending = None
        if row.pending_id is not None:
            pending = known.get(row.pending_id) or new.get(row.pending_id)
            resolved[row.pending_id] = row.id
        _move(accounts, row, pending)
        new[row.id] = row
        out.append(row)
    if new:
        _write(session, list(new.values()), [a for a in accounts.values() if a.changed])
    return out


def _build(
    spec: TransferSpec,
    known: dict[uuid.UUID, LedgerTransfer],
    new: dict[uuid.UUID, LedgerTransfer],
    accounts: dict[uuid.UUID, _Account],
    now: datetime,
) -> LedgerTransfer:
    if spec.kind in ("post", "void"):
        if spec.pending_id is None:
            raise InvalidInput(f"a {spec.kind} transfer needs pending_id")
        pending = new.get(spec.pending_id) or known.get(spec.pending_id)
        if pending is None or pending.kind != "pending":
            raise NotFound(
                f"no pending transfer {spec.pending_id}", code="pending_transfer_not_found"
            )
        amount = pending.amount if spec.kind == "void" or spec.amount is None else spec.amount
        if spec.kind == "post" and not 0 <= amount <= pending.amount:
            raise InvalidInput(
                f"post amount {amount} exceeds pending amount {pending.amount}",
                code="exceeds_pending_amount",
            )
        return LedgerTransfer(
            id=spec.id,
            created_at=now,
            debit_account_id=pending.debit_account_id,
            credit_account_id=pending.credit_account_id,
            amount=amount,
            currency=pending.currency,
            kind=spec.kind,
            pending_id=pending.id,
            code=spec.code,
            ref=spec.ref,
            meta=spec.meta,
        )
    if spec.kind not in ("posted", "pending"):
        raise InvalidInput(f"unknown transfer kind {spec.kind!r}")
    if spec.debit is None or spec.credit is None or spec.amount is None:
        raise InvalidInput("a transfer needs debit, credit and amount")
    if spec.amount < 0:
        raise InvalidInput("amount must not be negative", code="invalid_amount")
    if spec.debit == spec.credit:
        raise InvalidInput("debit and credit accounts must differ")
    debit, credit = accounts.get(spec.debit), accounts.get(spec.credit)
    if debit is None or credit is None:
        raise NotFound("ledger account not found", code="account_not_found")
    if debit.currency != credit.currency:
        raise InvalidInput("accounts have different currencies", code="currency_mismatch")
    return LedgerTransfer(
        id=spec.id,
        created_at=now,
        debit_account_id=spec.debit,
        credit_account_id=spec.credit,
        amount=spec.amount,
        currency=debit.currency,
        kind=spec.kind,
        pending_id=None,
        code=spec.code,
        ref=spec.ref,
        meta=spec.meta,
    )


def _move(
    accounts: dict[uuid.UUID, _Account], row: LedgerTransfer, pending: LedgerTransfer | None
) -> None:
    """Move ``row`` on the in-memory totals, checking each side's limit first (counting
    pending debits) exactly as the limit-checked UPDATE of one transfer would."""
    amt = row.amount
    debit, credit = accounts[row.debit_account_id], accounts[row.credit_account_id]
    if row.kind == "posted" or row.kind == "pending":
        if (
            debit.no_overdraft
            and debit.debits_posted + debit.debits_pending + amt > debit.credits_posted
        ):
            raise InsufficientFunds(
                f"the balance does not cover {format_amount(amt, row.currency)}"
            )
        if (
            credit.no_overcredit
            and credit.credits_posted + credit.credits_pending + amt > credit.debits_posted
        ):
            raise InsufficientFunds("the receiving account's limit does not allow this transfer")
        if row.kind == "posted":
            debit.debits_posted += amt
            credit.credits_posted += amt
        else:
            debit.debits_pending += amt
            credit.credits_pending += amt
        return
    assert pending is not None
    debit.debits_pending -= pending.amount
    credit.credits_pending -= pending.amount
    if row.kind == "post":
        debit.debits_posted += amt
        credit.credits_posted += amt


def _write(session: Session, rows: list[LedgerTransfer], accounts: list[_Account]) -> None:
    """Insert the new transfers in one flush (one that exists meanwhile: :class:`_Lost`), then
    write each changed account's totals if they are still what was read (else :class:`_Lost`).
    """
    session.add_all(rows)
    try:
        session.flush()
    except DBIntegrityError:  # a concurrent writer inserted one of these ids, or resolved
        raise _Lost from None  # one of these pending transfers: re-read and decide again
    for a in sorted(accounts, key=lambda a: str(a.id)):
        params: dict[str, Any] = {"_id": a.id}
        for t, old, new in zip(_TOTALS, a.read, a.totals, strict=True):
            params[f"_old_{t}"], params[f"_new_{t}"] = old, new
        if session.execute(_CAS, params).rowcount != 1:  # type: ignore[attr-defined]
            raise _Lost  # changed since read: impossible under the lock, but never unchecked


def transfers_for_accounts(
    session: Session, account_ids: list[uuid.UUID], *, limit: int, offset: int
) -> tuple[list[LedgerTransfer], int]:
    cond = or_(
        LedgerTransfer.debit_account_id.in_(account_ids),
        LedgerTransfer.credit_account_id.in_(account_ids),
    )
    total = session.scalar(select(func.count()).select_from(LedgerTransfer).where(cond)) or 0
    rows = list(
        session.scalars(
            select(LedgerTransfer)
            .where(cond)
            .order_by(LedgerTransfer.created_at.desc(), LedgerTransfer.id)
            .limit(limit)
            .offset(offset)
        )
    )
    return rows, total


# ---------------------------------------------------------------- check


@dataclass
class LedgerReport:
    currencies: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    accounts: int = 0
    transfers: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def check(session: Session) -> LedgerReport:
    """Prove the ledger's invariants; every broken one is listed in ``problems``."""
    report = LedgerReport()
    accounts = list(
        session.scalars(select(LedgerAccount).execution_options(populate_existing=True))
    )
    report.accounts = len(accounts)
    report.transfers = session.scalar(select(func.count()).select_from(LedgerTransfer)) or 0
    T = LedgerTransfer
    resolved = select(T.pending_id).where(T.pending_id.is_not(None))
    replay: dict[uuid.UUID, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    posted_kinds = T.kind.in_(("posted", "post"))
    open_pending = and_(T.kind == "pending", T.id.not_in(resolved))
    for side_col, prefix in ((T.debit_account_id, "debits"), (T.credit_account_id, "credits")):
        for acct_id, total in session.execute(
            select(side_col, func.sum(T.amount)).where(posted_kinds).group_by(side_col)
        ):
            replay[acct_id][f"{prefix}_posted"] = int(total)
        for acct_id, total in session.execute(
            select(side_col, func.sum(T.amount)).where(open_pending).group_by(side_col)
        ):
            replay[acct_id][f"{prefix}_pending"] = int(total)
    sums: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for a in accounts:
        cols = {
            "debits_posted": a.debits_posted,
            "credits_posted": a.credits_posted,
            "debits_pending": a.debits_pending,
            "credits_pending": a.credits_pending,
        }
        for name, stored in cols.items():
            sums[a.currency][name] += stored
            expected = replay[a.id][name]
            if stored != expected:
                report.problems.append(
                    f"{a.code}: stored {name}={stored} but its transfers replay to {expected}"
                )
        if (
            a.debits_must_not_exceed_credits
            and a.debits_posted + a.debits_pending > a.credits_posted
        ):
            report.problems.append(f"{a.code}: debits exceed credits (limit broken)")
        if (
            a.credits_must_not_exceed_debits
            and a.credits_posted + a.credits_pending > a.debits_posted
        ):
            report.problems.append(f"{a.code}: credits exceed debits (limit broken)")
    for cur, s in sums.items():
        for kind in ("posted", "pending"):
            debits, credits = s[f"debits_{kind}"], s[f"credits_{kind}"]
            if debits != credits:
                report.problems.append(
                    f"{cur}: Σdebits_{kind}={debits} ≠ Σcredits_{kind}={credits}"
                )
        report.currencies[cur] = dict(s)
    P = T.__table__.alias("p")
    bad_resolutions = session.execute(
        select(T.id)
        .join(P, P.c.id == T.pending_id)
        .where(
            or_(
                P.c.kind != "pending",
                P.c.debit_account_id != T.debit_account_id,
                P.c.credit_account_id != T.credit_account_id,
                T.amount > P.c.amount,
            )
        )
    ).all()
    for (tid,) in bad_resolutions:
        report.problems.append(f"transfer {tid}: resolves its pending transfer inconsistently")
    return report
