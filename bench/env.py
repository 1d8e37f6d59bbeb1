"""The bench's own world: an embedded nats-server and PostgreSQL on loopback, and the mesh's
processes (gateway, services) started as separate OS processes, as in production.

Each part runs in its own process so the load generator never shares an event loop with what
it measures. Everything listens on 127.0.0.1 and free ports, lives in a temporary directory,
and is stopped (SIGTERM, then SIGKILL) when the suite ends, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import nats.errors
import nats.js.errors
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js.api import ConsumerInfo
from syncmesh.events.v1 import envelope_pb2

from bench.events import BENCH_SECRET, BenchEvent
from bench.procs import rss_kib
from gateway.deployable import GATEWAY
from services import registry
from services.common.bus import STRIPE_STREAM, Bus
from services.common.embedded import NatsServer, PostgresServer, free_port
from services.common.events import parse_event, to_envelope
from services.common.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


class BenchNats(NatsServer):
    """The embedded nats-server, whose per-message fsync can be switched off for set-up only.

    Measurements always run with `sync_interval: always` (the shipped configuration). Pre-filling
    a stream with 100,000 events is set-up, not a measurement, and at one fsync per message it
    would take minutes on a slow disk; the bench restarts the server without it for the fill
    and back with it before measuring. Reading and acking are then measured as shipped.
    """

    sync_always = True

    def _prepare(self) -> None:
        super()._prepare()
        if not self.sync_always:
            text = self.config_path.read_text().replace("  sync_interval: always\n", "")
            self.config_path.write_text(text)


class MeshProcess:
    """One mesh process (gateway or service), its log file, and its lifecycle."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, port: int) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_kib(self) -> int:
        return rss_kib(self.pid) if self.alive else 0

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive:
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)


class BenchEnv:
    """nats-server + PostgreSQL + the mesh processes the current measurement needs."""

    def __init__(self, data_dir: Path | None = None, *, keep: bool = False) -> None:
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="syncmesh-bench-"))
        self.keep = keep
        self.nats = BenchNats(self.data_dir / "nats")
        self.pg = PostgresServer(self.data_dir / "pg")
        self.processes: list[MeshProcess] = []
        self.bus: Bus | None = None

    # -- servers ------------------------------------------------------------------------------

    def start_servers(self) -> None:
        self.nats.start()
        self.pg.start()

    async def connect(self) -> None:
        self.bus = Bus(self.settings(), name="syncmesh-bench")
        await self.bus.start(wait=10)
        await self.bus.wait_ready(20)

    def settings(self, database: str = "syncmesh") -> Settings:
        return Settings(
            nats_url=self.nats.url,
            database_url=self.pg.dsn(database),
            webhook_secrets=(BENCH_SECRET,),
            mode="test",
        )

    async def close(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        if self.bus is not None:
            await self.bus.close()
        self.pg.stop()
        self.nats.stop()
        if not self.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- mesh processes -----------------------------------------------------------------------

    def child_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCMESH_", "OTEL_"))}
        env.update(
            SYNCMESH_NATS_URL=self.nats.url,
            SYNCMESH_WEBHOOK_SECRETS=BENCH_SECRET,
            SYNCMESH_MODE="test",
            SYNCMESH_LOG_LEVEL="WARNING",
            PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        )
        env.update(extra)
        return env

    async def start_gateway(
        self, max_in_flight: int | None = None, *, env: dict[str, str] | None = None
    ) -> MeshProcess:
        """The gateway; `max_in_flight` overrides its shedding limit (--gateway-max-in-flight),
        `env` adds variables (the idle section turns metrics on, as deployed)."""
        port = free_port()
        extra = {**(env or {}), GATEWAY.port_variable: str(port)}
        if max_in_flight is not None:
            extra["SYNCMESH_GATEWAY_MAX_IN_FLIGHT"] = str(max_in_flight)
        proc = MeshProcess(
            GATEWAY.name,
            [sys.executable, "-m", "bench.serve", GATEWAY.name, "--port", str(port)],
            self.child_env(**extra),
            self.data_dir / f"{GATEWAY.name}.log",
            port,
        )
        proc.start()
        self.processes.append(proc)
        await _wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        return proc

    async def start_service(
        self, spec: str, database: str, *, env: dict[str, str] | None = None, wait: bool = True
    ) -> MeshProcess:
        """Start `syncmesh serve NAME` (or the toy service, spec "toy") against `database`.

        With `wait`, returns once its gRPC health says SERVING; without, at once (a drain timed
        from the consumer's first appearance must not include our polling of health).
        """
        port = free_port()
        argv = [sys.executable, "-m", "bench.serve", spec, "--port", str(port)]
        proc = MeshProcess(
            spec,
            argv,
            self.child_env(SYNCMESH_DATABASE_URL=self.pg.dsn(database), **(env or {})),
            self.data_dir / f"{spec}-{database}.log",
            port,
        )
        proc.start()
        self.processes.append(proc)
        if wait:
            await _wait_serving(proc, definition(spec).grpc_service_name)
        return proc

    def stop(self, proc: MeshProcess) -> None:
        proc.stop()
        if proc in self.processes:
            self.processes.remove(proc)

    # -- databases and streams ----------------------------------------------------------------

    async def fresh_database(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(self.pg.dsn())
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return name

    async def drop_database(self, name: str) -> None:
        admin = await asyncpg.connect(self.pg.dsn())
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def reset_stream(self) -> None:
        """Empty STRIPE and forget every durable on it: the next measurement starts clean."""
        assert self.bus is not None
        js = self.bus.js
        for info in await js.consumers_info(STRIPE_STREAM):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_consumer(STRIPE_STREAM, info.name)
        await js.purge_stream(STRIPE_STREAM)

    async def delete_durable(self, durable: str) -> None:
        assert self.bus is not None
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self.bus.js.delete_consumer(STRIPE_STREAM, durable)

    async def restart_nats(self, *, sync_always: bool) -> None:
        """Restart nats-server with or without per-message fsync; waits until the bus is back."""
        assert self.bus is not None
        self.nats.stop()
        self.nats.sync_always = sync_always
        self.nats.start()
        await self.bus.wait_ready(20)
        deadline = time.monotonic() + 20
        while True:  # JetStream answers a little after the port opens
            try:
                await self.bus.js.stream_info(STRIPE_STREAM)
                return
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def consumer_info(self, durable: str) -> ConsumerInfo | None:
        assert self.bus is not None
        try:
            return await self.bus.js.consumer_info(STRIPE_STREAM, durable)
        except nats.js.errors.NotFoundError:
            return None

    async def prefill(self, events: list[BenchEvent], *, duplicates_bypass_dedup: bool = True) -> float:
        """Publish events straight to STRIPE as the gateway would (envelopes); returns events/s.

        A duplicate gets its own Nats-Msg-Id so it reaches the consumers, as a Stripe resend does
        once JetStream's two-minute dedup window has passed.
        """
        assert self.bus is not None
        js = self.bus.js
        started = time.perf_counter()
        seen: set[str] = set()
        futures = []
        for n, event in enumerate(events):
            parsed = parse_event(event.body)
            msg_id = event.id
            if event.id in seen and duplicates_bypass_dedup:
                msg_id = f"{event.id}-resent-{n}"
            seen.add(event.id)
            payload = to_envelope(parsed, source=envelope_pb2.EVENT_SOURCE_WEBHOOK)
            futures.append(await js.publish_async(parsed.subject, payload, headers={"Nats-Msg-Id": msg_id}))
        await asyncio.gather(*futures)
        return len(events) / (time.perf_counter() - started)


def definition(spec: str) -> Any:
    """The ServiceDefinition behind a spec: "toy" (the runtime's test service) or a service name."""
    if spec == "toy":
        from tests.common import toy_service

        # The toy records every event it sees, so it exercises the consumer loop on the whole
        # stream rather than on customer events only.
        return replace(toy_service.DEFINITION, subjects=("stripe.>",))
    return registry.by_name(spec)


def available_services() -> dict[str, str]:
    """Services that exist in this checkout, and why the others cannot be run."""
    found: dict[str, str] = {}
    for name in registry.names():
        try:
            definition(name)
            found[name] = "ok"
        except Exception as exc:
            found[name] = f"{type(exc).__name__}: {exc}"
    return found


async def _wait_http(url: str, proc: MeshProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if not proc.alive:
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready at {url} within {timeout}s:\n{proc.tail()}")


async def _wait_serving(proc: MeshProcess, service_name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if not proc.alive:
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                answer = await stub.Check(health_pb2.HealthCheckRequest(service=service_name), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} not SERVING within {timeout}s:\n{proc.tail()}")


def describe_consumer(info: ConsumerInfo | None) -> str:
    if info is None:
        return "no consumer"
    return json.dumps(
        {"num_pending": info.num_pending, "num_ack_pending": info.num_ack_pending, "redelivered": info.num_redelivered}
    )
