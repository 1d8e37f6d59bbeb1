"""The one consumer loop every service runs, the one way a batch is applied, and the ack policy.

A service gives the runtime ONE batch applier (`BatchApplier`): the new events of a batch, in
arrival order, inside the transaction. Everything else here is the same for every service, and
for replay (ops/replay.py), which runs the same `BatchRunner` over the stream.

Applying a batch (`BatchRunner.run`):

1. Optimistic first, the common case: ONE transaction for the batch. Every event id is recorded
   in `processed_events` with one insert (an id already there, or a second copy in the same
   batch, is a duplicate: the applier does not see it, that is the idempotency); the new events
   go to the applier in one call; domain events are buffered and written to `outbox` in one
   insert. No savepoints. Writes whose results nothing of the batch reads (audit rows, updates
   whose row count is unused) the applier may hold (`HandlerContext.later`, `db.Deferred`): they
   go as literals in the COMMIT's round trip, with the outbox insert, or together at a flush
   before a read that needs them, instead of a round trip each.
2. If the applier fails, that transaction is rolled back whole and the batch is redone in a new
   one with the SAME applier on a batch of one per message, each under a savepoint, so only the
   failing messages are left unwritten. The message the applier was on when it failed keeps that
   failure and is not run again in that pass (its applier may have called Stripe), nor is a
   second copy of a failed event in the same batch (it shares that failure).
3. Dry run (SYNCMESH_DRY_RUN) is a rollback policy, not another path: each transaction (or
   savepoint) is rolled back after logging what it would have written, so batches, isolated
   messages and replays alike write nothing, and the outcomes are what a real run would have had.

Ack policy: every message ends with one `Outcome`, and `ACK_POLICY` alone maps it to a verb.

    Outcome               Verdict       what the message gets
    applied               ACK           ack, after COMMIT
    skipped               ACK           ack, after COMMIT (deliberately not applied, noted in
                                        processed_events)
    duplicate             ACK           ack (already applied, by an earlier delivery or batch
                                        mate)
    failed-retryable      RETRY         nak with backoff; dead-lettered once its applier has
                                        failed on it `max_deliver` times
    database-unavailable  WAIT          nak; the loop fetches nothing more until PostgreSQL
                                        answers again (the batch did not commit)
    dependency-unavailable WAIT         nak with backoff (the applier could not reach Stripe)
    failed-permanent      DEAD_LETTER   published to `dlq.<service>`, then ack
    undecodable           DEAD_LETTER   published to `dlq.<service>`, then ack

Guarantees the table relies on:
- COMMIT before ack: a message is acked only once what it wrote is committed (plain ack: the
  idempotency record makes a lost ack harmless, and `ack_sync` would halve throughput).
- A failed message is not run twice in one pass (step 2).
- A dead letter carries the reason, attempts and original headers; if its publish fails the
  message is nak'd with backoff: never dropped.
- An outage is not a poison message. Attempts are counted in `delivery_failures` (in the
  service's schema, with the writes of the pass that found the failure), and only when the
  applier itself failed on the message: JetStream's delivery count also grows while PostgreSQL
  or Stripe is unreachable, so it decides nothing. A message waits out an outage however long it
  lasts, and is dead-lettered only for what its applier did.
- If the transaction cannot commit because PostgreSQL is unreachable (`db.UNREACHABLE`: gone,
  shutting down, a failover in progress), every message of the batch is nak'd (a permanent
  failure among them is still dead-lettered), and the loop fetches nothing more until the
  database answers again, so an outage costs no fetches, no log lines per message and no
  attempts. Any other error at COMMIT (a deferred constraint, say) is the batch's fault and
  counts as a failed attempt of its messages.

A crash anywhere before COMMIT leaves nothing written and the messages unacked: JetStream
redelivers them after `ack_wait`. A crash after COMMIT but before the ack redelivers them too,
and the idempotency record turns the repeat into a no-op.

Fetching: up to `fetch_batch` messages from the service's durable pull consumer. The fetch takes
whatever is pending at once; only when nothing is pending does it wait, up to
`fetch_timeout_seconds`, and it returns with the first message that arrives (nats-py 2.16: a
`no_wait` pull request with `expires`, which the server ends as soon as it has delivered what it
had). Batches therefore grow by themselves with the backlog, and a lone event is picked up
within a millisecond. With `fetch_linger_seconds` set (off by default), the next fetch after a
partial batch waits until that long after the last one, and takes together what arrived
meanwhile: events closer together than that share a transaction, a commit and an ack round. A
service may ask for the next batch to be fetched and decoded while this one waits on PostgreSQL
(`ServiceDefinition.fetch_ahead`); it is applied only after this one is settled, and on stop it
is nak'd for immediate redelivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
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

from services.common import db, outbox
from services.common.bus import DLQ_STREAM, STRIPE_STREAM, Bus
from services.common.db import Conn
from services.common.errors import EventError, PermanentError, PublishError, UnavailableError
from services.common.events import StripeEvent, check_mode, from_envelope
from services.common.logs import current_event_id
from services.common.metrics import ServiceMetrics
from services.common.settings import Settings
from services.common.stripe_api import stripe_client_for
from services.common.stripe_shapes import check_body, check_object
from services.common.tracing import extract_context, inject_headers

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

#: What a batch that could not reach or commit to PostgreSQL raises to its caller: the whole
#: batch is then database-unavailable (the connection is gone, nothing was written).
DATABASE_ERRORS: tuple[type[Exception], ...] = db.UNAVAILABLE


@dataclass
class HandlerContext:
    """What an applier gets per event: the transaction's connection and a way to emit domain events."""

    conn: Conn
    service: str
    settings: Settings
    envelope: envelope_pb2.StripeEventEnvelope
    emitted: list[str] = field(default_factory=list)
    skipped_reason: str | None = None
    #: When set, domain events are collected here and the runner writes the batch's in one
    #: insert; when None they go to the outbox at once (tools and tests that call an applier).
    outgoing: list[outbox.OutboxRow] | None = None
    #: False: domain events are only counted in `emitted`, never built into outbox rows (a
    #: replay drops them unless asked: building each cost an id, a serialization and headers).
    announce: bool = True
    #: Where the applier writes what nobody reads back before COMMIT (`db.Deferred`): the batch's
    #: one, shared by its items, whose writes go with the COMMIT; on its own (tools and tests that
    #: call an applier) each write runs at once.
    later: db.Deferred = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.later = db.Deferred(self.conn)

    async def emit(self, event_name: str, message: Message, *, stripe_event_id: str = "") -> None:
        """Queue a domain event on `syncmesh.<service>.<event_name>`; it commits with the writes."""
        if not self.announce:
            self.emitted.append(f"{event_name}:{message.DESCRIPTOR.full_name}")
            return
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


@dataclass
class BatchItem:
    """One new event of a batch, for the applier: its context (emit, skip) and its span."""

    ctx: HandlerContext
    event: StripeEvent
    #: Enter while working on this event: its consume span (continuing the trace it was
    #: published under) and log context; a failure raised inside is charged to this event alone.
    consuming: Callable[[], contextlib.AbstractContextManager[trace.Span]]

    @classmethod
    def alone(cls, ctx: HandlerContext, event: StripeEvent) -> BatchItem:
        """An event applied on its own, whose span (if any) is already current: a batch of one."""
        return cls(ctx, event, lambda: contextlib.nullcontext(trace.get_current_span()))


#: A service's one way to apply events: the new events of a batch (in arrival order, duplicates
#: already removed) inside the runner's transaction. It may announce each changed record once, in
#: its newest state, where one event at a time would also announce the states between
#: (downstream consumers apply newest state, so they end the same). A batch of one is how a
#: failing message is isolated, so a batch must leave the same records as its events applied
#: one batch of one at a time.
BatchApplier = Callable[[Conn, Sequence[BatchItem]], Awaitable[None]]


class Outcome(enum.Enum):
    """What became of a message; `ACK_POLICY` says what it gets for it."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"
    FAILED_RETRYABLE = "failed-retryable"
    FAILED_PERMANENT = "failed-permanent"
    UNDECODABLE = "undecodable"
    DATABASE_UNAVAILABLE = "database-unavailable"
    DEPENDENCY_UNAVAILABLE = "dependency-unavailable"


class Verdict(enum.Enum):
    ACK = "ack"
    #: nak with exponential backoff; dead-lettered once delivered `max_deliver` times.
    RETRY = "retry"
    #: published to `dlq.<service>` with the reason, then acked; nak'd if that publish fails.
    DEAD_LETTER = "dead-letter"
    #: nak'd, never dead-lettered: a dependency is down, not the message wrong.
    WAIT = "wait"


#: The ack policy, whole (see the module docstring).
ACK_POLICY: Mapping[Outcome, Verdict] = {
    Outcome.APPLIED: Verdict.ACK,
    Outcome.DUPLICATE: Verdict.ACK,
    Outcome.SKIPPED: Verdict.ACK,
    Outcome.FAILED_RETRYABLE: Verdict.RETRY,
    Outcome.DATABASE_UNAVAILABLE: Verdict.WAIT,
    Outcome.DEPENDENCY_UNAVAILABLE: Verdict.WAIT,
    Outcome.FAILED_PERMANENT: Verdict.DEAD_LETTER,
    Outcome.UNDECODABLE: Verdict.DEAD_LETTER,
}

#: The largest batch whose applier's unread writes are held for COMMIT (`HandlerContext.later`).
#: What holding saves is per batch (a round trip each, ~0.1 ms of the service's CPU at a
#: trickle); what it costs is per value (each written as a literal in Python, ~0.3 us, where
#: asyncpg encodes a parameter in C): a billing event writes ~100 values, so past a few events a
#: batch pays more than it saves, and a drain's batches of 1,024 send their writes at once.
HOLD_UP_TO = 8

#: A message whose outcome was never decided (the pass was cut short) is retried.
_UNDECIDED = Verdict.RETRY


@dataclass(slots=True)
class Received:
    """A fetched message and what became of it."""

    msg: Msg
    outcome: Outcome | None = None
    #: Why, for a failure: the error, or the dead-letter reason.
    detail: str = ""
    #: For a failed-retryable message: how many times its applier has failed on it, this time
    #: included (from `delivery_failures`); 0 where that count could not be kept (dry run).
    failures: int = 0


@dataclass
class Delivery:
    """A decoded message of the batch: what the runner applies."""

    received: Received
    event: StripeEvent
    envelope: envelope_pb2.StripeEventEnvelope
    #: The trace context it was published under, read from its headers once (every span of the
    #: batch starts in it or links to it).
    parent: otel_context.Context
    link: trace.Link = field(init=False)

    def __post_init__(self) -> None:
        self.link = trace.Link(trace.get_current_span(self.parent).get_span_context())


@dataclass
class Batch:
    """Fetched messages, decoded: every message in `received`, the decodable ones in `deliveries`."""

    received: list[Received]
    deliveries: list[Delivery]


def receive(msgs: Sequence[Msg], mode: str) -> Batch:
    """Decode fetched messages; one that cannot be decoded, is of the wrong Stripe mode, or whose
    object does not have the types Stripe documents (`stripe_shapes`) is undecodable at once."""
    received = [Received(m) for m in msgs]
    deliveries = []
    for r in received:
        try:
            event, envelope = from_envelope(r.msg.data)
            check_mode(event, mode)
            check_body(event.raw)
            check_object(event.object)
        except EventError as exc:
            r.outcome, r.detail = Outcome.UNDECODABLE, f"undecodable: {exc}"
            continue
        deliveries.append(Delivery(r, event, envelope, extract_context(r.msg.headers)))
    return Batch(received, deliveries)


def database_unavailable(deliveries: Sequence[Delivery], exc: BaseException) -> None:
    """The batch did not commit: whatever it decided is void, except a message's own failure."""
    for d in deliveries:
        r = d.received
        if r.outcome is not Outcome.FAILED_PERMANENT and r.outcome is not Outcome.FAILED_RETRYABLE:
            r.outcome, r.detail = Outcome.DATABASE_UNAVAILABLE, f"database: {exc}"


class _DryRunRollback(Exception):
    """Raised at the end of a dry run's transaction (or savepoint) to undo what it wrote."""


@dataclass
class _Failure:
    #: The message the applier was on when it raised; None when it raised between messages.
    delivery: Delivery | None
    error: Exception


class BatchRunner:
    """Applies decoded deliveries with a service's applier (steps 1-3 of the module docstring),
    deciding each one's outcome; the caller owns the connection and settles the messages.

    `run` opens its own transaction, or a savepoint when the caller has one open (replay forgets
    the events' ids first in its own). Database errors (DATABASE_ERRORS) propagate: the caller
    marks the batch `database_unavailable`.
    """

    def __init__(self, *, service: str, settings: Settings, apply: BatchApplier, count_failures: bool = False) -> None:
        self.service = service
        self.settings = settings
        self.apply = apply
        self.dry_run = settings.dry_run
        #: Keep each failed message's count in `delivery_failures` (the live consumer does;
        #: replay reports its failures instead, and a dry run writes nothing).
        self.count_failures = count_failures and not settings.dry_run
        self.handled = 0
        self.duplicates = 0
        #: The outbox rows the last `run` wrote: committed once the caller's transaction is, when
        #: the caller may hand them to the relay (`OutboxRelay.hand_over`).
        self.written: list[outbox.OutboxRow] = []

    async def run(self, conn: Conn, deliveries: Sequence[Delivery]) -> None:
        self.written = []
        if not deliveries:
            return
        failed = await self._together(conn, deliveries)
        if failed is None:
            return
        log.info(
            "a message of the batch failed (%s: %s); applying them one by one",
            type(failed.error).__name__,
            failed.error,
        )
        # Not run twice in one pass: the message that failed, nor a second copy of a failed event.
        failures: dict[str, Exception] = {}
        if failed.delivery is not None:
            failures[failed.delivery.event.id] = failed.error
        async with conn.transaction():
            isolated: list[Delivery] = []
            for d in deliveries:
                error = failures.get(d.event.id)
                if error is None:
                    alone = await self._together(conn, (d,))  # a savepoint: this message only
                    if alone is None:
                        continue
                    error = failures[d.event.id] = alone.error
                _record_failure(d, error)
                isolated.append(d)
            if self.count_failures:
                retryable = [d for d in isolated if d.received.outcome is Outcome.FAILED_RETRYABLE]
                await _count_failures(conn, retryable)

    async def _together(self, conn: Conn, work: Sequence[Delivery]) -> _Failure | None:
        """`work` in one transaction (a savepoint when nested); on a failure nothing is written,
        and the failing message and its error are returned."""
        duplicates = 0
        tracked: list[Delivery | None] = [None]
        culprit: Delivery | None = None
        outgoing: list[outbox.OutboxRow] = []
        written: list[outbox.OutboxRow] = []
        fresh_work: list[Delivery] = []
        items: list[BatchItem] = []
        try:
            # One span for the whole transaction (BEGIN to COMMIT, claim and outcomes included):
            # a span per step cost as much CPU as a statement at a trickle, where every event is
            # a batch of its own, and left BEGIN and COMMIT outside every trace.
            with self._batch_span(work, "apply batch"):
                try:
                    async with (transaction := _BatchTransaction(conn, work)) as fresh:  # the span covers BEGIN..COMMIT
                        later = db.Deferred(
                            conn, hold=transaction.top_level and not self.dry_run and len(work) <= HOLD_UP_TO
                        )
                        for d in work:
                            if d.event.id not in fresh:
                                d.received.outcome = Outcome.DUPLICATE
                                duplicates += 1
                                continue
                            fresh.discard(d.event.id)  # a second copy in the same batch is a duplicate
                            ctx = HandlerContext(
                                conn=conn,
                                service=self.service,
                                settings=self.settings,
                                envelope=d.envelope,
                                outgoing=outgoing,
                            )
                            ctx.later = later
                            fresh_work.append(d)
                            items.append(BatchItem(ctx, d.event, functools.partial(self._tracked, d, ctx, tracked)))
                        if items:
                            try:
                                await self.apply(conn, items)
                            finally:
                                # The message it was on; a lone message is at fault wherever it raised.
                                culprit = tracked[0] or (fresh_work[0] if len(fresh_work) == 1 else None)
                        skipped = [
                            (i.event.id, f"skipped: {i.ctx.skipped_reason}") for i in items if i.ctx.skipped_reason
                        ]
                        last = _last_writes(conn, outgoing, skipped, held=later.pending)
                        if not self.dry_run and transaction.finish_with(last):
                            later.clear()
                            written = list(outgoing)
                        else:
                            await later.flush()
                            written = await outbox.insert_rows_returning(conn, outgoing)
                            await _record_skipped(conn, skipped)
                        if self.dry_run:
                            log.info(
                                "dry run: %d events would write their records and emit %s; rolled back",
                                len(items),
                                [e for i in items for e in i.ctx.emitted] or "nothing",
                            )
                            raise _DryRunRollback
                except _DryRunRollback:
                    pass
        except Exception as exc:
            if db.unreachable(exc):
                raise  # the database is gone, not the message wrong: the whole batch waits for it
            return _Failure(culprit, exc)
        for d, i in zip(fresh_work, items, strict=True):
            d.received.outcome = Outcome.SKIPPED if i.ctx.skipped_reason else Outcome.APPLIED
        if not self.dry_run:
            self.written.extend(written)
        self.handled += len(items)
        self.duplicates += duplicates
        return None

    @contextlib.contextmanager
    def _tracked(self, d: Delivery, ctx: HandlerContext, tracked: list[Delivery | None]) -> Iterator[trace.Span]:
        """The message's consume span (continuing the trace it was published under) and log
        context, noting the message while the applier is on it, so that message alone keeps a
        failure raised there and is not run a second time."""
        token = current_event_id.set(d.event.id)
        try:
            with _tracer.start_as_current_span(
                f"{self.service} consume {d.received.msg.subject}",
                context=d.parent,
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": d.received.msg.subject,
                    "messaging.message.id": d.event.id,
                    "stripe.event_type": d.event.type,
                },
            ) as span:
                tracked[0] = d
                yield span
                tracked[0] = None
                if ctx.skipped_reason:
                    span.set_attribute("syncmesh.skipped", ctx.skipped_reason)
        finally:
            current_event_id.reset(token)

    def _batch_span(self, work: Sequence[Delivery], what: str) -> Any:
        """A span for statements that serve the whole batch: in the trace of the batch's first
        message (so a lone webhook is one trace end to end) and linked to every message's."""
        return _tracer.start_as_current_span(
            f"{self.service} {what}",
            context=work[0].parent if work else None,
            links=[d.link for d in work],
            attributes={"messaging.batch.message_count": len(work)},
        )


def backoff_seconds(attempt: int) -> float:
    """0.5 s, 1 s, 2 s, ... capped at 30 s: quick for blips, gentle for outages."""
    return float(min(30.0, 0.5 * 2 ** max(0, attempt - 1)))


class Consumer:
    """The fetch loop: fetch, apply with the service's `BatchRunner`, settle by `ACK_POLICY`."""

    def __init__(
        self,
        *,
        service: str,
        bus: Bus,
        pool: asyncpg.Pool,
        apply: BatchApplier,
        subjects: tuple[str, ...],
        settings: Settings,
        on_commit: Callable[[], None] | None = None,
        on_outbox: Callable[[Sequence[outbox.OutboxRow]], None] | None = None,
        durable: str | None = None,
        stream: str = STRIPE_STREAM,
        fetch_ahead: bool = False,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.bus = bus
        self.pool = pool
        self.runner = BatchRunner(service=service, settings=settings, apply=apply, count_failures=True)
        self.fetch_ahead = fetch_ahead
        self.subjects = subjects
        self.settings = settings
        self.on_commit = on_commit
        #: Gets the outbox rows each batch committed (the relay's `hand_over`).
        self.on_outbox = on_outbox
        self.durable = durable or (f"{service}-dryrun" if settings.dry_run else service)
        self.stream = stream
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._psub: Any = None
        self.dead_lettered = 0
        #: Loop time before which the next fetch waits (`fetch_linger_seconds`).
        self._linger_until = 0.0

    @property
    def handled(self) -> int:
        """New events applied (or skipped) so far, dry-run ones included."""
        return self.runner.handled

    @property
    def duplicates(self) -> int:
        return self.runner.duplicates

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
        """Fetch and apply until `stop()`; survives NATS and PostgreSQL outages."""
        psub = None
        ahead: asyncio.Task[Batch | None] | None = None
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
                        _take_delivered_at_once(psub)
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
                if any(r.outcome is Outcome.DATABASE_UNAVAILABLE for r in batch.received):
                    await self._until_the_database_answers()
        finally:
            if ahead is not None:
                await self._give_back(ahead)

    async def _until_the_database_answers(self) -> None:
        """Fetch nothing while PostgreSQL is unreachable: every message fetched meanwhile could only
        be nak'd again. Polled with backoff (0.2 s up to SYNCMESH_DATABASE_RETRY_MAX_SECONDS, 2 s),
        so the loop resumes within about that long of the database's return, a promotion included."""
        delay = 0.2
        while not self._stopping.is_set() and not await db.ping(self.pool):
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.database_retry_max_seconds)

    async def _next_batch(self, psub: Any) -> Batch | None:
        loop = asyncio.get_running_loop()
        if (wait := self._linger_until - loop.time()) > 0:
            await asyncio.sleep(wait)
        try:
            msgs = await psub.fetch(self.settings.fetch_batch, timeout=self.settings.fetch_timeout_seconds)
        except TimeoutError:
            return None
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("fetch failed: %s", exc)
            await asyncio.sleep(0.2)
            return None
        if not msgs:
            return None
        partial = len(msgs) < self.settings.fetch_batch
        self._linger_until = loop.time() + self.settings.fetch_linger_seconds if partial else 0.0
        return receive(msgs, self.settings.mode)

    async def _give_back(self, ahead: asyncio.Task[Batch | None]) -> None:
        """A batch fetched ahead but not applied goes back for immediate redelivery; a fetch cut
        short leaves what it had to JetStream's ack_wait, as a crash would."""
        if not ahead.done():
            ahead.cancel()
            return
        if ahead.cancelled() or ahead.exception() is not None:
            return
        batch = ahead.result()
        for r in batch.received if batch is not None else ():
            with contextlib.suppress(Exception):
                await r.msg.nak()

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

    async def _apply_batch(self, batch: Batch) -> None:
        started = time.perf_counter()
        await self._apply_and_settle(batch)
        types = {id(d.received): d.event.type for d in batch.deliveries}
        ids = {id(d.received): d.event.id for d in batch.deliveries}
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch.received))
            self.metrics.apply_seconds.observe(time.perf_counter() - started)
            # Counted per (type, outcome) of the batch: a label lookup per event was a share of
            # its CPU where a batch holds a few types.
            counts = Counter((types.get(id(r), ""), _METRIC_OUTCOMES.get(r.outcome, "waiting")) for r in batch.received)
            for (event_type, outcome), n in counts.items():
                self.metrics.event(event_type, outcome, n)
        if log.isEnabledFor(logging.DEBUG):  # one line per event: what became of it
            for r in batch.received:
                outcome = r.outcome.value if r.outcome is not None else "undecided"
                log.debug(
                    "%s %s %s%s",
                    outcome,
                    types.get(id(r), r.msg.subject),
                    ids.get(id(r), "-"),
                    f": {r.detail}" if r.detail else "",
                    extra={"outcome": outcome, "subject": r.msg.subject},
                )

    async def _apply_and_settle(self, batch: Batch) -> None:
        if batch.deliveries:
            try:
                async with self.pool.acquire() as conn:
                    await self.runner.run(conn, batch.deliveries)
            except DATABASE_ERRORS as exc:
                if db.unreachable(exc):
                    log.warning(
                        "batch of %d not committed, PostgreSQL unreachable (%s); waiting for it",
                        len(batch.received),
                        exc,
                    )
                    database_unavailable(batch.deliveries, exc)
                else:
                    log.warning("batch of %d not committed (%s); will be retried", len(batch.received), exc)
                    for d in batch.deliveries:
                        if d.received.outcome not in (Outcome.FAILED_PERMANENT, Outcome.FAILED_RETRYABLE):
                            _record_failure(d, exc)
            else:
                if self.on_outbox is not None and self.runner.written:
                    self.on_outbox(self.runner.written)
                if self.on_commit is not None:
                    self.on_commit()
        for r in batch.received:
            await self._settle(r)

    async def _settle(self, r: Received) -> None:
        msg = r.msg
        verdict = _UNDECIDED if r.outcome is None else ACK_POLICY[r.outcome]
        if verdict is Verdict.ACK:
            await _quietly(msg.ack())
            return
        attempts = _attempts(msg)
        reason = r.detail
        if verdict is Verdict.WAIT:
            # PostgreSQL down: the loop itself waits for it, so the message may come back at
            # once; Stripe down: back off as for a failure, without counting one.
            delay = 0.5 if r.outcome is Outcome.DATABASE_UNAVAILABLE else backoff_seconds(attempts)
            await _quietly(msg.nak(delay=delay))
            return
        if verdict is Verdict.RETRY:
            failures = r.failures or attempts
            if failures < self.settings.max_deliver:
                await _quietly(msg.nak(delay=backoff_seconds(failures)))
                return
            reason = f"gave up after {failures} failed attempts: {r.detail}"
        try:
            await self.dead_letter(msg, reason, attempts)
        except PublishError as exc:
            log.error("could not dead-letter (%s); will retry", exc)
            await _quietly(msg.nak(delay=backoff_seconds(attempts)))
            return
        self.dead_lettered += 1
        if self.metrics is not None:
            self.metrics.event(_event_type(msg), "dead_lettered")
        await _quietly(msg.ack())
        if verdict is Verdict.RETRY and r.failures:
            # A redrive after a fix starts counting afresh; if this is lost, it starts at the limit.
            with contextlib.suppress(*DATABASE_ERRORS):
                await self.pool.execute("DELETE FROM delivery_failures WHERE event_id = $1", _event_id(msg))

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


def _record_failure(d: Delivery, exc: Exception) -> None:
    """PermanentError dead-letters at once; anything else is retried until max_deliver."""
    r = d.received
    if isinstance(exc, PermanentError):
        r.outcome, r.detail = Outcome.FAILED_PERMANENT, f"permanent: {exc}"
        return
    if isinstance(exc, UnavailableError):
        r.outcome, r.detail = Outcome.DEPENDENCY_UNAVAILABLE, f"unavailable: {exc}"
        log.warning("a dependency is unavailable for %s: %s", d.event.type, exc)
        return
    r.outcome, r.detail = Outcome.FAILED_RETRYABLE, f"{type(exc).__name__}: {exc}"
    log.warning("applier failed for %s: %s", d.event.type, r.detail)


async def _count_failures(conn: Conn, failed: Sequence[Delivery]) -> None:
    """One more failed attempt for each message whose applier failed on it (sorted by id, so
    replicas lock rows in one order); each message learns its count."""
    if not failed:
        return
    rows = sorted({d.event.id: d.received.detail[:2000] for d in failed}.items())
    counts = await conn.fetch(
        "INSERT INTO delivery_failures (event_id, failures, last_error) "
        "SELECT id, 1, error FROM unnest($1::text[], $2::text[]) AS f(id, error) "
        "ON CONFLICT (event_id) DO UPDATE SET failures = delivery_failures.failures + 1, "
        "last_error = EXCLUDED.last_error, last_failed_at = now() RETURNING event_id, failures",
        [r[0] for r in rows],
        [r[1] for r in rows],
    )
    by_id = {r["event_id"]: int(r["failures"]) for r in counts}
    for d in failed:
        d.received.failures = by_id.get(d.event.id, 0)


class _BatchTransaction:
    """The batch's transaction, entered with its claim (`_claim`): gives the ids claimed now.

    At the top level, BEGIN and the claim go to PostgreSQL as one simple query, the claim's values
    written as SQL literals (`_literal`): a batch of one, every event at a trickle, paid a round
    trip for BEGIN alone, the service's CPU for it and PostgreSQL's. The INSERT's row count says
    whether every id was new (the common case); only when some were not does a second statement
    ask which rows this transaction wrote. Nested (the isolation pass, replay) it is a savepoint
    and the claim its own statement, as before. BEGIN, COMMIT and ROLLBACK get no span of their
    own (`db.UntracedTransaction`); the claim keeps its span (named after the BEGIN before it).

    Likewise at the end: the batch's last writes (what the applier held back, `db.Deferred`; its
    outbox rows; the outcomes of skipped events) may go with the COMMIT as one simple query
    (`finish_with`), where they were a round trip each before it. If one of them fails, the rest
    and the COMMIT are not run: the transaction is rolled back and the error goes up, as any
    failure of the batch does (the one-by-one pass follows, where nothing is held).
    """

    __slots__ = ("_conn", "_last", "_nested", "_work")

    def __init__(self, conn: Conn, work: Sequence[Delivery]) -> None:
        self._conn = conn
        self._work = work
        self._nested: db.UntracedTransaction | None = None
        self._last: str | None = None

    @property
    def top_level(self) -> bool:
        """A transaction of its own (not a savepoint): its last writes may go with its COMMIT."""
        return self._nested is None

    def finish_with(self, statements: str | None) -> bool:
        """Run `statements` (literal SQL) in the COMMIT's round trip; False, and nothing taken,
        when they cannot go there (a savepoint, or no statements to give): the caller runs its
        writes itself."""
        if statements is None or self._nested is not None:
            return False
        self._last = statements
        return True

    async def __aenter__(self) -> set[str]:
        conn = self._conn
        rows = _claim_rows(self._work)
        values = None if conn.is_in_transaction() else _literal_rows(conn, rows)
        if values is None:
            self._nested = db.UntracedTransaction(conn)
            await self._nested.__aenter__()
            try:
                return await _claim(conn, self._work)
            except BaseException as exc:
                await self._nested.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        try:
            status = await conn.execute(
                "BEGIN; INSERT INTO processed_events (event_id, event_type, stream_sequence) VALUES "
                f"{values} ON CONFLICT (event_id) DO NOTHING"
            )
            claimed = int(status.split()[-1])
            if claimed == len(rows):
                return {r[0] for r in rows}
            if claimed == 0:
                return set()
            mine = await conn.fetch(
                "SELECT event_id FROM processed_events WHERE event_id = ANY($1::text[]) "
                "AND xmin = pg_current_xact_id()::xid",
                [r[0] for r in rows],
            )
            return {r["event_id"] for r in mine}
        except BaseException:
            await self._end("ROLLBACK", quietly=True)
            raise

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self._nested is not None:
            await self._nested.__aexit__(exc_type, exc, tb)
        elif exc_type is None:
            await self._end(f"{self._last}; COMMIT" if self._last else "COMMIT", quietly=False)
        else:
            await self._end("ROLLBACK", quietly=True)

    async def _end(self, verb: str, *, quietly: bool) -> None:
        """COMMIT (after the last writes) or ROLLBACK without a span. A failure of the last writes
        leaves the transaction aborted and the COMMIT unrun: it is rolled back before the error
        goes up. A failed ROLLBACK is left to the pool, which rolls back (or discards) a
        connection released inside a transaction."""
        if quietly and not self._conn.is_in_transaction():
            return
        with db.Untraced():
            try:
                await self._conn.execute(verb)
            except Exception:
                if not quietly:
                    await self._end("ROLLBACK", quietly=True)
                    raise


def _claim_rows(work: Sequence[Delivery]) -> list[tuple[str, str, int | None]]:
    """(event id, type, stream sequence) of each event of `work` once, sorted by id, so two
    replicas claiming overlapping redeliveries lock rows in the same order and cannot deadlock.
    An event resent within the batch (a second message, another sequence) is recorded under its
    first message in the stream, whatever order the batch holds them in."""
    rows: dict[str, tuple[str, str, int | None]] = {}
    for d in work:
        sequence = _sequence(d.received.msg)
        known = rows.get(d.event.id)
        if known is None or (sequence is not None and (known[2] is None or sequence < known[2])):
            rows[d.event.id] = (d.event.id, d.event.type, sequence)
    return [rows[event_id] for event_id in sorted(rows)]


def _literal_rows(conn: Conn, rows: Sequence[tuple[str, str, int | None]]) -> str | None:
    """The claim's rows as a VALUES list of SQL literals, or None where literals cannot be
    written safely (`db.literals_allowed`, `db.values_literal`): the claim is then a statement
    with parameters."""
    return db.values_literal(rows) if db.literals_allowed(conn) else None


async def _record_skipped(conn: Conn, skipped: Sequence[tuple[str, str]]) -> None:
    """The outcomes of skipped events (id, outcome), with one statement for all of them, where
    they cannot go with the COMMIT (`_last_writes`)."""
    if skipped:
        await conn.execute(
            "UPDATE processed_events p SET outcome = s.outcome FROM unnest($1::text[], $2::text[]) "
            "AS s(event_id, outcome) WHERE p.event_id = s.event_id",
            [event_id for event_id, _ in skipped],
            [outcome for _, outcome in skipped],
        )


def _last_writes(
    conn: Conn, rows: Sequence[outbox.OutboxRow], skipped: Sequence[tuple[str, str]], *, held: str | None = None
) -> str | None:
    """The applier's held writes (`held`, `db.Deferred.pending`), then the batch's outbox insert
    and skipped outcomes, as literal SQL for the COMMIT's round trip
    (`_BatchTransaction.finish_with`); None when there is nothing to write or a value cannot be
    a literal (the caller then flushes the held writes and writes the rest with parameters)."""
    if not (rows or skipped):
        return held
    if not db.literals_allowed(conn):
        return None
    statements = [held] if held is not None else []
    if rows:
        if (insert := outbox.insert_sql(rows)) is None:
            return None
        statements.append(insert)
    if skipped:
        if (values := db.values_literal(skipped)) is None:
            return None
        statements.append(
            f"UPDATE processed_events p SET outcome = v.outcome FROM (VALUES {values}) AS v(event_id, outcome) "
            "WHERE p.event_id = v.event_id"
        )
    return "; ".join(statements)


async def _claim(conn: Conn, work: Sequence[Delivery]) -> set[str]:
    """Record the batch's event ids as processed; return those that were not already (in id
    order, `_claim_rows`)."""
    rows = _claim_rows(work)
    claimed = await conn.fetch(
        "INSERT INTO processed_events (event_id, event_type, stream_sequence) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) ON CONFLICT (event_id) DO NOTHING "
        "RETURNING event_id",
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
    )
    return {r["event_id"] for r in claimed}


#: How the metrics name each outcome (`syncmesh_events_total{outcome=...}`).
_METRIC_OUTCOMES: dict[Outcome | None, str] = {
    Outcome.APPLIED: "applied",
    Outcome.SKIPPED: "skipped",
    Outcome.DUPLICATE: "duplicate",
    Outcome.FAILED_RETRYABLE: "failed",
    Outcome.FAILED_PERMANENT: "failed",
    Outcome.UNDECODABLE: "undecodable",
    Outcome.DATABASE_UNAVAILABLE: "waiting",
    Outcome.DEPENDENCY_UNAVAILABLE: "waiting",
}


def _event_type(msg: Msg) -> str:
    """`stripe.invoice.paid` -> `invoice.paid`: the type, from the subject the gateway chose."""
    return msg.subject.removeprefix("stripe.")


def _event_id(msg: Msg) -> str:
    return str((msg.headers or {}).get("Nats-Msg-Id", ""))


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


#: How long a fetch waits for more after a message that came out of a quiet spell before it
#: returns them (see `_take_delivered_at_once`)...
FOLLOW_UP_SECONDS = 0.005
#: ... a spell being at least this long, with the stream caught up.
QUIET_SECONDS = 0.05


def _take_delivered_at_once(psub: Any) -> None:
    """Make the pull subscription's fetch take its messages without a task and a timer for each,
    and return soon after its first message.

    nats-py's fetch asks for the batch once and then awaits each message with `next_msg`, which
    creates two tasks (its own and `asyncio.wait_for`'s), a timer and a uuid4 per message even
    when the message is already in the subscription's queue: ~35 us per message on the bench
    machine, a tenth of a service's CPU per event draining a backlog, where the server has
    delivered most of a batch by the time the first message is read. A message already queued is
    taken at once; an empty queue (every fetch at a trickle, where each event is its own batch) is
    waited on in this task under `asyncio.timeout`: one timer, no task. Either way with
    `next_msg`'s bookkeeping (the pending byte count, `task_done`) and its errors (nats-py's
    TimeoutError, ConnectionClosedError). Left as it is when this nats-py keeps its subscription
    otherwise (the fetch is then only slower).

    A message that ends a quiet spell (the stream was caught up, and it was waited for
    QUIET_SECONDS or more) is followed up for FOLLOW_UP_SECONDS at most, not for the rest of the
    fetch's timeout. nats-py's fetch keeps reading after its first message until a status
    message ends the pull request it is on; but a fetch that returned early leaves its pull
    request open on the server until it expires, and the next event can be delivered on that
    older request, whose only status is its 408 at expiry. So an event arriving a few seconds
    after the one before waited for that expiry, up to the whole fetch timeout: 400-700 ms for
    the second event after a quiet spell in the bench's idle section, every run, with the first
    and the later ones at 10-40 ms. A backlog is left to nats-py's own ending (the batch full, or
    the status of the no-wait request that asked for it): a plain time limit there also cut the
    bench's drain batches short whenever the service's loop was busy for a moment (billing's
    20,000 events in 24-29 batches instead of 20).

    Unlike nats-py's, this wait is not registered for the connection's close to cancel: a fetch
    waiting when the connection closes ends at its own timeout (`fetch_timeout_seconds`) instead,
    which the consumer's loop, stopped before the bus is closed, never waits for.
    """
    sub = getattr(psub, "_sub", None)
    queue = getattr(sub, "_pending_queue", None)
    conn = getattr(sub, "_conn", None)
    fetch = getattr(psub, "fetch", None)
    if (
        sub is None
        or conn is None
        or fetch is None
        or not isinstance(queue, asyncio.Queue)
        or not hasattr(sub, "_pending_size")
    ):
        return
    #: [whether the fetch under way holds a message it waited QUIET_SECONDS or more for]
    after_quiet = [False]
    #: [whether the last fetch found the stream caught up: fewer messages than it asked for]
    caught_up = [True]

    async def next_msg(timeout: float | None = 1.0) -> Msg:
        waited = 0.0
        if queue.empty():
            if conn.is_closed:
                raise nats.errors.ConnectionClosedError
            if after_quiet[0] and (timeout is None or timeout > FOLLOW_UP_SECONDS):
                timeout = FOLLOW_UP_SECONDS
            since = time.monotonic()
            try:
                async with asyncio.timeout(timeout):
                    msg: Msg = await queue.get()
            except TimeoutError:
                raise nats.errors.TimeoutError from None
            waited = time.monotonic() - since
        else:
            msg = queue.get_nowait()
        sub._pending_size -= len(msg.data)
        queue.task_done()
        if waited >= QUIET_SECONDS and caught_up[0] and not (msg.headers and msg.headers.get("Status")):
            after_quiet[0] = True
        return msg

    async def fetch_soon(batch: int = 1, *args: Any, **kwargs: Any) -> list[Msg]:
        after_quiet[0] = False
        try:
            msgs: list[Msg] = await fetch(batch, *args, **kwargs)
        except Exception:
            caught_up[0] = True
            raise
        caught_up[0] = len(msgs) < batch
        return msgs

    sub.next_msg = next_msg
    psub.fetch = fetch_soon


async def _quietly(awaitable: Awaitable[Any]) -> None:
    """Acks are best effort: a lost ack means a redelivery, which the idempotency record absorbs."""
    try:
        await awaitable
    except (nats.errors.Error, TimeoutError) as exc:
        log.debug("ack/nak not sent: %s", exc)


__all__ = [
    "ACK_POLICY",
    "DATABASE_ERRORS",
    "DLQ_STREAM",
    "Batch",
    "BatchApplier",
    "BatchItem",
    "BatchRunner",
    "Consumer",
    "Delivery",
    "HandlerContext",
    "Outcome",
    "Received",
    "Verdict",
    "backoff_seconds",
    "database_unavailable",
    "receive",
]
