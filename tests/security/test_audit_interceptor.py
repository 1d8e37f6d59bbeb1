"""The runtime's interceptor hands every audited call to the audit trail once it has ended, for
all four kinds of method: allowed, refused, failed, or cancelled by the caller mid-way; reads
are not audited. On a toy service, with a trail that keeps its entries in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from syncmesh.customer.v1 import customer_service_pb2 as pb

from services.common.audit import AuditEntry, AuditTrail
from services.common.auth import Authenticator, Role
from services.common.grpc_client import bearer_interceptors
from services.common.grpc_server import GrpcServer, start_grpc_server
from services.common.settings import Settings

TOY = "syncmesh.toy.v1.Audited"
OPERATOR = "toy-operator-token-0123456789"
Request = pb.UnlinkCustomerRequest
Response = pb.UnlinkCustomerResponse


class MemoryTrail(AuditTrail):
    def __init__(self) -> None:
        super().__init__("toy", pool=lambda: None, wake_relay=lambda: None)  # type: ignore[arg-type,return-value]
        self.entries: list[AuditEntry] = []

    async def record(self, entry: AuditEntry) -> None:
        self.entries.append(entry)


async def _change(request: Any, context: grpc.aio.ServicerContext) -> Response:
    return Response(previous_stripe_customer_id="cus_Old")


async def _slow(request: Any, context: grpc.aio.ServicerContext) -> Response:
    await asyncio.sleep(30)
    return Response()


async def _explode(request: Any, context: grpc.aio.ServicerContext) -> Response:
    raise RuntimeError("a bug")


async def _stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Response]:
    for _ in range(2):
        yield Response()


async def _upload(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Response:
    async for _ in requests:
        pass
    return Response()


def _register(server: grpc.aio.Server) -> None:
    kw: dict[str, Any] = {"request_deserializer": Request.FromString, "response_serializer": Response.SerializeToString}
    handlers = {
        "Change": grpc.unary_unary_rpc_method_handler(_change, **kw),
        "Read": grpc.unary_unary_rpc_method_handler(_change, **kw),
        "Slow": grpc.unary_unary_rpc_method_handler(_slow, **kw),
        "Explode": grpc.unary_unary_rpc_method_handler(_explode, **kw),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream, **kw),
        "Upload": grpc.stream_unary_rpc_method_handler(_upload, **kw),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(TOY, handlers),))


@pytest.fixture
async def toy(tmp_path: Path) -> AsyncIterator[tuple[GrpcServer, MemoryTrail]]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{OPERATOR} toy-ops operator\n")
    policy = {name: Role.OPERATOR for name in ("Change", "Slow", "Explode", "Stream", "Upload")}
    guard = Authenticator(str(tokens), {**policy, "Read": Role.READER}, service=TOY)
    trail = MemoryTrail()
    server = await start_grpc_server(
        settings=Settings(), port=0, service_name=TOY, register=_register, host="127.0.0.1", guard=guard, audit=trail
    )
    try:
        yield server, trail
    finally:
        await server.stop(0)


async def test_every_kind_of_audited_call_is_recorded_once_it_ends(toy: tuple[GrpcServer, MemoryTrail]) -> None:
    server, trail = toy
    address = f"127.0.0.1:{server.port}"

    def method(channel: grpc.aio.Channel, name: str) -> Any:
        kind = {"Stream": channel.unary_stream, "Upload": channel.stream_unary}.get(name, channel.unary_unary)
        return kind(
            f"/{TOY}/{name}", request_serializer=Request.SerializeToString, response_deserializer=Response.FromString
        )

    target = Request(erp_customer_id="CUST-7", reason="x")
    async with grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(OPERATOR)) as operator:
        await method(operator, "Change")(target)
        await method(operator, "Read")(target)  # needs only reading: not audited
        async for _ in method(operator, "Stream")(target):
            pass

        def uploads() -> Iterator[Request]:
            yield Request()

        await method(operator, "Upload")(uploads())
        with pytest.raises(grpc.aio.AioRpcError) as exploded:
            await method(operator, "Explode")(target)
        with pytest.raises(grpc.aio.AioRpcError) as slow:
            await method(operator, "Slow")(target, timeout=0.3)
    async with grpc.aio.insecure_channel(address) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError):
            await method(anonymous, "Change")(target)
    assert exploded.value.code() == grpc.StatusCode.INTERNAL
    assert slow.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    for _ in range(100):  # the cancelled call's record is written by a task of its own
        if len(trail.entries) == 6:
            break
        await asyncio.sleep(0.05)
    got = sorted(
        ((e.method.rsplit("/", 1)[-1], e.identity, e.role, e.outcome, e.target_id) for e in trail.entries),
        key=str,
    )
    assert got == sorted(
        [
            ("Change", "toy-ops", "operator", "OK", "CUST-7"),
            ("Stream", "toy-ops", "operator", "OK", "CUST-7"),
            ("Upload", "toy-ops", "operator", "OK", ""),
            ("Explode", "toy-ops", "operator", "INTERNAL", "CUST-7"),
            ("Slow", "toy-ops", "operator", "CANCELLED", "CUST-7"),
            ("Change", "unauthenticated", "", "UNAUTHENTICATED", "CUST-7"),
        ],
        key=str,
    )
    explode = next(e for e in trail.entries if e.method.endswith("/Explode"))
    assert "a bug" not in explode.detail and explode.trace_id in explode.detail
    assert all(e.called_at.tzinfo is not None and len(e.trace_id) == 32 for e in trail.entries)
