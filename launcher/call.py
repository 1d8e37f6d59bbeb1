"""`syncmesh call SERVICE METHOD [JSON]`: one gRPC call from the command line, no grpcurl needed.

A newcomer's first question to a running mesh is "what does it hold?", and grpcurl is not in
Debian. The contracts' own stubs describe every method, so this resolves `METHOD` on the
service's gRPC service (`GetCustomer`, or `health` for the standard health check), turns the
JSON argument into the request message and prints the answer as JSON. The target is the
service's port under the settings (the local mesh's file, when `syncmesh up` runs here), and
the channel honours the mesh's TLS settings like every other tool.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2

from services import registry
from services.common.errors import SettingsError
from services.common.grpc_client import channel, default_target
from services.common.settings import load_settings

HEALTH = "health"


def _load_contracts(service_name: str) -> None:
    """Import every module of the service's contract package, registering its descriptors."""
    package_name = service_name.rsplit(".", 1)[0]
    package = importlib.import_module(package_name)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"{package_name}.{module.name}")


def call(service: str, method: str, request_json: str, *, target: str | None, timeout: float) -> str:
    """The answer of one call, as JSON text; SettingsError for what the caller can fix."""
    settings = load_settings()
    definition = registry.by_name(service)
    address = target or default_target(settings, definition)
    if method == HEALTH:
        path, request_type, response_type = (
            "/grpc.health.v1.Health/Check",
            health_pb2.HealthCheckRequest,
            health_pb2.HealthCheckResponse,
        )
    else:
        _load_contracts(definition.grpc_service_name)
        described = descriptor_pool.Default().FindServiceByName(definition.grpc_service_name)
        found = described.methods_by_name.get(method)
        if found is None:
            known = ", ".join(sorted(described.methods_by_name))
            raise SettingsError(f"{definition.grpc_service_name} has no method {method!r}: one of {known}, or health")
        path = f"/{definition.grpc_service_name}/{method}"
        request_type = message_factory.GetMessageClass(found.input_type)
        response_type = message_factory.GetMessageClass(found.output_type)
    try:
        request = json_format.Parse(request_json or "{}", request_type())
    except json_format.ParseError as exc:
        raise SettingsError(f"the request is not a {request_type.DESCRIPTOR.full_name}: {exc}") from None
    with channel(settings, address) as chan:
        stub = chan.unary_unary(
            path, request_serializer=request_type.SerializeToString, response_deserializer=response_type.FromString
        )
        try:
            response: Any = stub(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            raise SettingsError(f"{service} at {address} answered {getattr(code, 'name', code)}: {details}") from None
    return json_format.MessageToJson(response, preserving_proto_field_name=True, indent=2)


def _cmd_call(args: argparse.Namespace) -> int:
    print(call(args.service, args.method, args.request, target=args.target, timeout=args.timeout))
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser("call", help="call one gRPC method of a service and print the answer as JSON")
    parser.add_argument("service", choices=registry.names())
    parser.add_argument("method", help="a method of the service (GetCustomer, ...) or `health`")
    parser.add_argument("request", nargs="?", default="{}", help='the request as JSON, e.g. \'{"email": "..."}\'')
    parser.add_argument("--target", default=None, help="host:port (default: the service's port on 127.0.0.1)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    parser.set_defaults(func=_cmd_call)


__all__ = ["call", "register"]
