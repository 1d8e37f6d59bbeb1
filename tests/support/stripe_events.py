"""Building Stripe events for tests from Stripe's published example objects.

`tests/fixtures/stripe/` holds Stripe's own OpenAPI fixtures, copied into the repository with
their source and licence beside them, in the current ("basil" and later) shape and the
pre-2025-03 shape; `fixture(name)` loads one, and `event(...)` wraps an object in an event
envelope the way Stripe's webhooks do.
"""

from __future__ import annotations

import copy
import itertools
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stripe"
CURRENT_API_VERSION = "2026-10-28.endive"
LEGACY_API_VERSION = "2024-06-20"

_counter = itertools.count(1)


@cache
def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def fixture(name: str, *, legacy: bool = False) -> dict[str, Any]:
    """A deep copy of one of Stripe's example objects (`customer`, `invoice`, ...)."""
    folder = "openapi-fixtures3-pre-basil-2025-02-14" if legacy else "openapi-fixtures3"
    return copy.deepcopy(_load(FIXTURES / folder / f"{name}.json"))


def event_id() -> str:
    return f"evt_test_{int(time.time() * 1000)}_{next(_counter)}"


def event(
    event_type: str,
    obj: dict[str, Any],
    *,
    created: int | None = None,
    livemode: bool = False,
    previous_attributes: dict[str, Any] | None = None,
    api_version: str = CURRENT_API_VERSION,
    id: str | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": id or event_id(),
        "object": "event",
        "api_version": api_version,
        "created": created if created is not None else int(time.time()),
        "data": data,
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
