"""gRPC channels for the mesh's own clients (CLI tools, verify, the demo), from settings.

When the services require TLS or mutual TLS, every client must present the same trust and
identity; one helper keeps the tools from each opening plaintext channels of their own.
`SYNCMESH_GRPC_TLS_CA_FILE` turns TLS on (the CA that signed the services' certificates);
`SYNCMESH_GRPC_TLS_CLIENT_CERT_FILE` and `_CLIENT_KEY_FILE` add a client certificate (mTLS).

When the services authenticate callers, every call carries `authorization: Bearer <token>`:
`SYNCMESH_GRPC_TOKEN` (or `_FILE`), else the local token `syncmesh up` writes to
`.syncmesh/grpc-token`, so the README's commands work from the directory `syncmesh up` runs in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

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


#: Where `syncmesh up` keeps the token its local tools present (relative to where it runs).
LOCAL_TOKEN_FILE = Path(".syncmesh") / "grpc-token"


def bearer_token(settings: Settings) -> str | None:
    """The token the mesh's own clients present: the setting, else the local one, else none."""
    if settings.grpc_token:
        return settings.grpc_token
    try:
        return LOCAL_TOKEN_FILE.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


class _BearerBase:
    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    async def _call(self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self.header)
        return await continuation(
            grpc.aio.ClientCallDetails(
                details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
            ),
            request,
        )


# grpc.aio files an interceptor under the first kind it implements, so one class per kind.
class _BearerUU(_BearerBase, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    intercept_unary_unary = _BearerBase._call


class _BearerUS(_BearerBase, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    intercept_unary_stream = _BearerBase._call


class _BearerSU(_BearerBase, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    intercept_stream_unary = _BearerBase._call


class _BearerSS(_BearerBase, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    intercept_stream_stream = _BearerBase._call


def bearer_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding `authorization: Bearer <token>` to every call of an aio channel."""
    return [kind(token) for kind in (_BearerUU, _BearerUS, _BearerSU, _BearerSS)]


class _SyncBearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    """The same for a blocking channel (the CLI tools')."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _call(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(details._replace(metadata=[*(details.metadata or ()), self.header]), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call


def channel(settings: Settings, target: str) -> grpc.Channel:
    credentials = client_credentials(settings)
    plain = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    token = bearer_token(settings)
    if token is None:
        return plain
    return grpc.intercept_channel(plain, _SyncBearer(token))


def aio_channel(settings: Settings, target: str) -> grpc.aio.Channel:
    credentials = client_credentials(settings)
    token = bearer_token(settings)
    interceptors = bearer_interceptors(token) if token else None
    if credentials:
        return grpc.aio.secure_channel(target, credentials, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, interceptors=interceptors)
