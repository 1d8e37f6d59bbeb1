"""No secret and no customer e-mail or street address in anything the mesh logs or exports.

One full lifecycle runs through the whole mesh (gateway + the three services) with logging at
DEBUG (as an operator chasing a problem would set it): a customer with e-mail and address from
localstripe's own webhooks, a subscription invoiced and paid, a fixture-built invoice paid with
a card whose billing details carry the address, then refunded; a poison event that is
dead-lettered; "sync to Stripe" with a new e-mail; CSV imports (a bad one refused, a good one
applied) and the CRM's initial import. Everything the root logger formats, every raw record
(caplog, before redaction) and every exported span (names, attributes, events, status) is
then searched for the secrets and the customer data.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from syncmesh.billing.v1 import billing_service_pb2 as billing_pb
from syncmesh.crm_export.v1 import crm_export_service_pb2 as crm_pb
from syncmesh.customer.v1 import customer_service_pb2 as customer_pb

from services.common.logs import setup_logging
from services.common.settings import Settings
from services.common.tracing import setup_tracing
from tests.billing.builders import (
    InvoiceSpec,
    charge_object,
    invoice_object,
    invoice_payment_object,
    refund_object,
    stripe_event,
)
from tests.conftest import eventually
from tests.e2e.support import (
    MESH_KEY,
    WEBHOOK_ID,
    RunningMesh,
    catalogue,
    mesh_settings,
    running_mesh,
    stripe_event_count,
    subscribed_customer,
)
from tests.support.signing import TEST_SECRET, signed_request
from tests.support.stripe_events import fixture

EMAILS = (
    "leaky.lovelace@example.org",  # created through localstripe
    "grace.leak@example.net",  # fixture-built webhooks, also on the card's billing details
    "synced.later@example.org",  # "sync to Stripe" with a new e-mail
    "imported.person@example.com",  # CSV import
    "not-an-email@@example.com",  # a bad CSV row
)
STREETS = ("742 Evergreen Terrace", "1600 Amphitheatre Leakway", "31 Spooner Street")
ADDRESS = {"line1": STREETS[0], "line2": "Apt 3B", "city": "Springfield", "postal_code": "49007", "country": "US"}
SECRET_PATTERN = re.compile(r"\b(whsec|sk_test|sk_live|rk_test|rk_live)_[A-Za-z0-9]")


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """The mesh's JSON log lines at DEBUG, and the root logger restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in ("aiohttp.access", "nats", "asyncio", "stripe")}
    buffer = io.StringIO()
    setup_logging("DEBUG", stream=buffer)
    yield buffer
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in noisy.items():
        logging.getLogger(name).setLevel(old)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    setup_tracing("leak-test", extra_processor=SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture
async def mesh(settings: Settings, localstripe: Any, spans: InMemorySpanExporter) -> AsyncIterator[RunningMesh]:
    async with running_mesh(mesh_settings(settings, localstripe)) as running:
        await localstripe.register_webhook(WEBHOOK_ID, running.webhook_url, TEST_SECRET)
        yield running


def fixture_lifecycle() -> list[dict[str, Any]]:
    """Grace: created with an address, invoiced, paid by card (billing details), partly refunded."""
    t0 = 1_750_000_000
    customer = fixture("customer")
    customer.update(
        id="cus_leakGrace01",
        email=EMAILS[1],
        name="Grace Leak",
        address={**ADDRESS, "line1": STREETS[1]},
        shipping={"name": "Grace Leak", "phone": None, "address": {**ADDRESS, "line1": STREETS[2]}},
        metadata={"erp_customer_id": "NS-GRACE"},
    )
    spec = InvoiceSpec(invoice_id="in_leakGrace01", customer="cus_leakGrace01", subscription="sub_leakGrace01")
    total = int(invoice_object("basil", spec)["total"])
    paid = invoice_object("basil", spec, status="paid", amount_paid=total)
    paid["customer_email"] = EMAILS[1]
    paid["customer_address"] = {**ADDRESS, "line1": STREETS[1]}
    charge = charge_object("basil", spec, total, charge_id="ch_leakGrace01", intent="pi_leakGrace01", created=t0 + 60)
    charge["billing_details"] = {"email": EMAILS[1], "name": "Grace Leak", "phone": None, "address": ADDRESS}
    charge["receipt_email"] = EMAILS[1]
    refund = refund_object(
        "re_leakGrace01", 500, charge="ch_leakGrace01", intent="pi_leakGrace01", currency="usd", created=t0 + 600
    )
    refunded = json.loads(json.dumps(charge))
    refunded.update(amount_refunded=500, refunds={"object": "list", "data": [refund], "has_more": False, "url": "/"})
    poison = fixture("customer")
    poison.update(id="not_a_customer_id", email=EMAILS[1], address=ADDRESS)
    events = [
        stripe_event("customer.created", customer, created=t0),
        stripe_event("invoice.finalized", invoice_object("basil", spec), created=t0 + 1),
        stripe_event("invoice.paid", paid, created=t0 + 60),
        stripe_event(
            "invoice_payment.paid",
            invoice_payment_object(
                spec, total, payment_id="inpay_leakGrace01", intent="pi_leakGrace01", paid_at=t0 + 60
            ),
            created=t0 + 60,
        ),
        stripe_event("charge.succeeded", charge, created=t0 + 60),
        stripe_event("refund.created", refund, created=t0 + 600),
        stripe_event("charge.refunded", refunded, created=t0 + 600),
        stripe_event("customer.updated", poison, created=t0 + 700),  # dead-lettered: not a customer id
    ]
    return events


def span_text(span: ReadableSpan) -> str:
    parts: list[Any] = [span.name, dict(span.attributes or {}), span.status.description or ""]
    parts += [(e.name, dict(e.attributes or {})) for e in span.events]
    parts += [dict(link.attributes or {}) for link in span.links]
    return json.dumps(parts, default=str)


def leaks(text: str, secrets: tuple[str, ...]) -> list[str]:
    found = [value for value in (*secrets, *EMAILS, *STREETS) if value.lower() in text.lower()]
    found += [m.group(0) for m in SECRET_PATTERN.finditer(text)]
    return found


async def test_nothing_secret_or_personal_in_logs_or_traces(
    mesh: RunningMesh,
    ls_client: Any,
    spans: InMemorySpanExporter,
    captured_logs: io.StringIO,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = ls_client
    # -- through localstripe's own webhooks ---------------------------------------------------
    _, plan = await catalogue(client, "Pro", 4900)
    ada, _ = await subscribed_customer(
        client, plan, name="Ada Leak", email=EMAILS[0], address=ADDRESS, phone="+15555550123"
    )
    await mesh.settle(stream_messages=await stripe_event_count(client))

    # -- fixture-built webhooks: card payment with billing details, a refund, a poison event ----
    in_stream = await mesh.stream_messages()
    async with aiohttp.ClientSession() as http:
        for evt in fixture_lifecycle():
            body, headers = signed_request(evt)
            async with http.post(mesh.webhook_url, data=body, headers=headers) as resp:
                assert resp.status == 200
    await mesh.settle(stream_messages=in_stream + len(fixture_lifecycle()))

    async def dead_lettered() -> bool:
        info = await mesh.gateway.bus.js.stream_info("SYNCMESH_DLQ")
        return int(info.state.messages) >= 1

    await eventually(dead_lettered, timeout=30)
    refunds = await mesh.billing.ListRefunds(billing_pb.ListRefundsRequest(invoice_id="in_leakGrace01"))
    assert [r.amount.amount_minor for r in refunds.refunds] == [500]

    # -- sync to Stripe with a new e-mail, which comes back as a webhook ------------------------
    erp_id = (
        await mesh.customer.GetCustomer(customer_pb.GetCustomerRequest(stripe_customer_id=ada))
    ).customer.erp_customer_id
    synced = await mesh.customer.SyncCustomerToStripe(
        customer_pb.SyncCustomerToStripeRequest(erp_customer_id=erp_id, email=EMAILS[2])
    )
    assert synced.customer.email == EMAILS[2]
    with pytest.raises(grpc.aio.AioRpcError):  # localstripe has no billing portal: the error path
        await mesh.customer.CreatePortalSession(
            customer_pb.CreatePortalSessionRequest(erp_customer_id=erp_id, return_url="https://example.com/back")
        )

    # -- imports: a refused sheet (a bad e-mail), a good one, the CRM's initial pull ------------
    def sheet(text: str) -> Any:
        async def chunks() -> AsyncIterator[customer_pb.ImportCustomerMappingsRequest]:
            yield customer_pb.ImportCustomerMappingsRequest(csv_chunk=text.encode())

        return chunks()

    bad = await mesh.customer.ImportCustomerMappings(
        sheet(f"stripe_customer_id,erp_customer_id,email\ncus_importLeak1,ERP-LEAK-1,{EMAILS[4]}\n")
    )
    assert not bad.applied and bad.problems
    good = await mesh.customer.ImportCustomerMappings(
        sheet(f"stripe_customer_id,erp_customer_id,email\ncus_importLeak1,ERP-LEAK-1,{EMAILS[3]}\n")
    )
    assert good.applied
    async for progress in mesh.crm.RunImport(crm_pb.RunImportRequest(days_back=30)):
        last = progress
    assert last.finished
    await mesh.settle(stream_messages=await stripe_event_count(client) + len(fixture_lifecycle()))

    # -- the search ------------------------------------------------------------------------------
    secrets = (TEST_SECRET, MESH_KEY)
    logged = captured_logs.getvalue()
    assert logged.count("\n") > 5, "the capture works"
    assert "dead-lettered" in logged
    assert leaks(logged, secrets) == [], "formatted log lines"
    raw = [f"{r.name}: {r.getMessage()} {r.exc_text or ''}" for r in caplog.records]
    raw_leaks = [(line[:200], leaks(line, secrets)) for line in raw if leaks(line, secrets)]
    assert raw_leaks == [], "raw log records, before redaction"
    exported = spans.get_finished_spans()
    assert len(exported) > 100 and any("consume" in s.name for s in exported), "the capture works"
    span_leaks = [(s.name, leaks(span_text(s), secrets)) for s in exported if leaks(span_text(s), secrets)]
    assert span_leaks == [], "spans: names, attributes, events, status"


def test_the_search_finds_a_planted_leak(captured_logs: io.StringIO, caplog: pytest.LogCaptureFixture) -> None:
    """The detector itself: a street in a formatted line, an e-mail in a raw record, a key in a span."""
    caplog.set_level(logging.INFO)
    logging.getLogger("services.planted").info("customer %s lives at %s", EMAILS[0], STREETS[0])
    formatted = captured_logs.getvalue()
    assert EMAILS[0] not in formatted, "the formatter masks e-mails"
    assert leaks(formatted, ()) == [STREETS[0]], "but not addresses: they must never be logged"
    assert leaks(caplog.records[-1].getMessage(), ()) == [EMAILS[0], STREETS[0]]
    exporter = InMemorySpanExporter()
    setup_tracing("leak-test", extra_processor=SimpleSpanProcessor(exporter))
    try:
        from opentelemetry import trace

        with trace.get_tracer("planted").start_as_current_span("x", attributes={"k": MESH_KEY}):
            pass
        (span,) = exporter.get_finished_spans()
        assert leaks(span_text(span), (MESH_KEY,)) == [MESH_KEY, MESH_KEY[:9]]
    finally:
        exporter.shutdown()
