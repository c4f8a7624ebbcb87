"""Solana settlement routes: chain info, deposits (Solana Pay), payouts, the dev token faucet."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from cyxwiz.accounts.models import User
from cyxwiz.accounts.wallets import linked_wallet
from cyxwiz.billing import deposits as dep
from cyxwiz.billing import payouts as pay
from cyxwiz.billing import treasury
from cyxwiz.billing.models import Deposit, Payout
from cyxwiz.chain import solana_pay, tokens
from cyxwiz.config import ChainBackend
from cyxwiz.errors import NotFound
from cyxwiz.money import MAX_AMOUNT, Currency, format_amount
from cyxwiz.web.deps import ChainDep, CtxDep, CurrentUser, ReaderDep, SessionDep
from cyxwiz.web.shaping import Amount, PageDep, WholeNumber

router = APIRouter(tags=["settlement"])
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=128,
        description="retries with the same key return the first result and never move money twice",
    ),
]


def _amount(amount: int, currency: str) -> dict[str, Any]:
    return {"amount": amount, "currency": currency, "display": format_amount(amount, currency)}


@router.get("/chain")
def chain_info(ctx: CtxDep, chain: ChainDep) -> dict[str, Any]:
    """Which chain settles payments: backend, treasury, mints, vaults and the RPC URL."""
    s = ctx.settings
    local_rpc = s.chain_backend is ChainBackend.local and not s.is_production and s.chain_serve_rpc
    return {
        "backend": chain.backend,
        "cluster": "localnet" if chain.backend == "local" else (s.chain_rpc_url or ""),
        "rpc_url": s.base_url.rstrip("/") + "/chain/rpc" if local_rpc else s.chain_rpc_url,
        "commitment": s.chain_commitment,
        "treasury": chain.treasury,
        "mints": {c.value: chain.mint_of(c) for c in Currency},
        "vaults": {c.value: chain.vault_of(c) for c in Currency},
        "decimals": tokens.DECIMALS,
        "faucet": chain.backend == "local" and not s.is_production,
    }


# ---------------------------------------------------------------- faucet


class FaucetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wallet: str | None = Field(
        default=None, description="address to mint to (default: your most recently linked wallet)"
    )
    currency: Literal["USDC", "CYX"] = "USDC"
    amount: Amount = Field(description="base units (6 decimals)", examples=[100_000_000])


@router.post("/chain/faucet", status_code=status.HTTP_201_CREATED)
def faucet(body: FaucetIn, session: SessionDep, user: CurrentUser, ctx: CtxDep) -> dict[str, Any]:
    """Dev chains only: mint test tokens to a wallet, which then deposits through the normal
    Solana Pay flow (the ledger is never credited directly)."""
    wallet = body.wallet or linked_wallet(session, user_id=user.id).address
    cur = Currency(body.currency)
    signature, held = treasury.dev_faucet(
        settings=ctx.settings, chain=ctx.chain, wallet=wallet, currency=cur, amount=body.amount
    )
    return {
        "signature": signature,
        "wallet": wallet,
        "token_account": ctx.chain.token_account_of(wallet, cur),
        "minted": _amount(body.amount, cur.value),
        "wallet_balance": _amount(held, cur.value),
    }


# ---------------------------------------------------------------- deposits


class DepositIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    currency: Literal["USDC", "CYX"] = "USDC"
    amount: Amount = Field(description="base units (6 decimals)", examples=[25_000_000])


def deposit_out(
    session: Session, row: Deposit, user: User, *, credits: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(row.id),
        "status": row.status,
        "requested": _amount(row.amount, row.currency),
        "credited": _amount(row.credited, row.currency),
        "pending": _amount(row.pending, row.currency),
        "url": dep.payment_url(row, username=user.username),
        "qr": f"/api/v1/deposits/{row.id}/qr.png",
        "reference": row.reference,
        "recipient": row.recipient,
        "vault": row.vault,
        "mint": row.mint,
        "memo": row.memo,
        "expires_at": row.expires_at.isoformat(),
        "created_at": row.created_at.isoformat(),
    }
    if credits:
        out["transactions"] = [
            {
                "signature": c.signature,
                "status": c.status,
                "slot": c.slot,
                "payer": c.payer,
                **_amount(c.amount, row.currency),
            }
            for c in dep.credits_of(session, row)
        ]
    return out


@router.post(
    "/deposits",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "a retry with the same Idempotency-Key: the first request"}},
)
def create_deposit(
    body: DepositIn,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    ctx: CtxDep,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """A Solana Pay transfer request into the platform vault: pay the `url` (or scan `qr`) with
    any Solana wallet; the balance is credited once the transfer reaches the commitment."""
    row, created = dep.create_deposit(
        session,
        settings=ctx.settings,
        chain=ctx.chain,
        user=user,
        currency=Currency(body.currency),
        amount=body.amount,
        idempotency_key=idempotency_key or str(uuid.uuid4()),
        now=ctx.clock.now(),
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return deposit_out(session, row, user, credits=True)


@router.get("/deposits")
def list_deposits(session: SessionDep, user: ReaderDep, paging: PageDep) -> dict[str, Any]:
    """Your deposit requests, newest first."""
    rows, total = dep.list_deposits(session, user=user, limit=paging.limit, offset=paging.offset)
    return {
        "items": [deposit_out(session, r, user) for r in rows],
        "total": total,
        "page": paging.page,
        "per_page": paging.per_page,
    }


def _my_deposit(session: Session, deposit_id: uuid.UUID, user: User) -> Deposit:
    row = session.scalar(select(Deposit).where(Deposit.id == deposit_id))
    if row is None or (row.user_id != user.id and user.role != "admin"):
        raise NotFound("deposit not found", code="deposit_not_found")
    return row


@router.get("/deposits/{deposit_id}")
def get_deposit(deposit_id: uuid.UUID, session: SessionDep, user: ReaderDep) -> dict[str, Any]:
    """One deposit request with the transactions credited to it."""
    return deposit_out(session, _my_deposit(session, deposit_id, user), user, credits=True)


@router.post("/deposits/{deposit_id}/scan")
def scan_deposit(
    deposit_id: uuid.UUID, session: SessionDep, user: CurrentUser, ctx: CtxDep
) -> dict[str, Any]:
    """Look for this request's payment on chain now (the watcher also does, every few seconds)."""
    row = session.scalar(
        select(Deposit)
        .where(Deposit.id == _my_deposit(session, deposit_id, user).id)
        .with_for_update()
    )
    assert row is not None
    dep.scan_deposit(
        session, settings=ctx.settings, chain=ctx.chain, deposit=row, now=ctx.clock.now()
    )
    return deposit_out(session, row, user, credits=True)


@router.get(
    "/deposits/{deposit_id}/qr.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def deposit_qr(deposit_id: uuid.UUID, session: SessionDep, user: ReaderDep) -> Response:
    """The request's Solana Pay URL as a QR code."""
    row = _my_deposit(session, deposit_id, user)
    png = solana_pay.qr_png(dep.payment_url(row, username=user.username))
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})


# ---------------------------------------------------------------- payouts


class PayoutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: Amount = Field(
        description="base units debited from the source account (at least the currency's "
        "payout minimum; a debt to the platform is repaid first, on top of it)"
    )
    currency: Literal["USDC", "CYX"] = "USDC"
    source: Literal["earnings", "balance", "node_earnings"] = "earnings"
    paid_in: Literal["USDC", "CYX"] | None = Field(
        default=None, description="CYX pays USDC earnings in CYX with a bonus (default: currency)"
    )
    kind: Literal["instant", "scheduled"] = "instant"
    wallet: str | None = Field(default=None, description="a linked wallet (default: the latest)")


def payout_out(row: Payout) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "status": row.status,
        "kind": row.kind,
        "source": row.source,
        "debited": _amount(row.amount, row.currency),
        "fee": _amount(row.fee, row.currency),
        "bonus": _amount(row.bonus, row.paid_currency),
        "paid": _amount(row.paid_amount, row.paid_currency),
        "debt_repaid": _amount(row.debt_repaid, row.currency),
        "wallet": row.wallet,
        "signature": row.signature,
        "attempts": row.attempts,
        "error": row.error,
        "created_at": row.created_at.isoformat(),
        "sent_at": row.sent_at.isoformat() if row.sent_at else None,
        "settled_at": row.settled_at.isoformat() if row.settled_at else None,
    }


@router.post(
    "/payouts",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "a retry with the same Idempotency-Key: the first payout"}},
)
def create_payout(
    body: PayoutIn,
    response: Response,
    session: SessionDep,
    user: CurrentUser,
    ctx: CtxDep,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Pay out to your linked wallet: the amount is held at once (pending) and sent on chain
    right after; it is final when the transfer is confirmed, and returned if it fails."""
    row, created = pay.request_payout(
        session,
        settings=ctx.settings,
        user=user,
        amount=body.amount,
        currency=Currency(body.currency),
        source=body.source,
        paid_in=Currency(body.paid_in) if body.paid_in else None,
        kind=body.kind,
        wallet=body.wallet,
        idempotency_key=idempotency_key or str(uuid.uuid4()),
        now=ctx.clock.now(),
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return payout_out(row)


@router.get("/payouts")
def list_payouts(session: SessionDep, user: ReaderDep, paging: PageDep) -> dict[str, Any]:
    """Your payouts, newest first, with their on-chain signatures."""
    rows, total = pay.list_payouts(session, user=user, limit=paging.limit, offset=paging.offset)
    return {
        "items": [payout_out(r) for r in rows],
        "total": total,
        "page": paging.page,
        "per_page": paging.per_page,
    }


@router.get("/payouts/quote")
def payout_quote(
    session: SessionDep,
    ctx: CtxDep,
    user: ReaderDep,
    amount: Annotated[
        int,
        Query(ge=1, le=MAX_AMOUNT, description="base units debited (digits only)"),
        WholeNumber,
    ],
    currency: Literal["USDC", "CYX"] = "USDC",
    paid_in: Literal["USDC", "CYX"] | None = None,
    kind: Literal["instant", "scheduled"] = "instant",
    source: Literal["earnings", "balance", "node_earnings"] = "earnings",
) -> dict[str, Any]:
    """What a payout would cost and pay (fee, CYX bonus), without making it; and what the
    source account can pay out: `available`, any `debt` to the platform in this currency
    (repaid first, so `withdrawable` is what is left), `debt_elsewhere` (a debt in another
    currency blocks payouts until repaid), `minimum`. The same rules as `POST /payouts`: an
    amount it would refuse for its size is refused here with the same code."""
    cur = Currency(currency)
    paid = Currency(paid_in) if paid_in else cur
    q = pay.quote(
        settings=ctx.settings, currency=cur, paid_in=paid, amount=amount, instant=kind == "instant"
    )
    room = pay.withdrawable(session, user_id=user.id, source=source, currency=cur)
    fits = not room["owed_elsewhere"] and amount <= room["withdrawable"]
    return {
        "debited": _amount(amount, cur.value),
        "fee": _amount(q["fee"], cur.value),
        "bonus": _amount(q["bonus"], paid.value),
        "paid": _amount(q["paid"], paid.value),
        "minimum": _amount(pay.payout_minimum(ctx.settings, cur), cur.value),
        "source": source,
        "available": _amount(room["available"], cur.value),
        "debt": _amount(room["owed"], cur.value),
        "debt_elsewhere": [_amount(v, c) for c, v in sorted(room["owed_elsewhere"].items())],
        "withdrawable": _amount(room["withdrawable"], cur.value),
        "debt_repaid": _amount(room["owed"] if fits else 0, cur.value),
        "fits": fits,
    }


@router.get("/payouts/settings")
def get_payout_settings(session: SessionDep, user: ReaderDep) -> dict[str, Any]:
    """How you are paid: currency (CYX earns a bonus), weekly free payouts, wallet."""
    prefs = pay.get_payout_settings(session, user_id=user.id)
    return {"paid_in": prefs.paid_in, "weekly": prefs.weekly, "wallet": prefs.wallet}


class PayoutSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paid_in: Literal["USDC", "CYX"] = "USDC"
    weekly: bool = False
    wallet: str | None = None


@router.put("/payouts/settings")
def put_payout_settings(
    body: PayoutSettingsIn, session: SessionDep, user: CurrentUser
) -> dict[str, Any]:
    """Set how you are paid."""
    prefs = pay.set_payout_settings(
        session, user=user, paid_in=Currency(body.paid_in), weekly=body.weekly, wallet=body.wallet
    )
    return {"paid_in": prefs.paid_in, "weekly": prefs.weekly, "wallet": prefs.wallet}


@router.get("/payouts/{payout_id}")
def get_payout(payout_id: uuid.UUID, session: SessionDep, user: ReaderDep) -> dict[str, Any]:
    row = session.scalar(select(Payout).where(Payout.id == payout_id))
    if row is None or (row.user_id != user.id and user.role != "admin"):
        raise NotFound("payout not found", code="payout_not_found")
    return payout_out(row)
