"""Records as the protobuf messages the gRPC API and the domain events carry."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from syncmesh.customer.v1 import customer_service_pb2 as pb
from syncmesh.customer.v1 import events_pb2
from syncmesh.type.v1 import money_pb2

from services.customer.mapping import CustomerRecord
from services.customer.store import HistoryRow

_ORIGINS = {"stripe_event": pb.CUSTOMER_ORIGIN_STRIPE_EVENT, "import": pb.CUSTOMER_ORIGIN_IMPORT}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime | None) -> Timestamp | None:
    """`value` (naive: UTC) as a Timestamp, what `Timestamp.FromDatetime` gives, in a fifth of its
    time (4.5 us a call through its time tuple): up to four per record announced, every event."""
    return None if value is None else _timestamp(value)


def _timestamp(value: datetime) -> Timestamp:
    delta = (value if value.utcoffset() is not None else value.replace(tzinfo=UTC)) - _EPOCH
    return Timestamp(seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1_000)


def customer_message(record: CustomerRecord) -> pb.Customer:
    message = pb.Customer(
        erp_customer_id=record.erp_customer_id,
        stripe_customer_id=record.stripe_customer_id or "",
        email=record.email or "",
        name=record.name or "",
        phone=record.phone or "",
        description=record.description or "",
        currency=record.currency or "",
        balance=money_pb2.Money(amount_minor=record.balance_minor, currency=record.currency or ""),
        delinquent=record.delinquent,
        metadata=record.metadata,
        livemode=record.livemode,
        active=record.active,
        last_stripe_event_id=record.last_event_id or "",
        origin=_ORIGINS.get(record.origin, pb.CUSTOMER_ORIGIN_UNSPECIFIED),
    )
    if record.address is not None:
        a = record.address
        message.billing_address.CopyFrom(
            pb.Address(
                line1=a.line1 or "",
                line2=a.line2 or "",
                city=a.city or "",
                state=a.state or "",
                postal_code=a.postal_code or "",
                country=a.country or "",
            )
        )
    for name, value in (
        ("deleted_at", record.deleted_at),
        ("stripe_created_at", record.stripe_created),
        ("created_at", record.created_at),
        ("updated_at", record.updated_at),
    ):
        if value is not None:
            getattr(message, name).CopyFrom(_timestamp(value))
    return message


def history_message(row: HistoryRow) -> pb.HistoryEntry:
    entry = pb.HistoryEntry(
        stripe_event_id=row.stripe_event_id or "",
        action=row.action,
        stripe_customer_id=row.stripe_customer_id or "",
        outcome=row.outcome,
    )
    for name, value in (("event_created_at", row.event_created), ("recorded_at", row.recorded_at)):
        ts = timestamp(value)
        if ts is not None:
            getattr(entry, name).CopyFrom(ts)
    return entry


def announcements(before: CustomerRecord | None, after: CustomerRecord) -> list[tuple[str, Message]]:
    """The domain events for a record that went from `before` (None: new) to `after`.

    Nothing when a subscriber would see no change (a replayed state); a new record is also
    announced as linked; a record turning inactive is announced as deactivated.
    """
    if before is not None and before.state() == after.state():
        return []
    out: list[tuple[str, Message]] = [
        ("customer_upserted", events_pb2.CustomerUpserted(customer=customer_message(after), created=before is None))
    ]
    if before is None:
        out.append(
            (
                "customer_linked",
                events_pb2.CustomerLinked(
                    erp_customer_id=after.erp_customer_id,
                    stripe_customer_id=after.stripe_customer_id or "",
                    source=events_pb2.LINK_SOURCE_STRIPE_EVENT,
                ),
            )
        )
    if not after.active and (before is None or before.active):
        message = events_pb2.CustomerDeactivated(
            erp_customer_id=after.erp_customer_id, stripe_customer_id=after.stripe_customer_id or ""
        )
        deactivated = timestamp(after.deleted_at)
        if deactivated is not None:
            message.deactivated_at.CopyFrom(deactivated)
        out.append(("customer_deactivated", message))
    return out
