"""A Stripe invoice -> the ERP invoice (NetSuite's model): item and discount lines, tax, and each
line's revenue schedule.

Pure on purpose: no I/O, no clock; the same invoice object and item mappings always map to the
same ERP invoice. Both payload shapes are accepted, decided per object (not by the version
string, which backfills and localstripe do not carry reliably):

    legacy (before 2025-03-31)            basil (2025-03-31 and later)
    invoice.subscription                  invoice.parent.subscription_details.subscription
    invoice.charge / paid_out_of_band     separate invoice_payment objects
    invoice.total_tax_amounts[].inclusive invoice.total_taxes[].tax_behavior
    line.price / line.plan                line.pricing.price_details.price
    line.proration                        line.parent.<type>.proration

Money is integer minor units everywhere; fractional unit prices (`unit_amount_decimal`) are
parsed with Decimal and kept as text next to the rounded integer, never as a float.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, tzinfo
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Literal

import orjson

from services.billing.revenue import RevenueEntry, allocate, revenue_schedule
from services.billing.settings import BillingSettings
from services.billing.statuses import STRIPE_STATUS_RANK
from services.billing.stripe_fields import (
    Json,
    as_dict,
    as_int,
    as_list,
    is_basil,
    opt_int,
    ref_id,
    service_days,
    to_date,
)

LineKind = Literal["item", "discount"]


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
    #: Discount lines: the discount's coupon, when the invoice names it (an expanded discount).
    coupon_id: str | None = None
    #: Item lines: the price's product.
    stripe_product_id: str | None = None
    #: Item lines: the tax Stripe computed on the line, exclusive and inclusive (minor units).
    tax_amount: int = 0
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
    #: Inclusive: the day before Stripe's `period_end` (periods are `[start, end)`).
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
    pricing = as_dict(line.get("pricing"))
    details = as_dict(pricing.get("price_details"))
    return ref_id(details.get("price")) or ref_id(line.get("price")) or ref_id(line.get("plan"))


def line_product_id(line: Json) -> str | None:
    """The product of the line's price: `pricing.price_details.product` (basil), else the
    price's (or plan's) own `product`."""
    details = as_dict(as_dict(line.get("pricing")).get("price_details"))
    price = as_dict(line.get("price")) or as_dict(line.get("plan"))
    return ref_id(details.get("product")) or ref_id(price.get("product"))


def line_tax(line: Json) -> int:
    """The line's own tax: `taxes[].amount` (basil) or `tax_amounts[].amount` (legacy)."""
    taxes = line.get("taxes") if isinstance(line.get("taxes"), list) else line.get("tax_amounts")
    return sum(as_int(tax.get("amount")) for tax in as_list(taxes) if isinstance(tax, dict))


def line_proration(line: Json) -> bool:
    parent = line.get("parent")
    if isinstance(parent, dict):
        kind = parent.get("type")
        chosen = parent.get(kind) if isinstance(kind, str) else None
        if isinstance(chosen, dict) and "proration" in chosen:
            return bool(chosen["proration"])
        return any(
            bool(as_dict(parent.get(key)).get("proration"))
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


def payment_keys(event_type: str, obj: Json) -> set[str]:
    """The payment an event concerns, as lock keys: its charge and payment intent.

    A refund names only its charge and intent, and a current-API charge names no invoice: the
    link to the invoice comes from whichever of charge, refund and invoice_payment is stored
    first. Two replicas applying two of them at once, each unable to see the other's uncommitted
    row, would each store its own fact unlinked; locking the payment's keys makes them take turns,
    so the second sees the first (READ COMMITTED reads what committed before each statement).
    """
    if event_type.startswith("refund.") or event_type == "charge.refund.updated":  # a refund object
        charge, intent = obj.get("charge"), obj.get("payment_intent")
    elif event_type.startswith("charge."):
        charge, intent = obj.get("id"), obj.get("payment_intent")
    elif event_type.startswith("invoice_payment."):
        payment = obj.get("payment")
        paid_by: Json = payment if isinstance(payment, dict) else {}
        charge, intent = paid_by.get("charge"), paid_by.get("payment_intent")
    else:
        return set()
    keys = set()
    for prefix, value in (("charge", charge), ("intent", intent)):
        ident = value.get("id") if isinstance(value, dict) else value
        if isinstance(ident, str) and ident:
            keys.add(f"{prefix}:{ident}")
    return keys


def more_lines(obj: Json) -> bool:
    """The event holds only the first page of the invoice's lines (a deleted invoice has none to fetch)."""
    lines = as_dict(obj.get("lines"))
    return bool(lines.get("has_more")) and obj.get("deleted") is not True


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
    """The line's rate, such that quantity x rate = amount, as an ERP line requires.

    Stripe's price is the rate when it multiplies out to the line's amount (the usual case; a
    rate with fractions of a minor unit comes back as its decimal text beside the rounded whole).
    A proration line is charged for part of a period, so its amount is not the price times the
    quantity (1 x 29.00 would read -17.30): its rate is its own amount over its quantity, as
    decimal text when that does not divide (to 12 places, the whole rounded half to even).
    """
    price = as_dict(line.get("price")) or as_dict(line.get("plan"))
    listed: Decimal | None = None
    text: Any = None
    if isinstance(price.get("unit_amount"), int) and not isinstance(price.get("unit_amount"), bool):
        listed = Decimal(int(price["unit_amount"]))
    else:
        text = as_dict(line.get("pricing")).get("unit_amount_decimal") or price.get("unit_amount_decimal")
        if text is None:
            text = line.get("unit_amount_excluding_tax")
        listed = _decimal(text)
    if listed is not None and (quantity == 0 or listed * quantity == amount):
        whole = listed.to_integral_value(rounding=ROUND_HALF_EVEN)
        return int(whole), (None if whole == listed else str(text))
    if quantity == 0:
        return None, None
    rate = Decimal(amount) / quantity
    whole = rate.to_integral_value(rounding=ROUND_HALF_EVEN)
    if whole == rate:
        return int(whole), None
    return int(whole), format(rate.quantize(Decimal("1e-12"), rounding=ROUND_HALF_EVEN).normalize(), "f")


def _discount_entries(entries: Any) -> list[tuple[str, int]]:
    out = []
    for entry in as_list(entries):
        if isinstance(entry, dict):
            amount = as_int(entry.get("amount"))
            out.append((ref_id(entry.get("discount")) or "discount", amount))
    return out


def _discount_names(obj: Json) -> dict[str, str]:
    """Coupon names for discount lines, from whatever discount objects the invoice expanded."""
    names: dict[str, str] = {}
    candidates = [d for d in as_list(obj.get("discounts")) if isinstance(d, dict)]
    if isinstance(obj.get("discount"), dict):
        candidates.append(obj["discount"])
    for disc in candidates:
        disc_id = ref_id(disc)
        if not disc_id:
            continue
        coupon = disc.get("coupon") or as_dict(disc.get("source")).get("coupon")
        if isinstance(coupon, dict):
            names[disc_id] = str(coupon.get("name") or coupon.get("id") or disc_id)
        elif isinstance(coupon, str):
            names[disc_id] = coupon
    return names


def _discount_coupons(obj: Json) -> dict[str, str]:
    """Coupon ids of the invoice's discounts, from whatever discount objects it expanded
    (`coupon` before 2025-03, `source.coupon` since)."""
    coupons: dict[str, str] = {}
    candidates = [d for d in as_list(obj.get("discounts")) if isinstance(d, dict)]
    if isinstance(obj.get("discount"), dict):
        candidates.append(obj["discount"])
    for disc in candidates:
        disc_id = ref_id(disc)
        coupon = ref_id(disc.get("coupon")) or ref_id(as_dict(disc.get("source")).get("coupon"))
        if disc_id and coupon:
            coupons[disc_id] = coupon
    return coupons


def _taxes(obj: Json) -> tuple[int, int]:
    """(exclusive, inclusive) tax: only exclusive tax adds to the total."""
    exclusive = inclusive = 0
    if isinstance(obj.get("total_taxes"), list):
        for tax in obj["total_taxes"]:
            if as_dict(tax).get("tax_behavior") == "inclusive":
                inclusive += as_int(tax.get("amount"))
            else:
                exclusive += as_int(as_dict(tax).get("amount"))
        return exclusive, inclusive
    amounts = as_list(obj.get("total_tax_amounts"))
    if amounts:
        for tax in amounts:
            if as_dict(tax).get("inclusive"):
                inclusive += as_int(tax.get("amount"))
            else:
                exclusive += as_int(as_dict(tax).get("amount"))
        return exclusive, inclusive
    return as_int(obj.get("tax")), 0


def _period(line: Json, zone: tzinfo) -> tuple[date | None, date | None]:
    """The line's service days: Stripe's `period` is `[start, end)` (see `service_days`)."""
    period = as_dict(line.get("period"))
    return service_days(opt_int(period.get("start")), opt_int(period.get("end")), zone)


def map_invoice(
    obj: Json,
    *,
    lines: Sequence[Json] | None = None,
    lines_complete: bool | None = None,
    item_map: Mapping[str, str],
    billing: BillingSettings,
) -> ErpInvoice:
    """The ERP invoice for a Stripe invoice object (either shape): `map_header`, then `map_lines`.

    `lines` overrides the event's first page when the full list was fetched from the API;
    `lines_complete` must then say whether it is the whole list.
    """
    raw_lines, complete = raw_invoice_lines(obj, lines, lines_complete)
    header = map_header(obj, raw_lines=raw_lines, lines_complete=complete, billing=billing)
    return map_lines(header, obj, raw_lines, item_map=item_map, billing=billing)


def raw_invoice_lines(
    obj: Json, lines: Sequence[Json] | None = None, lines_complete: bool | None = None
) -> tuple[list[Json], bool]:
    """The invoice's raw lines (`lines`, else the event's first page) and whether they are all of them."""
    line_list = as_dict(obj.get("lines"))
    raw_lines = list(lines) if lines is not None else [x for x in as_list(line_list.get("data")) if isinstance(x, dict)]
    complete = lines_complete if lines_complete is not None else not bool(line_list.get("has_more"))
    return raw_lines, complete


def _total_discounts(obj: Json, raw_lines: Sequence[Json]) -> list[tuple[str, int]]:
    """The invoice's discounts as (discount, amount): Stripe's totals, else the lines' summed."""
    total_discounts = _discount_entries(obj.get("total_discount_amounts"))
    if not total_discounts:
        merged: dict[str, int] = {}
        for raw in raw_lines:
            for disc_id, amount in _discount_entries(raw.get("discount_amounts")):
                merged[disc_id] = merged.get(disc_id, 0) + amount
        total_discounts = sorted(merged.items())
    return total_discounts


def map_header(obj: Json, *, raw_lines: Sequence[Json], lines_complete: bool, billing: BillingSettings) -> ErpInvoice:
    """The ERP invoice without its lines (`lines` empty): everything that decides whether the
    snapshot is newer than the stored one (`snapshots.snapshot_version`) and what it says beyond
    its lines (a payment, an uncollectible mark, a credit hold). Mapping the lines, their
    discounts and revenue schedules costs several times more, so a batch maps them only for the
    snapshots whose lines it may write (`map_lines`)."""
    invoice_id = str(obj.get("id") or "")
    if not invoice_id:
        raise ValueError("invoice has no id")
    status = str(obj.get("status") or "draft")
    if obj.get("deleted") is True:
        status = "deleted"
    created = as_int(obj.get("created"))
    zone = billing.ledger_zone
    # Stripe's accounting date (`effective_at`), else when it was finalized (payloads without
    # `effective_at`), else when it was drafted.
    finalized_at = opt_int(as_dict(obj.get("status_transitions")).get("finalized_at"))
    transaction_date = to_date(opt_int(obj.get("effective_at")) or finalized_at or created, zone) or date(1970, 1, 1)
    due_date = to_date(opt_int(obj.get("due_date")), zone) or transaction_date
    currency = str(obj.get("currency") or "").lower()
    discount_total = sum(a for _, a in _total_discounts(obj, raw_lines))
    exclusive_tax, inclusive_tax = _taxes(obj)
    total = as_int(obj.get("total"))
    amount_due = as_int(obj.get("amount_due"))
    ppcn = as_int(obj.get("pre_payment_credit_notes_amount"))
    transitions = as_dict(obj.get("status_transitions"))
    uncollectible_at = opt_int(transitions.get("marked_uncollectible_at"))
    legacy_forgiven = bool(obj.get("forgiven")) or (bool(obj.get("closed")) and not obj.get("paid"))
    uncollectible = status == "uncollectible" or (legacy_forgiven and status not in ("paid", "void", "deleted"))
    basil = is_basil(obj)
    if basil:
        subscription = ref_id(as_dict(as_dict(obj.get("parent")).get("subscription_details")).get("subscription"))
    else:
        subscription = ref_id(obj.get("subscription"))
    period_start, period_end = service_days(opt_int(obj.get("period_start")), opt_int(obj.get("period_end")), zone)
    return ErpInvoice(
        stripe_invoice_id=invoice_id,
        stripe_customer_id=ref_id(obj.get("customer")) or "",
        subscription_id=subscription,
        number=obj.get("number") if isinstance(obj.get("number"), str) else None,
        stripe_status=status,
        status_rank=STRIPE_STATUS_RANK.get(status, 0),
        api_shape="basil" if basil else "legacy",
        billing_reason=obj.get("billing_reason") if isinstance(obj.get("billing_reason"), str) else None,
        collection_method=obj.get("collection_method") if isinstance(obj.get("collection_method"), str) else None,
        currency=currency,
        created=created,
        transaction_date=transaction_date,
        due_date=due_date,
        period_start=period_start,
        period_end=period_end,
        subtotal=as_int(obj.get("subtotal")),
        discount_total=discount_total,
        tax=exclusive_tax,
        tax_inclusive=inclusive_tax,
        total=total,
        amount_due=amount_due,
        stripe_amount_paid=as_int(obj.get("amount_paid")),
        stripe_amount_remaining=as_int(obj.get("amount_remaining")),
        pre_payment_credit_notes=ppcn,
        balance_applied=max(0, total - amount_due - ppcn) if status not in ("draft", "void", "deleted") else 0,
        attempt_count=as_int(obj.get("attempt_count")),
        next_payment_attempt=opt_int(obj.get("next_payment_attempt")),
        uncollectible=uncollectible,
        uncollectible_at=uncollectible_at,
        paid_at=opt_int(transitions.get("paid_at")),
        voided_at=opt_int(transitions.get("voided_at")),
        lines=(),
        lines_complete=lines_complete,
        # Fields only the legacy shape has: read wherever they appear (localstripe sends them
        # beside a current-shape `parent`), absent from current payloads, where payments come
        # as invoice_payment objects instead.
        charge_id=ref_id(obj.get("charge")),
        paid_out_of_band=bool(obj.get("paid_out_of_band")),
    )


def map_lines(
    header: ErpInvoice, obj: Json, raw_lines: Sequence[Json], *, item_map: Mapping[str, str], billing: BillingSettings
) -> ErpInvoice:
    """`header` (from `map_header` on the same object and lines) with its item and discount
    lines, each with its revenue schedule, and the prices that had no ERP item."""
    zone = billing.ledger_zone
    transaction_date = header.transaction_date
    rule = billing.revenue_rule
    mapped_lines: list[ErpLine] = []
    unmapped: set[str] = set()
    per_line_discounts = [sum(a for _, a in _discount_entries(raw.get("discount_amounts"))) for raw in raw_lines]
    total_discounts = _total_discounts(obj, raw_lines)
    discount_total = header.discount_total
    if discount_total and not any(per_line_discounts):
        # Stripe normally says per line how much of each discount it took; when it does not
        # (lines fetched without it), spread the discount over the discountable lines.
        weights = [max(0, as_int(raw.get("amount"))) if raw.get("discountable", True) else 0 for raw in raw_lines]
        per_line_discounts = allocate(discount_total, weights) if raw_lines else []
    for index, raw in enumerate(raw_lines):
        amount = as_int(raw.get("amount"))
        quantity = as_int(raw.get("quantity"), 1) if raw.get("quantity") is not None else 1
        price_id = line_price_id(raw)
        item = item_map.get(price_id) if price_id else None
        if price_id and item is None:
            unmapped.add(price_id)
        unit, unit_text = _unit_amount(raw, amount, quantity)
        start, end = _period(raw, zone)
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
                stripe_product_id=line_product_id(raw),
                tax_amount=line_tax(raw),
                schedule=revenue_schedule(
                    recognized, rule=rule, start=start, end=end, transaction_date=transaction_date
                ),
            )
        )

    # Discount lines: one per discount, negative, with no service period (as Stripe shows them).
    names = _discount_names(obj)
    coupons = _discount_coupons(obj)
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
                coupon_id=coupons.get(disc_id),
                revenue_account=billing.discount_account if posting else None,
                schedule=revenue_schedule(
                    negative, rule="immediate", start=None, end=None, transaction_date=transaction_date
                )
                if posting
                else (),
            )
        )
    # `dataclasses.replace` re-reads every field through Python: twice the cost of this.
    return ErpInvoice(**{**vars(header), "lines": tuple(mapped_lines), "unmapped_price_ids": tuple(sorted(unmapped))})


def lines_inputs(header: ErpInvoice, obj: Json, raw_lines: Sequence[Json]) -> bytes | None:
    """Everything `map_lines` maps an invoice's lines from, but the batch's item map and the
    billing policy, and what their fingerprint covers besides (`lines_fingerprint`): two snapshots
    of one invoice with the same inputs, in one batch, get the same lines. As JSON bytes, so a
    1 is not taken for a 1.0 or a true, as comparing the dicts would; None (never the same as
    anything) for what orjson cannot write (an integer beyond 64 bits)."""
    try:
        return orjson.dumps(
            [
                header.transaction_date.toordinal(),
                header.discount_total,
                header.lines_complete,
                header.currency,
                obj.get("discounts"),
                obj.get("discount"),
                obj.get("total_discount_amounts"),
                raw_lines,
            ]
        )
    except TypeError:  # orjson.JSONEncodeError
        return None


def with_lines(header: ErpInvoice, mapped: ErpInvoice) -> ErpInvoice:
    """`header` with the lines (and the prices without an item) `map_lines` gave `mapped`."""
    return ErpInvoice(**{**vars(header), "lines": mapped.lines, "unmapped_price_ids": mapped.unmapped_price_ids})


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
