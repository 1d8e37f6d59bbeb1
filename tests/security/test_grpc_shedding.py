"""Past SYNCMESH_GRPC_MAX_CONCURRENT_RPCS calls running at once, a real grpc.aio server refuses the
next with RESOURCE_EXHAUSTED at once instead of queueing it, and health still answers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_server import start_grpc_server
from services.common.settings import Settings, load_settings

TOY = "syncmesh.toy.v1.Toy"
Request = health_pb2.HealthCheckRequest
Response = health_pb2.HealthCheckResponse


async def test_a_call_past_the_limit_is_refused_at_once_and_health_still_answers() -> None:
    release = asyncio.Event()
    running = asyncio.Event()
    served = 0

    async def hold(request: Any, context: grpc.aio.ServicerContext) -> Any:
        nonlocal served
        running.set()
        await release.wait()
        served += 1
        return Response(status=Response.SERVING)

    def register(server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(
            hold, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString
        )
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(TOY, {"Hold": handler}),))

    server = await start_grpc_server(
        settings=Settings(grpc_max_concurrent_rpcs=1), port=0, service_name=TOY, register=register, host="127.0.0.1"
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = channel.unary_unary(
                f"/{TOY}/Hold", request_serializer=Request.SerializeToString, response_deserializer=Response.FromString
            )
            first = asyncio.ensure_future(call(Request(), timeout=10))
            await asyncio.wait_for(running.wait(), 10)

            began = time.perf_counter()
            try:
                await call(Request(), timeout=3)
                raise AssertionError("the second call was served while the first held the only slot")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            assert time.perf_counter() - began < 0.5
            assert served == 0

            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(Request(service=""), timeout=3)  # probes are never shed
            assert answer.status == Response.SERVING

            release.set()
            assert (await first).status == Response.SERVING
            assert (await call(Request(), timeout=3)).status == Response.SERVING  # the caller's retry
            assert served == 2
    finally:
        await server.stop(0)


def test_the_limit_is_a_setting_with_a_default() -> None:
    assert Settings().grpc_max_concurrent_rpcs == 256
    assert load_settings({"SYNCMESH_GRPC_MAX_CONCURRENT_RPCS": "5"}, local_mesh=False).grpc_max_concurrent_rpcs == 5
