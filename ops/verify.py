"""Reconcile: compare what Stripe holds (read through its API) with what the mesh recorded
(read over each service's gRPC API), and optionally re-sync exactly the objects that differ.

Every other tool trusts events; this one trusts nothing but the two end states. It is what
proves, after an outage, a backfill or a bug fix, that the ERP and CRM say what Stripe says.

    Stripe listing   compared with                                   reported as
    customers        customer  GetCustomer(stripe id): email, name, active
                     crm-export GetClient(stripe id): name, email, deleted   ("clients")
    invoices         billing   GetInvoice(in_...): customer link, currency, total, amount paid,
                               amount remaining, Stripe status, ERP status, and a customer
                               payment for every amount Stripe says was paid
                     crm-export GetContract(in_...) of a paid invoice         ("contracts")
    products         crm-export ListProducts: name, active, deleted
    subscriptions    crm-export GetContract(sub_...): status, customer        ("contracts")
    credit_notes     billing   ListCreditMemos(invoice) memo of that note: status, amount,
                               currency, invoice and customer links            ("credit_memos")
    refunds          billing   ListRefunds (all of them, once per run): status, amount,
                               currency, charge                                ("refunds")

The other direction is checked too where Stripe's lists cannot show it: a customer (client,
product) the mesh still holds as active but that Stripe no longer lists is retrieved by id, and
if Stripe deleted it the record is reported stale.

A Stripe stand-in may not serve every listing (localstripe has no credit notes): a listing that
answers 404 leaves its types out of the check, and the report says so on a line of its own,
never as "clean" for them.

Each difference is one row: `missing` (Stripe has it, the mesh has no record), `stale` (the
mesh holds an earlier lifecycle state: a status behind Stripe's, a deletion it never saw) or
`mismatch` (a value differs). Customer e-mails are masked in the report.

`--repair` re-syncs exactly the objects of those rows: each is turned into a Stripe-shaped
event by the backfill's own synthesis (`ops.backfill.synthesise_event`; invoices with
all their lines) and published by the gateway's own path (`gateway.app.publish_event`), so it
goes through the services' usual handlers, guards and idempotency record. Only the event id
differs from the backfill's: the backfill id is a hash of the content alone, which the
services (and JetStream) would deduplicate if that content had been applied once before and
the record was damaged afterwards; a repair id adds the run's time. `created` is the time of
the repair, so the version guards take Stripe's present state over whatever the record holds.
Then the repaired objects are fetched from Stripe again and re-verified until they match or
`settle_seconds` pass (the services apply events asynchronously).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import stripe
from syncmesh.billing.v1 import billing_service_pb2 as billing_pb
from syncmesh.billing.v1 import billing_service_pb2_grpc
from syncmesh.crm_export.v1 import crm_export_service_pb2 as crm_pb
from syncmesh.crm_export.v1 import crm_export_service_pb2_grpc
from syncmesh.customer.v1 import customer_service_pb2 as customer_pb
from syncmesh.customer.v1 import customer_service_pb2_grpc
from syncmesh.events.v1 import envelope_pb2

from ops.backfill import BACKFILL_ID_PREFIX, KINDS, KindReport, complete_invoice_lines, synthesise_event
from services.billing.statuses import CREDIT_NOTE_STATUS_RANK, REFUND_STATUS_RANK
from services.common.bus import Bus
from services.common.errors import MalformedEventError, NotServedError, SettingsError, UpstreamError
from services.common.events import StripeEvent, parse_event
from services.common.grpc_client import aio_channel, default_target
from services.common.progress import progress
from services.common.settings import Settings
from services.common.stripe_pages import RateLimiter, list_pages

log = logging.getLogger(__name__)

#: What can be verified, in the order they are reported.
VERIFY_TYPES: tuple[str, ...] = (
    "customers",
    "invoices",
    "clients",
    "products",
    "contracts",
    "credit_memos",
    "refunds",
)
#: The service each type is read from.
SERVICE_OF: dict[str, str] = {
    "customers": "customer",
    "invoices": "billing",
    "clients": "crm-export",
    "products": "crm-export",
    "contracts": "crm-export",
    "credit_memos": "billing",
    "refunds": "billing",
}
REPAIR_ID_PREFIX = "evt_vr_"

MISSING, STALE, MISMATCH = "missing", "stale", "mismatch"

#: Stripe invoice statuses in lifecycle order (as the billing service ranks them).
_INVOICE_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3}
#: ERP statuses each Stripe invoice status may legitimately show (write-off and credits vary).
_ERP_STATUSES: dict[str, frozenset[int]] = {
    "draft": frozenset({billing_pb.INVOICE_STATUS_OPEN}),
    "open": frozenset({billing_pb.INVOICE_STATUS_OPEN, billing_pb.INVOICE_STATUS_PAID_IN_FULL}),
    "paid": frozenset({billing_pb.INVOICE_STATUS_PAID_IN_FULL}),
    "void": frozenset({billing_pb.INVOICE_STATUS_VOIDED}),
    "uncollectible": frozenset(
        {billing_pb.INVOICE_STATUS_OPEN, billing_pb.INVOICE_STATUS_WRITTEN_OFF, billing_pb.INVOICE_STATUS_PAID_IN_FULL}
    ),
}
_SUBSCRIPTION_RANK = {
    "incomplete": 0,
    "trialing": 1,
    "active": 1,
    "past_due": 2,
    "unpaid": 3,
    "paused": 3,
    "canceled": 4,
    "incomplete_expired": 4,
}
RPC_TIMEOUT = 15.0


def parse_verify_types(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return VERIFY_TYPES
    wanted = [t.strip() for t in raw.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in VERIFY_TYPES]
    if unknown or not wanted:
        raise SettingsError(f"--types: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(VERIFY_TYPES)}")
    return tuple(t for t in VERIFY_TYPES if t in wanted)


def mask_email(value: str) -> str:
    """Enough of an address to tell two apart in a report, not enough to leak it."""
    if "@" not in value:
        return value
    local, _, domain = value.partition("@")
    return f"{local[:1]}***@{domain[:1]}***"


# -- findings and the report ---------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One difference between Stripe and the mesh."""

    kind: str
    stripe_id: str
    problem: str
    field: str
    stripe_value: str
    mesh_value: str
    #: Which Stripe object a repair re-syncs: (backfill kind name, object id).
    source: tuple[str, str]


@dataclass
class KindSummary:
    checked: int = 0
    missing: int = 0
    stale: int = 0
    mismatched: int = 0

    @property
    def ok(self) -> int:
        return self.checked - self.bad

    @property
    def bad(self) -> int:
        return self.missing + self.stale + self.mismatched


@dataclass
class VerifyReport:
    types: tuple[str, ...]
    since: datetime | None
    findings: list[Finding] = field(default_factory=list)
    summaries: dict[str, KindSummary] = field(default_factory=dict)
    #: The Stripe objects behind the findings, as listed: (backfill kind name, id) -> object.
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: Types that could not be checked at all, and why (a listing this Stripe API lacks).
    unverified: dict[str, str] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.findings

    def add(self, kind: str, findings: Sequence[Finding], obj: dict[str, Any] | None) -> None:
        summary = self.summaries.setdefault(kind, KindSummary())
        summary.checked += 1
        if not findings:
            return
        self.findings.extend(findings)
        problems = {f.problem for f in findings}
        if MISSING in problems:
            summary.missing += 1
        elif STALE in problems:
            summary.stale += 1
        else:
            summary.mismatched += 1
        if obj is not None:
            for f in findings:
                self.objects.setdefault(f.source, obj)

    def lines(self) -> list[str]:
        window = f" created since {self.since.isoformat()}" if self.since else ""
        out = [f"verified Stripe against the mesh ({', '.join(self.types)}){window}"]
        if self.findings:
            rows = [("KIND", "STRIPE ID", "PROBLEM", "FIELD", "STRIPE", "MESH")]
            rows += [(f.kind, f.stripe_id, f.problem, f.field, f.stripe_value, f.mesh_value) for f in self.findings]
            widths = [min(40, max(len(r[i]) for r in rows)) for i in range(5)]
            for row in rows:
                cells = [_cut(row[i], widths[i]).ljust(widths[i]) for i in range(5)]
                out.append("  " + "  ".join(cells) + "  " + _cut(row[5], 40))
        for kind in self.types:
            if kind in self.unverified:
                out.append(f"  {kind}: NOT VERIFIED: {self.unverified[kind]}")
                continue
            s = self.summaries.get(kind, KindSummary())
            out.append(
                f"  {kind}: checked {s.checked}, ok {s.ok}, missing {s.missing}, stale {s.stale}, "
                f"mismatched {s.mismatched}"
            )
        bad = sum(s.bad for s in self.summaries.values())
        if not self.clean:
            out.append(f"  {bad} records differ")
        elif self.unverified:
            out.append(f"  clean for what was verified; not verified: {', '.join(self.unverified)}")
        else:
            out.append("  clean: Stripe and the mesh agree")
        return out


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _show(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- reading the mesh ------------------------------------------------------------------------


class Mesh:
    """The services' gRPC APIs, as verify reads them; one channel per service."""

    def __init__(self, channels: Mapping[str, grpc.aio.Channel], targets: Mapping[str, str] | None = None) -> None:
        self.channels = dict(channels)
        self.targets = dict(targets or {})
        self._crm_settings: crm_pb.CrmExportSettings | None = None
        self._products: dict[str, crm_pb.Product] | None = None
        self._refunds: dict[str, billing_pb.Refund] | None = None

    def _channel(self, service: str) -> grpc.aio.Channel:
        channel = self.channels.get(service)
        if channel is None:
            raise SettingsError(f"no connection to the {service} service was given")
        return channel

    @property
    def customer(self) -> customer_service_pb2_grpc.CustomerServiceStub:
        return customer_service_pb2_grpc.CustomerServiceStub(self._channel("customer"))  # type: ignore[no-untyped-call]

    @property
    def billing(self) -> billing_service_pb2_grpc.BillingServiceStub:
        return billing_service_pb2_grpc.BillingServiceStub(self._channel("billing"))  # type: ignore[no-untyped-call]

    @property
    def crm(self) -> crm_export_service_pb2_grpc.CrmExportServiceStub:
        return crm_export_service_pb2_grpc.CrmExportServiceStub(self._channel("crm-export"))  # type: ignore[no-untyped-call]

    async def call(self, service: str, rpc: Awaitable[Any]) -> Any | None:
        """One RPC; None when the record does not exist, UpstreamError when the service cannot answer."""
        try:
            return await rpc
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            where = self.targets.get(service, "")
            at = f" at {where}" if where else ""
            raise UpstreamError(
                f"the {service} service{at} did not answer ({exc.code().name}: {exc.details()}): "
                "check that it runs and is SERVING"
            ) from exc

    def forget_cached(self) -> None:
        self._products = None
        self._refunds = None

    async def crm_settings(self) -> crm_pb.CrmExportSettings:
        if self._crm_settings is None:
            reply = await self.call(
                "crm-export", self.crm.GetSettings(crm_pb.GetSettingsRequest(), timeout=RPC_TIMEOUT)
            )
            assert reply is not None
            self._crm_settings = reply.settings
        return self._crm_settings

    async def _every_page(self, service: str, ask: Callable[[str], Awaitable[Any]], field: str) -> list[Any]:
        """Every item of a paged List RPC: `ask(page_token)` makes the call, `field` holds the items."""
        out: list[Any] = []
        token = ""
        while True:
            reply = await self.call(service, ask(token))
            assert reply is not None
            out.extend(getattr(reply, field))
            token = reply.next_page_token
            if not token:
                return out

    async def products(self, *, refresh: bool = False) -> dict[str, crm_pb.Product]:
        if self._products is None or refresh:
            products = await self._every_page(
                "crm-export",
                lambda token: self.crm.ListProducts(
                    crm_pb.ListProductsRequest(page_size=500, page_token=token), timeout=RPC_TIMEOUT
                ),
                "products",
            )
            self._products = {p.stripe_product_id: p for p in products}
        return self._products

    async def refunds(self) -> dict[str, billing_pb.Refund]:
        """Every refund billing holds, by Stripe id: a Stripe refund names its charge, not its
        invoice or customer, so there is no narrower way to look one up."""
        if self._refunds is None:
            refunds = await self._every_page(
                "billing",
                lambda token: self.billing.ListRefunds(
                    billing_pb.ListRefundsRequest(page_size=500, page_token=token), timeout=RPC_TIMEOUT
                ),
                "refunds",
            )
            self._refunds = {r.stripe_refund_id: r for r in refunds}
        return self._refunds

    async def credit_memo(self, invoice_id: str, customer_id: str, source_id: str) -> billing_pb.CreditMemo | None:
        """The memo billing made of one Stripe credit note, looked up through its invoice."""
        token = ""
        while True:
            request = billing_pb.ListCreditMemosRequest(
                invoice_id=invoice_id,
                stripe_customer_id="" if invoice_id else customer_id,
                page_size=500,
                page_token=token,
            )
            reply = await self.call("billing", self.billing.ListCreditMemos(request, timeout=RPC_TIMEOUT))
            if reply is None:
                return None
            for memo in reply.credit_memos:
                if memo.source_id == source_id and memo.kind == billing_pb.CREDIT_MEMO_KIND_CREDIT_NOTE:
                    found: billing_pb.CreditMemo = memo
                    return found
            token = reply.next_page_token
            if not token:
                return None

    async def active_customers(self) -> list[customer_pb.Customer]:
        return await self._every_page(
            "customer",
            lambda token: self.customer.ListCustomers(
                customer_pb.ListCustomersRequest(
                    page_size=500, page_token=token, active=customer_pb.ACTIVE_FILTER_ACTIVE
                ),
                timeout=RPC_TIMEOUT,
            ),
            "customers",
        )

    async def live_clients(self) -> list[crm_pb.Client]:
        clients = await self._every_page(
            "crm-export",
            lambda token: self.crm.ListClients(
                crm_pb.ListClientsRequest(page_size=500, page_token=token), timeout=RPC_TIMEOUT
            ),
            "clients",
        )
        return [c for c in clients if c.origin == crm_pb.CLIENT_ORIGIN_STRIPE and not c.deleted]


# -- comparing one object ------------------------------------------------------------------------

Compare = Callable[[Mesh, dict[str, Any]], Awaitable[list[Finding]]]


def _finding(
    kind: str, source: str, obj: dict[str, Any], problem: str, name: str, stripe_value: object, mesh_value: object
) -> Finding:
    oid = str(obj.get("id", ""))
    return Finding(kind, oid, problem, name, _show(stripe_value), _show(mesh_value), (source, oid))


def _text(value: object) -> str:
    return "" if value is None else str(value)


async def compare_customer(mesh: Mesh, obj: dict[str, Any]) -> list[Finding]:
    request = customer_pb.GetCustomerRequest(stripe_customer_id=str(obj["id"]))
    reply = await mesh.call("customer", mesh.customer.GetCustomer(request, timeout=RPC_TIMEOUT))
    deleted = bool(obj.get("deleted"))
    if reply is None:
        if deleted:
            return []  # deleted in Stripe and never known here: nothing to keep in step
        return [_finding("customers", "customers", obj, MISSING, "record", "exists", "none")]
    record = reply.customer
    out: list[Finding] = []
    if deleted:
        if record.active:
            out.append(_finding("customers", "customers", obj, STALE, "active", False, True))
        return out
    if not record.active:
        out.append(_finding("customers", "customers", obj, MISMATCH, "active", True, False))
    stripe_email = _text(obj.get("email")).strip()
    if stripe_email.lower() != record.email.strip().lower():
        out.append(
            _finding(
                "customers", "customers", obj, MISMATCH, "email", mask_email(stripe_email), mask_email(record.email)
            )
        )
    if _text(obj.get("name")) != record.name:
        out.append(_finding("customers", "customers", obj, MISMATCH, "name", obj.get("name"), record.name))
    return out


async def compare_client(mesh: Mesh, obj: dict[str, Any]) -> list[Finding]:
    reply = await mesh.call(
        "crm-export", mesh.crm.GetClient(crm_pb.GetClientRequest(client_id=str(obj["id"])), timeout=RPC_TIMEOUT)
    )
    deleted = bool(obj.get("deleted"))
    if reply is None:
        return [] if deleted else [_finding("clients", "customers", obj, MISSING, "record", "exists", "none")]
    client = reply.client
    if deleted:
        return [_finding("clients", "customers", obj, STALE, "deleted", True, False)] if not client.deleted else []
    out: list[Finding] = []
    if client.deleted:
        out.append(_finding("clients", "customers", obj, MISMATCH, "deleted", False, True))
    # The CRM names a client after the customer's name, else its description, else its id.
    expected_name = _text(obj.get("name")) or _text(obj.get("description")) or str(obj["id"])
    if expected_name != client.name:
        out.append(_finding("clients", "customers", obj, MISMATCH, "name", expected_name, client.name))
    stripe_email = _text(obj.get("email")).strip()
    if stripe_email.lower() != client.email.strip().lower():
        out.append(
            _finding("clients", "customers", obj, MISMATCH, "email", mask_email(stripe_email), mask_email(client.email))
        )
    return out


def _ref(value: object) -> str:
    if isinstance(value, dict):
        return _text(value.get("id"))
    return _text(value)


async def compare_invoice(mesh: Mesh, obj: dict[str, Any]) -> list[Finding]:
    reply = await mesh.call(
        "billing", mesh.billing.GetInvoice(billing_pb.GetInvoiceRequest(invoice_id=str(obj["id"])), timeout=RPC_TIMEOUT)
    )
    if reply is None:
        return [_finding("invoices", "invoices", obj, MISSING, "record", "exists", "none")]
    inv = reply.invoice
    out: list[Finding] = []

    def differs(name: str, stripe_value: object, mesh_value: object, problem: str = MISMATCH) -> None:
        out.append(_finding("invoices", "invoices", obj, problem, name, stripe_value, mesh_value))

    status = _text(obj.get("status"))
    out += _status_finding("invoices", "invoices", obj, _INVOICE_RANK, status, inv.stripe_status, "stripe_status")
    allowed = _ERP_STATUSES.get(status)
    if allowed is not None and inv.status not in allowed:
        shown = billing_pb.InvoiceStatus.Name(inv.status).removeprefix("INVOICE_STATUS_").lower()
        differs("erp_status", " or ".join(_erp_name(s) for s in sorted(allowed)), shown, STALE)
    customer = _ref(obj.get("customer"))
    if customer != inv.stripe_customer_id:
        differs("customer", customer, inv.stripe_customer_id)
    currency = _text(obj.get("currency")).lower()
    if currency != inv.currency.lower():
        differs("currency", currency, inv.currency)
    for name, money in (("total", inv.total), ("amount_paid", inv.amount_paid)):
        value = obj.get(name)
        if isinstance(value, int) and value != money.amount_minor:
            differs(name, value, money.amount_minor)
    remaining = obj.get("amount_remaining")
    # Stripe's remainder of a void or uncollectible invoice is not the ERP's (voided: nothing
    # owed; written off: credited), so it is compared only while both are plain open/paid.
    plain = status in ("open", "paid") and inv.status in (
        billing_pb.INVOICE_STATUS_OPEN,
        billing_pb.INVOICE_STATUS_PAID_IN_FULL,
    )
    if plain and isinstance(remaining, int) and remaining != inv.amount_remaining.amount_minor:
        differs("amount_remaining", remaining, inv.amount_remaining.amount_minor)
    # Paid in Stripe but with no payment record for (part of) it: the invoice reads as paid, yet
    # the ERP has no customer payment to deposit and reconcile against the bank.
    if inv.unattributed_paid.amount_minor > 0:
        differs(
            "payment",
            f"{inv.amount_paid.amount_minor} paid",
            f"{inv.unattributed_paid.amount_minor} without one",
            MISSING,
        )
    return out


def _erp_name(status: int) -> str:
    return billing_pb.InvoiceStatus.Name(status).removeprefix("INVOICE_STATUS_").lower()


async def compare_invoice_contract(mesh: Mesh, obj: dict[str, Any]) -> list[Finding]:
    settings = await mesh.crm_settings()
    if crm_pb.CONTRACT_SOURCE_INVOICE not in settings.contract_sources:
        return []
    reply = await mesh.call(
        "crm-export", mesh.crm.GetContract(crm_pb.GetContractRequest(contract_id=str(obj["id"])), timeout=RPC_TIMEOUT)
    )
    if reply is None:
        return [_finding("contracts", "invoices", obj, MISSING, "record", "exists", "none")]
    contract = reply.contract
    out: list[Finding] = []
    if contract.status != "paid":
        out.append(_finding("contracts", "invoices", obj, STALE, "status", "paid", contract.status))
    customer = _ref(obj.get("customer"))
    if customer != contract.stripe_customer_id:
        out.append(_finding("contracts", "invoices", obj, MISMATCH, "customer", customer, contract.stripe_customer_id))
    total = obj.get("total")
    if isinstance(total, int) and total != contract.total.amount_minor:
        out.append(_finding("contracts", "invoices", obj, MISMATCH, "total", total, contract.total.amount_minor))
    return out


async def compare_subscription_contract(mesh: Mesh, obj: dict[str, Any]) -> list[Finding]:
    settings = await mesh.crm_settings()
    if crm_pb.CONTRACT_SOURCE_SUBSCRIPTION not in settings.contract_sources:
        return []
    reply = await mesh.call(
        "crm-export", mesh.crm.GetContract(crm_pb.GetContractRequest(contract_id=str(obj["id"])), timeout=RPC_TIMEOUT)
    )
    if reply is None:
        return [_finding("contracts", "subscriptions", obj, MISSING, "record", "exists", "none")]
    contract = reply.contract
    out: list[Finding] = []
    out += _status_finding(
        "contracts", "subscriptions", obj, _SUBSCRIPTION_RANK, _text(obj.get("status")), contract.status
    )
    customer = _ref(obj.get("customer"))
    if customer != contract.stripe_customer_id:
        out.append(
            _finding("contracts", "subscriptions", obj, MISMATCH, "customer", customer, contract.stripe_customer_id)
        )
    return out


async def compare_product(mesh: Mesh, obj: dict[str, Any]) -> list[Finding]:
    product = (await mesh.products()).get(str(obj["id"]))
    deleted = bool(obj.get("deleted"))
    if product is None:
        return [] if deleted else [_finding("products", "products", obj, MISSING, "record", "exists", "none")]
    if deleted:
        return [_finding("products", "products", obj, STALE, "deleted", True, False)] if not product.deleted else []
    out: list[Finding] = []
    if product.deleted:
        out.append(_finding("products", "products", obj, MISMATCH, "deleted", False, True))
    if _text(obj.get("name")) != product.name:
        out.append(_finding("products", "products", obj, MISMATCH, "name", obj.get("name"), product.name))
    if bool(obj.get("active")) != product.active:
        out.append(_finding("products", "products", obj, MISMATCH, "active", bool(obj.get("active")), product.active))
    return out


def _status_finding(
    kind: str,
    source: str,
    obj: dict[str, Any],
    rank: Mapping[str, int],
    stripe_status: str,
    mesh_status: str,
    name: str = "status",
) -> list[Finding]:
    """A status that differs is stale when the mesh's is behind Stripe's in lifecycle order."""
    if stripe_status == mesh_status:
        return []
    behind = rank.get(mesh_status, -1) < rank.get(stripe_status, -1)
    return [_finding(kind, source, obj, STALE if behind else MISMATCH, name, stripe_status, mesh_status)]


def _money_findings(kind: str, source: str, obj: dict[str, Any], amount: object, money: Any) -> list[Finding]:
    out = []
    if isinstance(amount, int) and amount != money.amount_minor:
        out.append(_finding(kind, source, obj, MISMATCH, "amount", amount, money.amount_minor))
    currency = _text(obj.get("currency")).lower()
    if currency != money.currency.lower():
        out.append(_finding(kind, source, obj, MISMATCH, "currency", currency, money.currency))
    return out


async def compare_credit_note(mesh: Mesh, obj: dict[str, Any]) -> list[Finding]:
    invoice, customer = _ref(obj.get("invoice")), _ref(obj.get("customer"))
    memo = await mesh.credit_memo(invoice, customer, str(obj["id"]))
    if memo is None:
        return [_finding("credit_memos", "credit_notes", obj, MISSING, "record", "exists", "none")]
    out = _status_finding(
        "credit_memos", "credit_notes", obj, CREDIT_NOTE_STATUS_RANK, _text(obj.get("status")) or "issued", memo.status
    )
    out += _money_findings("credit_memos", "credit_notes", obj, obj.get("amount"), memo.amount)
    if invoice != memo.stripe_invoice_id:
        out.append(_finding("credit_memos", "credit_notes", obj, MISMATCH, "invoice", invoice, memo.stripe_invoice_id))
    if customer and customer != memo.stripe_customer_id:
        out.append(
            _finding("credit_memos", "credit_notes", obj, MISMATCH, "customer", customer, memo.stripe_customer_id)
        )
    return out


async def compare_refund(mesh: Mesh, obj: dict[str, Any]) -> list[Finding]:
    record = (await mesh.refunds()).get(str(obj["id"]))
    if record is None:
        return [_finding("refunds", "refunds", obj, MISSING, "record", "exists", "none")]
    out = _status_finding(
        "refunds", "refunds", obj, REFUND_STATUS_RANK, _text(obj.get("status")) or "succeeded", record.status
    )
    out += _money_findings("refunds", "refunds", obj, obj.get("amount"), record.amount)
    charge = _ref(obj.get("charge"))
    if charge and charge != record.charge_id:
        out.append(_finding("refunds", "refunds", obj, MISMATCH, "charge", charge, record.charge_id))
    return out


@dataclass(frozen=True)
class Check:
    """One reported type compared against one Stripe listing."""

    kind: str
    #: The Stripe listing (a backfill kind name), also what a repair re-syncs.
    source: str
    compare: Compare
    applies: Callable[[dict[str, Any]], bool] = lambda _obj: True


def _paid(obj: dict[str, Any]) -> bool:
    return obj.get("status") == "paid" or obj.get("paid") is True


CHECKS: tuple[Check, ...] = (
    Check("customers", "customers", compare_customer),
    Check("invoices", "invoices", compare_invoice),
    Check("clients", "customers", compare_client),
    Check("products", "products", compare_product),
    Check("contracts", "invoices", compare_invoice_contract, _paid),
    Check("contracts", "subscriptions", compare_subscription_contract),
    Check("credit_memos", "credit_notes", compare_credit_note),
    Check("refunds", "refunds", compare_refund),
)


# -- listing Stripe ------------------------------------------------------------------------------


async def _retrieve(client: stripe.StripeClient, source: str, object_id: str, *, livemode: bool) -> dict[str, Any]:
    """The object as Stripe holds it now; a deletion stub when Stripe says it is gone.

    Stripe answers a deleted customer or product with `{"id", "object", "deleted": true}` (some
    stand-ins with 404); either way the stub is what a repair publishes as its deletion.
    """
    service = getattr(client.v1, KINDS[source].service)
    stub = {"id": object_id, "object": source.rstrip("s"), "deleted": True, "livemode": livemode}
    try:
        obj = await service.retrieve_async(object_id)
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            return stub
        raise UpstreamError(f"Stripe could not return {object_id}: {str(exc).splitlines()[0]}") from exc
    except stripe.StripeError as exc:
        raise UpstreamError(f"Stripe could not return {object_id}: {str(exc).splitlines()[0]}") from exc
    data: dict[str, Any] = obj.to_dict(for_json=True)
    return {**stub, **data} if data.get("deleted") else data


async def _gather_limited(jobs: Iterable[Awaitable[None]], limit: int) -> None:
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Awaitable[None]) -> None:
        async with semaphore:
            await job

    await asyncio.gather(*(run(job) for job in jobs))


async def verify(
    client: stripe.StripeClient,
    mesh: Mesh,
    settings: Settings,
    *,
    types: Sequence[str] = VERIFY_TYPES,
    since: datetime | None = None,
    requests_per_second: float = 20.0,
    concurrency: int = 16,
    show_progress: bool = False,
) -> VerifyReport:
    """List Stripe's objects and compare each with the mesh's records; nothing is written."""
    start = since
    if settings.sync_start is not None and (start is None or settings.sync_start > start):
        start = settings.sync_start  # the services deliberately skip objects created earlier
    report = VerifyReport(types=tuple(t for t in VERIFY_TYPES if t in types), since=start)
    for kind in report.types:
        report.summaries[kind] = KindSummary()
    if "clients" in report.types:
        crm = await mesh.crm_settings()
        if crm.customer_sync_direction == crm_pb.CUSTOMER_SYNC_DIRECTION_DISABLED:
            log.info("clients not verified: the CRM export takes its clients from the CRM (customer sync DISABLED)")
            report.types = tuple(t for t in report.types if t != "clients")
            report.summaries.pop("clients", None)
    checks = [c for c in CHECKS if c.kind in report.types]
    if "contracts" in report.types:
        sources = (await mesh.crm_settings()).contract_sources
        wanted = {"invoices": crm_pb.CONTRACT_SOURCE_INVOICE, "subscriptions": crm_pb.CONTRACT_SOURCE_SUBSCRIPTION}
        checks = [c for c in checks if c.kind != "contracts" or wanted[c.source] in sources]
    if "products" in report.types:
        await mesh.products()
    limiter = RateLimiter(requests_per_second)
    since_ts = int(start.timestamp()) if start is not None else None
    want_live = settings.mode == "live"
    listed: dict[str, set[str]] = {}

    for source in dict.fromkeys(c.source for c in checks):
        source_checks = [c for c in checks if c.source == source]
        listing = KINDS[source]
        call = getattr(client.v1, listing.service).list_async
        seen = listed.setdefault(source, set())
        bar = progress(total=None, desc=f"verify {source}", unit="obj", enabled=show_progress)
        try:
            async for objects, _last in list_pages(
                call, {"limit": 100, **dict(listing.params)}, what=source, limiter=limiter, created_gte=since_ts
            ):
                objects = [o for o in objects if bool(o.get("livemode", False)) == want_live]
                seen.update(str(o["id"]) for o in objects)
                jobs = [
                    _check_one(report, check, mesh, obj)
                    for obj in objects
                    for check in source_checks
                    if check.applies(obj)
                ]
                await _gather_limited(jobs, concurrency)
                bar.update(len(objects))
        except NotServedError as exc:
            for check in source_checks:
                report.unverified[check.kind] = str(exc).split(":")[0]
                report.summaries.pop(check.kind, None)
            log.warning("%s", exc)
        finally:
            bar.close()

    await _reverse_checks(
        report, client, mesh, listed, since=start, concurrency=concurrency, want_live=want_live, limiter=limiter
    )
    report.findings.sort(key=lambda f: (VERIFY_TYPES.index(f.kind), f.stripe_id, f.field))
    return report


async def _check_one(report: VerifyReport, check: Check, mesh: Mesh, obj: dict[str, Any]) -> None:
    report.add(check.kind, await check.compare(mesh, obj), obj)


async def _reverse_checks(
    report: VerifyReport,
    client: stripe.StripeClient,
    mesh: Mesh,
    listed: dict[str, set[str]],
    *,
    since: datetime | None,
    concurrency: int,
    want_live: bool,
    limiter: RateLimiter,
) -> None:
    """Records the mesh holds as live whose Stripe object was not listed: deleted in Stripe?"""
    candidates: dict[tuple[str, str], list[Check]] = {}
    by_kind = {c.kind: c for c in CHECKS if c.source in ("customers", "products")}
    if "customers" in report.types:
        for record in await mesh.active_customers():
            created = record.stripe_created_at.seconds if record.HasField("stripe_created_at") else 0
            if not record.stripe_customer_id or record.stripe_customer_id in listed.get("customers", set()):
                continue
            if since is not None and created and created < since.timestamp():
                continue
            candidates.setdefault(("customers", record.stripe_customer_id), []).append(by_kind["customers"])
    # Clients and products carry no Stripe creation time: with a window, they are checked only
    # when their customer is a candidate anyway.
    if "clients" in report.types:
        for c in await mesh.live_clients():
            key = ("customers", c.stripe_customer_id)
            if c.stripe_customer_id in listed.get("customers", set()):
                continue
            if since is None or key in candidates:
                candidates.setdefault(key, []).append(by_kind["clients"])
    if "products" in report.types and since is None:
        for product_id, product in (await mesh.products()).items():
            if not product.deleted and product_id not in listed.get("products", set()):
                candidates.setdefault(("products", product_id), []).append(by_kind["products"])

    async def one(source: str, object_id: str, checks: list[Check]) -> None:
        await limiter.wait()
        obj = await _retrieve(client, source, object_id, livemode=want_live)
        if not obj.get("deleted"):
            return  # it exists and was merely outside the window
        for check in checks:
            report.add(check.kind, await check.compare(mesh, obj), obj)

    await _gather_limited((one(s, i, cs) for (s, i), cs in candidates.items()), concurrency)


# -- repair ------------------------------------------------------------------------------------


@dataclass
class RepairReport:
    published: int = 0
    duplicates: int = 0
    not_publishable: int = 0
    before: VerifyReport | None = None
    after: VerifyReport | None = None
    settled_seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [f"repair: published {self.published} synthetic events"]
        if self.duplicates:
            out[0] += f" ({self.duplicates} already in the stream)"
        if self.not_publishable:
            out.append(f"  {self.not_publishable} objects could not be turned into events (see log)")
        if self.after is not None:
            if self.after.clean:
                out.append(f"  re-verified after {self.settled_seconds:.1f}s: every repaired record now matches Stripe")
            else:
                out.append(f"  re-verified after {self.settled_seconds:.1f}s: still different:")
                out.extend("  " + line for line in self.after.lines()[1:])
        return out


def repair_event(source: str, obj: dict[str, Any], *, run: str, listed_at: int, api_version: str | None) -> StripeEvent:
    """The backfill's event for this object, under an id of its own for this repair run."""
    body = synthesise_event(KINDS[source], obj, listed_at=listed_at, api_version=api_version or "")
    body["id"] = f"{REPAIR_ID_PREFIX}{run}_{str(body['id']).removeprefix(BACKFILL_ID_PREFIX)}"
    return parse_event(json.dumps(body).encode())


async def repair(
    bus: Bus,
    client: stripe.StripeClient,
    mesh: Mesh,
    settings: Settings,
    report: VerifyReport,
    *,
    settle_seconds: float = 60.0,
    requests_per_second: float = 20.0,
    show_progress: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RepairReport:
    """Re-sync exactly the objects behind `report`'s findings, then re-verify them."""
    from services.common.publish import publish_event  # at call time, as gateway.app imports the sweeper

    result = RepairReport(before=report)
    if report.clean:
        return result
    limiter = RateLimiter(requests_per_second)
    started = now()
    run = started.strftime("%Y%m%d%H%M%S%f")  # two runs never share ids, even within a second
    targets = list(report.objects.items())
    unpaid = {f.source for f in report.findings if f.kind == "invoices" and f.field == "payment"}
    bar = progress(total=len(targets), desc="repair", unit="obj", enabled=show_progress)
    try:
        for (source, object_id), obj in targets:
            bar.update(1)
            if source == "invoices" and not obj.get("deleted"):
                await complete_invoice_lines(client, obj, limiter, KindReport())
            try:
                event = repair_event(
                    source, obj, run=run, listed_at=int(now().timestamp()), api_version=stripe.api_version
                )
            except MalformedEventError as exc:
                result.not_publishable += 1
                log.error("%s %s cannot be published as an event: %s", source, object_id, exc)
                continue
            events = [event]
            if (source, object_id) in unpaid:
                events += [
                    repair_event(
                        "invoice_payments", p, run=run, listed_at=int(now().timestamp()), api_version=stripe.api_version
                    )
                    for p in await _paid_invoice_payments(client, object_id, limiter)
                ]
            for event in events:
                if await publish_event(bus, event, source=envelope_pb2.EVENT_SOURCE_RECONCILE):
                    result.duplicates += 1
                else:
                    result.published += 1
    finally:
        bar.close()
    log.info("repair published %d events for %d findings", result.published, len(report.findings))
    result.after = await reverify(
        client,
        mesh,
        report,
        livemode=settings.mode == "live",
        settle_seconds=settle_seconds,
        requests_per_second=requests_per_second,
    )
    result.settled_seconds = (now() - started).total_seconds()
    return result


async def _paid_invoice_payments(
    client: stripe.StripeClient, invoice_id: str, limiter: RateLimiter
) -> list[dict[str, Any]]:
    """The invoice's paid invoice_payment objects: since API version 2025-03-31 the only thing
    that ties the money to the invoice. A stand-in without them (localstripe) answers 404, and
    the invoice's own legacy `charge` field, re-synced with it, carries the payment instead."""
    found: list[dict[str, Any]] = []
    try:
        async for objects, _last in list_pages(
            getattr(client.v1, KINDS["invoice_payments"].service).list_async,
            {"limit": 100, "invoice": invoice_id, "status": "paid"},
            what=f"payments of {invoice_id}",
            limiter=limiter,
        ):
            found.extend(objects)
    except NotServedError:
        log.info("this Stripe API lists no invoice payments; %s is re-synced from the invoice alone", invoice_id)
    return found


async def reverify(
    client: stripe.StripeClient,
    mesh: Mesh,
    report: VerifyReport,
    *,
    livemode: bool,
    settle_seconds: float,
    requests_per_second: float = 20.0,
    interval: float = 0.5,
) -> VerifyReport:
    """Fetch the objects of `report` from Stripe again and compare until they match or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle_seconds
    kinds_of: dict[tuple[str, str], set[str]] = {}
    for f in report.findings:
        kinds_of.setdefault(f.source, set()).add(f.kind)
    limiter = RateLimiter(requests_per_second)
    current: dict[tuple[str, str], dict[str, Any]] = {}
    for key in kinds_of:
        await limiter.wait()
        current[key] = await _retrieve(client, key[0], key[1], livemode=livemode)
    while True:
        mesh.forget_cached()  # re-read: the repair changes them
        after = VerifyReport(types=report.types, since=report.since)
        for key, kinds in kinds_of.items():
            obj = current[key]
            for check in CHECKS:
                if check.source == key[0] and check.kind in kinds and check.applies(obj):
                    after.add(check.kind, await check.compare(mesh, obj), obj)
        if after.clean or loop.time() >= deadline:
            after.findings.sort(key=lambda f: (VERIFY_TYPES.index(f.kind), f.stripe_id, f.field))
            return after
        await asyncio.sleep(interval)


# -- the command ---------------------------------------------------------------------------------


def command(args: Any) -> int:
    """`syncmesh verify [--repair] [--types ...] [--since DATE]`: 0 when clean, 1 when not."""
    from ops.common import EXIT_FAILED, connected_bus, parse_since, run_command
    from services.common.stripe_api import close_stripe_client, make_stripe_client
    from services.registry import by_name

    async def work(settings: Settings) -> int:
        since = parse_since("--since", args.since) if args.since else None
        types = parse_verify_types(args.types)
        client = make_stripe_client(settings, max_network_retries=0)
        if client is None:
            raise SettingsError("SYNCMESH_STRIPE_API_KEY must be set: verify reads Stripe's objects through its API")
        overrides = {"customer": args.customer_target, "billing": args.billing_target, "crm-export": args.crm_target}
        services = sorted({SERVICE_OF[t] for t in types})
        targets = {s: overrides[s] or default_target(settings, by_name(s)) for s in services}
        channels = {s: aio_channel(settings, t) for s, t in targets.items()}
        try:
            mesh = Mesh(channels, targets)
            report = await verify(
                client, mesh, settings, types=types, since=since, requests_per_second=args.rate, show_progress=True
            )
            print("\n".join(report.lines()))
            if report.clean or not args.repair:
                return 0 if report.clean else EXIT_FAILED
            async with connected_bus(settings) as bus:
                result = await repair(
                    bus,
                    client,
                    mesh,
                    settings,
                    report,
                    settle_seconds=args.settle,
                    requests_per_second=args.rate,
                    show_progress=True,
                )
            print("\n".join(result.lines()))
            return 0 if result.after is not None and result.after.clean else EXIT_FAILED
        finally:
            for channel in channels.values():
                await channel.close()
            await close_stripe_client(client)

    return run_command(work)
