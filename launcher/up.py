"""`syncmesh up`: the whole mesh in one process, on the embedded default when no URLs are set.

Starts (or reuses) nats-server and PostgreSQL under `--data-dir` (./.syncmesh), so data
survives a restart; runs the gateway and every service in one event loop; prints where each
listens; with `--demo`, drives a scenario through localstripe and prints what the mesh recorded.
Ctrl-C (or SIGTERM) stops the parts in reverse order, then the embedded servers.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from gateway.app import Gateway
from services import registry
from services.common.auth import local_tokens
from services.common.embedded import NatsServer, PostgresServer, free_port
from services.common.logs import setup_logging
from services.common.service import ServiceDefinition, ServiceRuntime
from services.common.settings import Settings, load_settings
from services.common.stripe_api import close_stripe_clients

log = logging.getLogger("syncmesh.up")


def available_services() -> dict[str, ServiceDefinition]:
    """Every service of this build (services/registry.py), by name, in roster order."""
    return {d.name: d for d in registry.definitions()}


def _local_secret(data_dir: Path) -> str:
    """A webhook secret for local use, kept with the data so restarts keep accepting."""
    path = data_dir / "webhook-secret"
    if not path.exists():
        path.write_text(f"whsec_local_{secrets.token_hex(16)}\n")
        path.chmod(0o600)
    return path.read_text().strip()


def run_mesh(*, demo: bool, data_dir: str, once: bool = False) -> int:
    started = time.monotonic()
    settings = load_settings()
    setup_logging(settings.log_level if not demo else "WARNING")
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as servers:
        overrides: dict[str, object] = {}
        if not settings.nats_url:
            nats = NatsServer(root / "nats")
            print(f"starting embedded nats-server (JetStream, sync always) in {nats.data_dir}", file=sys.stderr)
            nats.start()
            servers.callback(nats.stop)
            overrides["nats_url"] = nats.url
        if not settings.database_url:
            pg = PostgresServer(root / "postgres")
            print(f"starting embedded PostgreSQL in {pg.data_dir}", file=sys.stderr)
            pg.start()
            servers.callback(pg.stop)
            overrides["database_url"] = pg.url
        if not settings.webhook_secrets:
            overrides["webhook_secrets"] = (_local_secret(root),)
        if not settings.grpc_tokens_file:  # gRPC authentication on; the tools read root/grpc-token
            tokens_file, token = local_tokens(root)
            overrides.update(grpc_tokens_file=str(tokens_file), grpc_token=settings.grpc_token or token)
        if overrides:
            settings = settings.with_overrides(**overrides)
        try:
            return asyncio.run(_run(settings, demo=demo, data_dir=root, started=started, once=once))
        except KeyboardInterrupt:
            return 130


async def _run(settings: Settings, *, demo: bool, data_dir: Path, started: float, once: bool) -> int:
    stand_in = None
    if demo:
        from launcher.demo import demo_settings, start_stand_in

        stand_in = start_stand_in(data_dir)
        settings = demo_settings(settings, stand_in)
    gateway = Gateway(settings, host="127.0.0.1" if demo else "0.0.0.0")
    runtimes = [ServiceRuntime(d, settings) for d in available_services().values()]
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await gateway.start()
    for rt in runtimes:
        await rt.start()
    try:
        await gateway.bus.wait_ready(30)
        for rt in runtimes:
            await rt.wait_ready(60)
        print(f"\nstripe-sync-mesh is up in {time.monotonic() - started:.1f}s")
        print(f"  webhooks  POST http://127.0.0.1:{gateway.port}/webhooks/stripe")
        for rt in runtimes:
            print(f"  {rt.definition.name:<10} gRPC 127.0.0.1:{rt.port}  ({rt.definition.grpc_service_name})")
        print(f"  NATS {settings.nats_url}")
        if not demo:
            print("\nForward real test-mode events with the Stripe CLI:")
            print(f"  stripe listen --forward-to http://127.0.0.1:{gateway.port}/webhooks/stripe")
            print("  (and set SYNCMESH_WEBHOOK_SECRETS to the whsec_ it prints)")
        print("Ctrl-C stops everything.\n", flush=True)
        if demo:
            from launcher.demo import run_demo

            assert stand_in is not None
            demo_task = asyncio.create_task(run_demo(settings, gateway, runtimes, stand_in))
            waiter = asyncio.create_task(stopping.wait())
            await asyncio.wait({demo_task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if demo_task.done():
                demo_task.result()  # re-raise a failed demo
            if once:
                return 0
        await stopping.wait()
    finally:
        print("stopping…", file=sys.stderr)
        for rt in reversed(runtimes):
            await rt.stop()
        await gateway.stop()
        await close_stripe_clients()
        if stand_in is not None:
            stand_in.stop()
    return 0


__all__ = ["available_services", "free_port", "run_mesh"]
