"""Who is calling a gRPC method, and may they: identities, roles and each service's policy.

A caller proves who it is with a bearer token (`authorization: Bearer <token>` metadata) listed
in `SYNCMESH_GRPC_TOKENS_FILE`, or with a client certificate the server's client CA signed
(mutual TLS; its subject's common name is looked up in the same file as `cert:<CN>`). Each
identity has one role; roles are ordered, each allowing what the ones below it allow:

    reader    reads of the ledger and of the mappings
    operator  changes data (unlink, imports, sync to Stripe, portal links, settings) and reads
              personal data in bulk (exports)
    admin     everything

Every service declares, next to its servicer, the least role each of its methods needs
(`Policy`); a method without an entry is refused to everyone, so a new RPC is closed until
someone decides who may call it (and a test fails until they do). Refusals are
UNAUTHENTICATED (no identity, or an unknown one) or PERMISSION_DENIED (a known identity whose
role is too low). A servicer that records who did something asks `caller()`, never the request.

The tokens file, one entry a line (`#` starts a comment):

    <token or sha256:<hex of the token's SHA-256>>   <identity>   <role>
    cert:<certificate common name>                   <identity>   <role>

It is re-read when it changes, so a token is added, rotated or revoked without a restart.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import grpc

from services.common.errors import AuthenticationError, PermissionDeniedError, SettingsError
from services.common.settings import Settings

log = logging.getLogger(__name__)


class Role(enum.IntEnum):
    """Ordered: a role may do everything the roles below it may."""

    READER = 1
    OPERATOR = 2
    ADMIN = 3


#: Method name (as in the .proto, e.g. "GetCustomer") -> the least role that may call it.
Policy = Mapping[str, Role]


@dataclasses.dataclass(frozen=True)
class Identity:
    name: str
    role: Role
    #: How the caller proved it: "token" or "certificate".
    via: str


_CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("syncmesh_grpc_caller", default=None)


def caller() -> Identity | None:
    """The identity of the gRPC call being served (None when authentication is off)."""
    return _CALLER.get()


def caller_name(default: str = "anonymous") -> str:
    """Who to record as having done something: the authenticated caller, never the request."""
    identity = caller()
    return identity.name if identity is not None else default


@dataclasses.dataclass(frozen=True)
class _Table:
    by_token_hash: Mapping[bytes, Identity]
    by_certificate: Mapping[str, Identity]


def parse_tokens(text: str, *, source: str) -> _Table:
    """The tokens file's entries; a bad line stops start-up naming its line (never its token)."""
    tokens: dict[bytes, Identity] = {}
    certificates: dict[str, Identity] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise SettingsError(f"{source} line {number}: expected `<token> <identity> <role>`")
        secret, name, role_name = parts
        try:
            role = Role[role_name.upper()]
        except KeyError:
            raise SettingsError(
                f"{source} line {number}: role {role_name[:20]!r} is not reader, operator or admin"
            ) from None
        if secret.startswith("cert:"):
            certificates[secret.removeprefix("cert:")] = Identity(name, role, "certificate")
            continue
        if secret.startswith("sha256:"):
            try:
                digest = bytes.fromhex(secret.removeprefix("sha256:"))
            except ValueError:
                raise SettingsError(f"{source} line {number}: sha256: must be followed by 64 hex digits") from None
            if len(digest) != 32:
                raise SettingsError(f"{source} line {number}: sha256: must be followed by 64 hex digits")
        else:
            if len(secret) < 16:
                raise SettingsError(f"{source} line {number}: a token must be at least 16 characters")
            digest = hashlib.sha256(secret.encode()).digest()
        tokens[digest] = Identity(name, role, "token")
    return _Table(tokens, certificates)


class _TokensFile:
    """The tokens file, re-read when its modification time or size changes."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = None
        self._table = _Table({}, {})
        self.current()  # a missing or malformed file stops start-up, not the first call

    def current(self) -> _Table:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._table = parse_tokens(self.path.read_text(encoding="utf-8"), source=str(self.path))
                self._stamp = stamp
        except OSError as exc:
            if self._stamp is None:
                raise SettingsError(f"SYNCMESH_GRPC_TOKENS_FILE={self.path} cannot be read: {exc.strerror}") from exc
            log.warning("tokens file %s cannot be read (%s): keeping the entries read before", self.path, exc)
        except SettingsError:
            if self._stamp is None:
                raise
            log.exception("tokens file %s changed but is malformed: keeping the entries read before", self.path)
        return self._table


def _bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise AuthenticationError("authorization metadata must be `Bearer <token>`")
    return None


def _certificate_name(context: grpc.aio.ServicerContext) -> str | None:
    """The verified client certificate's common name (gRPC only lists a verified peer)."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode() if names else None


class Authenticator:
    """The runtime's guard (services.common.grpc_server.Guard) for one service's policy."""

    def __init__(self, tokens_file: str | None, policy: Policy, *, service: str) -> None:
        self.tokens = _TokensFile(tokens_file) if tokens_file else None
        self.policy = dict(policy)
        self.service = service

    def identify(self, context: grpc.aio.ServicerContext) -> Identity:
        table = self.tokens.current() if self.tokens else _Table({}, {})
        token = _bearer(context.invocation_metadata())
        if token is not None:
            digest = hashlib.sha256(token.encode()).digest()
            for known_hash, identity in table.by_token_hash.items():
                if hmac.compare_digest(known_hash, digest):
                    return identity
            raise AuthenticationError("the bearer token is not known (revoked or mistyped?)")
        common_name = _certificate_name(context)
        if common_name is not None:
            known = table.by_certificate.get(common_name)
            if known is None:
                raise PermissionDeniedError(f"certificate {common_name[:64]!r} has no role in the tokens file")
            return known
        raise AuthenticationError("no credentials: send `authorization: Bearer <token>` or a client certificate")

    def _needed(self, method: str) -> Role | None:
        return self.policy.get(method.rsplit("/", 1)[-1])

    async def admit(self, method: str, context: grpc.aio.ServicerContext) -> None:
        _CALLER.set(None)
        name = method.rsplit("/", 1)[-1]
        identity = self.identify(context)
        _CALLER.set(identity)
        needed = self._needed(method)
        if needed is None:
            raise PermissionDeniedError(f"{name} has no access policy in {self.service}: refused to everyone")
        if identity.role < needed:
            raise PermissionDeniedError(
                f"{identity.name} ({identity.role.name.lower()}) may not call {name}: it needs {needed.name.lower()}"
            )

    def audited(self, method: str) -> bool:
        """Everything that needs more than reading: changes and bulk reads of personal data."""
        needed = self._needed(method)
        return needed is None or needed > Role.READER

    def who(self) -> str:
        return caller_name(default="unauthenticated")


def authenticator_for(settings: Settings, policy: Policy, *, service: str) -> Authenticator | None:
    """The guard for `service`, or None when `SYNCMESH_GRPC_TOKENS_FILE` is not set: then
    authentication is off (only a client CA, if set, stands between callers and every method, as
    before), which is said loudly at start; `syncmesh up` always sets one."""
    if not settings.grpc_tokens_file:
        log.warning(
            "gRPC authentication is OFF for %s: set SYNCMESH_GRPC_TOKENS_FILE so that only known "
            "callers may read or change data (SECURITY.md)",
            service,
        )
        return None
    return Authenticator(settings.grpc_tokens_file, policy, service=service)


def local_tokens(data_dir: Path) -> tuple[Path, str]:
    """The tokens file and admin token of a local mesh (`syncmesh up`), made on first use under
    `data_dir` readable by its owner only, so the tools run from there are let in and others not."""
    tokens_file, token_file = data_dir / "grpc-tokens", data_dir / "grpc-token"
    if not tokens_file.exists() or not token_file.exists():
        token = secrets.token_urlsafe(32)
        for path, text in ((token_file, f"{token}\n"), (tokens_file, f"{token} local-admin admin\n")):
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(text, encoding="utf-8")
    return tokens_file, token_file.read_text(encoding="utf-8").strip()
