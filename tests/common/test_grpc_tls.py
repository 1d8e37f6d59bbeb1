"""gRPC TLS and mutual TLS, with certificates made by openssl for the test."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.errors import SettingsError
from services.common.grpc_server import start_grpc_server
from services.common.settings import Settings


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        (d / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.pem",
            cwd=d,
        )
    return d


async def _check(port: int, credentials: grpc.ChannelCredentials) -> int:
    async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(response.status)


async def test_mutual_tls_requires_a_client_certificate(pki: Path) -> None:
    settings = Settings(
        grpc_tls_cert_file=str(pki / "server.pem"),
        grpc_tls_key_file=str(pki / "server.key"),
        grpc_tls_client_ca_file=str(pki / "ca.pem"),
    )
    server = await start_grpc_server(
        settings=settings, port=0, service_name="syncmesh.toy.v1.ToyService", register=lambda s: None, host="127.0.0.1"
    )
    try:
        ca = (pki / "ca.pem").read_bytes()
        with_cert = grpc.ssl_channel_credentials(
            ca, (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()
        )
        assert await _check(server.port, with_cert) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError):
            await _check(server.port, grpc.ssl_channel_credentials(ca))  # TLS, but no client certificate
        with pytest.raises(grpc.aio.AioRpcError):
            async with grpc.aio.insecure_channel(f"localhost:{server.port}") as channel:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    finally:
        await server.stop(0)


async def test_tls_without_client_auth(pki: Path) -> None:
    settings = Settings(grpc_tls_cert_file=str(pki / "server.pem"), grpc_tls_key_file=str(pki / "server.key"))
    server = await start_grpc_server(
        settings=settings, port=0, service_name="syncmesh.toy.v1.ToyService", register=lambda s: None, host="127.0.0.1"
    )
    try:
        creds = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
        assert await _check(server.port, creds) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(0)


async def test_half_configured_tls_is_refused(pki: Path) -> None:
    with pytest.raises(SettingsError, match="SYNCMESH_GRPC_TLS_KEY_FILE"):
        await start_grpc_server(
            settings=Settings(grpc_tls_cert_file=str(pki / "server.pem")),
            port=0,
            service_name="x.v1.XService",
            register=lambda s: None,
        )


async def test_the_mesh_clients_speak_mutual_tls_from_settings(pki: Path) -> None:
    """The CLI tools and verify open channels through services.common.grpc_client."""
    from services.common.grpc_client import aio_channel

    server_settings = Settings(
        grpc_tls_cert_file=str(pki / "server.pem"),
        grpc_tls_key_file=str(pki / "server.key"),
        grpc_tls_client_ca_file=str(pki / "ca.pem"),
    )
    server = await start_grpc_server(
        settings=server_settings,
        port=0,
        service_name="syncmesh.toy.v1.ToyService",
        register=lambda s: None,
        host="127.0.0.1",
    )
    client_settings = Settings(
        grpc_tls_ca_file=str(pki / "ca.pem"),
        grpc_tls_client_cert_file=str(pki / "client.pem"),
        grpc_tls_client_key_file=str(pki / "client.key"),
    )
    try:
        async with aio_channel(client_settings, f"localhost:{server.port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        without_cert = Settings(grpc_tls_ca_file=str(pki / "ca.pem"))
        with pytest.raises(grpc.aio.AioRpcError):
            async with aio_channel(without_cert, f"localhost:{server.port}") as channel:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        with pytest.raises(SettingsError, match="SYNCMESH_GRPC_TLS_CA_FILE"):
            aio_channel(Settings(grpc_tls_client_cert_file="x", grpc_tls_client_key_file="y"), "localhost:1")
    finally:
        await server.stop(0)
