"""Reading Stripe payload fields defensively: ids that may be expanded objects, numbers that may be
missing or booleans, the two API shapes. Shared by the billing mappers so each reads Stripe the same way.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, tzinfo
from typing import Any, Literal

from services.common.events import api_shape

Json = dict[str, Any]

#: Where a record's date comes from, stored beside it: the object's own moment of the change
#: (`status_transitions.*`, `voided_at`, a charge's or refund's `created`), the Stripe event's
#: `created` when the object records none, or the day the gateway was notified when Stripe gave
#: nothing at all. The first two are Stripe's, so replays, backfills and late deliveries keep them.
DateSource = Literal["stripe_transition", "stripe_event", "notified"]


def ref_id(value: Any) -> str | None:
    """An id from a field that is either an id string or an expanded object."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        inner = value.get("id")
        return inner if isinstance(inner, str) and inner else None
    return None


def as_int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    return default


def opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def to_date(ts: int | None, zone: tzinfo) -> date | None:
    """The day an instant falls on in the ledger's zone (books close there, not in UTC)."""
    return datetime.fromtimestamp(ts, tz=zone).date() if ts is not None else None


def service_days(start: int | None, end: int | None, zone: tzinfo) -> tuple[date | None, date | None]:
    """The first and the last (inclusive) day of a Stripe period `[start, end)`.

    `end` is the instant the next period begins, so the last day served is the day before
    `end`'s: a monthly period has exactly as many days as the month it covers. A period that
    starts and ends within one day (or has no end) is that one day.
    """
    if start is None:
        return None, None
    first = to_date(start, zone)
    assert first is not None
    if end is None or end <= start:
        return first, first
    last = to_date(end, zone)
    assert last is not None
    return first, max(first, last - timedelta(days=1))


def as_dict(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def is_basil(obj: Json) -> bool:
    """Current (2025-03 and later) shape; the one rule is in services.common.events.api_shape."""
    return api_shape(obj) == "basil"
