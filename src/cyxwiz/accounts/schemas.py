"""Request and response shapes for accounts."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RegisterIn(Strict):
    username: str = Field(min_length=1, max_length=64, examples=["ada"])
    email: str = Field(min_length=3, max_length=254, examples=["ada@example.com"])
    password: str = Field(min_length=1, max_length=256, examples=["correct horse battery"])
    display_name: str = Field(default="", max_length=100)


class LoginIn(Strict):
    username: str = Field(min_length=1, max_length=254, description="username")
    password: str = Field(min_length=1, max_length=256)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (a scheme name, not a secret)
    expires_at: datetime


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    username: str
    display_name: str
    bio: str
    created_at: datetime


class MeOut(UserOut):
    email: str
    role: str
    auth: str = Field(description="how this request authenticated: access, session or api_key")
    scopes: list[str] | None = None


class ApiKeyIn(Strict):
    name: str = Field(min_length=1, max_length=100, examples=["ci deploy"])
    scopes: list[str] = Field(default_factory=lambda: ["read"], examples=[["read", "inference"]])
    expires_at: datetime | None = None


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="the secret key; shown only in this response")
