"""Money routes: offers, purchase, licenses, refunds, balance, earnings, transfers.

Funds arrive through on-chain deposits (settlement routes; on a dev chain, test tokens come
from ``POST /api/v1/chain/faucet``)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Response, status
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.billing import flows
from cyxwiz.billing.models import Purchase
from cyxwiz.catalog import service as catalog
from cyxwiz.errors import NotFound
from cyxwiz.licensing import service as licensing
from cyxwiz.licensing.keys import InvalidLicenseKey
from cyxwiz.licensing.models import License
from cyxwiz.licensing.schemas import (
    LicenseOut,
    OffersDocument,
    OffersOut,
    PriceOut,
    VerifyIn,
    VerifyOut,
)
from cyxwiz.money import Currency, format_amount
from cyxwiz.web.deps import CtxDep, CurrentUser, ReaderDep, SessionDep, SettingsDep, ViewerDep
from cyxwiz.web.shaping import PageDep, license_out, offers_out

router = APIRouter(tags=["money"])
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=128,
        description="retries with the same key return the first result and never charge twice",
    ),
]


class PurchaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    currency: Literal["USDC", "CYX"] = "USDC"


class PurchaseOut(BaseModel):
    id: uuid.UUID
    status: str
    model: str
    price: PriceOut
    platform_fee_bps: int
    refundable_until: str
    license: LicenseOut


class TransferOut(BaseModel):
    id: uuid.UUID
    code: str
    direction: Literal["in", "out"]
    kind: str
    amount: int
    currency: str
    display: str
    account: str
    ref: str | None
    created_at: Any


class TransferPage(BaseModel):
    items: list[TransferOut]
    total: int
    page: int
    per_page: int


# ---------------------------------------------------------------- offers


@router.get("/models/{owner}/{name}/offers", response_model=OffersOut)
def get_offers(
    owner: str, name: str, session: SessionDep, viewer: ViewerDep, settings: SettingsDep
) -> OffersOut:
    """A model's prices (USDC, and what paying in CYX costs)."""
    model = catalog.get_model(session, owner=owner, name=name, viewer=viewer)
    return offers_out(settings, licensing.get_offers(session, model=model))


@router.put("/models/{owner}/{name}/offers", response_model=OffersOut)
def put_offers(
    owner: str,
    name: str,
    body: OffersDocument,
    session: SessionDep,
    user: CurrentUser,
    settings: SettingsDep,
) -> OffersOut:
    """Replace a model's offers document, e.g. `{"one_time": {"amount": 49000000, "currency": "USDC"}}`; `{}` makes it free."""
    model = catalog.get_model_for_edit(session, owner=owner, name=name, actor=user)
    return offers_out(
        settings, licensing.set_offers(session, model=model, actor=user, document=body)
    )


# ---------------------------------------------------------------- purchase and licenses


@router.post(
    "/models/{owner}/{name}/purchase",
    response_model=PurchaseOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "a retry with the same Idempotency-Key: the original purchase"}
    },
)
def purchase(
    owner: str,
    name: str,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    ctx: CtxDep,
    idempotency_key: IdempotencyKey = None,
    body: PurchaseIn | None = None,
) -> PurchaseOut:
    """Buy a perpetual license. Funds are held in escrow for the 7-day refund window, then
    released to the creator; the license (and its key) is active at once."""
    model = catalog.get_model(session, owner=owner, name=name, viewer=user)
    key = idempotency_key or str(uuid.uuid4())
    row, created = flows.purchase(
        session,
        settings=ctx.settings,
        buyer=user,
        model=model,
        currency=Currency((body or PurchaseIn()).currency),
        idempotency_key=key,
        now=ctx.clock.now(),
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return purchase_out(session, ctx, row)


def purchase_out(session: Session, ctx: CtxDep, row: Purchase) -> PurchaseOut:
    return PurchaseOut(
        id=row.id,
        status=row.status,
        model=row.model.full_name,
        price=PriceOut.of(row.amount, row.currency),
        platform_fee_bps=row.fee_bps,
        refundable_until=row.refund_window_ends_at.isoformat(),
        license=license_out(session, ctx, row.license, with_key=True),
    )


@router.get("/licenses", response_model=list[LicenseOut])
def list_licenses(session: SessionDep, user: ReaderDep, ctx: CtxDep) -> list[LicenseOut]:
    """Your licenses, newest first, with their keys while active."""
    rows = session.scalars(
        select(License).where(License.buyer_id == user.id).order_by(License.created_at.desc())
    ).all()
    return [license_out(session, ctx, lic, with_key=True) for lic in rows]


@router.get("/licenses/public-key")
def public_key(ctx: CtxDep) -> dict[str, Any]:
    """The ed25519 public keys that sign license keys (verify offline with any ed25519 library)."""
    keys = ctx.signer.public_keys()
    return {
        "algorithm": "ed25519",
        "active_kid": ctx.signer.active_kid,
        "keys": [
            {"kid": kid, "public_key": pk, "encoding": "base64 raw 32 bytes"}
            for kid, pk in keys.items()
        ],
        "format": "cxwl1.<base64url(JSON payload)>.<base64url(signature over 'cxwl1.<payload>')>",
    }


@router.post("/licenses/verify", response_model=VerifyOut)
def verify(body: VerifyIn, session: SessionDep, ctx: CtxDep) -> VerifyOut:
    """Check a license key: signature, expiry and the license's live status."""
    try:
        lic = licensing.license_from_key(
            session, signer=ctx.signer, key=body.key, now=ctx.clock.now()
        )
    except InvalidLicenseKey as exc:
        return VerifyOut(valid=False, reason=exc.detail)
    claims = ctx.signer.verify(body.key, now=ctx.clock.now())
    return VerifyOut(
        valid=lic.status == "active",
        status=lic.status,
        license_id=str(lic.id),
        model=claims.model,
        buyer=claims.buyer,
        scope=claims.scope,
        expires_at=claims.expires_at,
        reason=None if lic.status == "active" else f"license is {lic.status}",
    )


def _license_for(session: Session, license_id: uuid.UUID, user: User) -> License:
    lic = session.get(License, license_id)
    if lic is None or (lic.buyer_id != user.id and not user.is_admin):
        raise NotFound("no such license", code="license_not_found")
    return lic


@router.get("/licenses/{license_id}", response_model=LicenseOut)
def get_license(
    license_id: uuid.UUID, session: SessionDep, user: ReaderDep, ctx: CtxDep
) -> LicenseOut:
    """One of your licenses."""
    return license_out(session, ctx, _license_for(session, license_id, user), with_key=True)


@router.post("/licenses/{license_id}/refund", response_model=LicenseOut)
def refund(
    license_id: uuid.UUID, session: SessionDep, user: CurrentUser, ctx: CtxDep
) -> LicenseOut:
    """Refund within 7 days, no questions asked: escrow is voided and the license revoked.
    Admins may refund later (taken back from platform and creator balances). Idempotent."""
    lic = _license_for(session, license_id, user)
    flows.refund(session, license=lic, actor=user, now=ctx.clock.now())
    return license_out(session, ctx, lic, with_key=False)


# ---------------------------------------------------------------- balances


@router.get("/balance")
def balance(session: SessionDep, user: ReaderDep) -> dict[str, Any]:
    """Your spendable balance and creator earnings per currency (posted, pending, available)."""
    return flows.balances(session, user=user)


@router.get("/creator/earnings")
def creator_earnings(session: SessionDep, user: ReaderDep) -> dict[str, Any]:
    """Pending (in escrow), available and lifetime earnings, your tier, and per-model sales."""
    return flows.creator_earnings(session, user=user)


@router.get("/ledger/transfers", response_model=TransferPage)
def my_transfers(session: SessionDep, user: ReaderDep, paging: PageDep) -> TransferPage:
    """Every ledger transfer touching your balance or earnings, newest first."""
    page, per_page = paging.page, paging.per_page
    rows, total = flows.user_transfers(session, user=user, page=page, per_page=per_page)
    items = [
        TransferOut(
            id=r.transfer.id,
            code=r.transfer.code,
            direction="in" if r.incoming else "out",
            kind=r.transfer.kind,
            amount=r.transfer.amount,
            currency=r.transfer.currency,
            display=format_amount(r.transfer.amount, r.transfer.currency),
            account=r.account_kind,
            ref=r.transfer.ref,
            created_at=r.transfer.created_at,
        )
        for r in rows
    ]
    return TransferPage(items=items, total=total, page=page, per_page=per_page)
