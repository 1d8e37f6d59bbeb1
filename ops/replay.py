"""Replay: rebuild one service's records from the STRIPE stream, e.g. after a mapping or a
setting changed, and show what that changed.

The stream keeps every Stripe event for `stream_max_age_days` (400), so a service's records
can be recomputed from it. Replay reads the stream (from the start, or from `--since`) with an
ephemeral consumer filtered on the service's subjects, and applies the messages with the
runtime's own `BatchRunner` and the service's own applier (one transaction per batch, a
savepoint per message only when one fails, the idempotency record). So a replayed event is
applied exactly as it was live, by the same code. Being a backlog, it goes in batches of 1,000
(`--batch-size`), and the next batches are read (no acks: the consumer is ephemeral) and
decoded, each message once, while PostgreSQL applies the one before. Progress is a line every few
seconds (`services.common.progress`).

Workers (`workers`, `syncmesh replay --workers N`; the command's default is one per core, at most
4): the tool is bound by its own Python (about 0.2 ms of CPU per event, PostgreSQL's 0.05), so
the window is split into N contiguous ranges of stream sequences, each applied by a worker
process (this one forked: no import, a worker connects within tens of ms) with its own NATS
connection, ephemeral consumer and pool, through the same `_apply_stream`. One process (N = 1)
applies the window in stream order; N workers apply their ranges side by side, which the
appliers allow: they are order-independent and already run as several replicas at once. This
process migrates, compares the tables before and after, shows one progress line for all, and
merges the workers' counts and failures into one report.

An event id is forgotten and re-applied by exactly one worker, the first to read it: a worker
asks this process, batch by batch, which of its ids are new to the window; repeats are counted
and left out of its batch. So the report's counts are one process's (`repeats` is the number of
messages whose event id came earlier in the window, whichever worker read them), no two workers
write the same `processed_events` row, and `processed_events` ends as with one process. (One
difference: with one process, a repeat of an event whose first application FAILED in this replay
is tried again and reported again; with workers it is counted as a repeat.) Two workers' batches
may still lock the same records (an invoice with events in both ranges); the appliers lock in a
fixed order as live replicas do, and a deadlock or serialization failure rolls the batch back
and retries it (`CONFLICTS`) rather than reporting its events as failed.

What the records reflect does not depend on the workers, but what records the ORDER events
were applied in follows the workers' interleaving instead of the stream: billing's
`record_history` (a log of each change as applied: an invoice whose events fall in two ranges
may log other steps, and more of them), billing's ERP invoice numbers (`erp_invoice_id` is
taken from a sequence when an invoice is first written, so a rebuild from nothing numbers
invoices in the order they are first applied; a replay over existing invoices keeps theirs),
and `processed_events.stream_sequence` (the copy of a repeated event that was applied).
Compared column by column on 20,000 billing events rebuilt from nothing (bench/results/HISTORY.md,
2026-12-08): everything else identical with 1, 2 and 3 workers. Where those must follow stream
order, use one worker.

A worker that fails, cannot connect, or dies stops the replay: the others are ended (their open
transactions roll back), no report is printed, and `ReplayWorkerError` names the worker, its
range and the cause (the command exits 1). What the workers committed stays committed, each
event as it was or re-applied, so running the replay again finishes it. Ctrl-C reaches this
process (the workers ignore SIGINT), which ends the workers the same way.

To make the applier run again, the batch's event ids are removed from `processed_events` in
the same transaction that re-applies them (the runner's transaction nests in it as a
savepoint): a crash mid-replay leaves every event either as it was or re-applied, never
forgotten. An event id that occurs twice in the stream (a redrive, or a repeat beyond
JetStream's dedup window) is re-applied once per replay. Under dry run that transaction is
rolled back (in every worker): nothing at all is written.

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
import multiprocessing
import multiprocessing.process
import os
import pickle
import random
import signal
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from services.common import db
from services.common.bus import STRIPE_STREAM, Bus
from services.common.consumer import (
    DATABASE_ERRORS,
    Batch,
    BatchApplier,
    BatchItem,
    BatchRunner,
    Delivery,
    Outcome,
    Received,
    database_unavailable,
    receive,
)
from services.common.errors import SettingsError, SyncMeshError
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
    #: Processes that applied the window (1: this one, in stream order).
    workers: int = 1

    @property
    def changed_rows(self) -> int:
        return sum(t.changed_rows for t in self.tables)

    def lines(self) -> list[str]:
        start = self.since.isoformat() if self.since else "the start of the stream"
        out = [
            f"replayed {self.messages} messages into {self.service} from {start} "
            f"with {self.workers} worker{'s' if self.workers != 1 else ''}"
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
    workers: int = 1,
) -> ReplayReport:
    """Re-handle the service's events from the stream and report what changed in its tables;
    with `workers` > 1, in that many processes, each over its own part of the window."""
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
                if workers > 1:
                    await _run_parallel(
                        definition,
                        settings,
                        bus,
                        pool,
                        report,
                        since=since,
                        emit_events=emit_events,
                        batch_size=batch_size,
                        show_progress=show_progress,
                        workers=workers,
                    )
                else:
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
    """The whole window in this process, applied in stream order."""
    reader = StreamReader(bus, STRIPE_STREAM, subjects=definition.subjects, start_time=since, batch=batch_size)
    window = await reader.window()
    bar = progress(total=window.pending, desc=f"replay {definition.name}", unit="msg", enabled=show_progress)
    try:
        await _apply_stream(
            definition,
            settings,
            pool,
            reader,
            report,
            emit_events=emit_events,
            claim=_claim_locally(),
            on_applied=bar.update,
        )
    finally:
        bar.close()


#: Decides, for a decoded batch, which event ids to forget (first occurrences in the window),
#: counting the repeats in the report; it may drop repeats from the batch (workers do).
_Claim = Callable[[Batch, ReplayReport], Awaitable[list[str]]]


def _claim_locally() -> _Claim:
    """One process: an event id's first occurrence in the window is forgotten and re-applied; a
    later one stays in its batch, where the runner finds it recorded and counts it a duplicate."""
    replayed: set[str] = set()

    async def claim(batch: Batch, report: ReplayReport) -> list[str]:
        forget: list[str] = []
        for d in batch.deliveries:
            if d.event.id in replayed:
                report.repeats += 1
            else:
                replayed.add(d.event.id)
                forget.append(d.event.id)
        return forget

    return claim


async def _apply_stream(
    definition: ServiceDefinition,
    settings: Settings,
    pool: asyncpg.Pool,
    reader: StreamReader,
    report: ReplayReport,
    *,
    emit_events: bool,
    claim: _Claim,
    on_applied: Callable[[int], object],
) -> None:
    """Read (ahead) and apply `reader`'s window batch by batch, counting into `report`."""
    suppressed = [0]
    apply = definition.apply if emit_events else _without_emits(definition.apply, suppressed)
    runner = BatchRunner(service=definition.name, settings=settings, apply=_conflicts_escape(apply))
    plain = BatchRunner(service=definition.name, settings=settings, apply=apply)
    queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=READ_AHEAD)
    reading = asyncio.get_running_loop().create_task(_read(reader, settings.mode, report, queue, claim))
    try:
        while (decoded := await queue.get()) is not None:
            if isinstance(decoded, Exception):
                raise decoded
            await _forget_then_apply(pool, runner, plain, decoded.batch, decoded.forget, rollback=settings.dry_run)
            _report(decoded.batch, report)
            report.messages += decoded.count
            on_applied(decoded.count)
    finally:
        if not reading.done():
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
    report.suppressed_events += suppressed[0]


async def _read(
    reader: StreamReader, mode: str, report: ReplayReport, queue: asyncio.Queue[_Item], claim: _Claim
) -> None:
    """Read and decode batches in stream order, each message once; then None, or what failed."""
    try:
        async with contextlib.aclosing(reader.batches()) as batches:  # its consumer deleted at once
            async for msgs in batches:
                batch = receive(msgs, mode)
                forget = await claim(batch, report)
                await queue.put(_Decoded(len(msgs), batch, forget))
    except Exception as exc:  # handed to the applying side, which raises it in order
        await queue.put(exc)
    else:
        await queue.put(None)


#: What PostgreSQL raises to one of two transactions that wait on each other (a deadlock) or
#: cannot both commit: the batch is retried whole, not reported as failed. With one process these
#: come only from a service running beside the replay; with workers, from two workers' batches
#: that touch the same records (an invoice's events in both their ranges).
CONFLICTS: tuple[type[Exception], ...] = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

#: Tries of a batch that met a conflict; the last try lets the runner isolate and report it.
CONFLICT_ATTEMPTS = 4


class _Conflict(BaseException):
    """A conflict the applier met, carried through the runner (which turns an `Exception` into
    a per-message failure and a one-by-one pass) up to `_forget_then_apply`, which retries."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


#: What `_forget_then_apply` retries: a conflict met by the applier, or by its own statements.
_RETRIED: tuple[type[BaseException], ...] = (_Conflict, *CONFLICTS)


def _conflicts_escape(apply: BatchApplier) -> BatchApplier:
    """The applier, with a deadlock or serialization failure raised as `_Conflict`."""

    async def run(conn: db.Conn, items: Sequence[BatchItem]) -> None:
        try:
            await apply(conn, items)
        except CONFLICTS as exc:
            raise _Conflict(exc) from exc

    return run


async def _forget_then_apply(
    pool: asyncpg.Pool,
    runner: BatchRunner,
    plain: BatchRunner,
    batch: Batch,
    forget: Sequence[str],
    *,
    rollback: bool,
) -> None:
    """Delete the batch's event ids from processed_events, then apply it, in ONE transaction (the
    runner's own nests in it as a savepoint), so forgetting and re-applying commit together.
    Under dry run the whole of it is rolled back.

    A deadlock or serialization failure rolls the whole transaction back and tries the batch
    again (`CONFLICT_ATTEMPTS`, after a short random pause so the two sides do not meet again);
    the last try is made with `plain`, whose runner isolates what still conflicts and reports it
    as failed."""
    if not batch.deliveries:
        return
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        last = attempt == CONFLICT_ATTEMPTS
        try:
            await _forget_then_apply_once(pool, plain if last else runner, batch, forget, rollback=rollback)
            return
        except _RETRIED as exc:
            if last:  # the plain runner raises no _Conflict: this one is the DELETE's or the COMMIT's
                database_unavailable(batch.deliveries, exc)
                return
            log.warning("replay batch met a conflict (%s); trying it again (%d of %d)", exc, attempt, CONFLICT_ATTEMPTS)
            for d in batch.deliveries:
                d.received.outcome, d.received.detail = None, ""
            await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)
        except DATABASE_ERRORS as exc:
            database_unavailable(batch.deliveries, exc)
            return


async def _forget_then_apply_once(
    pool: asyncpg.Pool, runner: BatchRunner, batch: Batch, forget: Sequence[str], *, rollback: bool
) -> None:
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


# -- workers -----------------------------------------------------------------------------------


def default_workers() -> int:
    """One worker per core this process may run on, at most 4: the tool is bound by its own
    Python (about 0.2 ms of CPU per event against PostgreSQL's 0.05), so a worker per core is
    what helps; more workers than cores only share them, with PostgreSQL and nats-server too.
    Measured on 2 cores: bench/results/HISTORY.md (2026-12-08, issue 20)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


class ReplayWorkerError(SyncMeshError):
    """A worker failed, crashed or could not connect: the replay stops without a report."""


#: What an operator does about a failed worker (the end of every ReplayWorkerError).
_AFTER_A_WORKER_FAILED = (
    "The replay stopped without a report. Each batch a worker committed stays committed (every event "
    "either as it was or re-applied), so fix the cause (see the worker's log lines above) and run the "
    "replay again; `--workers 1` applies everything in this one process."
)


@dataclass(frozen=True)
class _Part:
    """A worker's contiguous part of the window: stream sequences `first` to `last`."""

    index: int
    first: int
    last: int


def _split(first: int, last: int, parts: int) -> list[_Part]:
    """`parts` contiguous ranges of stream sequences covering `first`..`last`, as equal as can be.

    Equal in sequences, not in the service's messages: a stream that holds other services'
    subjects too may give one worker more of this service's messages than another. Stripe's
    traffic is mixed evenly enough over time for that not to matter much; a worker that finishes
    early leaves its core to the others and to PostgreSQL."""
    span = last - first + 1
    parts = max(1, min(parts, span))
    out: list[_Part] = []
    start = first
    for i in range(parts):
        size = span // parts + (1 if i < span % parts else 0)
        out.append(_Part(i, start, start + size - 1))
        start += size
    return out


@dataclass
class _WorkerResult:
    """What a worker counted over its part, sent to the parent when it is done."""

    messages: int
    applied: int
    repeats: int
    suppressed_events: int
    failures: list[ReplayFailure]


@dataclass(frozen=True)
class _WorkerSpec:
    """Everything a worker needs, inherited through fork (nothing is pickled)."""

    part: _Part
    workers: int
    definition: ServiceDefinition
    settings: Settings
    emit_events: bool
    batch_size: int
    #: `time.monotonic()` when the parent started it (the clock is the machine's, not the process's).
    started: float


_LENGTH = struct.Struct(">I")


def _frame(obj: object) -> bytes:
    """One message between a worker and the parent: its length, then its pickle. Both ends are
    this program (a socketpair made before fork), so pickle reads nothing foreign."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    """The next message, or None when the other end closed its socket."""
    try:
        head = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError:
        return None
    return pickle.loads(await reader.readexactly(_LENGTH.unpack(head)[0]))


async def _run_parallel(
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
    workers: int,
) -> None:
    """The window split into contiguous ranges of stream sequences, one per worker process.

    Each worker is this process forked (no import, no pickling: a worker is running ~10 ms after
    it is started, then connects to NATS and PostgreSQL), with its own connections and ephemeral
    consumer over its range, and applies it with the same `_apply_stream` as one process does.

    An event id is forgotten and re-applied by ONE worker: the first to read it. Before applying
    a batch a worker asks this process which of its ids are new to the whole window; a repeat is
    counted and left out of its batch (one process leaves it in, where the runner finds it
    recorded: the same effect). So no two workers ever write the same `processed_events` row, and
    the report counts what one process would. Records two workers' batches share (an invoice with
    events in both ranges) are locked by the appliers as among replicas of the live service; a
    deadlock or serialization failure between them retries the batch (`CONFLICTS`)."""
    whole = StreamReader(bus, STRIPE_STREAM, subjects=definition.subjects, start_time=since, batch=batch_size)
    window = await whole.window()
    first = await whole.first_sequence() if window.pending else None
    if first is None or first > window.last_sequence:
        return
    parts = _split(first, window.last_sequence, min(workers, -(-window.pending // batch_size)))
    if len(parts) == 1:
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
        return
    report.workers = len(parts)
    fork = multiprocessing.get_context("fork")
    pairs = [socket.socketpair() for _ in parts]
    procs: list[multiprocessing.process.BaseProcess] = []
    try:
        # Frozen, the objects this process has are never traversed (nor freed) by a worker's
        # collector: they are not its own, and a freed transport would close the parent's socket.
        gc.freeze()
        try:
            for part, (_, theirs) in zip(parts, pairs, strict=True):
                others = [s for pair in pairs for s in pair if s is not theirs]
                spec = _WorkerSpec(part, len(parts), definition, settings, emit_events, batch_size, time.monotonic())
                proc = fork.Process(
                    target=_worker_main,
                    args=(spec, theirs, others),
                    name=f"replay-worker-{part.index + 1}",
                    daemon=True,
                )
                proc.start()
                procs.append(proc)
        finally:
            gc.unfreeze()
        for _, theirs in pairs:
            theirs.close()
        await _serve_workers(definition, report, parts, procs, pairs, window.pending, show_progress)
    finally:
        for mine, theirs in pairs:
            mine.close()
            theirs.close()
        await _stop(procs)


async def _serve_workers(
    definition: ServiceDefinition,
    report: ReplayReport,
    parts: Sequence[_Part],
    procs: Sequence[multiprocessing.process.BaseProcess],
    pairs: Sequence[tuple[socket.socket, socket.socket]],
    pending: int,
    show_progress: bool,
) -> None:
    """Answer the workers' questions, show their progress on one line, and merge their counts;
    the first worker that fails (or ends without its result) stops them all."""
    bar = progress(total=pending, desc=f"replay {definition.name}", unit="msg", enabled=show_progress)
    seen: set[str] = set()
    results: dict[int, _WorkerResult] = {}
    writers: list[asyncio.StreamWriter] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        for part, proc, (mine, _) in zip(parts, procs, pairs, strict=True):
            reader, writer = await asyncio.open_connection(sock=mine)
            writers.append(writer)
            name = (
                f"replay worker {part.index + 1} of {len(parts)} (stream seq {part.first}-{part.last}, pid {proc.pid})"
            )
            tasks.append(asyncio.create_task(_serve(name, part, proc, reader, writer, seen, results, bar.update)))
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # the first failure, raised
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in writers:
            writer.close()
        bar.close()
    for part in parts:
        result = results[part.index]
        report.messages += result.messages
        report.applied += result.applied
        report.repeats += result.repeats
        report.suppressed_events += result.suppressed_events
        report.failures.extend(result.failures)
    report.failures.sort(key=lambda f: f.stream_sequence)


async def _serve(
    name: str,
    part: _Part,
    proc: multiprocessing.process.BaseProcess,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    seen: set[str],
    results: dict[int, _WorkerResult],
    on_applied: Callable[[int], object],
) -> None:
    """One worker's side of the conversation, until its result or its failure."""
    while True:
        message = await _read_frame(reader)
        if message is None:
            code = await _exit_code(proc)
            raise ReplayWorkerError(f"{name} ended without its report (exit code {code}). {_AFTER_A_WORKER_FAILED}")
        kind, payload = message
        if kind == "claim":
            first: list[bool] = []
            for event_id in payload:
                first.append(event_id not in seen)
                seen.add(event_id)
            writer.write(_frame(first))
            await writer.drain()
        elif kind == "applied":
            on_applied(payload)
        elif kind == "result":
            results[part.index] = payload
            return
        else:  # "error"
            raise ReplayWorkerError(f"{name} failed: {payload}. {_AFTER_A_WORKER_FAILED}")


async def _exit_code(proc: multiprocessing.process.BaseProcess, timeout: float = 5.0) -> int | None:
    """The worker's exit code once it has ended (None if it has not within `timeout`). Its
    socket closes while it exits, a moment before it can be reaped: joined, not polled."""
    if proc.exitcode is None:
        await asyncio.to_thread(proc.join, timeout)
    return proc.exitcode


async def _stop(procs: Sequence[multiprocessing.process.BaseProcess]) -> None:
    """End the workers still running (after a failure, or Ctrl-C: their open transactions roll
    back with their connections) and reap every one."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        if await _exit_code(proc) is None:
            proc.kill()
            await _exit_code(proc)


def _worker_main(spec: _WorkerSpec, sock: socket.socket, others: Sequence[socket.socket]) -> None:
    """A worker process, just forked: its own signals and event loop, then its part."""
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)  # the parent's loop's, inherited: a signal here must not wake it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which ends the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for s in others:  # so that each end sees the other close: EOF is how a death is noticed
        s.close()
    raise SystemExit(asyncio.run(_worker(spec, sock)))


async def _worker(spec: _WorkerSpec, sock: socket.socket) -> int:
    """Apply the part with connections of its own; send counts as batches are applied, then the
    result, or the error that stopped it. Exit code 0 or 1."""
    from ops.common import connected_bus

    part, settings, definition = spec.part, spec.settings, spec.definition
    reader, writer = await asyncio.open_connection(sock=sock)

    async def claim(batch: Batch, report: ReplayReport) -> list[str]:
        if not batch.deliveries:
            return []
        writer.write(_frame(("claim", [d.event.id for d in batch.deliveries])))
        await writer.drain()
        first = await _read_frame(reader)
        if first is None:
            raise ConnectionError("the replay's parent process went away")
        kept: list[Delivery] = []
        forget: list[str] = []
        for d, is_first in zip(batch.deliveries, first, strict=True):
            if is_first:
                kept.append(d)
                forget.append(d.event.id)
            else:
                report.repeats += 1
        batch.deliveries[:] = kept
        return forget

    report = ReplayReport(service=definition.name, since=None, dry_run=settings.dry_run)
    try:
        assert settings.database_url
        async with connected_bus(settings, name=f"syncmesh-replay-{part.index + 1}") as bus:
            pool = await db.create_pool(settings.database_url, definition.schema, max_size=2)
            log.info(
                "replay worker %d of %d: stream seq %d-%d, connected %.0f ms after it was started",
                part.index + 1,
                spec.workers,
                part.first,
                part.last,
                (time.monotonic() - spec.started) * 1000,
            )
            try:
                stream = StreamReader(
                    bus,
                    STRIPE_STREAM,
                    subjects=definition.subjects,
                    start_sequence=part.first,
                    last_sequence=part.last,
                    batch=spec.batch_size,
                )
                await _apply_stream(
                    definition,
                    settings,
                    pool,
                    stream,
                    report,
                    emit_events=spec.emit_events,
                    claim=claim,
                    on_applied=lambda n: writer.write(_frame(("applied", n))),
                )
            finally:
                await pool.close()
        result = _WorkerResult(
            report.messages, report.applied, report.repeats, report.suppressed_events, report.failures
        )
        writer.write(_frame(("result", result)))
        code = 0
    except Exception as exc:
        log.error("replay worker %d of %d failed", part.index + 1, spec.workers, exc_info=True)
        writer.write(_frame(("error", f"{type(exc).__name__}: {exc}")))
        code = 1
    with contextlib.suppress(OSError):
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    return code
