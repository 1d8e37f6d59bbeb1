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


def test_a_process_that_exports_nothing_records_nothing_but_keeps_its_ids() -> None:
    """Without a span processor spans gather nothing (their recording was CPU no one read), yet
    each has valid ids for log lines and propagation; once spans go somewhere they are recorded,
    also under an unsampled parent from a process that exports nothing."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from services.common.tracing import _RecordWhenExported

    sampler = _RecordWhenExported(ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON))
    provider = sampler.provider = TracerProvider(sampler=sampler)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("quiet", attributes={"a": 1}) as quiet:
        assert not quiet.is_recording()
        assert quiet.get_span_context().is_valid
        with tracer.start_as_current_span("child") as child:
            assert child.get_span_context().trace_id == quiet.get_span_context().trace_id

    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    unsampled = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    with tracer.start_as_current_span("heard", context=trace.set_span_in_context(NonRecordingSpan(unsampled))) as heard:
        assert heard.is_recording()
    [span] = exporter.get_finished_spans()
    assert span.name == "heard" and span.context.trace_id == 0x1234
