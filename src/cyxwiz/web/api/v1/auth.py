"""/api/v1/auth, /api/v1/me and /api/v1/api-keys."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request, status

from cyxwiz.accounts import service as accounts
from cyxwiz.accounts.schemas import (
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    LoginIn,
    MeOut,
    RegisterIn,
    TokenOut,
    UserOut,
)
from cyxwiz.errors import DomainError, PermissionDenied
from cyxwiz.web.deps import (
    ClientIpDep,
    CurrentUser,
    PrincipalDep,
    ReaderDep,
    SessionDep,
    SettingsDep,
    ThrottleDep,
)
from cyxwiz.web.openapi import problem_responses

router = APIRouter(tags=["accounts"])


@router.post(
    "/auth/register",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    responses=problem_responses(409, 422, 429),
)
def register(
    body: RegisterIn, session: SessionDep, throttle: ThrottleDep, ip: ClientIpDep
) -> UserOut:
    """Create an account. Usernames: 2-39 chars of a-z, 0-9 and hyphens. Passwords: 8-256
    characters, no control characters, not the username or email, not a common password.
    Emails are not unique (nothing tells whether an address has an account). Accounts per
    client IP are throttled (429 ``too_many_attempts`` with ``Retry-After``)."""
    key = throttle.register_attempt(ip=ip)
    try:
        user = accounts.register(
            session,
            username=body.username,
            email=body.email,
            password=body.password,
            display_name=body.display_name,
        )
    except DomainError:
        throttle.register_failed(key)
        raise
    return UserOut.model_validate(user)


@router.post("/auth/login", response_model=TokenOut, responses=problem_responses(401, 422, 429))
def login(
    body: LoginIn,
    session: SessionDep,
    settings: SettingsDep,
    throttle: ThrottleDep,
    ip: ClientIpDep,
) -> TokenOut:
    """Exchange username and password for a bearer access token. Failed attempts are throttled
    per IP, per account and per account+IP (429 ``too_many_attempts`` with ``Retry-After``)."""
    attempt = throttle.login_attempt(ip=ip, login=body.username)
    user = accounts.authenticate(session, login=body.username, password=body.password)
    throttle.login_succeeded(attempt)
    raw, token = accounts.issue_token(
        session, user=user, kind="access", ttl_seconds=settings.access_token_ttl_seconds
    )
    return TokenOut(access_token=raw, expires_at=token.expires_at)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, session: SessionDep, user: CurrentUser) -> None:
    """Revoke the access token used for this request."""
    header = request.headers.get("authorization", "")
    accounts.revoke_token(session, raw=header.partition(" ")[2].strip())


@router.get("/me", response_model=MeOut)
def me(principal: PrincipalDep, user: ReaderDep) -> MeOut:
    """The authenticated user, with how the request authenticated."""
    assert principal is not None
    return MeOut(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        bio=user.bio,
        created_at=user.created_at,
        email=user.email,
        role=user.role,
        auth=principal.via,
        scopes=sorted(principal.scopes) if principal.scopes is not None else None,
    )


def _no_api_key(principal: PrincipalDep) -> None:
    if principal is not None and principal.via == "api_key":
        raise PermissionDenied(
            "API keys cannot manage API keys; use a login token", code="forbidden"
        )


@router.post("/api-keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
def create_api_key(
    body: ApiKeyIn, session: SessionDep, user: CurrentUser, principal: PrincipalDep
) -> ApiKeyCreated:
    """Create a scoped API key (scopes: read, write, inference). The key is shown only once."""
    _no_api_key(principal)
    raw, key = accounts.create_api_key(
        session, user=user, name=body.name, scopes=body.scopes, expires_at=body.expires_at
    )
    return ApiKeyCreated(**ApiKeyOut.model_validate(key).model_dump(), key=raw)


@router.get("/api-keys", response_model=list[ApiKeyOut])
def list_api_keys(
    session: SessionDep, user: CurrentUser, principal: PrincipalDep
) -> list[ApiKeyOut]:
    """Your API keys (never the secret), newest first."""
    _no_api_key(principal)
    return [ApiKeyOut.model_validate(k) for k in accounts.list_api_keys(session, user=user)]


@router.delete("/api-keys/{key_id}", response_model=ApiKeyOut)
def revoke_api_key(
    key_id: uuid.UUID, session: SessionDep, user: CurrentUser, principal: PrincipalDep
) -> ApiKeyOut:
    """Revoke a key at once; later calls with it get 401."""
    _no_api_key(principal)
    return ApiKeyOut.model_validate(accounts.revoke_api_key(session, user=user, key_id=key_id))
