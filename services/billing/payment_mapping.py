"""Stripe payments, refunds and credit notes -> ERP customer payments, customer refunds and
credit memos, and the rule that decides a refund credit memo's status.

Pure on purpose: no I/O, no clock. Both payload shapes are accepted:

    legacy (before 2025-03-31)            basil (2025-03-31 and later)
    invoice.charge / paid_out_of_band     separate invoice_payment objects
    credit_note.refund                    credit_note.refunds[].refund
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, tzinfo

from services.billing.invoice_mapping import ErpInvoice
from services.billing.statuses import CREDIT_NOTE_STATUS_RANK, REFUND_STATUS_RANK
from services.billing.stripe_fields import DateSource, Json, as_dict, as_int, as_list, opt_int, ref_id, to_date


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
    #: Where `paid_at` comes from (see `DateSource`).
    date_source: DateSource = "stripe_transition"


def payment_from_invoice_payment(obj: Json, event_created: int) -> ErpPayment | None:
    """Basil: `invoice_payment.paid`. None when the payment is not (yet) paid. Dated by Stripe's
    `status_transitions.paid_at`, else by the event (never by when the mesh heard of it)."""
    if obj.get("status") != "paid":
        return None
    payment = as_dict(obj.get("payment"))
    kind = str(payment.get("type") or "payment")
    amount = opt_int(obj.get("amount_paid"))
    if amount is None:
        amount = as_int(obj.get("amount_requested"))
    paid_at = opt_int(as_dict(obj.get("status_transitions")).get("paid_at"))
    return ErpPayment(
        stripe_payment_id=str(obj["id"]),
        stripe_invoice_id=ref_id(obj.get("invoice")),
        stripe_customer_id=None,
        charge_id=ref_id(payment.get("charge")),
        payment_intent_id=ref_id(payment.get("payment_intent")),
        amount=amount,
        currency=str(obj.get("currency") or "").lower(),
        paid_at=paid_at or event_created,
        method="out_of_band" if kind.startswith("out_of_band") else kind,
        source="invoice_payment",
        priority=3,
        date_source="stripe_transition" if paid_at else "stripe_event",
    )


def payment_from_charge(obj: Json) -> ErpPayment | None:
    """Legacy: a succeeded charge that names its invoice. Basil charges have no invoice: None."""
    invoice = ref_id(obj.get("invoice"))
    if not invoice or obj.get("status") != "succeeded" or obj.get("paid") is False:
        return None
    details = as_dict(obj.get("payment_method_details"))
    captured = opt_int(obj.get("amount_captured"))
    amount = captured if captured else as_int(obj.get("amount"))
    return ErpPayment(
        stripe_payment_id=str(obj["id"]),
        stripe_invoice_id=invoice,
        stripe_customer_id=ref_id(obj.get("customer")),
        charge_id=str(obj["id"]),
        payment_intent_id=ref_id(obj.get("payment_intent")),
        amount=amount,
        currency=str(obj.get("currency") or "").lower(),
        paid_at=as_int(obj.get("created")),
        method=str(details.get("type") or "charge"),
        source="charge",
        priority=2,
    )


@dataclass(frozen=True)
class ChargeSeen:
    """A succeeded charge and its payment intent: in the current shape the only place a payment's
    charge id is found (`invoice_payment` names the intent alone, and the charge no invoice)."""

    charge_id: str
    payment_intent_id: str
    stripe_customer_id: str | None
    created: int


def charge_seen(obj: Json) -> ChargeSeen | None:
    """Any succeeded charge that names its payment intent (either shape); None otherwise. A failed
    charge of the same intent is left out: the payment is the charge that succeeded."""
    charge, intent = ref_id(obj.get("id")), ref_id(obj.get("payment_intent"))
    if not charge or not intent or obj.get("status") != "succeeded" or obj.get("paid") is False:
        return None
    return ChargeSeen(charge, intent, ref_id(obj.get("customer")), as_int(obj.get("created")))


def payment_from_invoice(inv: ErpInvoice, obj: Json, event_created: int) -> ErpPayment | None:
    """Legacy fields: a paid invoice names its charge, or says it was paid out of band. Dated by
    Stripe's `status_transitions.paid_at`, else by the event (not the invoice's creation)."""
    if inv.stripe_status != "paid" or inv.stripe_amount_paid <= 0:
        return None
    paid_at = inv.paid_at or event_created
    date_source: DateSource = "stripe_transition" if inv.paid_at else "stripe_event"
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
            date_source=date_source,
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
            date_source=date_source,
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
        amount=as_int(obj.get("amount")),
        currency=str(obj.get("currency") or "").lower(),
        status=status,
        status_rank=REFUND_STATUS_RANK.get(status, 0),
        created=as_int(obj.get("created")),
        reason=obj.get("reason") if isinstance(obj.get("reason"), str) else None,
    )


def refunds_from_charge(obj: Json) -> list[ErpRefund]:
    """`charge.refunded`: the refunds the charge lists (each is also sent as `refund.created`)."""
    invoice = ref_id(obj.get("invoice"))
    customer = ref_id(obj.get("customer"))
    out = []
    for raw in as_list(as_dict(obj.get("refunds")).get("data")):
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


def map_credit_note(obj: Json, zone: tzinfo) -> ErpCreditNote:
    """The credit memo of a credit note, dated by Stripe's `effective_at` (else `created`) in the
    ledger's zone."""
    refund_ids: list[str] = []
    for entry in as_list(obj.get("refunds")):  # basil
        rid = ref_id(as_dict(entry).get("refund")) if isinstance(entry, dict) else ref_id(entry)
        if rid:
            refund_ids.append(rid)
    legacy_refund = ref_id(obj.get("refund"))
    if legacy_refund:
        refund_ids.append(legacy_refund)
    lines = []
    for index, raw in enumerate(as_list(as_dict(obj.get("lines")).get("data"))):
        if not isinstance(raw, dict):
            continue
        lines.append(
            ErpCreditMemoLine(
                line_no=index + 1,
                description=str(raw.get("description") or f"Line {index + 1}"),
                quantity=as_int(raw.get("quantity"), 1) if raw.get("quantity") is not None else 1,
                unit_amount=opt_int(raw.get("unit_amount")),
                amount=as_int(raw.get("amount")),
                invoice_line_item=ref_id(raw.get("invoice_line_item")),
                kind=str(raw.get("type") or "custom_line_item"),
            )
        )
    status = str(obj.get("status") or "issued")
    created = as_int(obj.get("created"))
    return ErpCreditNote(
        stripe_credit_note_id=str(obj["id"]),
        stripe_invoice_id=ref_id(obj.get("invoice")),
        stripe_customer_id=ref_id(obj.get("customer")),
        number=obj.get("number") if isinstance(obj.get("number"), str) else None,
        amount=as_int(obj.get("amount")),
        currency=str(obj.get("currency") or "").lower(),
        status=status,
        status_rank=CREDIT_NOTE_STATUS_RANK.get(status, 0),
        note_type=str(obj.get("type") or "pre_payment"),
        created=created,
        memo_date=to_date(opt_int(obj.get("effective_at")) or created, zone) or date(1970, 1, 1),
        refund_ids=tuple(sorted(set(refund_ids))),
        out_of_band_amount=as_int(obj.get("out_of_band_amount")),
        reason=obj.get("reason") if isinstance(obj.get("reason"), str) else None,
        lines=tuple(lines),
        voided_at=opt_int(obj.get("voided_at")) if status == "void" else None,
    )
