"""NATS identities of the mesh and what each may do, derived from the roster.

Every connection to NATS authenticates, and each identity may publish and subscribe only what its
job needs (SECURITY.md has the table):

    gateway     publish `stripe.>` with acks; walk STRIPE with throwaway consumers (the sweeper
                reads which events the stream holds); create and update the mesh's streams.
    <service>   consume its own durable on STRIPE (`<name>`, `<name>-dryrun` under dry run) and
                nobody else's; publish its domain events `syncmesh.<name>.>` and its dead letters
                `dlq.<name>` (dashes spelt `_`, as the runtime does); create a missing stream.
    operator    the ops tools (dlq, replay, backfill, sweep, verify): walk STRIPE and SYNCMESH_DLQ,
                read and delete dead letters, publish `stripe.>` (redrive, backfill, sweep).
    subscriber  another team: read the domain events (`syncmesh.>`, stream SYNCMESH_EVENTS) with
                consumers of its own; nothing else, the raw Stripe events carry personal data.
    admin       everything; for tests and break-glass only, never given to a process of the mesh.

Nobody but admin may delete or purge a stream, or touch another's durable consumer. Replies
(publish acks, fetched messages) go to a private inbox per mesh identity (`_INBOX_<user>`,
`services.common.bus.inbox_prefix`): on the shared `_INBOX.>` one identity could read the
messages delivered to another.

The roster (services/registry.py) is the only input: a fourth service gets its identity from its
`DEFINITION` like everything else. The runtime cannot import the roster, so this lives in the
launcher, which writes the embedded server's config (`syncmesh up`) and prints the Kubernetes one
(`syncmesh nats-auth`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from services.common.bus import DLQ_STREAM, EVENTS_STREAM, STRIPE_STREAM, inbox_prefix

Role = Literal["gateway", "service", "operator", "subscriber", "admin"]

API = "$JS.API"
STREAMS = (STRIPE_STREAM, EVENTS_STREAM, DLQ_STREAM)
GATEWAY_USER = "gateway"
OPERATOR_USER = "operator"
ADMIN_USER = "admin"
#: The subscriber identity `syncmesh up` creates, so a team can try its consumer on a local mesh.
LOCAL_SUBSCRIBER = "subscriber"


@dataclass(frozen=True)
class NatsIdentity:
    """One NATS user and its permissions (subjects as nats-server takes them; deny wins)."""

    user: str
    role: Role
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()


def subject_token(service: str) -> str:
    """`crm-export` -> `crm_export`: how a service's name appears in its subjects."""
    return service.replace("-", "_")


def durables(service: str) -> tuple[str, ...]:
    """The durable consumers a service binds (`services.common.consumer`): its own, and its dry run's."""
    return (service, f"{service}-dryrun")


def _provision(*, update: bool) -> list[str]:
    """Look up the mesh's streams and create a missing one (every process does at start-up);
    with `update`, also change one whose settings moved (retention, replicas)."""
    actions = ("INFO", "CREATE", "UPDATE") if update else ("INFO", "CREATE")
    return [f"{API}.STREAM.{action}.{stream}" for stream in STREAMS for action in actions]


def _consume(stream: str, consumer: str) -> list[str]:
    """Create (either API form), inspect, pull from and ack one named durable consumer."""
    return [
        f"{API}.CONSUMER.CREATE.{stream}.{consumer}",
        f"{API}.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        f"{API}.CONSUMER.INFO.{stream}.{consumer}",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    ]


def _walk(stream: str) -> list[str]:
    """Throwaway named consumers on `stream` (`services.common.stream.StreamReader`): create,
    inspect, pull, delete; they never ack (AckPolicy.NONE)."""
    return [
        f"{API}.CONSUMER.CREATE.{stream}.*",
        f"{API}.CONSUMER.CREATE.{stream}.*.>",
        f"{API}.CONSUMER.INFO.{stream}.*",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"{API}.CONSUMER.DELETE.{stream}.*",
    ]


def _hands_off(services: Iterable[str]) -> list[str]:
    """What a walker may not do to the services' durables: create (or reconfigure) one, pull
    from it (which would steal its messages) or delete it."""
    denied = []
    for service in services:
        for durable in durables(service):
            denied += [
                f"{API}.CONSUMER.CREATE.{STRIPE_STREAM}.{durable}",
                f"{API}.CONSUMER.CREATE.{STRIPE_STREAM}.{durable}.>",
                f"{API}.CONSUMER.DURABLE.CREATE.{STRIPE_STREAM}.{durable}",
                f"{API}.CONSUMER.MSG.NEXT.{STRIPE_STREAM}.{durable}",
                f"{API}.CONSUMER.DELETE.{STRIPE_STREAM}.{durable}",
            ]
    return denied


def _inbox(user: str) -> str:
    return f"{inbox_prefix(user)}.>"


def gateway_identity(services: Sequence[str]) -> NatsIdentity:
    return NatsIdentity(
        GATEWAY_USER,
        "gateway",
        publish=("stripe.>", *_provision(update=True), *_walk(STRIPE_STREAM)),
        subscribe=(_inbox(GATEWAY_USER),),
        publish_deny=tuple(_hands_off(services)),
    )


def service_identity(service: str) -> NatsIdentity:
    token = subject_token(service)
    consume = [subject for durable in durables(service) for subject in _consume(STRIPE_STREAM, durable)]
    return NatsIdentity(
        service,
        "service",
        publish=(f"syncmesh.{token}.>", f"dlq.{token}", *_provision(update=False), *consume),
        subscribe=(_inbox(service),),
    )


def operator_identity(services: Sequence[str]) -> NatsIdentity:
    return NatsIdentity(
        OPERATOR_USER,
        "operator",
        publish=(
            "stripe.>",
            *_provision(update=True),
            f"{API}.INFO",
            f"{API}.STREAM.NAMES",
            f"{API}.STREAM.LIST",
            f"{API}.CONSUMER.NAMES.*",
            f"{API}.CONSUMER.LIST.*",
            f"{API}.CONSUMER.INFO.*.*",
            *_walk(STRIPE_STREAM),
            *_walk(DLQ_STREAM),
            f"{API}.STREAM.MSG.GET.{DLQ_STREAM}",
            f"{API}.DIRECT.GET.{DLQ_STREAM}",
            f"{API}.STREAM.MSG.DELETE.{DLQ_STREAM}",
        ),
        subscribe=(_inbox(OPERATOR_USER),),
        publish_deny=tuple(_hands_off(services)),
    )


def subscriber_identity(user: str) -> NatsIdentity:
    """Another team's identity: its own consumers on SYNCMESH_EVENTS, reading `syncmesh.>`.

    It keeps NATS's default inbox (`_INBOX.>`), so a stock client works unchanged; the mesh's
    own identities reply elsewhere, so that inbox carries no raw Stripe event."""
    if user in (GATEWAY_USER, OPERATOR_USER, ADMIN_USER):
        raise ValueError(f"{user!r} is one of the mesh's own identities")
    stream = EVENTS_STREAM
    return NatsIdentity(
        user,
        "subscriber",
        publish=(
            f"{API}.INFO",
            f"{API}.STREAM.NAMES",
            f"{API}.STREAM.INFO.{stream}",
            f"{API}.CONSUMER.CREATE.{stream}",
            f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.DURABLE.CREATE.{stream}.*",
            f"{API}.CONSUMER.INFO.{stream}.*",
            f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
            f"{API}.CONSUMER.DELETE.{stream}.*",
            f"$JS.ACK.{stream}.>",
            f"$JS.FC.{stream}.>",
        ),
        subscribe=("syncmesh.>", "_INBOX.>"),
    )


def admin_identity() -> NatsIdentity:
    return NatsIdentity(ADMIN_USER, "admin", publish=(">",), subscribe=(">",))


def mesh_identities(services: Sequence[str]) -> list[NatsIdentity]:
    """The gateway, one identity per service of the roster, and the operator, in that order."""
    return [gateway_identity(services), *(service_identity(s) for s in services), operator_identity(services)]


def roster_identities() -> list[NatsIdentity]:
    """`mesh_identities` for the services of this build (services/registry.py)."""
    from services import registry

    return mesh_identities(registry.names())


# -- nats-server configuration ------------------------------------------------------------------


def _permissions(identity: NatsIdentity) -> dict[str, object]:
    publish: dict[str, object] = {"allow": list(identity.publish)}
    if identity.publish_deny:
        publish["deny"] = list(identity.publish_deny)
    subscribe: dict[str, object] = {"allow": list(identity.subscribe)}
    if identity.subscribe_deny:
        subscribe["deny"] = list(identity.subscribe_deny)
    return {"publish": publish, "subscribe": subscribe}


def render_authorization(identities: Iterable[NatsIdentity], passwords: Mapping[str, str]) -> str:
    """The nats-server `authorization { users = [...] }` block.

    `passwords` maps each user to its password, or to `$VARIABLE` for a password nats-server
    reads from its environment (Kubernetes: a Secret mounted as a variable). JSON is valid
    nats-server configuration, and quoting keeps the `$` of `$JS.API` literal."""
    users = []
    for identity in identities:
        password = passwords[identity.user]
        shown = password if password.startswith("$") else json.dumps(password)
        users.append(
            f"    {{user: {json.dumps(identity.user)}, password: {shown}, "
            f"permissions: {json.dumps(_permissions(identity))}}}"
        )
    return "authorization {\n  users = [\n" + "\n".join(users) + "\n  ]\n}\n"


def password_variable(user: str) -> str:
    """The environment variable nats-server reads `user`'s password from in Kubernetes."""
    return "NATS_PASSWORD_" + "".join(c if c.isalnum() else "_" for c in user).upper()


# -- local credentials (`syncmesh up`) ----------------------------------------------------------


@dataclass(frozen=True)
class LocalCredentials:
    """Passwords for the embedded server, one 0600 file per user under `folder`, kept across
    restarts; delete a file and restart `syncmesh up` to rotate that password."""

    folder: Path

    def password_file(self, user: str) -> Path:
        return self.folder / f"{user}.password"

    def password(self, user: str) -> str:
        path = self.password_file(user)
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            self.folder.chmod(0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(secrets.token_hex(24) + "\n")
        return path.read_text(encoding="utf-8").strip()

    def authorization(self, identities: Sequence[NatsIdentity]) -> str:
        """The authorization block for `identities`, creating any password still missing."""
        return render_authorization(identities, {i.user: self.password(i.user) for i in identities})


# -- Kubernetes (the NATS Helm chart) -----------------------------------------------------------

#: The Secret, in NATS's namespace, that holds one password per identity under the user's name;
#: the mesh's namespace holds the same keys in `syncmesh-nats` (k8s/README.md).
HELM_SECRET = "nats-users"


def helm_values(identities: Iterable[NatsIdentity]) -> dict[str, object]:
    """The part of k8s/infra/nats-values.yaml that declares the users: an authorization block
    whose passwords nats-server reads from its environment (`<< $VAR >>` is the chart's syntax
    for an unquoted value), and those variables taken from the `nats-users` Secret."""
    identities = list(identities)
    users = [
        {"user": i.user, "password": f"<< ${password_variable(i.user)} >>", "permissions": _permissions(i)}
        for i in identities
    ]
    env = {
        password_variable(i.user): {"valueFrom": {"secretKeyRef": {"name": HELM_SECRET, "key": i.user}}}
        for i in identities
    }
    return {"config": {"merge": {"authorization": {"users": users}}}, "container": {"env": env}}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`syncmesh nats-auth`: print the NATS users of this build's roster, for the Helm values
    (k8s/infra/nats-values.yaml) or a nats-server config, with any subscriber teams added."""
    parser = subparsers.add_parser(
        "nats-auth", help="print the NATS users and permissions of this roster (Helm values or nats-server config)"
    )
    parser.add_argument("--format", choices=("helm", "conf"), default="helm")
    parser.add_argument(
        "--subscriber", action="append", default=[], metavar="TEAM", help="add a subscriber identity (repeatable)"
    )
    parser.set_defaults(func=_cmd_nats_auth)


def _cmd_nats_auth(args: argparse.Namespace) -> int:
    identities = [*roster_identities(), *(subscriber_identity(team) for team in args.subscriber)]
    if args.format == "conf":
        print(render_authorization(identities, {i.user: f"${password_variable(i.user)}" for i in identities}), end="")
    else:
        print(json.dumps(helm_values(identities), indent=2))
    return 0
