"""JWT bearer tokens on gRPC (issue 17), through the customer service's real gRPC server: a token
is let in only when its signature verifies with a key of the JWKS file, its algorithm is that
key's, and it is current, from the configured issuer, for the configured audience; everything
else is UNAUTHENTICATED. A valid token whose role is too low is PERMISSION_DENIED. The key set is
re-read when it changes, so keys rotate without a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from syncmesh.customer.v1 import customer_service_pb2 as pb
from syncmesh.customer.v1 import customer_service_pb2_grpc as pb_grpc

from services.common.auth import Role, highest_role, jwt_verifier_for
from services.common.errors import AuthenticationError, SettingsError
from services.common.grpc_client import bearer_interceptors
from services.common.jwt_auth import JwtSettings, JwtVerifier, parse_jwks
from services.common.service import ServiceRuntime
from services.common.settings import Settings, load_settings
from services.customer.app import DEFINITION
from tests.security.jwt_issuer import AUDIENCE, ISSUER, Issuer


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


@pytest.fixture
def jwks_file(tmp_path: Path, issuer: Issuer) -> Path:
    return issuer.write_jwks(tmp_path / "jwks.json", "k1", "e1")


def jwt_settings(settings: Settings, jwks_file: Path) -> Settings:
    return settings.with_overrides(
        grpc_jwks_file=str(jwks_file), grpc_jwt_issuer=ISSUER, grpc_jwt_audience=AUDIENCE, grpc_jwt_leeway_seconds=30
    )


@pytest.fixture
async def customer(settings: Settings, jwks_file: Path) -> AsyncIterator[ServiceRuntime]:
    """The customer service with JWT authentication only (no tokens file)."""
    runtime = ServiceRuntime(DEFINITION, jwt_settings(settings, jwks_file), port=0)
    await runtime.start()
    try:
        await runtime.wait_ready(30)
        yield runtime
    finally:
        await runtime.stop()


async def _call(runtime: ServiceRuntime, token: str | None, method: str = "ListCustomers") -> grpc.StatusCode:
    interceptors = bearer_interceptors(token) if token is not None else None
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}", interceptors=interceptors) as channel:
        stub = pb_grpc.CustomerServiceStub(channel)
        try:
            if method == "ListCustomers":
                await stub.ListCustomers(pb.ListCustomersRequest(), timeout=10)
            else:
                await stub.UnlinkCustomer(pb.UnlinkCustomerRequest(erp_customer_id="CUST-JWT-1"), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


#: Tokens that must not let anyone in, each with what is wrong with it.
REFUSED: dict[str, Callable[[Issuer], str]] = {
    "expired": lambda i: i.token(exp=int(time.time()) - 120, iat=int(time.time()) - 600),
    "wrong audience": lambda i: i.token(aud="another-application"),
    "one of several audiences, none ours": lambda i: i.token(aud=["billing-ui", "reports"]),
    "wrong issuer": lambda i: i.token(iss="https://evil.example.test/"),
    "signed by a key the JWKS does not list, claiming k1": lambda i: i.token("k1", sign_with="rogue"),
    "unknown kid": lambda i: i.token("rogue"),
    "payload rewritten after signing": lambda i: i.tampered(),
    "alg none": lambda i: i.unsigned(),
    "HS256 keyed with the public key": lambda i: i.hmac_with_public_key(),
    "RS256 header on the EC key": lambda i: i.token("e1", sign_with="k1"),
    "not valid before a minute from now": lambda i: i.token(nbf=int(time.time()) + 60),
    "issued in the future": lambda i: i.token(iat=int(time.time()) + 600, exp=int(time.time()) + 900),
    "no exp": lambda i: i.token(exp=None),
    "no sub": lambda i: i.token(subject=None),
    "no aud": lambda i: i.token(aud=None),
    "garbage with two dots": lambda i: "not.a.jwt",
}


async def test_each_bad_token_is_unauthenticated_and_good_ones_get_their_role(
    customer: ServiceRuntime, issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sent = []
    for name, make in REFUSED.items():
        token = make(issuer)
        sent.append(token)
        assert await _call(customer, token) == grpc.StatusCode.UNAUTHENTICATED, name
        # The same token is refused for a change too (a refused identity never reaches the policy).
        assert await _call(customer, token, "UnlinkCustomer") == grpc.StatusCode.UNAUTHENTICATED, name

    assert await _call(customer, issuer.token(role="reader")) == grpc.StatusCode.OK
    assert await _call(customer, issuer.token("e1", role="reader")) == grpc.StatusCode.OK  # ES256 key
    # A clock a little behind: expired 10 s ago is inside the 30 s leeway, 120 s ago is not (above).
    assert await _call(customer, issuer.token(role="reader", exp=int(time.time()) - 10)) == grpc.StatusCode.OK
    # One audience among several is ours.
    assert await _call(customer, issuer.token(role="reader", aud=["reports", AUDIENCE])) == grpc.StatusCode.OK

    # Valid tokens whose role is too low, or who have none of ours: PERMISSION_DENIED.
    reader = issuer.token(role="reader")
    assert await _call(customer, reader, "UnlinkCustomer") == grpc.StatusCode.PERMISSION_DENIED
    assert await _call(customer, issuer.token(role=None)) == grpc.StatusCode.PERMISSION_DENIED
    assert await _call(customer, issuer.token(role=["viewer", "finance"])) == grpc.StatusCode.PERMISSION_DENIED
    # Enough role: past authorisation (the customer does not exist: NOT_FOUND, not a refusal).
    operator = issuer.token(role=None, roles=["viewer", "operator"])
    assert await _call(customer, operator, "UnlinkCustomer") == grpc.StatusCode.NOT_FOUND
    # A token is a credential: never in a log line, accepted or refused.
    signatures = [t.rsplit(".", 1)[1] for t in (reader, operator, *sent) if len(t.rsplit(".", 1)[1]) > 20]
    logged = [f"{record.getMessage()} {record.__dict__}" for record in caplog.records]
    assert len(signatures) > 10 and logged
    assert not any(signature in line for signature in signatures for line in logged)


async def test_keys_rotate_through_the_jwks_file_without_a_restart(
    customer: ServiceRuntime, issuer: Issuer, jwks_file: Path
) -> None:
    old, new = issuer.token("k1", role="reader"), issuer.token("k2", role="reader")
    assert await _call(customer, old) == grpc.StatusCode.OK
    assert await _call(customer, new) == grpc.StatusCode.UNAUTHENTICATED  # k2 not published yet

    issuer.write_jwks(jwks_file, "k1", "k2")  # rotation: both keys published
    assert await _call(customer, old) == grpc.StatusCode.OK
    assert await _call(customer, new) == grpc.StatusCode.OK

    issuer.write_jwks(jwks_file, "k2")  # k1 retired: its tokens stop working at once
    assert await _call(customer, old) == grpc.StatusCode.UNAUTHENTICATED
    assert await _call(customer, new) == grpc.StatusCode.OK

    await asyncio.to_thread(jwks_file.write_text, "{ this is not JSON")  # a broken edit keeps the last good set
    assert await _call(customer, new) == grpc.StatusCode.OK


async def test_static_tokens_and_jwts_work_side_by_side(settings: Settings, tmp_path: Path, issuer: Issuer) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("static-reader-token-0123456789 ci reader\n")
    jwks = issuer.write_jwks(tmp_path / "jwks.json", "k1")
    runtime = ServiceRuntime(
        DEFINITION, jwt_settings(settings, jwks).with_overrides(grpc_tokens_file=str(tokens)), port=0
    )
    await runtime.start()
    try:
        await runtime.wait_ready(30)
        assert await _call(runtime, "static-reader-token-0123456789") == grpc.StatusCode.OK
        assert await _call(runtime, issuer.token(role="reader")) == grpc.StatusCode.OK
        assert await _call(runtime, "unknown-static-token-0123456789") == grpc.StatusCode.UNAUTHENTICATED
        assert await _call(runtime, None) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await runtime.stop()


# -- the parts without a server ------------------------------------------------------------------


def _verifier(
    tmp_path: Path, issuer: Issuer, *kids: str, leeway: int = 30, role_claim: str | None = None
) -> JwtVerifier:
    path = issuer.write_jwks(tmp_path / "jwks.json", *kids)
    return JwtVerifier(JwtSettings(str(path), ISSUER, AUDIENCE, role_claim=role_claim, leeway_seconds=leeway))


def test_the_leeway_is_the_configured_one(tmp_path: Path, issuer: Issuer) -> None:
    late = issuer.token(exp=int(time.time()) - 10)
    _verifier(tmp_path, issuer, "k1", leeway=30).verify(late)
    with pytest.raises(AuthenticationError, match="expired"):
        _verifier(tmp_path, issuer, "k1", leeway=0).verify(late)
    assert load_settings({}).grpc_jwt_leeway_seconds == 30
    assert load_settings({"SYNCMESH_GRPC_JWT_LEEWAY_SECONDS": "5"}).grpc_jwt_leeway_seconds == 5
    with pytest.raises(SettingsError, match="SYNCMESH_GRPC_JWT_LEEWAY_SECONDS"):
        load_settings({"SYNCMESH_GRPC_JWT_LEEWAY_SECONDS": "3600"})


def test_the_role_claim_is_configurable_and_the_highest_known_role_counts(tmp_path: Path, issuer: Issuer) -> None:
    default = _verifier(tmp_path, issuer, "k1")
    assert default.verify(issuer.token(role="Admin")).roles == ("Admin",)
    assert default.verify(issuer.token(role=None, roles=["reader", "operator"])).roles == ("reader", "operator")
    nested = _verifier(tmp_path, issuer, "k1", role_claim="realm_access.roles")
    token = issuer.token(role="admin", realm_access={"roles": ["offline_access", "reader"]})
    assert nested.verify(token).roles == ("offline_access", "reader")  # `role` is not the configured claim
    assert highest_role(["offline_access", "reader", "OPERATOR"]) is Role.OPERATOR
    assert highest_role(["viewer"]) is None
    assert default.verify(issuer.token(subject="svc-reports")).subject == "svc-reports"


def test_an_unsafe_or_broken_key_set_stops_start_up(tmp_path: Path, issuer: Issuer) -> None:
    private = json.loads(jwt_private_jwk(issuer))
    hmac_key = {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "kid": "h1", "alg": "HS256"}
    for keys, message in (
        ([private], "private key"),
        ([hmac_key], "only asymmetric"),
        ([issuer.jwk("k1"), {**issuer.jwk("k2"), "kid": "k1"}], "used twice"),
        ([{k: v for k, v in issuer.jwk("k1").items() if k != "kid"}, issuer.jwk("k2")], "give each key a kid"),
        ([], "no keys"),
    ):
        with pytest.raises(SettingsError, match=message):
            parse_jwks(json.dumps({"keys": keys}), source="jwks")
    with pytest.raises(SettingsError, match="not JSON"):
        parse_jwks("-----BEGIN PUBLIC KEY-----", source="jwks")
    jwks = issuer.write_jwks(tmp_path / "jwks.json", "k1")
    with pytest.raises(SettingsError, match="SYNCMESH_GRPC_JWT_ISSUER and SYNCMESH_GRPC_JWT_AUDIENCE"):
        jwt_verifier_for(Settings(grpc_jwks_file=str(jwks), grpc_jwt_issuer=ISSUER))
    with pytest.raises(SettingsError, match="need SYNCMESH_GRPC_JWKS_FILE"):
        jwt_verifier_for(Settings(grpc_jwt_audience=AUDIENCE))
    with pytest.raises(SettingsError, match="cannot be read"):
        jwt_verifier_for(Settings(grpc_jwks_file=str(tmp_path / "missing"), grpc_jwt_issuer="i", grpc_jwt_audience="a"))


def jwt_private_jwk(issuer: Issuer) -> str:
    import jwt

    return jwt.algorithms.RSAAlgorithm.to_jwk(issuer.keys["k1"])  # type: ignore[arg-type]


def test_a_remembered_token_still_expires_and_still_needs_its_key(tmp_path: Path, issuer: Issuer) -> None:
    """Verified tokens are remembered (a caller's next calls skip the signature check), never
    beyond their `exp` nor past the retirement of the key that signed them."""
    verifier = _verifier(tmp_path, issuer, "k1", "k2", leeway=0)
    short = issuer.token(exp=int(time.time()) + 1)
    assert verifier.verify(short).subject == "alice@example.com"
    assert verifier.verify(short).subject == "alice@example.com"  # from memory
    time.sleep(2.05)  # past exp (whole seconds), no leeway
    with pytest.raises(AuthenticationError, match="expired"):
        verifier.verify(short)

    signed_by_k1 = issuer.token("k1")
    verifier.verify(signed_by_k1)
    time.sleep(0.01)  # a new modification time for the rewritten file
    issuer.write_jwks(Path(verifier.config.jwks_file), "k2")
    with pytest.raises(AuthenticationError, match="not in SYNCMESH_GRPC_JWKS_FILE"):
        verifier.verify(signed_by_k1)
