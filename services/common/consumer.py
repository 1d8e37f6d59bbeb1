"""The one consumer loop every service runs, and its ack policy.

Ack policy (the whole of it):

1. Fetch up to `fetch_batch` messages from the service's durable pull consumer. The fetch takes
   whatever is pending at once; only when nothing is pending does it wait, up to
   `fetch_timeout_seconds`, and it returns with the first message that arrives (nats-py 2.16:
   a `no_wait` pull request with `expires`, which the server ends as soon as it has delivered
   what it had). Batches therefore grow by themselves with the backlog, and a lone event is
   picked up within a millisecond. A service may ask for the next batch to be fetched and
   decoded while this one waits on PostgreSQL (`ServiceDefinition.fetch_ahead`); it is applied
   only after this one is settled, and on stop it is nak'd for immediate redelivery.
2. Open ONE transaction for the batch: record every event id in `processed_events` with one
   insert (an id already there is a duplicate: its handler is skipped, that is the idempotency),
   then hand the new events to the service: to its batch handler when it has one (which writes
   the whole batch's records in a few set-based statements), else to its handler one event at a
   time. Domain events are buffered and written to `outbox` in one insert for the batch. If the
   batch handler declines (BatchUnsupported), the transaction is rolled back and the batch is
   redone event by event; if a handler fails, it is rolled back whole and redone in a new
   transaction with a savepoint per message, so only the failing messages are left unwritten
   (the message that failed is not run again in that pass: its handler may have called Stripe).
3. COMMIT. Only then ack the messages whose savepoint succeeded (plain ack: the idempotency
   record makes a lost ack harmless, and `ack_sync` would halve throughput).
4. A message whose handler failed is nak'd with exponential backoff; once it has been delivered
   `max_deliver` times, or at once when it cannot be decoded or the handler raises
   PermanentError, it is published to `dlq.<service>` with the reason, attempts and original
   headers, then acked. If the dead-letter publish itself fails, it is nak'd: never dropped.
5. If the transaction cannot commit (database gone), every message of the batch is nak'd with
   backoff, and the loop goes on fetching once the database is back.

A crash anywhere before COMMIT leaves nothing written and the messages unacked: JetStream
redelivers them after `ack_wait`. A crash after COMMIT but before the ack redelivers them too,
and the idempotency record turns the repeat into a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import nats.errors
import nats.js.errors
import stripe
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import context as otel_context
from opentelemetry import trace
from syncmesh.events.v1 import dead_letter_pb2, envelope_pb2

from services.common import outbox
from services.common.bus import DLQ_STREAM, STRIPE_STREAM, Bus
from services.common.db import Conn
from services.common.errors import EventError, PermanentError, PublishError
from services.common.events import StripeEvent, check_mode, from_envelope
from services.common.logs import current_event_id
from services.common.settings import Settings
from services.common.stripe_api import stripe_client_for
from services.common.tracing import extract_context, inject_headers

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)


class DryRunRollback(Exception):
    """Raised inside a savepoint to undo a dry-run handler's writes after logging them."""


@dataclass
class HandlerContext:
    """What a handler gets: the transaction's connection and a way to emit domain events."""

    conn: Conn
    service: str
    settings: Settings
    envelope: envelope_pb2.StripeEventEnvelope
    emitted: list[str] = field(default_factory=list)
    skipped_reason: str | None = None
    #: When set, domain events are collected here and the consumer writes the batch's in one
    #: insert; when None they go to the outbox at once (tools and tests that call a handler).
    outgoing: list[outbox.OutboxRow] | None = None

    async def emit(self, event_name: str, message: Message, *, stripe_event_id: str = "") -> None:
        """Queue a domain event on `syncmesh.<service>.<event_name>`; it commits with the writes."""
        rows = outbox.prepare_events(
            service=self.service,
            events=[(event_name, message)],
            stripe_event_id=stripe_event_id or self.envelope.event_id,
            first_sequence=len(self.emitted),
        )
        if self.outgoing is not None:
            self.outgoing.extend(rows)
        else:
            await outbox.insert_rows(self.conn, rows)
        self.emitted.append(f"{event_name}:{message.DESCRIPTOR.full_name}")

    @property
    def stripe(self) -> stripe.StripeClient | None:
        """The process's Stripe API client, or None when SYNCMESH_STRIPE_API_KEY is not set."""
        return stripe_client_for(self.settings)

    def skip(self, reason: str) -> None:
        """Mark the event as deliberately not applied (e.g. created before SYNCMESH_SYNC_START)."""
        self.skipped_reason = reason

    def before_sync_start(self, created: int | None) -> bool:
        start = self.settings.sync_start
        return start is not None and created is not None and created < int(start.timestamp())


Handler = Callable[[HandlerContext, StripeEvent], Awaitable[None]]


class BatchUnsupported(Exception):
    """Raised by a batch handler for a batch it cannot apply set-based (e.g. a tie that needs a
    Stripe API call): the consumer rolls back and applies that batch event by event instead."""


@dataclass
class BatchItem:
    """One new event of a batch, for a batch handler: its context (emit, skip) and its span."""

    ctx: HandlerContext
    event: StripeEvent
    consuming: Callable[[], contextlib.AbstractContextManager[trace.Span]]

    @classmethod
    def alone(cls, ctx: HandlerContext, event: StripeEvent) -> BatchItem:
        """An event handled on its own, whose span (if any) is already current: a batch of one."""
        return cls(ctx, event, lambda: contextlib.nullcontext(trace.get_current_span()))


#: Applies a batch's new events (in arrival order) inside the consumer's transaction; must leave
#: the same records as the Handler run on each event in turn. It may announce each changed record
#: once, in its newest state, where one event at a time would also announce the states between
#: (downstream consumers apply newest state, so they end the same).
BatchHandler = Callable[[Conn, Sequence[BatchItem]], Awaitable[None]]


@dataclass
class _Batch:
    """Fetched messages, decoded: what `_apply_batch` commits and settles."""

    outcomes: list[_Outcome]
    work: list[_Work]


@dataclass
class _Outcome:
    msg: Msg
    ok: bool = False
    dead_reason: str | None = None
    error: str | None = None


def backoff_seconds(attempt: int) -> float:
    """0.5 s, 1 s, 2 s, ... capped at 30 s: quick for blips, gentle for outages."""
    return float(min(30.0, 0.5 * 2 ** max(0, attempt - 1)))


class Consumer:
    def __init__(
        self,
        *,
        service: str,
        bus: Bus,
        pool: asyncpg.Pool,
        handler: Handler,
        subjects: tuple[str, ...],
        settings: Settings,
        on_commit: Callable[[], None] | None = None,
        durable: str | None = None,
        stream: str = STRIPE_STREAM,
        batch_handler: BatchHandler | None = None,
        fetch_ahead: bool = False,
    ) -> None:
        self.service = service
        self.bus = bus
        self.pool = pool
        self.handler = handler
        self.batch_handler = batch_handler
        self.fetch_ahead = fetch_ahead
        self.subjects = subjects
        self.settings = settings
        self.on_commit = on_commit
        self.durable = durable or (f"{service}-dryrun" if settings.dry_run else service)
        self.stream = stream
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._psub: Any = None
        self.handled = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self.batches_declined = 0

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            description=f"{self.service} service",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.ack_wait_seconds,
            max_deliver=-1,  # the loop dead-letters itself, with a reason; JetStream must not drop
            filter_subjects=list(self.subjects),
            max_ack_pending=max(1000, self.settings.fetch_batch * 4),
        )

    async def run(self) -> None:
        """Fetch and handle until `stop()`; survives NATS and PostgreSQL outages."""
        psub = None
        ahead: asyncio.Task[_Batch | None] | None = None
        try:
            while not self._stopping.is_set():
                if psub is None:
                    try:
                        await self.bus.wait_ready(timeout=5)
                        await self.bus.js.add_consumer(self.stream, self.consumer_config())
                        psub = self._psub = await self.bus.js.pull_subscribe_bind(
                            durable=self.durable,
                            stream=self.stream,
                            pending_msgs_limit=self.settings.fetch_batch * 4,
                        )
                    except (TimeoutError, nats.errors.Error, nats.js.errors.Error, PublishError) as exc:
                        log.warning("consumer %s not bound yet: %s", self.durable, exc)
                        await asyncio.sleep(0.5)
                        continue
                batch = await (ahead if ahead is not None else self._next_batch(psub))
                ahead = None
                if batch is None:
                    continue
                if self.fetch_ahead:  # the next batch is fetched and decoded while this one commits
                    ahead = asyncio.get_running_loop().create_task(self._next_batch(psub))
                self._idle.clear()
                try:
                    await self._apply_batch(batch)
                finally:
                    self._idle.set()
        finally:
            if ahead is not None:
                await self._give_back(ahead)

    async def _next_batch(self, psub: Any) -> _Batch | None:
        try:
            msgs = await psub.fetch(self.settings.fetch_batch, timeout=self.settings.fetch_timeout_seconds)
        except TimeoutError:
            return None
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("fetch failed: %s", exc)
            await asyncio.sleep(0.2)
            return None
        return self._prepare(msgs) if msgs else None

    async def _give_back(self, ahead: asyncio.Task[_Batch | None]) -> None:
        """A batch fetched ahead but not applied goes back for immediate redelivery; a fetch cut
        short leaves what it had to JetStream's ack_wait, as a crash would."""
        if not ahead.done():
            ahead.cancel()
            return
        if ahead.cancelled() or ahead.exception() is not None:
            return
        batch = ahead.result()
        for outcome in batch.outcomes if batch is not None else ():
            with contextlib.suppress(Exception):
                await outcome.msg.nak()

    async def stop(self, grace: float) -> None:
        """Stop fetching and wait (up to `grace`) for the batch in flight to finish."""
        self._stopping.set()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.warning("batch still in flight after %.1fs; its messages will be redelivered", grace)
        if self._psub is not None:
            # A pull subscription left open keeps NATS's drain waiting for its whole timeout.
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()
            self._psub = None

    async def process_batch(self, msgs: list[Msg]) -> None:
        """Handle a fetched batch in one transaction, then settle every message (ack policy above)."""
        await self._apply_batch(self._prepare(msgs))

    def _prepare(self, msgs: list[Msg]) -> _Batch:
        outcomes = [_Outcome(m) for m in msgs]
        return _Batch(outcomes, [item for item in map(self._decode, outcomes) if item is not None])

    async def _apply_batch(self, batch: _Batch) -> None:
        outcomes, work = batch.outcomes, batch.work
        try:
            if work:
                async with self.pool.acquire() as conn:
                    # Optimistic first: no savepoints, one idempotency insert for the batch. A
                    # failure anywhere rolls it all back and the batch is redone one message per
                    # savepoint, so one bad event costs its batch a retry, never a wrong commit.
                    failed: _Failure | _AllApplied | None = None
                    if not self.settings.dry_run:
                        failed = await self._apply_together(conn, work, batched=self.batch_handler is not None)
                        if isinstance(failed, _Failure) and failed.batch:
                            failed = await self._apply_together(conn, work, batched=False)
                    if not isinstance(failed, _AllApplied):
                        await self._apply_isolated(conn, work, failed)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("batch of %d not committed (%s); will be redelivered", len(outcomes), exc)
            for item in work:
                if item.outcome.dead_reason is None:
                    item.outcome.ok = False
                    item.outcome.error = item.outcome.error or f"database: {exc}"
        else:
            if work and self.on_commit is not None:
                self.on_commit()
        for outcome in outcomes:
            await self._settle(outcome)

    def _decode(self, outcome: _Outcome) -> _Work | None:
        try:
            event, envelope = from_envelope(outcome.msg.data)
            check_mode(event, self.settings.mode)
        except EventError as exc:
            outcome.dead_reason = f"undecodable: {exc}"
            return None
        return _Work(outcome, event, envelope, extract_context(outcome.msg.headers))

    def _context(self, conn: Conn, item: _Work, outgoing: list[outbox.OutboxRow] | None = None) -> HandlerContext:
        return HandlerContext(
            conn=conn, service=self.service, settings=self.settings, envelope=item.envelope, outgoing=outgoing
        )

    @contextlib.contextmanager
    def _consuming(self, item: _Work) -> Iterator[trace.Span]:
        """The message's span (continuing the trace it was published under) and log context."""
        token = current_event_id.set(item.event.id)
        try:
            with _tracer.start_as_current_span(
                f"{self.service} consume {item.outcome.msg.subject}",
                context=item.parent,
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": item.outcome.msg.subject,
                    "messaging.message.id": item.event.id,
                    "stripe.event_type": item.event.type,
                },
            ) as span:
                yield span
        finally:
            current_event_id.reset(token)

    @contextlib.contextmanager
    def _tracked(self, item: _Work, inside: list[_Work | None]) -> Iterator[trace.Span]:
        """`_consuming` for a batch handler, noting the message it is on while it raises, so
        that message alone keeps the failure and is not run a second time."""
        with self._consuming(item) as span:
            inside[0] = item
            yield span
            inside[0] = None

    def _batch_span(self, work: list[_Work], what: str) -> Any:
        """A span for statements that serve the whole batch: in the trace of the batch's first
        message (so a lone webhook is one trace end to end) and linked to every message's."""
        return _tracer.start_as_current_span(
            f"{self.service} {what}",
            context=work[0].parent if work else None,
            links=[w.link for w in work],
            attributes={"messaging.batch.message_count": len(work)},
        )

    async def _apply_together(self, conn: Conn, work: list[_Work], *, batched: bool) -> _Failure | _AllApplied:
        """All of the batch in one transaction; on a failure nothing is written, and the failing
        message and its error are returned so it is not run a second time.

        `batched`: the new events go to the service's batch handler in one call. If it declines
        (BatchUnsupported), the returned failure says so and the caller redoes the batch event
        by event; if it fails while on one message, that message is the one that failed.
        """
        handled = duplicates = 0
        current: _Work | None = None
        outgoing: list[outbox.OutboxRow] = []
        try:
            async with conn.transaction():
                with self._batch_span(work, "claim"):
                    fresh = await _claim(conn, work)
                new: list[tuple[_Work, HandlerContext]] = []
                for item in work:
                    if item.event.id not in fresh:
                        duplicates += 1
                        continue
                    fresh.discard(item.event.id)  # a second copy in the same batch is a duplicate
                    new.append((item, self._context(conn, item, outgoing)))
                if batched and new:
                    assert self.batch_handler is not None
                    inside: list[_Work | None] = [None]
                    items = [
                        BatchItem(ctx, item.event, functools.partial(self._tracked, item, inside)) for item, ctx in new
                    ]
                    with self._batch_span([item for item, _ in new], "apply batch"):
                        try:
                            await self.batch_handler(conn, items)
                        finally:
                            current = inside[0]
                else:
                    for item, ctx in new:
                        current = item
                        with self._consuming(item) as span:
                            await self.handler(ctx, item.event)
                            if ctx.skipped_reason:
                                span.set_attribute("syncmesh.skipped", ctx.skipped_reason)
                handled = len(new)
                skipped = [(item.event.id, f"skipped: {ctx.skipped_reason}") for item, ctx in new if ctx.skipped_reason]
                if skipped or outgoing:
                    with self._batch_span(work, "record outcomes"):
                        await outbox.insert_rows(conn, outgoing)
                        if skipped:
                            await conn.executemany(
                                "UPDATE processed_events SET outcome = $2 WHERE event_id = $1", skipped
                            )
        except (OSError, asyncpg.InterfaceError):
            raise  # the connection is gone: the whole batch fails and is redelivered
        except BatchUnsupported as exc:
            self.batches_declined += 1
            log.info("batch handler declined the batch (%s); applying it event by event", exc)
            return _Failure(None, exc, batch=True)
        except Exception as exc:
            log.info("a message of the batch failed (%s: %s); handling them one by one", type(exc).__name__, exc)
            return _Failure(current, exc)
        for item in work:
            item.outcome.ok = True
        self.handled += handled
        self.duplicates += duplicates
        return _ALL_APPLIED

    async def _apply_isolated(self, conn: Conn, work: list[_Work], failed: _Failure | None) -> None:
        """One transaction, a savepoint per message: the failing ones roll back alone.

        The message that already failed in the optimistic pass keeps that failure rather than
        running again (its handler may have called Stripe); it is retried on redelivery.
        """
        async with conn.transaction():
            for item in work:
                if failed is not None and item is failed.item:
                    _record_failure(item, failed.error)
                    continue
                await self._handle_one(conn, item)

    async def _handle_one(self, conn: Conn, item: _Work) -> None:
        event, outcome = item.event, item.outcome
        try:
            with self._consuming(item) as span:
                try:
                    async with conn.transaction():  # savepoint: this message only
                        ctx = self._context(conn, item)
                        fresh = await conn.fetchval(
                            "INSERT INTO processed_events (event_id, event_type, stream_sequence) "
                            "VALUES ($1, $2, $3) ON CONFLICT (event_id) DO NOTHING RETURNING true",
                            event.id,
                            event.type,
                            _sequence(outcome.msg),
                        )
                        if not fresh:
                            self.duplicates += 1
                            span.set_attribute("syncmesh.duplicate", True)
                        else:
                            await self.handler(ctx, event)
                            if ctx.skipped_reason:
                                span.set_attribute("syncmesh.skipped", ctx.skipped_reason)
                                await conn.execute(
                                    "UPDATE processed_events SET outcome = $2 WHERE event_id = $1",
                                    event.id,
                                    f"skipped: {ctx.skipped_reason}",
                                )
                            if self.settings.dry_run:
                                log.info(
                                    "dry run: %s would write its records and emit %s; rolled back",
                                    event.type,
                                    ctx.emitted or "nothing",
                                )
                                raise DryRunRollback
                            self.handled += 1
                except DryRunRollback:
                    self.handled += 1
                outcome.ok = True
        except (OSError, asyncpg.InterfaceError):
            raise  # the connection is gone: the whole batch fails and is redelivered
        except Exception as exc:
            _record_failure(item, exc)

    async def _settle(self, outcome: _Outcome) -> None:
        msg = outcome.msg
        attempts = _attempts(msg)
        if outcome.ok:
            await _quietly(msg.ack())
            return
        if outcome.dead_reason is None and attempts >= self.settings.max_deliver:
            outcome.dead_reason = f"gave up after {attempts} attempts: {outcome.error}"
        if outcome.dead_reason is not None:
            try:
                await self.dead_letter(msg, outcome.dead_reason, attempts)
            except PublishError as exc:
                log.error("could not dead-letter (%s); will retry", exc)
                await _quietly(msg.nak(delay=backoff_seconds(attempts)))
                return
            self.dead_lettered += 1
            await _quietly(msg.ack())
            return
        await _quietly(msg.nak(delay=backoff_seconds(attempts)))

    async def dead_letter(self, msg: Msg, reason: str, attempts: int) -> None:
        now = Timestamp()
        now.FromDatetime(datetime.now(UTC))
        letter = dead_letter_pb2.DeadLetter(
            service=self.service,
            subject=msg.subject,
            reason=reason[:4000],
            attempts=attempts,
            data=msg.data,
            headers={k: v for k, v in (msg.headers or {}).items()},
            dead_lettered_at=now,
            stream_sequence=_sequence(msg) or 0,
        )
        original_id = (msg.headers or {}).get("Nats-Msg-Id", "")
        log.error("dead-lettered %s: %s", msg.subject, reason)
        await self.bus.publish(
            f"dlq.{self.service.replace('-', '_')}",
            letter.SerializeToString(),
            msg_id=f"{self.service}:{original_id or _sequence(msg)}:{attempts}",
            headers=inject_headers(),
        )


@dataclass
class _Work:
    """A decoded message of the batch."""

    outcome: _Outcome
    event: StripeEvent
    envelope: envelope_pb2.StripeEventEnvelope
    #: The trace context it was published under, read from its headers once (every span of the
    #: batch starts in it or links to it).
    parent: otel_context.Context
    link: trace.Link = field(init=False)

    def __post_init__(self) -> None:
        self.link = trace.Link(trace.get_current_span(self.parent).get_span_context())


@dataclass
class _Failure:
    item: _Work | None
    error: Exception
    #: The batch handler declined the batch (BatchUnsupported): no message is at fault.
    batch: bool = False


class _AllApplied:
    pass


_ALL_APPLIED = _AllApplied()


def _record_failure(item: _Work, exc: Exception) -> None:
    """PermanentError dead-letters at once; anything else is retried until max_deliver."""
    if isinstance(exc, PermanentError):
        item.outcome.dead_reason = f"permanent: {exc}"
        return
    item.outcome.error = f"{type(exc).__name__}: {exc}"
    log.warning("handler failed for %s: %s", item.event.type, item.outcome.error)


async def _claim(conn: Conn, work: list[_Work]) -> set[str]:
    """Record the batch's event ids as processed; return those that were not already.

    Sorted by id, so two replicas claiming overlapping redeliveries lock rows in the same order
    and cannot deadlock.
    """
    rows = sorted({(w.event.id, w.event.type, _sequence(w.outcome.msg)) for w in work}, key=lambda r: r[0])
    claimed = await conn.fetch(
        "INSERT INTO processed_events (event_id, event_type, stream_sequence) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) ON CONFLICT (event_id) DO NOTHING "
        "RETURNING event_id",
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
    )
    return {r["event_id"] for r in claimed}


def _attempts(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except (AttributeError, ValueError, nats.errors.Error):
        return 1


def _sequence(msg: Msg) -> int | None:
    try:
        return int(msg.metadata.sequence.stream)
    except (AttributeError, ValueError, nats.errors.Error):
        return None


async def _quietly(awaitable: Awaitable[Any]) -> None:
    """Acks are best effort: a lost ack means a redelivery, which the idempotency record absorbs."""
    try:
        await awaitable
    except (nats.errors.Error, TimeoutError) as exc:
        log.debug("ack/nak not sent: %s", exc)


__all__ = [
    "DLQ_STREAM",
    "BatchHandler",
    "BatchItem",
    "BatchUnsupported",
    "Consumer",
    "Handler",
    "HandlerContext",
    "backoff_seconds",
]
