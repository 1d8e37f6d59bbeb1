"""Dead letters: look at them, send them back once the cause is fixed, or drop them on purpose.

A service dead-letters a message it cannot handle (see services/common/consumer.py) as a
`DeadLetter` on stream SYNCMESH_DLQ, subject `dlq.<service>`, carrying the original envelope
bytes. Redrive publishes that envelope again on its ORIGINAL subject, the way every event
enters the mesh: every interested service receives it, and those that already handled the
event id skip it through their idempotency record, so only the service that failed applies
it. The redriven copy gets its own message id (`redrive:<dlq sequence>`), because the original
id would fall inside JetStream's dedup window or, later, look like a repeat of the original;
its envelope says EVENT_SOURCE_REDRIVE so traces and audits tell it apart.

A dead letter is deleted only after its redrive is acked by JetStream, so a failure in between
leaves it in place (a second redrive of the same letter is then deduplicated by its id).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.js.errors
from google.protobuf.message import DecodeError
from syncmesh.events.v1 import dead_letter_pb2, envelope_pb2

from services import registry
from services.common.bus import DLQ_STREAM, Bus
from services.common.errors import ConflictError, NotFoundError

log = logging.getLogger(__name__)


def dlq_subject(service: str | None) -> str:
    """`dlq.<service>` as the consumer writes it (dashes become underscores), or all of them."""
    if service is None:
        return "dlq.>"
    services = registry.names()
    if service not in services:
        raise NotFoundError(f"unknown service {service!r}: choose one of {', '.join(services)}")
    return f"dlq.{service.replace('-', '_')}"


@dataclass(frozen=True)
class DeadLetterEntry:
    """One dead letter and what can be read from the envelope it carries."""

    sequence: int
    letter: dead_letter_pb2.DeadLetter
    envelope: envelope_pb2.StripeEventEnvelope | None

    @property
    def event_id(self) -> str:
        if self.envelope is not None and self.envelope.event_id:
            return self.envelope.event_id
        return str(self.letter.headers.get("Nats-Msg-Id", ""))

    @property
    def event_type(self) -> str:
        return self.envelope.event_type if self.envelope is not None else ""

    @property
    def dead_lettered_at(self) -> datetime | None:
        if not self.letter.HasField("dead_lettered_at"):
            return None
        return self.letter.dead_lettered_at.ToDatetime(tzinfo=UTC)

    def summary(self) -> dict[str, object]:
        at = self.dead_lettered_at
        return {
            "sequence": self.sequence,
            "service": self.letter.service,
            "subject": self.letter.subject,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "attempts": self.letter.attempts,
            "reason": self.letter.reason,
            "dead_lettered_at": at.isoformat() if at else "",
        }


def decode_entry(sequence: int, data: bytes) -> DeadLetterEntry:
    letter = dead_letter_pb2.DeadLetter()
    try:
        letter.ParseFromString(data)
    except DecodeError as exc:
        raise ConflictError(f"dead letter {sequence} is not a DeadLetter message ({exc}): discard it") from None
    envelope: envelope_pb2.StripeEventEnvelope | None = envelope_pb2.StripeEventEnvelope()
    try:
        envelope.ParseFromString(letter.data)  # type: ignore[union-attr]
    except DecodeError:
        envelope = None
    if envelope is not None and not (envelope.event_id and envelope.payload):
        envelope = None
    return DeadLetterEntry(sequence=sequence, letter=letter, envelope=envelope)


async def list_dead_letters(bus: Bus, *, service: str | None = None, limit: int | None = None) -> list[DeadLetterEntry]:
    """Dead letters in stream order (oldest first), optionally of one service."""
    from services.common.stream import StreamReader

    entries: list[DeadLetterEntry] = []
    reader = StreamReader(bus, DLQ_STREAM, subjects=(dlq_subject(service),))
    async for batch in reader.batches():
        for msg in batch:
            entries.append(decode_entry(int(msg.metadata.sequence.stream), msg.data))
            if limit is not None and len(entries) >= limit:
                return entries
    return entries


async def get_dead_letter(bus: Bus, sequence: int) -> DeadLetterEntry:
    try:
        raw = await bus.js.get_msg(DLQ_STREAM, seq=sequence)
    except nats.js.errors.NotFoundError:
        raise NotFoundError(
            f"no dead letter with sequence {sequence}: it was redriven or discarded already, "
            "or the number is wrong (see `syncmesh dlq list`)"
        ) from None
    if not (raw.subject or "").startswith("dlq."):
        raise NotFoundError(f"message {sequence} of {DLQ_STREAM} is not a dead letter")
    return decode_entry(sequence, raw.data or b"")


def describe(entry: DeadLetterEntry) -> str:
    """Everything about one dead letter, the Stripe event pretty-printed, for `dlq show`."""
    lines = [f"{key}: {value}" for key, value in entry.summary().items()]
    lines.append(f"original stream sequence: {entry.letter.stream_sequence}")
    for key, value in sorted(entry.letter.headers.items()):
        lines.append(f"header {key}: {value}")
    if entry.envelope is None:
        lines.append(f"data: {len(entry.letter.data)} bytes that are not a StripeEventEnvelope")
        lines.append(f"data (repr, first 500 bytes): {entry.letter.data[:500]!r}")
        return "\n".join(lines)
    env = entry.envelope
    lines.append(f"envelope source: {envelope_pb2.EventSource.Name(env.source)}")
    lines.append(f"envelope created: {env.created.ToDatetime(tzinfo=UTC).isoformat()}")
    lines.append(f"envelope livemode: {env.livemode}  api_version: {env.api_version or '-'}")
    try:
        payload = json.dumps(json.loads(env.payload), indent=2, sort_keys=True)
    except (UnicodeDecodeError, json.JSONDecodeError):
        payload = repr(env.payload[:2000])
    lines.append("event:")
    lines.append(payload)
    return "\n".join(lines)


@dataclass(frozen=True)
class RedriveResult:
    sequence: int
    subject: str
    event_id: str
    msg_id: str
    #: True when JetStream already had this redrive (a retried redrive of the same letter).
    duplicate: bool


async def redrive(bus: Bus, sequence: int) -> RedriveResult:
    """Publish the letter's envelope again on its original subject, then delete the letter."""
    entry = await get_dead_letter(bus, sequence)
    if entry.envelope is None:
        raise ConflictError(
            f"dead letter {sequence} does not hold a Stripe event envelope, so no service could ever "
            "handle it: inspect it with `syncmesh dlq show` and remove it with `syncmesh dlq discard`"
        )
    if not entry.letter.subject.startswith("stripe."):
        raise ConflictError(
            f"dead letter {sequence} came from subject {entry.letter.subject!r}, not a Stripe event subject: "
            "redrive only sends Stripe events back"
        )
    envelope = envelope_pb2.StripeEventEnvelope()
    envelope.CopyFrom(entry.envelope)
    envelope.source = envelope_pb2.EVENT_SOURCE_REDRIVE
    # The original trace context stays, so the redriven handling shows up in the event's own trace.
    headers = {k: v for k, v in entry.letter.headers.items() if not k.lower().startswith("nats-")}
    headers["Syncmesh-Redrive-Of"] = str(sequence)
    msg_id = f"redrive:{sequence}"
    ack = await bus.publish(entry.letter.subject, envelope.SerializeToString(), msg_id=msg_id, headers=headers)
    await _delete(bus, sequence)
    log.info(
        "redrove dead letter %d (%s, event %s) to %s",
        sequence,
        entry.letter.service,
        entry.event_id,
        entry.letter.subject,
    )
    return RedriveResult(
        sequence=sequence,
        subject=entry.letter.subject,
        event_id=entry.event_id,
        msg_id=msg_id,
        duplicate=bool(ack.duplicate),
    )


async def discard(bus: Bus, sequence: int) -> DeadLetterEntry:
    """Delete one dead letter, logging what it was, so the audit trail keeps what was dropped."""
    entry = await get_dead_letter(bus, sequence)
    log.warning(
        "discarding dead letter %d: service=%s subject=%s event=%s type=%s attempts=%d reason=%s",
        sequence,
        entry.letter.service,
        entry.letter.subject,
        entry.event_id or "-",
        entry.event_type or "-",
        entry.letter.attempts,
        entry.letter.reason,
    )
    await _delete(bus, sequence)
    return entry


async def _delete(bus: Bus, sequence: int) -> None:
    try:
        await bus.js.delete_msg(DLQ_STREAM, sequence)
    except nats.js.errors.NotFoundError:
        log.info("dead letter %d was already deleted", sequence)
