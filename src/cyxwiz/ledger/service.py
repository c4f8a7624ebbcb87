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
from typing import Any, Literal

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

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


def create_transfers(session: Session, specs: list[TransferSpec]) -> list[LedgerTransfer]:
    """Apply ``specs`` as one linked set: every one succeeds (or already existed) or none."""
    with session.begin_nested():
        lock_accounts(session, _accounts_of(session, specs))
        return [_apply(session, spec) for spec in specs]


def _accounts_of(session: Session, specs: list[TransferSpec]) -> set[uuid.UUID]:
    ids: set[uuid.UUID] = set()
    for spec in specs:
        if spec.pending_id is not None:
            pending = session.get(LedgerTransfer, spec.pending_id)
            if pending is not None:
                ids.update((pending.debit_account_id, pending.credit_account_id))
        ids.update(a for a in (spec.debit, spec.credit) if a is not None)
    return ids


def lock_accounts(session: Session, ids: set[uuid.UUID]) -> None:
    """Row-lock accounts in the one global order — platform accounts first, then by id — so
    concurrent linked sets (a purchase, a release batch) never wait on each other in a cycle.
    A no-op on SQLite, whose single writer already serializes transactions."""
    if not ids or session.get_bind().dialect.name == "sqlite":
        return
    session.execute(
        select(LedgerAccount.id)
        .where(LedgerAccount.id.in_(ids))
        .order_by(case((LedgerAccount.kind.like("platform_%"), 0), else_=1), LedgerAccount.id)
        .with_for_update()
    ).all()


def create_transfer(session: Session, spec: TransferSpec) -> LedgerTransfer:
    return create_transfers(session, [spec])[0]


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


def _apply(session: Session, spec: TransferSpec) -> LedgerTransfer:
    row = _build(session, spec)
    existing = session.get(LedgerTransfer, spec.id)
    if existing is not None:
        if _same(existing, row):
            return existing
        raise TransferExists(f"transfer {spec.id} exists with different fields")
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except DBIntegrityError:
        existing = session.get(LedgerTransfer, spec.id, populate_existing=True)
        if existing is not None:
            if _same(existing, row):
                return existing
            raise TransferExists(f"transfer {spec.id} exists with different fields") from None
        if spec.pending_id is not None:
            raise PendingResolved(
                f"pending transfer {spec.pending_id} was already resolved"
            ) from None
        raise
    _move(session, row, spec)
    return row


def _build(session: Session, spec: TransferSpec) -> LedgerTransfer:
    if spec.kind in ("post", "void"):
        if spec.pending_id is None:
            raise InvalidInput(f"a {spec.kind} transfer needs pending_id")
        pending = session.get(LedgerTransfer, spec.pending_id)
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
    if spec.debit is None or spec.credit is None or spec.amount is None:
        raise InvalidInput("a transfer needs debit, credit and amount")
    if spec.amount < 0:
        raise InvalidInput("amount must not be negative", code="invalid_amount")
    if spec.debit == spec.credit:
        raise InvalidInput("debit and credit accounts must differ")
    accts = {
        a.id: a
        for a in session.scalars(
            select(LedgerAccount).where(LedgerAccount.id.in_([spec.debit, spec.credit]))
        )
    }
    if len(accts) != 2:
        raise NotFound("ledger account not found", code="account_not_found")
    if accts[spec.debit].currency != accts[spec.credit].currency:
        raise InvalidInput("accounts have different currencies", code="currency_mismatch")
    return LedgerTransfer(
        id=spec.id,
        debit_account_id=spec.debit,
        credit_account_id=spec.credit,
        amount=spec.amount,
        currency=accts[spec.debit].currency,
        kind=spec.kind,
        code=spec.code,
        ref=spec.ref,
        meta=spec.meta,
    )


def _move(session: Session, row: LedgerTransfer, spec: TransferSpec) -> None:
    """Update both balances in account-id order (consistent lock order avoids deadlocks)."""
    amt = row.amount
    pending_amt = 0
    if row.kind in ("post", "void"):
        pending = session.get(LedgerTransfer, row.pending_id)
        assert pending is not None
        pending_amt = pending.amount
    sides = sorted(
        [("debit", row.debit_account_id), ("credit", row.credit_account_id)],
        key=lambda s: str(s[1]),
    )
    for side, acct_id in sides:
        _update_side(session, side, acct_id, row.kind, amt, pending_amt, row.currency)


def _update_side(
    session: Session,
    side: str,
    acct_id: uuid.UUID,
    kind: str,
    amt: int,
    pending_amt: int,
    currency: str,
) -> None:
    A = LedgerAccount
    if side == "debit":
        pending_col, posted_col = A.debits_pending, A.debits_posted
        limit = or_(
            A.debits_must_not_exceed_credits.is_(False),
            A.debits_posted + A.debits_pending + amt <= A.credits_posted,
        )
    else:
        pending_col, posted_col = A.credits_pending, A.credits_posted
        limit = or_(
            A.credits_must_not_exceed_debits.is_(False),
            A.credits_posted + A.credits_pending + amt <= A.debits_posted,
        )
    values: dict[Any, Any]
    cond: Any = A.id == acct_id
    if kind == "posted":
        values = {posted_col: posted_col + amt}
        cond = and_(cond, limit)
    elif kind == "pending":
        values = {pending_col: pending_col + amt}
        cond = and_(cond, limit)
    elif kind == "post":
        values = {pending_col: pending_col - pending_amt, posted_col: posted_col + amt}
    else:  # void
        values = {pending_col: pending_col - pending_amt}
    result = session.execute(
        update(A).where(cond).values(values).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise InsufficientFunds(
            f"the balance does not cover {format_amount(amt, currency)}"
            if side == "debit"
            else "the receiving account's limit does not allow this transfer"
        )


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
