"""Money: currencies, integer minor units, parsing/formatting at the edges, exact splits.

No floats anywhere: amounts are ``int`` minor units (USDC and CYX have 6 decimals).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation, localcontext
from enum import StrEnum

from cyxwiz.errors import InvalidInput

BPS = 10_000
# The largest amount (minor units) anything reads: 2**53 - 1 is exact in every JSON client and
# leaves a signed 64-bit column room for sums (9,007,199,254.740991 units of a 6-decimal coin).
MAX_AMOUNT = 2**53 - 1


class Currency(StrEnum):
    USDC = "USDC"
    CYX = "CYX"


DECIMALS: dict[Currency, int] = {Currency.USDC: 6, Currency.CYX: 6}


def to_currency(value: str) -> Currency:
    try:
        return Currency(value.upper())
    except ValueError:
        raise InvalidInput(
            f"unknown currency {value!r}; use one of {[c.value for c in Currency]}",
            code="invalid_currency",
        ) from None


def parse_amount(text: str, currency: Currency) -> int:
    """'49.5' USDC -> 49_500_000; refuses more decimals than the currency has, negatives, and
    anything above ``MAX_AMOUNT`` (checked before any big integer is built)."""
    if len(text) > 64:
        raise InvalidInput("an amount is at most 64 characters", code="invalid_amount")
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        raise InvalidInput(f"{text!r} is not a number", code="invalid_amount") from None
    if not value.is_finite() or value < 0:
        raise InvalidInput(f"{text!r} is not a non-negative amount", code="invalid_amount")
    largest = Decimal(MAX_AMOUNT).scaleb(-DECIMALS[currency])
    if value > largest:
        raise InvalidInput(
            f"{text!r} is too large (at most {format_amount(MAX_AMOUNT, currency)})",
            code="invalid_amount",
        )
    with localcontext() as exact:
        exact.prec = 100  # 64 characters hold fewer digits: every step below is exact
        scaled = value.scaleb(DECIMALS[currency])
        if scaled != scaled.to_integral_value() or (value and scaled < 1):
            raise InvalidInput(
                f"{text!r} has more than {DECIMALS[currency]} decimals", code="invalid_amount"
            )
        return int(scaled)


def format_amount(amount: int, currency: Currency | str) -> str:
    """49_500_000 USDC -> '49.50 USDC' (at least 2 decimals, trailing zeros trimmed)."""
    cur = Currency(currency)
    d = DECIMALS[cur]
    sign = "-" if amount < 0 else ""
    whole, frac = divmod(abs(amount), 10**d)
    frac_s = f"{frac:0{d}d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole:,}.{frac_s} {cur.value}"


def bps_of(amount: int, bps: int) -> int:
    """floor(amount × bps / 10000) — the fee rule."""
    if amount < 0 or not 0 <= bps <= BPS:
        raise ValueError("amount must be ≥ 0 and bps within 0..10000")
    return amount * bps // BPS


def allocate(amount: int, weights: Sequence[int]) -> list[int]:
    """Split ``amount`` by integer ``weights`` so the parts sum exactly to ``amount``.

    Each part gets floor(amount × w / Σw); the remainder goes one unit at a time to the parts
    with the largest fractional remainders, ties broken by position (earlier first) — a
    deterministic largest-remainder rule.
    """
    if amount < 0 or not weights or any(w < 0 for w in weights) or sum(weights) == 0:
        raise ValueError("allocate needs amount ≥ 0 and non-negative weights with a positive sum")
    total = sum(weights)
    parts = [amount * w // total for w in weights]
    remainders = [(amount * w % total, -i) for i, w in enumerate(weights)]
    left = amount - sum(parts)
    for _rem, neg_i in sorted(remainders, reverse=True)[:left]:
        parts[-neg_i] += 1
    return parts
