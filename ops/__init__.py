"""Operator tools for the mesh: dead letters, the missed-event sweep, backfill and replay.

`launcher.cli` imports this package and calls `register(sub, groups)` to add the top-level
commands `syncmesh dlq|sweep|backfill|replay`. The work itself lives in one module per tool
(`dlq`, `backfill`, `replay`; the sweep in `gateway.sweeper`, as the gateway runs it too), as
functions that take a `Bus` and settings, so tests drive them directly; `cli` only parses
options and prints reports. Heavy imports happen inside the commands, so `syncmesh --help`
stays fast.
"""

from __future__ import annotations

from ops.cli import register

__all__ = ["register"]
