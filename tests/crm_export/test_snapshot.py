"""ExportSnapshot reads one REPEATABLE READ snapshot: writes committed while it streams are not
in it, even for pages queried after them."""

from __future__ import annotations

import asyncpg
import grpc
from syncmesh.crm_export.v1 import crm_export_service_pb2 as pb

from services.common.service import ServiceRuntime
from services.common.settings import Settings
from tests.crm_export.support import stub

CLIENTS = 1500


async def test_snapshot_ignores_writes_made_while_it_streams(runtime: ServiceRuntime, settings: Settings) -> None:
    conn = await asyncpg.connect(settings.database_url, server_settings={"search_path": "crm_export"})
    try:
        await conn.executemany(
            "INSERT INTO clients (client_id, origin, stripe_customer_id, name) VALUES ($1, 'STRIPE', $1, $2)",
            [(f"cus_{i:05d}", f"Client {i}") for i in range(CLIENTS)],
        )
        channel, api = stub(runtime.port)
        async with channel:
            stream = api.ExportSnapshot(pb.ExportSnapshotRequest())
            items = [await stream.read()]
            # Committed after the snapshot began: a rename late in the client order, a product, a contract.
            await conn.execute("UPDATE clients SET name = 'Renamed' WHERE client_id = $1", f"cus_{CLIENTS - 1:05d}")
            await conn.execute(
                "INSERT INTO products (stripe_product_id, name, active, raw, v_terminal, v_ts, v_rank, content_hash)"
                " VALUES ('prod_late', 'Late', true, '{}', false, 0, 0, '')"
            )
            await conn.execute(
                "INSERT INTO contracts (contract_id, source, stripe_customer_id, status, currency, total_minor,"
                " discount_minor, created, v_terminal, v_ts, v_rank, content_hash)"
                " VALUES ('in_late', 'INVOICE', 'cus_00001', 'paid', 'usd', 100, 0, 0, true, 0, 0, '')"
            )
            while (item := await stream.read()) is not grpc.aio.EOF:
                items.append(item)
    finally:
        await conn.close()
    clients = [i.client for i in items if i.WhichOneof("item") == "client"]
    assert len(clients) == CLIENTS == len(items)
    assert clients[-1].name == f"Client {CLIENTS - 1}"
