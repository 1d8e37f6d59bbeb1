"""`python -m bench.serve gateway|toy|NAME [--port N]`: one mesh process, as the bench runs it.

The gateway and the real services (services/registry.py) run through the very functions behind
`syncmesh gateway` and `syncmesh serve NAME`, called directly so that a CLI extension another
team is editing cannot stop the benchmark from starting. The runtime's toy service, which `syncmesh` does not know,
runs on the same `services.common.service.serve`.
"""

from __future__ import annotations

import argparse

from gateway.deployable import GATEWAY
from services import registry
from services.common.service import serve
from services.common.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("spec", choices=(GATEWAY.name, "toy", *registry.names()), help="gateway, toy, or a service")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    if args.spec == GATEWAY.name:
        from gateway.app import serve as serve_gateway

        serve_gateway(load_settings(), port=args.port)
        return
    if args.spec == "toy":
        from bench.env import definition

        raise SystemExit(serve(definition("toy"), load_settings(), port=args.port))
    raise SystemExit(serve(registry.by_name(args.spec), load_settings(), port=args.port))


if __name__ == "__main__":
    main()
