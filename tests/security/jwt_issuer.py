"""A test identity provider: signing keys, their JWKS file, and tokens good or bad on purpose."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

ISSUER = "https://idp.example.test/realms/finance"
AUDIENCE = "syncmesh-grpc"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """Keys by kid (RSA `k1`, `k2`, EC `e1`) and one `rogue` key that no JWKS lists."""

    def __init__(self) -> None:
        self.keys: dict[str, PrivateKeyTypes] = {
            "k1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "k2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "e1": ec.generate_private_key(ec.SECP256R1()),
            "rogue": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        }

    def jwk(self, kid: str) -> dict[str, Any]:
        key = self.keys[kid]
        public = key.public_key()  # type: ignore[union-attr]
        if isinstance(key, ec.EllipticCurvePrivateKey):
            data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
            data["alg"] = "ES256"
        else:
            data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
            data["alg"] = "RS256"
        return {**data, "kid": kid, "use": "sig"}

    def write_jwks(self, path: Path, *kids: str) -> Path:
        path.write_text(json.dumps({"keys": [self.jwk(kid) for kid in kids]}))
        return path

    def public_pem(self, kid: str) -> bytes:
        return (
            self.keys[kid]
            .public_key()
            .public_bytes(  # type: ignore[union-attr]
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def claims(self, subject: str = "alice@example.com", role: Any = "operator", **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + 300,
        }
        if role is not None:
            claims["role"] = role
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def token(
        self, kid: str = "k1", *, sign_with: str | None = None, header: dict[str, Any] | None = None, **claims: Any
    ) -> str:
        """A token for `claims` (see `claims`), naming `kid`, signed by `sign_with` (default: that key)."""
        key = self.keys[sign_with or kid]
        algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
        return jwt.encode(self.claims(**claims), key, algorithm=algorithm, headers={"kid": kid, **(header or {})})

    def unsigned(self, kid: str = "k1", **claims: Any) -> str:
        """`alg: none`: no signature at all."""
        head = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
        body = _b64(json.dumps(self.claims(**claims)).encode())
        return f"{head}.{body}."

    def hmac_with_public_key(self, kid: str = "k1", **claims: Any) -> str:
        """HS256 keyed with the RSA public key: the classic algorithm-confusion forgery."""
        head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        body = _b64(json.dumps(self.claims(**claims)).encode())
        signature = hmac.new(self.public_pem(kid), f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{_b64(signature)}"

    def tampered(self, kid: str = "k1", **claims: Any) -> str:
        """A valid reader token whose payload was rewritten to say admin, signature kept."""
        head, _, signature = self.token(kid, role="reader", **claims).split(".")
        body = _b64(json.dumps(self.claims(role="admin", **claims)).encode())
        return f"{head}.{body}.{signature}"
