"""Payouts: money out of the ledger to a user's linked wallet, through an outbox.

Order of events, each step durable before the next:

1. ``request_payout`` (the API call's transaction): the ledger debit is written as a linked set
   of *pending* transfers (what leaves the account, the instant-payout fee, and for CYX payouts
   the exchange legs) and a ``payouts`` row records them. Nothing has touched the chain.
2. ``process_payouts`` (after commit, background): signs the treasury transfer and stores the
   signed transaction and its signature in the row (commit) *before* sending it, so a crash at
   any point leaves a signature to look up — never money out without a record.
3. The same job sends it, then tracks it: landed at the configured commitment → every pending
   transfer is posted (``confirmed``); refused by the cluster, or its blockhash expired without
   landing, after ``MAX_ATTEMPTS`` signings → every pending transfer is voided (``failed``), so a
   ledger debit never stands without a chain transfer.

CYX payouts of USDC earnings: the platform buys the USDC at ``cyx_price_usdc`` and pays CYX
from its own float (``platform:treasury:CYX``), adding ``cyx_payout_bonus_bps`` (5%) paid out of
the platform's fee revenue (``platform:revenue:USDC`` → ``platform:treasury:USDC``).

Abuse limits (issue 9): every payout debits at least the currency's minimum
(``payout_minimum_usdc`` / ``payout_minimum_cyx``: each one is a chain transaction the platform
pays for) and the instant fee is rounded up, never below one unit. A user who owes the platform
(a ``CreatorDebt`` from a late refund) repays it first: the payout's linked set opens with a
posted ``debt.repay`` transfer from the paid-out account to ``platform:receivables``, exactly as
a release repays it, and only the rest is withdrawable; a debt in another currency blocks
payouts until it is repaid (the ledger never exchanges currencies on its own).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.accounts.wallets import linked_wallet
from cyxwiz.billing.flows import (
    _tid,
    cyx_rate_micro,
    earnings_account,
    earnings_code,
    node_earnings_account,
    node_earnings_code,
    platform_account,
    user_account,
    user_code,
)
from cyxwiz.billing.models import CreatorDebt, Payout, PayoutSettings
from cyxwiz.chain.interfaces import (
    BlockhashExpired,
    Chain,
    ChainUnavailable,
    TransactionRejected,
    reached,
)
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.errors import Conflict, DomainError, InvalidInput
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.models import LedgerAccount
from cyxwiz.ledger.service import InsufficientFunds, TransferSpec
from cyxwiz.money import BPS, MAX_AMOUNT, Currency, bps_of, format_amount

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
SOURCES = ("balance", "earnings", "node_earnings")


class PayoutUnavailable(DomainError):
    code = "payout_unavailable"
    status = 503
    title = "Payout unavailable"


class DebtOutstanding(DomainError):
    """The user owes the platform (a late refund it fronted): a payout repays that first, so
    less than the account's available amount can leave. The problem carries ``owed`` (minor
    units of ``currency``) and ``withdrawable`` (what a payout may take now)."""

    code = "debt_outstanding"
    status = 402
    title = "Debt to repay first"


def payout_minimum(settings: Settings, currency: Currency) -> int:
    """The smallest amount a payout may debit in ``currency`` (minor units)."""
    if currency is Currency.USDC:
        return settings.payout_minimum_usdc
    return settings.payout_minimum_cyx


def instant_fee(amount: int, bps: int) -> int:
    """ceil(amount × bps / 10000), and at least one unit whenever a fee is charged at all."""
    if bps == 0:
        return 0
    return max(1, -(-amount * bps // BPS))


def source_account(
    session: Session, *, user_id: uuid.UUID, source: str, currency: Currency
) -> LedgerAccount:
    if source == "balance":
        return user_account(session, user_id, currency)
    if source == "earnings":
        return earnings_account(session, user_id, currency)
    if source == "node_earnings":
        return node_earnings_account(session, user_id, currency)
    raise InvalidInput(f"source must be one of {list(SOURCES)}", code="invalid_source")


def quote(
    *, settings: Settings, currency: Currency, paid_in: Currency, amount: int, instant: bool
) -> dict[str, int]:
    """What a payout of ``amount`` costs and pays: fee, net, bonus, paid amount (exact ints);
    refuses what no payout may be (below the minimum, above ``MAX_AMOUNT``, nothing left)."""
    if not 1 <= amount <= MAX_AMOUNT:
        raise InvalidInput(
            f"amount must be between 1 and {MAX_AMOUNT} minor units", code="invalid_amount"
        )
    if not instant and amount < settings.payout_weekly_minimum:
        raise InvalidInput(
            f"scheduled payouts start at {format_amount(settings.payout_weekly_minimum, currency)}",
            code="below_payout_minimum",
        )
    minimum = payout_minimum(settings, currency)
    if amount < minimum:
        raise InvalidInput(
            f"payouts start at {format_amount(minimum, currency)}: each one is an on-chain "
            "transfer",
            code="below_payout_minimum",
            minimum=minimum,
        )
    fee = instant_fee(amount, settings.payout_instant_fee_bps) if instant else 0
    net = amount - fee
    if paid_in == currency:
        q = {"fee": fee, "net": net, "bonus_usdc": 0, "bonus": 0, "paid": net}
    else:
        if currency is not Currency.USDC or paid_in is not Currency.CYX:
            raise InvalidInput("only USDC earnings can be paid out in CYX", code="invalid_currency")
        rate = cyx_rate_micro(settings)
        bonus_usdc = bps_of(net, settings.cyx_payout_bonus_bps)
        base = net * 10**6 // rate
        paid = (net + bonus_usdc) * 10**6 // rate
        q = {"fee": fee, "net": net, "bonus_usdc": bonus_usdc, "bonus": paid - base, "paid": paid}
    if q["paid"] <= 0:
        raise InvalidInput("amount too small to pay out after fees", code="invalid_amount")
    return q


def source_code(*, user_id: uuid.UUID, source: str, currency: Currency) -> str:
    """The ledger code of a payout source account."""
    if source == "balance":
        return user_code(user_id, currency)
    if source == "earnings":
        return earnings_code(user_id, currency)
    if source == "node_earnings":
        return node_earnings_code(user_id, currency)
    raise InvalidInput(f"source must be one of {list(SOURCES)}", code="invalid_source")


def open_debts(session: Session, *, user_id: uuid.UUID, lock: bool = False) -> list[CreatorDebt]:
    """The user's unpaid debts to the platform, oldest first (``lock``: FOR UPDATE, taken only
    after the accounts they are repaid between, in the global lock order)."""
    q = (
        select(CreatorDebt)
        .where(CreatorDebt.user_id == user_id, CreatorDebt.remaining > 0)
        .order_by(CreatorDebt.created_at, CreatorDebt.id)
        .execution_options(populate_existing=True)
    )
    return list(session.scalars(q.with_for_update() if lock else q))


def owed_by_currency(debts: list[CreatorDebt]) -> dict[str, int]:
    """Σ remaining per currency code."""
    out: dict[str, int] = {}
    for d in debts:
        out[d.currency] = out.get(d.currency, 0) + d.remaining
    return out


def withdrawable(
    session: Session, *, user_id: uuid.UUID, source: str, currency: Currency
) -> dict[str, Any]:
    """What a payout from ``source`` in ``currency`` can take (read-only): the account's
    available amount, what the user owes in this currency (repaid first) and in others (which
    block payouts until repaid), and the rest."""
    code = source_code(user_id=user_id, source=source, currency=currency)
    available = ledger.balance_of_code(session, code, currency).available
    owed = owed_by_currency(open_debts(session, user_id=user_id))
    here = owed.pop(currency.value, 0)
    blocked = any(v > 0 for v in owed.values())
    return {
        "available": available,
        "owed": here,
        "owed_elsewhere": owed,
        "withdrawable": 0 if blocked else max(available - here, 0),
    }


def request_payout(
    session: Session,
    *,
    settings: Settings,
    user: User,
    amount: int,
    currency: Currency,
    source: str,
    paid_in: Currency | None,
    kind: str,
    wallet: str | None,
    idempotency_key: str,
    now: datetime,
) -> tuple[Payout, bool]:
    """Debit the account (pending) and queue the chain transfer; a retry returns the first."""
    existing = _by_key(session, user.id, idempotency_key)
    if existing is not None:
        return _same_request(existing, amount, currency, source), False
    if source not in SOURCES:
        raise InvalidInput(f"source must be one of {list(SOURCES)}", code="invalid_source")
    if kind not in ("instant", "scheduled"):
        raise InvalidInput("kind must be 'instant' or 'scheduled'", code="invalid_kind")
    paid = paid_in or currency
    if paid != currency and source == "balance":
        raise InvalidInput(
            "a balance is withdrawn in its own currency; CYX payouts are for earnings",
            code="invalid_currency",
        )
    q = quote(
        settings=settings, currency=currency, paid_in=paid, amount=amount, instant=kind == "instant"
    )
    target = linked_wallet(session, user_id=user.id, address=wallet)
    payout_id = _tid("payout", user.id, idempotency_key)
    row = Payout(
        id=payout_id,
        user_id=user.id,
        idempotency_key=idempotency_key,
        source=source,
        currency=currency.value,
        amount=amount,
        fee=q["fee"],
        bonus=q["bonus"],
        paid_currency=paid.value,
        paid_amount=q["paid"],
        wallet=target.address,
        kind=kind,
        status="pending",
        transfer_id=_tid(payout_id, "out"),
        created_at=now,
    )
    src = source_account(session, user_id=user.id, source=source, currency=currency)
    specs = _pending_legs(session, row, src, q)
    debts: list[CreatorDebt] = []
    if open_debts(session, user_id=user.id):
        debts, repay = _repayment(session, row, src, specs)
        if repay is not None:
            specs.insert(0, repay)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
            ledger.create_transfers(session, specs)
            for debt in debts:
                debt.remaining = 0
            session.flush()
    except InsufficientFunds:
        if paid != currency:
            session.refresh(src)
            if src.credits_posted - src.debits_posted - src.debits_pending >= amount:
                raise PayoutUnavailable(
                    "CYX payouts are paused: the platform's CYX float cannot cover this one; "
                    "try USDC or a smaller amount",
                ) from None
        raise
    except DBIntegrityError:
        again = _by_key(session, user.id, idempotency_key)
        if again is None:
            raise
        return _same_request(again, amount, currency, source), False
    return row, True


def _repayment(
    session: Session, row: Payout, src: LedgerAccount, specs: list[TransferSpec]
) -> tuple[list[CreatorDebt], TransferSpec | None]:
    """Lock what a repayment touches in the global order (platform accounts, then the user's,
    then the debts), check the payout fits beside the debt, and build the ``debt.repay``
    transfer that clears this currency's debts from the paid-out account."""
    cur = Currency(row.currency)
    receivables = platform_account(session, "receivables", cur)
    touched = {receivables.id, src.id}
    for spec in specs:
        touched.update(a for a in (spec.debit, spec.credit) if a is not None)
    ledger.lock_accounts(session, touched)
    debts = open_debts(session, user_id=row.user_id, lock=True)
    owed = owed_by_currency(debts)
    here = owed.pop(cur.value, 0)
    elsewhere = {c: v for c, v in owed.items() if v > 0}
    if elsewhere:
        other, owed_there = sorted(elsewhere.items())[0]
        raise DebtOutstanding(
            f"you owe the platform {format_amount(owed_there, other)} after a refund it "
            f"fronted; repay it first (a payout in {other} or your next sales repay it) before "
            f"paying out {cur.value}",
            owed=owed_there,
            currency=other,
            withdrawable=0,
        )
    available = ledger.balance_of(session, src.id).available
    if row.amount + here > available:
        rest = max(available - here, 0)
        raise DebtOutstanding(
            f"you owe the platform {format_amount(here, cur)} after a refund it fronted; a "
            f"payout repays that first, so at most {format_amount(rest, cur)} of your "
            f"{format_amount(available, cur)} available can be paid out",
            owed=here,
            withdrawable=rest,
            currency=cur.value,
        )
    if here == 0:
        return [], None  # repaid meanwhile
    row.debt_repaid = here
    repay = TransferSpec(
        id=_tid(row.id, "repay"),
        code="debt.repay",
        debit=src.id,
        credit=receivables.id,
        amount=here,
        ref=f"payout:{row.id}",
        meta={"user_id": str(row.user_id)},
    )
    return [d for d in debts if d.currency == cur.value], repay


def _pending_legs(
    session: Session, row: Payout, src: LedgerAccount, q: dict[str, int]
) -> list[TransferSpec]:
    cur, paid = Currency(row.currency), Currency(row.paid_currency)
    ref = f"payout:{row.id}"
    legs: list[TransferSpec] = []

    def leg(name: str, debit: uuid.UUID, credit: uuid.UUID, amount: int) -> None:
        if amount > 0:
            legs.append(
                TransferSpec(
                    id=_tid(row.id, name),
                    code=f"payout.{name}",
                    debit=debit,
                    credit=credit,
                    amount=amount,
                    kind="pending",
                    ref=ref,
                )
            )

    if paid == cur:
        leg("out", src.id, platform_account(session, "vault", cur).id, q["net"])
    else:
        treasury_usdc = platform_account(session, "treasury", cur).id
        leg("buy", src.id, treasury_usdc, q["net"])
        leg("bonus", platform_account(session, "revenue", cur).id, treasury_usdc, q["bonus_usdc"])
        leg(
            "out",
            platform_account(session, "treasury", paid).id,
            platform_account(session, "vault", paid).id,
            q["paid"],
        )
    leg("fee", src.id, platform_account(session, "payout_fees", cur).id, q["fee"])
    return legs


def _leg_ids(row: Payout) -> list[uuid.UUID]:
    names = ["out", "fee"] if row.paid_currency == row.currency else ["buy", "bonus", "out", "fee"]
    return [_tid(row.id, n) for n in names]


def _resolve(session: Session, row: Payout, kind: str) -> None:
    """Post (kind='post') or void every pending leg of a payout, as one linked set."""
    from cyxwiz.ledger.models import LedgerTransfer

    pending = [t for t in (session.get(LedgerTransfer, i) for i in _leg_ids(row)) if t is not None]
    ledger.create_transfers(
        session,
        [
            TransferSpec(
                id=_tid(t.id, kind),
                code=f"{t.code}.{kind}",
                kind=kind,  # type: ignore[arg-type]
                pending_id=t.id,
                amount=t.amount if kind == "post" else None,
            )
            for t in pending
        ],
    )


def _by_key(session: Session, user_id: uuid.UUID, key: str) -> Payout | None:
    return session.scalar(
        select(Payout)
        .where(Payout.user_id == user_id, Payout.idempotency_key == key)
        .execution_options(populate_existing=True)
    )


def _same_request(existing: Payout, amount: int, currency: Currency, source: str) -> Payout:
    if (
        existing.amount != amount
        or existing.currency != currency.value
        or existing.source != source
    ):
        raise Conflict(
            "this Idempotency-Key was used for a different payout", code="idempotency_key_reused"
        )
    return existing


def list_payouts(
    session: Session, *, user: User, limit: int, offset: int
) -> tuple[list[Payout], int]:
    q = select(Payout).where(Payout.user_id == user.id)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(
        q.order_by(Payout.created_at.desc(), Payout.id).limit(limit).offset(offset)
    )
    return list(rows), int(total)


# ---------------------------------------------------------------- the outbox


def process_payouts(
    db: Database, *, settings: Settings, chain: Chain, now: datetime, limit: int = 100
) -> dict[str, int]:
    """One pass of the payout outbox: sign, send, confirm or reverse. Idempotent; each payout is
    handled in its own transaction with its row locked."""
    counts = {"sent": 0, "confirmed": 0, "failed": 0}
    with db.session() as session:
        ids = list(
            session.scalars(
                select(Payout.id)
                .where(Payout.status.in_(("pending", "signed", "sent")))
                .order_by(Payout.created_at)
                .limit(limit)
            )
        )
    for pid in ids:
        try:
            with db.session() as session:
                row = session.scalar(
                    select(Payout).where(Payout.id == pid).with_for_update(skip_locked=True)
                )
                if row is None or row.status not in ("pending", "signed", "sent"):
                    continue
                outcome = _step(session, row, settings=settings, chain=chain, now=now)
            if outcome:
                counts[outcome] += 1
        except ChainUnavailable as exc:
            log.warning("payouts: chain unavailable (%s); retried next pass", exc.detail)
            break
        except Exception:
            log.exception("payout %s: step failed; retried next pass", pid)
    return counts


def _step(
    session: Session, row: Payout, *, settings: Settings, chain: Chain, now: datetime
) -> str | None:
    if row.signature is not None:
        status = chain.statuses([row.signature])[0]
        if status == "failed":
            return _fail(session, row, "the transfer failed on chain", now)
        if reached(status, settings.chain_commitment):
            _resolve(session, row, "post")
            row.status, row.settled_at = "confirmed", now
            return "confirmed"
        if status is not None:
            return None  # landed; waiting for the commitment
        if chain.block_height() > (row.last_valid_block_height or 0):
            row.signature = None  # can never land now: sign again with a fresh blockhash
    if row.signature is None:
        if row.attempts >= MAX_ATTEMPTS:
            return _fail(session, row, f"not confirmed after {row.attempts} attempts", now)
        sent = chain.sign_treasury_transfer(
            currency=Currency(row.paid_currency),
            owner=row.wallet,
            amount=row.paid_amount,
            memo=f"cyxwiz:payout:{row.id.hex[:16]}",
        )
        row.signature, row.raw_tx = sent.signature, sent.raw
        row.last_valid_block_height = sent.last_valid_block_height
        row.attempts += 1
        row.status = "signed"
        session.commit()  # the signature is on record before anything is sent
    if row.raw_tx is None or row.signature is None:  # pragma: no cover - set just above
        return None
    try:
        chain.send_raw(row.raw_tx)  # (re)sending the same signed transaction is harmless
    except BlockhashExpired:
        return None  # signed again next pass
    except TransactionRejected as exc:
        if chain.statuses([row.signature])[0] is not None:
            return None  # it had landed after all (a resend after a crash)
        return _fail(session, row, exc.detail, now)
    first = row.status != "sent"
    row.status = "sent"
    row.sent_at = row.sent_at or now
    if reached(chain.statuses([row.signature])[0], settings.chain_commitment):
        _resolve(session, row, "post")  # a chain that finalizes at once (the local one)
        row.status, row.settled_at = "confirmed", now
        return "confirmed"
    return "sent" if first else None


def _fail(session: Session, row: Payout, why: str, now: datetime) -> str:
    _resolve(session, row, "void")
    row.status, row.error, row.settled_at = "failed", why[:500], now
    return "failed"


# ---------------------------------------------------------------- settings and weekly runs


def get_payout_settings(session: Session, *, user_id: uuid.UUID) -> PayoutSettings:
    found = session.scalar(select(PayoutSettings).where(PayoutSettings.user_id == user_id))
    return found or PayoutSettings(user_id=user_id, paid_in="USDC", weekly=False, wallet=None)


def set_payout_settings(
    session: Session, *, user: User, paid_in: Currency, weekly: bool, wallet: str | None
) -> PayoutSettings:
    if wallet is not None:
        linked_wallet(session, user_id=user.id, address=wallet)
    row = session.scalar(select(PayoutSettings).where(PayoutSettings.user_id == user.id))
    if row is None:
        row = PayoutSettings(user_id=user.id)
        session.add(row)
    row.paid_in, row.weekly, row.wallet = paid_in.value, weekly, wallet
    session.flush()
    return row


def schedule_weekly(db: Database, *, settings: Settings, now: datetime) -> int:
    """Queue this ISO week's free payout of available USDC earnings for every creator who
    asked for weekly payouts and has at least the minimum (idempotent per week)."""
    year, week, _ = now.isocalendar()
    made = 0
    with db.session() as session:
        users = list(session.scalars(select(PayoutSettings).where(PayoutSettings.weekly.is_(True))))
    for prefs in users:
        with db.session() as session:
            user = session.get(User, prefs.user_id)
            if user is None or not user.is_active:
                continue
            room = withdrawable(session, user_id=user.id, source="earnings", currency=Currency.USDC)
            available = room["withdrawable"]  # a debt is repaid first, out of the same earnings
            minimum = max(settings.payout_weekly_minimum, settings.payout_minimum_usdc, 1)
            if available < minimum:
                continue
            try:
                _, created = request_payout(
                    session,
                    settings=settings,
                    user=user,
                    amount=available,
                    currency=Currency.USDC,
                    source="earnings",
                    paid_in=Currency(prefs.paid_in),
                    kind="scheduled",
                    wallet=prefs.wallet,
                    idempotency_key=f"weekly:{year}-W{week:02d}",
                    now=now,
                )
                made += int(created)
            except DomainError as exc:
                log.warning("weekly payout for %s skipped: %s", user.username, exc.detail)
                session.rollback()
    return made
