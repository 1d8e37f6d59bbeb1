from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from syncmesh.customer.v1 import customer_service_pb2_grpc

from services.common import db
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from services.customer.app import DEFINITION


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The customer schema, migrated, for driving the handler and store directly."""
    pool = await db.create_pool(database_url, DEFINITION.schema, max_size=4)
    await db.migrate(
        pool, DEFINITION.schema, [("runtime", db.RUNTIME_MIGRATIONS), (DEFINITION.name, DEFINITION.migrations)]
    )
    yield pool
    await pool.close()


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    connection = await pool.acquire()
    try:
        yield connection  # type: ignore[misc]
    finally:
        await pool.release(connection)


async def start_runtime(settings: Settings) -> ServiceRuntime:
    rt = ServiceRuntime(DEFINITION, settings, port=0)
    await rt.start()
    await rt.wait_ready(20)
    return rt


async def stop_runtime(rt: ServiceRuntime) -> None:
    await rt.stop()


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[ServiceRuntime]:
    rt = await start_runtime(settings)
    yield rt
    await stop_runtime(rt)


@pytest.fixture
async def stub(runtime: ServiceRuntime) -> AsyncIterator[customer_service_pb2_grpc.CustomerServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        yield customer_service_pb2_grpc.CustomerServiceStub(channel)


@pytest.fixture(autouse=True)
async def _close_cached_stripe_clients() -> AsyncIterator[None]:
    yield
    from services.common.stripe_api import close_stripe_clients

    await close_stripe_clients()
