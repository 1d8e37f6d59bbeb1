"""Money printed one way: `49.00 USD`, with Stripe's exponents for the currencies that differ."""

from __future__ import annotations

import pytest

from services.common.money import format_money


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (4900, "usd", "49.00 USD"),
        (-2500, "gbp", "-25.00 GBP"),
        (5, "eur", "0.05 EUR"),
        (0, "usd", "0.00 USD"),
        (1200, "jpy", "1200 JPY"),
        (-1, "kwd", "-0.001 KWD"),
        (4900, "", "49.00"),
    ],
)
def test_format_money(amount: int, currency: str, shown: str) -> None:
    assert format_money(amount, currency) == shown
