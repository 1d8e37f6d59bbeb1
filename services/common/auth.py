"""Who is calling a gRPC method, and may they: identities, roles and each service's policy.

A caller proves who it is with a bearer token (`authorization: Bearer <token>` metadata): one
listed in `SYNCMESH_GRPC_TOKENS_FILE`, or a JWT signed by a key of `SYNCMESH_GRPC_JWKS_FILE`
(services.common.jwt_auth: its `sub` is the identity, a claim its role); or with a client
certificate the server's client CA signed (mutual TLS; its subject's common name is looked up in
the tokens file as `cert:<CN>`). Each identity has one role; roles are ordered, each allowing
what the ones below it allow:

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

It is re-read when it changes, so a token is added, rotated or revoked without a restart; so
is the JWKS file, so signing keys rotate the same way.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import hashlib
import hmac
import logging
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path

import grpc

from services.common.errors import AuthenticationError, PermissionDeniedError, SettingsError
from services.common.jwt_auth import JwtSettings, JwtVerifier
from services.common.settings import Settings
from services.common.watched_file import WatchedFile

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
    #: None: a proven identity with no role here (a JWT without one): refused everything.
    role: Role | None
    #: How the caller proved it: "token", "jwt" or "certificate".
    via: str


def highest_role(names: Iterable[str]) -> Role | None:
    """The highest of the mesh's roles among `names` (case ignored); names it does not know
    (another application's roles in the same claim) are not an error, and count for nothing."""
    known = [Role[name.upper()] for name in names if name.upper() in Role.__members__]
    return max(known, default=None)


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


def _tokens_file(path: str) -> WatchedFile[_Table]:
    return WatchedFile(path, lambda text: parse_tokens(text, source=path), variable="SYNCMESH_GRPC_TOKENS_FILE")


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

    def __init__(
        self, tokens_file: str | None, policy: Policy, *, service: str, jwt: JwtVerifier | None = None
    ) -> None:
        self.tokens = _tokens_file(tokens_file) if tokens_file else None
        self.jwt = jwt
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
            if self.jwt is not None and token.count(".") == 2:
                verified = self.jwt.verify(token)
                return Identity(verified.subject, highest_role(verified.roles), "jwt")
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
        if identity.role is None:
            raise PermissionDeniedError(
                f"{identity.name[:64]} has no reader, operator or admin role here: it needs {needed.name.lower()}"
            )
        if identity.role < needed:
            raise PermissionDeniedError(
                f"{identity.name[:64]} ({identity.role.name.lower()}) may not call {name}: "
                f"it needs {needed.name.lower()}"
            )

    def audited(self, method: str) -> bool:
        """Everything that needs more than reading: changes and bulk reads of personal data."""
        needed = self._needed(method)
        return needed is None or needed > Role.READER


def jwt_verifier_for(settings: Settings) -> JwtVerifier | None:
    """The JWT check `SYNCMESH_GRPC_JWKS_FILE` asks for (None without it); issuer and audience
    settings without a key set would silently do nothing, so they are refused."""
    if not settings.grpc_jwks_file:
        if settings.grpc_jwt_issuer or settings.grpc_jwt_audience or settings.grpc_jwt_role_claim:
            raise SettingsError(
                "SYNCMESH_GRPC_JWT_ISSUER, _AUDIENCE and _ROLE_CLAIM need SYNCMESH_GRPC_JWKS_FILE (the signing keys)"
            )
        return None
    return JwtVerifier(
        JwtSettings(
            jwks_file=settings.grpc_jwks_file,
            issuer=settings.grpc_jwt_issuer or "",
            audience=settings.grpc_jwt_audience or "",
            role_claim=settings.grpc_jwt_role_claim,
            leeway_seconds=settings.grpc_jwt_leeway_seconds,
        )
    )


def authenticator_for(settings: Settings, policy: Policy, *, service: str) -> Authenticator | None:
    """The guard for `service`, or None when neither `SYNCMESH_GRPC_TOKENS_FILE` nor
    `SYNCMESH_GRPC_JWKS_FILE` is set: then authentication is off (only a client CA, if set, stands
    between callers and every method, as before), which is said loudly at start; `syncmesh up`
    always sets a tokens file."""
    verifier = jwt_verifier_for(settings)
    if not settings.grpc_tokens_file and verifier is None:
        log.warning(
            "gRPC authentication is OFF for %s: set SYNCMESH_GRPC_TOKENS_FILE or SYNCMESH_GRPC_JWKS_FILE so "
            "that only known callers may read or change data (SECURITY.md)",
            service,
        )
        return None
    return Authenticator(settings.grpc_tokens_file, policy, service=service, jwt=verifier)


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
