"""The missed-event sweeper against localstripe's Events API and a real JetStream."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from syncmesh.events.v1 import envelope_pb2

from gateway.sweeper import Sweeper, clamp_since, load_sweep_settings, sweep
from services.common.bus import Bus
from services.common.errors import SettingsError
from services.common.events import parse_event
from services.common.publish import publish_event
from services.common.settings import Settings
from services.common.stripe_api import make_stripe_client
from tests.conftest import eventually
from tests.ops.helpers import stripe_messages


@pytest.fixture
def sweep_settings(settings: Settings, localstripe) -> Settings:
    # A one-second dedup window: a sweeper that leaned on JetStream's dedup instead of reading
    # the stream would publish every event again on its second run.
    return settings.with_overrides(
        stripe_api_key="sk_test_sweep", stripe_api_base=localstripe.url, stream_duplicate_window_seconds=1
    )


@pytest.fixture
async def sweep_bus(sweep_settings: Settings):
    b = Bus(sweep_settings, name="test-sweep")
    await b.start(wait=5)
    await b.wait_ready(10)
    yield b
    await b.close()


async def create_customers(client, n: int) -> list[str]:
    return [(await client.v1.customers.create_async({"name": f"Customer {i}"})).id for i in range(n)]


async def test_sweep_publishes_only_the_missing_events_once(
    ls_client, track_stripe, sweep_settings: Settings, sweep_bus: Bus
):
    await create_customers(ls_client, 3)  # no webhook endpoint registered: the mesh heard nothing
    client = track_stripe(make_stripe_client(sweep_settings, max_network_retries=0))
    listed = (await client.v1.events.list_async({"limit": 100})).data
    assert len(listed) == 3
    # One of the three did reach the mesh by webhook.
    by_webhook = parse_event(json.dumps(listed[0].to_dict(for_json=True)).encode())
    await publish_event(sweep_bus, by_webhook, source=envelope_pb2.EVENT_SOURCE_WEBHOOK)

    since = datetime.now(UTC) - timedelta(hours=1)
    report = await sweep(sweep_bus, client, sweep_settings, since=since)
    assert (report.found, report.already_in_stream, report.missing, report.published) == (3, 1, 2, 2)
    assert report.wrong_mode == 0 and not report.clamped

    messages = await stripe_messages(sweep_bus)
    assert sorted(m["msg_id"] for m in messages) == sorted(e.id for e in listed)
    assert sorted(m["envelope"].source for m in messages) == [
        envelope_pb2.EVENT_SOURCE_WEBHOOK,
        envelope_pb2.EVENT_SOURCE_SWEEP,
        envelope_pb2.EVENT_SOURCE_SWEEP,
    ]
    assert {m["subject"] for m in messages} == {"stripe.customer.created"}
    swept = next(m for m in messages if m["envelope"].source == envelope_pb2.EVENT_SOURCE_SWEEP)
    assert swept["payload"]["id"] == swept["envelope"].event_id and swept["payload"]["object"] == "event"

    await asyncio.sleep(1.2)  # past the dedup window
    again = await sweep(sweep_bus, client, sweep_settings, since=since)
    assert (again.found, again.already_in_stream, again.missing, again.published) == (3, 3, 0, 0)
    assert len(await stripe_messages(sweep_bus)) == 3
    assert "missing from the stream: 0" in "\n".join(again.lines())


async def test_sweep_skips_events_of_the_other_mode(ls_client, track_stripe, sweep_settings: Settings, sweep_bus: Bus):
    await create_customers(ls_client, 2)
    live = sweep_settings.with_overrides(mode="live", stripe_api_key="sk_live_sweep")
    client = track_stripe(make_stripe_client(live))
    report = await sweep(sweep_bus, client, live, since=datetime.now(UTC) - timedelta(hours=1))
    assert (report.found, report.wrong_mode, report.missing, report.published) == (2, 2, 0, 0)
    assert "other mode than SYNCMESH_MODE: 2" in "\n".join(report.lines())
    assert await stripe_messages(sweep_bus) == []


def test_start_is_clamped_to_the_events_api_retention() -> None:
    now = datetime(2026, 6, 30, tzinfo=UTC)
    since, clamped = clamp_since(now - timedelta(days=45), now=now)
    assert clamped and now - timedelta(days=30) < since < now - timedelta(days=29)
    assert clamp_since(now - timedelta(days=3), now=now) == (now - timedelta(days=3), False)


async def test_periodic_sweeper_catches_up_and_stops_promptly(ls_client, sweep_settings: Settings, sweep_bus: Bus):
    sweeper = Sweeper(sweep_settings, sweep_bus, interval_seconds=0.3, lookback=timedelta(hours=1), settle=timedelta(0))
    task = asyncio.create_task(sweeper.run())
    try:
        await eventually(lambda: sweeper.sweeps >= 1)
        [customer_id] = await create_customers(ls_client, 1)  # "missed" between two sweeps
        messages = await eventually(lambda: _published(sweep_bus), timeout=10)
        assert messages[0]["payload"]["data"]["object"]["id"] == customer_id
        assert messages[0]["envelope"].source == envelope_pb2.EVENT_SOURCE_SWEEP
    finally:
        await sweeper.stop()
        await asyncio.wait_for(task, 5)
    assert sweeper.last_error is None


async def test_periodic_sweeper_leaves_the_newest_events_to_their_webhooks(
    ls_client, track_stripe, sweep_settings: Settings, sweep_bus: Bus
):
    await create_customers(ls_client, 1)
    sweeper = Sweeper(sweep_settings, sweep_bus, interval_seconds=60, lookback=timedelta(hours=1))
    track_stripe(sweeper.client)
    report = await sweeper.sweep_once()
    assert report is not None and (report.found, report.published) == (0, 0)
    assert await stripe_messages(sweep_bus) == []


async def _published(bus: Bus):
    return await stripe_messages(bus)


async def test_periodic_sweeper_survives_stripe_being_unreachable(settings: Settings, bus: Bus) -> None:
    dead = settings.with_overrides(stripe_api_key="sk_test_x", stripe_api_base="http://127.0.0.1:9")
    sweeper = Sweeper(dead, bus, interval_seconds=0.1, lookback=timedelta(hours=1))
    task = asyncio.create_task(sweeper.run())
    try:
        await eventually(lambda: sweeper.last_error is not None, timeout=15)
        assert not task.done()
    finally:
        await sweeper.stop()
        await asyncio.wait_for(task, 5)


def test_sweep_settings() -> None:
    with_key = Settings(stripe_api_key="sk_test_x")
    assert load_sweep_settings(Settings(), {}) == load_sweep_settings(
        Settings(), {"SYNCMESH_SWEEP_INTERVAL_SECONDS": ""}
    )
    assert load_sweep_settings(Settings(), {}).enabled is False
    assert load_sweep_settings(with_key, {}).interval_seconds == 3600
    assert load_sweep_settings(with_key, {}).lookback_hours == 72
    assert load_sweep_settings(with_key, {"SYNCMESH_SWEEP_INTERVAL_SECONDS": "0"}).enabled is False
    custom = load_sweep_settings(
        with_key, {"SYNCMESH_SWEEP_INTERVAL_SECONDS": "600", "SYNCMESH_SWEEP_LOOKBACK_HOURS": "24"}
    )
    assert (custom.interval_seconds, custom.lookback_hours) == (600, 24)
    with pytest.raises(SettingsError, match="SYNCMESH_STRIPE_API_KEY is not"):
        load_sweep_settings(Settings(), {"SYNCMESH_SWEEP_INTERVAL_SECONDS": "60"})
    with pytest.raises(SettingsError, match="SYNCMESH_SWEEP_LOOKBACK_HOURS=721 is out of range"):
        load_sweep_settings(with_key, {"SYNCMESH_SWEEP_LOOKBACK_HOURS": "721"})
    with pytest.raises(SettingsError, match="not a whole number"):
        load_sweep_settings(with_key, {"SYNCMESH_SWEEP_INTERVAL_SECONDS": "soon"})
    assert Sweeper.from_settings(Settings(nats_url="nats://x:1"), None, {}) is None
