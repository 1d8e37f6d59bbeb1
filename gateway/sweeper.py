"""The missed-event sweeper: find Stripe events the STRIPE stream never received, and publish
them the way a webhook would have.

Stripe gives up on a webhook after three days of failed retries (hours in test mode), and an
endpoint can be disabled or misconfigured for longer than anyone notices. Its Events API keeps
30 days. The sweeper lists that API from a start time, compares against the ids already in the
stream, and publishes the rest through `gateway.app.publish_event` with EVENT_SOURCE_SWEEP:
same subject, same envelope, same message id (the event id) as a webhook.

Which events the stream has is read from the stream itself (the `Nats-Msg-Id` of every message
from the start time on, headers only), not left to JetStream's publish dedup: that window is
two minutes, and a sweep looks back days. Events of the other mode (test vs live) are counted
and skipped, as the gateway refuses them.

Settings (environment):
    SYNCMESH_SWEEP_INTERVAL_SECONDS  seconds between sweeps in the gateway; 0 turns it off.
                                     Default 3600 with SYNCMESH_STRIPE_API_KEY set, else 0.
    SYNCMESH_SWEEP_LOOKBACK_HOURS    how far back each periodic sweep looks (default 72, Stripe's
                                     retry horizon; at most 720, the Events API's 30 days).

Several gateway replicas may sweep at once: each event is published with its id as message
id, so JetStream keeps one copy, and services dedup any later one through their idempotency
record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.errors
import nats.js.errors
import stripe
from syncmesh.events.v1 import envelope_pb2

from services.common.bus import STRIPE_STREAM, Bus
from services.common.errors import MalformedEventError, PublishError, SettingsError, UpstreamError
from services.common.events import parse_event
from services.common.settings import Settings
from services.common.stream import message_ids
from services.common.stripe_api import make_stripe_client
from services.common.stripe_pages import MAX_ATTEMPTS, RateLimiter, list_pages

log = logging.getLogger(__name__)

#: Stripe's Events API keeps 30 days of events.
EVENTS_API_RETENTION = timedelta(days=30)
#: Stream time is when the mesh received an event, always after Stripe created it; this
#: margin also covers clocks that disagree by a few minutes.
CLOCK_MARGIN = timedelta(minutes=10)
DEFAULT_INTERVAL_WITH_KEY = 3600
DEFAULT_LOOKBACK_HOURS = 72


@dataclass(frozen=True)
class SweepSettings:
    interval_seconds: int
    lookback_hours: int

    @property
    def enabled(self) -> bool:
        return self.interval_seconds > 0


def load_sweep_settings(settings: Settings, env: Mapping[str, str] | None = None) -> SweepSettings:
    """Read SYNCMESH_SWEEP_*; a bad value raises SettingsError naming it and what is accepted."""
    env = os.environ if env is None else env
    default_interval = DEFAULT_INTERVAL_WITH_KEY if settings.stripe_api_key else 0
    interval = _whole(env, "SYNCMESH_SWEEP_INTERVAL_SECONDS", default_interval, 0, 7 * 86400)
    lookback = _whole(env, "SYNCMESH_SWEEP_LOOKBACK_HOURS", DEFAULT_LOOKBACK_HOURS, 1, 720)
    if interval > 0 and not settings.stripe_api_key:
        raise SettingsError(
            "SYNCMESH_SWEEP_INTERVAL_SECONDS is set but SYNCMESH_STRIPE_API_KEY is not: the sweeper reads "
            "Stripe's Events API, so give it a key (a restricted rk_ key with read access to Events is enough) "
            "or set the interval to 0"
        )
    return SweepSettings(interval_seconds=interval, lookback_hours=lookback)


def _whole(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name}={value} is out of range ({minimum} to {maximum})")
    return value


@dataclass
class SweepReport:
    since: datetime
    #: Events the Events API listed from `since` on.
    found: int = 0
    #: Of those, events of the other mode (skipped, as the gateway refuses them).
    wrong_mode: int = 0
    #: Events the stream already had.
    already_in_stream: int = 0
    #: Events the stream did not have.
    missing: int = 0
    #: Missing events published now.
    published: int = 0
    #: Missing events JetStream reported as duplicates (another sweeper got there first).
    duplicates: int = 0
    #: Events that are not valid Stripe events (never published; logged).
    malformed: int = 0
    clamped: bool = False
    missing_ids: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"swept Stripe events created since {self.since.isoformat()}",
            f"  found in Stripe's Events API: {self.found}",
            f"  already in the {STRIPE_STREAM} stream: {self.already_in_stream}",
            f"  missing from the stream: {self.missing}",
            f"  published now: {self.published}" + (f" ({self.duplicates} were duplicates)" if self.duplicates else ""),
        ]
        if self.wrong_mode:
            out.append(f"  skipped, other mode than SYNCMESH_MODE: {self.wrong_mode}")
        if self.malformed:
            out.append(f"  not valid Stripe events (see the log): {self.malformed}")
        if self.clamped:
            out.append(
                "  (start clamped to 30 days ago: the Events API keeps no older events; use `syncmesh backfill`)"
            )
        return out


def clamp_since(since: datetime, *, now: datetime | None = None) -> tuple[datetime, bool]:
    """`since`, or 30 days ago if it is older (with True), as the Events API holds no more."""
    floor = (now or datetime.now(UTC)) - EVENTS_API_RETENTION + timedelta(minutes=1)
    if since < floor:
        return floor, True
    return since, False


async def sweep(
    bus: Bus,
    client: stripe.StripeClient,
    settings: Settings,
    *,
    since: datetime,
    until: datetime | None = None,
    requests_per_second: float = 20.0,
    max_attempts: int = MAX_ATTEMPTS,
    show_progress: bool = False,
) -> SweepReport:
    """List Stripe's events from `since` (to `until`) and publish those the STRIPE stream lacks."""
    from services.common.publish import publish_event  # at call time: gateway.app starts the sweeper

    since, clamped = clamp_since(since)
    if clamped:
        log.warning("sweep start clamped to %s: Stripe's Events API keeps only 30 days", since.isoformat())
    report = SweepReport(since=since, clamped=clamped)
    seen = await message_ids(bus, STRIPE_STREAM, start_time=since - CLOCK_MARGIN)
    want_live = settings.mode == "live"
    latest = int(until.timestamp()) if until is not None else None
    bar = _progress(show_progress)
    try:
        async for objects, _last in list_pages(
            client.v1.events.list_async,  # type: ignore[arg-type]
            {"limit": 100},
            what="events",
            limiter=RateLimiter(requests_per_second),
            created_gte=int(since.timestamp()),
            max_attempts=max_attempts,
        ):
            for data in objects:
                if latest is not None and isinstance(data.get("created"), int) and data["created"] > latest:
                    continue  # too recent: its webhook may still be on its way
                report.found += 1
                bar.update(1)
                event_id = str(data.get("id", ""))
                if bool(data.get("livemode")) != want_live:
                    report.wrong_mode += 1
                    continue
                if event_id in seen:
                    report.already_in_stream += 1
                    continue
                report.missing += 1
                try:
                    event = parse_event(json.dumps(data).encode())
                except MalformedEventError as exc:
                    report.malformed += 1
                    log.error("Events API returned an event the mesh cannot accept (%s): %s", event_id, exc)
                    continue
                duplicate = await publish_event(bus, event, source=envelope_pb2.EVENT_SOURCE_SWEEP)
                report.missing_ids.append(event.id)
                seen.add(event.id)
                if duplicate:
                    report.duplicates += 1
                else:
                    report.published += 1
    finally:
        bar.close()
    if report.wrong_mode:
        log.warning(
            "sweep skipped %d events whose livemode does not match SYNCMESH_MODE=%s",
            report.wrong_mode,
            settings.mode,
        )
    log.info(
        "sweep since %s: found %d, missing %d, published %d",
        since.isoformat(),
        report.found,
        report.missing,
        report.published,
    )
    return report


def _progress(enabled: bool) -> Any:
    from services.common.progress import progress

    return progress(total=None, desc="events", unit="evt", enabled=enabled)


class Sweeper:
    """Sweeps every `interval_seconds`, looking back `lookback`; the first sweep runs at once.

    Events younger than `settle` are left for the next sweep: their webhook is most likely
    still on its way, and publishing them here would only label them EVENT_SOURCE_SWEEP.

    Failures (Stripe or NATS unreachable) are logged and retried at the next interval: the
    sweeper is a safety net and must never take the gateway down.
    """

    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        *,
        interval_seconds: float,
        lookback: timedelta,
        settle: timedelta = timedelta(minutes=2),
        client: stripe.StripeClient | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.interval_seconds = interval_seconds
        self.lookback = lookback
        self.settle = settle
        self._owns_client = client is None
        # No SDK retries: list_pages retries itself, honouring Retry-After.
        self.client = client or make_stripe_client(settings, max_network_retries=0)
        if self.client is None:
            raise SettingsError("the sweeper needs SYNCMESH_STRIPE_API_KEY to read Stripe's Events API")
        self._stopping = asyncio.Event()
        self._current: asyncio.Task[SweepReport | None] | None = None
        self.sweeps = 0
        self.last_error: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings, bus: Bus, env: Mapping[str, str] | None = None) -> Sweeper | None:
        """The gateway's sweeper per SYNCMESH_SWEEP_*, or None when the interval is 0."""
        sweep_settings = load_sweep_settings(settings, env)
        if not sweep_settings.enabled:
            return None
        return cls(
            settings,
            bus,
            interval_seconds=sweep_settings.interval_seconds,
            lookback=timedelta(hours=sweep_settings.lookback_hours),
        )

    async def run(self) -> None:
        """Sweep until `stop()`; returns promptly after it, abandoning a sweep in flight."""
        try:
            while not self._stopping.is_set():
                self._current = asyncio.create_task(self.sweep_once(), name="gateway-sweep")
                try:
                    await self._current
                except asyncio.CancelledError:
                    if not self._stopping.is_set():
                        self._current.cancel()
                        raise  # run() itself was cancelled
                    return
                finally:
                    self._current = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.interval_seconds)
        finally:
            if self._owns_client:
                from services.common.stripe_api import close_stripe_client

                await close_stripe_client(self.client)

    async def sweep_once(self) -> SweepReport | None:
        assert self.client is not None
        try:
            await self.bus.wait_ready(timeout=30)
            # Few retries: the next interval is the retry, and a stuck sweep would only delay it.
            now = datetime.now(UTC)
            report = await sweep(
                self.bus,
                self.client,
                self.settings,
                since=now - self.lookback,
                until=now - self.settle,
                requests_per_second=10,
                max_attempts=3,
            )
        except (
            UpstreamError,
            PublishError,
            stripe.StripeError,
            TimeoutError,
            nats.errors.Error,
            nats.js.errors.Error,
        ) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("sweep failed, will try again in %ss: %s", self.interval_seconds, self.last_error)
            return None
        self.sweeps += 1
        self.last_error = None
        if report.missing:
            log.warning("sweep found %d events the gateway never received; published them", report.missing)
        return report

    async def stop(self) -> None:
        """Stop sweeping; a sweep in flight is cancelled (whatever it published stays published)."""
        self._stopping.set()
        if self._current is not None:
            self._current.cancel()
