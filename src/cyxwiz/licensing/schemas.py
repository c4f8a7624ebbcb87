"""Offers document and license shapes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictInt,
    model_serializer,
)

from cyxwiz.money import format_amount


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Price(Strict):
    amount: StrictInt = Field(ge=1, le=10**13, description="integer minor units (6 decimals)")
    currency: Literal["USDC", "CYX"] = "USDC"


class PriceOut(Price):
    display: str

    @classmethod
    def of(cls, amount: int, currency: str) -> PriceOut:
        return cls(amount=amount, currency=currency, display=format_amount(amount, currency))


class OffersDocument(Strict):
    """A model's pricing. Empty = free. Prices are set in USDC; buyers may pay in CYX."""

    one_time: Price | None = Field(
        default=None, examples=[{"amount": 49000000, "currency": "USDC"}]
    )
    per_1k_requests: Price | None = Field(
        default=None,
        description="hosted inference: the price of 1,000 calls (each successful call = 1 unit)",
        examples=[{"amount": 1000000, "currency": "USDC"}],
    )
    per_1k_tokens: Price | None = Field(
        default=None,
        description="hosted inference of text models: the price of 1,000 input tokens "
        "(a string's token count is ceil(UTF-8 bytes / 4), at least 1; see docs/metering.md)",
        examples=[{"amount": 20000, "currency": "USDC"}],
    )


PER_USE_FIELDS = ("per_1k_requests", "per_1k_tokens")


class OffersOut(BaseModel):
    one_time: PriceOut | None = None
    one_time_cyx: PriceOut | None = Field(
        default=None, description="what paying in CYX costs (15% off the USDC price)"
    )
    free: bool = Field(description="no one-time price: the files download without a license")
    per_1k_requests: PriceOut | None = Field(
        default=None, description="hosted inference price per 1,000 calls (absent: none)"
    )
    per_1k_tokens: PriceOut | None = Field(
        default=None, description="hosted inference price per 1,000 input tokens (absent: none)"
    )

    @model_serializer(mode="wrap")
    def _omit_absent_per_use(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Per-use prices are left out when not set, so the document stays what it was for
        # models without hosted inference (older clients compare it as a whole).
        data: dict[str, Any] = handler(self)
        for name in PER_USE_FIELDS:
            if data.get(name) is None:
                data.pop(name, None)
        return data


class LicenseOut(BaseModel):
    id: uuid.UUID
    model: str
    buyer: str
    kind: str
    scope: str
    status: Literal["active", "refunded", "revoked"]
    price: PriceOut
    created_at: datetime
    expires_at: datetime | None
    refundable_until: datetime | None
    refundable: bool
    downloads: int
    key: str | None = Field(default=None, description="the signed license key (offline-verifiable)")


class VerifyIn(Strict):
    key: str = Field(min_length=10, max_length=2000)


class VerifyOut(BaseModel):
    valid: bool
    status: str | None = None
    license_id: str | None = None
    model: str | None = None
    buyer: str | None = None
    scope: str | None = None
    expires_at: int | None = None
    reason: str | None = None
