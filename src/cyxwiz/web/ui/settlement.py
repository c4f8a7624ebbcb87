"""The settlement pages of the web UI: linked Solana wallets (Sign-In With Solana, and on dev
chains a built-in browser wallet and test tokens), deposits by Solana Pay with a QR code and live
status, and payouts to a linked wallet with their on-chain signatures.

Every page works without JavaScript: a wallet can be linked by signing the shown message with
any wallet and pasting the signature, and a deposit's status is refreshed with "Check now". The
small script ``static/wallet.js`` adds what needs a wallet in the browser (signing the challenge,
paying a deposit with the dev wallet through ``/chain/rpc``) and polls the deposit status. Its
calls go to the UI routes below with the page's CSRF token, never to the bearer API: a session
cookie does not authorize state-changing API calls. The rules live in the services
(``accounts.wallets``, ``billing.deposits``, ``billing.payouts``); these handlers parse, call
and render.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from cyxwiz.accounts import wallets
from cyxwiz.accounts.models import SignInNonce, User
from cyxwiz.accounts.service import Principal
from cyxwiz.billing import deposits as dep
from cyxwiz.billing import flows, treasury
from cyxwiz.billing import payouts as pay
from cyxwiz.billing.models import Deposit, Payout
from cyxwiz.chain import tokens
from cyxwiz.config import ChainBackend, ConfigError, Env, Settings
from cyxwiz.errors import DomainError, InvalidInput, NotFound, PermissionDenied
from cyxwiz.ledger import service as ledger
from cyxwiz.money import Currency, format_amount, parse_amount, to_currency
from cyxwiz.web.api import chain_rpc
from cyxwiz.web.api.v1 import settlement as settlement_api
from cyxwiz.web.deps import AppContext, CtxDep, PrincipalDep, SessionDep
from cyxwiz.web.ui.billing import _form_key, decimal_text, new_key, percent, test_tokens_offered
from cyxwiz.web.ui.forms import (
    CsrfForm,
    UiActor,
    UiViewer,
    field,
    login_redirect,
    safe_next,
    see_other,
)
from cyxwiz.web.ui.render import page, set_flash

router = APIRouter()

TEST_TOKENS = 100 * 10**6  # what one "Get test tokens" button mints (100 USDC or CYX)
RECENT = 10  # deposit requests listed on /deposit
HISTORY = 50  # payouts listed on /payouts
SOURCE_LABELS = {
    "earnings": "Creator earnings",
    "node_earnings": "Node earnings",
    "balance": "Balance",
}
DEPOSIT_STATUS = {
    "open": "Waiting for payment",
    "partial": "Partly paid: waiting for the rest",
    "paid": "Paid",
    "expired": "Expired",
}
PAYOUT_STATUS = {
    "pending": "Queued",
    "signed": "Signed",
    "sent": "Sent, confirming",
    "confirmed": "Confirmed",
    "failed": "Failed: returned to you",
}


# ---------------------------------------------------------------- helpers


def dev_wallet_offered(settings: Settings) -> bool:
    """The built-in browser wallet exists only on a dev server settling on its local chain."""
    return settings.env == Env.dev and settings.chain_backend is ChainBackend.local


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _no_api_keys(principal: Principal | None) -> None:
    # As on the API: payouts go to linked wallets, so a leaked API key must not redirect them.
    if principal is not None and principal.via == "api_key":
        raise PermissionDenied(
            "API keys cannot link or unlink wallets; use a login token", code="forbidden"
        )


def _amount(text: str, currency: Currency) -> int:
    """An amount typed by a person ('25', '1,250.50', '10 USDC') in base units, > 0."""
    cleaned = text.strip().replace(",", "").removesuffix(currency.value).strip()
    if not cleaned:
        raise InvalidInput("enter an amount, for example 25.00", code="invalid_amount")
    amount = parse_amount(cleaned, currency)
    if amount <= 0:
        raise InvalidInput("the amount must be more than 0", code="invalid_amount")
    return amount


def _currency(value: str | None, default: Currency = Currency.USDC) -> Currency:
    try:
        return to_currency(value or default.value)
    except InvalidInput:
        return default


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def explorer_url(settings: Settings, signature: str) -> str | None:
    """A public explorer link for a signature on a public cluster (none for dev chains)."""
    if settings.chain_backend is ChainBackend.local:
        return None
    cluster = wallets.chain_id(settings)
    if cluster == "localnet":
        return None
    suffix = "" if cluster == "mainnet" else f"?cluster={cluster}"
    return f"https://explorer.solana.com/tx/{signature}{suffix}"


def _chain_balances(ctx: AppContext, address: str) -> dict[str, str] | None:
    """A wallet's token (and SOL) balances on chain; None when the chain cannot be read."""
    try:
        chain = ctx.chain
        out = {
            cur.value: format_amount(chain.token_balance(chain.token_account_of(address, cur)), cur)
            for cur in Currency
        }
        lamports = chain.sol_balance(address)
    except (DomainError, ConfigError):  # the page still renders when the chain cannot be read
        return None
    whole, frac = divmod(lamports, 10**9)
    out["SOL"] = f"{whole:,}.{f'{frac:09d}'.rstrip('0').ljust(2, '0')} SOL"
    return out


# ---------------------------------------------------------------- wallets


def _wallet_page(
    request: Request,
    ctx: AppContext,
    session: Session,
    user: User,
    *,
    challenge: SignInNonce | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    linked = wallets.list_wallets(session, user=user)
    rows = [
        {
            "address": w.address,
            "label": w.label,
            "linked_at": w.created_at,
            "balances": _chain_balances(ctx, w.address),
        }
        for w in reversed(linked)  # the latest link first: payouts default to it
    ]
    return page(
        request,
        "settlement/wallet.html",
        {
            "wallets": rows,
            "linked_addresses": [w.address for w in linked],
            "dev_wallet": dev_wallet_offered(ctx.settings),
            "test_tokens": test_tokens_offered(ctx.settings),
            "test_amount": f"{TEST_TOKENS // 10**6:,}",
            "currencies": [c.value for c in Currency],
            "cluster": wallets.chain_id(ctx.settings),
            "challenge": challenge,
            "error": error,
        },
        status=status,
    )


@router.get("/wallet")
def wallet_page(request: Request, session: SessionDep, viewer: UiViewer, ctx: CtxDep) -> Response:
    """Your linked wallets with their on-chain balances, and ways to connect one."""
    if viewer is None:
        return login_redirect(request)
    return _wallet_page(request, ctx, session, viewer)


@router.post("/wallet/challenge")
def wallet_challenge(
    request: Request,
    form: CsrfForm,
    session: SessionDep,
    actor: UiActor,
    principal: PrincipalDep,
    ctx: CtxDep,
) -> Response:
    """A one-time Sign-In With Solana message for linking ``address``: JSON for the page's
    script, else the wallet page showing the message to sign and a field for the signature."""
    if actor is None:
        return login_redirect(request, "/wallet")
    _no_api_keys(principal)
    try:
        row = wallets.challenge(
            session,
            settings=ctx.settings,
            clock=ctx.clock,
            address=field(form, "address"),
            purpose="link",
            user=actor,
        )
    except DomainError as exc:
        if _wants_json(request):
            raise
        session.rollback()
        return _wallet_page(request, ctx, session, actor, error=exc.detail, status=exc.status)
    if _wants_json(request):
        return JSONResponse(
            {
                "address": row.address,
                "message": row.message,
                "nonce": row.nonce,
                "expires_at": row.expires_at.isoformat(),
            },
            status_code=201,
        )
    return _wallet_page(request, ctx, session, actor, challenge=row)


@router.post("/wallet/link")
def wallet_link(
    request: Request,
    form: CsrfForm,
    session: SessionDep,
    actor: UiActor,
    principal: PrincipalDep,
    ctx: CtxDep,
) -> Response:
    """Link the wallet that signed a challenge (the signature in base58 or base64)."""
    if actor is None:
        return login_redirect(request, "/wallet")
    _no_api_keys(principal)
    try:
        wallet, created = wallets.link_wallet(
            session,
            settings=ctx.settings,
            clock=ctx.clock,
            user=actor,
            message=field(form, "message").replace("\r\n", "\n"),
            signature=field(form, "signature"),
            label=field(form, "label"),
        )
    except DomainError as exc:
        if _wants_json(request):
            raise
        session.rollback()
        return _wallet_page(request, ctx, session, actor, error=exc.detail, status=exc.status)
    text = (
        f"Linked wallet {wallet.address}: payouts can go to it."
        if created
        else f"Wallet {wallet.address} was already linked to your account."
    )
    response: Response
    if _wants_json(request):
        response = JSONResponse(
            {"address": wallet.address, "linked": created}, status_code=201 if created else 200
        )
    else:
        response = see_other("/wallet")
    set_flash(response, text)
    return response


@router.post("/wallet/unlink")
def wallet_unlink(
    request: Request,
    form: CsrfForm,
    session: SessionDep,
    actor: UiActor,
    principal: PrincipalDep,
    ctx: CtxDep,
) -> Response:
    """Unlink one of your wallets (payouts stop going to it)."""
    if actor is None:
        return login_redirect(request, "/wallet")
    _no_api_keys(principal)
    wallet = wallets.unlink_wallet(
        session, clock=ctx.clock, user=actor, address=field(form, "address")
    )
    response = see_other("/wallet")
    set_flash(response, f"Unlinked wallet {wallet.address}.")
    return response


@router.post("/wallet/faucet")
def wallet_faucet(
    request: Request, form: CsrfForm, session: SessionDep, actor: UiActor, ctx: CtxDep
) -> Response:
    """Dev chains only: mint test tokens to one of your linked wallets (the API's faucet), which
    then pays a deposit request like any wallet; the ledger is never credited directly."""
    if actor is None:
        return login_redirect(request, "/wallet")
    try:
        cur = to_currency(field(form, "currency") or "USDC")
        wallet = wallets.linked_wallet(session, actor.id, field(form, "wallet") or None)
        _, held = treasury.dev_faucet(
            settings=ctx.settings,
            chain=ctx.chain,
            wallet=wallet.address,
            currency=cur,
            amount=TEST_TOKENS,
        )
    except DomainError as exc:
        session.rollback()
        return _wallet_page(request, ctx, session, actor, error=exc.detail, status=exc.status)
    response = see_other("/wallet")
    set_flash(
        response,
        f"Minted {format_amount(TEST_TOKENS, cur)} of test tokens to {wallet.address}: it now "
        f"holds {format_amount(held, cur)}. Deposit them to your balance from Add funds.",
    )
    return response


# ---------------------------------------------------------------- deposits


def _deposit_values(form: Mapping[str, str] | None = None) -> dict[str, str]:
    values = {"amount": "100.00", "currency": "USDC", "next": ""}
    values.update({k: v for k, v in (form or {}).items() if k in values})
    return values


def _deposit_form_page(
    request: Request,
    ctx: AppContext,
    session: Session,
    user: User,
    *,
    values: dict[str, str],
    error: str | None = None,
    status: int = 200,
) -> Response:
    rows, total = dep.list_deposits(session, user=user, limit=RECENT, offset=0)
    return page(
        request,
        "settlement/deposit.html",
        {
            "values": values,
            "currencies": [c.value for c in Currency],
            "idempotency_key": new_key(),
            "recent": rows,
            "total": total,
            "status_labels": DEPOSIT_STATUS,
            "test_tokens": test_tokens_offered(ctx.settings),
            "balances": {
                cur: v["balance"] for cur, v in flows.balances(session, user=user).items()
            },
            "error": error,
        },
        status=status,
    )


@router.get("/deposit")
def deposit_form(
    request: Request,
    session: SessionDep,
    viewer: UiViewer,
    ctx: CtxDep,
    currency: str = "USDC",
    next: str = "",
) -> Response:
    """Ask for a deposit: how much, in which currency."""
    if viewer is None:
        return login_redirect(request)
    values = _deposit_values({"currency": _currency(currency).value, "next": safe_next(next, "")})
    return _deposit_form_page(request, ctx, session, viewer, values=values)


@router.post("/deposit")
def create_deposit(
    request: Request, form: CsrfForm, session: SessionDep, actor: UiActor, ctx: CtxDep
) -> Response:
    """Create the Solana Pay transfer request and show it (once per rendered form)."""
    if actor is None:
        return login_redirect(request, "/deposit")
    values = _deposit_values({k: field(form, k) for k in ("amount", "currency", "next")})
    values["next"] = safe_next(values["next"], "")
    try:
        cur = to_currency(values["currency"])
        row, _ = dep.create_deposit(
            session,
            settings=ctx.settings,
            chain=ctx.chain,
            user=actor,
            currency=cur,
            amount=_amount(values["amount"], cur),
            idempotency_key=_form_key(field(form, "idempotency_key")),
            now=ctx.clock.now(),
        )
    except DomainError as exc:
        session.rollback()
        return _deposit_form_page(
            request, ctx, session, actor, values=values, error=exc.detail, status=exc.status
        )
    suffix = f"?next={quote(values['next'], safe='/')}" if values["next"] else ""
    return see_other(f"/deposit/{row.id}{suffix}")


def _my_deposit(session: Session, deposit_id: str, user: User, *, lock: bool = False) -> Deposit:
    found = _uuid(deposit_id)
    q = select(Deposit).where(Deposit.id == found, Deposit.user_id == user.id)
    row = session.scalar(q.with_for_update() if lock else q) if found else None
    if row is None:
        raise NotFound("no such deposit request", code="deposit_not_found")
    return row


def deposit_json(session: Session, row: Deposit, user: User) -> dict[str, Any]:
    """The API's view of a deposit (with its credited transactions) plus a status label."""
    out = settlement_api.deposit_out(session, row, user, credits=True)
    out["status_label"] = DEPOSIT_STATUS.get(row.status, row.status)
    out["final"] = row.status in ("paid", "expired") and row.pending == 0
    return out


def _dev_pay(ctx: AppContext, session: Session, user: User, row: Deposit) -> dict[str, Any] | None:
    """What the 'Pay with dev wallet' button needs: the RPC endpoint, and for each linked
    wallet its token account for this mint (the server computes the PDA; the page's script
    only builds, signs and sends the transfer)."""
    if not chain_rpc.serves_rpc(ctx.settings) or row.status not in ("open", "partial"):
        return None
    linked = wallets.list_wallets(session, user=user)
    return {
        "rpc": "/chain/rpc",
        "vault": row.vault,
        "decimals": tokens.DECIMALS,
        "atas": {w.address: tokens.ata(w.address, row.mint) for w in linked},
    }


@router.get("/deposit/{deposit_id}")
def deposit_page(
    request: Request,
    deposit_id: str,
    session: SessionDep,
    viewer: UiViewer,
    ctx: CtxDep,
    next: str = "",
) -> Response:
    """A deposit request: QR code, payment link, amount, expiry and live status."""
    if viewer is None:
        return login_redirect(request)
    row = _my_deposit(session, deposit_id, viewer)
    out = deposit_json(session, row, viewer)
    return page(
        request,
        "settlement/deposit_detail.html",
        {
            "deposit": row,
            "out": out,
            "open": row.status in ("open", "partial"),
            "expires": row.expires_at.astimezone(UTC).strftime("%b %d, %H:%M UTC"),
            "dev_pay": _dev_pay(ctx, session, viewer, row),
            "test_tokens": test_tokens_offered(ctx.settings),
            "next": safe_next(next, ""),
        },
    )


@router.post("/deposit/{deposit_id}/scan")
def deposit_scan(
    request: Request,
    deposit_id: str,
    form: CsrfForm,
    session: SessionDep,
    actor: UiActor,
    ctx: CtxDep,
) -> Response:
    """Look for the payment on chain now and credit it (what the watcher does every few
    seconds): JSON for the page's live status, else back to the page with a message."""
    if actor is None:
        return login_redirect(request, f"/deposit/{deposit_id}")
    row = _my_deposit(session, deposit_id, actor, lock=True)
    before = row.credited + row.pending
    dep.scan_deposit(
        session, settings=ctx.settings, chain=ctx.chain, deposit=row, now=ctx.clock.now()
    )
    if _wants_json(request):
        return JSONResponse(deposit_json(session, row, actor))
    arrived = row.credited + row.pending - before
    response = see_other(f"/deposit/{row.id}")
    if arrived > 0:
        set_flash(response, f"Received {format_amount(arrived, row.currency)}: {_credit_note(row)}")
    elif row.status == "paid":
        set_flash(response, "This deposit is paid and credited to your balance.", "info")
    else:
        set_flash(response, "No payment found yet; it shows up here once it lands.", "info")
    return response


def _credit_note(row: Deposit) -> str:
    credited = format_amount(row.credited, row.currency)
    if row.pending:
        return f"{credited} credited, {format_amount(row.pending, row.currency)} confirming."
    return f"{credited} credited to your balance."


# ---------------------------------------------------------------- payouts


def _source_balances(session: Session, user: User) -> dict[str, dict[str, dict[str, Any]]]:
    """What each payout source holds per currency (available, on hold)."""
    both = flows.balances(session, user=user)
    out: dict[str, dict[str, dict[str, Any]]] = {
        "earnings": {cur: v["earnings"] for cur, v in both.items()},
        "node_earnings": {
            cur.value: ledger.balance_of_code(
                session, flows.node_earnings_code(user.id, cur), cur
            ).as_dict()
            for cur in Currency
        },
        "balance": {cur: v["balance"] for cur, v in both.items()},
    }
    return out


def _payout_values(
    session: Session, user: User, form: Mapping[str, str] | None = None
) -> dict[str, str]:
    prefs = pay.get_payout_settings(session, user_id=user.id)
    values = {
        "amount": "",
        "currency": "USDC",
        "source": "earnings",
        "paid_in": prefs.paid_in,
        "kind": "instant",
        "wallet": prefs.wallet or "",
        "idempotency_key": "",
    }
    values.update({k: v for k, v in (form or {}).items() if k in values and v})
    if not values["idempotency_key"]:
        values["idempotency_key"] = new_key()
    return values


def _quote(
    ctx: AppContext,
    values: Mapping[str, str],
    *,
    session: Session | None = None,
    user: User | None = None,
) -> dict[str, str]:
    """The API's quote for the form's values (same rules, same refusals); with the user, also
    what a debt to the platform leaves withdrawable from the chosen source."""
    cur = to_currency(values["currency"])
    paid = to_currency(values["paid_in"] or values["currency"])
    amount = _amount(values["amount"], cur)
    q = pay.quote(
        settings=ctx.settings,
        currency=cur,
        paid_in=paid,
        amount=amount,
        instant=values["kind"] == "instant",
    )
    out = {
        "debited": format_amount(amount, cur),
        "fee": format_amount(q["fee"], cur),
        "bonus": format_amount(q["bonus"], paid) if q["bonus"] else "",
        "paid": format_amount(q["paid"], paid),
        "debt": "",
        "withdrawable": "",
    }
    if session is not None and user is not None and values.get("source") in pay.SOURCES:
        room = pay.withdrawable(session, user_id=user.id, source=values["source"], currency=cur)
        if room["owed"] or room["owed_elsewhere"]:
            owed = [format_amount(room["owed"], cur)] if room["owed"] else []
            owed += [format_amount(v, c) for c, v in sorted(room["owed_elsewhere"].items())]
            out["debt"] = ", ".join(owed)
            out["withdrawable"] = format_amount(room["withdrawable"], cur)
    return out


def _payouts_page(
    request: Request,
    ctx: AppContext,
    session: Session,
    user: User,
    *,
    values: dict[str, str] | None = None,
    quote: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    s = ctx.settings
    history, total = pay.list_payouts(session, user=user, limit=HISTORY, offset=0)
    prefs = pay.get_payout_settings(session, user_id=user.id)
    linked = list(reversed(wallets.list_wallets(session, user=user)))
    sources = _source_balances(session, user)
    earnings_usdc = int(sources["earnings"]["USDC"]["available"])
    owed = pay.owed_by_currency(pay.open_debts(session, user_id=user.id))
    example = None
    if earnings_usdc >= s.payout_minimum_usdc and not owed:
        # what paying out all available USDC earnings would give, both ways
        example = {
            "amount": format_amount(earnings_usdc, Currency.USDC),
            "usdc": _quote(
                ctx,
                {
                    "currency": "USDC",
                    "paid_in": "USDC",
                    "kind": "instant",
                    "amount": decimal_text(earnings_usdc),
                },
            ),
            "cyx": _quote(
                ctx,
                {
                    "currency": "USDC",
                    "paid_in": "CYX",
                    "kind": "instant",
                    "amount": decimal_text(earnings_usdc),
                },
            ),
        }
    return page(
        request,
        "settlement/payouts.html",
        {
            "sources": sources,
            "source_labels": SOURCE_LABELS,
            "currencies": [c.value for c in Currency],
            "wallets": linked,
            "values": values or _payout_values(session, user),
            "quote": quote,
            "example": example,
            "history": history,
            "total": total,
            "status_labels": PAYOUT_STATUS,
            "prefs": prefs,
            "fee_pct": percent(s.payout_instant_fee_bps),
            "bonus_pct": percent(s.cyx_payout_bonus_bps),
            "cyx_price": s.cyx_price_usdc,
            "weekly_minimum": format_amount(s.payout_weekly_minimum, Currency.USDC),
            "minimums": ", ".join(format_amount(pay.payout_minimum(s, c), c) for c in Currency),
            "debts": [format_amount(v, c) for c, v in sorted(owed.items())],
            "error": error,
        },
        status=status,
    )


@router.get("/payouts")
def payouts_page(request: Request, session: SessionDep, viewer: UiViewer, ctx: CtxDep) -> Response:
    """What you can pay out, the payout form and settings, and your payout history."""
    if viewer is None:
        return login_redirect(request)
    return _payouts_page(request, ctx, session, viewer)


def _payout_form(form: CsrfForm) -> dict[str, str]:
    return {
        k: field(form, k)
        for k in ("amount", "currency", "source", "paid_in", "kind", "wallet", "idempotency_key")
    }


@router.post("/payouts/quote")
def payout_quote(
    request: Request, form: CsrfForm, session: SessionDep, actor: UiActor, ctx: CtxDep
) -> Response:
    """The payout form again with what it would cost and pay (fee, CYX bonus); moves nothing."""
    if actor is None:
        return login_redirect(request, "/payouts")
    values = _payout_values(session, actor, _payout_form(form))
    try:
        quote = _quote(ctx, values, session=session, user=actor)
    except DomainError as exc:
        return _payouts_page(
            request, ctx, session, actor, values=values, error=exc.detail, status=exc.status
        )
    return _payouts_page(request, ctx, session, actor, values=values, quote=quote)


@router.post("/payouts")
def request_payout(
    request: Request, form: CsrfForm, session: SessionDep, actor: UiActor, ctx: CtxDep
) -> Response:
    """Pay out to a linked wallet: held at once, sent on chain right after (once per form)."""
    if actor is None:
        return login_redirect(request, "/payouts")
    values = _payout_values(session, actor, _payout_form(form))
    try:
        cur = to_currency(values["currency"])
        row, created = pay.request_payout(
            session,
            settings=ctx.settings,
            user=actor,
            amount=_amount(values["amount"], cur),
            currency=cur,
            source=values["source"],
            paid_in=to_currency(values["paid_in"]) if values["paid_in"] else None,
            kind=values["kind"],
            wallet=values["wallet"] or None,
            idempotency_key=_form_key(field(form, "idempotency_key")),
            now=ctx.clock.now(),
        )
    except DomainError as exc:
        session.rollback()
        message = exc.detail
        if exc.code == "insufficient_funds":
            label = SOURCE_LABELS.get(values["source"], "account").lower()
            message = f"this is more than your {label} available to pay out ({exc.detail})"
        return _payouts_page(
            request, ctx, session, actor, values=values, error=message, status=exc.status
        )
    response = see_other(f"/payouts#payout-{row.id}")
    if created:
        when = "now" if row.kind == "instant" else "with the weekly run"
        set_flash(
            response,
            f"Payout requested: {format_amount(row.paid_amount, row.paid_currency)} goes to "
            f"{row.wallet} {when}; {format_amount(row.amount, row.currency)} is held meanwhile.",
        )
    else:
        set_flash(response, "This payout was already requested; it is paid once.", "info")
    return response


@router.post("/payouts/settings")
def payout_settings(
    request: Request, form: CsrfForm, session: SessionDep, actor: UiActor, ctx: CtxDep
) -> Response:
    """How you are paid: USDC or CYX (with the bonus), weekly free payouts, which wallet."""
    if actor is None:
        return login_redirect(request, "/payouts")
    try:
        pay.set_payout_settings(
            session,
            user=actor,
            paid_in=to_currency(field(form, "paid_in") or "USDC"),
            weekly=field(form, "weekly") in ("on", "true", "1"),
            wallet=field(form, "wallet") or None,
        )
    except DomainError as exc:
        session.rollback()
        return _payouts_page(request, ctx, session, actor, error=exc.detail, status=exc.status)
    response = see_other("/payouts#payout-settings")
    set_flash(response, "Payout settings saved.")
    return response


def _chain_facts(ctx: AppContext, signature: str) -> dict[str, Any] | None:
    """What the chain says about a signature (status, slot, time, memos), if it can be read."""
    try:
        chain = ctx.chain
        status = chain.statuses([signature])[0]
        tx = chain.transaction(signature)
    except DomainError:
        return None
    return {
        "status": status or "not found",
        "slot": tx.slot if tx else None,
        "block_time": datetime.fromtimestamp(tx.block_time, UTC) if tx and tx.block_time else None,
        "memos": list(tx.memos) if tx else [],
    }


@router.get("/payouts/{payout_id}")
def payout_page(
    request: Request, payout_id: str, session: SessionDep, viewer: UiViewer, ctx: CtxDep
) -> Response:
    """One payout with its full on-chain signature."""
    if viewer is None:
        return login_redirect(request)
    found = _uuid(payout_id)
    row = (
        session.scalar(select(Payout).where(Payout.id == found, Payout.user_id == viewer.id))
        if found
        else None
    )
    if row is None:
        raise NotFound("no such payout", code="payout_not_found")
    return page(
        request,
        "settlement/payout_detail.html",
        {
            "payout": row,
            "status_label": PAYOUT_STATUS.get(row.status, row.status),
            "source_label": SOURCE_LABELS.get(row.source, row.source),
            "chain": _chain_facts(ctx, row.signature) if row.signature else None,
            "explorer": explorer_url(ctx.settings, row.signature) if row.signature else None,
            "cluster": wallets.chain_id(ctx.settings),
        },
    )
