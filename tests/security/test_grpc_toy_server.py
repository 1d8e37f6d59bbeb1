"""The runtime's interceptor on a toy service: INTERNAL carries the trace id it logs, and a
client certificate the server's CA signed is an identity (mutual TLS), looked up by its name."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from services.common.auth import Authenticator, Role
from services.common.grpc_server import start_grpc_server
from services.common.settings import Settings
from tests.common.test_grpc_tls import pki  # noqa: F401  (the test CA, server and "client" certificates)

TOY = "syncmesh.toy.v1.Toy"
Request = health_pb2.HealthCheckRequest
Response = health_pb2.HealthCheckResponse
ResponseType = Any


async def _explode(request: Any, context: grpc.aio.ServicerContext) -> ResponseType:
    raise RuntimeError("a bug with a secret in it: hunter2")


async def _echo(request: Any, context: grpc.aio.ServicerContext) -> ResponseType:
    from services.common.auth import caller_name

    return Response(status=Response.SERVING if caller_name() == "reporting" else Response.UNKNOWN)


def _register(server: grpc.aio.Server) -> None:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=Request.FromString, response_serializer=Response.SerializeToString
        )
        for name, fn in (("Explode", _explode), ("Echo", _echo), ("Change", _echo))
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(TOY, handlers),))


async def test_internal_errors_carry_the_trace_id_they_are_logged_with(caplog: pytest.LogCaptureFixture) -> None:
    server = await start_grpc_server(
        settings=Settings(), port=0, service_name=TOY, register=_register, host="127.0.0.1"
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = channel.unary_unary(
                f"/{TOY}/Explode",
                request_serializer=Request.SerializeToString,
                response_deserializer=Response.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(Request())
    finally:
        await server.stop(0)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = caught.value.details() or ""
    assert "hunter2" not in details
    found = re.search(r"trace id ([0-9a-f]{32})", details)
    assert found, details
    assert any(found.group(1) in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


async def test_a_client_certificate_is_an_identity_with_the_role_the_tokens_file_gives_it(
    pki: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("cert:client reporting reader\n")
    settings = Settings(
        grpc_tls_cert_file=str(pki / "server.pem"),
        grpc_tls_key_file=str(pki / "server.key"),
        grpc_tls_client_ca_file=str(pki / "ca.pem"),
    )
    guard = Authenticator(str(tokens), {"Echo": Role.READER, "Change": Role.OPERATOR}, service=TOY)
    server = await start_grpc_server(
        settings=settings, port=0, service_name=TOY, register=_register, host="127.0.0.1", guard=guard
    )
    credentials = grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(), (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()
    )
    try:
        async with grpc.aio.secure_channel(f"localhost:{server.port}", credentials) as channel:

            def method(name: str) -> Any:
                return channel.unary_unary(
                    f"/{TOY}/{name}",
                    request_serializer=Request.SerializeToString,
                    response_deserializer=Response.FromString,
                )

            assert (await method("Echo")(Request())).status == Response.SERVING  # caller is "reporting"
            for name, code in (
                ("Change", grpc.StatusCode.PERMISSION_DENIED),
                ("Explode", grpc.StatusCode.PERMISSION_DENIED),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await method(name)(Request())
                assert caught.value.code() == code, name
        tokens.write_text("")  # the certificate's entry removed: known to TLS, but no role any more
        async with grpc.aio.secure_channel(f"localhost:{server.port}", credentials) as channel:
            call = channel.unary_unary(
                f"/{TOY}/Echo", request_serializer=Request.SerializeToString, response_deserializer=Response.FromString
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(Request())
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await server.stop(0)
