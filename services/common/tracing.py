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

Exporting nothing, a process records nothing either (`_RecordWhenExported`): every span still
has its trace and span ids, which propagate over HTTP, NATS and gRPC and go into every log line
and audit row, but no attributes, links or events are gathered for a span no processor would
see (a span's recording was ~20 us of CPU, and each event passes through ~8 of them in each
service, ~10 in the gateway). asyncpg, whose spans no log line names, is instrumented only once
spans go somewhere (an exporter, or a processor a test adds through `setup_tracing`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    _get_from_env_or_default,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

_asyncpg_instrumented = False


class _RecordWhenExported(Sampler):
    """`inner`'s decision while the provider has a span processor; without one, DROP: the span
    keeps its ids (for propagation and log lines) and gathers nothing no one would read.

    The default inner sampler records under a remote parent that was not sampled: a mesh process
    that exports nothing sends its trace context unsampled, and a process that exports must still
    record its part of that trace.
    """

    def __init__(self, inner: Sampler) -> None:
        self._inner = inner
        #: The provider whose processors decide (set once it exists: it takes its sampler when made).
        self.provider: TracerProvider | None = None

    def should_sample(
        self,
        parent_context: context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if self.provider is None or _has_processors(self.provider):
            return self._inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
        parent = trace.get_current_span(parent_context).get_span_context()
        return SamplingResult(Decision.DROP, None, parent.trace_state if parent.is_valid else None)

    def get_description(self) -> str:
        return f"RecordWhenExported{{{self._inner.get_description()}}}"


def _has_processors(provider: TracerProvider) -> bool:
    """Whether any span processor is attached (True where this SDK keeps them otherwise)."""
    active = getattr(provider, "_active_span_processor", None)
    processors = getattr(active, "_span_processors", None)
    return True if processors is None else bool(processors)


def setup_tracing(service_name: str, *, extra_processor: SpanProcessor | None = None) -> TracerProvider:
    """Install the tracer provider once per process; later calls only add `extra_processor`."""
    global _asyncpg_instrumented
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        provider = current
    else:
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
        inner = (
            _get_from_env_or_default()
            if os.environ.get("OTEL_TRACES_SAMPLER")
            else ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON)
        )
        sampler = _RecordWhenExported(inner)
        provider = sampler.provider = TracerProvider(resource=resource, sampler=sampler)
        if _otlp_configured(os.environ):
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    if extra_processor is not None:
        provider.add_span_processor(extra_processor)
    # The gateway, the one aiohttp server, makes its HTTP span itself (gateway/http_span.py): the
    # contrib aiohttp-server instrumentation cost it a tenth of its CPU per webhook.
    if not _asyncpg_instrumented and _has_processors(provider):
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        # Patches asyncpg's Connection class: connections made before this are traced too.
        AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
        _asyncpg_instrumented = True
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
