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
import contextlib
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
from services.common.db import UNAVAILABLE, Conn
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


async def insert_rows(conn: Conn, rows: Sequence[OutboxRow]) -> None:
    """One INSERT over arrays, whatever the number of rows; a repeated msg_id is dropped."""
    if not rows:
        return
    # jsonb travels as text (the pool's codec is text-only) and is cast.
    await conn.execute(
        "INSERT INTO outbox (subject, message_type, msg_id, payload, headers) "
        "SELECT s, t, m, p, h::jsonb FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[]) "
        "AS u(s, t, m, p, h) ON CONFLICT (msg_id) DO NOTHING",
        [r.subject for r in rows],
        [r.message_type for r in rows],
        [r.msg_id for r in rows],
        [r.payload for r in rows],
        [r.headers for r in rows],
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
    """

    def __init__(
        self, pool: asyncpg.Pool, bus: Bus, *, batch: int = 200, poll_seconds: float = 5.0, retry_seconds: float = 1.0
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        self._wake = asyncio.Event()
        self._stopping = False
        self.published = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        last_prune = 0.0
        loop = asyncio.get_running_loop()
        behind = False
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.retry_seconds if behind else self.poll_seconds)
            self._wake.clear()
            try:
                behind = not self.bus.is_ready()
                while await self.relay_once() == self.batch:
                    pass
                if loop.time() - last_prune > 3600:
                    await self._prune()
                    last_prune = loop.time()
            except _RELAY_PAUSES as exc:
                log.warning("outbox relay paused: %s", exc)
                behind = True

    async def relay_once(self) -> int:
        """Publish up to one batch; return how many rows were published."""
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
