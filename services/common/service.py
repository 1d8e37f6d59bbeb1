"""Running a service: the wiring every service shares, so none of them copies it.

A service is described by a `ServiceDefinition` (its schema, migrations, the Stripe event
subjects it consumes, its batch applier and its gRPC registration, and what the tools around
it read: its port, required settings, CLI commands, demo report and verify checks; the list of
services is `services/registry.py`). `ServiceRuntime` turns that into a process:

    start:  gRPC server up at once (health NOT_SERVING), so probes get an answer
            -> NATS connection and streams (retried in the background)
            -> Postgres pool under the service's own role, its schema at the latest migration
               (migrated under the migration role when given, else checked; retried until the
               database answers)
            -> consumer loop + outbox relay + health watcher -> SERVING
    stop:   health NOT_SERVING -> stop fetching, finish the batch in flight -> flush the
            outbox -> drain NATS -> stop gRPC with a grace period -> close the pool

Readiness is re-checked every second: losing PostgreSQL or NATS turns health NOT_SERVING until
they are back; the consumer and relay back off meanwhile and catch up afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import stripe

from services.common import db, query_process
from services.common.audit import AuditTrail
from services.common.auth import Policy, authenticator_for
from services.common.bus import Bus
from services.common.consumer import BatchApplier, Consumer
from services.common.deployable import SERVICE_SETTINGS, Deployable
from services.common.errors import SettingsError, UpstreamError
from services.common.grpc_server import GrpcServer, start_grpc_server
from services.common.logs import current_service, setup_logging
from services.common.metrics import (
    MetricsSampler,
    MetricsServer,
    ServiceMetrics,
    consumer_sample,
    outbox_sample,
    pool_sample,
    serve_metrics,
)
from services.common.outbox import OutboxRelay
from services.common.settings import Settings, load_settings
from services.common.stripe_api import close_stripe_clients, stripe_client_for
from services.common.tracing import setup_tracing

log = logging.getLogger(__name__)

#: How often health looks at what it knows without asking anyone: NATS's connection state and
#: whether a pooled PostgreSQL connection was lost (a killed or failed-over primary closes them,
#: and asyncpg sees it at once). Costs a wake-up of the loop and no I/O. A service that is not
#: SERVING asks PostgreSQL this often, so it is back within a second of its return (a failover's
#: promotion, measured in tests/clusters).
HEALTH_CHECK_SECONDS = 1.0
#: How often a SERVING service asks PostgreSQL (`SELECT 1`) when nothing says it is gone: for a
#: database that stopped answering without closing its connections (a network partition).
#: Every second was a query and a wake-up of the service and of a backend for as long as the mesh
#: idles; 5 s is what the readiness probe waits between two of its own checks (k8s:
#: `periodSeconds: 5`, two failures to turn unready), so an orchestrator sees it no later.
HEALTH_PING_SECONDS = 5.0


@dataclass(frozen=True)
class ServiceDefinition:
    #: Deployable name as `syncmesh serve NAME` takes it (also the durable consumer's name and,
    #: as `SYNCMESH_<NAME>_PORT`, the port variable); its package is `services.<name with _>`.
    name: str
    #: PostgreSQL schema the service owns.
    schema: str
    migrations: Path
    #: Stripe subjects consumed, e.g. ("stripe.customer.*",).
    subjects: tuple[str, ...]
    #: The service's one way to apply events: a batch of new events in the consumer's
    #: transaction (a failing message is isolated by the same applier on a batch of one).
    apply: BatchApplier
    #: Full gRPC service name, also the health-check name.
    grpc_service_name: str
    #: Adds the service's servicer(s) to the server; gets the runtime for pool/bus/settings.
    register_grpc: Callable[[grpc.aio.Server, ServiceRuntime], None]
    #: The least role each gRPC method needs (services.common.auth), declared next to the
    #: servicer; a method missing here is refused to every caller once authentication is on.
    grpc_policy: Policy = field(default_factory=dict)
    #: Fetch and decode the next batch while the current one waits on PostgreSQL. Measured per
    #: service, not assumed: billing replays 18-30 % faster with it; for customer and CRM export
    #: the runs were no different or inconclusive (bench/README.md), so they keep the plain loop.
    fetch_ahead: bool = False
    #: Extra long-running tasks (none by default).
    background: Callable[[ServiceRuntime], list[Coroutine[Any, Any, None]]] = field(default=lambda _rt: [])

    # -- what the launcher, operator tools, Kubernetes checks and benchmark read (the roster) --
    #: gRPC port unless `SYNCMESH_<NAME>_PORT` says otherwise; 0 lets the OS pick (test toys).
    default_port: int = 0
    #: Variables the service cannot start without (checked at start-up and against k8s/).
    required_settings: tuple[str, ...] = SERVICE_SETTINGS
    #: Module adding `syncmesh` subcommands: `register(subparsers, groups)`; named, not imported,
    #: so a service process never loads its operator commands.
    cli: str | None = None
    #: Module with `async demo_report(channel) -> list[str]` for `syncmesh up --demo`.
    demo: str | None = None
    #: Module with `CHECKS`, the service's part of `syncmesh verify` (optional).
    verify: str | None = None

    @property
    def deployable(self) -> Deployable:
        return Deployable(self.name, self.default_port, self.required_settings)

    @property
    def migration_sources(self) -> list[tuple[str, Path]]:
        """The runtime's migrations, then the service's own: what its schema is made of."""
        return [("runtime", db.RUNTIME_MIGRATIONS), (self.name, self.migrations)]

    @property
    def port_variable(self) -> str:
        return self.deployable.port_variable

    def port(self, settings: Settings) -> int:
        """Its gRPC port under these settings."""
        return self.deployable.port(settings)


class ServiceRuntime:
    """One service's process. By default it does everything; `serve` with
    SYNCMESH_GRPC_QUERY_PROCESS splits it in two (services.common.query_process): one that
    consumes (`serves_grpc=False`) and one that answers gRPC (`consumes=False`), on the same
    schema, each with its own pool and NATS connection."""

    def __init__(
        self,
        definition: ServiceDefinition,
        settings: Settings,
        *,
        port: int | None = None,
        host: str = "[::]",
        serves_grpc: bool = True,
        consumes: bool = True,
        parent_pid: int | None = None,
    ) -> None:
        #: Where gRPC and metrics listen: every interface in a container, 127.0.0.1 under `syncmesh up`.
        self.host = host
        self.definition = definition
        self.settings = definition.deployable.require(settings)
        self.port = definition.port(settings) if port is None else port
        self.serves_grpc = serves_grpc
        self.consumes = consumes
        #: A query process stops once the process that started it is gone (SIGKILLed, say), so
        #: it never outlives it holding the port.
        self.parent_pid = parent_pid
        self.bus = Bus(settings, name=f"syncmesh-{definition.name}")
        self._pool: asyncpg.Pool | None = None
        self.grpc: GrpcServer | None = None
        self.consumer: Consumer | None = None
        self.relay: OutboxRelay | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        #: Set when the service cannot come up at all (a broken migration): the process stops with
        #: that one line and a non-zero exit, so an orchestrator shows it instead of a pod that
        #: stays NOT_SERVING forever.
        self.failed = asyncio.Event()
        self.failure: str | None = None
        self.metrics = ServiceMetrics(definition.name)
        self.metrics_server: MetricsServer | None = None
        self._sampler: MetricsSampler | None = None

    @property
    def stripe(self) -> stripe.StripeClient | None:
        """The process's Stripe API client (None without SYNCMESH_STRIPE_API_KEY)."""
        return stripe_client_for(self.settings)

    @property
    def pool(self) -> asyncpg.Pool:
        """The database pool; UNAVAILABLE to gRPC callers while the database is not reachable yet."""
        if self._pool is None:
            raise UpstreamError(f"{self.definition.name} is starting: its database is not ready yet, retry shortly")
        return self._pool

    async def start(self) -> None:
        # Every task started from here (gRPC, NATS, consumer, relay) inherits the name, so each
        # log line says which service wrote it, also when `syncmesh up` runs them all at once.
        token = current_service.set(self.definition.name)
        try:
            await self._start()
        finally:
            current_service.reset(token)

    async def _start(self) -> None:
        setup_tracing(f"syncmesh-{self.definition.name}")
        if self.serves_grpc:
            self.grpc = await start_grpc_server(
                settings=self.settings,
                port=self.port,
                host=self.host,
                service_name=self.definition.grpc_service_name,
                register=lambda server: self.definition.register_grpc(server, self),
                guard=authenticator_for(
                    self.settings, self.definition.grpc_policy, service=self.definition.grpc_service_name
                ),
                # Audited calls are stored in this service's schema and announced through its outbox.
                audit=AuditTrail(self.definition.name, lambda: self.pool, self._wake_relay),
            )
            self.port = self.grpc.port
        # The metrics (consumer, outbox, pool) belong to the process that consumes; a query process
        # has none of them, and would collide on the port.
        metrics_port = self.definition.deployable.metrics_port(self.settings) if self.consumes else None
        if metrics_port is not None:
            try:
                metrics_host = "0.0.0.0" if self.host == "[::]" else self.host
                self.metrics_server = serve_metrics(
                    self.metrics.registry, metrics_port, metrics_host, refresh=self._sample_metrics
                )
            except OSError as exc:
                raise SettingsError(
                    f"cannot serve {self.definition.name}'s metrics on port {metrics_port} "
                    f"({self.definition.deployable.metrics_port_setting(self.settings)}): {exc.strerror}"
                ) from None
            log.info("%s metrics on %s:%d/metrics", self.definition.name, metrics_host, self.metrics_server.port)
        await self.bus.start()
        self._tasks.append(asyncio.create_task(self._bring_up(), name=f"{self.definition.name}-bring-up"))

    async def _sample_metrics(self) -> None:
        """The gauges' values now, for a scrape; none before the database is up."""
        if self._sampler is not None:
            await self._sampler.refresh()

    def _wake_relay(self) -> None:
        if self.relay is not None:
            self.relay.wake()

    @property
    def ready(self) -> bool:
        """Whether it has been SERVING at least once (its database migrated, its consumer up)."""
        return self._ready.is_set()

    async def wait_ready(self, timeout: float) -> None:
        """Wait until SERVING; SettingsError, with the reason, if the service cannot come up."""
        ready = asyncio.ensure_future(self._ready.wait())
        failed = asyncio.ensure_future(self.failed.wait())
        try:
            await asyncio.wait_for(asyncio.wait({ready, failed}, return_when=asyncio.FIRST_COMPLETED), timeout)
        finally:
            ready.cancel()
            failed.cancel()
        if self.failure is not None:
            raise SettingsError(self.failure)

    def _fail(self, reason: str) -> None:
        log.critical("%s cannot start: %s", self.definition.name, reason)
        self.failure = reason
        self.failed.set()

    async def _bring_up(self) -> None:
        assert self.settings.database_url
        delay = 0.2
        while self._pool is None:
            pool: asyncpg.Pool | None = None
            try:
                pool = await db.create_pool(
                    self.settings.database_url,
                    self.definition.schema,
                    connect_timeout=self.settings.database_connect_timeout_seconds,
                )
                await self._ensure_migrated(pool)
                self._pool = pool
            except SettingsError as exc:
                # A migration the database refuses, one edited after it shipped, or a schema behind
                # this build: retrying would say "database not ready" forever while nothing is wrong
                # with the database.
                await _close_quietly(pool)
                self._fail(str(exc))
                return
            except db.UNAVAILABLE as exc:
                await _close_quietly(pool)
                log.warning("database not ready (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.database_retry_max_seconds)
        if not self.consumes:  # a query process: its pool and health, no consumer nor relay
            self._tasks.append(asyncio.create_task(self._watch_health(), name=f"{self.definition.name}-health"))
            return
        self.relay = OutboxRelay(self._pool, self.bus)
        self.consumer = Consumer(
            service=self.definition.name,
            bus=self.bus,
            pool=self._pool,
            apply=self.definition.apply,
            subjects=self.definition.subjects,
            settings=self.settings,
            on_outbox=self.relay.hand_over,
            fetch_ahead=self.definition.fetch_ahead,
            metrics=self.metrics,
        )
        consumer = self.consumer
        # The gauges are sampled when a scrape asks for them (`_sample_metrics`): nothing otherwise.
        self._sampler = MetricsSampler(
            self.metrics,
            [
                pool_sample(self._pool),
                outbox_sample(self._pool),
                consumer_sample(lambda: self.bus.js.consumer_info(consumer.stream, consumer.durable)),
            ],
        )
        for name, coro in [
            ("consumer", self.consumer.run()),
            ("outbox", self.relay.run()),
            ("health", self._watch_health()),
            *((f"background-{i}", c) for i, c in enumerate(self.definition.background(self))),
        ]:
            self._tasks.append(asyncio.create_task(coro, name=f"{self.definition.name}-{name}"))

    async def _ensure_migrated(self, pool: asyncpg.Pool) -> None:
        """The schema at this build's latest migration before anything is consumed.

        With the migration role's URL (`SYNCMESH_MIGRATION_DATABASE_URL`) the service migrates its
        schema itself, as `migrate` would (the local default). Without it, a role that may change
        the schema's shape (the one-role set-up of before, tests) migrates it as it always did; the
        service's own least-privilege role only checks, and a schema behind this build stops the
        service with one line saying to run `migrate` (SECURITY.md)."""
        schema, sources = self.definition.schema, self.definition.migration_sources
        if self.settings.migration_database_url:
            await db.migrate_as(
                self.settings.migration_database_url,
                schema,
                sources,
                connect_timeout=self.settings.database_connect_timeout_seconds,
            )
            return
        pending = await db.pending_migrations(pool, schema, sources)
        if not pending:
            return
        if await db.may_migrate(pool, schema):
            await db.migrate(pool, schema, sources)
            return
        raise SettingsError(
            f"schema {schema} is not at this build's latest migration ({len(pending)} pending, first "
            f"{db.migration_file(pending[0])}): run `{migrate_command(self.definition)}` under the migration role "
            "(SYNCMESH_MIGRATION_DATABASE_URL) first"
        )

    async def _watch_health(self) -> None:
        """SERVING while NATS and PostgreSQL both answer. PostgreSQL is asked every
        `HEALTH_PING_SECONDS` while serving, at once when a pooled connection was lost, and every
        `HEALTH_CHECK_SECONDS` while not serving (see there)."""
        assert self._pool is not None
        loop = asyncio.get_running_loop()
        ready, pinged_at, connections = False, -math.inf, 0
        while True:
            if not self.bus.is_ready():
                ready = False
            elif (
                not ready
                or loop.time() - pinged_at >= HEALTH_PING_SECONDS
                or self._pool.get_size() < connections  # one was closed under us: is it gone?
            ):
                ready = await db.ping(self._pool)
                pinged_at, connections = loop.time(), self._pool.get_size()
            if self.grpc is not None:
                await self.grpc.set_serving(ready)
            if ready:
                self._ready.set()
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                log.warning("the process that started this query process is gone: stopping")
                os.kill(os.getpid(), signal.SIGTERM)  # the signal handler stops it in order
            await asyncio.sleep(HEALTH_CHECK_SECONDS)

    async def stop(self) -> None:
        token = current_service.set(self.definition.name)
        try:
            await self._stop()
        finally:
            current_service.reset(token)

    async def _stop(self) -> None:
        grace = self.settings.shutdown_grace_seconds
        if self.grpc is not None:
            await self.grpc.set_serving(False)
        if self.consumer is not None:
            await self.consumer.stop(grace)
        if self.relay is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.relay.relay_once(), 5)
            self.relay.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.bus.close()
        if self.grpc is not None:
            await self.grpc.stop(min(grace, 5.0))
        if self._pool is not None:
            await self._pool.close()
        if self.metrics_server is not None:
            await asyncio.to_thread(self.metrics_server.stop)
            self.metrics_server = None


async def _close_quietly(pool: asyncpg.Pool | None) -> None:
    """A pool that came up but is not kept (its migrations failed) goes, with its connections."""
    if pool is not None:
        with contextlib.suppress(*db.UNAVAILABLE):
            await pool.close()


async def run_until_signalled(
    start: Callable[[], Coroutine[Any, Any, None]],
    stop: Callable[[], Coroutine[Any, Any, None]],
    failed: asyncio.Event | None = None,
) -> int:
    """Start, wait for SIGTERM or SIGINT (or for `failed`), stop: the process life cycle Kubernetes
    expects. Returns the exit code: 0 after a signal, 1 after a failure."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await start()
    waits = [asyncio.ensure_future(stopping.wait())]
    if failed is not None:
        waits.append(asyncio.ensure_future(failed.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    log.info("shutting down")
    await stop()
    await close_stripe_clients()
    return 1 if failed is not None and failed.is_set() and not stopping.is_set() else 0


#: CPython collects generation 0 every 700 net container allocations: ~1,700 collections in a
#: 20,000-event drain, ~10 % of a service's CPU. Nearly everything a batch allocates dies by
#: reference counting, so collecting every 10,000 still finds the cycles (~60 collections a
#: drain) at the same resident size, for 4-9 % less CPU per event (bench/README.md).
GC_GEN0_THRESHOLD = 10_000


#: How long the event loop's thread may keep the GIL while grpc.aio's poller thread waits for it.
#: Every RPC crosses from that thread to the loop several times (call, message, status); at
#: Python's default 5 ms each crossing waited up to 5 ms whenever the loop was busy with ingest,
#: and point reads queued behind it: section 4 at 500 reads/s under 200 webhooks/s, p50 39 and
#: 10 ms, p99 338 and 335 ms at 5 ms; p50 5 and 23 ms, p99 172 and 194 ms at 0.5 ms
#: (bench/results/HISTORY.md, 2026-12-07 21:20).
GIL_SWITCH_INTERVAL_SECONDS = 0.0005


def tune_gc() -> None:
    """For a service process, once its modules are imported: the objects alive now live as long as
    the process, so they are frozen out of every collection, and collections come less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def serve(definition: ServiceDefinition, settings: Settings, *, port: int | None = None) -> int:
    """Entry point for `syncmesh serve <service>` and `python -m services.<service>`; the exit code."""
    setup_logging(settings.log_level, service=definition.name)
    tune_gc()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    if settings.grpc_query_process and (definition.port(settings) if port is None else port) != 0:
        return query_process.serve_split(
            definition.name,
            query=lambda parent: ServiceRuntime(definition, settings, port=port, consumes=False, parent_pid=parent),
            consuming=lambda: ServiceRuntime(definition, settings, port=port, serves_grpc=False),
            run=run_until_signalled,
        )
    runtime = ServiceRuntime(definition, settings, port=port)
    code = asyncio.run(run_until_signalled(runtime.start, runtime.stop, runtime.failed))
    if runtime.failure is not None:
        print(f"{definition.name}: cannot start: {runtime.failure}", file=sys.stderr)
    return code


def migrate_command(definition: ServiceDefinition) -> str:
    """How an operator runs a service's migrations."""
    return f"python -m services.{definition.name.replace('-', '_')} migrate"


def migrate(definition: ServiceDefinition, settings: Settings) -> int:
    """`python -m services.<svc> migrate` / `syncmesh migrate <svc>`: bring the service's schema to
    this build's latest migration under the migration role, and grant the service's own role its
    rights on the tables as they now are; what a Kubernetes init container runs before the service.

    Exit 0 with one line per applied file (or one saying nothing was pending); on failure exit 1
    with one line on stderr naming the file or the reason, never a traceback nor a password."""
    url = settings.migration_database_url or settings.database_url
    if not url:
        print(
            f"{definition.name}: migrate failed: set SYNCMESH_MIGRATION_DATABASE_URL "
            "(and SYNCMESH_MIGRATION_DATABASE_PASSWORD_FILE) to the migration role",
            file=sys.stderr,
        )
        return 2
    setup_logging(settings.log_level, service=definition.name)
    try:
        applied = asyncio.run(
            db.migrate_as(
                url,
                definition.schema,
                definition.migration_sources,
                connect_timeout=settings.database_connect_timeout_seconds,
            )
        )
    except SettingsError as exc:
        print(f"{definition.name}: migrate failed: {exc}", file=sys.stderr)
        return 1
    except db.UNAVAILABLE as exc:
        reason = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{definition.name}: migrate failed: {type(exc).__name__}: {reason}".rstrip(": "), file=sys.stderr)
        return 1
    for migration in applied:
        print(f"{definition.name}: applied {db.migration_file(migration)}")
    if not applied:
        print(f"{definition.name}: schema {definition.schema} is at the latest migration; nothing to apply")
    return 0


def main_for_service(
    definition: Callable[[], ServiceDefinition], argv: Sequence[str] | None = None, *, prog: str | None = None
) -> int:
    """A service's own `__main__`: `serve` (the default) or `migrate`; `definition` is called
    only once the arguments parsed, so `--help` stays fast."""
    parser = argparse.ArgumentParser(prog=prog, description="run one service, or migrate its schema")
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "migrate"),
        default="serve",
        help="serve (default) or migrate: bring its schema to the latest migration and exit",
    )
    parser.add_argument("--port", type=int, default=None, help="listening port (default from the settings)")
    args = parser.parse_args(argv)
    service = definition()
    if args.command == "migrate":
        return main_for(service.name, lambda settings, _port: migrate(service, settings), [])
    return main_for(service.name, lambda settings, port: serve(service, settings, port=port), _port_argv(args.port))


def _port_argv(port: int | None) -> list[str]:
    return [] if port is None else ["--port", str(port)]


def main_for(
    deployable: str, run: Callable[[Settings, int | None], int | None], argv: Sequence[str] | None = None
) -> int:
    """A deployable's own `__main__`: parse `--port`, load settings, run; a bad setting is one line
    on stderr and exit code 2, never a traceback (an operator reading a crash-looping pod has
    nothing else to go on)."""
    parser = argparse.ArgumentParser(prog=f"python -m {deployable}", description=f"run {deployable} alone")
    parser.add_argument("--port", type=int, default=None, help="listening port (default from the settings)")
    args = parser.parse_args(argv)
    try:
        return int(run(load_settings(local_mesh=False), args.port) or 0)
    except SettingsError as exc:
        print(f"{deployable}: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
