"""The shared consumer loop, outbox, health and migrations, through a toy service, on real
NATS and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import asyncpg
import grpc
import nats.js.errors
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from syncmesh.events.v1 import dead_letter_pb2, envelope_pb2
from syncmesh.type.v1 import money_pb2

from services.common import db, outbox
from services.common.bus import DLQ_STREAM, EVENTS_STREAM, Bus
from services.common.errors import SettingsError
from services.common.events import parse_event, to_envelope
from services.common.outbox import OutboxRelay
from services.common.service import ServiceRuntime, run_until_signalled
from services.common.settings import Settings
from tests.common import toy_service
from tests.conftest import eventually
from tests.support.stripe_events import event, fixture


def customer_event(customer_id: str, **metadata: object) -> dict:
    obj = fixture("customer")
    obj["id"] = customer_id
    obj["metadata"] = {k: str(v) for k, v in metadata.items()}
    return event("customer.updated", obj)


async def publish(bus: Bus, evt: dict, *, msg_id: str | None = None) -> None:
    parsed = parse_event(json.dumps(evt).encode())
    await bus.publish(
        parsed.subject, to_envelope(parsed, source=envelope_pb2.EVENT_SOURCE_WEBHOOK), msg_id=msg_id or parsed.id
    )


@pytest.fixture
async def runtime(settings: Settings):
    rt = ServiceRuntime(toy_service.DEFINITION, settings, port=0)
    await rt.start()
    await rt.wait_ready(20)
    yield rt
    await rt.stop()


async def rows(settings: Settings) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return {r["object_id"]: r for r in await conn.fetch("SELECT * FROM toy.toy_records")}
    finally:
        await conn.close()


async def test_event_is_written_then_acked(runtime: ServiceRuntime, settings: Settings) -> None:
    await publish(runtime.bus, customer_event("cus_A"))
    await eventually(lambda: rows(settings))
    info = await eventually(lambda: _consumer_settled(runtime))
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def _has(settings: Settings, object_id: str) -> bool:
    return object_id in await rows(settings)


async def _consumer_settled(runtime: ServiceRuntime):
    try:
        info = await runtime.bus.js.consumer_info("STRIPE", runtime.consumer.durable)
    except nats.js.errors.NotFoundError:
        return None  # the consumer loop has not created its durable yet
    return info if info.num_ack_pending == 0 and info.num_pending == 0 else None


async def test_redelivered_event_is_applied_once(runtime: ServiceRuntime, settings: Settings) -> None:
    evt = customer_event("cus_B")
    await publish(runtime.bus, evt)
    await publish(runtime.bus, evt, msg_id=evt["id"] + "-again")  # past JetStream's dedup window
    await eventually(lambda: runtime.consumer.duplicates == 1)
    assert (await rows(settings))["cus_B"]["times_applied"] == 1


async def test_failing_event_is_retried_then_dead_lettered_while_others_flow(
    runtime: ServiceRuntime, settings: Settings
) -> None:
    poison = customer_event("cus_poison", fail=1)
    await publish(runtime.bus, poison)
    await publish(runtime.bus, customer_event("cus_after"))
    await eventually(lambda: _has(settings, "cus_after"))
    await eventually(lambda: runtime.consumer.dead_lettered == 1, timeout=20)
    letter = dead_letter_pb2.DeadLetter.FromString(
        (await runtime.bus.js.get_msg(DLQ_STREAM, subject="dlq.customer")).data
    )
    assert letter.attempts == settings.max_deliver
    assert "toy failure for cus_poison" in letter.reason
    assert letter.headers["Nats-Msg-Id"] == poison["id"]
    assert envelope_pb2.StripeEventEnvelope.FromString(letter.data).event_id == poison["id"]
    assert "cus_after" in await rows(settings) and "cus_poison" not in await rows(settings)


async def test_transient_failure_is_retried_with_backoff(runtime: ServiceRuntime, settings: Settings) -> None:
    evt = customer_event("cus_flaky", fail_until=2)
    await publish(runtime.bus, evt)
    await eventually(lambda: rows(settings), timeout=15)
    assert toy_service.attempts[evt["id"]] == 2
    assert runtime.consumer.dead_lettered == 0


async def test_an_unavailable_dependency_never_uses_up_attempts(runtime: ServiceRuntime, settings: Settings) -> None:
    """Stripe down for more deliveries than SYNCMESH_MAX_DELIVER allows: the event waits it out
    and is applied once Stripe answers, never dead-lettered for the outage."""
    evt = customer_event("cus_outage", unavailable_until=settings.max_deliver + 2)
    await publish(runtime.bus, evt)
    await eventually(lambda: rows(settings), timeout=30)
    assert toy_service.attempts[evt["id"]] == settings.max_deliver + 2
    assert runtime.consumer.dead_lettered == 0


async def test_attempts_count_applier_failures_kept_in_the_database(
    runtime: ServiceRuntime, settings: Settings
) -> None:
    """The dead-letter decision reads the failures the runtime recorded, not JetStream's delivery
    count (which an outage also raises): each failure is one row update, with the error."""
    evt = customer_event("cus_counted", fail_until=settings.max_deliver)
    await publish(runtime.bus, evt)
    await eventually(lambda: rows(settings), timeout=30)
    recorded = await runtime.pool.fetchrow(
        "SELECT failures, last_error FROM delivery_failures WHERE event_id = $1", evt["id"]
    )
    assert recorded["failures"] == settings.max_deliver - 1
    assert "transient toy failure" in recorded["last_error"]
    assert runtime.consumer.dead_lettered == 0


async def test_undecodable_message_goes_to_dead_letters_at_once(runtime: ServiceRuntime) -> None:
    await runtime.bus.publish("stripe.customer.updated", b"\xff not an envelope", msg_id="junk-1")
    await eventually(lambda: runtime.consumer.dead_lettered == 1)
    letter = dead_letter_pb2.DeadLetter.FromString(
        (await runtime.bus.js.get_msg(DLQ_STREAM, subject="dlq.customer")).data
    )
    assert letter.reason.startswith("undecodable") and letter.attempts == 1


async def test_handler_crash_before_commit_gets_the_message_again(settings: Settings) -> None:
    first = ServiceRuntime(toy_service.DEFINITION, settings, port=0)
    await first.start()
    await first.wait_ready(20)
    evt = customer_event("cus_crash", hang_first=1)
    await publish(first.bus, evt)
    await eventually(lambda: toy_service.attempts.get(evt["id"]) == 1)
    # The process dies mid-handler: nothing committed, nothing acked. Torn down without any
    # graceful step, as SIGKILL would leave it.
    for task in first._tasks:
        task.cancel()
    await first.bus.nc.close()
    first.pool.terminate()
    await first.grpc.server.stop(0)
    assert await rows(settings) == {}

    second = ServiceRuntime(toy_service.DEFINITION, settings, port=0)
    await second.start()
    try:
        written = await eventually(lambda: rows(settings), timeout=20)  # after ack_wait, redelivered
        assert written["cus_crash"]["times_applied"] == 1
        assert toy_service.attempts[evt["id"]] == 2
    finally:
        await second.stop()


async def test_outbox_events_reach_the_events_stream(runtime: ServiceRuntime) -> None:
    await publish(runtime.bus, customer_event("cus_out"))
    msg = await eventually(lambda: _last_event(runtime.bus))
    assert msg.subject == "syncmesh.customer.toy_recorded"
    assert msg.headers["Syncmesh-Type"] == "syncmesh.type.v1.Money"


async def _last_event(bus: Bus):
    try:
        return await bus.js.get_msg(EVENTS_STREAM, subject="syncmesh.customer.toy_recorded")
    except Exception:
        return None


async def test_health_turns_serving_when_ready(runtime: ServiceRuntime) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        named = await stub.Check(health_pb2.HealthCheckRequest(service="syncmesh.toy.v1.ToyService"))
        overall = await stub.Check(health_pb2.HealthCheckRequest(service=""))
    assert named.status == health_pb2.HealthCheckResponse.SERVING
    assert overall.status == health_pb2.HealthCheckResponse.SERVING


async def test_migrations_twice_and_concurrently(database_url: str) -> None:
    sources = [("runtime", db.RUNTIME_MIGRATIONS), ("toy", toy_service.DEFINITION.migrations)]
    pools = [await db.create_pool(database_url, "toy") for _ in range(3)]
    try:
        applied = await asyncio.gather(*(db.migrate(p, "toy", sources) for p in pools))
        # Every file once, by one of the three: the runtime's own (however many it has by now) and the toy's.
        files = [(source, m.version) for source, folder in sources for m in db.load_migrations(source, folder)]
        assert len(files) >= 4  # runtime 0001-0003 at least, and the toy's
        assert sorted(len(a) for a in applied) == [0, 0, len(files)]
        assert await db.migrate(pools[0], "toy", sources) == []
        recorded = await pools[0].fetch("SELECT source, version FROM schema_migrations ORDER BY source, version")
        assert [(r["source"], r["version"]) for r in recorded] == sorted(files)
    finally:
        for p in pools:
            await p.close()


async def test_a_batch_fetched_ahead_goes_back_at_once_on_stop(settings: Settings) -> None:
    """While a batch is applied the next one is fetched; stopping then must hand it back (nak),
    not leave it to ack_wait: another replica takes it at once."""
    slow_settings = settings.with_overrides(fetch_batch=1, ack_wait_seconds=60.0)
    ahead = dataclasses.replace(toy_service.DEFINITION, fetch_ahead=True)
    first = ServiceRuntime(ahead, slow_settings, port=0)
    await first.start()
    await first.wait_ready(20)
    try:
        slow = customer_event("cus_slow", sleep=1)
        await publish(first.bus, slow)
        await publish(first.bus, customer_event("cus_ahead"))
        await eventually(lambda: toy_service.attempts.get(slow["id"], 0) >= 1)
        await asyncio.sleep(0.3)  # the next batch is fetched while cus_slow sleeps in its handler
    finally:
        await first.stop()
    assert "cus_slow" in await rows(settings) and "cus_ahead" not in await rows(settings)
    second = ServiceRuntime(ahead, slow_settings, port=0)
    await second.start()
    try:
        await eventually(lambda: _has(settings, "cus_ahead"), timeout=10)  # long before ack_wait's 60 s
    finally:
        await second.stop()


async def test_a_migration_the_database_refuses_stops_the_service_with_its_name(
    settings: Settings, tmp_path: Path
) -> None:
    """A broken migration is not a database outage: the service says which file failed and why,
    and stops (exit 1 under `serve`), instead of 'database not ready' forever with health stuck
    at NOT_SERVING and liveness green."""
    (tmp_path / "0001_broken.sql").write_text("CREATE TABLEX nothing (id int);\n")
    definition = dataclasses.replace(toy_service.DEFINITION, migrations=tmp_path)
    rt = ServiceRuntime(definition, settings, port=0)
    await rt.start()
    try:
        with pytest.raises(SettingsError, match=r"migration customer/0001_broken\.sql failed: PostgresSyntaxError"):
            await rt.wait_ready(20)
        assert rt.failed.is_set() and rt.consumer is None  # nothing consumed on a half-built schema
    finally:
        await rt.stop()


async def test_run_until_signalled_ends_with_exit_code_1_when_the_service_fails(settings: Settings, tmp_path) -> None:
    (tmp_path / "0001_broken.sql").write_text("SELECT * FROM nowhere;\n")
    rt = ServiceRuntime(dataclasses.replace(toy_service.DEFINITION, migrations=tmp_path), settings, port=0)
    code = await asyncio.wait_for(run_until_signalled(rt.start, rt.stop, rt.failed), 30)
    assert code == 1 and rt.failure is not None and "0001_broken.sql failed: UndefinedTableError" in rt.failure


async def test_the_relay_publishes_rows_handed_over_without_looking_for_them(runtime: ServiceRuntime) -> None:
    """A batch's committed outbox rows go out from the hand-over alone, not from a scan of the
    table (here nothing scans: no wake, an hour's poll), and rows published close together are
    marked with one UPDATE."""
    assert runtime.relay is not None and runtime.pool is not None
    runtime.relay.stop()  # the runtime's own relay would find the row by its 5 s poll
    await asyncio.sleep(0.2)
    relay = OutboxRelay(runtime.pool, runtime.bus, poll_seconds=3600, mark_seconds=0.5)
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0.2)  # its first scan, at start, finds nothing
    try:
        rows = outbox.prepare_events(
            service="customer",
            events=[(f"handed_over{i}", money_pb2.Money(amount_minor=i, currency="eur")) for i in range(3)],
        )
        written = []
        for row in rows:  # three batches in quick succession, each handing over its row
            async with runtime.pool.acquire() as conn, conn.transaction():
                written += await outbox.insert_rows_returning(conn, [row])
            relay.hand_over(written[-1:])
        assert [row.msg_id for row in written] == [row.msg_id for row in rows]

        async def published() -> bool:
            return bool(
                await runtime.pool.fetchval(
                    "SELECT bool_and(published_at IS NOT NULL) FROM outbox WHERE msg_id = ANY($1::text[])",
                    [row.msg_id for row in written],
                )
            )

        await eventually(published, timeout=3)
        for i, row in enumerate(rows):
            msg = await runtime.bus.js.get_msg(EVENTS_STREAM, subject=f"syncmesh.customer.handed_over{i}")
            assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == row.msg_id
        assert relay.published == 3
        assert relay.marks == 1  # marked together, with one UPDATE
    finally:
        relay.stop()
        await asyncio.wait_for(task, 5)


async def test_a_mark_that_fails_is_tried_again_after_the_retry_delay_not_at_once(
    runtime: ServiceRuntime, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Published rows whose mark cannot be written (PostgreSQL gone) wait `retry_seconds` before
    the next try: a mark left due at once had the relay reconnecting about a hundred times a
    second through a whole outage, the CPU of a core taken from the services catching up."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=1)
    relay = OutboxRelay(pool, runtime.bus, poll_seconds=3600, retry_seconds=0.5, mark_seconds=0.05)
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.sleep(0.2)  # its first scan, at start, finds nothing
        await pool.close()  # every statement on it now fails as on a database that is gone
        relay.hand_over(outbox.prepare_events(service="customer", events=[("unmarked", money_pb2.Money())]))
        caplog.clear()
        await asyncio.sleep(1.6)
        tries = sum("outbox relay paused" in r.getMessage() for r in caplog.records)
        assert relay.published == 1 and relay.marks == 0
        assert 2 <= tries <= 5, f"{tries} tries to mark in 1.6 s with a 0.5 s retry delay"
    finally:
        relay.stop()
        await asyncio.wait_for(task, 5)
