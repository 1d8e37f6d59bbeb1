"""Replay: rebuild one service's records from the STRIPE stream, e.g. after a mapping or a
setting changed, and show what that changed.

The stream keeps every Stripe event for `stream_max_age_days` (400), so a service's records
can be recomputed from it. Replay reads the stream (from the start, or from `--since`) with an
ephemeral consumer filtered on the service's subjects, and applies the messages with the
runtime's own `BatchRunner` and the service's own applier (one transaction per batch, a
savepoint per message only when one fails, the idempotency record). So a replayed event is
applied exactly as it was live, by the same code. Being a backlog, it goes in batches of 1,000
(`--batch-size`), and the next batches are read (no acks: the consumer is ephemeral) and
decoded, each message once, while PostgreSQL applies the one before; batches are still applied
one at a time, in stream order. Progress is a line every few seconds (`services.common.progress`).

To make the applier run again, the batch's event ids are removed from `processed_events` in
the same transaction that re-applies them (the runner's transaction nests in it as a
savepoint): a crash mid-replay leaves every event either as it was or re-applied, never
forgotten. An event id that occurs twice in the stream (a redrive, or a repeat beyond
JetStream's dedup window) is re-applied once per replay. Under dry run that transaction is
rolled back: nothing at all is written.

Precondition: appliers are idempotent at the record level (guarded upserts that compare a
version key, statuses that only move forward), so applying an event the records already
reflect leaves them unchanged. The mesh's services are written that way; a handler that, say,
increments a counter per application is not, and replay shows it as changed rows.

Replay does not re-announce history to other teams: domain events the appliers emit are
dropped unless `emit_events` is set, because the outbox gives each emission a new id and
subscribers would take them for new facts.

Failures do not go to the dead-letter stream (the live service already did that when it
mattered); they are reported, the event's records stay as they were, and the event is left
unmarked in processed_events, so the next replay (or a redrive) tries it again.

What changed is measured on the service's own tables (the runtime's processed_events,
outbox and schema_migrations are left out): row counts before and after, rows that differ
(compared as whole rows, by a hash of each kept in a temporary table, so each table is read
once before and once after), and a checksum per table. A second replay of the same history
reports 0 changed rows.

The service may keep running meanwhile (the guarded upserts make concurrent writes safe), but
then whatever it writes during the replay shows up in the comparison too; for a clean report,
run replay while the service is scaled to zero. The replay ends at the stream's last message
as of its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from services.common import db
from services.common.bus import STRIPE_STREAM, Bus
from services.common.consumer import (
    DATABASE_ERRORS,
    Batch,
    BatchApplier,
    BatchItem,
    BatchRunner,
    Outcome,
    Received,
    database_unavailable,
    receive,
)
from services.common.errors import SettingsError
from services.common.progress import progress
from services.common.service import ServiceDefinition
from services.common.settings import Settings
from services.common.stream import StreamReader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableChange:
    table: str
    rows_before: int
    rows_after: int
    #: Rows present after that were not present (identically) before: new or changed.
    new_or_changed: int
    #: Rows present before that are not present (identically) after: removed or changed.
    removed_or_changed: int
    checksum_before: str
    checksum_after: str

    @property
    def changed_rows(self) -> int:
        return max(self.new_or_changed, self.removed_or_changed)


@dataclass(frozen=True)
class ReplayFailure:
    stream_sequence: int
    event_id: str
    reason: str


@dataclass
class ReplayReport:
    service: str
    since: datetime | None
    messages: int = 0
    applied: int = 0
    repeats: int = 0
    suppressed_events: int = 0
    failures: list[ReplayFailure] = field(default_factory=list)
    tables: list[TableChange] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed_rows(self) -> int:
        return sum(t.changed_rows for t in self.tables)

    def lines(self) -> list[str]:
        start = self.since.isoformat() if self.since else "the start of the stream"
        out = [
            f"replayed {self.messages} messages into {self.service} from {start}"
            + (" (dry run: nothing written)" if self.dry_run else ""),
            f"  handled again: {self.applied}; repeated event ids in the stream: {self.repeats}",
        ]
        if self.suppressed_events:
            out.append(f"  domain events not re-emitted: {self.suppressed_events} (pass --emit-events to send them)")
        for t in self.tables:
            out.append(
                f"  {t.table}: rows {t.rows_before} -> {t.rows_after}, changed {t.changed_rows} "
                f"(new/changed {t.new_or_changed}, removed/changed {t.removed_or_changed}), "
                f"checksum {t.checksum_before[:12]} -> {t.checksum_after[:12]}"
            )
        out.append(f"  changed {self.changed_rows} rows in total")
        if self.failures:
            out.append(f"  {len(self.failures)} events FAILED; their records are as before (fix, then replay again):")
            for f in self.failures[:20]:
                out.append(f"    stream seq {f.stream_sequence} {f.event_id or '-'}: {f.reason}")
            if len(self.failures) > 20:
                out.append(f"    ... and {len(self.failures) - 20} more (see the log)")
        return out


def _without_emits(apply: BatchApplier, counter: list[int]) -> BatchApplier:
    """The applier with each event's domain events counted and dropped, never built."""

    async def run(conn: db.Conn, items: Sequence[BatchItem]) -> None:
        for item in items:
            item.ctx.announce = False
        await apply(conn, items)
        counter[0] += sum(len(item.ctx.emitted) for item in items)

    return run


async def service_tables(conn: db.Conn, schema: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = $1 AND table_type = 'BASE TABLE' ORDER BY table_name",
        schema,
    )
    return [str(r["table_name"]) for r in rows if r["table_name"] not in db.RUNTIME_TABLES]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _snapshot(conn: db.Conn, schema: str, tables: Sequence[str]) -> dict[str, tuple[int, str]]:
    """Keep a hash of every row in a temporary table (this session only); return counts and checksums."""
    out: dict[str, tuple[int, str]] = {}
    for i, table in enumerate(tables):
        await conn.execute(f"DROP TABLE IF EXISTS pg_temp.replay_before_{i}")
        await conn.execute(
            f"CREATE TEMP TABLE replay_before_{i} AS SELECT md5(t::text) AS h FROM {_ident(schema)}.{_ident(table)} t"
        )
        out[table] = await _count_and_checksum(conn, f"pg_temp.replay_before_{i}")
    return out


async def _count_and_checksum(conn: db.Conn, relation: str) -> tuple[int, str]:
    row = await conn.fetchrow(
        f"SELECT count(*) AS n, coalesce(md5(string_agg(h, '' ORDER BY h)), md5('')) AS sum FROM {relation}"
    )
    assert row is not None
    return int(row["n"]), str(row["sum"])


async def _compare(
    conn: db.Conn, schema: str, tables: Sequence[str], before: dict[str, tuple[int, str]]
) -> list[TableChange]:
    """Hash every row once more (into a temporary table beside the one `_snapshot` kept), then
    count and compare the two sets of hashes: one pass over each table, however it changed."""
    changes = []
    for i, table in enumerate(tables):
        before_rows = f"pg_temp.replay_before_{i}"
        after_rows = f"pg_temp.replay_after_{i}"
        await conn.execute(f"DROP TABLE IF EXISTS {after_rows}")
        await conn.execute(
            f"CREATE TEMP TABLE replay_after_{i} AS SELECT md5(t::text) AS h FROM {_ident(schema)}.{_ident(table)} t"
        )
        rows_after, checksum_after = await _count_and_checksum(conn, after_rows)
        rows_before, checksum_before = before[table]
        if checksum_after == checksum_before:
            new_or_changed = removed_or_changed = 0  # the same multiset of row hashes
        elif not rows_before or not rows_after:  # a rebuild from nothing, or everything gone
            new_or_changed, removed_or_changed = rows_after, rows_before
        else:
            new_or_changed = await conn.fetchval(
                f"SELECT count(*) FROM (SELECT h FROM {after_rows} EXCEPT ALL SELECT h FROM {before_rows}) d"
            )
            removed_or_changed = await conn.fetchval(
                f"SELECT count(*) FROM (SELECT h FROM {before_rows} EXCEPT ALL SELECT h FROM {after_rows}) d"
            )
        await conn.execute(f"DROP TABLE IF EXISTS {after_rows}, {before_rows}")
        changes.append(
            TableChange(
                table=table,
                rows_before=rows_before,
                rows_after=rows_after,
                new_or_changed=int(new_or_changed or 0),
                removed_or_changed=int(removed_or_changed or 0),
                checksum_before=checksum_before,
                checksum_after=checksum_after,
            )
        )
    return changes


#: Messages per batch. A replay is a backlog by definition, and the appliers are set-based (a
#: few statements per batch whatever its size), so larger batches cost less per event. The
#: price is paid only when an event fails: the runner then redoes its batch one at a time.
BATCH_SIZE = 1000

#: Batches read and decoded ahead of the one being applied: the stream is read and decoded
#: while PostgreSQL works on the batch before, instead of each waiting for the other.
READ_AHEAD = 2


@dataclass
class _Decoded:
    """A batch read from the stream and decoded, with the event ids to forget before applying it."""

    count: int
    batch: Batch
    forget: list[str]


#: What the reader hands over: a batch, what stopped it, or None at the end of the window.
_Item = _Decoded | Exception | None

#: The cyclic collector's youngest-generation threshold while replaying (the services' is
#: `service.GC_GEN0_THRESHOLD`, 10,000). It counts net allocations: objects created minus objects
#: freed. A replay keeps a few batches of decoded events alive (the one being applied and
#: `READ_AHEAD` more: 40,000-70,000 tracked objects) and frees almost everything else by reference
#: counting as it goes, so at 10,000 the collector kept traversing those live batches, generation
#: 0 and then 1, for nothing: 15-20 % of the tool's CPU (bench/results/HISTORY.md). At 1,000,000
#: a collection still runs once that many objects have really accumulated (garbage in cycles,
#: say), so memory stays bounded; the tool's peak RSS did not move.
REPLAY_GC_THRESHOLD = 1_000_000


@contextlib.contextmanager
def _collect_rarely() -> Iterator[None]:
    """Raise the youngest generation's threshold for the replay, and put it back after."""
    before = gc.get_threshold()
    if before[0]:  # 0: automatic collection is off, and stays so
        gc.set_threshold(max(before[0], REPLAY_GC_THRESHOLD), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


async def replay(
    definition: ServiceDefinition,
    settings: Settings,
    bus: Bus,
    *,
    since: datetime | None = None,
    emit_events: bool = False,
    batch_size: int = BATCH_SIZE,
    show_progress: bool = False,
) -> ReplayReport:
    """Re-handle the service's events from the stream and report what changed in its tables."""
    if not settings.database_url:
        raise SettingsError("SYNCMESH_DATABASE_URL must be set: replay writes the service's records")
    report = ReplayReport(service=definition.name, since=since, dry_run=settings.dry_run)
    pool = await db.create_pool(settings.database_url, definition.schema, max_size=3)
    try:
        await db.migrate(
            pool,
            definition.schema,
            [("runtime", db.RUNTIME_MIGRATIONS), (definition.name, definition.migrations)],
        )
        async with pool.acquire() as snapshot_conn:
            tables = await service_tables(snapshot_conn, definition.schema)
            before = await _snapshot(snapshot_conn, definition.schema, tables)
            with _collect_rarely():
                await _run(
                    definition,
                    settings,
                    bus,
                    pool,
                    report,
                    since=since,
                    emit_events=emit_events,
                    batch_size=batch_size,
                    show_progress=show_progress,
                )
            report.tables = await _compare(snapshot_conn, definition.schema, tables, before)
    finally:
        await pool.close()
    log.info("replay of %s: %d messages, %d rows changed", definition.name, report.messages, report.changed_rows)
    return report


async def _run(
    definition: ServiceDefinition,
    settings: Settings,
    bus: Bus,
    pool: asyncpg.Pool,
    report: ReplayReport,
    *,
    since: datetime | None,
    emit_events: bool,
    batch_size: int,
    show_progress: bool,
) -> None:
    suppressed = [0]
    apply = definition.apply if emit_events else _without_emits(definition.apply, suppressed)
    runner = BatchRunner(service=definition.name, settings=settings, apply=apply)
    reader = StreamReader(bus, STRIPE_STREAM, subjects=definition.subjects, start_time=since, batch=batch_size)
    window = await reader.window()
    bar = progress(total=window.pending, desc=f"replay {definition.name}", unit="msg", enabled=show_progress)
    queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=READ_AHEAD)
    reading = asyncio.get_running_loop().create_task(_read(reader, settings.mode, report, queue))
    try:
        while (decoded := await queue.get()) is not None:
            if isinstance(decoded, Exception):
                raise decoded
            await _forget_then_apply(pool, runner, decoded.batch, decoded.forget, rollback=settings.dry_run)
            _report(decoded.batch, report)
            report.messages += decoded.count
            bar.update(decoded.count)
    finally:
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
        bar.close()
    report.suppressed_events = suppressed[0]


async def _read(reader: StreamReader, mode: str, report: ReplayReport, queue: asyncio.Queue[_Item]) -> None:
    """Read and decode batches in stream order, each message once; then None, or what failed."""
    replayed: set[str] = set()
    try:
        async with contextlib.aclosing(reader.batches()) as batches:  # its consumer deleted at once
            async for msgs in batches:
                batch = receive(msgs, mode)
                forget: list[str] = []
                for d in batch.deliveries:
                    if d.event.id in replayed:
                        report.repeats += 1
                    else:
                        replayed.add(d.event.id)
                        forget.append(d.event.id)
                await queue.put(_Decoded(len(msgs), batch, forget))
    except Exception as exc:  # handed to the applying side, which raises it in order
        await queue.put(exc)
    else:
        await queue.put(None)


async def _forget_then_apply(
    pool: asyncpg.Pool, runner: BatchRunner, batch: Batch, forget: Sequence[str], *, rollback: bool
) -> None:
    """Delete the batch's event ids from processed_events, then apply it, in ONE transaction (the
    runner's own nests in it as a savepoint), so forgetting and re-applying commit together.
    Under dry run the whole of it is rolled back."""
    if not batch.deliveries:
        return
    try:
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                if forget:
                    await conn.execute("DELETE FROM processed_events WHERE event_id = ANY($1::text[])", forget)
                await runner.run(conn, batch.deliveries)
            except BaseException:
                await tx.rollback()
                raise
            if rollback:
                await tx.rollback()
            else:
                await tx.commit()
    except DATABASE_ERRORS as exc:
        database_unavailable(batch.deliveries, exc)


#: What replay counts as handled again (a skip is a decision the applier made on this run).
_APPLIED = (Outcome.APPLIED, Outcome.SKIPPED)


def _report(batch: Batch, report: ReplayReport) -> None:
    """Count what was applied; every other outcome but a repeat is reported as a failure, not
    dead-lettered (the live service already did that when it mattered)."""
    for d in batch.deliveries:
        if d.received.outcome in _APPLIED:
            report.applied += 1
        elif d.received.outcome is not Outcome.DUPLICATE:
            _failed(report, d.received, d.event.id)
    for r in batch.received:
        if r.outcome is Outcome.UNDECODABLE:
            _failed(report, r, (r.msg.headers or {}).get("Nats-Msg-Id", ""))


def _failed(report: ReplayReport, r: Received, event_id: str) -> None:
    sequence = int(r.msg.metadata.sequence.stream)
    reason = r.detail or f"not applied ({r.outcome.value if r.outcome else 'undecided'})"
    log.error("replay could not apply stream seq %d (%s): %s", sequence, event_id, reason)
    report.failures.append(ReplayFailure(sequence, event_id, reason))
