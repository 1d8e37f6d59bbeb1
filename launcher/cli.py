"""`syncmesh`: run the mesh, or one part of it, and operate it.

    syncmesh up [--demo]                   gateway + the three services (embedded NATS/PostgreSQL
                                           when no URLs are set), Ctrl-C stops everything
    syncmesh gateway [--port N]            the webhook gateway alone (Kubernetes)
    syncmesh serve SERVICE [--port N]      one service alone (services/registry.py lists them)
    syncmesh migrate SERVICE               its schema to the latest migration, under the migration role
    syncmesh call SERVICE METHOD [JSON]    one gRPC call, answer as JSON (`health` for the health check)
    syncmesh import ...                    data sheets and imports, added by the services

Services add their own subcommands through the module their definition names as `cli`
(`register(subparsers, groups)`), so this file does not grow with every feature or service.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from services import registry
from services.common.errors import SettingsError
from services.common.logs import set_level_floor
from services.common.settings import load_settings

#: The operator tools' module; the services' own command modules come from the registry.
OPS_EXTENSION = "ops"


def extensions() -> list[str]:
    """Modules that may add subcommands: `register(subparsers, groups)` where groups maps a
    shared command name ("import", ...) to its sub-subparsers."""
    return [d.cli for d in registry.definitions() if d.cli is not None] + [OPS_EXTENSION]


def _cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.app import serve

    serve(load_settings(local_mesh=False), port=args.port)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from services.common.service import serve

    return serve(registry.by_name(args.service), load_settings(local_mesh=False), port=args.port)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from services.common.service import migrate

    return migrate(registry.by_name(args.service), load_settings(local_mesh=False))


def port_number(raw: str) -> int:
    """`--port`: a TCP port, 0 to let the OS pick; anything else is refused before it can bind
    somewhere unexpected (`--port 99999` used to listen on an OS-picked port)."""
    try:
        port = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a port number (0 to 65535)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is out of range: a port is 0 (any free one) to 65535")
    return port


def _cmd_up(args: argparse.Namespace) -> int:
    from launcher.up import run_mesh

    return run_mesh(demo=args.demo, data_dir=args.data_dir, once=args.once, host=args.host)


#: Anywhere on a tool's command line: its log lines too (at SYNCMESH_LOG_LEVEL), not only warnings.
VERBOSE = "--verbose"

#: Commands that run the mesh itself: they load no operator extensions, so a pod starts with
#: only what it runs, and a fault in a tool cannot stop the gateway or a service.
CORE_COMMANDS = ("up", "gateway", "serve", "migrate")


def build_parser(*, with_extensions: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="syncmesh",
        description="Keeps an ERP and a CRM in step with Stripe.",
        epilog="Tools print warnings and errors only; add --verbose anywhere for their log lines too.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the whole mesh (embedded NATS and PostgreSQL unless URLs are set)")
    up.add_argument("--demo", action="store_true", help="also run localstripe and drive a demo scenario through it")
    up.add_argument("--once", action="store_true", help="with --demo: stop after printing the demo report")
    up.add_argument("--data-dir", default=".syncmesh", help="where the embedded servers keep data (default .syncmesh)")
    up.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the gateway, the services and their metrics listen on (default 127.0.0.1: this machine "
        "only; 0.0.0.0 to let other machines in)",
    )
    up.set_defaults(func=_cmd_up)

    gw = sub.add_parser("gateway", help="run the webhook gateway")
    gw.add_argument("--port", type=port_number, default=None, help="HTTP port (default SYNCMESH_GATEWAY_PORT or 8080)")
    gw.set_defaults(func=_cmd_gateway)

    serve = sub.add_parser("serve", help="run one service")
    serve.add_argument("service", choices=sorted(registry.names()))
    serve.add_argument(
        "--port", type=port_number, default=None, help="gRPC port (default from SYNCMESH_<SERVICE>_PORT)"
    )
    serve.set_defaults(func=_cmd_serve)

    migrate = sub.add_parser(
        "migrate", help="bring one service's schema to the latest migration (SYNCMESH_MIGRATION_DATABASE_URL)"
    )
    migrate.add_argument("service", choices=sorted(registry.names()))
    migrate.set_defaults(func=_cmd_migrate)

    if not with_extensions:
        return parser
    from launcher import call, natsauth

    call.register(sub)
    natsauth.register(sub)
    groups: dict[str, Any] = {}
    imports = sub.add_parser("import", help="import data sheets or run an initial import")
    groups["import"] = imports.add_subparsers(dest="what", required=True, metavar="WHAT")
    for module_name in extensions():
        module = registry.hook(module_name)
        if module is None:
            continue  # that extension is not part of this build
        register: Callable[[Any, dict[str, Any]], None] = module.register
        register(sub, groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    core = bool(arguments) and arguments[0] in CORE_COMMANDS
    if VERBOSE in arguments:
        arguments.remove(VERBOSE)
    elif not core:
        set_level_floor("WARNING")  # a tool's output is for people: log lines only when asked
    try:
        args = build_parser(with_extensions=not core).parse_args(arguments)
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"syncmesh: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        set_level_floor("NOTSET")  # main() may run in-process (tests): leave logging as found


if __name__ == "__main__":
    sys.exit(main())
