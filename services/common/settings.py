"""Settings from the environment, validated once at start-up.

Every process of the mesh reads the same variables; each deployable declares the few it cannot
run without (`services.common.deployable.Deployable.required_settings`) and checks them with
`Settings.require`, so the gateway starts without a database and a service without webhook
secrets. Listening ports are read generically from every `SYNCMESH_<NAME>_PORT` variable
(`Settings.port_overrides`); each deployable picks its own, with its own default, so this
module names no deployable. A bad value stops the process with a message that names the variable and says what
would be accepted, because an operator reading a crash-looping pod has nothing else to go on.

Secrets can come from files (`SYNCMESH_X_FILE=/path`), which is how Kubernetes mounts them;
setting both the variable and its `_FILE` twin is refused as ambiguous.

The local mesh: `syncmesh up` writes what it started (NATS and database URLs, ports, the webhook
secret's file) to `./.syncmesh/mesh.json`, and `load_settings()` reads the variables it holds for
whatever the environment leaves unset, so every tool run in that folder finds the mesh without
exports. The environment always wins, variable by variable; a file whose `up` is no longer
running is ignored (its ports are gone). The deployables themselves (`up`, `gateway`, `serve`)
read the environment only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from services.common.errors import SettingsError

Mode = Literal["live", "test"]

#: `SYNCMESH_<NAME>_PORT`: a deployable's listening port (`_FILE` twins allowed, as everywhere).
PORT_VARIABLE = re.compile(r"SYNCMESH_[A-Z0-9_]+_PORT")

#: Variables whose values are secret: readable from `<NAME>_FILE`, never logged.
SECRET_VARIABLES = (
    "SYNCMESH_WEBHOOK_SECRETS",
    "SYNCMESH_STRIPE_API_KEY",
    "SYNCMESH_DATABASE_URL",
    "SYNCMESH_GRPC_TOKEN",
    "SYNCMESH_DATABASE_PASSWORD",
    "SYNCMESH_MIGRATION_DATABASE_URL",
    "SYNCMESH_MIGRATION_DATABASE_PASSWORD",
    "SYNCMESH_NATS_PASSWORD",
)


@dataclass(frozen=True)
class Settings:
    """Validated configuration. Construct with `load_settings`; tests use `dataclasses.replace`."""

    nats_url: str | None = None
    #: The service's own database role (SECURITY.md): `SYNCMESH_DATABASE_URL`, with
    #: `SYNCMESH_DATABASE_PASSWORD(_FILE)` put into it when the URL names none.
    database_url: str | None = None
    #: The migration role, which owns the schemas (`SYNCMESH_MIGRATION_DATABASE_URL` plus
    #: `SYNCMESH_MIGRATION_DATABASE_PASSWORD(_FILE)`): set for `migrate`, or for a service that
    #: migrates its own schema at start (`services.common.service`).
    migration_database_url: str | None = None
    webhook_secrets: tuple[str, ...] = ()
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    mode: Mode = "test"
    sync_start: datetime | None = None
    #: Listening ports set in the environment, by variable (`SYNCMESH_CUSTOMER_PORT` -> 0); a
    #: deployable not named here listens on its own default (`Deployable.port`).
    port_overrides: Mapping[str, int] = field(default_factory=dict)
    #: How long the STRIPE stream keeps events: long enough to rebuild a service from history.
    stream_max_age_days: int = 400
    #: JetStream replicas for the mesh's streams: 1 on one machine, 3 (or 5) on a NATS cluster.
    stream_replicas: int = 1
    #: How long one attempt to reach a NATS server may take, and the pause before trying the next
    #: server after a connection is lost. On a cluster a client moves to another node within
    #: about `nats_reconnect_wait_seconds` of losing its own; the stream's new leader is elected
    #: meanwhile (about 5 s measured for a killed leader, docs/scaling.md).
    nats_connect_timeout_seconds: float = 2.0
    nats_reconnect_wait_seconds: float = 0.5
    #: How long one attempt to connect to PostgreSQL may take. A dead primary behind a network
    #: that drops packets (rather than refusing them) holds each attempt this long before the
    #: next host of a multi-host URL is tried.
    database_connect_timeout_seconds: float = 5.0
    #: The longest pause between attempts to reach PostgreSQL again once it is gone: bounds how
    #: soon after a failover's promotion the services are consuming again (measured: SERVING
    #: within about a second of the promotion with the default).
    database_retry_max_seconds: float = 2.0
    #: JetStream's publish dedup window; the database's idempotency record is the real guarantee.
    stream_duplicate_window_seconds: int = 120
    #: Largest webhook body accepted. Stripe events are a few KB; an invoice with ten expanded
    #: lines stays well under 256 KiB, so 1 MiB leaves room without inviting abuse.
    max_body_bytes: int = 1024 * 1024
    #: Signature timestamp tolerance, as in every official Stripe SDK; the gateway applies it to
    #: timestamps ahead of its clock too.
    webhook_tolerance_seconds: int = 300
    #: How long a webhook body may take to arrive. Stripe sends a few KB at once; a client that
    #: trickles it is answered 408 rather than holding a connection open.
    webhook_read_timeout_seconds: float = 10.0
    #: How long the gateway waits for JetStream's ack before answering 503.
    publish_timeout_seconds: float = 2.0
    #: Webhooks a gateway process may be handling at once (reading, verifying, awaiting the ack);
    #: past it the gateway sheds with 503 + Retry-After at once rather than queueing into timeouts.
    #: At ~2,000 webhooks/s and a few ms each a gateway has 10-20 in hand; 128 bounds the queue
    #: to ~60 ms of its CPU. Measured on a shared 2-core machine (bench/results/HISTORY.md,
    #: 2026-12-07): 1,024 let sheds wait seconds behind admitted work; 128 held a plateau.
    gateway_max_in_flight: int = 128
    #: RPCs a service process runs at once (health excepted); past it: RESOURCE_EXHAUSTED at once.
    grpc_max_concurrent_rpcs: int = 256
    #: `serve` answers gRPC from a query process of its own (services.common.query_process), apart
    #: from the process that consumes: point reads no longer wait behind ingest (bench section 4).
    grpc_query_process: bool = False
    #: Attempts before a message is dead-lettered.
    max_deliver: int = 5
    #: Bounds recovery after a consumer crash: an unacked message is redelivered after this.
    ack_wait_seconds: float = 5.0
    #: Largest consumer batch. 1024 rather than 256: draining a backlog, each batch's fixed
    #: costs (its transaction, round trips, commit) spread over four times the events; measured
    #: interleaved (bench section 3, 2026-12-08): billing's own CPU per event 0.21 / 0.26 ->
    #: 0.17 / 0.20 ms, drains +30-40 % for billing and CRM export. A failing message's batch is
    #: redone one message at a time, so that pass is up to four times longer too.
    fetch_batch: int = 1024
    #: How long an idle fetch waits for a first message before the loop asks again. It returns
    #: with the first message that arrives, so this is not latency (measured: first event after a
    #: quiet spell in 3-5 ms p50 with 0.02, 1 and 5 s alike); it is what an idle mesh costs: each
    #: expiry is a status message from JetStream and a new pull request, a wake-up of the service
    #: and of nats-server. At 0.02 s an idle `syncmesh up` used 0.137 of a core, at 1 s 0.013
    #: (`scripts/bench --only idle`). Longer is not free either: a pull request lives in the
    #: nats-server that took it, so after that server restarts (or a cluster moves the consumer's
    #: leader) the service asks again only when its own request expires; 5 s keeps that within
    #: the ack wait and a cluster's leader election (about 5 s, docs/scaling.md).
    fetch_timeout_seconds: float = 5.0
    #: After a batch smaller than `fetch_batch`, the next fetch waits until this long after the
    #: last one returned, so events arriving faster than one per linger share a transaction, an
    #: ack round and a commit instead of paying one each (group commit). Never a wait after a
    #: quiet spell or in a backlog; in between an event waits at most this long. Off by default:
    #: in the bench's side-by-side run (concurrency 1) 5 and 10 ms left every service's batch
    #: size where it was (customer sees an event every ~10 ms, billing is already behind and
    #: batches by itself), so the latency bought nothing there (bench/results/HISTORY.md).
    fetch_linger_seconds: float = 0.0
    shutdown_grace_seconds: float = 20.0
    log_level: str = "INFO"
    #: Under dry run the services compute every record they would write, log it, and roll back.
    dry_run: bool = False
    #: gRPC TLS: a cert and key turn TLS on; a client CA on top requires client certificates.
    grpc_tls_cert_file: str | None = None
    grpc_tls_key_file: str | None = None
    grpc_tls_client_ca_file: str | None = None
    #: For the mesh's own gRPC clients (CLI tools, verify): the services' CA turns TLS on; a
    #: client certificate and key on top are presented for mutual TLS.
    grpc_tls_ca_file: str | None = None
    grpc_tls_client_cert_file: str | None = None
    grpc_tls_client_key_file: str | None = None
    #: gRPC callers the services accept: a file of `token identity role` lines (and `cert:CN
    #: identity role` for client certificates); set, or a client CA set, turns authentication on.
    grpc_tokens_file: str | None = None
    #: The bearer token the mesh's own gRPC clients present (`syncmesh up` writes a local one).
    grpc_token: str | None = None
    #: JWT bearer tokens (services.common.jwt_auth): the identity provider's public keys (a JWKS
    #: file, re-read when it changes), the `iss` and `aud` a token must carry (both required with
    #: the keys), the claim naming the role (None: `role`, else `roles`), and the clock skew
    #: allowed on `exp`/`nbf`/`iat`.
    grpc_jwks_file: str | None = None
    grpc_jwt_issuer: str | None = None
    grpc_jwt_audience: str | None = None
    grpc_jwt_role_claim: str | None = None
    grpc_jwt_leeway_seconds: int = 30
    #: Hosts a billing-portal return URL may point at (empty: any https host).
    portal_return_hosts: tuple[str, ...] = ()
    #: This process's NATS identity (SECURITY.md): a user and its password (best from a file,
    #: `SYNCMESH_NATS_PASSWORD_FILE`) or its NKEY seed file (the user then names only its reply
    #: inbox); unset connects anonymously, which a
    #: server with authorization refuses. Credentials in the URL (`nats://user:pw@host`) work too.
    nats_user: str | None = None
    nats_password: str | None = None
    nats_nkey_seed_file: str | None = None
    #: NATS TLS: the server's CA turns TLS on (a `tls://` URL too); a client certificate and key
    #: on top are presented when the server verifies clients.
    nats_tls_ca_file: str | None = None
    nats_tls_cert_file: str | None = None
    nats_tls_key_file: str | None = None

    def port_for(self, variable: str, default: int) -> int:
        """The port `variable` sets, or `default` when the environment leaves it alone."""
        return int(self.port_overrides.get(variable, default))

    def require(self, variables: Iterable[str], *, to_run: str) -> Settings:
        """Fail start-up naming every one of `variables` that is not set (`to_run` names the
        deployable in the message)."""
        missing = [name for name in variables if not _is_set(self, name)]
        if missing:
            raise SettingsError(
                f"{', '.join(missing)} must be set to run {to_run} "
                "(or leave the URLs unset and use `syncmesh up` for the embedded default)"
            )
        return self

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def _is_set(settings: Settings, variable: str) -> bool:
    """`SYNCMESH_NATS_URL` is set when `settings.nats_url` holds a value: variable and field
    share their name, so a deployable can require any setting without a table here."""
    field_name = variable.removeprefix("SYNCMESH_").lower()
    if not variable.startswith("SYNCMESH_") or not hasattr(settings, field_name):
        raise SettingsError(f"{variable} is not a setting of the mesh: it cannot be required")
    return bool(getattr(settings, field_name))


def _port_overrides(env: Mapping[str, str]) -> dict[str, int]:
    """Every `SYNCMESH_<NAME>_PORT` (or its `_FILE` twin) in `env`, each validated 0..65535.

    0 asks the OS for any free port (tests, several meshes on one machine); the bound port is
    printed at start-up."""
    variables = {name.removesuffix("_FILE") for name in env}
    return {
        name: _int(env, name, 0, minimum=0, maximum=65535)
        for name in sorted(variables)
        if PORT_VARIABLE.fullmatch(name) and _read(env, name) is not None
    }


def _read(env: Mapping[str, str], name: str) -> str | None:
    """The variable's value, or the contents of the file named by `<name>_FILE`."""
    direct = env.get(name)
    file_name = env.get(f"{name}_FILE")
    if direct is not None and file_name is not None:
        raise SettingsError(f"{name} and {name}_FILE are both set: keep one")
    if file_name is not None:
        try:
            return Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"{name}_FILE={file_name} cannot be read: {exc.strerror}") from exc
    if direct is None or direct.strip() == "":
        return None
    return direct.strip()


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int) -> int:
    raw = _read(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name}={value} is out of range ({minimum} to {maximum})")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float) -> float:
    raw = _read(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name}={value} is out of range ({minimum} to {maximum})")
    return value


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...], *, listed: bool = False) -> str | None:
    """One URL, or with `listed` a comma-separated list of them (NATS's seed servers).

    Only a list is split on commas: a PostgreSQL URL may name several hosts in libpq's form,
    `postgresql://user@host1:5432,host2:5432/db?target_session_attrs=read-write`, which is how a
    client follows a failover to the promoted primary without a proxy. A refused value is never
    echoed back: it may carry a password.
    """
    raw = _read(env, name)
    if raw is None:
        return None
    for url in raw.split(",") if listed else [raw]:
        if not url.strip().startswith(tuple(f"{s}://" for s in schemes)):
            raise SettingsError(f"{name} must start with one of {', '.join(s + '://' for s in schemes)}")
    return raw


def _database_url(env: Mapping[str, str], name: str, password_name: str) -> str | None:
    """A PostgreSQL URL with the password from `password_name` (or its `_FILE`) put into it, so
    the URL itself can live in a ConfigMap and the password in a mounted Secret. Neither value is
    ever echoed in a refusal."""
    url = _url(env, name, ("postgres", "postgresql"))
    password = _read(env, password_name)
    if url is None or password is None:
        return url
    scheme, rest = url.split("://", 1)
    authority, slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not at or not userinfo:
        raise SettingsError(f"{name} names no user, so {password_name} has nobody to log in as: add user@ to it")
    if ":" in userinfo:
        raise SettingsError(f"{name} carries a password and {password_name} is set too: keep one")
    return f"{scheme}://{userinfo}:{quote(password, safe='')}@{hosts}{slash}{tail}"


def _replicas(env: Mapping[str, str]) -> int:
    """1, 3 or 5: JetStream keeps a stream while a majority of its replicas is up, so an even count
    survives no more lost nodes than the odd count below it, and costs a copy more per message."""
    replicas = _int(env, "SYNCMESH_STREAM_REPLICAS", 1, minimum=1, maximum=5)
    if replicas % 2 == 0:
        raise SettingsError(
            f"SYNCMESH_STREAM_REPLICAS={replicas} is even: use {replicas - 1} or {replicas + 1} "
            "(a majority of an even count tolerates no more lost nodes than one replica fewer)"
        )
    return replicas


def parse_timestamp(name: str, raw: str) -> datetime:
    """An ISO-8601 date or date-time (UTC when no zone is given), or unix seconds."""
    try:
        if raw.isdigit():
            return datetime.fromtimestamp(int(raw), tz=UTC)
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):  # unix seconds beyond year 9999 overflow
        raise SettingsError(
            f"{name}={raw!r} is not a date: use ISO-8601 like 2025-01-31 or 2025-01-31T00:00:00Z"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


#: Where `syncmesh up` records the mesh it started, relative to the folder it runs in.
LOCAL_MESH_FILE = Path(".syncmesh") / "mesh.json"


def local_mesh_variables(folder: Path | None = None) -> dict[str, str]:
    """The SYNCMESH_* variables `syncmesh up` recorded in `<folder>/.syncmesh/mesh.json`, or
    nothing when there is no such file, it is unreadable, or the `up` that wrote it is gone."""
    path = (folder or Path.cwd()) / LOCAL_MESH_FILE
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        pid = int(recorded["pid"])
        variables = recorded["env"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(variables, dict) or not _process_alive(pid):
        return {}
    return {str(k): str(v) for k, v in variables.items() if str(k).startswith("SYNCMESH_")}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0
    return pid > 0


def with_local_mesh(env: Mapping[str, str], folder: Path | None = None) -> dict[str, str]:
    """`env` plus the local mesh's variables for whatever `env` leaves unset; a variable set in
    `env` directly or through its `_FILE` twin keeps its value.

    The local NATS identity (the operator's, `NATS_IDENTITY_VARIABLES`) is taken whole or not
    at all: an environment naming its own NATS server or identity keeps the local password away
    from that server, and a user is never paired with another identity's password."""
    merged = dict(env)
    own_nats = any(n in env for base in ("SYNCMESH_NATS_URL", *NATS_IDENTITY_VARIABLES) for n in (base, f"{base}_FILE"))
    for name, value in local_mesh_variables(folder).items():
        base = name.removesuffix("_FILE")
        if own_nats and base in NATS_IDENTITY_VARIABLES:
            continue
        if not any(n in env for n in (base, f"{base}_FILE")):
            merged[name] = value
    return merged


#: The variables that together name one NATS identity.
NATS_IDENTITY_VARIABLES = ("SYNCMESH_NATS_USER", "SYNCMESH_NATS_PASSWORD", "SYNCMESH_NATS_NKEY_SEED_FILE")


def load_settings(env: Mapping[str, str] | None = None, *, local_mesh: bool = True) -> Settings:
    """Read and validate every SYNCMESH_* variable; raise SettingsError naming the first bad one.

    Without `env`, the process environment, completed by the local mesh's file
    (`with_local_mesh`) unless `local_mesh` is False (the deployables: they must not pick up
    another process's ports)."""
    if env is None:
        env = with_local_mesh(os.environ) if local_mesh else os.environ

    secrets_raw = _read(env, "SYNCMESH_WEBHOOK_SECRETS")
    secrets = tuple(s.strip() for s in (secrets_raw or "").split(",") if s.strip())
    for secret in secrets:
        if not secret.startswith("whsec_"):
            raise SettingsError(
                "SYNCMESH_WEBHOOK_SECRETS holds a value that is not a webhook signing secret: "
                "each comma-separated entry starts with whsec_ (Stripe Dashboard > Webhooks > Signing secret)"
            )

    mode_raw = (_read(env, "SYNCMESH_MODE") or "test").lower()
    if mode_raw not in ("live", "test"):
        raise SettingsError(f"SYNCMESH_MODE={mode_raw!r} must be live or test")
    mode: Mode = "live" if mode_raw == "live" else "test"

    api_key = _read(env, "SYNCMESH_STRIPE_API_KEY")
    if api_key is not None:
        check_stripe_api_key(api_key, mode, variable="SYNCMESH_STRIPE_API_KEY")

    sync_start_raw = _read(env, "SYNCMESH_SYNC_START")
    sync_start = parse_timestamp("SYNCMESH_SYNC_START", sync_start_raw) if sync_start_raw else None

    log_level = (_read(env, "SYNCMESH_LOG_LEVEL") or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"SYNCMESH_LOG_LEVEL={log_level!r} must be DEBUG, INFO, WARNING or ERROR")

    dry_run_raw = (_read(env, "SYNCMESH_DRY_RUN") or "false").lower()
    if dry_run_raw not in ("true", "false", "1", "0", "yes", "no"):
        raise SettingsError(f"SYNCMESH_DRY_RUN={dry_run_raw!r} must be true or false")

    query_process_raw = (_read(env, "SYNCMESH_GRPC_QUERY_PROCESS") or "false").lower()
    if query_process_raw not in ("true", "false", "1", "0", "yes", "no"):
        raise SettingsError(f"SYNCMESH_GRPC_QUERY_PROCESS={query_process_raw!r} must be true or false")

    return Settings(
        nats_url=_url(env, "SYNCMESH_NATS_URL", ("nats", "tls"), listed=True),
        database_url=_database_url(env, "SYNCMESH_DATABASE_URL", "SYNCMESH_DATABASE_PASSWORD"),
        migration_database_url=_database_url(
            env, "SYNCMESH_MIGRATION_DATABASE_URL", "SYNCMESH_MIGRATION_DATABASE_PASSWORD"
        ),
        webhook_secrets=secrets,
        stripe_api_key=api_key,
        stripe_api_base=_url(env, "SYNCMESH_STRIPE_API_BASE", ("http", "https")),
        mode=mode,
        sync_start=sync_start,
        port_overrides=_port_overrides(env),
        stream_max_age_days=_int(env, "SYNCMESH_STREAM_MAX_AGE_DAYS", 400, minimum=1, maximum=3650),
        stream_replicas=_replicas(env),
        nats_connect_timeout_seconds=_float(env, "SYNCMESH_NATS_CONNECT_TIMEOUT_SECONDS", 2.0, minimum=0.1, maximum=60),
        nats_reconnect_wait_seconds=_float(env, "SYNCMESH_NATS_RECONNECT_WAIT_SECONDS", 0.5, minimum=0.05, maximum=30),
        database_connect_timeout_seconds=_float(
            env, "SYNCMESH_DATABASE_CONNECT_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=120
        ),
        database_retry_max_seconds=_float(env, "SYNCMESH_DATABASE_RETRY_MAX_SECONDS", 2.0, minimum=0.1, maximum=60),
        stream_duplicate_window_seconds=_int(
            env, "SYNCMESH_STREAM_DUPLICATE_WINDOW_SECONDS", 120, minimum=1, maximum=86400
        ),
        max_body_bytes=_int(env, "SYNCMESH_MAX_BODY_BYTES", 1024 * 1024, minimum=1024, maximum=16 * 1024 * 1024),
        webhook_tolerance_seconds=_int(env, "SYNCMESH_WEBHOOK_TOLERANCE_SECONDS", 300, minimum=1, maximum=3600),
        webhook_read_timeout_seconds=_float(
            env, "SYNCMESH_WEBHOOK_READ_TIMEOUT_SECONDS", 10.0, minimum=0.1, maximum=300
        ),
        publish_timeout_seconds=_float(env, "SYNCMESH_PUBLISH_TIMEOUT_SECONDS", 2.0, minimum=0.05, maximum=30),
        gateway_max_in_flight=_int(env, "SYNCMESH_GATEWAY_MAX_IN_FLIGHT", 128, minimum=1, maximum=1_000_000),
        grpc_max_concurrent_rpcs=_int(env, "SYNCMESH_GRPC_MAX_CONCURRENT_RPCS", 256, minimum=1, maximum=1_000_000),
        max_deliver=_int(env, "SYNCMESH_MAX_DELIVER", 5, minimum=1, maximum=100),
        ack_wait_seconds=_float(env, "SYNCMESH_ACK_WAIT_SECONDS", 5.0, minimum=0.5, maximum=600),
        fetch_batch=_int(env, "SYNCMESH_FETCH_BATCH", 1024, minimum=1, maximum=10000),
        fetch_timeout_seconds=_float(env, "SYNCMESH_FETCH_TIMEOUT_SECONDS", 5.0, minimum=0.001, maximum=30),
        fetch_linger_seconds=_float(env, "SYNCMESH_FETCH_LINGER_SECONDS", 0.0, minimum=0, maximum=1),
        shutdown_grace_seconds=_float(env, "SYNCMESH_SHUTDOWN_GRACE_SECONDS", 20.0, minimum=0, maximum=300),
        log_level=log_level,
        dry_run=dry_run_raw in ("true", "1", "yes"),
        grpc_query_process=query_process_raw in ("true", "1", "yes"),
        grpc_tls_cert_file=_read(env, "SYNCMESH_GRPC_TLS_CERT_FILE"),
        grpc_tls_key_file=_read(env, "SYNCMESH_GRPC_TLS_KEY_FILE"),
        grpc_tls_client_ca_file=_read(env, "SYNCMESH_GRPC_TLS_CLIENT_CA_FILE"),
        grpc_tls_ca_file=_read(env, "SYNCMESH_GRPC_TLS_CA_FILE"),
        grpc_tls_client_cert_file=_read(env, "SYNCMESH_GRPC_TLS_CLIENT_CERT_FILE"),
        grpc_tls_client_key_file=_read(env, "SYNCMESH_GRPC_TLS_CLIENT_KEY_FILE"),
        grpc_tokens_file=_read(env, "SYNCMESH_GRPC_TOKENS_FILE"),
        grpc_token=_read(env, "SYNCMESH_GRPC_TOKEN"),
        grpc_jwks_file=_read(env, "SYNCMESH_GRPC_JWKS_FILE"),
        grpc_jwt_issuer=_read(env, "SYNCMESH_GRPC_JWT_ISSUER"),
        grpc_jwt_audience=_read(env, "SYNCMESH_GRPC_JWT_AUDIENCE"),
        grpc_jwt_role_claim=_read(env, "SYNCMESH_GRPC_JWT_ROLE_CLAIM"),
        # Small on purpose: every second of leeway is a second an expired token still works.
        grpc_jwt_leeway_seconds=_int(env, "SYNCMESH_GRPC_JWT_LEEWAY_SECONDS", 30, minimum=0, maximum=300),
        portal_return_hosts=tuple(
            h.strip().lower() for h in (_read(env, "SYNCMESH_PORTAL_RETURN_HOSTS") or "").split(",") if h.strip()
        ),
        **_nats_identity(env),
    )


def _nats_identity(env: Mapping[str, str]) -> dict[str, str | None]:
    """The NATS identity and TLS files, checked together: a password without its user (or the
    reverse) and a client key without its certificate are refused before anything connects.
    Files are only named here; `services.common.bus` reads them, so a rotated file is read again
    at the next connection."""
    identity: dict[str, str | None] = {
        "nats_user": _read(env, "SYNCMESH_NATS_USER"),
        "nats_password": _read(env, "SYNCMESH_NATS_PASSWORD"),
        "nats_nkey_seed_file": _read(env, "SYNCMESH_NATS_NKEY_SEED_FILE"),
        "nats_tls_ca_file": _read(env, "SYNCMESH_NATS_TLS_CA_FILE"),
        "nats_tls_cert_file": _read(env, "SYNCMESH_NATS_TLS_CERT_FILE"),
        "nats_tls_key_file": _read(env, "SYNCMESH_NATS_TLS_KEY_FILE"),
    }
    # A user names the identity (and its private reply inbox); a password or an NKEY seed proves
    # it. An NKEY identity still sets its user, or its replies would go to the shared inbox its
    # permissions rightly refuse.
    if identity["nats_password"] and not identity["nats_user"]:
        raise SettingsError(
            "SYNCMESH_NATS_USER and SYNCMESH_NATS_PASSWORD (or SYNCMESH_NATS_PASSWORD_FILE) go together: set both"
        )
    if identity["nats_user"] and not (identity["nats_password"] or identity["nats_nkey_seed_file"]):
        raise SettingsError(
            "SYNCMESH_NATS_USER needs its proof: SYNCMESH_NATS_PASSWORD (or _FILE) or SYNCMESH_NATS_NKEY_SEED_FILE; "
            "the two go together: set both"
        )
    if identity["nats_password"] and identity["nats_nkey_seed_file"]:
        raise SettingsError(
            "SYNCMESH_NATS_PASSWORD and SYNCMESH_NATS_NKEY_SEED_FILE are both set: keep one proof of the identity"
        )
    if bool(identity["nats_tls_cert_file"]) != bool(identity["nats_tls_key_file"]):
        raise SettingsError("SYNCMESH_NATS_TLS_CERT_FILE and SYNCMESH_NATS_TLS_KEY_FILE go together: set both")
    for name in ("nats_nkey_seed_file", "nats_tls_ca_file", "nats_tls_cert_file", "nats_tls_key_file"):
        path = identity[name]
        if path and not Path(path).is_file():
            raise SettingsError(f"SYNCMESH_{name.upper()}={path} is not a readable file")
    return identity


def check_stripe_api_key(key: str, mode: Mode, *, variable: str) -> None:
    """Refuse keys that cannot do the job, or that would cross test data into a live ledger."""
    if key.startswith("pk_"):
        raise SettingsError(
            f"{variable} holds a publishable key (pk_…), which cannot read customers or invoices: "
            "use a secret key (sk_…) or a restricted key (rk_…) from Stripe Dashboard > Developers > API keys"
        )
    if not key.startswith(("sk_", "rk_")):
        raise SettingsError(f"{variable} is not a Stripe secret (sk_…) or restricted (rk_…) key")
    key_mode = "live" if key.startswith(("sk_live_", "rk_live_")) else "test"
    if key_mode != mode:
        raise SettingsError(
            f"{variable} is a {key_mode}-mode key but SYNCMESH_MODE={mode}: "
            f"use a {mode}-mode key, or set SYNCMESH_MODE={key_mode}"
        )
