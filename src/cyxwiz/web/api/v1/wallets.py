"""/api/v1/wallets (link Solana wallets by Sign-In With Solana) and /api/v1/auth/siws (log in)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field

from cyxwiz.accounts import wallets
from cyxwiz.accounts.models import SignInNonce, Wallet
from cyxwiz.accounts.schemas import TokenOut
from cyxwiz.errors import PermissionDenied
from cyxwiz.web.deps import CtxDep, CurrentUser, PrincipalDep, ReaderDep, SessionDep

router = APIRouter(tags=["wallets"])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChallengeIn(Strict):
    address: str = Field(
        min_length=1, max_length=64, description="the wallet's base58 address (public key)"
    )


class ChallengeOut(BaseModel):
    address: str
    purpose: str = Field(description="link or login")
    nonce: str
    message: str = Field(description="sign these exact UTF-8 bytes with the wallet (signMessage)")
    issued_at: datetime
    expires_at: datetime


class SignedIn(Strict):
    message: str = Field(min_length=1, max_length=wallets.MAX_MESSAGE_CHARS)
    signature: str = Field(
        min_length=1, max_length=200, description="the ed25519 signature, base58 or base64"
    )


class LinkIn(SignedIn):
    label: str = Field(default="", max_length=wallets.MAX_LABEL_CHARS)


class WalletOut(BaseModel):
    address: str
    label: str
    linked_at: datetime
    unlinked_at: datetime | None = None


def _challenge_out(row: SignInNonce) -> ChallengeOut:
    return ChallengeOut(
        address=row.address,
        purpose=row.purpose,
        nonce=row.nonce,
        message=row.message,
        issued_at=row.created_at,
        expires_at=row.expires_at,
    )


def _wallet_out(w: Wallet) -> WalletOut:
    return WalletOut(
        address=w.address, label=w.label, linked_at=w.created_at, unlinked_at=w.unlinked_at
    )


def _login_token_only(principal: PrincipalDep) -> None:
    # Payouts go to linked wallets: a leaked API key must not be able to redirect them.
    if principal is not None and principal.via == "api_key":
        raise PermissionDenied(
            "API keys cannot link or unlink wallets; use a login token", code="forbidden"
        )


@router.post("/wallets/challenge", status_code=status.HTTP_201_CREATED)
def link_challenge(
    body: ChallengeIn, session: SessionDep, ctx: CtxDep, user: CurrentUser, principal: PrincipalDep
) -> ChallengeOut:
    """A one-time Sign-In With Solana message that links the wallet to your account once signed."""
    _login_token_only(principal)
    row = wallets.challenge(
        session,
        settings=ctx.settings,
        clock=ctx.clock,
        address=body.address,
        purpose="link",
        user=user,
    )
    return _challenge_out(row)


@router.post(
    "/wallets",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "already linked to you (nothing changed)"}},
)
def link(
    body: LinkIn,
    response: Response,
    session: SessionDep,
    ctx: CtxDep,
    user: CurrentUser,
    principal: PrincipalDep,
) -> WalletOut:
    """Link the wallet that signed your challenge (201; 200 if it was already linked to you)."""
    _login_token_only(principal)
    wallet, created = wallets.link_wallet(
        session,
        settings=ctx.settings,
        clock=ctx.clock,
        user=user,
        message=body.message,
        signature=body.signature,
        label=body.label,
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return _wallet_out(wallet)


@router.get("/wallets")
def list_wallets(session: SessionDep, user: ReaderDep) -> list[WalletOut]:
    """Your linked wallets, oldest link first."""
    return [_wallet_out(w) for w in wallets.list_wallets(session, user=user)]


@router.delete("/wallets/{address}")
def unlink(
    address: str, session: SessionDep, ctx: CtxDep, user: CurrentUser, principal: PrincipalDep
) -> WalletOut:
    """Unlink a wallet (payouts stop going to it; it may be linked again by signing anew)."""
    _login_token_only(principal)
    return _wallet_out(wallets.unlink_wallet(session, clock=ctx.clock, user=user, address=address))


@router.post("/auth/siws/challenge", status_code=status.HTTP_201_CREATED)
def login_challenge(body: ChallengeIn, session: SessionDep, ctx: CtxDep) -> ChallengeOut:
    """A one-time Sign-In With Solana message to log in with a linked wallet."""
    row = wallets.challenge(
        session, settings=ctx.settings, clock=ctx.clock, address=body.address, purpose="login"
    )
    return _challenge_out(row)


@router.post("/auth/siws/login")
def login(body: SignedIn, session: SessionDep, ctx: CtxDep) -> TokenOut:
    """Exchange a signed login challenge for a bearer access token, as password login does."""
    raw, token = wallets.login_with_wallet(
        session,
        settings=ctx.settings,
        clock=ctx.clock,
        message=body.message,
        signature=body.signature,
    )
    return TokenOut(access_token=raw, expires_at=token.expires_at)
