"""Response shapes shared by the JSON API and the web UI (no business rules)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cyxwiz.billing import flows
from cyxwiz.billing.models import Purchase
from cyxwiz.licensing import service as licensing
from cyxwiz.licensing.models import License
from cyxwiz.licensing.schemas import LicenseOut, OffersDocument, OffersOut, PriceOut
from cyxwiz.money import Currency
from cyxwiz.web.deps import AppContext


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
