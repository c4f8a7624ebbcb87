"""Money helpers: exact splits and edge parsing (property-based)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cyxwiz.errors import InvalidInput
from cyxwiz.money import Currency, allocate, bps_of, format_amount, parse_amount


@given(
    st.integers(0, 10**15),
    st.lists(st.integers(0, 10_000), min_size=1, max_size=12).filter(lambda w: sum(w) > 0),
)
def test_allocate_sums_exactly_and_is_fair(amount: int, weights: list[int]) -> None:
    parts = allocate(amount, weights)
    assert sum(parts) == amount
    total = sum(weights)
    for part, w in zip(parts, weights, strict=True):
        exact_floor = amount * w // total
        assert exact_floor <= part <= exact_floor + 1
        if w == 0:
            assert part == 0
    assert allocate(amount, weights) == parts  # deterministic


@given(st.integers(0, 10**15), st.integers(0, 10_000))
def test_fee_is_floor(amount: int, bps: int) -> None:
    fee = bps_of(amount, bps)
    assert fee * 10_000 <= amount * bps < (fee + 1) * 10_000


def test_parse_and_format() -> None:
    assert parse_amount("49", Currency.USDC) == 49_000_000
    assert parse_amount("0.000001", Currency.CYX) == 1
    assert format_amount(49_500_000, Currency.USDC) == "49.50 USDC"
    assert format_amount(1, "CYX") == "0.000001 CYX"
    assert format_amount(1_234_000_000_000, "USDC") == "1,234,000.00 USDC"
    for bad in ("-1", "abc", "0.0000001", "NaN", "Infinity"):
        with pytest.raises(InvalidInput):
            parse_amount(bad, Currency.USDC)
