"""The three services on the test's NATS and PostgreSQL, with channels, for the gRPC security tests."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services import registry
from services.common.grpc_client import bearer_interceptors
from services.common.service import ServiceDefinition, ServiceRuntime
from services.common.settings import Settings

#: Tokens of the test's tokens file, by role.
TOKENS = {
    "reader": "reader-token-0123456789",
    "operator": "operator-token-0123456789",
    "admin": "admin-token-0123456789",
}
TOKENS_FILE = "".join(f"{token} test-{role} {role}\n" for role, token in TOKENS.items())


@dataclasses.dataclass
class Mesh:
    runtimes: dict[str, ServiceRuntime]
    channels: dict[str, grpc.aio.Channel]

    def descriptor(self, name: str) -> ServiceDescriptor:
        return service_descriptor(self.runtimes[name].definition)


def service_descriptor(definition: ServiceDefinition) -> ServiceDescriptor:
    """The contract's descriptor for a service, from its full name (the registry's roster)."""
    from google.protobuf import descriptor_pool

    return descriptor_pool.Default().FindServiceByName(definition.grpc_service_name)


@asynccontextmanager
async def running_mesh(settings: Settings, *, token: str | None = None) -> AsyncIterator[Mesh]:
    runtimes = {d.name: ServiceRuntime(d, settings, port=0) for d in registry.definitions()}
    channels: dict[str, grpc.aio.Channel] = {}
    try:
        for rt in runtimes.values():
            await rt.start()
        for rt in runtimes.values():
            await rt.wait_ready(30)
        interceptors = bearer_interceptors(token) if token else None
        channels = {
            name: grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}", interceptors=interceptors)
            for name, rt in runtimes.items()
        }
        yield Mesh(runtimes, channels)
    finally:
        for channel in channels.values():
            await channel.close()
        for rt in reversed(list(runtimes.values())):
            await rt.stop()


def raw_method(channel: grpc.aio.Channel, path: str, *, client_streaming: bool, server_streaming: bool) -> object:
    """A method callable with bytes in and bytes out (no (de)serialisation on the client)."""
    kind = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(client_streaming, server_streaming)]
    return kind(path)


def field_violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The google.rpc.BadRequest field violations in an error's status details."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    found: list[tuple[str, str]] = []
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.extend((v.field, v.description) for v in bad.field_violations)
    return found
