"""Money for people: integer minor units and a currency, printed one way everywhere (`49.00 USD`).

The mesh keeps money as integer minor units plus an ISO 4217 code; a report that prints raw
minor units beside formatted amounts (`4900 USD minor units` next to `49.00 USD`) makes a reader
doubt both. Stripe's own exponents decide the decimals: most currencies have two, a few none or
three. Pure formatting, no float anywhere.
"""

from __future__ import annotations

#: Currencies Stripe treats as having no minor unit (amounts are whole units).
ZERO_DECIMAL = frozenset(
    ["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"]
)
#: Currencies with three decimals (Stripe's list).
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


def exponent(currency: str) -> int:
    code = currency.lower()
    return 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2


def format_money(amount_minor: int, currency: str) -> str:
    """`4900, "usd"` -> `49.00 USD`; `-500, "jpy"` -> `-500 JPY`; no currency -> the bare amount."""
    places = exponent(currency)
    sign = "-" if amount_minor < 0 else ""
    units, fraction = divmod(abs(amount_minor), 10**places)
    number = f"{sign}{units}.{fraction:0{places}d}" if places else f"{sign}{units}"
    return f"{number} {currency.upper()}" if currency else number
