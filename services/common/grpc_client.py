"""gRPC channels for the mesh's own clients (CLI tools, verify, the demo), from settings.

When the services require TLS or mutual TLS, every client must present the same trust and
identity; one helper keeps the tools from each opening plaintext channels of their own.
`SYNCMESH_GRPC_TLS_CA_FILE` turns TLS on (the CA that signed the services' certificates);
`SYNCMESH_GRPC_TLS_CLIENT_CERT_FILE` and `_CLIENT_KEY_FILE` add a client certificate (mTLS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import grpc

from services.common.errors import SettingsError
from services.common.settings import Settings


class Listening(Protocol):
    """A deployable that knows its own port (a `Deployable` or a `ServiceDefinition`)."""

    def port(self, settings: Settings) -> int: ...


def default_target(settings: Settings, deployable: Listening) -> str:
    return f"127.0.0.1:{deployable.port(settings)}"


def client_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """TLS credentials per settings, or None for plaintext (no CA configured)."""
    cert, key = settings.grpc_tls_client_cert_file, settings.grpc_tls_client_key_file
    if not settings.grpc_tls_ca_file:
        if cert or key:
            raise SettingsError("SYNCMESH_GRPC_TLS_CLIENT_CERT_FILE needs SYNCMESH_GRPC_TLS_CA_FILE (the services' CA)")
        return None
    if bool(cert) != bool(key):
        raise SettingsError("set both SYNCMESH_GRPC_TLS_CLIENT_CERT_FILE and SYNCMESH_GRPC_TLS_CLIENT_KEY_FILE")

    def read(variable: str, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise SettingsError(f"{variable}={path} cannot be read: {exc.strerror}") from exc

    return grpc.ssl_channel_credentials(
        root_certificates=read("SYNCMESH_GRPC_TLS_CA_FILE", settings.grpc_tls_ca_file),
        private_key=read("SYNCMESH_GRPC_TLS_CLIENT_KEY_FILE", key) if key else None,
        certificate_chain=read("SYNCMESH_GRPC_TLS_CLIENT_CERT_FILE", cert) if cert else None,
    )


def channel(settings: Settings, target: str) -> grpc.Channel:
    credentials = client_credentials(settings)
    return grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)


def aio_channel(settings: Settings, target: str) -> grpc.aio.Channel:
    credentials = client_credentials(settings)
    return grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
