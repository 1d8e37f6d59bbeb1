"""The consumer's batch path, through the toy service's set-based applier, on real NATS and
PostgreSQL: a batch applied in one call, a failing message that keeps its failure (run once per
delivery) while the rest of its batch is written, a permanent failure dead-lettered at once, and
dry run on a whole batch writing nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator
from types import SimpleNamespace

import asyncpg
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from services.common import outbox
from services.common.bus import STRIPE_STREAM, Bus
from services.common.consumer import (
    _claim_rows,
    _last_writes,
    _literal_rows,
    _record_skipped,
    _take_delivered_at_once,
)
from services.common.service import ServiceDefinition, ServiceRuntime
from services.common.settings import Settings
from tests.common import toy_service
from tests.common.test_service_runtime import _consumer_settled, customer_event, publish, rows
from tests.conftest import eventually


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    bus = Bus(settings, name="test-batch")
    await bus.start(wait=10)
    await bus.wait_ready(20)
    yield bus
    await bus.close()


async def _start(settings: Settings, definition: ServiceDefinition = toy_service.BATCH_DEFINITION) -> ServiceRuntime:
    """Started after the events are in the stream, so they arrive as one fetched batch."""
    rt = ServiceRuntime(definition, settings, port=0)
    await rt.start()
    await rt.wait_ready(20)
    return rt


async def _has_all(settings: Settings, wanted: set[str]) -> bool:
    return wanted <= set(await rows(settings))


async def test_a_batch_is_applied_in_one_call(bus: Bus, settings: Settings) -> None:
    events = [customer_event(f"cus_batch{i}") for i in range(20)]
    for evt in events:
        await publish(bus, evt)
    await publish(bus, events[0], msg_id=events[0]["id"] + "-again")  # a resend: a duplicate
    toy_service.batches_written.clear()
    rt = await _start(settings)
    try:
        # The rows, then the consumer: "nothing pending, nothing awaiting an ack" alone also holds
        # for a moment while a message whose ack_wait ran out waits to be delivered again.
        await eventually(lambda: _has_all(settings, {f"cus_batch{i}" for i in range(20)}))
        await eventually(lambda: _consumer_settled(rt))
        written = await rows(settings)
        assert all(written[f"cus_batch{i}"]["times_applied"] == 1 for i in range(20))
        assert sum(toy_service.batches_written) == 20 and len(toy_service.batches_written) < 20
        assert rt.consumer.duplicates == 1
        outbox = await rt.pool.fetchval("SELECT count(*) FROM toy.outbox")
        assert outbox == 20  # every event's domain event, written with the batch
    finally:
        await rt.stop()


async def test_a_failing_message_is_run_once_per_delivery_and_the_rest_is_written(bus: Bus, settings: Settings) -> None:
    poison = customer_event("cus_bpoison", fail=1)
    await publish(bus, customer_event("cus_b1"))
    await publish(bus, poison)
    await publish(bus, customer_event("cus_b2"))
    rt = await _start(settings)
    try:
        await eventually(lambda: rt.consumer.dead_lettered == 1, timeout=20)
        written = await rows(settings)
        assert {"cus_b1", "cus_b2"} <= set(written) and "cus_bpoison" not in written
        # Once by the applier per delivery; the one-by-one pass does not run it again.
        assert toy_service.attempts[poison["id"]] == settings.max_deliver
    finally:
        await rt.stop()


async def test_a_permanent_failure_is_dead_lettered_at_once_and_the_rest_is_written(
    bus: Bus, settings: Settings
) -> None:
    bad = customer_event("cus_pbad", permanent=1)
    await publish(bus, customer_event("cus_p1"))
    await publish(bus, bad)
    await publish(bus, customer_event("cus_p2"))
    rt = await _start(settings, toy_service.DEFINITION)
    try:
        await eventually(lambda: rt.consumer.dead_lettered == 1)
        await eventually(lambda: _consumer_settled(rt))
        assert toy_service.attempts[bad["id"]] == 1
        written = await rows(settings)
        assert {"cus_p1", "cus_p2"} <= set(written) and "cus_pbad" not in written
    finally:
        await rt.stop()


@pytest.mark.parametrize("one_fails", [False, True], ids=["together", "one-by-one"])
async def test_dry_run_applies_a_whole_batch_and_writes_nothing(bus: Bus, settings: Settings, one_fails: bool) -> None:
    """Dry run rolls back the batch's transaction (or, when a message fails, each savepoint of
    the one-by-one pass): the messages are settled as a real run would, nothing is written."""
    for i in range(6):
        await publish(bus, customer_event(f"cus_dry{i}"))
    if one_fails:
        await publish(bus, customer_event("cus_drybad", permanent=1))
    toy_service.batches_written.clear()
    rt = await _start(settings.with_overrides(dry_run=True))
    try:
        await eventually(lambda: rt.consumer.handled == 6 and rt.consumer.dead_lettered == int(one_fails))
        await eventually(lambda: _consumer_settled(rt))
        if not one_fails:
            assert sum(toy_service.batches_written) == 6 and len(toy_service.batches_written) < 6
        assert await rows(settings) == {}
        assert await rt.pool.fetchval("SELECT count(*) FROM toy.processed_events") == 0
        assert await rt.pool.fetchval("SELECT count(*) FROM toy.outbox") == 0
    finally:
        await rt.stop()


async def test_a_fetch_takes_delivered_messages_without_a_task_each(bus: Bus, settings: Settings) -> None:
    """A backlog comes back whole and in order from the consumer's fetch, with the subscription's
    byte count back at zero, and each message already delivered is taken without a task (nats-py's
    own `next_msg` makes one per message: ~35 us each)."""
    events = [customer_event(f"cus_fetch{i}") for i in range(30)]
    for evt in events:
        await publish(bus, evt)
    await bus.js.add_consumer(
        STRIPE_STREAM, ConsumerConfig(durable_name="fetch-test", ack_policy=AckPolicy.EXPLICIT, filter_subjects=[])
    )
    psub = await bus.js.pull_subscribe_bind(durable="fetch-test", stream=STRIPE_STREAM)
    _take_delivered_at_once(psub)
    created = 0
    real_create_task = asyncio.create_task

    def counting(coro, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal created
        created += 1
        return real_create_task(coro, **kwargs)

    asyncio.create_task = counting  # type: ignore[assignment]
    try:
        msgs = await psub.fetch(100, timeout=2)
        while len(msgs) < len(events):
            msgs += await psub.fetch(100, timeout=2)
    finally:
        asyncio.create_task = real_create_task  # type: ignore[assignment]
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == [e["id"] for e in events]
    assert psub._sub._pending_size == 0
    assert created < len(events) // 2, created
    for m in msgs:
        await m.ack()
    await psub.unsubscribe()


async def test_a_claim_sent_with_begin_tells_new_events_from_seen(bus: Bus, settings: Settings) -> None:
    """The claim goes with BEGIN, and its row count alone says whether every id was new: a batch
    where it writes fewer rows than it has ids (a second copy in the batch) learns which are its
    own; a batch of only seen events, that none is."""
    first, second = customer_event("cus_first"), customer_event("cus_second")
    await publish(bus, first)
    await publish(bus, second)
    await publish(bus, first, msg_id="first-again")  # a second copy in the same batch
    toy_service.batches_written.clear()
    rt = await _start(settings)
    try:
        await eventually(lambda: _has_all(settings, {"cus_first", "cus_second"}))
        await eventually(lambda: _consumer_settled(rt))
        assert toy_service.batches_written == [2]
        assert rt.consumer.duplicates == 1 and rt.consumer.handled == 2
        await publish(bus, first, msg_id="first-third")  # alone: a batch whose claim writes nothing
        await eventually(lambda: rt.consumer.duplicates == 2)
        written = await rows(settings)
        assert written["cus_first"]["times_applied"] == 1 and written["cus_second"]["times_applied"] == 1
    finally:
        await rt.stop()


async def test_claim_literals_hold_any_string_postgresql_can(settings: Settings) -> None:
    """What the claim writes as literals reads back as it was (quotes, backslashes, a semicolon
    and a comment); a string text cannot hold is left to a statement with parameters."""
    odd = ["evt_it's", "evt_\\x27'; DROP TABLE x;--", "evt_''", "evt_\\", "evt_é\u2028"]
    conn = await asyncpg.connect(settings.database_url)
    try:
        values = _literal_rows(conn, [(value, "customer.updated", None) for value in odd])
        assert values is not None
        back = await conn.fetch(f"SELECT column1 AS v FROM (VALUES {values}) AS v")
        assert [r["v"] for r in back] == odd
        assert _literal_rows(conn, [("evt_\x00", "customer.updated", 1)]) is None
    finally:
        await conn.close()


async def test_the_last_writes_sent_with_commit_hold_any_value_postgresql_can(settings: Settings) -> None:
    """The outbox rows and skipped outcomes that go with the COMMIT as literals read back as
    they were: odd text (quotes, backslashes, SQL fragments, a line separator) and every byte
    value in a payload; a text PostgreSQL cannot hold leaves them to statements with parameters."""
    odd = "it's \\x27'; DROP TABLE outbox;-- \u2028"
    rows = [
        outbox.OutboxRow(
            subject=f"syncmesh.toy.{i}",
            message_type=odd,
            msg_id=f"{odd}{i}",
            payload=bytes(range(256)) * i,
            headers='{"traceparent": "' + odd.replace("\\", "\\\\") + '"}',
        )
        for i in range(3)
    ]
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(
            "CREATE TEMP TABLE outbox (subject text, message_type text, msg_id text UNIQUE, payload bytea, "
            "headers jsonb); CREATE TEMP TABLE processed_events (event_id text PRIMARY KEY, outcome text)"
        )
        await conn.execute("INSERT INTO pg_temp.processed_events VALUES ($1, 'applied')", odd)
        sql = _last_writes(conn, rows, [(odd, f"skipped: {odd}")])
        assert sql is not None
        await conn.execute(sql)
        back = await conn.fetch("SELECT subject, message_type, msg_id, payload, headers::text AS h FROM pg_temp.outbox")
        assert sorted((r["subject"], r["message_type"], r["msg_id"], r["payload"]) for r in back) == [
            (r.subject, r.message_type, r.msg_id, r.payload) for r in rows
        ]
        assert {r["h"] for r in back} == {(await conn.fetchval("SELECT $1::jsonb::text", rows[0].headers))}
        assert await conn.fetchval("SELECT outcome FROM pg_temp.processed_events") == f"skipped: {odd}"
        await _record_skipped(conn, [(odd, "skipped: by parameters"), ("evt_absent", "skipped: no row")])
        assert await conn.fetchval("SELECT outcome FROM pg_temp.processed_events") == "skipped: by parameters"
        nul = dataclasses.replace(rows[0], msg_id="evt_\x00")
        assert _last_writes(conn, [nul], []) is None
        assert _last_writes(conn, rows, [("evt_\x00", "skipped")]) is None
        assert _last_writes(conn, [], []) is None
    finally:
        await conn.close()


async def test_events_arriving_within_the_linger_after_a_batch_share_the_next_one(bus: Bus, settings: Settings) -> None:
    """After a partial batch the next fetch waits `fetch_linger_seconds`: events published during
    that wait are applied as one batch, not one transaction each."""
    toy_service.batches_written.clear()
    rt = await _start(dataclasses.replace(settings, fetch_linger_seconds=3.0))
    try:
        await publish(bus, customer_event("cus_linger_first"))
        await eventually(lambda: _has_all(settings, {"cus_linger_first"}))
        for i in range(5):
            await publish(bus, customer_event(f"cus_linger{i}"))
        await eventually(lambda: _has_all(settings, {f"cus_linger{i}" for i in range(5)}))
        assert toy_service.batches_written == [1, 5]
    finally:
        await rt.stop()


def test_an_event_resent_within_a_batch_is_claimed_under_its_first_sequence_in_any_order() -> None:
    """The claim's rows are one per event id, sorted by id, and an event that came twice in one
    batch is recorded under its earlier stream sequence whichever copy the batch holds first."""

    def delivery(event_id: str, sequence: int | None) -> SimpleNamespace:
        meta = SimpleNamespace(sequence=SimpleNamespace(stream=sequence)) if sequence is not None else None
        return SimpleNamespace(
            event=SimpleNamespace(id=event_id, type="customer.updated"),
            received=SimpleNamespace(msg=SimpleNamespace(metadata=meta)),
        )

    work = [delivery("evt_b", 7), delivery("evt_a", 9), delivery("evt_b", 3), delivery("evt_a", None)]
    for order in itertools.permutations(work):
        assert _claim_rows(order) == [("evt_a", "customer.updated", 9), ("evt_b", "customer.updated", 3)]  # type: ignore[arg-type]
