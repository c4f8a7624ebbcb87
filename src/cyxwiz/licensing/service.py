"""Offers, licenses and entitlements (who may download which files)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.catalog.models import Model, ModelVersion
from cyxwiz.catalog.service import can_edit, can_view
from cyxwiz.errors import DomainError, InvalidInput, NotFound
from cyxwiz.licensing.keys import InvalidLicenseKey, LicenseSigner
from cyxwiz.licensing.models import License, Offer
from cyxwiz.licensing.schemas import OffersDocument


class LicenseRequired(DomainError):
    code = "license_required"
    status = 403
    title = "License required"


def get_offers(session: Session, *, model: Model) -> OffersDocument:
    """The model's offers (empty document = free)."""
    row = session.scalar(select(Offer).where(Offer.model_id == model.id))
    return OffersDocument.model_validate(row.document) if row else OffersDocument()


def set_offers(
    session: Session, *, model: Model, actor: User, document: OffersDocument
) -> OffersDocument:
    """Replace the model's offers; only its owner or an admin may."""
    if not can_edit(model, actor):
        raise NotFound(f"model {model.full_name} not found", code="model_not_found")
    if document.one_time is not None and document.one_time.currency != "USDC":
        raise InvalidInput(
            "one_time prices are set in USDC (buyers paying in CYX get 15% off at the platform rate)",
            code="invalid_offer",
        )
    per_use = [p for p in (document.per_1k_requests, document.per_1k_tokens) if p is not None]
    if len(per_use) > 1:
        raise InvalidInput(
            "set at most one of per_1k_requests and per_1k_tokens", code="invalid_offer"
        )
    if any(p.currency != "USDC" for p in per_use):
        raise InvalidInput("per-use prices are set in USDC", code="invalid_offer")
    row = session.scalar(select(Offer).where(Offer.model_id == model.id))
    data = document.model_dump(exclude_none=True)
    if row is None:
        session.add(Offer(model_id=model.id, document=data))
    else:
        row.document = data
    session.flush()
    return document


def is_free(session: Session, *, model: Model) -> bool:
    return get_offers(session, model=model).one_time is None


def active_license(session: Session, *, buyer_id: uuid.UUID, model_id: uuid.UUID) -> License | None:
    return session.scalar(
        select(License).where(
            License.buyer_id == buyer_id, License.model_id == model_id, License.status == "active"
        )
    )


def license_key(signer: LicenseSigner, lic: License) -> str:
    """The license's signed key (ed25519 is deterministic, so it is re-derivable, never stored)."""
    return signer.sign(
        license_id=str(lic.id),
        model=lic.model.full_name,
        model_id=str(lic.model_id),
        buyer=lic.buyer.username,
        scope=lic.scope,
        issued_at=lic.created_at,
        expires_at=lic.expires_at,
    )


def license_from_key(
    session: Session, *, signer: LicenseSigner, key: str, now: datetime
) -> License:
    """The license an authentic key names (any status); InvalidLicenseKey otherwise."""
    claims = signer.verify(key, now=now)
    try:
        lic = session.get(License, uuid.UUID(claims.license_id))
    except ValueError:
        lic = None
    if lic is None or str(lic.model_id) != claims.model_id:
        raise InvalidLicenseKey("license key names no license")
    return lic


def _usable(lic: License, now: datetime) -> bool:
    return lic.status == "active" and (lic.expires_at is None or lic.expires_at > now)


def check_download(
    session: Session,
    *,
    version: ModelVersion,
    viewer: User | None,
    signer: LicenseSigner | None = None,
    key: str | None = None,
    now: datetime,
) -> License | None:
    """Allow or refuse a download of ``version``'s files; returns the license used, if any.

    Owners and admins always may; others need a visible, published version and, for a paid
    model, an active license (their own, or the one an ``X-License-Key`` names).
    """
    model = version.model
    if can_edit(model, viewer):
        return None
    if not can_view(model, viewer) or version.status != "published":
        raise NotFound(f"model {model.full_name} not found", code="model_not_found")
    if is_free(session, model=model):
        return None
    if viewer is not None:
        lic = active_license(session, buyer_id=viewer.id, model_id=model.id)
        if lic is not None and _usable(lic, now):
            return lic
    if key and signer is not None:
        lic = license_from_key(session, signer=signer, key=key, now=now)
        if lic.model_id == model.id and _usable(lic, now):
            return lic
        raise LicenseRequired(
            f"this license key's license is {lic.status}; buy {model.full_name} again to download"
        )
    raise LicenseRequired(
        f"{model.full_name} is a paid model: buy a license (POST /api/v1/models/{model.full_name}/purchase) "
        "or send X-License-Key"
    )


def count_license_download(session: Session, *, license: License) -> None:
    session.execute(
        update(License)
        .where(License.id == license.id)
        .values(downloads=License.downloads + 1)
        .execution_options(synchronize_session=False)
    )
