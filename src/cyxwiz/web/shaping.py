"""Request and response shapes shared by the JSON API and the web UI (no business rules):
strict amounts and counts, the one pagination dependency, licenses and offers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query
from pydantic import BeforeValidator, Field, Strict
from sqlalchemy import select
from sqlalchemy.orm import Session

from cyxwiz.billing import flows
from cyxwiz.billing.models import Purchase
from cyxwiz.licensing import service as licensing
from cyxwiz.licensing.models import License
from cyxwiz.licensing.schemas import LicenseOut, OffersDocument, OffersOut, PriceOut
from cyxwiz.money import MAX_AMOUNT, Currency
from cyxwiz.web.deps import AppContext

MAX_PAGE = 100_000
MAX_PER_PAGE = 100

# A JSON amount in minor units: an integer (never true, "100" or 1.0), 1..MAX_AMOUNT.
Amount = Annotated[int, Strict(), Field(ge=1, le=MAX_AMOUNT)]


def _whole_number(value: object) -> object:
    """A query-string integer written with ASCII digits only: '12', never '1.0', '1e3', '+1',
    ' 1', '0x10' or 'true' (what int() or a lax parser would otherwise accept)."""
    if isinstance(value, str):
        if not (0 < len(value) <= 20 and value.isascii() and value.isdigit()):
            raise ValueError("must be a whole number written with digits only")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number")
    return value


# Put after Query(ge=..., le=...) in a query parameter's Annotated (after it, so the bounds
# still show as minimum/maximum in the OpenAPI document): digits only.
WholeNumber = BeforeValidator(_whole_number)


@dataclass(frozen=True)
class Pagination:
    """A bounded page request: ``offset``/``limit`` always fit a 64-bit column."""

    page: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page

    @property
    def limit(self) -> int:
        return self.per_page


def pagination(
    page: Annotated[
        int, Query(ge=1, le=MAX_PAGE, description=f"page number, 1..{MAX_PAGE}"), WholeNumber
    ] = 1,
    per_page: Annotated[
        int,
        Query(ge=1, le=MAX_PER_PAGE, description=f"items per page, 1..{MAX_PER_PAGE}"),
        WholeNumber,
    ] = 20,
) -> Pagination:
    """The ``page``/``per_page`` query parameters of every paginated route, bounded."""
    return Pagination(page=page, per_page=per_page)


PageDep = Annotated[Pagination, Depends(pagination)]


def license_out(session: Session, ctx: AppContext, lic: License, *, with_key: bool) -> LicenseOut:
    purchase = session.scalar(select(Purchase).where(Purchase.license_id == lic.id))
    now = ctx.clock.now()
    until = purchase.refund_window_ends_at if purchase else None
    return LicenseOut(
        id=lic.id,
        model=lic.model.full_name,
        buyer=lic.buyer.username,
        kind=lic.kind,
        scope=lic.scope,
        status=lic.status,
        price=PriceOut.of(lic.amount_paid, lic.currency),
        created_at=lic.created_at,
        expires_at=lic.expires_at,
        refundable_until=until,
        refundable=bool(lic.status == "active" and until is not None and now < until),
        downloads=lic.downloads,
        key=licensing.license_key(ctx.signer, lic) if with_key and lic.status == "active" else None,
    )


def offers_out(settings: Any, doc: OffersDocument) -> OffersOut:
    per_use = {
        name: PriceOut.of(price.amount, price.currency)
        for name, price in (
            ("per_1k_requests", doc.per_1k_requests),
            ("per_1k_tokens", doc.per_1k_tokens),
        )
        if price is not None
    }
    if doc.one_time is None:
        return OffersOut(free=True, **per_use)
    cyx = flows.price_in(settings, doc.one_time.amount, Currency.CYX)
    return OffersOut(
        free=False,
        one_time=PriceOut.of(doc.one_time.amount, doc.one_time.currency),
        one_time_cyx=PriceOut.of(cyx, "CYX"),
        **per_use,
    )
