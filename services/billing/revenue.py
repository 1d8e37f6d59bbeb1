"""Revenue recognition: splitting an amount over months without losing a minor unit to rounding.

Pure: no I/O, no clock. The schedules add up exactly to what a line recognises, which is what
`invoice_mapping.invoice_problems` checks before an invoice is called balanced.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from services.billing.settings import RevenueRule


def month_start(day: date) -> date:
    return day.replace(day=1)


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` minor units in proportion to `weights`, losing nothing to rounding.

    Largest-remainder method: everyone gets the floor of their share, and the units left over
    go to the largest fractional remainders (ties to the earlier index), so the parts always sum
    exactly to `total` and the result is the same on every run.
    """
    if not weights:
        raise ValueError("allocate needs at least one weight")
    if any(w < 0 for w in weights):
        raise ValueError("allocate weights must not be negative")
    ws = list(weights)
    whole = sum(ws)
    if whole == 0:
        ws = [1] * len(ws)
        whole = len(ws)
    sign = -1 if total < 0 else 1
    units = abs(total)
    parts = [units * w // whole for w in ws]
    remainders = [units * w % whole for w in ws]
    left = units - sum(parts)
    for i in sorted(range(len(ws)), key=lambda i: (-remainders[i], i))[:left]:
        parts[i] += 1
    return [sign * p for p in parts]


@dataclass(frozen=True)
class RevenueEntry:
    #: First day of the month the amount is recognised in.
    period: date
    amount: int


def _months(start: date, end: date) -> list[date]:
    months = []
    cursor = month_start(start)
    while cursor <= end:
        months.append(cursor)
        cursor = (cursor + timedelta(days=32)).replace(day=1)
    return months


def revenue_schedule(
    amount: int,
    *,
    rule: RevenueRule,
    start: date | None,
    end: date | None,
    transaction_date: date,
) -> tuple[RevenueEntry, ...]:
    """Monthly amounts that add up exactly to `amount`.

    `end` is inclusive (the last day of service). Lines without a service period (one-off
    items) are recognised in the month of the period start, or of the invoice date.
    """
    if amount == 0:
        return ()
    if rule == "immediate":
        return (RevenueEntry(month_start(transaction_date), amount),)
    if start is None or end is None or end <= start:
        return (RevenueEntry(month_start(start or transaction_date), amount),)
    months = _months(start, end)
    if rule == "by_period":
        weights = [1] * len(months)
    else:
        weights = []
        for first in months:
            last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
            weights.append((min(last, end) - max(first, start)).days + 1)
    return tuple(RevenueEntry(m, a) for m, a in zip(months, allocate(amount, weights), strict=True) if a != 0)
