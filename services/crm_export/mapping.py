"""Stripe objects -> the ClientSuccess records (clients, products, contracts, payment facts).

Pure: plain dicts in, frozen dataclasses out, no I/O and no clock. Both payload shapes are
read: the pre-2025-03 ("legacy", and localstripe's 2017-era) shape and the current ("basil")
one, because accounts on old API versions are common and the import, which lists objects with
the SDK's pinned version, must agree with events shaped by the webhook endpoint's version.

Version keys make the store order-independent: `(terminal, ts, rank, settled, content_hash)`
compared as a tuple, where `ts` is the event's `created` for live events and the moment the import read
the object for imported ones (the object's state is true as of that read), `terminal` marks
states nothing may leave (deleted customer, cancelled subscription), `rank` orders statuses
within one second, `settled` marks a customer Stripe was asked for to settle a same-second tie
(set in decide.py, never here), and the content hash breaks the remaining ties the same way
whatever order events arrive in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from services.crm_export.crm_settings import INVOICE, SUBSCRIPTION, CrmSettings, FieldMapping
from services.crm_export.records import (
    Address,
    Client,
    Contract,
    ContractLine,
    InvoicePayment,
    Product,
    StripeCustomer,
    SubscriptionState,
    Version,
)
from services.crm_export.statuses import SUBSCRIPTION_RANK, TERMINAL_SUBSCRIPTION_STATUSES

# ---------------------------------------------------------------- helpers


def _id(value: object) -> str:
    """An id whether Stripe sent it bare or expanded into an object."""
    if isinstance(value, dict):
        return str(value.get("id") or "")
    return str(value) if value else ""


def _str(value: object) -> str:
    return "" if value is None else str(value)


def _int(value: object, default: int = 0) -> int:
    if isinstance(value, bool) or value is None:
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return default


def customer_id_of(obj: Mapping[str, Any]) -> str:
    return _id(obj.get("customer"))


def iso_date(ts: int | None) -> str:
    if not ts:
        return ""
    return datetime.fromtimestamp(ts, tz=UTC).date().isoformat()


def lookup(obj: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    """Follow a dotted path; (False, None) when any step is missing."""
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return False, None
        current = current[part]
    return True, current


def _render(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return str(value)
    if isinstance(value, dict) and "id" in value:
        return str(value["id"])  # an expanded object: the CRM gets its id
    return json.dumps(value, sort_keys=True)


def custom_fields(obj: Mapping[str, Any], mappings: Iterable[FieldMapping]) -> dict[str, str]:
    """Each mapped field's value as text; a path missing on this object gives an empty field."""
    result = {}
    for mapping in mappings:
        _found, value = lookup(obj, mapping.stripe_path)
        result[mapping.crm_field] = _render(value)
    return result


def _address(raw: object) -> Address:
    if not isinstance(raw, dict):
        return Address()
    return Address(
        line1=_str(raw.get("line1")),
        line2=_str(raw.get("line2")),
        city=_str(raw.get("city")),
        state=_str(raw.get("state")),
        postal_code=_str(raw.get("postal_code")),
        country=_str(raw.get("country")),
    )


# ---------------------------------------------------------------- customers and products


def stripe_customer(obj: Mapping[str, Any], *, deleted: bool = False) -> StripeCustomer:
    return StripeCustomer(
        id=_id(obj.get("id")),
        email=_str(obj.get("email")),
        deleted=deleted or bool(obj.get("deleted")),
        raw=dict(obj),
    )


def client_from_customer(obj: Mapping[str, Any], settings: CrmSettings, *, deleted: bool = False) -> Client:
    """ClientSuccess's client: Stripe id, name, address, plus the mapped custom fields."""
    name = _str(obj.get("name")) or _str(obj.get("description")) or _id(obj.get("id"))
    address = obj.get("address")
    if not isinstance(address, dict) or not any(address.values()):
        shipping = obj.get("shipping")
        address = shipping.get("address") if isinstance(shipping, dict) else None
    return Client(
        stripe_customer_id=_id(obj.get("id")),
        name=name,
        email=_str(obj.get("email")),
        address=_address(address),
        custom_fields=custom_fields(obj, settings.customer_field_mappings),
        deleted=deleted or bool(obj.get("deleted")),
    )


def lifecycle_rank(event_type: str | None) -> int:
    """Within one Stripe second an update follows its create (Stripe's `created` ties them)."""
    return 1 if event_type is not None and event_type.endswith(".updated") else 0


def customer_version(
    obj: Mapping[str, Any], ts: int, *, deleted: bool = False, event_type: str | None = None
) -> Version:
    return Version(terminal=deleted or bool(obj.get("deleted")), ts=ts, rank=lifecycle_rank(event_type))


def product_from_stripe(obj: Mapping[str, Any], settings: CrmSettings, *, deleted: bool = False) -> Product:
    gone = deleted or bool(obj.get("deleted"))
    return Product(
        stripe_product_id=_id(obj.get("id")),
        name=_str(obj.get("name")),
        description=_str(obj.get("description")),
        active=bool(obj.get("active")) and not gone,
        custom_fields=custom_fields(obj, settings.product_field_mappings),
        deleted=gone,
    )


def product_version(
    obj: Mapping[str, Any], ts: int, *, deleted: bool = False, event_type: str | None = None
) -> Version:
    return Version(terminal=deleted or bool(obj.get("deleted")), ts=ts, rank=lifecycle_rank(event_type))


# ---------------------------------------------------------------- invoices


def invoice_subscription_id(invoice: Mapping[str, Any]) -> str:
    """Legacy: `subscription`; basil: `parent.subscription_details.subscription`."""
    legacy = _id(invoice.get("subscription"))
    if legacy:
        return legacy
    parent = invoice.get("parent")
    if isinstance(parent, dict):
        details = parent.get("subscription_details")
        if isinstance(details, dict):
            return _id(details.get("subscription"))
    return ""


def invoice_is_paid(invoice: Mapping[str, Any]) -> bool:
    return invoice.get("status") == "paid" or invoice.get("paid") is True


def invoice_lines(invoice: Mapping[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The lines the payload carries and whether Stripe truncated them (more to fetch)."""
    lines = invoice.get("lines")
    if not isinstance(lines, dict):
        return [], False
    data = [line for line in lines.get("data") or [] if isinstance(line, dict)]
    return data, bool(lines.get("has_more"))


def line_product_id(line: Mapping[str, Any]) -> str:
    """Basil: `pricing.price_details.product`; legacy: `price.product`; 2017-era: `plan.product`."""
    pricing = line.get("pricing")
    if isinstance(pricing, dict):
        details = pricing.get("price_details")
        if isinstance(details, dict) and details.get("product"):
            return _id(details.get("product"))
    for key in ("price", "plan"):
        holder = line.get(key)
        if isinstance(holder, dict) and holder.get("product"):
            return _id(holder.get("product"))
    return ""


def _discount_total(amounts: object) -> int:
    if not isinstance(amounts, list):
        return 0
    return sum(_int(a.get("amount")) for a in amounts if isinstance(a, dict))


def contract_from_invoice(invoice: Mapping[str, Any], lines: Sequence[Mapping[str, Any]] | None = None) -> Contract:
    """A paid invoice as a contract. `lines`: every line when the payload's list was truncated."""
    currency = _str(invoice.get("currency")).lower()
    all_lines = list(lines) if lines is not None else invoice_lines(invoice)[0]
    mapped = []
    for line in all_lines:
        period = line.get("period") if isinstance(line.get("period"), dict) else {}
        assert isinstance(period, dict)
        mapped.append(
            ContractLine(
                stripe_line_id=_id(line.get("id")),
                stripe_product_id=line_product_id(line),
                description=_str(line.get("description")),
                quantity=_int(line.get("quantity"), 1),
                start_date=iso_date(_int(period.get("start")) or None),
                end_date=iso_date(_int(period.get("end")) or None),
                amount_minor=_int(line.get("amount")),
                discount_minor=_discount_total(line.get("discount_amounts")),
                currency=_str(line.get("currency")).lower() or currency,
            )
        )
    starts = [line.start_date for line in mapped if line.start_date]
    ends = [line.end_date for line in mapped if line.end_date]
    discount = _discount_total(invoice.get("total_discount_amounts"))
    if not discount:
        discount = sum(line.discount_minor for line in mapped)
    return Contract(
        contract_id=_id(invoice.get("id")),
        source=INVOICE,
        stripe_customer_id=_id(invoice.get("customer")),
        customer_email=_str(invoice.get("customer_email")),
        status="paid",
        currency=currency,
        total_minor=_int(invoice.get("total")),
        discount_minor=discount,
        start_date=min(starts) if starts else iso_date(_int(invoice.get("period_start")) or None),
        end_date=max(ends) if ends else iso_date(_int(invoice.get("period_end")) or None),
        created=_int(invoice.get("created")),
        canceled_at=None,
        stripe_subscription_id=invoice_subscription_id(invoice),
        # In the invoice's own order (as Stripe lists it, in events and in the API alike): the
        # order a customer-success manager reads the invoice in.
        lines=tuple(mapped),
    )


def invoice_contract_version(ts: int) -> Version:
    # A paid invoice is final: every version has the same rank; the newest read wins.
    return Version(terminal=True, ts=ts, rank=0)


def invoice_payment(invoice: Mapping[str, Any], *, failed: bool) -> InvoicePayment:
    return InvoicePayment(
        invoice_id=_id(invoice.get("id")),
        stripe_customer_id=_id(invoice.get("customer")),
        failed=failed,
        paid=invoice_is_paid(invoice),
    )


def imported_invoice_payment(invoice: Mapping[str, Any]) -> InvoicePayment | None:
    """What a listed invoice says about payment health: the same facts the events would give.

    An open invoice that has been attempted has had a failed payment (`invoice.payment_failed`);
    a paid one is paid. Drafts, voids and unattempted invoices say nothing.
    """
    if invoice_is_paid(invoice):
        return invoice_payment(invoice, failed=False)
    if invoice.get("status") == "open" and _int(invoice.get("attempt_count")) > 0:
        return invoice_payment(invoice, failed=True)
    return None


# ---------------------------------------------------------------- subscriptions


def subscription_items(subscription: Mapping[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    items = subscription.get("items")
    if not isinstance(items, dict):
        return [], False
    return [i for i in items.get("data") or [] if isinstance(i, dict)], bool(items.get("has_more"))


def _unit_amount(item: Mapping[str, Any]) -> tuple[int | None, str]:
    for key in ("price", "plan"):
        holder = item.get(key)
        if isinstance(holder, dict):
            amount = holder.get("unit_amount") if key == "price" else holder.get("amount")
            currency = _str(holder.get("currency")).lower()
            if isinstance(amount, int) and not isinstance(amount, bool):
                return amount, currency
    return None, ""


def _item_product_id(item: Mapping[str, Any]) -> str:
    for key in ("price", "plan"):
        holder = item.get(key)
        if isinstance(holder, dict) and holder.get("product"):
            return _id(holder.get("product"))
    return ""


def contract_from_subscription(
    subscription: Mapping[str, Any], items: Sequence[Mapping[str, Any]] | None = None
) -> Contract:
    """A subscription as a contract that follows its status, items and cancellation.

    Period: basil keeps `current_period_*` on each item, legacy on the subscription.
    """
    status = _str(subscription.get("status"))
    sub_currency = _str(subscription.get("currency")).lower()
    all_items = list(items) if items is not None else subscription_items(subscription)[0]
    ended = _int(subscription.get("ended_at")) or None
    mapped = []
    for item in all_items:
        quantity = _int(item.get("quantity"), 1)
        unit, currency = _unit_amount(item)
        start = _int(item.get("current_period_start")) or _int(subscription.get("current_period_start"))
        end = _int(item.get("current_period_end")) or _int(subscription.get("current_period_end"))
        mapped.append(
            ContractLine(
                stripe_line_id=_id(item.get("id")),
                stripe_product_id=_item_product_id(item),
                description=_str((item.get("price") or item.get("plan") or {}).get("nickname")),
                quantity=quantity,
                start_date=iso_date(start or None),
                end_date=iso_date(ended if ended and status in TERMINAL_SUBSCRIPTION_STATUSES else end or None),
                amount_minor=(unit or 0) * quantity,
                discount_minor=0,
                currency=sub_currency or currency,
            )
        )
    currency = sub_currency or next((line.currency for line in mapped if line.currency), "")
    start_date = iso_date(_int(subscription.get("start_date")) or _int(subscription.get("created")) or None)
    ends = [line.end_date for line in mapped if line.end_date]
    end_date = iso_date(ended) if ended else (max(ends) if ends else "")
    return Contract(
        contract_id=_id(subscription.get("id")),
        source=SUBSCRIPTION,
        stripe_customer_id=_id(subscription.get("customer")),
        customer_email="",
        status=status,
        currency=currency,
        total_minor=sum(line.amount_minor - line.discount_minor for line in mapped),
        discount_minor=0,
        start_date=start_date,
        end_date=end_date,
        created=_int(subscription.get("created")),
        canceled_at=_int(subscription.get("canceled_at")) or None,
        stripe_subscription_id=_id(subscription.get("id")),
        lines=tuple(sorted(mapped, key=lambda line: line.stripe_line_id)),
    )


def subscription_version(subscription: Mapping[str, Any], ts: int, *, deleted: bool = False) -> Version:
    status = "canceled" if deleted else _str(subscription.get("status"))
    return Version(
        terminal=status in TERMINAL_SUBSCRIPTION_STATUSES,
        ts=ts,
        rank=SUBSCRIPTION_RANK.get(status, 0),
    )


def subscription_state(subscription: Mapping[str, Any], *, deleted: bool = False) -> SubscriptionState:
    return SubscriptionState(
        id=_id(subscription.get("id")),
        stripe_customer_id=_id(subscription.get("customer")),
        status="canceled" if deleted else _str(subscription.get("status")),
    )
