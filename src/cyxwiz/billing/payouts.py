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
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.accounts.wallets import linked_wallet
from cyxwiz.billing.flows import (
    _tid,
    cyx_rate_micro,
    earnings_account,
    node_earnings_account,
    platform_account,
    user_account,
)
from cyxwiz.billing.models import Payout, PayoutSettings
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
from cyxwiz.money import Currency, bps_of, format_amount

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
SOURCES = ("balance", "earnings", "node_earnings")


class PayoutUnavailable(DomainError):
    code = "payout_unavailable"
    status = 503
    title = "Payout unavailable"


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
    """What a payout of ``amount`` costs and pays: fee, net, bonus, paid amount (exact ints)."""
    fee = bps_of(amount, settings.payout_instant_fee_bps) if instant else 0
    net = amount - fee
    if paid_in == currency:
        return {"fee": fee, "net": net, "bonus_usdc": 0, "bonus": 0, "paid": net}
    if currency is not Currency.USDC or paid_in is not Currency.CYX:
        raise InvalidInput("only USDC earnings can be paid out in CYX", code="invalid_currency")
    rate = cyx_rate_micro(settings)
    bonus_usdc = bps_of(net, settings.cyx_payout_bonus_bps)
    base = net * 10**6 // rate
    paid = (net + bonus_usdc) * 10**6 // rate
    return {"fee": fee, "net": net, "bonus_usdc": bonus_usdc, "bonus": paid - base, "paid": paid}


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
    if amount < 1:
        raise InvalidInput("amount must be positive", code="invalid_amount")
    if kind == "scheduled" and amount < settings.payout_weekly_minimum:
        raise InvalidInput(
            f"scheduled payouts start at {format_amount(settings.payout_weekly_minimum, currency)}",
            code="below_payout_minimum",
        )
    paid = paid_in or currency
    if paid != currency and source == "balance":
        raise InvalidInput(
            "a balance is withdrawn in its own currency; CYX payouts are for earnings",
            code="invalid_currency",
        )
    target = linked_wallet(session, user_id=user.id, address=wallet)
    q = quote(
        settings=settings, currency=currency, paid_in=paid, amount=amount, instant=kind == "instant"
    )
    if q["paid"] <= 0:
        raise InvalidInput("amount too small to pay out after fees", code="invalid_amount")
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
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
            ledger.create_transfers(session, specs)
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
            acct = earnings_account(session, user.id, Currency.USDC)
            available = acct.credits_posted - acct.debits_posted - acct.debits_pending
            if available < max(settings.payout_weekly_minimum, 1):
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
