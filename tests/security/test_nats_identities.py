"""Identities on NATS, against a real nats-server run with the mesh's authorization block
(launcher.natsauth, as `syncmesh up` writes it): who may connect, publish, consume and read.

A refused publish is never answered (nats-server drops it and tells the client asynchronously),
so each refusal is checked twice: the publish gets no JetStream ack, and the server reported a
permissions violation naming the subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from gateway.app import Gateway
from launcher.natsauth import GATEWAY_USER, OPERATOR_USER, LocalCredentials, _permissions
from launcher.up import as_nats_user
from ops import dlq
from services import registry
from services.common.bus import DLQ_STREAM, EVENTS_STREAM, STRIPE_STREAM, Bus, connect_options
from services.common.embedded import NatsServer
from services.common.errors import PublishError
from services.common.service import ServiceRuntime
from services.common.settings import Settings, load_settings
from services.common.stream import message_ids
from tests.common.test_grpc_tls import pki  # noqa: F401  (the openssl-made CA, server and client)
from tests.conftest import eventually
from tests.e2e.support import definitions
from tests.support.signing import signed_request
from tests.support.stripe_events import event, fixture

REFUSED = (TimeoutError, nats.errors.Error, nats.js.errors.Error)


class Connection:
    """A raw nats-py connection that keeps the server's asynchronous errors."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def open(self, url: str, **options: object) -> Connection:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc).lower())

        self.nc = Client()
        try:
            await self.nc.connect(
                url,
                allow_reconnect=False,
                connect_timeout=2,
                error_cb=on_error,
                **options,  # type: ignore[arg-type]
            )
        except BaseException:
            await self.nc.close()  # nats-py leaves a refused attempt's socket open
            raise
        return self

    def refused(self, subject: str) -> bool:
        return any("permissions violation" in e and subject.lower() in e for e in self.errors)


@contextlib.asynccontextmanager
async def connected(
    server: NatsServer, credentials: LocalCredentials, user: str, **options: object
) -> AsyncIterator[Connection]:
    """`user` on the server with its own password, replies on its private inbox as the Bus does."""
    from services.common.bus import inbox_prefix

    own = await Connection().open(
        server.url,
        user=user,
        password=credentials.password(user),
        inbox_prefix=inbox_prefix(user if user in _MESH else None),
        **options,
    )
    try:
        yield own
    finally:
        assert own.nc is not None
        await own.nc.close()


_MESH = {GATEWAY_USER, OPERATOR_USER, *definitions()}


@pytest.fixture
async def streams(nats_url: str, settings: Settings) -> Settings:
    """The mesh's streams, created by the admin, as empty as `nats_url` left them."""
    bus = Bus(settings, name="admin")
    await bus.start()
    await bus.wait_ready(10)
    await bus.close()
    return settings


def as_user(settings: Settings, server: NatsServer, credentials: LocalCredentials, user: str) -> Settings:
    """Settings that connect as `user` (as `syncmesh up` passes each part its own identity)."""
    return as_nats_user(replace(settings, nats_url=server.url), credentials, user)


async def stripe_messages(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().stream_info(STRIPE_STREAM)).state.messages)
    finally:
        await nc.close()


# -- no credentials, wrong credentials ---------------------------------------------------------


async def test_a_client_without_credentials_cannot_connect(nats_server: NatsServer, streams: Settings) -> None:
    probe = Connection()
    with pytest.raises(nats.errors.Error):
        await probe.open(nats_server.url)
    assert any("authorization violation" in e for e in probe.errors)


async def test_a_wrong_password_cannot_connect(nats_server: NatsServer, streams: Settings) -> None:
    probe = Connection()
    with pytest.raises(nats.errors.Error):
        await probe.open(nats_server.url, user=GATEWAY_USER, password="not-the-password")
    assert any("authorization violation" in e for e in probe.errors)


async def test_a_bus_without_credentials_never_becomes_ready_nor_publishes(
    nats_server: NatsServer, streams: Settings, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = Bus(replace(streams, nats_url=nats_server.url), name="stranger")
    await bus.start()
    try:
        with pytest.raises(TimeoutError):
            await bus.wait_ready(1.5)
        with pytest.raises(PublishError):
            await bus.publish("stripe.customer.created", b"forged", msg_id="evt_forged")
    finally:
        await bus.close()
    assert await stripe_messages(nats_url) == 0


# -- the gateway ----------------------------------------------------------------------------


async def test_the_gateway_publishes_stripe_events_and_gets_the_ack(
    nats_server: NatsServer, nats_credentials: LocalCredentials, streams: Settings, nats_url: str
) -> None:
    bus = Bus(as_user(streams, nats_server, nats_credentials, GATEWAY_USER), name="gateway")
    await bus.start()
    try:
        await bus.wait_ready(10)
        ack = await bus.publish("stripe.customer.created", b"{}", msg_id="evt_gateway")
        assert ack.stream == STRIPE_STREAM and ack.seq == 1
        # The sweeper's walk of the stream (throwaway consumers) is the gateway's too.
        assert await message_ids(bus, STRIPE_STREAM) == {"evt_gateway"}
    finally:
        await bus.close()


async def test_the_gateway_cannot_pull_from_or_delete_a_service_durable(
    nats_server: NatsServer, nats_credentials: LocalCredentials, streams: Settings, nats_url: str
) -> None:
    await _create_durable(nats_url, "customer")
    async with connected(nats_server, nats_credentials, GATEWAY_USER) as gw:
        assert gw.nc is not None
        js = gw.nc.jetstream(timeout=1)
        sub = await js.pull_subscribe_bind(durable="customer", stream=STRIPE_STREAM)
        with pytest.raises(REFUSED):
            await sub.fetch(1, timeout=1)
        with pytest.raises(REFUSED):
            await js.delete_consumer(STRIPE_STREAM, "customer")
    assert gw.refused(f"$JS.API.CONSUMER.MSG.NEXT.{STRIPE_STREAM}.customer")
    assert gw.refused(f"$JS.API.CONSUMER.DELETE.{STRIPE_STREAM}.customer")


async def _create_durable(nats_url: str, durable: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().add_consumer(
            STRIPE_STREAM, ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT)
        )
    finally:
        await nc.close()


# -- a service ------------------------------------------------------------------------------


async def test_the_customer_service_cannot_forge_stripe_events_nor_billing_events(
    nats_server: NatsServer, nats_credentials: LocalCredentials, streams: Settings, nats_url: str
) -> None:
    bus = Bus(as_user(streams, nats_server, nats_credentials, "customer"), name="customer")
    await bus.start()
    try:
        await bus.wait_ready(10)  # it may look up (and create) the streams, not change them
        with pytest.raises(PublishError):
            await bus.publish("stripe.customer.created", b"forged", msg_id="evt_forged", timeout=0.5)
        with pytest.raises(PublishError):
            await bus.publish("syncmesh.billing.invoice_paid", b"forged", msg_id="billing_forged", timeout=0.5)
        with pytest.raises(PublishError):
            await bus.publish("dlq.billing", b"forged", msg_id="dlq_forged", timeout=0.5)
        # Its own subjects are acked.
        assert (await bus.publish("syncmesh.customer.customer_linked", b"{}", msg_id="own")).stream == EVENTS_STREAM
        assert (await bus.publish("dlq.customer", b"{}", msg_id="own-dlq")).stream == DLQ_STREAM
    finally:
        await bus.close()
    assert await stripe_messages(nats_url) == 0


async def test_crm_export_publishes_under_its_underscored_subjects(
    nats_server: NatsServer, nats_credentials: LocalCredentials, streams: Settings
) -> None:
    bus = Bus(as_user(streams, nats_server, nats_credentials, "crm-export"), name="crm-export")
    await bus.start()
    try:
        await bus.wait_ready(10)
        assert (await bus.publish("syncmesh.crm_export.client_exported", b"{}", msg_id="crm")).stream == EVENTS_STREAM
        assert (await bus.publish("dlq.crm_export", b"{}", msg_id="crm-dlq")).stream == DLQ_STREAM
    finally:
        await bus.close()


async def test_the_customer_service_cannot_consume_billing_durable(
    nats_server: NatsServer, nats_credentials: LocalCredentials, streams: Settings, nats_url: str
) -> None:
    await _create_durable(nats_url, "billing")
    async with connected(nats_server, nats_credentials, "customer") as customer:
        assert customer.nc is not None
        js = customer.nc.jetstream(timeout=1)
        sub = await js.pull_subscribe_bind(durable="billing", stream=STRIPE_STREAM)
        with pytest.raises(REFUSED):
            await sub.fetch(1, timeout=1)
        with pytest.raises(REFUSED):
            await js.add_consumer(STRIPE_STREAM, ConsumerConfig(durable_name="billing", ack_policy=AckPolicy.NONE))
        with pytest.raises(REFUSED):
            await js.update_stream(name=STRIPE_STREAM, subjects=["stripe.>"], max_age=1.0)
    assert customer.refused(f"$JS.API.CONSUMER.MSG.NEXT.{STRIPE_STREAM}.billing")
    assert customer.refused(f"$JS.API.CONSUMER.DURABLE.CREATE.{STRIPE_STREAM}.billing")
    assert customer.refused(f"$JS.API.STREAM.UPDATE.{STRIPE_STREAM}")


async def test_a_service_cannot_read_another_identitys_inbox(
    nats_server: NatsServer, nats_credentials: LocalCredentials, streams: Settings
) -> None:
    """Fetched messages and acks arrive as replies: the gateway's inbox is its own."""
    async with connected(nats_server, nats_credentials, "customer") as customer:
        assert customer.nc is not None
        await customer.nc.subscribe("_INBOX_gateway.>")
        await customer.nc.subscribe("stripe.>")
        await customer.nc.flush()
        await asyncio.sleep(0.2)
    assert customer.refused('subscription to "_inbox_gateway.>"')
    assert customer.refused('subscription to "stripe.>"')


# -- another team's subscriber --------------------------------------------------------------


async def test_a_subscriber_reads_domain_events_but_not_stripe_events(
    nats_server: NatsServer, nats_credentials: LocalCredentials, streams: Settings, nats_url: str
) -> None:
    admin = await nats.connect(nats_url)
    try:
        await admin.jetstream().publish("syncmesh.customer.customer_linked", b"linked")
        await admin.jetstream().publish("stripe.customer.created", b"raw personal data")
    finally:
        await admin.close()
    async with connected(nats_server, nats_credentials, "team-a") as team:
        assert team.nc is not None
        js = team.nc.jetstream(timeout=1)
        events = await js.pull_subscribe("syncmesh.>", durable="team-a", stream=EVENTS_STREAM)
        [msg] = await events.fetch(1, timeout=2)
        assert (msg.subject, msg.data) == ("syncmesh.customer.customer_linked", b"linked")
        await msg.ack()
        with pytest.raises(REFUSED):
            await js.add_consumer(STRIPE_STREAM, ConsumerConfig(name="peek", ack_policy=AckPolicy.NONE))
        with pytest.raises(REFUSED):
            await js.get_msg(STRIPE_STREAM, seq=1)
        with pytest.raises(REFUSED):
            await js.publish("syncmesh.billing.invoice_paid", b"forged", timeout=0.5)
        await team.nc.subscribe("stripe.>")
        await team.nc.flush()
        await asyncio.sleep(0.2)
    assert team.refused(f"$JS.API.CONSUMER.CREATE.{STRIPE_STREAM}.peek")
    assert team.refused(f"$JS.API.STREAM.MSG.GET.{STRIPE_STREAM}")
    assert team.refused('publish to "syncmesh.billing.invoice_paid"')
    assert team.refused('subscription to "stripe.>"')


# -- the whole mesh, each part with its own identity ----------------------------------------


async def post(gateway: Gateway, body: bytes, headers: dict[str, str]) -> int:
    url = f"http://127.0.0.1:{gateway.port}/webhooks/stripe"
    async with aiohttp.ClientSession() as http, http.post(url, data=io.BytesIO(body), headers=headers) as resp:
        return resp.status


async def test_the_mesh_flows_end_to_end_with_an_identity_per_part_and_the_operator_handles_dead_letters(
    nats_server: NatsServer, nats_credentials: LocalCredentials, settings: Settings, nats_url: str
) -> None:
    def own(user: str) -> Settings:
        return as_user(settings, nats_server, nats_credentials, user)

    gateway = Gateway(own(GATEWAY_USER), port=0, host="127.0.0.1")
    runtimes = [ServiceRuntime(d, own(name), port=0, host="127.0.0.1") for name, d in definitions().items()]
    await gateway.start()
    try:
        for runtime in runtimes:
            await runtime.start()
        for runtime in runtimes:
            await runtime.wait_ready(30)
        await gateway.bus.wait_ready(10)
        assert await post(gateway, *signed_request(event("customer.created", fixture("customer")))) == 200
        # A domain event announced by the customer service proves it consumed its durable and
        # published under its own identity.
        domain = await _wait_for_subject(nats_url, EVENTS_STREAM, "syncmesh.customer.>")
        assert domain.startswith("syncmesh.customer.")
        # A message no service can decode is dead-lettered by each consumer of its subject.
        await gateway.bus.publish("stripe.customer.created", b"\xff not an envelope", msg_id="evt_garbage")
        await _wait_for_subject(nats_url, DLQ_STREAM, "dlq.customer")
    finally:
        for runtime in runtimes:
            await runtime.stop()
        await gateway.stop()

    operator = Bus(own(OPERATOR_USER), name="syncmesh-ops")
    await operator.start()
    try:
        await operator.wait_ready(10)
        [letter] = await dlq.list_dead_letters(operator, service="customer")
        assert (await dlq.get_dead_letter(operator, letter.sequence)).sequence == letter.sequence
        await dlq.discard(operator, letter.sequence)
        assert await dlq.list_dead_letters(operator, service="customer") == []
    finally:
        await operator.close()


async def _wait_for_subject(nats_url: str, stream: str, subject: str) -> str:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()

        async def found() -> str | None:
            try:
                return str((await js.get_last_msg(stream, subject)).subject)
            except nats.js.errors.NotFoundError:
                return None

        return str(await eventually(found, timeout=30))
    finally:
        await nc.close()


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def tls_nats(
    tmp_path: Path,
    pki: Path,  # noqa: F811
    nats_credentials: LocalCredentials,
) -> Iterator[NatsServer]:
    """A nats-server of its own requiring TLS with client certificates, and the mesh's identities."""
    from launcher.natsauth import roster_identities

    server = NatsServer(
        tmp_path / "tls-nats",
        authorization=nats_credentials.authorization(roster_identities()),
        tls=(pki / "server.pem", pki / "server.key", pki / "ca.pem"),
    )
    server.start()
    yield server
    server.stop()


async def test_over_tls_the_gateway_needs_the_ca_its_certificate_and_its_password(
    tls_nats: NatsServer,
    pki: Path,  # noqa: F811
    nats_credentials: LocalCredentials,
    settings: Settings,
) -> None:
    identity = as_nats_user(replace(settings, nats_url=tls_nats.url), nats_credentials, GATEWAY_USER)
    secured = replace(
        identity,
        nats_tls_ca_file=str(pki / "ca.pem"),
        nats_tls_cert_file=str(pki / "client.pem"),
        nats_tls_key_file=str(pki / "client.key"),
    )
    bus = Bus(secured, name="gateway")
    await bus.start()
    try:
        await bus.wait_ready(10)
        assert (await bus.publish("stripe.customer.created", b"{}", msg_id="evt_tls")).stream == STRIPE_STREAM
    finally:
        await bus.close()
    # Without a client certificate, or without TLS at all, the same identity is refused.
    for lacking in (replace(secured, nats_tls_cert_file=None, nats_tls_key_file=None), identity):
        bus = Bus(lacking, name="gateway")
        await bus.start()
        try:
            with pytest.raises(TimeoutError):
                await bus.wait_ready(1.5)
        finally:
            await bus.close()


async def test_an_operator_tool_with_a_wrong_password_says_so_in_one_line(
    nats_server: NatsServer, streams: Settings
) -> None:
    from ops.common import connected_bus
    from services.common.errors import SettingsError

    wrong = replace(streams, nats_url=nats_server.url, nats_user=OPERATOR_USER, nats_password="stale")
    with pytest.raises(SettingsError, match="NATS refused user operator") as refused:
        async with connected_bus(wrong, timeout=2):
            pass
    assert "stale" not in str(refused.value)


async def test_the_operator_walks_stripe_as_replay_and_backfill_do_and_publishes_as_redrive_does(
    nats_server: NatsServer, nats_credentials: LocalCredentials, streams: Settings, nats_url: str
) -> None:
    from services.common.stream import StreamReader

    await _create_durable(nats_url, "customer")
    operator = Bus(as_user(streams, nats_server, nats_credentials, OPERATOR_USER), name="syncmesh-ops")
    await operator.start()
    try:
        await operator.wait_ready(10)
        for n, subject in enumerate(("stripe.customer.created", "stripe.invoice.paid", "stripe.charge.refunded")):
            await operator.publish(subject, b"{}", msg_id=f"evt_{n}")
        assert await message_ids(operator, STRIPE_STREAM) == {"evt_0", "evt_1", "evt_2"}
        for subjects, expected in (
            (("stripe.invoice.paid",), 1),  # one filter: the subject is part of the API subject
            (("stripe.customer.created", "stripe.invoice.paid"), 2),  # several: filter_subjects
        ):
            reader = StreamReader(operator, STRIPE_STREAM, subjects=subjects)
            assert sum([len(batch) async for batch in reader.batches()]) == expected
        info = await operator.js.consumer_info(STRIPE_STREAM, "customer")  # observe, not touch
        assert info.num_pending == 3
    finally:
        await operator.close()


async def test_an_nkey_identity_logs_in_with_its_seed_and_keeps_its_permissions(
    tmp_path: Path, settings: Settings
) -> None:
    """An NKEY instead of a password: the server knows only the public key, the process proves
    it with its seed, and the same least-privilege permissions (and private inbox) apply."""
    import nkeys

    from launcher.natsauth import gateway_identity

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = tmp_path / "gateway.nk"
    seed_file.write_bytes(seed)
    seed_file.chmod(0o600)
    user = {"nkey": public, "permissions": _permissions(gateway_identity(registry.names()))}
    server = NatsServer(tmp_path / "nkey-nats", authorization=f"authorization {{ users = [{json.dumps(user)}] }}\n")
    server.start()

    def gateway_with(seed: Path) -> Bus:
        return Bus(
            replace(
                settings, nats_url=server.url, nats_user=GATEWAY_USER, nats_password=None, nats_nkey_seed_file=str(seed)
            ),
            name="gateway",
        )

    try:
        identity = load_settings(
            {
                "SYNCMESH_NATS_URL": server.url,
                "SYNCMESH_NATS_USER": GATEWAY_USER,
                "SYNCMESH_NATS_NKEY_SEED_FILE": str(seed_file),
            },
            local_mesh=False,
        )
        assert connect_options(identity)["inbox_prefix"] == f"_INBOX_{GATEWAY_USER}"
        bus = gateway_with(seed_file)
        await bus.start()
        try:
            await bus.wait_ready(10)
            ack = await bus.publish("stripe.customer.created", b"{}", msg_id="evt_nkey")
            assert ack.stream == STRIPE_STREAM
        finally:
            await bus.close()
        # The key proves the gateway, so it may not publish another's domain events.
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(server.url, error_cb=on_error, **connect_options(identity))
        try:
            await nc.publish("syncmesh.billing.payment_applied", b"{}")
            await nc.flush()
            await eventually(lambda: any("permissions violation" in e.lower() for e in errors), timeout=5)
        finally:
            await nc.close()
        # Another key (a seed the server does not know) is refused.
        stranger = tmp_path / "stranger.nk"
        stranger.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
        bus = gateway_with(stranger)
        await bus.start()
        try:
            with pytest.raises(TimeoutError):
                await bus.wait_ready(1.5)
        finally:
            await bus.close()
    finally:
        server.stop()
