"""Usage and earnings of hosted inference: buyers, creators, node operators, demo credits."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from cyxwiz.catalog import service as catalog
from cyxwiz.errors import InvalidInput
from cyxwiz.inference import metering_reports as reports
from cyxwiz.web.deps import ReaderDep, SessionDep, SettingsDep

router = APIRouter(tags=["usage"])

From = Annotated[date | None, Query(alias="from", description="first UTC day (inclusive)")]
To = Annotated[date | None, Query(alias="to", description="last UTC day (inclusive)")]


def _check(start: date | None, end: date | None) -> None:
    if start is not None and end is not None and start > end:
        raise InvalidInput("'from' must not be after 'to'", code="invalid_range")


@router.get("/usage")
def my_usage(
    session: SessionDep,
    user: ReaderDep,
    group_by: Literal["model", "day", "key"] = "model",
    start: From = None,
    end: To = None,
) -> dict[str, Any]:
    """Your hosted-inference calls, units and spend (minor units per currency), grouped by
    model, UTC day or API key (`key_id` null = calls without a key, e.g. the playground).
    Calls settle into this report within about a second."""
    _check(start, end)
    return reports.buyer_usage(session, user=user, group_by=group_by, start=start, end=end)


@router.get("/creator/usage")
def creator_usage(
    session: SessionDep, user: ReaderDep, start: From = None, end: To = None
) -> dict[str, Any]:
    """Usage of the models you own or contribute to: calls (paid, demo), units, gross revenue,
    and your own earnings from them."""
    _check(start, end)
    return reports.creator_usage(session, user=user, start=start, end=end)


@router.get("/operator/earnings")
def operator_earnings(session: SessionDep, user: ReaderDep) -> dict[str, Any]:
    """Your nodes' served calls and compute-share earnings, and your node earnings balance."""
    return reports.operator_earnings(session, user=user)


@router.get("/demo-credits/{owner}/{name}")
def demo_credits(
    owner: str, name: str, session: SessionDep, user: ReaderDep, settings: SettingsDep
) -> dict[str, Any]:
    """Your remaining free demo inferences of a model."""
    model = catalog.get_model(session, owner=owner, name=name, viewer=user)
    left = reports.demo_credits_left(
        session, user=user, model=model, limit=settings.demo_credits_per_model
    )
    return {"model": model.full_name, **left}
