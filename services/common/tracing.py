"""OpenTelemetry set-up, and trace context across NATS.

A Stripe webhook should be one trace: the gateway's HTTP span, its JetStream publish, each
service's consume span, their Postgres queries and gRPC calls. gRPC and asyncpg use the contrib
instrumentations; the gateway makes its HTTP span itself (gateway/http_span.py); NATS has no
instrumentation, so the W3C `traceparent` is injected into message headers on publish and
extracted on receipt here.

Configuration is the standard `OTEL_*` environment: spans are exported over OTLP when
`OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and
`OTEL_TRACES_EXPORTER` is not `none`; otherwise tracing still runs (for log correlation)
but exports nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_instrumented = False


def setup_tracing(service_name: str, *, extra_processor: SpanProcessor | None = None) -> TracerProvider:
    """Install the tracer provider once per process; later calls only add `extra_processor`."""
    global _instrumented
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        provider = current
    else:
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
        provider = TracerProvider(resource=resource)
        if _otlp_configured(os.environ):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    if extra_processor is not None:
        provider.add_span_processor(extra_processor)
    if not _instrumented:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
        # The gateway, the one aiohttp server, makes its HTTP span itself (gateway/http_span.py):
        # the contrib aiohttp-server instrumentation cost it a tenth of its CPU per webhook.
        _instrumented = True
    return provider


def _otlp_configured(env: Mapping[str, str]) -> bool:
    if env.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Headers for a NATS publish, carrying the current trace context."""
    carrier = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: Mapping[str, str] | None) -> context.Context:
    """The trace context a NATS message was published under (empty when it had none)."""
    return propagate.extract(dict(headers or {}))
