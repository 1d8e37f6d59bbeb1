"""Fixtures shared by the whole suite: real servers, fresh state per test.

One nats-server and one PostgreSQL per test session (per xdist worker), started from the
pip-installed binaries on free loopback ports; never the machine's own services. Each test gets
an empty JetStream (streams deleted) and a database of its own, so tests cannot see each
other's data. Tests that kill or restart a server use `own_nats` / `own_postgres` instead,
which start a private one for that test alone.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest

from gateway.deployable import GATEWAY
from launcher.natsauth import ADMIN_USER, LocalCredentials, admin_identity, roster_identities, subscriber_identity
from services import registry
from services.common.embedded import NatsServer, PostgresServer
from services.common.settings import Settings
from tests.support.kinds import forbid_processes, mark_kinds
from tests.support.signing import TEST_SECRET


@pytest.fixture(scope="session")
def nats_credentials(tmp_path_factory: pytest.TempPathFactory) -> LocalCredentials:
    """The passwords of the shared nats-server's users (launcher.natsauth), one file each."""
    return LocalCredentials(tmp_path_factory.mktemp("nats-users"))


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory, nats_credentials: LocalCredentials) -> Iterator[NatsServer]:
    """With authorization on, as `syncmesh up` runs it: the mesh's identities from the roster,
    a subscriber team (`team-a`) and an admin, whose URL `nats_url` hands the tests."""
    identities = [*roster_identities(), subscriber_identity("team-a"), admin_identity()]
    server = NatsServer(tmp_path_factory.mktemp("nats"), authorization=nats_credentials.authorization(identities))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("pg"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server for this test only: it may be stopped, killed and restarted."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL for this test only: it may be stopped, killed and restarted."""
    server = PostgresServer(tmp_path / "pg")
    server.start()
    yield server
    server.kill()


@pytest.fixture(autouse=True)
async def _close_shared_stripe_clients() -> AsyncIterator[None]:
    """Stripe clients are shared per event loop; close their sessions after each test, and those
    `stripe_client_for` made for it (an unclosed aiohttp session is a ResourceWarning, an error here)."""
    yield
    from services.common.stripe_api import close_stripe_client, close_stripe_clients

    await close_stripe_clients()
    while _clients_made_for_the_test:
        await close_stripe_client(_clients_made_for_the_test.pop())


async def _clean_jetstream(url: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            await js.delete_stream(info.config.name)
    finally:
        await nc.close()


@pytest.fixture
async def nats_url(nats_server: NatsServer, nats_credentials: LocalCredentials) -> str:
    """The shared nats-server as its admin (credentials in the URL), with every stream deleted first."""
    url = nats_server.url_for(ADMIN_USER, nats_credentials.password(ADMIN_USER))
    await _clean_jetstream(url)
    return url


@pytest.fixture
async def database_url(pg_server: PostgresServer) -> AsyncIterator[str]:
    """A new, empty database for this test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_server.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield pg_server.dsn(name)


@pytest.fixture
def settings(nats_url: str, database_url: str) -> Settings:
    """Settings pointing at the test's servers, with short timings so failures surface fast."""
    return Settings(
        nats_url=nats_url,
        database_url=database_url,
        webhook_secrets=(TEST_SECRET,),
        mode="test",
        # Every deployable on a port the OS picks, so tests never collide with each other.
        port_overrides={v: 0 for v in (GATEWAY.port_variable, *(d.port_variable for d in registry.definitions()))},
        ack_wait_seconds=2.0,
        max_deliver=3,
        publish_timeout_seconds=1.0,
        shutdown_grace_seconds=2.0,
    )


async def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll an async or sync check until it returns a truthy value, and return that value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while loop.time() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        last = result
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


@pytest.fixture
def localstripe(tmp_path: Path) -> Iterator[object]:
    """A fresh localstripe (Stripe stand-in) on a loopback port, for this test only."""
    from launcher.localstripe_process import LocalStripe

    server = LocalStripe(tmp_path)
    server.start()
    yield server
    server.stop()


_clients_made_for_the_test: list[Any] = []


def stripe_client_for(localstripe: object):
    """An official-SDK client pointed at a localstripe fixture, closed when the test ends."""
    import stripe

    client = stripe.StripeClient(
        "sk_test_localstripe",
        base_addresses={"api": localstripe.url},  # type: ignore[attr-defined]
        http_client=stripe.AIOHTTPClient(),
        max_network_retries=0,
    )
    _clients_made_for_the_test.append(client)
    return client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test `unit` or `integration` (tests/support/kinds.py), so `-m unit` runs the pure ones."""
    mark_kinds(items)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `unit` test that starts a process fails: its label would be a lie."""
    if request.node.get_closest_marker("unit"):
        forbid_processes(monkeypatch)
