from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.common.stripe_api import close_stripe_client
from tests.conftest import stripe_client_for


@pytest.fixture
async def ls_client(localstripe: Any) -> AsyncIterator[Any]:
    """An official-SDK client on the test's localstripe, closed afterwards."""
    client = stripe_client_for(localstripe)
    yield client
    await close_stripe_client(client)
