"""Transactional outbox: domain events commit with the records they describe, then a relay
publishes them to NATS.

Publishing from inside a handler would either publish events for writes that later roll back
or lose events when the process dies after commit. Writing them to `outbox` in the handler's
transaction and relaying after commit gives exactly the committed events, at least once; each
carries a unique `Nats-Msg-Id` and `meta.event_id` so subscribers drop repeats.

Several replicas relay safely: rows are claimed with FOR UPDATE SKIP LOCKED.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.bus import Bus
from services.common.db import UNAVAILABLE, Conn, values_literal
from services.common.errors import PublishError
from services.common.tracing import inject_headers

log = logging.getLogger(__name__)

#: What pauses the relay rather than stopping it: NATS or PostgreSQL not there for a while.
_RELAY_PAUSES: tuple[type[Exception], ...] = (PublishError, *UNAVAILABLE)

#: How long published rows are kept (for audits and `syncmesh` debugging) before pruning.
KEEP_PUBLISHED = timedelta(days=7)


async def add_event(
    conn: Conn,
    *,
    service: str,
    event_name: str,
    message: Message,
    stripe_event_id: str = "",
    first_sequence: int = 0,
) -> str:
    """Queue `message` on `syncmesh.<service>.<event_name>`; return its event id."""
    ids = await add_events(
        conn,
        service=service,
        events=[(event_name, message)],
        stripe_event_id=stripe_event_id,
        first_sequence=first_sequence,
    )
    return ids[0]


async def add_events(
    conn: Conn,
    *,
    service: str,
    events: Sequence[tuple[str, Message]],
    stripe_event_id: str = "",
    first_sequence: int = 0,
) -> list[str]:
    """Queue many domain events in one round trip (an import may emit 100,000)."""
    rows = prepare_events(
        service=service, events=events, stripe_event_id=stripe_event_id, first_sequence=first_sequence
    )
    await insert_rows(conn, rows)
    return [row.msg_id for row in rows]


@dataclass(frozen=True)
class OutboxRow:
    """A domain event ready for the outbox table: built when it is emitted, written later.

    Building captures the trace context of the moment of emission, so a consumer can buffer
    a whole batch's events and write them in one statement while each keeps its own trace.
    """

    subject: str
    message_type: str
    msg_id: str
    payload: bytes
    headers: str


def prepare_events(
    *,
    service: str,
    events: Sequence[tuple[str, Message]],
    stripe_event_id: str = "",
    first_sequence: int = 0,
) -> list[OutboxRow]:
    """Outbox rows for `events`, not yet written.

    A message with an `EventMeta meta` field gets it filled: a unique event id (also its
    Nats-Msg-Id), the service, the causing Stripe event, the time. The current trace context
    travels in the headers, so the relay's publish continues the trace that caused the event.
    """
    if not events:
        return []
    headers = inject_headers()
    occurred = Timestamp()
    occurred.FromDatetime(datetime.now(UTC))
    prefix = f"syncmesh.{service.replace('-', '_')}."
    rows = []
    for sequence, (event_name, message) in enumerate(events, start=first_sequence):
        event_id = _event_id(service, stripe_event_id, event_name, message, sequence)
        if "meta" in message.DESCRIPTOR.fields_by_name:
            meta = message.meta  # type: ignore[attr-defined]
            meta.event_id = event_id
            meta.service = service
            meta.stripe_event_id = stripe_event_id
            meta.occurred_at.CopyFrom(occurred)
        rows.append(
            OutboxRow(
                subject=prefix + event_name,
                message_type=message.DESCRIPTOR.full_name,
                msg_id=event_id,
                payload=message.SerializeToString(),
                headers=json.dumps({**headers, "Syncmesh-Type": message.DESCRIPTOR.full_name}),
            )
        )
    return rows


#: The outbox insert over arrays; jsonb travels as text (the pool's codec is text-only) and is cast.
_INSERT = (
    "INSERT INTO outbox (subject, message_type, msg_id, payload, headers) "
    "SELECT s, t, m, p, h::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[]) "
    "AS u(s, t, m, p, h) ON CONFLICT (msg_id) DO NOTHING"
)


def _columns(rows: Sequence[OutboxRow]) -> tuple[list[str], list[str], list[str], list[bytes], list[str]]:
    return (
        [r.subject for r in rows],
        [r.message_type for r in rows],
        [r.msg_id for r in rows],
        [r.payload for r in rows],
        [r.headers for r in rows],
    )


async def insert_rows(conn: Conn, rows: Sequence[OutboxRow]) -> None:
    """One INSERT over arrays, whatever the number of rows; a repeated msg_id is dropped."""
    if not rows:
        return
    await conn.execute(_INSERT, *_columns(rows))


async def insert_rows_returning(conn: Conn, rows: Sequence[OutboxRow]) -> list[OutboxRow]:
    """`insert_rows`, also saying which rows it wrote, so that the consumer can hand them to the
    relay once they commit (`OutboxRelay.hand_over`) instead of the relay looking for them with a
    transaction of its own. A repeated msg_id is dropped, as there."""
    if not rows:
        return []
    written = {r["msg_id"] for r in await conn.fetch(_INSERT + " RETURNING msg_id", *_columns(rows))}
    return [r for r in rows if r.msg_id in written]


def insert_sql(rows: Sequence[OutboxRow]) -> str | None:
    """`insert_rows` as one statement of SQL literals, to travel in the same round trip as the
    batch's COMMIT (`services.common.consumer`); None where a value cannot be a literal (a NUL in
    a text), and the rows then go through `insert_rows_returning`. The caller checks
    `db.literals_allowed` first. A repeated msg_id is dropped as there; the caller hands every
    row to the relay, and one already in the table goes out again under its Nats-Msg-Id, which
    the stream and subscribers drop as a repeat."""
    values = values_literal((r.subject, r.message_type, r.msg_id, r.payload, r.headers) for r in rows)
    if values is None:
        return None
    return (
        f"INSERT INTO outbox (subject, message_type, msg_id, payload, headers) VALUES {values} "
        "ON CONFLICT (msg_id) DO NOTHING"
    )


def _event_id(service: str, stripe_event_id: str, event_name: str, message: Message, sequence: int) -> str:
    """Derived from what caused the event and what it says, when a Stripe event caused it.

    Handling the same Stripe event again (a replay, a redrive) then yields the same ids for the
    same announcements, which the outbox and subscribers drop as repeats; an announcement whose
    content changed (a mapping was fixed) gets a new id and goes out. Events caused by an API
    call have no such cause and get a random id.
    """
    if not stripe_event_id:
        return uuid.uuid4().hex
    content = hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()
    return uuid.uuid5(_NAMESPACE, f"{service}|{stripe_event_id}|{event_name}|{sequence}|{content}").hex


_NAMESPACE = uuid.UUID("5f1c2b8e-4d7a-4c1e-9a57-0b7e6f1d2c3a")


class OutboxRelay:
    """Publishes committed outbox rows; woken after each commit, and polls for leftovers.

    The poll only finds rows no commit of this process announced (another replica that died
    after its commit, a relay that was paused): every 5 s when all is well, which keeps an idle
    mesh near a hundredth of a core, and every second while NATS or PostgreSQL keeps it from
    publishing, so rows go out within about a second of their return.

    The consumer hands over the rows its batch committed (`hand_over`): the relay publishes those
    and marks them (by msg_id) with one statement, where looking for them costs a transaction of four round
    trips (BEGIN, SELECT ... FOR UPDATE SKIP LOCKED, UPDATE, COMMIT), which at a trickle of events
    was paid once per event. Rows are still marked only after JetStream acked them; a row another
    replica's poll publishes at the same time goes out twice under one Nats-Msg-Id, which the
    stream drops. Whatever cannot be published that way is left to the scan (`wake`, the poll).
    Rows published are marked together, `mark_seconds` after the first of them (and before any
    scan, and on stop), so a trickle of events pays one UPDATE (and one commit) per tenth of a
    second rather than per event; a crash before the mark publishes them again after the
    restart, which the stream drops as repeats as it does after a crash before relay_once's
    commit.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: Bus,
        *,
        batch: int = 200,
        poll_seconds: float = 5.0,
        retry_seconds: float = 1.0,
        mark_seconds: float = 0.1,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self.mark_seconds = mark_seconds
        #: msg_ids of rows handed over and published, not yet marked; when to mark them (loop
        #: time): `mark_seconds` after the first, or `retry_seconds` after a mark that failed.
        self._unmarked: list[str] = []
        self._mark_due = 0.0
        self._mark_failed = False
        #: UPDATEs that marked handed-over rows (tests see the marks grouped).
        self.marks = 0
        self._wake = asyncio.Event()
        #: Whether the next round looks in the table (a wake, a poll, a hand-over that failed),
        #: or only publishes the rows handed over.
        self._scan = True
        self._handed: list[OutboxRow] = []
        self._stopping = False
        self.published = 0

    def wake(self) -> None:
        """Look in the table for unpublished rows (something other than the consumer wrote them)."""
        self._scan = True
        self._wake.set()

    def hand_over(self, rows: Sequence[OutboxRow]) -> None:
        """Publish these committed rows without looking for them."""
        if rows:
            self._handed.extend(rows)
            self._wake.set()

    async def run(self) -> None:
        last_prune = 0.0
        loop = asyncio.get_running_loop()
        behind = False
        next_scan = loop.time()
        while not self._stopping:
            until = next_scan
            if self._unmarked:
                until = min(until, self._mark_due)
            await self._sleep_until(until)
            if loop.time() >= next_scan:
                self._scan = True
            handed, self._handed = self._handed, []
            try:
                behind = not self.bus.is_ready()
                if handed and not await self._publish_handed(handed):
                    self._scan = True
                if self._unmarked and loop.time() >= self._mark_due:
                    await self._mark_published()
                if not self._scan:
                    continue
                self._scan = False
                while await self.relay_once() == self.batch:
                    pass
                next_scan = loop.time() + (self.retry_seconds if behind else self.poll_seconds)
                if loop.time() - last_prune > 3600:
                    await self._prune()
                    last_prune = loop.time()
            except _RELAY_PAUSES as exc:
                log.warning("outbox relay paused: %s", exc)
                behind = self._scan = True
                next_scan = loop.time() + self.retry_seconds

    async def _sleep_until(self, until: float) -> None:
        """Wait for a wake (a hand-over, `wake`, `stop`) or loop time `until`, whichever is first.

        A timer that sets the event, not `asyncio.wait_for`: wait_for wraps the wait in a task of
        its own, so a hand-over reached this task three loop turns after the consumer's commit,
        after NATS's flusher had already written the batch's acks and next pull request; now the
        relay's publish joins them in the same write (one socket write, and one read in
        nats-server, fewer per batch: at a trickle, per event).
        """
        if not self._wake.is_set():
            timer = asyncio.get_running_loop().call_at(until, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
        self._wake.clear()

    async def _publish_handed(self, handed: Sequence[OutboxRow]) -> bool:
        """Publish rows handed over (their marks wait for `_mark_published`); whether JetStream
        acked all of them."""
        if not self.bus.is_ready():
            return False
        acked = await self.bus.publish_batch(
            [(row.subject, row.payload, row.msg_id, json.loads(row.headers)) for row in handed]
        )
        done = [row.msg_id for row, ok in zip(handed, acked, strict=True) if ok]
        if done:
            now = asyncio.get_running_loop().time()
            if not self._unmarked:
                self._mark_due = now + self.mark_seconds
            self._unmarked.extend(done)
            if len(self._unmarked) >= self.batch and not self._mark_failed:
                self._mark_due = now
            self.published += len(done)
        return len(done) == len(handed)

    async def _mark_published(self) -> None:
        """Mark the rows published since the last mark, with one statement."""
        if not self._unmarked:
            return
        ids, self._unmarked = self._unmarked, []
        try:
            await self.pool.execute(
                "UPDATE outbox SET published_at = now() WHERE msg_id = ANY($1::text[]) AND published_at IS NULL", ids
            )
        except BaseException:
            # Tried again after retry_seconds, not on the loop's next turn: while PostgreSQL is
            # gone, a mark due "now" had the relay reconnecting a hundred times a second.
            self._unmarked = ids + self._unmarked
            self._mark_due = asyncio.get_running_loop().time() + self.retry_seconds
            self._mark_failed = True
            raise
        self._mark_failed = False
        self.marks += 1

    async def relay_once(self) -> int:
        """Publish up to one batch; return how many rows were published."""
        await self._mark_published()  # what the hand-over published is not looked for again
        if not self.bus.is_ready():
            return 0
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, subject, msg_id, payload, headers FROM outbox WHERE published_at IS NULL "
                "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch,
            )
            if not rows:
                return 0
            acked = await self.bus.publish_batch(
                [(row["subject"], row["payload"], row["msg_id"], row["headers"]) for row in rows]
            )
            done = [row["id"] for row, ok in zip(rows, acked, strict=True) if ok]
            if len(done) < len(rows):
                log.warning("outbox relay: %d of %d not acked; retrying them", len(rows) - len(done), len(rows))
            if done:
                await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])", done)
                self.published += len(done)
            # A short count ends the caller's drain loop; the rest waits for the next wake or poll.
            return len(done) if len(done) == len(rows) else 0

    async def _prune(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("DELETE FROM outbox WHERE published_at < $1", datetime.now(UTC) - KEEP_PUBLISHED)

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
