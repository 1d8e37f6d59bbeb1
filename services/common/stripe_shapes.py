"""The types Stripe documents for the fields the mesh reads, checked before any service applies an event.

A signed event is Stripe's, but a signature only proves who sent the bytes, and events also reach
the stream by other routes (backfill, redrive, a publisher with stream access). An object whose
`total` is a string, whose `lines.data` is not a list or which has no `created` used to become a
bogus record (an open draft dated 1970 with zero totals); a string with a NUL byte failed in
PostgreSQL and was retried as if the database were at fault. Every consumer checks the shape when
it decodes a message, so such an event is dead-lettered at once, with the field at fault, before
any service stores anything, and in every service alike.

The check is deliberately narrow: the fields the services read, by object type, in both API
shapes (before and after 2025-03-31), at the cost of a few dictionary lookups per event. An
unknown field is never refused (Stripe adds fields without notice); a documented one of the wrong
type always is. It is not applied at the gateway: a 400 there makes Stripe retry and, after three
days, disable the endpoint, while a dead letter keeps the event for a redrive once a wrong rule is
fixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from services.common.errors import MalformedEventError

_INT64 = 2**63 - 1

#: Integer fields by object type: amounts in minor units, counts, and Unix times. None is allowed
#: (Stripe sends null for an unset time), anything else must be a whole number within 64 bits.
_INTEGERS: Mapping[str, tuple[str, ...]] = {
    "invoice": (
        "amount_due",
        "amount_paid",
        "amount_remaining",
        "amount_overpaid",
        "subtotal",
        "subtotal_excluding_tax",
        "total",
        "total_excluding_tax",
        "tax",
        "starting_balance",
        "period_start",
        "period_end",
        "due_date",
        "attempt_count",
        "next_payment_attempt",
        "effective_at",
    ),
    "line_item": ("amount", "quantity", "subtotal"),
    "invoiceitem": ("amount", "quantity", "date"),
    "invoice_payment": ("amount_paid", "amount_requested"),
    "charge": ("amount", "amount_captured", "amount_refunded"),
    "refund": ("amount",),
    "credit_note": ("amount", "subtotal", "total", "discount_amount", "pre_payment_amount", "post_payment_amount"),
    "credit_note_line_item": ("amount", "quantity"),
    "customer": ("balance",),
    "subscription": ("current_period_start", "current_period_end", "canceled_at", "ended_at", "start_date"),
    "subscription_item": ("quantity", "current_period_start", "current_period_end"),
    "price": ("unit_amount",),
    "plan": ("amount",),
}
#: String fields by object type (None allowed where Stripe sends null).
_STRINGS: Mapping[str, tuple[str, ...]] = {
    "invoice": ("currency", "status", "number"),
    "line_item": ("currency", "description"),
    "invoice_payment": ("currency", "status"),
    "charge": ("currency", "status"),
    "refund": ("currency", "status"),
    "credit_note": ("currency", "status"),
    "customer": ("email", "name"),
    "subscription": ("status",),
    "product": ("name",),
}
#: Objects the services store: their `id` must be a string and `created` a whole number.
_DATED = frozenset(
    {"invoice", "invoice_payment", "charge", "refund", "credit_note", "customer", "subscription", "product", "price"}
)
#: Nested objects read with their parent: where they sit, and what they are when they carry no
#: `object` of their own.
_NESTED_TIMES = {"status_transitions": ("finalized_at", "paid_at", "voided_at", "marked_uncollectible_at")}
_LISTS = ("lines", "refunds", "items")


def check_object(obj: Mapping[str, Any], path: str = "data.object") -> None:
    """Raise MalformedEventError naming the first field whose type Stripe does not send there."""
    kind = obj.get("object")
    if kind is not None and not isinstance(kind, str):
        _refuse(f"{path}.object", "a string", kind)
    if kind in _DATED:
        if not isinstance(obj.get("id"), str) or not obj["id"]:
            _refuse(f"{path}.id", "a non-empty string", obj.get("id"))
        # A deleted object arrives as a stub, {id, object, deleted: true}, with nothing else.
        _integer(obj, "created", path, required=obj.get("deleted") is not True)
    for name in _INTEGERS.get(str(kind), ()):
        _integer(obj, name, path)
    for name in _STRINGS.get(str(kind), ()):
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            _refuse(f"{path}.{name}", "a string", value)
    for parent, times in _NESTED_TIMES.items():
        nested = obj.get(parent)
        if nested is None:
            continue
        if not isinstance(nested, dict):
            _refuse(f"{path}.{parent}", "an object", nested)
        for name in times:
            _integer(nested, name, f"{path}.{parent}")
    period = obj.get("period")
    if isinstance(period, dict):
        for name in ("start", "end"):
            _integer(period, name, f"{path}.period")
    elif period is not None:
        _refuse(f"{path}.period", "an object", period)
    for name in _LISTS:
        listed = obj.get(name)
        if isinstance(listed, dict) and listed.get("object") == "list":
            data = listed.get("data")
            if not isinstance(data, list):
                _refuse(f"{path}.{name}.data", "a list", data)
            for i, item in enumerate(data):
                if not isinstance(item, dict):
                    _refuse(f"{path}.{name}.data[{i}]", "an object", item)
                check_object(item, f"{path}.{name}.data[{i}]")
        elif name == "lines" and kind == "invoice" and listed is not None:
            _refuse(f"{path}.lines", "a list object", listed)


def check_body(raw: bytes) -> None:
    """No Stripe string holds a NUL character; PostgreSQL's text cannot, so one would fail the
    write as if the database were at fault. JSON escapes it as \\u0000: one scan of the bytes."""
    if b"\\u0000" in raw:
        raise MalformedEventError("a string holds a NUL character (\\u0000), which no Stripe field does")


def _integer(obj: Mapping[str, Any], name: str, path: str, *, required: bool = False) -> None:
    value = obj.get(name)
    if value is None and not required:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        _refuse(f"{path}.{name}", "a whole number", value)
    if not -_INT64 <= value <= _INT64:
        raise MalformedEventError(f"{path}.{name}: {value} does not fit in 64 bits")


def _refuse(field: str, expected: str, got: object) -> NoReturn:
    shown = "nothing" if got is None else type(got).__name__
    raise MalformedEventError(f"{field}: expected {expected}, got {shown}")
