"""`syncmesh import ledger`: the toy's own subcommand, added the way a service adds one."""

from __future__ import annotations

from typing import Any


def register(sub: Any, groups: dict[str, Any]) -> None:
    del sub
    parser = groups["import"].add_parser("ledger", help="the toy fourth service's import")
    parser.set_defaults(func=lambda args: 0)
