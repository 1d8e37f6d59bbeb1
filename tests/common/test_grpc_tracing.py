"""A gRPC call is one server span in the caller's trace: the runtime's interceptor continues the W3C
`traceparent` the call carries, the servicer's own spans (its SQL) nest under it, and the span
says which method answered with which status; a failure that is the server's fault marks it."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common.errors import NotFoundError
from services.common.grpc_server import start_grpc_server
from services.common.settings import Settings
from services.common.tracing import setup_tracing

TOY = "syncmesh.toy.v1.Toy"
Request = health_pb2.HealthCheckRequest
Response = health_pb2.HealthCheckResponse
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


async def _lookup(request: Any, context: grpc.aio.ServicerContext) -> Any:
    with trace.get_tracer("toy").start_as_current_span("toy query"):
        return Response(status=Response.SERVING)


async def _missing(request: Any, context: grpc.aio.ServicerContext) -> Any:
    raise NotFoundError("no such toy")


async def _broken(request: Any, context: grpc.aio.ServicerContext) -> Any:
    raise RuntimeError("a bug")


def _register(server: grpc.aio.Server) -> None:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString
        )
        for name, fn in (("Lookup", _lookup), ("Missing", _missing), ("Broken", _broken))
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(TOY, handlers),))


def _server_spans(exporter: InMemorySpanExporter, method: str) -> list[ReadableSpan]:
    return [
        s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.SERVER and s.name == f"/{TOY}/{method}"
    ]


async def test_a_call_continues_the_callers_trace_and_its_work_nests_under_its_server_span() -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("test", extra_processor=SimpleSpanProcessor(exporter))
    server = await start_grpc_server(
        settings=Settings(), port=0, service_name=TOY, register=_register, host="127.0.0.1"
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:

            def call(method: str) -> Any:
                return channel.unary_unary(
                    f"/{TOY}/{method}",
                    request_serializer=Request.SerializeToString,
                    response_deserializer=Response.FromString,
                )

            traceparent = (("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"),)
            for _ in range(2):  # the second call goes through the handler kept from the first
                await call("Lookup")(Request(), metadata=traceparent, timeout=5)
            for method, code in (("Missing", grpc.StatusCode.NOT_FOUND), ("Broken", grpc.StatusCode.INTERNAL)):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call(method)(Request(), timeout=5)
                assert refused.value.code() == code
    finally:
        await server.stop(0)

    lookups = _server_spans(exporter, "Lookup")
    assert len(lookups) == 2
    for span in lookups:
        assert format(span.context.trace_id, "032x") == CALLER_TRACE
        assert span.parent is not None and format(span.parent.span_id, "016x") == CALLER_SPAN
        attributes = dict(span.attributes or {})
        assert attributes["rpc.system"] == "grpc"
        assert attributes["rpc.service"] == TOY
        assert attributes["rpc.method"] == "Lookup"
        assert attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
        inner = [
            s
            for s in exporter.get_finished_spans()
            if s.name == "toy query" and s.parent is not None and s.parent.span_id == span.context.span_id
        ]
        assert len(inner) == 1, "the servicer's own span is a child of the call's server span"

    (missing,) = _server_spans(exporter, "Missing")
    assert missing.parent is None, "no traceparent: the call starts a trace of its own"
    assert (missing.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert missing.status.status_code == trace.StatusCode.UNSET, "a caller's mistake is not the server's failure"

    (broken,) = _server_spans(exporter, "Broken")
    assert (broken.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    assert broken.status.status_code == trace.StatusCode.ERROR
