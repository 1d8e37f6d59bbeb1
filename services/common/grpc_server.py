"""gRPC server bootstrap shared by every service: health, reflection, tracing, error mapping, TLS.

Health tells the truth: the service's own name is NOT_SERVING until its database and NATS are
ready, and goes back to NOT_SERVING when either is lost, so Kubernetes stops routing reads to a
replica that cannot answer them. The empty name ("") reports the process itself (liveness).

Servicers raise the mesh's errors and never touch status codes themselves; one interceptor maps
them (ValidationError -> INVALID_ARGUMENT naming the field, NotFoundError -> NOT_FOUND,
ConflictError and SettingsError -> FAILED_PRECONDITION, UpstreamError -> UNAVAILABLE). Anything unexpected is
INTERNAL with a generic message, logged with its trace id, never leaked to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry.instrumentation.grpc import aio_server_interceptor

from services.common.errors import (
    ConflictError,
    NotFoundError,
    SettingsError,
    UpstreamError,
    ValidationError,
)
from services.common.settings import Settings

log = logging.getLogger(__name__)

_CODES: list[tuple[type[Exception], grpc.StatusCode]] = [
    (ValidationError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (ConflictError, grpc.StatusCode.FAILED_PRECONDITION),
    (SettingsError, grpc.StatusCode.FAILED_PRECONDITION),  # e.g. an operation needs a Stripe key
    (UpstreamError, grpc.StatusCode.UNAVAILABLE),
]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, str(exc)
    return None


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Turns the mesh's exceptions into gRPC statuses, for all four kinds of method."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner_uu(request, context)
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for item in inner_us(request, context):
                        yield item
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner_su(request_iterator, context)
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            inner_ss = handler.stream_stream

            async def stream_stream(request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    async for item in inner_ss(request_iterator, context):
                        yield item
                except Exception as exc:
                    await _abort(context, exc, method)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method: str) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    mapped = status_for(exc)
    if mapped is None:
        log.exception("unexpected error in %s", method)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error: see the service log for this trace id")
    else:
        await context.abort(mapped[0], mapped[1])


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
) -> GrpcServer:
    """Start serving `service_name` (registered by `register`) with health and reflection."""
    tracing_interceptor = aio_server_interceptor()  # type: ignore[no-untyped-call]
    server = grpc.aio.server(
        interceptors=[tracing_interceptor, ErrorMappingInterceptor()],
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
