"""JWT bearer tokens for gRPC callers: checked against the public keys of a JWKS file.

Larger installations do not hand out static tokens: an identity provider (Keycloak, Auth0,
Azure AD, Dex, a cloud's workload identity...) signs short-lived JWTs, and the services only
need its public keys. `SYNCMESH_GRPC_JWKS_FILE` names a JSON Web Key Set (`{"keys": [...]}`);
it is re-read when it changes, so keys rotate without a restart: publish the new key next to
the old one, let the provider sign with it, drop the old one once its tokens have expired.

A token is accepted only when all of these hold, and is UNAUTHENTICATED otherwise:
- its header names an asymmetric algorithm (RS/PS/ES 256-512, EdDSA) and that algorithm is the
  one of the key it names by `kid` (a key set of one key may be used without `kid`). `alg: none`
  and HMAC are refused whatever the keys, which also closes the public-key-as-HMAC-secret trick;
- the signature verifies with that key;
- `exp` is in the future, `nbf` and `iat` (when present) are not, each within
  `SYNCMESH_GRPC_JWT_LEEWAY_SECONDS` (default 30 s: clocks drift, tokens should not outlive it);
- `iss` is `SYNCMESH_GRPC_JWT_ISSUER` and `aud` is (or contains) `SYNCMESH_GRPC_JWT_AUDIENCE`,
  both required, so a token the same provider minted for another application is not a key to
  this one;
- `sub` names the caller: that is the identity recorded as having done something.

The role comes from a claim (`SYNCMESH_GRPC_JWT_ROLE_CLAIM`; by default `role`, else `roles`),
a string or a list of strings; the highest of reader, operator and admin found there counts. A
valid token without any of them is an identity with no role: PERMISSION_DENIED everywhere.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jwt

from services.common.errors import AuthenticationError, SettingsError
from services.common.watched_file import WatchedFile

#: Signature algorithms a token may use: asymmetric only, so the services hold no signing secret.
ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "ES256K", "EdDSA"}
)
#: Claims tried for the role when `SYNCMESH_GRPC_JWT_ROLE_CLAIM` is not set.
DEFAULT_ROLE_CLAIMS = ("role", "roles")
#: A bearer token longer than this is refused unread (a JWT of a few claims is under 2 KB).
MAX_TOKEN_CHARS = 8192
#: Tokens verified recently, kept so that a caller's next calls with the same token skip the
#: parsing and signature check (measured: most of a JWT call's authentication cost).
CACHED_TOKENS = 1024
_SUBJECT = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")


@dataclasses.dataclass(frozen=True)
class JwtSettings:
    jwks_file: str
    issuer: str
    audience: str
    #: Claim holding the role(s); None tries `role`, then `roles`. A dotted path (e.g.
    #: `realm_access.roles`) reaches into an object claim when no claim has the whole name.
    role_claim: str | None = None
    leeway_seconds: int = 30


@dataclasses.dataclass(frozen=True)
class VerifiedToken:
    """What a valid token says: who (`sub`) and the role names it carries (unchecked names)."""

    subject: str
    roles: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Verified:
    token: VerifiedToken
    expires: float
    #: The key set it was verified against: a changed set (a key retired) verifies it again.
    keys: Mapping[str | None, jwt.PyJWK]


def parse_jwks(text: str, *, source: str) -> Mapping[str | None, jwt.PyJWK]:
    """The key set's signing keys by `kid` (None: the one key of a set without ids).

    A key the mesh would never accept a signature from (HMAC, encryption-only, an unknown
    algorithm) is refused at start rather than ignored, so a misconfigured set is found by
    whoever deploys it, not by the first caller. Errors name the key's position, not its data.
    """
    try:
        document = json.loads(text)
    except ValueError:
        raise SettingsError(f'{source} is not JSON: expected a JSON Web Key Set ({{"keys": [...]}})') from None
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        raise SettingsError(f'{source} has no keys: expected a JSON Web Key Set ({{"keys": [...]}})')
    found: dict[str | None, jwt.PyJWK] = {}
    for position, data in enumerate(keys, start=1):
        if not isinstance(data, dict):
            raise SettingsError(f"{source} key {position} is not a JSON object")
        if data.get("use", "sig") != "sig":
            continue  # an encryption key published in the same set: not for signatures
        kid = data.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise SettingsError(f"{source} key {position}: kid must be a string")
        if "d" in data:
            raise SettingsError(
                f"{source} key {position} ({kid or 'no kid'}) is a private key: publish only the public key"
            )
        try:
            key = jwt.PyJWK(data)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise SettingsError(f"{source} key {position} ({kid or 'no kid'}) is not usable: {exc}") from None
        if key.algorithm_name not in ALGORITHMS:
            raise SettingsError(
                f"{source} key {position} ({kid or 'no kid'}) is for {key.algorithm_name}: only asymmetric "
                f"signature keys are accepted ({', '.join(sorted(ALGORITHMS))})"
            )
        if kid in found:
            raise SettingsError(
                f"{source} key {position}: kid {kid!r} is used twice"
                if kid
                else f"{source}: more than one key has no kid: give each key a kid"
            )
        found[kid] = key
    if not found:
        raise SettingsError(f"{source} has no signature keys (every key has a `use` other than sig)")
    if None in found and len(found) > 1:
        raise SettingsError(f"{source}: a key without kid among several: give each key a kid")
    return found


class JwtVerifier:
    """Checks bearer JWTs against the keys of `SYNCMESH_GRPC_JWKS_FILE`, re-read when it changes."""

    def __init__(self, config: JwtSettings) -> None:
        if not config.issuer or not config.audience:
            raise SettingsError(
                "SYNCMESH_GRPC_JWKS_FILE needs SYNCMESH_GRPC_JWT_ISSUER and SYNCMESH_GRPC_JWT_AUDIENCE: "
                "without them a token your identity provider issued to any other application would be accepted"
            )
        self.config = config
        self._verified: dict[str, _Verified] = {}
        self.keys = WatchedFile(
            config.jwks_file,
            lambda text: parse_jwks(text, source=f"SYNCMESH_GRPC_JWKS_FILE={config.jwks_file}"),
            variable="SYNCMESH_GRPC_JWKS_FILE",
        )

    def verify(self, token: str) -> VerifiedToken:
        """The token's subject and roles; AuthenticationError saying why it is refused.

        A token verified before is answered from memory while it is unexpired (by the same
        rule and leeway as the check) and the key set is the one it was verified against."""
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthenticationError(f"the bearer token is longer than {MAX_TOKEN_CHARS} characters")
        keys = self.keys.current()
        known = self._verified.get(token)
        if known is not None and known.keys is keys and known.expires > time.time() - self.config.leeway_seconds:
            return known.token
        verified, expires = self._verify(token, keys)
        if len(self._verified) >= CACHED_TOKENS:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[token] = _Verified(verified, expires, keys)
        return verified

    def _verify(self, token: str, keys: Mapping[str | None, jwt.PyJWK]) -> tuple[VerifiedToken, float]:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthenticationError("the bearer token is neither a known token nor a well-formed JWT") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            raise AuthenticationError(
                f"JWT algorithm {str(algorithm)[:20]!r} is not accepted: "
                f"sign with one of {', '.join(sorted(ALGORITHMS))}"
            )
        key = self._key(keys, header.get("kid"))
        if algorithm != key.algorithm_name:
            raise AuthenticationError(f"the JWT says {algorithm} but its key is for {key.algorithm_name}")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[key.algorithm_name],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("the JWT has expired: get a new one from the identity provider") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationError("the JWT is not valid yet (nbf or iat in the future: check the clocks)") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError(f"the JWT is not for this audience (expected {self.config.audience!r})") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationError(f"the JWT is not from the expected issuer ({self.config.issuer!r})") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationError("the JWT's signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"the JWT has no {exc.claim} claim") from None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError):
            raise AuthenticationError("the JWT is malformed") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not _SUBJECT.match(subject):
            raise AuthenticationError("the JWT's sub claim must be 1-200 printable characters")
        return VerifiedToken(subject, _role_names(claims, self.config.role_claim)), float(claims["exp"])

    def _key(self, keys: Mapping[str | None, jwt.PyJWK], kid: Any) -> jwt.PyJWK:
        if kid is None:
            if len(keys) == 1:
                return next(iter(keys.values()))
            raise AuthenticationError("the JWT has no kid, and the key set has several keys")
        if not isinstance(kid, str) or kid not in keys:
            raise AuthenticationError(
                f"the JWT's key id {str(kid)[:40]!r} is not in SYNCMESH_GRPC_JWKS_FILE (unknown, or rotated out)"
            )
        return keys[kid]


def _role_names(claims: Mapping[str, Any], claim: str | None) -> tuple[str, ...]:
    """The strings of the role claim (a string, or a list of them); other values count as none."""
    for name in (claim,) if claim else DEFAULT_ROLE_CLAIMS:
        value = _claim(claims, name)
        if value is None:
            continue
        if isinstance(value, str):
            return (value,)
        if isinstance(value, Sequence):
            return tuple(v for v in value if isinstance(v, str))
        return ()
    return ()


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """`name` itself, else a dotted path into object claims (`realm_access.roles`)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value
