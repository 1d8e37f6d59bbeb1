"""Stripe billing objects -> ERP records (NetSuite's model): invoices with item and discount lines,
customer payments, refunds, credit memos, revenue schedules and the invoice's ledger state.

Pure on purpose: no I/O, no clock. Everything the ledger shows is a function of the Stripe facts
handed in, which is what makes the service order-independent: the store only has to keep the
newest fact of each kind, and the same facts always map to the same ledger.

Both payload shapes are accepted, decided per object (not by the version string, which
backfills and localstripe do not carry reliably):

    legacy (before 2025-03-31)            basil (2025-03-31 and later)
    invoice.subscription                  invoice.parent.subscription_details.subscription
    invoice.charge / paid_out_of_band     separate invoice_payment objects
    invoice.total_tax_amounts[].inclusive invoice.total_taxes[].tax_behavior
    line.price / line.plan                line.pricing.price_details.price
    line.proration                        line.parent.<type>.proration
    credit_note.refund                    credit_note.refunds[].refund

Money is integer minor units everywhere; fractional unit prices (`unit_amount_decimal`) are
parsed with Decimal and kept as text next to the rounded integer, never as a float.
"""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Literal

from services.billing.settings import BillingSettings, RevenueRule
from services.billing.statuses import (
    CREDIT_NOTE_STATUS_RANK,
    ERP_STATUS_RANK,
    REFUND_STATUS_RANK,
    STRIPE_STATUS_RANK,
)
from services.common.events import api_shape

Json = dict[str, Any]
ErpStatus = Literal["open", "paid_in_full", "voided", "written_off"]
LineKind = Literal["item", "discount"]


# --------------------------------------------------------------------------------------------
# small readers


def ref_id(value: Any) -> str | None:
    """An id from a field that is either an id string or an expanded object."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        inner = value.get("id")
        return inner if isinstance(inner, str) and inner else None
    return None


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    return default


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def to_date(ts: int | None) -> date | None:
    return datetime.fromtimestamp(ts, tz=UTC).date() if ts is not None else None


def _dict(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def is_basil(obj: Json) -> bool:
    """Current (2025-03 and later) shape; the one rule is in services.common.events.api_shape."""
    return api_shape(obj) == "basil"


def month_start(day: date) -> date:
    return day.replace(day=1)


# --------------------------------------------------------------------------------------------
# allocation and revenue schedules


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` minor units in proportion to `weights`, losing nothing to rounding.

    Largest-remainder method: everyone gets the floor of their share, and the units left over
    go to the largest fractional remainders (ties to the earlier index), so the parts always sum
    exactly to `total` and the result is the same on every run.
    """
    if not weights:
        raise ValueError("allocate needs at least one weight")
    if any(w < 0 for w in weights):
        raise ValueError("allocate weights must not be negative")
    ws = list(weights)
    whole = sum(ws)
    if whole == 0:
        ws = [1] * len(ws)
        whole = len(ws)
    sign = -1 if total < 0 else 1
    units = abs(total)
    parts = [units * w // whole for w in ws]
    remainders = [units * w % whole for w in ws]
    left = units - sum(parts)
    for i in sorted(range(len(ws)), key=lambda i: (-remainders[i], i))[:left]:
        parts[i] += 1
    return [sign * p for p in parts]


@dataclass(frozen=True)
class RevenueEntry:
    #: First day of the month the amount is recognised in.
    period: date
    amount: int


def _months(start: date, end: date) -> list[date]:
    months = []
    cursor = month_start(start)
    while cursor <= end:
        months.append(cursor)
        cursor = (cursor + timedelta(days=32)).replace(day=1)
    return months


def revenue_schedule(
    amount: int,
    *,
    rule: RevenueRule,
    start: date | None,
    end: date | None,
    transaction_date: date,
) -> tuple[RevenueEntry, ...]:
    """Monthly amounts that add up exactly to `amount`.

    `end` is inclusive (the last day of service). Lines without a service period (one-off
    items) are recognised in the month of the period start, or of the invoice date.
    """
    if amount == 0:
        return ()
    if rule == "immediate":
        return (RevenueEntry(month_start(transaction_date), amount),)
    if start is None or end is None or end <= start:
        return (RevenueEntry(month_start(start or transaction_date), amount),)
    months = _months(start, end)
    if rule == "by_period":
        weights = [1] * len(months)
    else:
        weights = []
        for first in months:
            last = first.replace(day=calendar.monthrange(first.year, first.month)[1])
            weights.append((min(last, end) - max(first, start)).days + 1)
    return tuple(RevenueEntry(m, a) for m, a in zip(months, allocate(amount, weights), strict=True) if a != 0)


# --------------------------------------------------------------------------------------------
# invoices


@dataclass(frozen=True)
class ErpLine:
    line_no: int
    kind: LineKind
    erp_item_id: str
    #: False when the price had no mapping and the default item was used.
    item_mapped: bool
    description: str
    quantity: int
    unit_amount: int | None
    #: Stripe's unit amount as text when it has fractions of a minor unit.
    unit_amount_decimal: str | None
    amount: int
    #: The invoice's discounts allocated to this line (positive), item lines only.
    discount_amount: int
    #: What the revenue schedule recognises: amount, less the discount when discounts are non-posting.
    recognized_amount: int
    period_start: date | None
    #: Inclusive last day of service.
    period_end: date | None
    proration: bool
    stripe_line_id: str | None = None
    stripe_price_id: str | None = None
    discount_id: str | None = None
    #: For posting discount lines: the revenue account the discount posts to.
    revenue_account: str | None = None
    schedule: tuple[RevenueEntry, ...] = ()


@dataclass(frozen=True)
class ErpInvoice:
    stripe_invoice_id: str
    stripe_customer_id: str
    subscription_id: str | None
    number: str | None
    stripe_status: str
    status_rank: int
    api_shape: str
    billing_reason: str | None
    collection_method: str | None
    currency: str
    created: int
    transaction_date: date
    due_date: date
    period_start: date | None
    period_end: date | None
    subtotal: int
    discount_total: int
    tax: int
    tax_inclusive: int
    total: int
    amount_due: int
    stripe_amount_paid: int
    stripe_amount_remaining: int
    pre_payment_credit_notes: int
    #: Customer credit balance Stripe applied before asking for payment.
    balance_applied: int
    attempt_count: int
    next_payment_attempt: int | None
    #: Stripe says nobody will collect this: uncollectible, or forgiven/closed unpaid (old API).
    uncollectible: bool
    uncollectible_at: int | None
    paid_at: int | None
    lines: tuple[ErpLine, ...]
    lines_complete: bool
    unmapped_price_ids: tuple[str, ...] = ()
    #: When Stripe voided it (status_transitions.voided_at): ageing as of an earlier day keeps it.
    voided_at: int | None = None
    #: Legacy only: the charge that paid it, or out of band.
    charge_id: str | None = None
    paid_out_of_band: bool = False

    @property
    def final_payment_failure(self) -> bool:
        """Stripe will not retry: what puts a customer on credit hold."""
        return self.next_payment_attempt is None and self.stripe_status in ("open", "uncollectible")


def line_price_id(line: Json) -> str | None:
    pricing = _dict(line.get("pricing"))
    details = _dict(pricing.get("price_details"))
    return ref_id(details.get("price")) or ref_id(line.get("price")) or ref_id(line.get("plan"))


def line_proration(line: Json) -> bool:
    parent = line.get("parent")
    if isinstance(parent, dict):
        kind = parent.get("type")
        chosen = parent.get(kind) if isinstance(kind, str) else None
        if isinstance(chosen, dict) and "proration" in chosen:
            return bool(chosen["proration"])
        return any(
            bool(_dict(parent.get(key)).get("proration"))
            for key in ("subscription_item_details", "invoice_item_details")
        )
    return bool(line.get("proration"))


def invoice_key(event_type: str, obj: Json) -> str | None:
    """The invoice an event will lock, when the event itself says so (no lookup needed)."""
    if event_type.startswith("invoice_payment.") or event_type.startswith(("charge.", "credit_note.")):
        value = obj.get("invoice")
    elif event_type.startswith("invoice."):
        value = obj.get("id")
    else:
        return None
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def invoice_price_ids(lines: Iterable[Json]) -> list[str]:
    return sorted({p for p in (line_price_id(line) for line in lines) if p})


def _decimal(text: Any) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(str(text))
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _unit_amount(line: Json, amount: int, quantity: int) -> tuple[int | None, str | None]:
    price = _dict(line.get("price")) or _dict(line.get("plan"))
    if isinstance(price.get("unit_amount"), int) and not isinstance(price.get("unit_amount"), bool):
        return int(price["unit_amount"]), None
    text = _dict(line.get("pricing")).get("unit_amount_decimal") or price.get("unit_amount_decimal")
    if text is None:
        text = line.get("unit_amount_excluding_tax")
    value = _decimal(text)
    if value is not None:
        whole = value.to_integral_value(rounding=ROUND_HALF_EVEN)
        return int(whole), (None if whole == value else str(text))
    if quantity > 0 and amount % quantity == 0:
        return amount // quantity, None
    return None, None


def _discount_entries(entries: Any) -> list[tuple[str, int]]:
    out = []
    for entry in _list(entries):
        if isinstance(entry, dict):
            amount = _int(entry.get("amount"))
            out.append((ref_id(entry.get("discount")) or "discount", amount))
    return out


def _discount_names(obj: Json) -> dict[str, str]:
    """Coupon names for discount lines, from whatever discount objects the invoice expanded."""
    names: dict[str, str] = {}
    candidates = [d for d in _list(obj.get("discounts")) if isinstance(d, dict)]
    if isinstance(obj.get("discount"), dict):
        candidates.append(obj["discount"])
    for disc in candidates:
        disc_id = ref_id(disc)
        if not disc_id:
            continue
        coupon = disc.get("coupon") or _dict(disc.get("source")).get("coupon")
        if isinstance(coupon, dict):
            names[disc_id] = str(coupon.get("name") or coupon.get("id") or disc_id)
        elif isinstance(coupon, str):
            names[disc_id] = coupon
    return names


def _taxes(obj: Json) -> tuple[int, int]:
    """(exclusive, inclusive) tax: only exclusive tax adds to the total."""
    exclusive = inclusive = 0
    if isinstance(obj.get("total_taxes"), list):
        for tax in obj["total_taxes"]:
            if _dict(tax).get("tax_behavior") == "inclusive":
                inclusive += _int(tax.get("amount"))
            else:
                exclusive += _int(_dict(tax).get("amount"))
        return exclusive, inclusive
    amounts = _list(obj.get("total_tax_amounts"))
    if amounts:
        for tax in amounts:
            if _dict(tax).get("inclusive"):
                inclusive += _int(tax.get("amount"))
            else:
                exclusive += _int(_dict(tax).get("amount"))
        return exclusive, inclusive
    return _int(obj.get("tax")), 0


def _period(line: Json) -> tuple[date | None, date | None]:
    period = _dict(line.get("period"))
    start, end = _opt_int(period.get("start")), _opt_int(period.get("end"))
    if start is None:
        return None, None
    if end is None or end <= start:
        day = to_date(start)
        return day, day
    return to_date(start), to_date(end - 1)


def map_invoice(
    obj: Json,
    *,
    lines: Sequence[Json] | None = None,
    lines_complete: bool | None = None,
    item_map: Mapping[str, str],
    billing: BillingSettings,
) -> ErpInvoice:
    """The ERP invoice for a Stripe invoice object (either shape).

    `lines` overrides the event's first page when the full list was fetched from the API;
    `lines_complete` must then say whether it is the whole list.
    """
    invoice_id = str(obj.get("id") or "")
    if not invoice_id:
        raise ValueError("invoice has no id")
    line_list = _dict(obj.get("lines"))
    raw_lines = list(lines) if lines is not None else [x for x in _list(line_list.get("data")) if isinstance(x, dict)]
    complete = lines_complete if lines_complete is not None else not bool(line_list.get("has_more"))
    status = str(obj.get("status") or "draft")
    if obj.get("deleted") is True:
        status = "deleted"
    created = _int(obj.get("created"))
    transaction_date = to_date(_opt_int(obj.get("effective_at")) or created) or date(1970, 1, 1)
    due_date = to_date(_opt_int(obj.get("due_date"))) or transaction_date
    currency = str(obj.get("currency") or "").lower()

    # Item lines.
    rule = billing.revenue_rule
    mapped_lines: list[ErpLine] = []
    unmapped: set[str] = set()
    per_line_discounts = [sum(a for _, a in _discount_entries(raw.get("discount_amounts"))) for raw in raw_lines]
    total_discounts = _discount_entries(obj.get("total_discount_amounts"))
    if not total_discounts:
        merged: dict[str, int] = {}
        for raw in raw_lines:
            for disc_id, amount in _discount_entries(raw.get("discount_amounts")):
                merged[disc_id] = merged.get(disc_id, 0) + amount
        total_discounts = sorted(merged.items())
    discount_total = sum(a for _, a in total_discounts)
    if discount_total and not any(per_line_discounts):
        # Stripe normally says per line how much of each discount it took; when it does not
        # (lines fetched without it), spread the discount over the discountable lines.
        weights = [max(0, _int(raw.get("amount"))) if raw.get("discountable", True) else 0 for raw in raw_lines]
        per_line_discounts = allocate(discount_total, weights) if raw_lines else []
    for index, raw in enumerate(raw_lines):
        amount = _int(raw.get("amount"))
        quantity = _int(raw.get("quantity"), 1) if raw.get("quantity") is not None else 1
        price_id = line_price_id(raw)
        item = item_map.get(price_id) if price_id else None
        if price_id and item is None:
            unmapped.add(price_id)
        unit, unit_text = _unit_amount(raw, amount, quantity)
        start, end = _period(raw)
        share = per_line_discounts[index] if index < len(per_line_discounts) else 0
        recognized = amount - share if billing.discount_posting == "non_posting" else amount
        mapped_lines.append(
            ErpLine(
                line_no=index + 1,
                kind="item",
                erp_item_id=item or billing.default_item,
                item_mapped=item is not None,
                description=str(raw.get("description") or f"Line {index + 1}"),
                quantity=quantity,
                unit_amount=unit,
                unit_amount_decimal=unit_text,
                amount=amount,
                discount_amount=share,
                recognized_amount=recognized,
                period_start=start,
                period_end=end,
                proration=line_proration(raw),
                stripe_line_id=ref_id(raw.get("id")),
                stripe_price_id=price_id,
                schedule=revenue_schedule(
                    recognized, rule=rule, start=start, end=end, transaction_date=transaction_date
                ),
            )
        )

    # Discount lines: one per discount, negative, with no service period (as Stripe shows them).
    names = _discount_names(obj)
    posting = billing.discount_posting == "posting"
    for disc_id, amount in total_discounts:
        if amount == 0:
            continue
        negative = -amount
        mapped_lines.append(
            ErpLine(
                line_no=len(mapped_lines) + 1,
                kind="discount",
                erp_item_id=billing.discount_item,
                item_mapped=True,
                description=f"Discount: {names.get(disc_id, disc_id)}",
                quantity=1,
                unit_amount=negative,
                unit_amount_decimal=None,
                amount=negative,
                discount_amount=0,
                recognized_amount=negative if posting else 0,
                period_start=None,
                period_end=None,
                proration=False,
                discount_id=disc_id,
                revenue_account=billing.discount_account if posting else None,
                schedule=revenue_schedule(
                    negative, rule="immediate", start=None, end=None, transaction_date=transaction_date
                )
                if posting
                else (),
            )
        )

    exclusive_tax, inclusive_tax = _taxes(obj)
    total = _int(obj.get("total"))
    amount_due = _int(obj.get("amount_due"))
    ppcn = _int(obj.get("pre_payment_credit_notes_amount"))
    transitions = _dict(obj.get("status_transitions"))
    uncollectible_at = _opt_int(transitions.get("marked_uncollectible_at"))
    legacy_forgiven = bool(obj.get("forgiven")) or (bool(obj.get("closed")) and not obj.get("paid"))
    uncollectible = status == "uncollectible" or (legacy_forgiven and status not in ("paid", "void", "deleted"))
    if is_basil(obj):
        subscription = ref_id(_dict(_dict(obj.get("parent")).get("subscription_details")).get("subscription"))
    else:
        subscription = ref_id(obj.get("subscription"))
    period_start = to_date(_opt_int(obj.get("period_start")))
    period_end = to_date(_opt_int(obj.get("period_end")))
    return ErpInvoice(
        stripe_invoice_id=invoice_id,
        stripe_customer_id=ref_id(obj.get("customer")) or "",
        subscription_id=subscription,
        number=obj.get("number") if isinstance(obj.get("number"), str) else None,
        stripe_status=status,
        status_rank=STRIPE_STATUS_RANK.get(status, 0),
        api_shape="basil" if is_basil(obj) else "legacy",
        billing_reason=obj.get("billing_reason") if isinstance(obj.get("billing_reason"), str) else None,
        collection_method=obj.get("collection_method") if isinstance(obj.get("collection_method"), str) else None,
        currency=currency,
        created=created,
        transaction_date=transaction_date,
        due_date=due_date,
        period_start=period_start,
        period_end=period_end,
        subtotal=_int(obj.get("subtotal")),
        discount_total=discount_total,
        tax=exclusive_tax,
        tax_inclusive=inclusive_tax,
        total=total,
        amount_due=amount_due,
        stripe_amount_paid=_int(obj.get("amount_paid")),
        stripe_amount_remaining=_int(obj.get("amount_remaining")),
        pre_payment_credit_notes=ppcn,
        balance_applied=max(0, total - amount_due - ppcn) if status not in ("draft", "void", "deleted") else 0,
        attempt_count=_int(obj.get("attempt_count")),
        next_payment_attempt=_opt_int(obj.get("next_payment_attempt")),
        uncollectible=uncollectible,
        uncollectible_at=uncollectible_at,
        paid_at=_opt_int(transitions.get("paid_at")),
        voided_at=_opt_int(transitions.get("voided_at")),
        lines=tuple(mapped_lines),
        lines_complete=complete,
        unmapped_price_ids=tuple(sorted(unmapped)),
        # Fields only the legacy shape has: read wherever they appear (localstripe sends them
        # beside a current-shape `parent`), absent from current payloads, where payments come
        # as invoice_payment objects instead.
        charge_id=ref_id(obj.get("charge")),
        paid_out_of_band=bool(obj.get("paid_out_of_band")),
    )


def lines_fingerprint(inv: ErpInvoice) -> str:
    """Identifies the mapped lines (and whether they are all of them), to skip identical rewrites."""
    return hashlib.sha256(repr((inv.lines_complete, inv.currency, inv.lines)).encode()).hexdigest()


def invoice_problems(inv: ErpInvoice) -> list[str]:
    """Why the mapped invoice does not balance (empty when it does): total = lines + discounts + tax,
    and every line's revenue schedule adds up to what it recognises."""
    problems = []
    if not inv.lines_complete:
        problems.append("lines incomplete: only the first page is known")
        return problems
    items = sum(line.amount for line in inv.lines if line.kind == "item")
    discounts = sum(line.amount for line in inv.lines if line.kind == "discount")
    if inv.total != items + discounts + inv.tax:
        problems.append(f"total {inv.total} != lines {items} + discounts {discounts} + tax {inv.tax}")
    for line in inv.lines:
        scheduled = sum(entry.amount for entry in line.schedule)
        if line.schedule and scheduled != line.recognized_amount:
            problems.append(f"line {line.line_no}: schedule {scheduled} != recognised {line.recognized_amount}")
    return problems


# --------------------------------------------------------------------------------------------
# invoice snapshots: which of several (in arrival order) the ledger keeps

#: (status rank, event created, amount paid, attempts, event id): a later snapshot wins only when
#: it is greater, so statuses move forward and a repeated or older event changes nothing.
InvoiceVersion = tuple[int, int, int, int, str]


def snapshot_version(inv: ErpInvoice, *, event_created: int, event_id: str) -> InvoiceVersion:
    return (inv.status_rank, event_created, inv.stripe_amount_paid, inv.attempt_count, event_id)


@dataclass(frozen=True)
class StoredSnapshot:
    """What the ledger already holds for an invoice that decides what a new snapshot may change."""

    version: InvoiceVersion
    lines_complete: bool
    lines_hash: str | None


@dataclass(frozen=True)
class SnapshotStep:
    """What one snapshot did when applied after the ones before it."""

    applied: bool
    lines_replaced: bool
    created: bool


@dataclass(frozen=True)
class SnapshotFold:
    """The net effect of an invoice's snapshots on the ledger, and each one's step."""

    #: The newest snapshot and its version, when one is newer than what is stored.
    header: tuple[ErpInvoice, InvoiceVersion] | None
    #: The snapshot whose lines the ledger ends with, when the lines change.
    lines: ErpInvoice | None
    lines_complete: bool
    lines_hash: str | None
    steps: tuple[SnapshotStep, ...]


def fold_snapshots(
    stored: StoredSnapshot | None, snapshots: Sequence[tuple[ErpInvoice, InvoiceVersion]]
) -> SnapshotFold:
    """Apply one invoice's snapshots in turn, in memory: the same decisions one write per event
    would make. A newer snapshot replaces the header; the lines are rewritten only when they
    differ, and a truncated snapshot never replaces complete lines."""
    version = stored.version if stored else None
    complete = stored.lines_complete if stored else False
    lines_hash = stored.lines_hash if stored else None
    header: tuple[ErpInvoice, InvoiceVersion] | None = None
    lines: ErpInvoice | None = None
    steps = []
    for inv, v in snapshots:
        exists = version is not None
        applied = version is None or v > version
        wanted = (applied and (inv.lines_complete or not complete)) or (
            not applied and inv.lines_complete and not complete
        )
        fingerprint = lines_fingerprint(inv)
        replaced = wanted and (not exists or lines_hash != fingerprint)
        steps.append(SnapshotStep(applied, replaced, created=not exists))
        if applied:
            header, version = (inv, v), v
        if applied or replaced:
            complete = complete or inv.lines_complete
        if replaced:
            lines, lines_hash = inv, fingerprint
    return SnapshotFold(header, lines, complete, lines_hash, tuple(steps))


# --------------------------------------------------------------------------------------------
# payments, refunds, credit notes


@dataclass(frozen=True)
class ErpPayment:
    stripe_payment_id: str
    stripe_invoice_id: str | None
    stripe_customer_id: str | None
    charge_id: str | None
    payment_intent_id: str | None
    amount: int
    currency: str
    paid_at: int
    method: str
    #: Which Stripe object told us; when two describe the same payment the higher priority wins.
    source: str
    priority: int


def payment_from_invoice_payment(obj: Json) -> ErpPayment | None:
    """Basil: `invoice_payment.paid`. None when the payment is not (yet) paid."""
    if obj.get("status") != "paid":
        return None
    payment = _dict(obj.get("payment"))
    kind = str(payment.get("type") or "payment")
    amount = _opt_int(obj.get("amount_paid"))
    if amount is None:
        amount = _int(obj.get("amount_requested"))
    paid_at = _opt_int(_dict(obj.get("status_transitions")).get("paid_at")) or _int(obj.get("created"))
    return ErpPayment(
        stripe_payment_id=str(obj["id"]),
        stripe_invoice_id=ref_id(obj.get("invoice")),
        stripe_customer_id=None,
        charge_id=ref_id(payment.get("charge")),
        payment_intent_id=ref_id(payment.get("payment_intent")),
        amount=amount,
        currency=str(obj.get("currency") or "").lower(),
        paid_at=paid_at,
        method="out_of_band" if kind.startswith("out_of_band") else kind,
        source="invoice_payment",
        priority=3,
    )


def payment_from_charge(obj: Json) -> ErpPayment | None:
    """Legacy: a succeeded charge that names its invoice. Basil charges have no invoice: None."""
    invoice = ref_id(obj.get("invoice"))
    if not invoice or obj.get("status") != "succeeded" or obj.get("paid") is False:
        return None
    details = _dict(obj.get("payment_method_details"))
    captured = _opt_int(obj.get("amount_captured"))
    amount = captured if captured else _int(obj.get("amount"))
    return ErpPayment(
        stripe_payment_id=str(obj["id"]),
        stripe_invoice_id=invoice,
        stripe_customer_id=ref_id(obj.get("customer")),
        charge_id=str(obj["id"]),
        payment_intent_id=ref_id(obj.get("payment_intent")),
        amount=amount,
        currency=str(obj.get("currency") or "").lower(),
        paid_at=_int(obj.get("created")),
        method=str(details.get("type") or "charge"),
        source="charge",
        priority=2,
    )


def payment_from_invoice(inv: ErpInvoice, obj: Json) -> ErpPayment | None:
    """Legacy fields: a paid invoice names its charge, or says it was paid out of band."""
    if inv.stripe_status != "paid" or inv.stripe_amount_paid <= 0:
        return None
    paid_at = inv.paid_at or inv.created
    if inv.charge_id:
        return ErpPayment(
            stripe_payment_id=inv.charge_id,
            stripe_invoice_id=inv.stripe_invoice_id,
            stripe_customer_id=inv.stripe_customer_id,
            charge_id=inv.charge_id,
            payment_intent_id=ref_id(obj.get("payment_intent")),
            amount=inv.stripe_amount_paid,
            currency=inv.currency,
            paid_at=paid_at,
            method="charge",
            source="invoice",
            priority=1,
        )
    if inv.paid_out_of_band:
        return ErpPayment(
            stripe_payment_id=f"oob_{inv.stripe_invoice_id}",
            stripe_invoice_id=inv.stripe_invoice_id,
            stripe_customer_id=inv.stripe_customer_id,
            charge_id=None,
            payment_intent_id=None,
            amount=inv.stripe_amount_paid,
            currency=inv.currency,
            paid_at=paid_at,
            method="out_of_band",
            source="invoice",
            priority=1,
        )
    return None


@dataclass(frozen=True)
class ErpRefund:
    stripe_refund_id: str
    charge_id: str | None
    payment_intent_id: str | None
    stripe_invoice_id: str | None
    stripe_customer_id: str | None
    amount: int
    currency: str
    status: str
    status_rank: int
    created: int
    reason: str | None


def refund_from_object(obj: Json, *, invoice: str | None = None, customer: str | None = None) -> ErpRefund:
    status = str(obj.get("status") or "succeeded")
    return ErpRefund(
        stripe_refund_id=str(obj["id"]),
        charge_id=ref_id(obj.get("charge")),
        payment_intent_id=ref_id(obj.get("payment_intent")),
        stripe_invoice_id=invoice,
        stripe_customer_id=customer or ref_id(obj.get("customer")),
        amount=_int(obj.get("amount")),
        currency=str(obj.get("currency") or "").lower(),
        status=status,
        status_rank=REFUND_STATUS_RANK.get(status, 0),
        created=_int(obj.get("created")),
        reason=obj.get("reason") if isinstance(obj.get("reason"), str) else None,
    )


def refunds_from_charge(obj: Json) -> list[ErpRefund]:
    """`charge.refunded`: the refunds the charge lists (each is also sent as `refund.created`)."""
    invoice = ref_id(obj.get("invoice"))
    customer = ref_id(obj.get("customer"))
    out = []
    for raw in _list(_dict(obj.get("refunds")).get("data")):
        if isinstance(raw, dict) and raw.get("id"):
            raw = {**raw, "charge": raw.get("charge") or obj.get("id")}
            if raw.get("payment_intent") is None:
                raw["payment_intent"] = obj.get("payment_intent")
            out.append(refund_from_object(raw, invoice=invoice, customer=customer))
    return out


@dataclass(frozen=True)
class ErpCreditMemoLine:
    line_no: int
    description: str
    quantity: int
    unit_amount: int | None
    amount: int
    invoice_line_item: str | None = None
    kind: str = "custom_line_item"


@dataclass(frozen=True)
class ErpCreditNote:
    stripe_credit_note_id: str
    stripe_invoice_id: str | None
    stripe_customer_id: str | None
    number: str | None
    amount: int
    currency: str
    status: str
    status_rank: int
    note_type: str
    created: int
    memo_date: date
    refund_ids: tuple[str, ...]
    out_of_band_amount: int
    reason: str | None
    lines: tuple[ErpCreditMemoLine, ...] = field(default_factory=tuple)
    #: When Stripe voided it: until then it counted, in an ageing as of an earlier day.
    voided_at: int | None = None

    @property
    def applied_to(self) -> str:
        """Pre-payment credit notes reduce what the invoice still owes; post-payment ones are paid
        out (refund, out of band) or left as customer credit."""
        if self.note_type == "pre_payment":
            return "invoice"
        if self.refund_ids:
            return "refund"
        if self.out_of_band_amount:
            return "out_of_band"
        return "customer_credit"


def map_credit_note(obj: Json) -> ErpCreditNote:
    refund_ids: list[str] = []
    for entry in _list(obj.get("refunds")):  # basil
        rid = ref_id(_dict(entry).get("refund")) if isinstance(entry, dict) else ref_id(entry)
        if rid:
            refund_ids.append(rid)
    legacy_refund = ref_id(obj.get("refund"))
    if legacy_refund:
        refund_ids.append(legacy_refund)
    lines = []
    for index, raw in enumerate(_list(_dict(obj.get("lines")).get("data"))):
        if not isinstance(raw, dict):
            continue
        lines.append(
            ErpCreditMemoLine(
                line_no=index + 1,
                description=str(raw.get("description") or f"Line {index + 1}"),
                quantity=_int(raw.get("quantity"), 1) if raw.get("quantity") is not None else 1,
                unit_amount=_opt_int(raw.get("unit_amount")),
                amount=_int(raw.get("amount")),
                invoice_line_item=ref_id(raw.get("invoice_line_item")),
                kind=str(raw.get("type") or "custom_line_item"),
            )
        )
    status = str(obj.get("status") or "issued")
    created = _int(obj.get("created"))
    return ErpCreditNote(
        stripe_credit_note_id=str(obj["id"]),
        stripe_invoice_id=ref_id(obj.get("invoice")),
        stripe_customer_id=ref_id(obj.get("customer")),
        number=obj.get("number") if isinstance(obj.get("number"), str) else None,
        amount=_int(obj.get("amount")),
        currency=str(obj.get("currency") or "").lower(),
        status=status,
        status_rank=CREDIT_NOTE_STATUS_RANK.get(status, 0),
        note_type=str(obj.get("type") or "pre_payment"),
        created=created,
        memo_date=to_date(_opt_int(obj.get("effective_at")) or created) or date(1970, 1, 1),
        refund_ids=tuple(sorted(set(refund_ids))),
        out_of_band_amount=_int(obj.get("out_of_band_amount")),
        reason=obj.get("reason") if isinstance(obj.get("reason"), str) else None,
        lines=tuple(lines),
        voided_at=_opt_int(obj.get("voided_at")) if status == "void" else None,
    )


# --------------------------------------------------------------------------------------------
# the invoice's ledger state


@dataclass(frozen=True)
class PaymentFact:
    amount: int
    paid_at: int


@dataclass(frozen=True)
class LedgerFacts:
    """Everything known about one invoice that decides its ERP state."""

    total: int
    stripe_status: str
    stripe_amount_paid: int
    balance_applied: int
    payments: tuple[PaymentFact, ...]
    #: Issued pre-payment credit notes applied to the invoice.
    invoice_credits: int
    uncollectible_seen: bool
    uncollectible_at: int | None
    write_off_enabled: bool


WriteOffState = Literal["none", "active", "reversed", "void"]


@dataclass(frozen=True)
class LedgerState:
    amount_paid: int
    #: Paid according to Stripe's invoice but with no payment object seen (yet).
    unattributed_paid: int
    credits_applied: int
    amount_remaining: int
    erp_status: ErpStatus
    write_off: WriteOffState
    write_off_amount: int


def compute_ledger(f: LedgerFacts) -> LedgerState:
    """The ERP state of an invoice from its facts alone (the same facts give the same state).

    amount_remaining = total - payments - credits, where credits are pre-payment credit notes,
    customer balance applied and an active write-off. Refunds do not touch the invoice: in the
    ERP they are a credit memo settled by a customer refund, and the invoice stays paid.
    """
    real = sum(p.amount for p in f.payments)
    unattributed = max(0, f.stripe_amount_paid - real) if f.stripe_status not in ("void", "deleted", "draft") else 0
    paid = real + unattributed
    base_credits = f.invoice_credits + f.balance_applied
    before_write_off = f.total - paid - base_credits
    write_off_wanted = f.write_off_enabled and f.uncollectible_seen

    def written_off_amount() -> int:
        # What was owed when Stripe gave up: payments after that moment are the later collection.
        cutoff = f.uncollectible_at
        early = sum(p.amount for p in f.payments if cutoff is None or p.paid_at <= cutoff)
        return max(0, f.total - base_credits - early)

    if f.stripe_status in ("void", "deleted"):
        # A voided invoice owes nothing and its write-off (if any) is voided with it.
        state: WriteOffState = "void" if write_off_wanted else "none"
        amount = written_off_amount() if write_off_wanted else 0
        return LedgerState(paid, unattributed, base_credits, 0, "voided", state, amount)
    if f.stripe_status != "draft" and before_write_off <= 0:
        state = "reversed" if write_off_wanted else "none"
        amount = written_off_amount() if write_off_wanted else 0
        return LedgerState(paid, unattributed, base_credits, before_write_off, "paid_in_full", state, amount)
    if write_off_wanted and f.stripe_status != "draft":
        credits = base_credits + before_write_off
        return LedgerState(paid, unattributed, credits, 0, "written_off", "active", before_write_off)
    return LedgerState(paid, unattributed, base_credits, before_write_off, "open", "none", 0)


@dataclass(frozen=True)
class LedgerHistory:
    """An invoice's ledger facts with the moments each became true, to see it as of a past day."""

    facts: LedgerFacts
    invoice_date: date
    #: The issued pre-payment credit notes in `facts.invoice_credits`: (memo date, amount).
    credits: tuple[tuple[date, int], ...]
    #: When Stripe says the invoice was paid (status_transitions.paid_at), if it says.
    paid_at: int | None
    #: When the newest snapshot's event happened: the stand-in for a paid, void or uncollectible
    #: moment Stripe did not give (a backfilled event happened when the backfill ran).
    status_at: int
    #: When Stripe says the invoice was voided (status_transitions.voided_at), if it says.
    voided_at: int | None = None
    #: Pre-payment credit notes voided since they were issued, with Stripe's voided_at: (memo
    #: date, amount, voided at). They are not in `facts.invoice_credits`, but counted until then.
    voided_credits: tuple[tuple[date, int, int], ...] = ()


def ledger_as_of(h: LedgerHistory, as_of: date) -> LedgerState | None:
    """The ledger at the end of `as_of` (UTC) from the facts true by then; None when the invoice
    was no receivable then (a draft, deleted, or dated later).

    An ageing as of a month end must not lose an invoice to a payment that came on the 3rd of
    the next month. After the last fact this is exactly `compute_ledger(h.facts)`. What is not
    recorded is approximated on the side of showing more owed: a void Stripe gave no moment for
    counts from the newest snapshot's event, and a credit note voided at a moment not recorded
    counts as never issued.
    """
    f = h.facts
    if f.stripe_status in ("draft", "deleted") or h.invoice_date > as_of:
        return None
    cutoff = int(datetime.combine(as_of + timedelta(days=1), time.min, tzinfo=UTC).timestamp()) - 1
    payments = tuple(p for p in f.payments if p.paid_at <= cutoff)
    marked_at = f.uncollectible_at if f.uncollectible_at is not None else h.status_at
    uncollectible = f.uncollectible_seen and marked_at <= cutoff
    paid_at = h.paid_at if h.paid_at is not None else h.status_at
    voided_at = h.voided_at if h.voided_at is not None else h.status_at
    status = f.stripe_status
    not_yet = {"void": voided_at > cutoff, "paid": paid_at > cutoff, "uncollectible": not uncollectible}
    if not_yet.get(status, False):
        status = "uncollectible" if uncollectible else "open"
    # A payment counts from its own moment; what Stripe calls paid beyond every payment seen
    # (paid out of band, or its payment object not here yet) counts from Stripe's paid_at.
    beyond = max(0, f.stripe_amount_paid - sum(p.amount for p in f.payments)) if paid_at <= cutoff else 0
    then = replace(
        f,
        stripe_status=status,
        stripe_amount_paid=sum(p.amount for p in payments) + beyond,
        payments=payments,
        invoice_credits=sum(amount for day, amount in h.credits if day <= as_of)
        + sum(amount for day, amount, voided_at in h.voided_credits if day <= as_of and voided_at > cutoff),
        uncollectible_seen=uncollectible,
    )
    return compute_ledger(then)


def forward_status(stored: str | None, derived: ErpStatus) -> ErpStatus:
    """ERP statuses only move forward (open -> written off -> paid in full / voided)."""
    if stored is None or stored not in ERP_STATUS_RANK:
        return derived
    if ERP_STATUS_RANK[derived] >= ERP_STATUS_RANK[stored]:
        return derived
    return stored  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# credit holds


@dataclass(frozen=True)
class HoldRequest:
    stripe_customer_id: str
    stripe_invoice_id: str
    reason: str
    #: 1 for the invoice's own final failure, 2 for a subscription state: the lower names the hold.
    cause_rank: int = 1


def hold_from_invoice(inv: ErpInvoice) -> HoldRequest | None:
    """`invoice.payment_failed` with no next attempt: Stripe has given up retrying."""
    if not inv.final_payment_failure or not inv.stripe_customer_id:
        return None
    return HoldRequest(
        inv.stripe_customer_id,
        inv.stripe_invoice_id,
        f"final payment attempt failed (attempt {inv.attempt_count}); Stripe will not retry",
    )


def hold_from_subscription(obj: Json, event_type: str) -> HoldRequest | None:
    """A subscription that ended up unpaid, paused or cancelled because payment failed."""
    customer = ref_id(obj.get("customer"))
    invoice = ref_id(obj.get("latest_invoice"))
    status = obj.get("status")
    if not customer or not invoice:
        return None
    cancel_reason = _dict(obj.get("cancellation_details")).get("reason")
    if status in ("unpaid", "paused") or (event_type.endswith(".deleted") and cancel_reason == "payment_failed"):
        return HoldRequest(
            customer, invoice, f"subscription {obj.get('id')} {status} after final payment failure", cause_rank=2
        )
    return None
