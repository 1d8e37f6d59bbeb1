from __future__ import annotations

import pytest

from services.common.bus import Bus
from services.common.settings import Settings


@pytest.fixture
async def bus(settings: Settings):
    """An operator's own NATS connection, separate from any service's."""
    b = Bus(settings, name="test-ops")
    await b.start(wait=5)
    await b.wait_ready(10)
    yield b
    await b.close()


class StripeClients:
    """Closes the Stripe SDK clients a test made, so no aiohttp session outlives its loop."""

    def __init__(self) -> None:
        self.made: list = []

    def __call__(self, client):
        self.made.append(client)
        return client


@pytest.fixture
async def track_stripe():
    from services.common.stripe_api import close_stripe_client

    clients = StripeClients()
    yield clients
    for client in clients.made:
        await close_stripe_client(client)


@pytest.fixture
async def ls_client(localstripe, track_stripe):
    """An official-SDK client on the test's localstripe."""
    from tests.conftest import stripe_client_for

    return track_stripe(stripe_client_for(localstripe))


@pytest.fixture
def restore_logging():
    """The CLI configures the root logger; put it back so later tests log as before."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
