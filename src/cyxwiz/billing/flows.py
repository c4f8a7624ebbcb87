"""Flows that move money: one-time purchase into escrow, release, refunds, earnings.

Money enters the ledger only through on-chain deposits (``cyxwiz.billing.deposits``).

Every movement is a ledger transfer with a deterministic id derived from the business record
(purchase id + step), so a retried or concurrently repeated flow lands on the same transfers and
never moves money twice. Flows flush and never commit; the caller's transaction is the unit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.billing.models import CreatorDebt, Purchase
from cyxwiz.catalog.models import Model, ModelContributor
from cyxwiz.catalog.service import can_view
from cyxwiz.config import Settings
from cyxwiz.errors import Conflict, DomainError, InvalidInput, NotFound
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.models import LedgerAccount, LedgerTransfer
from cyxwiz.ledger.service import TransferSpec
from cyxwiz.licensing.models import License
from cyxwiz.licensing.service import active_license, get_offers
from cyxwiz.money import BPS, Currency, allocate, bps_of

NS = uuid.UUID("5b0f7c1e-9f3a-4e0c-8a55-0c1d2e3f4a5b")
# (lifetime released sales in USDC minor units at least, platform fee bps)
FEE_TIERS: tuple[tuple[int, int], ...] = (
    (100_000 * 10**6, 1200),
    (10_000 * 10**6, 1500),
    (1_000 * 10**6, 1800),
    (0, 2000),
)
TIER_NAMES = {2000: "starter", 1800: "rising", 1500: "pro", 1200: "elite"}


class RefundWindowClosed(DomainError):
    code = "refund_window_closed"
    status = 409
    title = "Refund window closed"


def _tid(*parts: object) -> uuid.UUID:
    return uuid.uuid5(NS, ":".join(str(p) for p in parts))


# ---------------------------------------------------------------- accounts


def platform_code(purpose: str, currency: Currency) -> str:
    return f"platform:{purpose}:{currency.value}"


def user_code(user_id: uuid.UUID, currency: Currency) -> str:
    return f"user:{user_id}:{currency.value}"


def earnings_code(user_id: uuid.UUID, currency: Currency) -> str:
    return f"earnings:{user_id}:{currency.value}"


def user_account(session: Session, user_id: uuid.UUID, currency: Currency) -> LedgerAccount:
    """The spendable balance of a user (cannot go below zero)."""
    return ledger.get_or_create_account(
        session,
        code=user_code(user_id, currency),
        currency=currency,
        kind="user_balance",
        user_id=user_id,
    )


def earnings_account(session: Session, user_id: uuid.UUID, currency: Currency) -> LedgerAccount:
    """A creator's released earnings (cannot go below zero)."""
    return ledger.get_or_create_account(
        session,
        code=earnings_code(user_id, currency),
        currency=currency,
        kind="creator_earnings",
        user_id=user_id,
    )


def node_earnings_code(user_id: uuid.UUID, currency: Currency) -> str:
    return f"node:{user_id}:{currency.value}"


def node_earnings_account(
    session: Session, user_id: uuid.UUID, currency: Currency
) -> LedgerAccount:
    """A node operator's compute earnings from hosted inference (cannot go below zero)."""
    return ledger.get_or_create_account(
        session,
        code=node_earnings_code(user_id, currency),
        currency=currency,
        kind="node_earnings",
        user_id=user_id,
    )


def platform_account(session: Session, purpose: str, currency: Currency) -> LedgerAccount:
    """Platform accounts: revenue, escrow, treasury (the platform's own funds on chain) and
    payout fees hold money (no overdraft); receivables (what creators owe after late refunds)
    and the vault (the on-chain token accounts' mirror: its net debit is what they hold) are
    debit-normal and may go below zero."""
    return ledger.get_or_create_account(
        session,
        code=platform_code(purpose, currency),
        currency=currency,
        kind=f"platform_{purpose}",
        no_overdraft=purpose not in ("receivables", "vault"),
    )


def balances(session: Session, *, user: User) -> dict[str, dict[str, Any]]:
    """Spendable balance and creator earnings per currency (read-only)."""
    return {
        cur.value: {
            "balance": ledger.balance_of_code(session, user_code(user.id, cur), cur).as_dict(),
            "earnings": ledger.balance_of_code(session, earnings_code(user.id, cur), cur).as_dict(),
        }
        for cur in Currency
    }


@dataclass
class UserTransfer:
    transfer: LedgerTransfer
    incoming: bool
    account_kind: str  # user_balance | creator_earnings


def user_transfers(
    session: Session, *, user: User, page: int, per_page: int
) -> tuple[list[UserTransfer], int]:
    """Transfers touching the user's balance or earnings, newest first (read-only)."""
    codes = [f(user.id, c) for c in Currency for f in (user_code, earnings_code)]
    mine = {a.id: a for a in ledger.find_accounts(session, codes).values()}
    if not mine:
        return [], 0
    rows, total = ledger.transfers_for_accounts(
        session, list(mine), limit=per_page, offset=(page - 1) * per_page
    )
    out = []
    for t in rows:
        incoming = t.credit_account_id in mine
        acct = mine[t.credit_account_id if incoming else t.debit_account_id]
        out.append(UserTransfer(t, incoming, acct.kind))
    return out, total


# ---------------------------------------------------------------- pricing


def cyx_rate_micro(settings: Settings) -> int:
    """Micro-USDC per 1 CYX."""
    rate = Decimal(settings.cyx_price_usdc)
    if rate <= 0:
        raise InvalidInput("CYX rate must be positive")
    return int(rate.scaleb(6))


def price_in(settings: Settings, usdc_price: int, currency: Currency) -> int:
    """What a buyer pays in ``currency`` for a USDC price (CYX: discounted, rounded up)."""
    if currency is Currency.USDC:
        return usdc_price
    discounted = usdc_price - bps_of(usdc_price, settings.cyx_discount_bps)
    rate = cyx_rate_micro(settings)
    return -(-discounted * 10**6 // rate)


def lifetime_released_usdc(session: Session, *, creator_id: uuid.UUID) -> int:
    return int(
        session.scalar(
            select(func.coalesce(func.sum(Purchase.list_price_usdc), 0)).where(
                Purchase.creator_id == creator_id, Purchase.status == "released"
            )
        )
        or 0
    )


def fee_bps_for(lifetime_usdc: int) -> int:
    for threshold, bps in FEE_TIERS:
        if lifetime_usdc >= threshold:
            return bps
    return FEE_TIERS[-1][1]


# ---------------------------------------------------------------- purchase


def purchase(
    session: Session,
    *,
    settings: Settings,
    buyer: User,
    model: Model,
    currency: Currency,
    idempotency_key: str,
    now: datetime,
) -> tuple[Purchase, bool]:
    """Buy a perpetual license: funds go to escrow (pending), the license is active at once.

    Returns (purchase, created). A retry with the same Idempotency-Key returns the first purchase.
    """
    existing = session.scalar(
        select(Purchase).where(
            Purchase.buyer_id == buyer.id, Purchase.idempotency_key == idempotency_key
        )
    )
    if existing is not None:
        return _same_request(existing, model, currency), False
    if not can_view(model, buyer) or model.visibility not in ("public", "unlisted"):
        raise NotFound(f"model {model.full_name} not found", code="model_not_found")
    if model.latest_version is None:
        raise Conflict(f"{model.full_name} has no published version to sell", code="not_for_sale")
    if model.owner_id == buyer.id:
        raise Conflict("you cannot buy your own model", code="own_model")
    offer = get_offers(session, model=model).one_time
    if offer is None:
        raise Conflict(f"{model.full_name} is free; download it directly", code="not_for_sale")
    if active_license(session, buyer_id=buyer.id, model_id=model.id) is not None:
        # A retry whose first attempt committed after the lookup above finds the license:
        # it is the same purchase, not a second one.
        again = session.scalar(
            select(Purchase)
            .where(Purchase.buyer_id == buyer.id, Purchase.idempotency_key == idempotency_key)
            .execution_options(populate_existing=True)
        )
        if again is not None:
            return _same_request(again, model, currency), False
        raise Conflict(f"you already hold a license for {model.full_name}", code="already_licensed")
    amount = price_in(settings, offer.amount, currency)
    fee = fee_bps_for(lifetime_released_usdc(session, creator_id=model.owner_id))
    purchase_id = _tid("purchase", buyer.id, idempotency_key)
    escrow_id = _tid(purchase_id, "escrow")
    lic = License(
        model_id=model.id,
        buyer_id=buyer.id,
        currency=currency.value,
        amount_paid=amount,
        created_at=now,
    )
    row = Purchase(
        id=purchase_id,
        buyer_id=buyer.id,
        model_id=model.id,
        creator_id=model.owner_id,
        idempotency_key=idempotency_key,
        currency=currency.value,
        list_price_usdc=offer.amount,
        amount=amount,
        fee_bps=fee,
        splits=[{"user_id": str(c.user_id), "share_bps": c.share_bps} for c in model.contributors],
        status="escrow",
        escrow_transfer_id=escrow_id,
        refund_window_ends_at=now + timedelta(days=settings.refund_window_days),
        created_at=now,
    )
    try:
        with session.begin_nested():
            session.add(lic)
            session.flush()
            row.license_id = lic.id
            session.add(row)
            session.flush()
            ledger.create_transfer(
                session,
                TransferSpec(
                    id=escrow_id,
                    code="purchase.escrow",
                    debit=user_account(session, buyer.id, currency).id,
                    credit=platform_account(session, "escrow", currency).id,
                    amount=amount,
                    kind="pending",
                    ref=f"purchase:{purchase_id}",
                ),
            )
    except DBIntegrityError:
        # A concurrent request with the same key, or for the same model, won the race.
        again = session.scalar(
            select(Purchase)
            .where(Purchase.buyer_id == buyer.id, Purchase.idempotency_key == idempotency_key)
            .execution_options(populate_existing=True)
        )
        if again is not None:
            return _same_request(again, model, currency), False
        raise Conflict(
            f"you already hold a license for {model.full_name}", code="already_licensed"
        ) from None
    return row, True


def _same_request(existing: Purchase, model: Model, currency: Currency) -> Purchase:
    if existing.model_id != model.id or existing.currency != currency.value:
        raise Conflict(
            "this Idempotency-Key was used for a different purchase", code="idempotency_key_reused"
        )
    return existing


# ---------------------------------------------------------------- release


def sale_split(purchase: Purchase) -> tuple[int, list[int]]:
    """The platform fee and each contributor's share of a sale (frozen on the purchase):
    fee = floor(amount × fee_bps / 10000); shares split the rest exactly by share_bps."""
    fee = bps_of(purchase.amount, purchase.fee_bps)
    return fee, allocate(purchase.amount - fee, [int(s["share_bps"]) for s in purchase.splits])


def release(session: Session, *, purchase: Purchase, now: datetime) -> bool:
    """Post the escrow and pay fee + contributor shares in one linked set; idempotent."""
    if purchase.status != "escrow":
        return False
    cur = Currency(purchase.currency)
    escrow = platform_account(session, "escrow", cur)
    revenue = platform_account(session, "revenue", cur)
    fee, parts = sale_split(purchase)
    specs = [
        TransferSpec(
            id=_tid(purchase.id, "post"),
            code="purchase.capture",
            kind="post",
            pending_id=purchase.escrow_transfer_id,
            ref=f"purchase:{purchase.id}",
        ),
        TransferSpec(
            id=_tid(purchase.id, "fee"),
            code="purchase.fee",
            debit=escrow.id,
            credit=revenue.id,
            amount=fee,
            ref=f"purchase:{purchase.id}",
        ),
    ]
    for split, part in zip(purchase.splits, parts, strict=True):
        uid = uuid.UUID(split["user_id"])
        specs.extend(_pay_share(session, purchase, uid, part, cur, escrow))
    ledger.create_transfers(session, specs)
    changed = session.execute(
        update(Purchase)
        .where(Purchase.id == purchase.id, Purchase.status == "escrow")
        .values(status="released", released_at=now)
        .execution_options(synchronize_session=False)
    )
    session.refresh(purchase)
    return bool(changed.rowcount)  # type: ignore[attr-defined]


def _pay_share(
    session: Session,
    purchase: Purchase,
    user_id: uuid.UUID,
    part: int,
    cur: Currency,
    escrow: LedgerAccount,
) -> list[TransferSpec]:
    """A contributor's share, repaying any debt to the platform (receivables) first."""
    specs: list[TransferSpec] = []
    repay_total = 0
    debts = session.scalars(
        select(CreatorDebt)
        .where(
            CreatorDebt.user_id == user_id,
            CreatorDebt.currency == cur.value,
            CreatorDebt.remaining > 0,
        )
        .order_by(CreatorDebt.created_at, CreatorDebt.id)
        # Two releases for one creator must not both repay the same debt.
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    for debt in debts:
        if repay_total >= part:
            break
        pay = min(debt.remaining, part - repay_total)
        debt.remaining -= pay
        repay_total += pay
    if repay_total:
        specs.append(
            TransferSpec(
                id=_tid(purchase.id, "repay", user_id),
                code="debt.repay",
                debit=escrow.id,
                credit=platform_account(session, "receivables", cur).id,
                amount=repay_total,
                ref=f"purchase:{purchase.id}",
                meta={"user_id": str(user_id)},
            )
        )
    rest = part - repay_total
    specs.append(
        TransferSpec(
            id=_tid(purchase.id, "share", user_id),
            code="purchase.share",
            debit=escrow.id,
            credit=earnings_account(session, user_id, cur).id,
            amount=rest,
            ref=f"purchase:{purchase.id}",
        )
    )
    return specs


def release_due(session: Session, *, now: datetime, limit: int = 200) -> int:
    """Release every purchase whose refund window has closed; safe to run from many processes."""
    due = session.scalars(
        select(Purchase)
        .where(Purchase.status == "escrow", Purchase.refund_window_ends_at <= now)
        .order_by(Purchase.refund_window_ends_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=Purchase)
    ).all()
    if due:
        # The global lock order (platform accounts first): see ledger.lock_accounts.
        ledger.lock_accounts(
            session,
            {
                platform_account(session, purpose, Currency(cur)).id
                for cur in {p.currency for p in due}
                for purpose in ("escrow", "revenue", "receivables")
            },
        )
    return sum(1 for p in due if release(session, purchase=p, now=now))


# ---------------------------------------------------------------- refunds


def refund(session: Session, *, license: License, actor: User, now: datetime) -> Purchase:
    """Refund a purchase: the buyer within the window (escrow voided), an admin at any time."""
    # Lock the purchase first so a refund and a release of it serialize instead of deadlocking.
    row = session.scalar(
        select(Purchase)
        .where(Purchase.license_id == license.id)
        .with_for_update(of=Purchase)
        .execution_options(populate_existing=True)
    )
    if row is None:
        raise NotFound("no purchase for this license", code="license_not_found")
    if actor.id != row.buyer_id and not actor.is_admin:
        raise NotFound("no such license", code="license_not_found")
    if row.status == "refunded":
        return row
    # Buyers can only undo an escrowed sale; once released (the window closed) only an admin
    # can take money back from the creator.
    if not actor.is_admin and (now >= row.refund_window_ends_at or row.status != "escrow"):
        raise RefundWindowClosed(
            f"refunds are possible for {(row.refund_window_ends_at - row.created_at).days} days after purchase; "
            f"this window closed {row.refund_window_ends_at.isoformat()}"
        )
    if row.status == "escrow":
        ledger.create_transfer(
            session,
            TransferSpec(
                id=_tid(row.id, "void"),
                code="refund.void",
                kind="void",
                pending_id=row.escrow_transfer_id,
                ref=f"purchase:{row.id}",
            ),
        )
    else:
        _reverse_released(session, row)
    changed = session.execute(
        update(Purchase)
        .where(Purchase.id == row.id, Purchase.status == row.status)
        .values(status="refunded", refunded_at=now)
        .execution_options(synchronize_session=False)
    )
    if not changed.rowcount:  # type: ignore[attr-defined]
        raise Conflict("the purchase changed while refunding; retry", code="concurrent_update")
    session.execute(
        update(License)
        .where(License.id == license.id)
        .values(status="refunded", revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    session.refresh(row)
    session.refresh(license)
    return row


def _reverse_released(session: Session, row: Purchase) -> None:
    """Admin refund after release: the fee back from revenue, each share back from the
    contributor's earnings as far as they reach; the platform fronts the rest from
    receivables and records the creator's debt, which their next earnings repay."""
    cur = Currency(row.currency)
    revenue = platform_account(session, "revenue", cur)
    buyer = user_account(session, row.buyer_id, cur)
    fee, parts = sale_split(row)
    specs = [
        TransferSpec(
            id=_tid(row.id, "refund.fee"),
            code="refund.fee",
            debit=revenue.id,
            credit=buyer.id,
            amount=fee,
            ref=f"purchase:{row.id}",
        )
    ]
    for split, part in zip(row.splits, parts, strict=True):
        uid = uuid.UUID(split["user_id"])
        earn = earnings_account(session, uid, cur)
        available = ledger.balance_of(session, earn.id).available
        from_creator = min(part, max(available, 0))
        shortfall = part - from_creator
        specs.append(
            TransferSpec(
                id=_tid(row.id, "refund.share", uid),
                code="refund.share",
                debit=earn.id,
                credit=buyer.id,
                amount=from_creator,
                ref=f"purchase:{row.id}",
            )
        )
        if shortfall:
            specs.append(
                TransferSpec(
                    id=_tid(row.id, "refund.fronted", uid),
                    code="refund.fronted",
                    debit=platform_account(session, "receivables", cur).id,
                    credit=buyer.id,
                    amount=shortfall,
                    ref=f"purchase:{row.id}",
                    meta={"debtor": str(uid)},
                )
            )
            session.add(
                CreatorDebt(
                    user_id=uid,
                    currency=cur.value,
                    amount=shortfall,
                    remaining=shortfall,
                    purchase_id=row.id,
                )
            )
    ledger.create_transfers(session, specs)


# ---------------------------------------------------------------- earnings


@dataclass
class ModelEarnings:
    model: str
    sales: int = 0
    refunds: int = 0
    downloads: int = 0
    pending: dict[str, int] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)
    # every contributor's share of this model's non-refunded sales: user id -> currency -> amount
    contributors: dict[str, dict[str, int]] = field(default_factory=dict)


def creator_earnings(session: Session, *, user: User) -> dict[str, Any]:
    """Pending (in escrow), available and lifetime earnings, tier, and per-model figures."""
    lifetime_usdc = lifetime_released_usdc(session, creator_id=user.id)
    fee = fee_bps_for(lifetime_usdc)
    uid = str(user.id)
    per_model: dict[uuid.UUID, ModelEarnings] = {}
    pending: dict[str, int] = {c.value: 0 for c in Currency}
    lifetime: dict[str, int] = {c.value: 0 for c in Currency}
    mine_models = select(ModelContributor.model_id).where(ModelContributor.user_id == user.id)
    rows = session.scalars(
        select(Purchase).where(
            (Purchase.creator_id == user.id) | Purchase.model_id.in_(mine_models)
        )
    ).all()
    for p in rows:
        shares = {s["user_id"]: int(s["share_bps"]) for s in p.splits}
        if uid not in shares:
            continue
        me = per_model.setdefault(p.model_id, ModelEarnings(model=p.model.full_name))
        _fee, parts = sale_split(p)
        mine = parts[[s["user_id"] for s in p.splits].index(uid)]
        if p.status == "refunded":
            me.refunds += 1
            continue
        me.sales += 1
        for split, part in zip(p.splits, parts, strict=True):
            per_cur = me.contributors.setdefault(split["user_id"], {})
            per_cur[p.currency] = per_cur.get(p.currency, 0) + part
        bucket = me.pending if p.status == "escrow" else me.released
        bucket[p.currency] = bucket.get(p.currency, 0) + mine
        if p.status == "escrow":
            pending[p.currency] += mine
        else:
            lifetime[p.currency] += mine
    names = dict(
        session.execute(
            select(User.id, User.username).where(
                User.id.in_({uuid.UUID(u) for me in per_model.values() for u in me.contributors})
            )
        ).all()
    )
    for model_id, me in per_model.items():
        me.contributors = {names[uuid.UUID(u)]: v for u, v in me.contributors.items()}
        lic_downloads = session.scalar(
            select(func.coalesce(func.sum(License.downloads), 0)).where(
                License.model_id == model_id
            )
        )
        me.downloads = int(lic_downloads or 0)
    available = {
        c.value: ledger.balance_of_code(session, earnings_code(user.id, c), c).available
        for c in Currency
    }
    debt = {
        c.value: int(
            session.scalar(
                select(func.coalesce(func.sum(CreatorDebt.remaining), 0)).where(
                    CreatorDebt.user_id == user.id, CreatorDebt.currency == c.value
                )
            )
            or 0
        )
        for c in Currency
    }
    return {
        "tier": {
            "name": TIER_NAMES[fee],
            "platform_fee_bps": fee,
            "creator_share_bps": BPS - fee,
            "lifetime_released_sales_usdc": lifetime_usdc,
        },
        "pending": pending,
        "available": available,
        "lifetime": lifetime,
        "debt": debt,
        "models": [vars(m) for m in per_model.values()],
    }
