from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common.service import ServiceRuntime
from services.common.settings import Settings
from services.crm_export.app import DEFINITION


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[ServiceRuntime]:
    rt = ServiceRuntime(DEFINITION, settings, port=0)
    await rt.start()
    await rt.wait_ready(20)
    yield rt
    await rt.stop()
