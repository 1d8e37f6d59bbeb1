"""gRPC server bootstrap shared by every service: health, reflection, tracing, error mapping, TLS.

Health tells the truth: the service's own name is NOT_SERVING until its database and NATS are
ready, and goes back to NOT_SERVING when either is lost, so Kubernetes stops routing reads to a
replica that cannot answer them. The empty name ("") reports the process itself (liveness).

Servicers raise the mesh's errors and never touch status codes themselves; one interceptor, for
every method of the mesh's services (health and reflection excepted):
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
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor

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


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """For all four kinds of method: runs the guard (authentication), refuses input no RPC could
    accept (undecodable bytes, NUL bytes, absurd strings), and turns the mesh's exceptions into
    gRPC statuses. Health and reflection are left alone: they are not the mesh's services."""

    def __init__(self, guard: Guard | None = None, audit: AuditTrail | None = None) -> None:
        self.guard = guard
        self.audit = audit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(UNGUARDED_PREFIXES):
            return handler
        guard = self.guard
        audited = guard is not None and guard.audited(method)

        def audit() -> _Audit | None:
            return _Audit(method, self.audit) if audited else None

        async def admit(context: grpc.aio.ServicerContext) -> None:
            if guard is not None:
                await guard.admit(method, context)

        async def refuse(context: grpc.aio.ServicerContext, exc: Exception, record: _Audit | None) -> NoReturn:
            mapped = status_for(exc)
            # One trace id for the log's traceback, the caller's INTERNAL and the audit record.
            trace_id = None if mapped is not None else current_trace_id()
            if record is not None:
                if mapped is not None:
                    await record.done(mapped[0].name, mapped[1])
                else:
                    await record.done(grpc.StatusCode.INTERNAL.name, f"internal error (trace id {trace_id})", trace_id)
            await abort_for(context, exc, method, trace_id=trace_id)

        deserializer = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                record = audit()
                try:
                    if record is not None:
                        record.request = request
                    await admit(context)
                    _check_request(request)
                    response = await inner_uu(request, context)
                except asyncio.CancelledError:
                    if record is not None:
                        record.cancelled()
                    raise
                except Exception as exc:
                    await refuse(context, exc, record)
                if record is not None:
                    await record.done("OK")
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=deserializer, response_serializer=handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                record = audit()
                try:
                    if record is not None:
                        record.request = request
                    await admit(context)
                    _check_request(request)
                    async for item in inner_us(request, context):
                        yield item
                except asyncio.CancelledError:
                    if record is not None:
                        record.cancelled()
                    raise
                except Exception as exc:
                    await refuse(context, exc, record)
                if record is not None:
                    await record.done("OK")

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=deserializer, response_serializer=handler.response_serializer
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                record = audit()
                try:
                    await admit(context)
                    response = await inner_su(_checked(request_iterator), context)
                except asyncio.CancelledError:
                    if record is not None:
                        record.cancelled()
                    raise
                except Exception as exc:
                    await refuse(context, exc, record)
                if record is not None:
                    await record.done("OK")
                return response

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, request_deserializer=deserializer, response_serializer=handler.response_serializer
            )
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                record = audit()
                try:
                    await admit(context)
                    async for item in inner_ss(_checked(request_iterator), context):
                        yield item
                except asyncio.CancelledError:
                    if record is not None:
                        record.cancelled()
                    raise
                except Exception as exc:
                    await refuse(context, exc, record)
                if record is not None:
                    await record.done("OK")

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, request_deserializer=deserializer, response_serializer=handler.response_serializer
            )
        return handler


#: Methods every caller may use without an identity: health (Kubernetes probes) and reflection.
UNGUARDED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class SheddingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Past `limit` RPCs running at once, the next is refused with RESOURCE_EXHAUSTED at once.

    grpc.aio starts every call as it arrives, so a read flood becomes thousands of calls sharing
    one event loop and one connection pool: each waits seconds, and the process keeps the memory
    of all of them (bench/README.md). Refused at once, a caller can back off or try another
    replica. Health and reflection are never refused (grpc.aio's own `maximum_concurrent_rpcs`
    would count the Kubernetes probes too, and a flood would then restart a busy replica).
    Outermost of the interceptors, so a refused call costs no span and no guard.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        self.shed = 0

    async def _refuse(self, context: grpc.aio.ServicerContext) -> NoReturn:
        self.shed += 1
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"server busy ({self.limit} calls running): retry with backoff",
        )
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(UNGUARDED_PREFIXES):
            return handler
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None or handler.stream_unary is not None:
            streaming_in = handler.unary_unary is None
            inner = handler.stream_unary if streaming_in else handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if self.running >= self.limit:
                    await self._refuse(context)
                self.running += 1
                try:
                    return await inner(request, context)
                finally:
                    self.running -= 1

            if streaming_in:
                return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
            return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
        streaming_in = handler.unary_stream is None
        inner_stream = handler.stream_stream if streaming_in else handler.unary_stream
        if inner_stream is None:
            return handler

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if self.running >= self.limit:
                await self._refuse(context)
            self.running += 1
            try:
                async for item in inner_stream(request, context):
                    yield item
            finally:
                self.running -= 1

        if streaming_in:
            return grpc.stream_stream_rpc_method_handler(stream, **kwargs)
        return grpc.unary_stream_rpc_method_handler(stream, **kwargs)


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
    tracing_interceptor = aio_server_interceptor()  # type: ignore[no-untyped-call]
    shedding = SheddingInterceptor(settings.grpc_max_concurrent_rpcs)
    server = grpc.aio.server(
        interceptors=[shedding, tracing_interceptor, ErrorMappingInterceptor(guard, audit)],
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
