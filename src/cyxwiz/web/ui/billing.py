"""The money pages of the web UI: buying a license (confirm page), the buyer's library (license
keys, downloads, refunds and balance) and the creator's earnings. Money comes in through
deposits (``settlement.py``: Solana Pay, and test tokens from the dev chain's faucet).

Like the rest of the UI these pages parse a form, call a billing or licensing flow and render;
the rules (prices, fees, refund windows, entitlements) live in the flows. Every money-moving
form carries a CSRF token and an idempotency key generated when the page rendered, so a double
submit lands on the first result and never moves money twice.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.billing import flows
from cyxwiz.billing.models import Purchase
from cyxwiz.catalog import service as catalog
from cyxwiz.catalog.models import Model, ModelVersion
from cyxwiz.config import ChainBackend, Settings
from cyxwiz.errors import DomainError, InvalidInput, NotFound
from cyxwiz.ledger.models import LedgerTransfer
from cyxwiz.licensing import service as licensing
from cyxwiz.licensing.models import License
from cyxwiz.licensing.schemas import LicenseOut, OffersDocument, Price
from cyxwiz.money import DECIMALS, Currency, format_amount, parse_amount, to_currency
from cyxwiz.web.deps import AppContext, CtxDep, SessionDep
from cyxwiz.web.shaping import license_out, offers_out
from cyxwiz.web.ui.forms import (
    CsrfForm,
    UiActor,
    UiViewer,
    field,
    login_redirect,
    see_other,
)
from cyxwiz.web.ui.render import page, set_flash

router = APIRouter()

MAX_PRICE = 10**13  # the offers schema's upper bound (10 million USDC)
TRANSFERS_PER_PAGE = 20
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_TRANSFER_LABELS: dict[str, str] = {
    "faucet": "Test funds added",
    "deposit": "Deposit",
    "deposit.post": "Deposit confirmed",
    "payout.out": "Payout",
    "payout.buy": "Payout in CYX",
    "payout.fee": "Instant payout fee",
    "payout.out.post": "Payout sent",
    "payout.buy.post": "Payout in CYX sent",
    "payout.fee.post": "Instant payout fee",
    "payout.out.void": "Payout failed",
    "payout.buy.void": "Payout in CYX failed",
    "payout.fee.void": "Payout failed: fee returned",
    "purchase.escrow": "Purchase, held in escrow",
    "purchase.capture": "Purchase completed",
    "refund.void": "Refund, hold released",
    "purchase.share": "Sale earnings released",
    "refund.fee": "Refund: platform fee returned",
    "refund.fronted": "Refund",
}


# ---------------------------------------------------------------- helpers


def new_key() -> str:
    """A fresh idempotency key for a money-moving form (one per rendered form)."""
    return secrets.token_urlsafe(24)


def _form_key(value: str) -> str:
    if not _KEY_RE.match(value):
        raise InvalidInput(
            "this form is incomplete or out of date; reload the page and try again",
            code="invalid_idempotency_key",
        )
    return value


def decimal_text(amount: int, currency: Currency = Currency.USDC) -> str:
    """An amount as a plain decimal for an input field: 49_500_000 -> '49.50' (no grouping)."""
    places = DECIMALS[currency]
    whole, frac = divmod(amount, 10**places)
    return f"{whole}.{f'{frac:0{places}d}'.rstrip('0').ljust(2, '0')}"


def parse_price(text: str) -> int:
    """A price typed by a person ('49', '49.00', '$1,250.5', '12 USDC') in USDC minor units."""
    cleaned = re.sub(r"(?i)\s*usdc\s*$", "", text.strip()).replace(",", "").lstrip("$").strip()
    if not cleaned:
        raise InvalidInput("enter a price, for example 49.00", code="invalid_amount")
    return parse_amount(cleaned, Currency.USDC)


def percent(bps: int) -> str:
    """Basis points as a percentage: 1500 -> '15%', 1250 -> '12.5%'."""
    whole, rest = divmod(bps, 100)
    return f"{whole}%" if not rest else f"{whole}.{f'{rest:02d}'.rstrip('0')}%"


def _entitled(
    ctx: AppContext, session: Session, version: ModelVersion, viewer: User | None
) -> bool:
    """Whether ``viewer`` may download ``version``'s files (the licensing service decides)."""
    try:
        licensing.check_download(session, version=version, viewer=viewer, now=ctx.clock.now())
    except (licensing.LicenseRequired, NotFound):
        return False
    return True


def offer_context(
    ctx: AppContext,
    session: Session,
    *,
    model: Model,
    viewer: User | None,
    version: ModelVersion | None,
) -> dict[str, Any]:
    """What a model or version page needs to show its price, Buy button or 'You own this'."""
    offers = offers_out(ctx.settings, licensing.get_offers(session, model=model))
    owned = (
        licensing.active_license(session, buyer_id=viewer.id, model_id=model.id)
        if viewer is not None and not offers.free
        else None
    )
    target = version or model.latest_version
    return {
        "offers": offers,
        "owned": owned,
        "can_download": target is not None and _entitled(ctx, session, target, viewer),
        "discount": percent(ctx.settings.cyx_discount_bps),
        "refund_days": ctx.settings.refund_window_days,
        "price_value": decimal_text(offers.one_time.amount) if offers.one_time else "",
        "pricing_error": None,
    }


def _available(session: Session, user: User) -> dict[str, dict[str, Any]]:
    """Spendable balance per currency (available, posted, on hold)."""
    return {cur: values["balance"] for cur, values in flows.balances(session, user=user).items()}


def test_tokens_offered(settings: Settings) -> bool:
    """Whether this server's chain has a faucet for test tokens (dev, local chain only)."""
    return not settings.is_production and settings.chain_backend is ChainBackend.local


# ---------------------------------------------------------------- buy


_BUY_MESSAGES = {
    "insufficient_funds": "Your {cur} balance does not cover this price: add funds, or pay "
    "with the other currency.",
    "already_licensed": "You already own {model}: its license key and downloads are in your "
    "library.",
    "own_model": "This is your own model: you can download it without buying a license.",
    "idempotency_key_reused": "This confirmation was already used for a different choice; "
    "check your choice and confirm again.",
}


def _buy_page(
    request: Request,
    ctx: AppContext,
    session: Session,
    *,
    model: Model,
    buyer: User,
    currency: Currency,
    error: str | None = None,
    status: int = 200,
) -> Response:
    offers = offers_out(ctx.settings, licensing.get_offers(session, model=model))
    balances = _available(session, buyer)
    prices = {"USDC": offers.one_time, "CYX": offers.one_time_cyx}
    options = []
    for cur in Currency:
        price = prices[cur.value]
        available = int(balances[cur.value]["available"])
        options.append(
            {
                "currency": cur.value,
                "price": price,
                "balance": balances[cur.value],
                "enough": price is not None and available >= price.amount,
                "short": format_amount(max(price.amount - available, 0), cur) if price else "",
            }
        )
    owned = licensing.active_license(session, buyer_id=buyer.id, model_id=model.id)
    return page(
        request,
        "billing/buy.html",
        {
            "model": model,
            "offers": offers,
            "options": options,
            "currency": currency.value,
            "owned": owned,
            "is_owner": model.owner_id == buyer.id,
            "idempotency_key": new_key(),
            "discount": percent(ctx.settings.cyx_discount_bps),
            "refund_days": ctx.settings.refund_window_days,
            "test_tokens": test_tokens_offered(ctx.settings),
            "error": error,
        },
        status=status,
    )


def _currency(value: str | None) -> Currency:
    try:
        return to_currency(value or "USDC")
    except InvalidInput:
        return Currency.USDC


@router.get("/{owner}/{name}/buy")
def buy_form(
    request: Request,
    owner: str,
    name: str,
    session: SessionDep,
    viewer: UiViewer,
    ctx: CtxDep,
    currency: str = "USDC",
) -> Response:
    """The confirm page: price in USDC or CYX, the buyer's balance, the refund promise."""
    if viewer is None:
        return login_redirect(request)
    model = catalog.get_model(session, owner=owner, name=name, viewer=viewer)
    if licensing.is_free(session, model=model):
        response = see_other(f"/{model.full_name}")
        set_flash(response, f"{model.full_name} is free: download it directly.", "info")
        return response
    return _buy_page(request, ctx, session, model=model, buyer=viewer, currency=_currency(currency))


@router.post("/{owner}/{name}/buy")
def buy(
    request: Request,
    owner: str,
    name: str,
    form: CsrfForm,
    session: SessionDep,
    actor: UiActor,
    ctx: CtxDep,
) -> Response:
    """Pay: funds go to escrow and the license is active at once; errors re-render the page."""
    if actor is None:
        return login_redirect(request, f"/{owner}/{name}/buy")
    model = catalog.get_model(session, owner=owner, name=name, viewer=actor)
    cur = _currency(field(form, "currency"))
    try:
        row, created = flows.purchase(
            session,
            settings=ctx.settings,
            buyer=actor,
            model=model,
            currency=to_currency(field(form, "currency") or "USDC"),
            idempotency_key=_form_key(field(form, "idempotency_key")),
            now=ctx.clock.now(),
        )
    except DomainError as exc:
        session.rollback()
        model = catalog.get_model(session, owner=owner, name=name, viewer=actor)
        message = _BUY_MESSAGES.get(exc.code, exc.detail)
        return _buy_page(
            request,
            ctx,
            session,
            model=model,
            buyer=actor,
            currency=cur,
            error=message.format(cur=cur.value, model=model.full_name),
            status=exc.status,
        )
    response = see_other(f"/library#license-{row.license_id}")
    if created:
        paid = format_amount(row.amount, row.currency)
        set_flash(
            response,
            f"You bought {model.full_name} for {paid}. Your license key and downloads are below.",
        )
    else:
        set_flash(response, "This purchase was already completed; you were charged once.", "info")
    return response


# ---------------------------------------------------------------- library


@dataclass(frozen=True)
class LibraryItem:
    license: License
    out: LicenseOut
    model: Model
    files: Sequence[Any]


def _library_page(
    request: Request,
    ctx: AppContext,
    session: Session,
    user: User,
    *,
    error: str | None = None,
    status: int = 200,
) -> Response:
    rows = session.scalars(
        select(License).where(License.buyer_id == user.id).order_by(License.created_at.desc())
    ).all()
    items = []
    for lic in rows:
        latest = lic.model.latest_version
        items.append(
            LibraryItem(
                license=lic,
                out=license_out(session, ctx, lic, with_key=True),
                model=lic.model,
                files=list(latest.files) if latest is not None else [],
            )
        )
    return page(
        request,
        "billing/library.html",
        {
            "items": items,
            "balances": _available(session, user),
            "test_tokens": test_tokens_offered(ctx.settings),
            "refund_days": ctx.settings.refund_window_days,
            "error": error,
        },
        status=status,
    )


@router.get("/library")
def library(request: Request, session: SessionDep, viewer: UiViewer, ctx: CtxDep) -> Response:
    """The buyer's licenses with keys, downloads and refunds, and their wallet."""
    if viewer is None:
        return login_redirect(request)
    return _library_page(request, ctx, session, viewer)


@router.post("/library/{license_id}/refund")
def refund(
    request: Request,
    license_id: str,
    form: CsrfForm,
    session: SessionDep,
    actor: UiActor,
    ctx: CtxDep,
) -> Response:
    """Refund one of your purchases within the refund window; the license stops working."""
    if actor is None:
        return login_redirect(request, "/library")
    try:
        lic = session.get(License, uuid.UUID(license_id))
    except ValueError:
        lic = None
    if lic is None or lic.buyer_id != actor.id:
        raise NotFound("no such license", code="license_not_found")
    try:
        row = flows.refund(session, license=lic, actor=actor, now=ctx.clock.now())
    except DomainError as exc:
        session.rollback()
        return _library_page(request, ctx, session, actor, error=exc.detail, status=exc.status)
    response = see_other("/library")
    back = format_amount(row.amount, row.currency)
    set_flash(response, f"Refunded {lic.model.full_name}: {back} is back in your balance.")
    return response


# ---------------------------------------------------------------- earnings


@dataclass(frozen=True)
class TransferRow:
    transfer: LedgerTransfer
    label: str
    model: Model | None
    account: str
    sign: str  # "+", "-" or "" (no effect on what is available, e.g. capturing a hold)
    note: str


@dataclass(frozen=True)
class TransferPage:
    items: list[TransferRow]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def _transfer_row(r: flows.UserTransfer, models: Mapping[str, Model]) -> TransferRow:
    t, incoming = r.transfer, r.incoming
    label = _TRANSFER_LABELS.get(t.code, t.code)
    if t.code == "refund.share":
        label = "Refund received" if incoming else "Refund taken back from earnings"
    sign, note = ("+" if incoming else "-"), ""
    if t.kind == "pending":
        note = "on hold"
    elif t.kind == "void":
        sign, note = ("-" if incoming else "+"), "hold released"
    elif t.kind == "post":
        sign, note = "", "from the hold"
    account = "Earnings" if r.account_kind == "creator_earnings" else "Balance"
    return TransferRow(t, label, models.get(t.ref or ""), account, sign, note)


def _transfers(session: Session, user: User, number: int) -> TransferPage:
    rows, total = flows.user_transfers(session, user=user, page=number, per_page=TRANSFERS_PER_PAGE)
    purchase_ids = []
    for r in rows:
        t = r.transfer
        if t.ref and t.ref.startswith("purchase:"):
            try:
                purchase_ids.append(uuid.UUID(t.ref.removeprefix("purchase:")))
            except ValueError:
                continue
    models = {
        f"purchase:{p.id}": p.model
        for p in session.scalars(select(Purchase).where(Purchase.id.in_(purchase_ids)))
    }
    items = [_transfer_row(r, models) for r in rows]
    return TransferPage(items=items, total=total, page=number, per_page=TRANSFERS_PER_PAGE)


def _next_tier(lifetime: int) -> dict[str, Any] | None:
    """The next fee tier above ``lifetime`` released sales and how far along the way it is."""
    floor = max((t for t, _ in flows.FEE_TIERS if t <= lifetime), default=0)
    above = [(t, bps) for t, bps in flows.FEE_TIERS if t > lifetime]
    if not above:
        return None
    upcoming = min(above)
    threshold, bps = upcoming
    span = threshold - floor
    return {
        "name": flows.TIER_NAMES[bps],
        "fee": percent(bps),
        "threshold": threshold,
        "remaining": threshold - lifetime,
        "progress": (lifetime - floor) * 100 // span,
    }


@router.get("/earnings")
def earnings(request: Request, session: SessionDep, viewer: UiViewer, ctx: CtxDep) -> Response:
    """A creator's tier, pending/available/lifetime earnings, per-model sales and transfers."""
    if viewer is None:
        return login_redirect(request)
    data = flows.creator_earnings(session, user=viewer)
    try:
        number = min(max(int(request.query_params.get("page") or 1), 1), 100_000)
    except ValueError:
        number = 1
    tier = data["tier"]
    return page(
        request,
        "billing/earnings.html",
        {
            "data": data,
            "tier": tier,
            "fee": percent(tier["platform_fee_bps"]),
            "share": percent(tier["creator_share_bps"]),
            "next_tier": _next_tier(int(tier["lifetime_released_sales_usdc"])),
            "currencies": [c.value for c in Currency],
            "has_debt": any(v > 0 for v in data["debt"].values()),
            "transfers": _transfers(session, viewer, number),
            "refund_days": ctx.settings.refund_window_days,
        },
    )


# ---------------------------------------------------------------- pricing (owner)


def offers_document(price: str, *, make_free: bool) -> OffersDocument:
    """The offers document a pricing form asks for (validated by the schema)."""
    if make_free:
        return OffersDocument()
    amount = parse_price(price)
    if amount == 0:
        raise InvalidInput(
            "a price must be more than 0; to give the model away, choose 'Make free'",
            code="invalid_amount",
        )
    if amount > MAX_PRICE:
        raise InvalidInput(
            f"a price can be at most {format_amount(MAX_PRICE, Currency.USDC)}",
            code="invalid_amount",
        )
    return OffersDocument(one_time=Price(amount=amount, currency="USDC"))
