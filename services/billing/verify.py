"""How `syncmesh verify` judges the billing service (the ERP ledger) against Stripe.

    Stripe listing   reported as     record read                compared
    invoices         invoices        GetInvoice(in_...)         customer link, currency, total, amount
                                                                paid, amount remaining, Stripe status,
                                                                ERP status, and a customer payment for
                                                                every amount Stripe says was paid
    credit_notes     credit_memos    ListCreditMemos(invoice)   status, amount, currency, invoice and
                                     the memo of that note      customer links
    refunds          refunds         ListRefunds (all of them,  status, amount, currency, charge
                                     once per run)
    charges          payments        ListPayments (all of them, the charge id of the payment of a
                                     once per run), by payment  succeeded charge's payment intent
                                     intent or charge id        (or of the charge itself)
    invoices         credit_holds    ListCreditHolds(customer)  a hold for every invoice whose final
                                                                payment failed (open, attempted, no
                                                                next attempt); none active on a paid
                                                                or voided one when holds are released
                                                                on payment; only when holds are on

A draft is judged like any invoice: Stripe's draft must be the ledger's DRAFT (never OPEN: it is
no receivable). Repairs re-sync the Stripe object: a charge re-joins its payment by intent, an
invoice whose final payment failed is re-sent as `invoice.payment_failed` (ops.backfill), which
places the hold, and a paid or voided one releases it.

Statuses are judged with the rank tables billing applies events with (services.billing.statuses),
so "stale" means a state billing itself would let Stripe's overwrite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from syncmesh.billing.v1 import billing_service_pb2 as billing_pb
from syncmesh.billing.v1 import billing_service_pb2_grpc

from services.billing.statuses import (
    CREDIT_NOTE_STATUS_RANK,
    ERP_STATUS_RANK,
    REFUND_STATUS_RANK,
    STRIPE_STATUS_RANK,
)
from services.common.verification import (
    MISMATCH,
    MISSING,
    RPC_TIMEOUT,
    STALE,
    Check,
    Companion,
    Difference,
    Finding,
    Mesh,
    StripeObject,
    differ,
    missing_record,
    money_differences,
    ref,
    status_difference,
    text,
)

#: The deployable whose gRPC API holds the records.
SERVICE = "billing"

#: ERP statuses each Stripe invoice status may legitimately show (write-off and credits vary).
ERP_STATUSES_ALLOWED: dict[str, frozenset[int]] = {
    "draft": frozenset({billing_pb.INVOICE_STATUS_DRAFT}),
    "open": frozenset({billing_pb.INVOICE_STATUS_OPEN, billing_pb.INVOICE_STATUS_PAID_IN_FULL}),
    "paid": frozenset({billing_pb.INVOICE_STATUS_PAID_IN_FULL}),
    "void": frozenset({billing_pb.INVOICE_STATUS_VOIDED}),
    "uncollectible": frozenset(
        {billing_pb.INVOICE_STATUS_OPEN, billing_pb.INVOICE_STATUS_WRITTEN_OFF, billing_pb.INVOICE_STATUS_PAID_IN_FULL}
    ),
}


def _stub(mesh: Mesh) -> billing_service_pb2_grpc.BillingServiceStub:
    return billing_service_pb2_grpc.BillingServiceStub(mesh.channel(SERVICE))  # type: ignore[no-untyped-call]


def _erp_name(status: int) -> str:
    return billing_pb.InvoiceStatus.Name(status).removeprefix("INVOICE_STATUS_").lower()


# -- invoices ------------------------------------------------------------------------------------


async def read_invoice(mesh: Mesh, obj: StripeObject) -> billing_pb.Invoice | None:
    request = billing_pb.GetInvoiceRequest(invoice_id=str(obj["id"]))
    reply = await mesh.call(SERVICE, _stub(mesh).GetInvoice(request, timeout=RPC_TIMEOUT))
    return None if reply is None else reply.invoice


def invoice_differences(obj: StripeObject, inv: billing_pb.Invoice | None) -> list[Difference]:
    if inv is None:
        return [missing_record()]
    status = text(obj.get("status"))
    out = status_difference(STRIPE_STATUS_RANK, status, inv.stripe_status, "stripe_status")
    allowed = ERP_STATUSES_ALLOWED.get(status)
    if allowed is not None and inv.status not in allowed:
        expected = " or ".join(_erp_name(s) for s in sorted(allowed))
        # Behind every status Stripe's allows is stale; ahead of them (an open draft) a mismatch.
        behind = ERP_STATUS_RANK.get(_erp_name(inv.status), -1) < min(ERP_STATUS_RANK[_erp_name(s)] for s in allowed)
        out.append(differ(STALE if behind else MISMATCH, "erp_status", expected, _erp_name(inv.status)))
    customer = ref(obj.get("customer"))
    if customer != inv.stripe_customer_id:
        out.append(differ(MISMATCH, "customer", customer, inv.stripe_customer_id))
    currency = text(obj.get("currency")).lower()
    if currency != inv.currency.lower():
        out.append(differ(MISMATCH, "currency", currency, inv.currency))
    for name, money in (("total", inv.total), ("amount_paid", inv.amount_paid)):
        value = obj.get(name)
        if isinstance(value, int) and value != money.amount_minor:
            out.append(differ(MISMATCH, name, value, money.amount_minor))
    remaining = obj.get("amount_remaining")
    # Stripe's remainder of a void or uncollectible invoice is not the ERP's (voided: nothing
    # owed; written off: credited), so it is compared only while both are plain open/paid.
    plain = status in ("open", "paid") and inv.status in (
        billing_pb.INVOICE_STATUS_OPEN,
        billing_pb.INVOICE_STATUS_PAID_IN_FULL,
    )
    if plain and isinstance(remaining, int) and remaining != inv.amount_remaining.amount_minor:
        out.append(differ(MISMATCH, "amount_remaining", remaining, inv.amount_remaining.amount_minor))
    # Paid in Stripe but with no payment record for (part of) it: the invoice reads as paid, yet
    # the ERP has no customer payment to deposit and reconcile against the bank.
    if inv.unattributed_paid.amount_minor > 0:
        out.append(
            differ(
                MISSING,
                "payment",
                f"{inv.amount_paid.amount_minor} paid",
                f"{inv.unattributed_paid.amount_minor} without one",
            )
        )
    return out


#: A lost payment is repaired with the invoice's paid invoice_payment objects: since API version
#: 2025-03-31 they are the only thing that ties the money to the invoice. A stand-in without them
#: (localstripe) answers 404, and the invoice's own legacy `charge` field, re-synced with it,
#: carries the payment instead.
INVOICE_PAYMENTS = Companion(field="payment", listing="invoice_payments", parent_param="invoice")

INVOICES: Check[billing_pb.Invoice] = Check(
    kind="invoices",
    source="invoices",
    service=SERVICE,
    position=20,
    read=read_invoice,
    compare=invoice_differences,
    companions=(INVOICE_PAYMENTS,),
)


# -- credit notes ----------------------------------------------------------------------------------


async def read_credit_memo(mesh: Mesh, obj: StripeObject) -> billing_pb.CreditMemo | None:
    """The memo billing made of one Stripe credit note, looked up through its invoice (else its customer)."""
    invoice_id, customer_id, source_id = ref(obj.get("invoice")), ref(obj.get("customer")), str(obj["id"])
    stub = _stub(mesh)
    token = ""
    while True:
        request = billing_pb.ListCreditMemosRequest(
            invoice_id=invoice_id,
            stripe_customer_id="" if invoice_id else customer_id,
            page_size=500,
            page_token=token,
            include_superseded=True,  # a voided note's memo is what verify compares it with
        )
        reply = await mesh.call(SERVICE, stub.ListCreditMemos(request, timeout=RPC_TIMEOUT))
        if reply is None:
            return None
        for memo in reply.credit_memos:
            if memo.source_id == source_id and memo.kind == billing_pb.CREDIT_MEMO_KIND_CREDIT_NOTE:
                found: billing_pb.CreditMemo = memo
                return found
        token = reply.next_page_token
        if not token:
            return None


def credit_memo_differences(obj: StripeObject, memo: billing_pb.CreditMemo | None) -> list[Difference]:
    if memo is None:
        return [missing_record()]
    invoice, customer = ref(obj.get("invoice")), ref(obj.get("customer"))
    out = status_difference(CREDIT_NOTE_STATUS_RANK, text(obj.get("status")) or "issued", memo.status)
    out += money_differences(obj, obj.get("amount"), memo.amount)
    if invoice != memo.stripe_invoice_id:
        out.append(differ(MISMATCH, "invoice", invoice, memo.stripe_invoice_id))
    if customer and customer != memo.stripe_customer_id:
        out.append(differ(MISMATCH, "customer", customer, memo.stripe_customer_id))
    return out


CREDIT_MEMOS: Check[billing_pb.CreditMemo] = Check(
    kind="credit_memos",
    source="credit_notes",
    service=SERVICE,
    position=60,
    read=read_credit_memo,
    compare=credit_memo_differences,
)


async def compare_credit_note(mesh: Mesh, obj: StripeObject) -> list[Finding]:
    """The findings for one Stripe credit note, read and compared as `syncmesh verify` does."""
    return await CREDIT_MEMOS.run(mesh, obj)


# -- refunds -------------------------------------------------------------------------------------


async def all_refunds(mesh: Mesh) -> dict[str, billing_pb.Refund]:
    """Every refund billing holds, by Stripe id, read once per run: a Stripe refund names its
    charge, not its invoice or customer, so there is no narrower way to look one up."""

    async def load() -> dict[str, billing_pb.Refund]:
        stub = _stub(mesh)
        refunds: list[billing_pb.Refund] = await mesh.every_page(
            SERVICE,
            lambda token: stub.ListRefunds(
                billing_pb.ListRefundsRequest(page_size=500, page_token=token), timeout=RPC_TIMEOUT
            ),
            "refunds",
        )
        return {r.stripe_refund_id: r for r in refunds}

    return await mesh.remembered("billing:refunds", load)


async def read_refund(mesh: Mesh, obj: StripeObject) -> billing_pb.Refund | None:
    return (await all_refunds(mesh)).get(str(obj["id"]))


def refund_differences(obj: StripeObject, record: billing_pb.Refund | None) -> list[Difference]:
    if record is None:
        return [missing_record()]
    out = status_difference(REFUND_STATUS_RANK, text(obj.get("status")) or "succeeded", record.status)
    out += money_differences(obj, obj.get("amount"), record.amount)
    charge = ref(obj.get("charge"))
    if charge and charge != record.charge_id:
        out.append(differ(MISMATCH, "charge", charge, record.charge_id))
    return out


REFUNDS: Check[billing_pb.Refund] = Check(
    kind="refunds",
    source="refunds",
    service=SERVICE,
    position=70,
    read=read_refund,
    compare=refund_differences,
)

# -- payments' charge ids -------------------------------------------------------------------------


async def all_payments(mesh: Mesh) -> dict[str, billing_pb.Payment]:
    """Every payment billing holds, read once per run, by payment intent, by charge id and by
    Stripe payment id: a current-shape payment is found by its intent (its charge id may be what
    is missing), a legacy one by its charge (the stand-ins' charges may name no intent)."""

    async def load() -> dict[str, billing_pb.Payment]:
        stub = _stub(mesh)
        payments: list[billing_pb.Payment] = await mesh.every_page(
            SERVICE,
            lambda token: stub.ListPayments(
                billing_pb.ListPaymentsRequest(page_size=500, page_token=token), timeout=RPC_TIMEOUT
            ),
            "payments",
        )
        found: dict[str, billing_pb.Payment] = {}
        for p in sorted(payments, key=lambda p: p.stripe_payment_id):
            for key in (f"pid:{p.stripe_payment_id}", f"ch:{p.charge_id}", f"pi:{p.payment_intent_id}"):
                if not key.endswith(":"):
                    found.setdefault(key, p)
        return found

    return await mesh.remembered("billing:payments", load)


async def read_charge_payment(mesh: Mesh, obj: StripeObject) -> billing_pb.Payment | None:
    found = await all_payments(mesh)
    intent, charge = ref(obj.get("payment_intent")), str(obj["id"])
    return found.get(f"pi:{intent}") or found.get(f"ch:{charge}") or found.get(f"pid:{charge}")


def charge_payment_differences(obj: StripeObject, payment: billing_pb.Payment | None) -> list[Difference]:
    """The payment of a succeeded charge names the charge and its intent. A charge with no payment
    is not judged here: it may pay no invoice, and an invoice's lost payment is the invoices
    check's finding (unattributed)."""
    if payment is None:
        return []
    out = []
    charge, intent = str(obj["id"]), ref(obj.get("payment_intent"))
    if payment.charge_id != charge:
        out.append(differ(MISSING if not payment.charge_id else MISMATCH, "charge_id", charge, payment.charge_id))
    if intent and payment.payment_intent_id != intent:
        out.append(
            differ(
                MISSING if not payment.payment_intent_id else MISMATCH,
                "payment_intent",
                intent,
                payment.payment_intent_id,
            )
        )
    return out


def _succeeded_charge(obj: StripeObject) -> bool:
    return obj.get("status") == "succeeded" and obj.get("paid") is not False


PAYMENTS: Check[billing_pb.Payment] = Check(
    kind="payments",
    source="charges",
    service=SERVICE,
    position=75,
    read=read_charge_payment,
    compare=charge_payment_differences,
    applies=_succeeded_charge,
)


# -- credit holds ----------------------------------------------------------------------------------


async def _hold_policy(mesh: Mesh) -> billing_pb.ListCreditHoldsResponse:
    """What the service says of its hold policy (on, released on payment), read once per run."""

    async def load() -> billing_pb.ListCreditHoldsResponse:
        request = billing_pb.ListCreditHoldsRequest(page_size=1)
        reply: billing_pb.ListCreditHoldsResponse | None = await mesh.call(
            SERVICE, _stub(mesh).ListCreditHolds(request, timeout=RPC_TIMEOUT)
        )
        assert reply is not None
        return reply

    return await mesh.remembered("billing:hold-policy", load, lasting=True)


async def holds_disabled_because(mesh: Mesh) -> str | None:
    if not (await _hold_policy(mesh)).credit_hold_enabled:
        return "billing places no credit holds (SYNCMESH_BILLING_CREDIT_HOLD is off)"
    return None


@dataclass(frozen=True)
class InvoiceHolds:
    """The holds billing placed for one invoice (none is a record too), and whether it releases
    holds on payment (else an active hold on a paid invoice is right)."""

    holds: tuple[billing_pb.CreditHold, ...]
    release_on_pay: bool


async def read_holds(mesh: Mesh, obj: StripeObject) -> InvoiceHolds:
    customer, invoice_id = ref(obj.get("customer")), str(obj["id"])
    release = (await _hold_policy(mesh)).release_on_pay
    if not customer:
        return InvoiceHolds((), release)

    async def load() -> list[billing_pb.CreditHold]:
        stub = _stub(mesh)
        holds: list[billing_pb.CreditHold] = await mesh.every_page(
            SERVICE,
            lambda token: stub.ListCreditHolds(
                billing_pb.ListCreditHoldsRequest(stripe_customer_id=customer, page_size=500, page_token=token),
                timeout=RPC_TIMEOUT,
            ),
            "holds",
        )
        return holds

    holds = await mesh.remembered(f"billing:holds:{customer}", load)
    return InvoiceHolds(tuple(h for h in holds if h.stripe_invoice_id == invoice_id), release)


def final_payment_failed(obj: StripeObject) -> bool:
    """Stripe has given up collecting the invoice: open, attempted, and no next attempt."""
    attempts = obj.get("attempt_count")
    return (
        obj.get("status") == "open"
        and isinstance(attempts, int)
        and attempts > 0
        and obj.get("next_payment_attempt") is None
    )


def _hold_judged(obj: StripeObject) -> bool:
    return final_payment_failed(obj) or obj.get("status") in ("paid", "void")


def hold_differences(obj: StripeObject, record: InvoiceHolds | None) -> list[Difference]:
    """A hold where Stripe gave up collecting; no active one on an invoice paid or voided since."""
    holds = record.holds if record is not None else ()
    status = text(obj.get("status"))
    if final_payment_failed(obj) and not holds:
        return [differ(MISSING, "hold", "final payment failed", "none")]
    if record is not None and record.release_on_pay and status in ("paid", "void") and any(h.active for h in holds):
        return [differ(STALE, "hold", f"released (invoice {status})", "active")]
    return []


CREDIT_HOLDS: Check[InvoiceHolds] = Check(
    kind="credit_holds",
    source="invoices",
    service=SERVICE,
    position=80,
    read=read_holds,
    compare=hold_differences,
    applies=_hold_judged,
    disabled_because=holds_disabled_because,
    omit_when_disabled=True,
)

#: What `syncmesh verify` checks in this service.
CHECKS: tuple[Check[Any], ...] = (INVOICES, CREDIT_MEMOS, REFUNDS, PAYMENTS, CREDIT_HOLDS)
