"""Deposits: Solana Pay transfer requests into the platform vault, credited once per signature.

A deposit request names a fresh random ``reference`` key; the buyer's wallet adds it to the
transfer as a read-only account, so the watcher finds the transaction with
``getSignaturesForAddress(reference)`` and never has to trust the payer. Per transaction it
credits exactly what reached the vault in the requested mint (from the transaction's token
balance changes — under-payment credits what arrived and keeps the request open, over-payment
credits all). A transaction moving tokens of another mint, or to another account, credits
nothing to the user: whatever did reach one of our vaults is booked to ``platform:unclaimed`` so
the vault and the ledger still agree and support can return it.

Ledger: ``platform:vault:<CUR>`` (debit-normal mirror of the vault) → the user's balance. A
transaction seen at ``confirmed`` but not yet at the configured commitment is a pending transfer
(visible, not spendable); it is posted when the commitment is reached. Transfer ids derive from
the signature, and ``deposit_credits.signature`` is unique, so two watchers credit once.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.billing.flows import _tid, platform_account, user_account
from cyxwiz.billing.models import Deposit, DepositCredit
from cyxwiz.chain import solana_pay, tokens
from cyxwiz.chain.interfaces import Chain, TxRecord, reached
from cyxwiz.config import Settings
from cyxwiz.db import Database
from cyxwiz.errors import Conflict, InvalidInput
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.service import TransferSpec
from cyxwiz.money import Currency, format_amount

log = logging.getLogger(__name__)
LATE_PAYMENT_GRACE = timedelta(days=7)  # an expired request is still watched this long


def create_deposit(
    session: Session,
    *,
    settings: Settings,
    chain: Chain,
    user: User,
    currency: Currency,
    amount: int,
    idempotency_key: str,
    now: datetime,
) -> tuple[Deposit, bool]:
    """A new transfer request (or the first one made with this Idempotency-Key)."""
    existing = _by_key(session, user.id, idempotency_key)
    if existing is not None:
        return _same_request(existing, currency, amount), False
    if not 1 <= amount <= settings.deposit_max_amount:
        raise InvalidInput(
            f"amount must be between 0.000001 and "
            f"{format_amount(settings.deposit_max_amount, currency)}",
            code="invalid_amount",
        )
    dep_id = _tid("deposit", user.id, idempotency_key)
    row = Deposit(
        id=dep_id,
        user_id=user.id,
        idempotency_key=idempotency_key,
        currency=currency.value,
        amount=amount,
        reference=str(tokens.new_keypair().pubkey()),
        recipient=chain.treasury,
        vault=chain.vault_of(currency),
        mint=chain.mint_of(currency),
        memo=f"cyxwiz:deposit:{dep_id.hex[:16]}",
        status="open",
        expires_at=now + timedelta(seconds=settings.deposit_ttl_seconds),
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except DBIntegrityError:
        again = _by_key(session, user.id, idempotency_key)
        if again is None:
            raise
        return _same_request(again, currency, amount), False
    return row, True


def _by_key(session: Session, user_id: uuid.UUID, key: str) -> Deposit | None:
    return session.scalar(
        select(Deposit)
        .where(Deposit.user_id == user_id, Deposit.idempotency_key == key)
        .execution_options(populate_existing=True)
    )


def _same_request(existing: Deposit, currency: Currency, amount: int) -> Deposit:
    if existing.currency != currency.value or existing.amount != amount:
        raise Conflict(
            "this Idempotency-Key was used for a different deposit request",
            code="idempotency_key_reused",
        )
    return existing


def payment_url(deposit: Deposit, *, username: str) -> str:
    """The Solana Pay transfer request a wallet pays (what the QR code encodes)."""
    outstanding = max(deposit.amount - deposit.credited - deposit.pending, 0) or deposit.amount
    return solana_pay.build_url(
        solana_pay.TransferRequest(
            recipient=deposit.recipient,
            amount=outstanding,
            spl_token=deposit.mint,
            references=(deposit.reference,),
            label="CyxWiz Marketplace",
            message=f"Deposit {format_amount(outstanding, deposit.currency)} for @{username}",
            memo=deposit.memo,
        )
    )


def list_deposits(
    session: Session, *, user: User, limit: int, offset: int
) -> tuple[list[Deposit], int]:
    """The user's deposit requests, newest first (read-only)."""
    from sqlalchemy import func

    q = select(Deposit).where(Deposit.user_id == user.id)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(
        q.order_by(Deposit.created_at.desc(), Deposit.id).limit(limit).offset(offset)
    ).all()
    return list(rows), int(total)


def credits_of(session: Session, deposit: Deposit) -> list[DepositCredit]:
    return list(
        session.scalars(
            select(DepositCredit)
            .where(DepositCredit.deposit_id == deposit.id)
            .order_by(DepositCredit.slot, DepositCredit.signature)
        )
    )


# ---------------------------------------------------------------- the watcher


def scan_deposit(
    session: Session, *, settings: Settings, chain: Chain, deposit: Deposit, now: datetime
) -> int:
    """Credit every new transaction carrying this request's reference; returns how many
    credits changed. Safe to run from several processes at once."""
    changed = 0
    known = {c.signature: c for c in credits_of(session, deposit)}
    sigs = chain.signatures_for(deposit.reference, limit=1000)
    fresh = [s for s in reversed(sigs) if s.err is None]  # oldest first
    for info in fresh:
        credit = known.get(info.signature)
        if credit is not None and credit.status != "pending":
            continue
        status = chain.statuses([info.signature])[0]
        if not reached(status, "confirmed"):
            continue
        final = reached(status, settings.chain_commitment)
        if credit is None:
            tx = chain.transaction(info.signature)
            if tx is None or tx.err is not None:
                continue
            if _record(session, deposit=deposit, tx=tx, final=final, now=now, chain=chain):
                changed += 1
        elif final:
            _post(session, deposit=deposit, credit=credit, now=now)
            changed += 1
    if deposit.status in ("open", "partial") and deposit.expires_at <= now:
        deposit.status = "expired"  # no longer offered; late payments are still credited
    return changed


def _record(
    session: Session, *, deposit: Deposit, tx: TxRecord, final: bool, now: datetime, chain: Chain
) -> bool:
    cur = Currency(deposit.currency)
    amount = max(tx.delta_of(deposit.vault, deposit.mint), 0)
    payer = tx.signers[0] if tx.signers else ""
    tid = _tid("deposit", tx.signature)
    spec: TransferSpec | None
    if amount > 0:
        spec = TransferSpec(
            id=tid,
            code="deposit",
            debit=platform_account(session, "vault", cur).id,
            credit=user_account(session, deposit.user_id, cur).id,
            amount=amount,
            kind="posted" if final else "pending",
            ref=f"deposit:{deposit.id}",
        )
        status = "credited" if final else "pending"
    else:
        spec, status = _unclaimed(session, tx=tx, chain=chain, tid=tid)
    credit = DepositCredit(
        deposit_id=deposit.id,
        signature=tx.signature,
        amount=amount,
        slot=tx.slot,
        payer=payer,
        status=status,
        transfer_id=tid,
        credited_at=now if status == "credited" else None,
    )
    try:
        with session.begin_nested():
            session.add(credit)
            session.flush()
            if spec is not None:
                ledger.create_transfer(session, spec)
    except DBIntegrityError:
        return False  # another watcher credited this signature first
    if status == "credited":
        deposit.credited += amount
    elif status == "pending":
        deposit.pending += amount
    _update_status(deposit, tx.signature)
    return True


def _unclaimed(
    session: Session, *, tx: TxRecord, chain: Chain, tid: uuid.UUID
) -> tuple[TransferSpec | None, str]:
    """Tokens that reached one of our vaults without matching the request (wrong mint): booked
    to platform:unclaimed so the vault and the ledger agree. Nothing reached us: ignored."""
    for cur in Currency:
        got = tx.delta_of(chain.vault_of(cur), chain.mint_of(cur))
        if got > 0:
            return (
                TransferSpec(
                    id=tid,
                    code="deposit.unclaimed",
                    debit=platform_account(session, "vault", cur).id,
                    credit=platform_account(session, "unclaimed", cur).id,
                    amount=got,
                    ref=f"unclaimed:{tx.signature}",
                ),
                "unclaimed",
            )
    return None, "ignored"


def _post(session: Session, *, deposit: Deposit, credit: DepositCredit, now: datetime) -> None:
    ledger.create_transfer(
        session,
        TransferSpec(
            id=_tid("deposit.post", credit.signature),
            code="deposit.post",
            kind="post",
            pending_id=credit.transfer_id,
            amount=credit.amount,
        ),
    )
    credit.status = "credited"
    credit.credited_at = now
    deposit.pending -= credit.amount
    deposit.credited += credit.amount
    _update_status(deposit, credit.signature)


def _update_status(deposit: Deposit, signature: str) -> None:
    """open → partial (under-paid, still payable) → paid; expired requests stay expired unless
    a late payment completes them."""
    deposit.last_signature = signature
    got = deposit.credited + deposit.pending
    if got >= deposit.amount:
        deposit.status = "paid"
    elif got > 0 and deposit.status == "open":
        deposit.status = "partial"


def watch_once(db: Database, *, settings: Settings, chain: Chain, now: datetime) -> int:
    """One watcher pass over every request still worth watching; returns credits changed.
    Each request is scanned in its own transaction with its row locked."""
    with db.session() as session:
        ids = list(
            session.scalars(
                select(Deposit.id).where(
                    or_(
                        Deposit.status.in_(("open", "partial")),
                        Deposit.pending > 0,
                        Deposit.expires_at > now - LATE_PAYMENT_GRACE,
                    )
                )
            )
        )
    changed = 0
    for dep_id in ids:
        with db.session() as session:
            dep = session.scalar(select(Deposit).where(Deposit.id == dep_id).with_for_update())
            if dep is None:
                continue
            try:
                changed += scan_deposit(
                    session, settings=settings, chain=chain, deposit=dep, now=now
                )
            except Exception:
                log.exception("deposit %s: scan failed; retried next pass", dep_id)
                session.rollback()
    return changed
