"""gRPC server bootstrap shared by every service: health, reflection, tracing, error mapping, TLS.

Health tells the truth: the service's own name is NOT_SERVING until its database and NATS are
ready, and goes back to NOT_SERVING when either is lost, so Kubernetes stops routing reads to a
replica that cannot answer them. The empty name ("") reports the process itself (liveness).

Servicers raise the mesh's errors and never touch status codes themselves; one interceptor
(`MeshInterceptor`), for every method of the mesh's services (health and reflection excepted):
- sheds: past `SYNCMESH_GRPC_MAX_CONCURRENT_RPCS` calls running at once, the next is refused with
  RESOURCE_EXHAUSTED before anything else is done for it;
- opens the call's server span, a child of the caller's `traceparent` when it sends one;
- runs the guard: authentication and the service's access policy (services.common.auth),
  refusing with UNAUTHENTICATED or PERMISSION_DENIED before the request is looked at;
- refuses input no RPC could accept (bytes that are not a message of the method's type, NUL
  bytes, absurdly long strings: services.common.grpc_input) with INVALID_ARGUMENT;
- maps the mesh's errors (ValidationError -> INVALID_ARGUMENT naming the field, with a
  `google.rpc.BadRequest` field violation in the status details; NotFoundError -> NOT_FOUND;
  ConflictError and SettingsError -> FAILED_PRECONDITION; UpstreamError -> UNAVAILABLE;
  AuthenticationError -> UNAUTHENTICATED; PermissionDeniedError -> PERMISSION_DENIED), every
  message bounded so a caller's large value never comes back (it would overflow gRPC's
  metadata limit). Anything unexpected is INTERNAL with a generic message and the trace id,
  logged with the same trace id, never leaked to the caller;
- records each call of an audited method (one that needs more than reading), allowed or
  refused, once it has ended: a `syncmesh.audit` log line, and with an audit trail
  (services.common.audit) a row in the service's `audit_log` with its domain event. Who is the
  identity the guard proved (services.common.auth.caller()), never anything the request says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from opentelemetry import propagate, trace

from services.common.audit import AuditEntry, AuditTrail, log_entry, target_of
from services.common.auth import caller
from services.common.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    SettingsError,
    UpstreamError,
    ValidationError,
)
from services.common.grpc_input import bounded, request_problem
from services.common.settings import Settings

log = logging.getLogger(__name__)
_TRACER = trace.get_tracer(__name__)

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ConflictError, grpc.StatusCode.FAILED_PRECONDITION),
    (SettingsError, grpc.StatusCode.FAILED_PRECONDITION),  # e.g. an operation needs a Stripe key
    (UpstreamError, grpc.StatusCode.UNAVAILABLE),
    (AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
]


class Guard(Protocol):
    """Admits or refuses each call before its servicer runs (services.common.auth)."""

    async def admit(self, method: str, context: grpc.aio.ServicerContext) -> None:
        """Raise the mesh's errors (AuthenticationError, PermissionDeniedError) to refuse."""

    def audited(self, method: str) -> bool:
        """Whether calls of `method` (a change, or a bulk read of personal data) are recorded."""


class _Audit:
    """One call's audit record, if its method is audited: who, what, when, outcome, target."""

    def __init__(self, method: str, trail: AuditTrail | None) -> None:
        self.method = method
        self.trail = trail
        self.called_at = datetime.now(UTC)
        self.request: Any = None

    def entry(self, outcome: str, detail: str, trace_id: str | None = None) -> AuditEntry:
        identity = caller()
        target_field, target_id = target_of(self.request)
        role = identity.role.name.lower() if identity is not None and identity.role is not None else ""
        return AuditEntry(
            method=self.method,
            identity=identity.name[:200] if identity is not None else "unauthenticated",
            via=identity.via if identity is not None else "",
            role=role,
            outcome=outcome,
            detail=detail,
            target_field=target_field,
            target_id=target_id,
            called_at=self.called_at,
            trace_id=trace_id or current_trace_id(),
        )

    async def done(self, outcome: str, detail: str = "", trace_id: str | None = None) -> None:
        entry = self.entry(outcome, detail, trace_id)
        log_entry(entry)
        if self.trail is not None:
            await self.trail.record(entry)

    def cancelled(self) -> None:
        entry = self.entry(grpc.StatusCode.CANCELLED.name, "the call was cancelled before it ended")
        log_entry(entry)
        if self.trail is not None:
            self.trail.record_later(entry)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status and the (bounded) message a caller gets for one of the mesh's errors."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, bounded(str(exc))
    return None


def current_trace_id() -> str:
    """The current trace's id, as in the logs; a fresh random id when no trace is recording."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else secrets.token_hex(16)


def _bad_request(exc: ValidationError) -> tuple[tuple[str, bytes], ...]:
    """`google.rpc.BadRequest` in the status details: the field violation, machine-readable."""
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=bounded(exc.field, 200), description=bounded(exc.message)
                )
            ]
        )
    )
    status = status_pb2.Status(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=bounded(str(exc)), details=[detail]
    )
    return rpc_status.to_status(status).trailing_metadata  # type: ignore[no-any-return]


async def abort_for(
    context: grpc.aio.ServicerContext, exc: BaseException, method: str, *, trace_id: str | None = None
) -> NoReturn:
    """End the call with the status `exc` maps to; anything unmapped is INTERNAL with a trace id
    (`trace_id`, when the caller already named it elsewhere, e.g. in the audit record)."""
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    mapped = status_for(exc)
    if mapped is None:
        trace_id = trace_id or current_trace_id()
        log.error("unexpected error in %s (trace id %s)", method, trace_id, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: see the service log for trace id {trace_id}")
    elif isinstance(exc, ValidationError):
        await context.abort(mapped[0], mapped[1], trailing_metadata=_bad_request(exc))
    else:
        await context.abort(mapped[0], mapped[1])
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


@dataclasses.dataclass(frozen=True)
class _Undecodable:
    """What a request's bytes decoded to when they are not a message of the method's type."""

    type_name: str


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that never raises: bytes that are not a valid message become `_Undecodable`,
    refused with INVALID_ARGUMENT by the handler (gRPC itself would answer INTERNAL)."""
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            owner = getattr(deserializer, "__self__", None)
            return _Undecodable(getattr(owner, "__name__", "request"))

    return decode


def _check_request(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise ValidationError("request", f"the bytes sent are not a valid {request.type_name} message")
    if isinstance(request, Message):
        problem = request_problem(request)
        if problem is not None:
            raise problem


async def _checked(request_iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in request_iterator:
        _check_request(request)
        yield request


#: Methods every caller may use without an identity: health (Kubernetes probes) and reflection.
UNGUARDED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

#: Statuses that mark a server span as failed (OpenTelemetry's gRPC conventions: the server's
#: fault); a caller's mistake (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED...) leaves it unset.
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class _Method:
    """One method of the mesh's services, wrapped once (not per call): its server span's name and
    attributes, whether it is audited, and the steps every call of it goes through."""

    def __init__(self, method: str, guard: Guard | None, trail: AuditTrail | None, propagated: frozenset[str]):
        self.method = method
        self.guard = guard
        self.trail = trail
        self.audited = guard is not None and guard.audited(method)
        self.propagated = propagated
        service, _, name = method.lstrip("/").partition("/")
        self.attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

    def span(self, context: grpc.aio.ServicerContext) -> trace.Span:
        """The call's server span, a child of the caller's span when the metadata carries one (W3C
        `traceparent`), so a trace continues across gRPC as it does across HTTP and NATS."""
        carrier = {key: value for key, value in context.invocation_metadata() or () if key in self.propagated}
        parent = propagate.extract(carrier) if carrier else None
        return _TRACER.start_span(self.method, context=parent, kind=trace.SpanKind.SERVER, attributes=self.attributes)

    def audit(self, request: Any = None) -> _Audit | None:
        if not self.audited:
            return None
        record = _Audit(self.method, self.trail)
        record.request = request
        return record

    async def admit(self, context: grpc.aio.ServicerContext, request: Any = None) -> None:
        """Authentication and the access policy, then the checks no RPC's input may fail."""
        if self.guard is not None:
            await self.guard.admit(self.method, context)
        if request is not None:
            _check_request(request)

    async def ok(self, record: _Audit | None, span: trace.Span) -> None:
        span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.OK.value[0])
        if record is not None:
            await record.done("OK")

    def cancelled(self, record: _Audit | None, span: trace.Span) -> None:
        span.set_attribute("rpc.grpc.status_code", grpc.StatusCode.CANCELLED.value[0])
        if record is not None:
            record.cancelled()

    async def refuse(
        self, context: grpc.aio.ServicerContext, exc: Exception, record: _Audit | None, span: trace.Span
    ) -> NoReturn:
        mapped = status_for(exc)
        if not isinstance(exc, grpc.aio.AbortError):  # a servicer's own abort has its status set already
            code = mapped[0] if mapped is not None else grpc.StatusCode.INTERNAL
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in _SERVER_FAULTS:
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {bounded(str(exc), 200)}"))
        # One trace id for the log's traceback, the caller's INTERNAL and the audit record.
        trace_id = None if mapped is not None else current_trace_id()
        if record is not None:
            if mapped is not None:
                await record.done(mapped[0].name, mapped[1])
            else:
                await record.done(grpc.StatusCode.INTERNAL.name, f"internal error (trace id {trace_id})", trace_id)
        await abort_for(context, exc, self.method, trace_id=trace_id)


def _current(span: trace.Span) -> Any:
    """The span as the current one until the call ends, then ended (errors are recorded by
    `_Method.refuse`, which knows the status they map to)."""
    return trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False)


class MeshInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Everything the runtime does around a call of the mesh's services, in one wrapper per method.

    In this order: shedding (past `limit` calls running at once, the next is refused at once with
    RESOURCE_EXHAUSTED, before any other work), the server span (continuing the caller's trace),
    the guard (authentication, policy), the input checks, the servicer, the error mapping and the
    audit record. Health and reflection are left alone: never shed, never guarded, so a flood
    cannot make Kubernetes restart a busy replica (grpc.aio's own `maximum_concurrent_rpcs` would
    count its probes too).

    grpc.aio asks every interceptor for its handler on every call; each method's wrapped handler
    is built on its first call and kept, so a call pays one dictionary lookup here instead of a
    chain of interceptors each building closures and a handler (with OpenTelemetry's
    interceptor, a third of a point read's Python time: bench/README.md). Unknown methods (the
    caller's names) are not kept.
    """

    def __init__(self, limit: int, guard: Guard | None = None, audit: AuditTrail | None = None) -> None:
        self.limit = limit
        self.guard = guard
        self.audit = audit
        self.running = 0
        self.shed = 0
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._propagated = frozenset(propagate.get_global_textmap().fields)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        wrapped = handler if method.startswith(UNGUARDED_PREFIXES) else self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    async def _refuse(self, context: grpc.aio.ServicerContext) -> NoReturn:
        self.shed += 1
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"server busy ({self.limit} calls running): retry with backoff",
        )
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        m = _Method(method, self.guard, self.audit, self._propagated)
        deserializer = _tolerant(handler.request_deserializer)
        serializer = handler.response_serializer
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                return await self._answer(m, context, request, lambda: inner_uu(request, context))

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=deserializer, response_serializer=serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                # grpc.aio streams the answers of an async generator function only.
                async for item in self._stream(m, context, request, lambda: inner_us(request, context)):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=deserializer, response_serializer=serializer
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                return await self._answer(m, context, None, lambda: inner_su(_checked(requests), context))

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, request_deserializer=deserializer, response_serializer=serializer
            )
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                # grpc.aio streams the answers of an async generator function only.
                async for item in self._stream(m, context, None, lambda: inner_ss(_checked(requests), context)):
                    yield item

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, request_deserializer=deserializer, response_serializer=serializer
            )
        return handler

    async def _answer(
        self, m: _Method, context: grpc.aio.ServicerContext, request: Any, call: Callable[[], Awaitable[Any]]
    ) -> Any:
        """A call with one response: `_stream` over a stream of that one response, run to its end
        so the call's status, span and audit record are settled before the response goes out."""

        async def once() -> AsyncIterator[Any]:
            yield await call()

        (response,) = [item async for item in self._stream(m, context, request, once)]
        return response

    async def _stream(
        self, m: _Method, context: grpc.aio.ServicerContext, request: Any, call: Callable[[], AsyncIterator[Any]]
    ) -> AsyncIterator[Any]:
        """A call in the order of the class docstring; `request` is None for a request stream (its
        messages are checked as they are read, `_checked`)."""
        if self.running >= self.limit:
            await self._refuse(context)
        self.running += 1
        try:
            span = m.span(context)
            with _current(span):
                record = m.audit(request)
                try:
                    await m.admit(context, request)
                    async for item in call():
                        yield item
                except asyncio.CancelledError:
                    m.cancelled(record, span)
                    raise
                except Exception as exc:
                    await m.refuse(context, exc, record, span)
                await m.ok(record, span)
        finally:
            self.running -= 1


class GrpcServer:
    """A started grpc.aio server with health and reflection for `service_names`."""

    def __init__(self, server: grpc.aio.Server, health: HealthServicer, service_names: Sequence[str], port: int):
        self.server = server
        self.health = health
        self.service_names = list(service_names)
        self.port = port
        self.serving = False

    async def set_serving(self, serving: bool) -> None:
        if serving == self.serving:
            return
        self.serving = serving
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self.service_names:
            await self.health.set(name, status)
        log.info("health %s", "SERVING" if serving else "NOT_SERVING")

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    if not settings.grpc_tls_cert_file and not settings.grpc_tls_key_file:
        if settings.grpc_tls_client_ca_file:
            raise SettingsError("SYNCMESH_GRPC_TLS_CLIENT_CA_FILE needs SYNCMESH_GRPC_TLS_CERT_FILE and _KEY_FILE")
        return None
    if not (settings.grpc_tls_cert_file and settings.grpc_tls_key_file):
        raise SettingsError("set both SYNCMESH_GRPC_TLS_CERT_FILE and SYNCMESH_GRPC_TLS_KEY_FILE for gRPC TLS")

    def read(variable: str, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise SettingsError(f"{variable}={path} cannot be read: {exc.strerror}") from exc

    cert = read("SYNCMESH_GRPC_TLS_CERT_FILE", settings.grpc_tls_cert_file)
    key = read("SYNCMESH_GRPC_TLS_KEY_FILE", settings.grpc_tls_key_file)
    client_ca = (
        read("SYNCMESH_GRPC_TLS_CLIENT_CA_FILE", settings.grpc_tls_client_ca_file)
        if settings.grpc_tls_client_ca_file
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def start_grpc_server(
    *,
    settings: Settings,
    port: int,
    service_name: str,
    register: Callable[[grpc.aio.Server], None],
    host: str = "[::]",
    guard: Guard | None = None,
    audit: AuditTrail | None = None,
) -> GrpcServer:
    """Start serving `service_name` (registered by `register`) with health and reflection."""
    server = grpc.aio.server(
        interceptors=[MeshInterceptor(settings.grpc_max_concurrent_rpcs, guard, audit)],
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    register(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [service_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    credentials = _credentials(settings)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if bound == 0:
        raise SettingsError(f"cannot listen on port {port} for {service_name}: is it in use?")
    await server.start()
    # The process is alive from here; the service itself is ready only once its deps are.
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await health.set(service_name, health_pb2.HealthCheckResponse.NOT_SERVING)
    log.info("gRPC %s listening on %s", service_name, bound)
    return GrpcServer(server, health, [service_name], bound)
