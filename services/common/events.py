"""Stripe events as the mesh passes them around: parsed once, checked for shape, wrapped in
the protobuf envelope that travels on NATS.

The gateway checks the shape before publishing (so a malformed body gets a 400 and reaches no
consumer); consumers decode the envelope back into a `StripeEvent`. Both use this module so
the two sides cannot disagree about what an event is.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from google.protobuf.timestamp_pb2 import Timestamp
from syncmesh.events.v1 import envelope_pb2

from services.common.errors import MalformedEventError, WrongModeError

_EVENT_ID = re.compile(r"^evt_[A-Za-z0-9_]{1,255}$")
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+){1,5}$")
#: Every digit to "9", every other byte to a space: 20 nines in a row in the translated body
#: mark a number orjson might read beyond 64 bits, where it returns a float. (Two C passes over
#: the body, 4 us for 3.5 KB; the regular expression [0-9]{20} took 50.)
_DIGITS_AS_NINES = bytes(b"9"[0] if chr(i) in "0123456789" else b" "[0] for i in range(256))
_TWENTY_DIGITS = b"9" * 20
#: The last second a protobuf Timestamp (and a datetime) can hold: 9999-12-31T23:59:59Z. A
#: `created` beyond it is no date at all, and would fail the envelope or the ledger later.
MAX_TIMESTAMP = 253_402_300_799


@dataclass(frozen=True)
class StripeEvent:
    """One Stripe event: its identity, ordering facts and the object it carries."""

    id: str
    type: str
    created: int
    livemode: bool
    api_version: str
    account: str
    object: dict[str, Any]
    previous_attributes: dict[str, Any] | None
    raw: bytes

    @property
    def subject(self) -> str:
        return subject_for(self.type)

    @property
    def object_id(self) -> str:
        return str(self.object.get("id", ""))

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created, tz=UTC)


def subject_for(event_type: str) -> str:
    return f"stripe.{event_type}"


def load_json(body: bytes) -> Any:
    """Parse JSON as RFC 8259 has it (UTF-8; no NaN, Infinity or lone surrogates), every integer
    exact.

    orjson reads a 3.5 KB event in a third of the standard library's time, and every event is
    parsed once by the gateway and once by each service (bench/README.md). But orjson turns an
    integer beyond 64 bits into a float, and money must never be a float: a body with 20 digits
    in a row anywhere (even inside a string, which is harmless) is read by the standard library
    instead, so such a number stays the exact integer it was and fails loudly where it is used.
    Raises ValueError (json.JSONDecodeError or UnicodeDecodeError) when it is not JSON, and also
    when it nests deeper than a parser's stack allows (orjson stops at 1,024 levels; the standard
    library would raise RecursionError), since no Stripe event nests more than a few levels.
    """
    if _TWENTY_DIGITS in bytes(body).translate(_DIGITS_AS_NINES):
        try:
            return json.loads(bytes(body).decode("utf-8"), parse_constant=_not_json)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
    return orjson.loads(body)


def _not_json(constant: str) -> Any:
    raise json.JSONDecodeError(f"{constant} is not JSON", constant, 0)


def parse_event(body: bytes) -> StripeEvent:
    """Parse and check a Stripe event body; raise MalformedEventError with a short reason."""
    try:
        data = load_json(body)
    except ValueError:
        raise MalformedEventError("body is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedEventError("body is not a JSON object")
    if data.get("object") != "event":
        raise MalformedEventError('not a Stripe event (object != "event")')
    event_id = data.get("id")
    if not isinstance(event_id, str) or not _EVENT_ID.match(event_id):
        raise MalformedEventError("event id missing or not of the form evt_…")
    event_type = data.get("type")
    if not isinstance(event_type, str) or not _EVENT_TYPE.match(event_type):
        raise MalformedEventError("event type missing or malformed")
    created = data.get("created")
    if not isinstance(created, int) or isinstance(created, bool) or not 0 < created <= MAX_TIMESTAMP:
        raise MalformedEventError("event created missing or not a unix timestamp")
    livemode = data.get("livemode")
    if not isinstance(livemode, bool):
        raise MalformedEventError("event livemode missing or not a boolean")
    payload = data.get("data")
    if not isinstance(payload, dict) or not isinstance(payload.get("object"), dict):
        raise MalformedEventError("event data.object missing or not an object")
    previous = payload.get("previous_attributes")
    if previous is not None and not isinstance(previous, dict):
        raise MalformedEventError("event data.previous_attributes is not an object")
    api_version = data.get("api_version") or ""
    account = data.get("account") or ""
    if not isinstance(api_version, str) or not isinstance(account, str):
        raise MalformedEventError("event api_version/account must be strings")
    return StripeEvent(
        id=event_id,
        type=event_type,
        created=created,
        livemode=livemode,
        api_version=api_version,
        account=account,
        object=payload["object"],
        previous_attributes=previous,
        raw=bytes(body),
    )


def check_mode(event: StripeEvent, mode: str) -> None:
    """Refuse an event of the other mode: test data must never reach a live ledger."""
    if event.livemode != (mode == "live"):
        shown = "live" if event.livemode else "test"
        raise WrongModeError(f"{shown}-mode event refused: this mesh runs in {mode} mode (SYNCMESH_MODE)")


def to_envelope(event: StripeEvent, *, source: int, received_at: datetime | None = None) -> bytes:
    if received_at is None:
        # The clock read directly, to the microsecond as FromDatetime has it: building a datetime
        # and converting it back cost the gateway more than the rest of the envelope.
        micros = time.time_ns() // 1000
        received = Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)
    else:
        received = Timestamp()
        received.FromDatetime(received_at)
    envelope = envelope_pb2.StripeEventEnvelope(
        event_id=event.id,
        event_type=event.type,
        created=Timestamp(seconds=event.created),
        livemode=event.livemode,
        api_version=event.api_version,
        account=event.account,
        payload=event.raw,
        received_at=received,
        source=source,  # type: ignore[arg-type]
    )
    return envelope.SerializeToString()


def from_envelope(data: bytes) -> tuple[StripeEvent, envelope_pb2.StripeEventEnvelope]:
    """Decode a NATS message body; MalformedEventError if it is not a valid envelope."""
    envelope = envelope_pb2.StripeEventEnvelope()
    try:
        envelope.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, but be strict about anything odd
        raise MalformedEventError(f"message is not a StripeEventEnvelope: {exc}") from None
    if not envelope.event_id or not envelope.payload:
        raise MalformedEventError("envelope has no event id or payload")
    event = parse_event(envelope.payload)
    if event.id != envelope.event_id:
        raise MalformedEventError("envelope event id does not match its payload")
    return event, envelope


#: Fields only the current shape (API 2025-03-31 "basil" and later) has, on invoices and lines.
_BASIL_ONLY = ("pricing", "total_taxes", "amount_overpaid", "taxes")
#: Fields the current shape removed from invoices and invoice lines.
_LEGACY_ONLY = ("charge", "subscription", "paid", "total_tax_amounts", "price", "proration", "plan", "invoice_item")


def api_shape(event_or_object: StripeEvent | dict[str, Any]) -> str:
    """'basil' for payloads shaped by API 2025-03-31 and later, 'legacy' before.

    Decided by the object itself rather than the version string, because backfilled objects and
    localstripe carry no trustworthy version. `parent` alone proves nothing: a current standalone
    invoice has `parent: null`, and localstripe sends `parent: null` beside the legacy fields.
    """
    obj = event_or_object.object if isinstance(event_or_object, StripeEvent) else event_or_object
    if isinstance(obj.get("parent"), dict) or any(key in obj for key in _BASIL_ONLY):
        return "basil"
    if any(key in obj for key in _LEGACY_ONLY):
        return "legacy"
    return "basil" if "parent" in obj else "legacy"
