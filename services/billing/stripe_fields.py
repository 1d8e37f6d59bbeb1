"""Reading Stripe payload fields defensively: ids that may be expanded objects, numbers that may be
missing or booleans, the two API shapes. Shared by the billing mappers so each reads Stripe the same way.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from services.common.events import api_shape

Json = dict[str, Any]


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


def to_date(ts: int | None) -> date | None:
    return datetime.fromtimestamp(ts, tz=UTC).date() if ts is not None else None


def as_dict(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def is_basil(obj: Json) -> bool:
    """Current (2025-03 and later) shape; the one rule is in services.common.events.api_shape."""
    return api_shape(obj) == "basil"
