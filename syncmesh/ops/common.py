"""What every operator command needs: a confirmed NATS connection, times from the command
line, and progress bars that stay out of the way when output is not a terminal."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from tqdm import tqdm

from services.common.bus import Bus
from services.common.errors import SettingsError
from services.common.settings import Settings, parse_timestamp

_RELATIVE = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(option: str, raw: str, *, now: datetime | None = None) -> datetime:
    """`--since`: an ISO date/time, unix seconds, or a look-back such as 90m, 72h or 7d."""
    match = _RELATIVE.match(raw.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: amount})
    return parse_timestamp(option, raw.strip())


@contextlib.asynccontextmanager
async def connected_bus(settings: Settings, *, name: str = "syncmesh-ops", timeout: float = 10.0) -> AsyncIterator[Bus]:
    """A Bus that is connected with its streams present, or a SettingsError saying what to check."""
    if not settings.nats_url:
        raise SettingsError("SYNCMESH_NATS_URL must be set to reach the mesh's NATS (e.g. nats://127.0.0.1:4222)")
    bus = Bus(settings, name=name)
    await bus.start()
    try:
        try:
            await bus.wait_ready(timeout)
        except TimeoutError:
            raise SettingsError(
                f"NATS at SYNCMESH_NATS_URL did not answer within {timeout:.0f}s: "
                "check that nats-server (with JetStream) is running and the URL is right"
            ) from None
        yield bus
    finally:
        await bus.close()


def progress(*, total: int | None, desc: str, unit: str, enabled: bool = True) -> tqdm[Any]:
    """A tqdm bar on stderr; silent when disabled or when stderr is not a terminal."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not enabled or not sys.stderr.isatty(),
        leave=False,
        dynamic_ncols=True,
    )
