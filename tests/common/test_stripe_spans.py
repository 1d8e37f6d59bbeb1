"""Every call to Stripe's API is a client span in the caller's trace: method, path without ids,
status code and Stripe's request id (services/common/stripe_api.py)."""

from __future__ import annotations

from typing import Any

import pytest
import stripe
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.common.settings import Settings
from services.common.stripe_api import close_stripe_client, make_stripe_client, span_path
from services.common.stripe_pages import RateLimiter, list_pages
from services.common.tracing import setup_tracing


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    spans = InMemorySpanExporter()
    setup_tracing("test", extra_processor=SimpleSpanProcessor(spans))
    return spans


def _stripe_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("stripe ")]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/customers/cus_NffrFeUfNV2Hib", "/v1/customers/{id}"),
        ("/v1/invoices/in_1MtHbELkdIwHu7ixl4OzzPMv/lines", "/v1/invoices/{id}/lines"),
        ("/v1/subscription_schedules/sub_sched_1Mr3", "/v1/subscription_schedules/{id}"),
        ("/v1/billing_portal/sessions", "/v1/billing_portal/sessions"),
        ("/v1/credit_notes", "/v1/credit_notes"),
        ("/v1/customers/search", "/v1/customers/search"),
    ],
)
def test_span_paths_name_the_object_type_never_its_id(path: str, expected: str) -> None:
    assert span_path(path) == expected


async def test_calls_through_the_client_and_the_pager_are_client_spans_in_the_callers_trace(
    settings: Settings, localstripe: Any, exporter: InMemorySpanExporter
) -> None:
    client = make_stripe_client(
        settings.with_overrides(stripe_api_key="sk_test_x", stripe_api_base=localstripe.url), max_network_retries=0
    )
    assert client is not None
    tracer = trace.get_tracer("test")
    try:
        with tracer.start_as_current_span("handle customer.updated") as parent:
            created = await client.v1.customers.create_async({"email": "span@example.com"})
            await client.v1.customers.retrieve_async(created.id)
            async for _objects, _last in list_pages(
                client.v1.customers.list_async, {"limit": 10}, what="customers", limiter=RateLimiter(100)
            ):
                pass
            with pytest.raises(stripe.InvalidRequestError):
                await client.v1.customers.retrieve_async("cus_Missing0000")
    finally:
        await close_stripe_client(client)

    spans = _stripe_spans(exporter)
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {"stripe POST /v1/customers", "stripe GET /v1/customers/{id}", "stripe GET /v1/customers"}
    trace_id = parent.get_span_context().trace_id
    for span in spans:
        assert span.kind is SpanKind.CLIENT
        assert span.context.trace_id == trace_id, f"{span.name} is not in the caller's trace"
        assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
        assert span.attributes is not None
        assert span.attributes["http.request.method"] in ("GET", "POST")
        assert "cus_" not in str(span.attributes["url.path"]) and "cus_" not in span.name
        assert isinstance(span.attributes["http.response.status_code"], int)
    (missing,) = [s for s in spans if s.attributes and s.attributes["http.response.status_code"] == 404]
    assert missing.status.status_code is StatusCode.ERROR
    assert by_name["stripe POST /v1/customers"].attributes["http.response.status_code"] == 200  # type: ignore[index]


async def test_the_span_carries_stripes_request_id(settings: Settings, exporter: InMemorySpanExporter) -> None:
    """Stripe answers every request with a `Request-Id` (localstripe sends none): a stand-in that does."""

    async def customer(request: web.Request) -> web.Response:
        assert "traceparent" not in request.headers, "trace context must not be sent to Stripe"
        body = {"id": request.match_info["id"], "object": "customer", "livemode": False}
        return web.json_response(body, headers={"Request-Id": "req_Span123"})

    app = web.Application()
    app.router.add_get("/v1/customers/{id}", customer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = make_stripe_client(
        settings.with_overrides(stripe_api_key="sk_test_x", stripe_api_base=f"http://127.0.0.1:{port}"),
        max_network_retries=0,
    )
    assert client is not None
    try:
        await client.v1.customers.retrieve_async("cus_Abc123")
    finally:
        await close_stripe_client(client)
        await runner.cleanup()
    (span,) = _stripe_spans(exporter)
    assert span.attributes is not None
    assert span.attributes["stripe.request_id"] == "req_Span123"
    assert span.attributes["server.port"] == port
