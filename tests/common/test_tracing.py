"""One Stripe webhook is one trace: gateway HTTP span -> NATS publish -> consumer -> Postgres."""

from __future__ import annotations

import aiohttp
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.app import Gateway
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from services.common.tracing import setup_tracing
from tests.common import toy_service
from tests.conftest import eventually
from tests.support.signing import signed_request
from tests.support.stripe_events import event, fixture


async def test_one_trace_from_webhook_to_the_consumers_database_write(settings: Settings) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("test", extra_processor=SimpleSpanProcessor(exporter))
    gw = Gateway(settings, port=0, host="127.0.0.1")
    rt = ServiceRuntime(toy_service.DEFINITION, settings, port=0)
    await gw.start()
    await rt.start()
    try:
        await rt.wait_ready(20)
        obj = fixture("customer")
        obj["id"] = "cus_traced"
        obj["metadata"] = {}
        body, headers = signed_request(event("customer.created", obj))
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{gw.port}/webhooks/stripe", data=body, headers=headers) as resp,
        ):
            assert resp.status == 200

        def insert_span():
            return [
                s
                for s in exporter.get_finished_spans()
                if "INSERT INTO toy_records" in str(s.attributes.get("db.statement", ""))
            ]

        db_span = (await eventually(insert_span))[0]
        spans = exporter.get_finished_spans()
        http_span = next(s for s in spans if s.kind.name == "SERVER" and "webhooks" in str(s.attributes))
        trace_id = http_span.context.trace_id
        assert db_span.context.trace_id == trace_id
        names = {s.name for s in spans if s.context.trace_id == trace_id}
        assert "publish stripe.customer.created" in names
        assert "customer consume stripe.customer.created" in names
    finally:
        await rt.stop()
        await gw.stop()
