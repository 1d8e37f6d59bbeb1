"""What every operator command needs: a confirmed NATS connection, times from the command line,
and one way to run a command that turns the failures an operator can fix into one clear line."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

from services.common.bus import Bus
from services.common.errors import ConflictError, NotFoundError, PublishError, SettingsError, UpstreamError
from services.common.logs import setup_logging
from services.common.settings import Settings, load_settings, parse_timestamp

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
        raise SettingsError(
            "SYNCMESH_NATS_URL must be set to reach the mesh's NATS (e.g. nats://127.0.0.1:4222), "
            "or run this in the folder where `syncmesh up` runs"
        )
    bus = Bus(settings, name=name)
    await bus.start()
    try:
        try:
            await bus.wait_ready(timeout)
        except TimeoutError:
            if bus.identity_refused:
                who = f"user {settings.nats_user}" if settings.nats_user else "a client without credentials"
                raise SettingsError(
                    f"NATS refused {who}: check SYNCMESH_NATS_USER and SYNCMESH_NATS_PASSWORD_FILE "
                    "(the operator's identity), or run this in the folder where `syncmesh up` runs"
                ) from None
            raise SettingsError(
                f"NATS at SYNCMESH_NATS_URL did not answer within {timeout:.0f}s: "
                "check that nats-server (with JetStream) is running and the URL is right"
            ) from None
        yield bus
    finally:
        await bus.close()


EXIT_FAILED = 1


EXIT_INTERRUPTED = 130


def run_command(work: Callable[[Settings], Coroutine[Any, Any, int]], *, interrupted: str | None = None) -> int:
    """Run one command's coroutine; turn the errors an operator can fix into a clear line, and
    Ctrl-C into the one line `interrupted` (when given) and exit 130."""
    settings = load_settings()
    setup_logging(settings.log_level)
    try:
        return asyncio.run(work(settings))
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(f"\nsyncmesh: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (NotFoundError, ConflictError) as exc:
        print(f"syncmesh: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except UpstreamError as exc:
        print(f"syncmesh: {exc} (nothing after the last completed step was done; rerun to continue)", file=sys.stderr)
        return EXIT_FAILED
    except PublishError as exc:
        print(f"syncmesh: {exc}: check NATS (SYNCMESH_NATS_URL) and rerun; completed steps are kept", file=sys.stderr)
        return EXIT_FAILED


def target_option(service: str) -> str:
    """The attribute of `--<word>-target`, the option naming a service's gRPC address: the name's
    first word, as it always has been (`--crm-target` for crm-export)."""
    return f"{service.split('-')[0]}_target"
