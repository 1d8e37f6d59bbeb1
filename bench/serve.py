"""`python -m bench.serve gateway|toy|NAME [--port N]`: one mesh process, as the bench runs it.

The gateway and the real services run through the very functions behind `syncmesh gateway` and
`syncmesh serve NAME`, called directly so that a CLI extension another team is editing cannot
stop the benchmark from starting. The runtime's toy service, which `syncmesh` does not know,
runs on the same `services.common.service.serve`.
"""

from __future__ import annotations

import argparse

from services.common.service import serve
from services.common.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve")
    parser.add_argument("spec", help="gateway, toy, or a service name")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    if args.spec == "gateway":
        from launcher.cli import _cmd_gateway

        raise SystemExit(_cmd_gateway(argparse.Namespace(port=args.port)))
    if args.spec == "toy":
        from bench.env import definition

        serve(definition("toy"), load_settings(), port=args.port)
        return
    from launcher.cli import _cmd_serve

    raise SystemExit(_cmd_serve(argparse.Namespace(service=args.spec, port=args.port)))


if __name__ == "__main__":
    main()
