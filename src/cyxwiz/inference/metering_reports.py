"""Read-only usage reports: buyers' usage and spend, creators' usage and revenue, node
operators' compute earnings, remaining demo credits. Nothing here writes."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import date
from typing import Any, Literal

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import ApiKey, User
from cyxwiz.billing import flows
from cyxwiz.catalog.models import Model, ModelContributor
from cyxwiz.inference.models import Node
from cyxwiz.inference.usage_models import DemoCredit, UsageEvent
from cyxwiz.ledger import service as ledger
from cyxwiz.ledger.models import LedgerTransfer
from cyxwiz.money import Currency

GroupBy = Literal["model", "day", "key"]
E = UsageEvent


def _window(start: date | None, end: date | None) -> list[Any]:
    conds: list[Any] = []
    if start is not None:
        conds.append(E.day >= start)
    if end is not None:
        conds.append(E.day <= end)
    return conds


def _counts() -> list[Any]:
    return [
        func.count().label("calls"),
        func.sum(case((E.kind == "paid", 1), else_=0)).label("paid_calls"),
        func.sum(case((E.kind == "demo", 1), else_=0)).label("demo_calls"),
        func.coalesce(func.sum(E.units), 0).label("units"),
        func.coalesce(func.sum(E.amount), 0).label("amount"),
    ]


def _row(group: dict[str, Any]) -> dict[str, Any]:
    return {**group, "calls": 0, "paid_calls": 0, "demo_calls": 0, "units": 0, "spent": {}}


def buyer_usage(
    session: Session,
    *,
    user: User,
    group_by: GroupBy,
    start: date | None = None,
    end: date | None = None,
) -> dict[str, Any]:
    """The caller's calls, units and spend (per currency), grouped by model, UTC day or key."""
    group_col: Any = {"model": E.model_id, "day": E.day, "key": E.api_key_id}[group_by]
    rows = session.execute(
        select(group_col, E.currency, *_counts())
        .where(E.user_id == user.id, *_window(start, end))
        .group_by(group_col, E.currency)
    ).all()
    labels: dict[Any, dict[str, Any]] = {}
    values = {r[0] for r in rows if r[0] is not None}
    if group_by == "model" and values:
        for m in session.scalars(select(Model).where(Model.id.in_(values))):
            labels[m.id] = {"model": m.full_name, "model_id": str(m.id)}
    if group_by == "key" and values:
        for k in session.scalars(select(ApiKey).where(ApiKey.id.in_(values))):
            if k.user_id == user.id:
                labels[k.id] = {"key_id": str(k.id), "key_name": k.name, "key_prefix": k.prefix}
    groups: dict[Any, dict[str, Any]] = {}
    totals = _row({})
    for value, currency, calls, paid, demo, units, amount in rows:
        if value not in groups:
            if group_by == "day":
                label: dict[str, Any] = {"day": value.isoformat()}
            elif group_by == "key":
                label = labels.get(value) or {"key_id": str(value) if value else None}
                label.setdefault("key_name", None if value is None else "(deleted key)")
            else:
                label = labels.get(value) or {"model": "(deleted model)", "model_id": str(value)}
            groups[value] = _row(label)
        for g in (groups[value], totals):
            g["calls"] += int(calls)
            g["paid_calls"] += int(paid or 0)
            g["demo_calls"] += int(demo or 0)
            g["units"] += int(units)
            if currency is not None:
                g["spent"][currency] = g["spent"].get(currency, 0) + int(amount)
    items = sorted(groups.values(), key=lambda g: str(g.get("day") or g.get("model") or ""))
    return {"group_by": group_by, "items": items, "total": totals}


def creator_usage(
    session: Session, *, user: User, start: date | None = None, end: date | None = None
) -> dict[str, Any]:
    """Usage of the models the user owns or shares: calls, units, gross revenue, and the
    user's own earnings from them (from the ledger, exact)."""
    shared = select(ModelContributor.model_id).where(ModelContributor.user_id == user.id)
    models = list(
        session.scalars(
            select(Model).where((Model.owner_id == user.id) | Model.id.in_(shared))
        ).unique()
    )
    by_id = {m.id: m for m in models}
    out: dict[uuid.UUID, dict[str, Any]] = {
        m.id: {
            "model": m.full_name,
            "model_id": str(m.id),
            "calls": 0,
            "paid_calls": 0,
            "demo_calls": 0,
            "units": 0,
            "revenue": {},
            "my_earnings": {},
        }
        for m in models
    }
    if by_id:
        for model_id, currency, calls, paid, demo, units, amount in session.execute(
            select(E.model_id, E.currency, *_counts())
            .where(E.model_id.in_(list(by_id)), *_window(start, end))
            .group_by(E.model_id, E.currency)
        ):
            row = out[model_id]
            row["calls"] += int(calls)
            row["paid_calls"] += int(paid or 0)
            row["demo_calls"] += int(demo or 0)
            row["units"] += int(units)
            if currency is not None:
                row["revenue"][currency] = row["revenue"].get(currency, 0) + int(amount)
        mine = ledger.find_accounts(session, [flows.earnings_code(user.id, c) for c in Currency])
        if mine:
            refs = {f"model:{m}": m for m in by_id}
            for ref, currency, amount in session.execute(
                select(LedgerTransfer.ref, LedgerTransfer.currency, func.sum(LedgerTransfer.amount))
                .where(
                    LedgerTransfer.code == "usage.share",
                    LedgerTransfer.credit_account_id.in_([a.id for a in mine.values()]),
                    LedgerTransfer.ref.in_(list(refs)),
                )
                .group_by(LedgerTransfer.ref, LedgerTransfer.currency)
            ):
                out[refs[str(ref)]]["my_earnings"][currency] = int(amount)
    return {"items": sorted(out.values(), key=lambda r: str(r["model"]))}


def operator_earnings(session: Session, *, user: User) -> dict[str, Any]:
    """The operator's nodes: calls and units served, compute share earned (ledger), and the
    node earnings balance per currency."""
    nodes = list(session.scalars(select(Node).where(Node.operator_id == user.id)))
    rows: dict[uuid.UUID, dict[str, Any]] = {
        n.id: {
            "node_id": str(n.id),
            "name": n.name,
            "status": "retired" if n.deleted_at else n.status,
            "calls": 0,
            "units": 0,
            "earned": {},
        }
        for n in nodes
    }
    if rows:
        for node_id, calls, units in session.execute(
            select(E.node_id, func.count(), func.coalesce(func.sum(E.units), 0))
            .where(E.node_id.in_(list(rows)))
            .group_by(E.node_id)
        ):
            if node_id is not None:
                rows[node_id]["calls"] = int(calls)
                rows[node_id]["units"] = int(units)
    accounts = ledger.find_accounts(
        session, [flows.node_earnings_code(user.id, c) for c in Currency]
    )
    if rows and accounts:
        refs = {f"node:{n}": n for n in rows}
        for ref, currency, amount in session.execute(
            select(LedgerTransfer.ref, LedgerTransfer.currency, func.sum(LedgerTransfer.amount))
            .where(
                LedgerTransfer.code == "usage.compute",
                LedgerTransfer.credit_account_id.in_([a.id for a in accounts.values()]),
                LedgerTransfer.ref.in_(list(refs)),
            )
            .group_by(LedgerTransfer.ref, LedgerTransfer.currency)
        ):
            rows[refs[str(ref)]]["earned"][currency] = int(amount)
    balance: dict[str, Any] = defaultdict(dict)
    for c in Currency:
        balance[c.value] = ledger.balance_of_code(
            session, flows.node_earnings_code(user.id, c), c
        ).as_dict()
    return {"nodes": list(rows.values()), "balance": dict(balance)}


def demo_credits_left(session: Session, *, user: User, model: Model, limit: int) -> dict[str, int]:
    """The user's free demo inferences of ``model``: limit, used, remaining."""
    used = session.scalar(
        select(DemoCredit.used).where(
            DemoCredit.user_id == user.id, DemoCredit.model_id == model.id
        )
    )
    used = min(int(used or 0), limit)
    return {"limit": limit, "used": used, "remaining": limit - used}
