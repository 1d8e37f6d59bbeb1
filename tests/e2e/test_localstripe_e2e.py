"""End to end with a real client: the official `stripe` SDK drives localstripe, localstripe
delivers its signed webhooks to the gateway, and every service's records are read back over
gRPC; one webhook is followed as one trace through gateway, NATS, the three services and
PostgreSQL. Then the livemode guard, end to end, in both directions."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import asyncpg
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from syncmesh.billing.v1 import billing_service_pb2 as billing_pb
from syncmesh.crm_export.v1 import crm_export_service_pb2 as crm_pb
from syncmesh.customer.v1 import customer_service_pb2 as customer_pb

from gateway.app import Gateway
from services.common.settings import Settings
from services.common.tracing import setup_tracing
from tests.e2e.support import (
    WEBHOOK_ID,
    RunningMesh,
    card,
    catalogue,
    mesh_settings,
    running_mesh,
    stripe_event_count,
    subscribed_customer,
)
from tests.support.signing import TEST_SECRET, signed_request
from tests.support.stripe_events import event, fixture


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    setup_tracing("e2e-test", extra_processor=SimpleSpanProcessor(spans))
    yield spans
    spans.shutdown()  # the processor stays on the global provider; a shut exporter keeps nothing


@pytest.fixture
async def mesh(settings: Settings, localstripe, exporter) -> AsyncIterator[RunningMesh]:
    async with running_mesh(mesh_settings(settings, localstripe)) as running:
        await localstripe.register_webhook(WEBHOOK_ID, running.webhook_url, TEST_SECRET)
        yield running


async def test_sdk_driven_lifecycle_reaches_every_service_as_one_trace(
    mesh: RunningMesh, ls_client, exporter: InMemorySpanExporter
) -> None:
    client = ls_client
    pro_product, pro = await catalogue(client, "Pro", 4900)
    starter_product, starter = await catalogue(client, "Starter", 1900)
    ada, _ = await subscribed_customer(
        client,
        pro,
        name="Ada Lovelace",
        email="ada@example.com",
        quantity=3,
        metadata={"segment": "smb", "erp_customer_id": "NS-ADA"},  # billing links her
    )
    grace, grace_sub = await subscribed_customer(client, starter, name="Grace Hopper", email="grace@example.com")
    # Stripe's `created` has one-second resolution. The crm-export service breaks a same-second
    # tie between customer.created and customer.updated by content hash, not by Stripe's present
    # state, so an update in the creation's second may lose there (reported to its owner); this
    # scenario changes the e-mail a second later, as the demo's human-paced flow does.
    await next_second()
    await client.v1.customers.update_async(ada, {"email": "ada@analytical.example"})
    await client.v1.subscriptions.cancel_async(grace_sub)
    lead = (await client.v1.customers.create_async({"name": "Short-lived Lead", "email": "lead@example.com"})).id
    await client.v1.customers.delete_async(lead)
    intent = await client.v1.payment_intents.create_async(
        {"amount": 2500, "currency": "usd", "customer": ada, "payment_method": await card(client), "confirm": True}
    )
    assert intent.status == "succeeded"
    invoices = {inv.customer: inv for inv in (await client.v1.invoices.list_async({"limit": 100})).data}

    events = await stripe_event_count(client)
    await mesh.settle(stream_messages=events)
    assert await mesh.stream_messages() == events  # each localstripe event delivered once, none refused

    # -- customer: the ERP customer records ---------------------------------------------------
    def get_customer(stripe_id: str):
        return mesh.customer.GetCustomer(customer_pb.GetCustomerRequest(stripe_customer_id=stripe_id))

    ada_record = (await get_customer(ada)).customer
    assert (ada_record.name, ada_record.email, ada_record.active) == ("Ada Lovelace", "ada@analytical.example", True)
    assert ada_record.erp_customer_id.startswith("CUST-") and ada_record.metadata["segment"] == "smb"
    assert (await get_customer(grace)).customer.active
    assert not (await get_customer(lead)).customer.active
    listed = await mesh.customer.ListCustomers(customer_pb.ListCustomersRequest(page_size=50))
    assert {c.stripe_customer_id for c in listed.customers} == {ada, grace, lead}

    # -- billing: invoices paid in full, in integer minor units ---------------------------------
    for customer, amount in ((ada, 3 * 4900), (grace, 1900)):
        reply = await mesh.billing.GetInvoice(billing_pb.GetInvoiceRequest(invoice_id=invoices[customer].id))
        invoice = reply.invoice
        assert invoice.stripe_customer_id == customer and invoice.status == billing_pb.INVOICE_STATUS_PAID_IN_FULL
        assert invoice.total.amount_minor == amount and invoice.total.currency == "usd"
        assert invoice.amount_paid.amount_minor == amount and invoice.amount_remaining.amount_minor == 0
        assert sum(line.amount.amount_minor for line in invoice.lines) == amount
    listed_invoices = await mesh.billing.ListInvoices(billing_pb.ListInvoicesRequest(page_size=50))
    assert len(listed_invoices.invoices) == 2  # the bare PaymentIntent is no invoice

    # -- crm-export: clients, products, contracts, health ---------------------------------------
    clients = {c.client_id: c for c in (await mesh.crm.ListClients(crm_pb.ListClientsRequest(page_size=50))).clients}
    assert set(clients) == {ada, grace, lead}
    assert clients[ada].email == "ada@analytical.example" and not clients[ada].deleted
    assert clients[lead].deleted
    assert crm_pb.HEALTH_SIGNAL_SUBSCRIPTION_CANCELED in clients[grace].health_signals
    products = (await mesh.crm.ListProducts(crm_pb.ListProductsRequest(page_size=50))).products
    assert {(p.stripe_product_id, p.name) for p in products} == {(pro_product, "Pro"), (starter_product, "Starter")}
    for customer, amount in ((ada, 3 * 4900), (grace, 1900)):
        contract = (await mesh.crm.GetContract(crm_pb.GetContractRequest(contract_id=invoices[customer].id))).contract
        assert (contract.client_id, contract.status, contract.total.amount_minor) == (customer, "paid", amount)

    # -- one trace: Ada's customer.created from the gateway's HTTP span to each service's SQL -----
    listed_events = (await client.v1.events.list_async({"limit": 100})).data
    created_id = next(e.id for e in listed_events if e.type == "customer.created" and e.data.object["id"] == ada)
    spans = exporter.get_finished_spans()
    publish = [s for s in spans if (s.attributes or {}).get("messaging.message.id") == created_id]
    trace_id = publish[0].context.trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    names = {s.name for s in in_trace}
    assert "publish stripe.customer.created" in names
    assert {f"{svc} consume stripe.customer.created" for svc in ("customer", "billing", "crm-export")} <= names
    http = [s for s in in_trace if s.kind.name == "SERVER" and "webhooks" in json.dumps(dict(s.attributes or {}))]
    assert len(http) == 1 and http[0].parent is None, "the gateway's HTTP span is the root"
    # Every service writes a whole batch at once: the write runs in the batch's span, which is
    # linked to the trace of every message in the batch (and is in the first one's).
    all_sql = [s for s in spans if (s.attributes or {}).get("db.system") == "postgresql"]
    batch_writes = {
        "customer": "INSERT INTO customers ( erp_customer_id",
        "billing": "INSERT INTO customers (stripe_customer_id, erp_customer_id",
        "crm-export": "INSERT INTO clients",
    }
    for service, statement in batch_writes.items():
        batches = [
            s
            for s in spans
            if s.name == f"{service} apply batch" and any(link.context.trace_id == trace_id for link in s.links)
        ]
        inside = [_statement(s) for s in all_sql for b in batches if _descends(s, b, spans)]
        assert any(statement in text for text in inside), f"{service}: {inside}"


async def next_second() -> None:
    """Wait for the wall clock's second to change (at most one second; not an assertion)."""
    now = time.time()
    await asyncio.sleep(math.ceil(now) - now + 0.01)


def _statement(span: ReadableSpan) -> str:
    return " ".join(str((span.attributes or {}).get("db.statement", "")).split())


def _descends(span: ReadableSpan, ancestor: ReadableSpan, spans: list[ReadableSpan]) -> bool:
    by_id = {s.context.span_id: s for s in spans}
    parent = span.parent
    while parent is not None:
        if parent.span_id == ancestor.context.span_id:
            return True
        above = by_id.get(parent.span_id)
        parent = above.parent if above is not None else None
    return False


# -- the livemode guard, end to end ------------------------------------------------------------


def customer_created(customer_id: str, *, livemode: bool) -> dict:
    obj = fixture("customer")
    obj.update(id=customer_id, livemode=livemode, metadata={})
    return event("customer.created", obj, livemode=livemode)


async def post(url: str, evt: dict) -> tuple[int, dict]:
    body, headers = signed_request(evt)
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def processed_anywhere(database_url: str, event_id: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        total = 0
        for schema in ("customer", "billing", "crm_export"):
            total += int(
                await conn.fetchval(f"SELECT count(*) FROM {schema}.processed_events WHERE event_id = $1", event_id)
            )
        return total
    finally:
        await conn.close()


async def test_livemode_guard_end_to_end(mesh: RunningMesh, settings: Settings) -> None:
    # A live-mode event to this test-mode mesh: refused before NATS, so no service sees it.
    live = customer_created("cus_liveIntruder", livemode=True)
    status, body = await post(mesh.webhook_url, live)
    assert status == 400 and "live-mode event refused" in body["error"]

    # A test-mode event to a live-mode gateway on the same NATS: refused the same way.
    live_gateway = Gateway(settings.with_overrides(mode="live"), port=0, host="127.0.0.1")
    await live_gateway.start()
    try:
        await live_gateway.bus.wait_ready(10)
        stray = customer_created("cus_testStray", livemode=False)
        status, body = await post(f"http://127.0.0.1:{live_gateway.port}/webhooks/stripe", stray)
        assert status == 400 and "test-mode event refused" in body["error"]
    finally:
        await live_gateway.stop()

    # The same test-mode event to the test-mode mesh flows: the guard, not a broken path, refused.
    status, _ = await post(mesh.webhook_url, stray)
    assert status == 200
    await mesh.settle(stream_messages=1)
    assert await mesh.stream_messages() == 1  # neither refused event reached the stream
    assert await processed_anywhere(settings.database_url or "", live["id"]) == 0
    assert await processed_anywhere(settings.database_url or "", stray["id"]) == 3  # all three services
    record = (
        await mesh.customer.GetCustomer(customer_pb.GetCustomerRequest(stripe_customer_id="cus_testStray"))
    ).customer
    assert record.active
