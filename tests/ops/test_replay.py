"""Replay through the runtime's own batch logic, on real NATS and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from ops.replay import replay
from services.common.bus import EVENTS_STREAM, Bus
from services.common.service import ServiceDefinition, ServiceRuntime
from services.common.settings import Settings
from tests.common import toy_service
from tests.conftest import eventually
from tests.ops import record_toy
from tests.ops.helpers import customer_event, publish, stop_runtime


async def fetch(settings: Settings, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


async def records(settings: Settings) -> list[tuple]:
    rows = await fetch(settings, "SELECT * FROM record_toy.toy_customers ORDER BY customer_id")
    return [tuple(r.values()) for r in rows]


async def events_published(bus: Bus) -> int:
    return int((await bus.js.stream_info(EVENTS_STREAM)).state.messages)


@pytest.fixture
async def applied(settings: Settings, bus: Bus):
    """A lifecycle applied live by the running service, which is then stopped."""
    record_toy.NAME_STYLE["upper"] = False
    rt = ServiceRuntime(record_toy.DEFINITION, settings, port=0)
    await rt.start()
    await rt.wait_ready(20)
    try:
        await publish(bus, customer_event("cus_a", name="Acme", created=100))
        await publish(bus, customer_event("cus_b", name="Beta", created=100))
        await publish(bus, customer_event("cus_a", name="Acme Renamed", created=200))
        await publish(bus, customer_event("cus_a", name="Acme Stale", created=150))  # late and older: ignored
        await eventually(lambda: rt.consumer.handled == 4)
        await eventually(lambda: _outbox_drained(settings))
    finally:
        await stop_runtime(rt)
    yield await records(settings)
    record_toy.NAME_STYLE["upper"] = False


async def _outbox_drained(settings: Settings) -> bool:
    rows = await fetch(settings, "SELECT count(*) AS n FROM record_toy.outbox WHERE published_at IS NULL")
    return rows[0]["n"] == 0


async def test_replay_of_unchanged_history_changes_nothing(applied, settings: Settings, bus: Bus) -> None:
    assert applied == [("cus_a", "Acme Renamed", 200), ("cus_b", "Beta", 100)]
    published_before = await events_published(bus)

    first = await replay(record_toy.DEFINITION, settings, bus)
    assert (first.messages, first.applied, first.repeats, first.failures) == (4, 4, 0, [])
    assert await records(settings) == applied
    [table] = first.tables
    assert (table.table, table.rows_before, table.rows_after, table.changed_rows) == ("toy_customers", 2, 2, 0)
    assert table.checksum_before == table.checksum_after
    assert first.changed_rows == 0 and "changed 0 rows in total" in "\n".join(first.lines())
    # History is not re-announced: no domain event left the outbox.
    assert first.suppressed_events == 4
    assert await events_published(bus) == published_before
    unpublished = await fetch(settings, "SELECT count(*) AS n FROM record_toy.outbox WHERE published_at IS NULL")
    assert unpublished[0]["n"] == 0

    second = await replay(record_toy.DEFINITION, settings, bus)
    assert second.changed_rows == 0 and second.applied == 4
    assert second.tables[0].checksum_after == first.tables[0].checksum_after
    processed = await fetch(settings, "SELECT count(*) AS n FROM record_toy.processed_events")
    assert processed[0]["n"] == 4


async def test_replay_after_a_mapping_change_rebuilds_and_reports_the_difference(
    applied, settings: Settings, bus: Bus
) -> None:
    record_toy.NAME_STYLE["upper"] = True  # "the mapping changed"
    report = await replay(record_toy.DEFINITION, settings, bus)
    assert await records(settings) == [("cus_a", "ACME RENAMED", 200), ("cus_b", "BETA", 100)]
    [table] = report.tables
    assert (table.changed_rows, table.new_or_changed, table.removed_or_changed) == (2, 2, 2)
    assert table.checksum_before != table.checksum_after
    assert (await replay(record_toy.DEFINITION, settings, bus)).changed_rows == 0


async def test_replay_since_only_touches_later_events_and_reports_failures(
    applied, settings: Settings, bus: Bus
) -> None:
    from datetime import UTC, datetime

    since = datetime.now(UTC)
    await publish(bus, customer_event("cus_c", name="Gamma", created=300))
    await publish(bus, customer_event("cus_d", name="Delta", created=300, poison=1))
    report = await replay(record_toy.DEFINITION, settings, bus, since=since)
    assert report.messages == 2 and report.applied == 1
    [failure] = report.failures
    assert "cannot map this customer" in failure.reason and failure.event_id.startswith("evt_")
    assert "1 events FAILED" in "\n".join(report.lines())
    assert report.tables[0].rows_after == 3
    # Failures are reported, not dead-lettered again.
    assert (await bus.js.stream_info("SYNCMESH_DLQ")).state.messages == 0


async def test_dry_run_replay_writes_nothing(applied, settings: Settings, bus: Bus) -> None:
    record_toy.NAME_STYLE["upper"] = True
    report = await replay(record_toy.DEFINITION, settings.with_overrides(dry_run=True), bus)
    assert report.dry_run and report.applied == 4 and report.changed_rows == 0
    assert await records(settings) == applied
    processed = await fetch(settings, "SELECT count(*) AS n FROM record_toy.processed_events")
    assert processed[0]["n"] == 4


async def test_replay_shows_a_handler_that_is_not_idempotent_at_record_level(settings: Settings, bus: Bus) -> None:
    """The shared toy service counts applications, so replay must show changed rows: the
    report is what tells an operator the precondition does not hold."""
    rt = ServiceRuntime(toy_service.DEFINITION, settings, port=0)
    await rt.start()
    await rt.wait_ready(20)
    try:
        await publish(bus, customer_event("cus_counted"))
        await eventually(lambda: rt.consumer.handled == 1)
    finally:
        await stop_runtime(rt)
    report = await replay(toy_service.DEFINITION, settings, bus)
    [table] = report.tables
    assert table.table == "toy_records" and table.changed_rows == 1
    rows = await fetch(settings, "SELECT times_applied FROM toy.toy_records")
    assert rows[0]["times_applied"] == 2


async def test_replay_in_batches_of_one_reports_the_same(applied, settings: Settings, bus: Bus) -> None:
    """Batches are read and decoded ahead of the one being applied: across many batches, repeats
    are still found and every message is counted once, in stream order."""
    late = customer_event("cus_c", name="Gamma", created=300)
    await publish(bus, late)
    await publish(bus, late, msg_id="resent-c")  # Stripe resent it past JetStream's dedup window
    record_toy.NAME_STYLE["upper"] = True
    report = await replay(record_toy.DEFINITION, settings, bus, batch_size=1)
    assert (report.messages, report.applied, report.repeats, report.failures) == (6, 5, 1, [])
    assert await records(settings) == [("cus_a", "ACME RENAMED", 200), ("cus_b", "BETA", 100), ("cus_c", "GAMMA", 300)]
    assert report.changed_rows == 3
    again = await replay(record_toy.DEFINITION, settings, bus, batch_size=2)
    assert (again.messages, again.applied, again.repeats, again.changed_rows) == (6, 5, 1, 0)


async def test_a_stream_that_fails_mid_replay_stops_it_with_that_error(
    applied, settings: Settings, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader runs ahead in its own task: its failure must reach the caller, not hang the
    replay, and the batches applied before it stay committed (each is its own transaction)."""
    from services.common.stream import StreamReader

    real = StreamReader.batches

    async def failing(self: StreamReader):  # type: ignore[no-untyped-def]
        batches = real(self)
        try:
            async for msgs in batches:
                yield msgs
                raise ConnectionResetError("the stream went away")
        finally:
            await batches.aclose()

    monkeypatch.setattr(StreamReader, "batches", failing)
    record_toy.NAME_STYLE["upper"] = True
    with pytest.raises(ConnectionResetError, match="went away"):
        await asyncio.wait_for(replay(record_toy.DEFINITION, settings, bus, batch_size=1), 30)
    # Only the first message was re-applied (and changed nothing: its record is newer), and no
    # event id was left forgotten without being applied again.
    assert await records(settings) == applied
    processed = await fetch(settings, "SELECT count(*) AS n FROM record_toy.processed_events")
    assert processed[0]["n"] == 4


async def test_a_rebuild_into_empty_tables_counts_every_row_as_new(applied, settings: Settings, bus: Bus) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute("DELETE FROM record_toy.toy_customers")  # the records lost, the history kept
    finally:
        await conn.close()
    report = await replay(record_toy.DEFINITION, settings, bus)
    assert await records(settings) == applied
    [table] = report.tables
    assert (table.rows_before, table.rows_after, table.new_or_changed, table.removed_or_changed) == (0, 2, 2, 0)
    assert report.changed_rows == 2


async def test_replay_collects_cycles_rarely_while_it_runs_and_restores_the_threshold(
    applied, settings: Settings, bus: Bus
) -> None:
    """The decoded batches a replay keeps alive are not traversed by the collector every 10,000
    allocations (see REPLAY_GC_THRESHOLD); the process's own setting is back afterwards."""
    import dataclasses
    import gc

    from ops.replay import REPLAY_GC_THRESHOLD

    seen: list[int] = []
    real = record_toy.DEFINITION.apply

    async def apply(conn, items):  # type: ignore[no-untyped-def]
        seen.append(gc.get_threshold()[0])
        await real(conn, items)

    before = gc.get_threshold()
    gc.set_threshold(10_000, *before[1:])
    try:
        report = await replay(dataclasses.replace(record_toy.DEFINITION, apply=apply), settings, bus)
        assert gc.get_threshold()[0] == 10_000
    finally:
        gc.set_threshold(*before)
    assert report.applied == 4 and seen and all(t == REPLAY_GC_THRESHOLD for t in seen)


async def test_replay_counts_the_domain_events_it_drops_without_building_them(
    applied, settings: Settings, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.common import outbox

    def never(**_: object) -> list[outbox.OutboxRow]:
        raise AssertionError("a suppressed domain event was built")

    monkeypatch.setattr(outbox, "prepare_events", never)
    record_toy.NAME_STYLE["upper"] = True
    report = await replay(record_toy.DEFINITION, settings, bus)
    assert (report.applied, report.failures, report.suppressed_events) == (4, [], 4)
    assert report.changed_rows == 2


# -- workers -----------------------------------------------------------------------------------


async def _execute(settings: Settings, sql: str) -> None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _more_history(bus: Bus) -> None:
    """Out of order and repeated: each customer's newer event before its older one, and copies of
    early events resent at the end (another message id: past JetStream's dedup window), so a
    repeat lies in another worker's part than its first occurrence."""
    early = []
    for i in range(8):
        newer = customer_event(f"cus_w{i}", name=f"W{i} new", created=300 + i)
        await publish(bus, newer)
        await publish(bus, customer_event(f"cus_w{i}", name=f"W{i} old", created=200 + i))
        early.append(newer)
    for i in (0, 1, 5):
        await publish(bus, early[i], msg_id=f"resent-{i}")


def _pid_recording(path: Path) -> ServiceDefinition:
    """record_toy's definition, noting the id of each process that applies a batch in `path`."""
    import dataclasses
    import os

    real = record_toy.DEFINITION.apply

    async def apply(conn, items):  # type: ignore[no-untyped-def]
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # appends of a line do not interleave
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        await real(conn, items)

    return dataclasses.replace(record_toy.DEFINITION, apply=apply)


async def test_workers_leave_the_tables_one_process_leaves(
    applied, settings: Settings, bus: Bus, tmp_path: Path
) -> None:
    import os

    await _more_history(bus)
    record_toy.NAME_STYLE["upper"] = True  # "the mapping changed"
    pids = tmp_path / "pids"
    definition = _pid_recording(pids)

    async def rebuild(workers: int, batch_size: int):  # type: ignore[no-untyped-def]
        await _execute(settings, "DELETE FROM record_toy.toy_customers")
        pids.write_text("")
        report = await replay(definition, settings, bus, batch_size=batch_size, workers=workers)
        return report, await records(settings), set(pids.read_text().split())

    one, rows_one, pids_one = await rebuild(1, 2)
    many, rows_many, pids_many = await rebuild(3, 2)
    assert pids_one == {str(os.getpid())}
    assert len(pids_many) == 3 and str(os.getpid()) not in pids_many  # three processes applied
    assert len(rows_one) == 10 and ("cus_w3", "W3 NEW", 303) in rows_one
    assert rows_many == rows_one
    assert (one.messages, one.applied, one.repeats, one.failures) == (23, 20, 3, [])
    assert (many.messages, many.applied, many.repeats, many.failures) == (23, 20, 3, [])
    assert many.tables == one.tables  # from empty to the same rows, the same checksum
    assert (one.workers, many.workers) == (1, 3) and "with 3 workers" in many.lines()[0]
    processed = await fetch(settings, "SELECT count(*) AS n FROM record_toy.processed_events")
    assert processed[0]["n"] == 20
    # Again, over what the workers built: nothing changes, and the counts are one process's.
    again = await replay(record_toy.DEFINITION, settings, bus, batch_size=1, workers=2)
    assert (again.messages, again.applied, again.repeats, again.failures, again.changed_rows) == (23, 20, 3, [], 0)
    assert "changed 0 rows in total" in "\n".join(again.lines())


async def test_failures_in_a_worker_are_reported(applied, settings: Settings, bus: Bus) -> None:
    await _more_history(bus)
    await publish(bus, customer_event("cus_p", name="Poison", created=300, poison=1))
    report = await replay(record_toy.DEFINITION, settings, bus, batch_size=2, workers=2)
    assert (report.messages, report.applied, report.repeats) == (24, 20, 3)
    [failure] = report.failures
    assert "cannot map this customer" in failure.reason and failure.stream_sequence == 24
    assert "1 events FAILED" in "\n".join(report.lines())
    assert (await bus.js.stream_info("SYNCMESH_DLQ")).state.messages == 0


async def test_dry_run_with_workers_writes_nothing(applied, settings: Settings, bus: Bus) -> None:
    await _more_history(bus)
    built = await replay(record_toy.DEFINITION, settings, bus, batch_size=2, workers=2)
    rows = await records(settings)
    record_toy.NAME_STYLE["upper"] = True
    report = await replay(record_toy.DEFINITION, settings.with_overrides(dry_run=True), bus, batch_size=2, workers=3)
    assert report.dry_run and (report.messages, report.applied, report.changed_rows) == (23, built.applied, 0)
    assert await records(settings) == rows
    processed = await fetch(settings, "SELECT count(*) AS n FROM record_toy.processed_events")
    assert processed[0]["n"] == 20


@pytest.mark.parametrize("how", ["raises", "dies", "cannot connect"])
async def test_a_failing_worker_fails_the_replay_clearly(
    applied, settings: Settings, bus: Bus, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Whether a worker's part raises, its process dies, or it cannot reach NATS: the replay
    raises an error that names the worker and says what to do, and gives no report."""
    import os

    from ops import common
    from ops.replay import ReplayWorkerError
    from services.common.errors import SettingsError
    from services.common.stream import StreamReader

    await _more_history(bus)
    real = StreamReader.batches

    async def failing(self: StreamReader):  # type: ignore[no-untyped-def]
        async for msgs in real(self):
            if self.start_sequence is not None and self.start_sequence > 1:  # a worker's part, not the first
                if how == "dies":
                    os._exit(3)
                raise ConnectionResetError("the stream went away")
            yield msgs

    def unreachable(*_: object, **__: object):  # type: ignore[no-untyped-def]
        raise SettingsError("NATS at SYNCMESH_NATS_URL did not answer within 10s")

    if how == "cannot connect":
        monkeypatch.setattr(common, "connected_bus", unreachable)
    else:
        monkeypatch.setattr(StreamReader, "batches", failing)
    expected = {
        "raises": r"replay worker 2 of 2 \(stream seq \d+-\d+, pid \d+\) failed: ConnectionResetError",
        "dies": r"replay worker 2 of 2 .* ended without its report \(exit code 3\)",
        "cannot connect": r"replay worker \d of 2 .* failed: SettingsError: NATS",
    }[how]
    with pytest.raises(ReplayWorkerError, match=expected) as raised:
        await asyncio.wait_for(replay(record_toy.DEFINITION, settings, bus, batch_size=2, workers=2), 60)
    assert "run the replay again" in str(raised.value)


async def test_a_batch_that_meets_a_deadlock_is_tried_again_not_reported(
    applied, settings: Settings, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers (or a running service) may deadlock on shared records: PostgreSQL aborts one
    side, whose batch is rolled back and applied again whole, not reported as failed."""
    import dataclasses

    real = record_toy.DEFINITION.apply
    calls = [0]

    async def apply(conn, items):  # type: ignore[no-untyped-def]
        calls[0] += 1
        await real(conn, items)
        if calls[0] <= 2:
            raise asyncpg.DeadlockDetectedError("deadlock detected")

    record_toy.NAME_STYLE["upper"] = True
    definition = dataclasses.replace(record_toy.DEFINITION, apply=apply)
    report = await replay(definition, settings, bus)
    assert (report.messages, report.applied, report.failures) == (4, 4, [])
    assert calls[0] == 3  # the batch of four, twice rolled back, then once more
    assert await records(settings) == [("cus_a", "ACME RENAMED", 200), ("cus_b", "BETA", 100)]


async def test_workers_replay_since_a_time(applied, settings: Settings, bus: Bus) -> None:
    """`--since` with workers: the window starts at the first message since then, not at the
    stream's first, and is split from there."""
    from datetime import UTC, datetime

    since = datetime.now(UTC)
    await _more_history(bus)
    report = await replay(record_toy.DEFINITION, settings, bus, since=since, batch_size=2, workers=2)
    assert (report.workers, report.messages, report.applied, report.repeats, report.failures) == (2, 19, 16, 3, [])
    assert report.tables[0].rows_after == 10
