"""What `syncmesh up --demo` would print for the toy fourth service."""

from __future__ import annotations

import grpc


async def demo_report(channel: grpc.aio.Channel) -> list[str]:
    del channel
    return ["Ledger: nothing to show"]
