"""The gateway's own HTTP span (gateway/http_span.py): one SERVER span per request, the parent of
the publish span, continuing a `traceparent` the sender sent (in any case), with the answer's status code."""

from __future__ import annotations

import aiohttp
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.app import Gateway
from services.common.settings import Settings
from services.common.tracing import setup_tracing
from tests.support.signing import signed_request
from tests.support.stripe_events import event, fixture

SENDER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SENDER_SPAN = "00f067aa0ba902b7"


def _server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]


async def test_a_webhook_is_one_server_span_continuing_the_senders_trace_around_its_publish(settings: Settings) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("test", extra_processor=SimpleSpanProcessor(exporter))
    gw = Gateway(settings, port=0, host="127.0.0.1")
    await gw.start()
    try:
        await gw.bus.wait_ready(10)
        body, headers = signed_request(event("customer.created", fixture("customer")))
        headers["TraceParent"] = f"00-{SENDER_TRACE}-{SENDER_SPAN}-01"
        unsigned = {"Stripe-Signature": "t=1,v1=00", "Content-Type": "application/json"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{gw.port}/webhooks/stripe", data=body, headers=headers) as resp:
                assert resp.status == 200
            async with http.post(f"http://127.0.0.1:{gw.port}/webhooks/stripe", data=body, headers=unsigned) as resp:
                assert resp.status == 400
    finally:
        await gw.stop()

    accepted, refused = _server_spans(exporter)
    assert accepted.name == "POST /webhooks/stripe"
    assert accepted.attributes is not None
    assert accepted.attributes["http.route"] == "/webhooks/stripe"
    assert accepted.attributes["http.request.method"] == "POST"
    assert accepted.attributes["http.response.status_code"] == 200
    assert accepted.parent is not None and format(accepted.parent.span_id, "016x") == SENDER_SPAN
    assert format(accepted.context.trace_id, "032x") == SENDER_TRACE
    publish = next(s for s in exporter.get_finished_spans() if s.name == "publish stripe.customer.created")
    assert publish.parent is not None and publish.parent.span_id == accepted.context.span_id

    assert refused.attributes is not None and refused.attributes["http.response.status_code"] == 400
    assert refused.parent is None  # no traceparent: the HTTP span is the trace's root
    assert refused.status.status_code == StatusCode.UNSET  # a client's error is not the server's
