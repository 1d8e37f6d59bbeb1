"""How long ImportCustomerMappings takes for 100,000 rows, end to end through gRPC.

    python -m bench.customer_import [ROWS]

Starts private nats-server and PostgreSQL (the embedded ones), runs the customer service,
imports a generated sheet of ROWS new mappings (default 100,000) in a dry run and for real,
and prints the times. Nothing outside a temporary folder is touched.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from syncmesh.customer.v1 import customer_service_pb2 as pb
from syncmesh.customer.v1 import customer_service_pb2_grpc

from services.common.embedded import NatsServer, PostgresServer
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from services.customer.app import DEFINITION

CHUNK = 512 * 1024


def sheet(rows: int) -> bytes:
    lines = ["stripe_customer_id,erp_customer_id,email"]
    lines += [f"cus_bench{i:09d},NS-{i:07d},user{i}@example.com" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


async def run_import(
    stub: customer_service_pb2_grpc.CustomerServiceStub, data: bytes, dry_run: bool
) -> tuple[float, pb.ImportCustomerMappingsResponse]:
    async def chunks() -> AsyncIterator[pb.ImportCustomerMappingsRequest]:
        for start in range(0, len(data), CHUNK):
            yield pb.ImportCustomerMappingsRequest(dry_run=dry_run, csv_chunk=data[start : start + CHUNK])

    started = time.perf_counter()
    response = await stub.ImportCustomerMappings(chunks())
    return time.perf_counter() - started, response


async def main(rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        nats_server, pg = NatsServer(Path(tmp) / "nats"), PostgresServer(Path(tmp) / "pg")
        nats_server.start()
        pg.start()
        try:
            settings = Settings(nats_url=nats_server.url, database_url=pg.dsn(), mode="test")
            runtime = ServiceRuntime(DEFINITION, settings, port=0)
            await runtime.start()
            await runtime.wait_ready(30)
            data = sheet(rows)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
                stub = customer_service_pb2_grpc.CustomerServiceStub(channel)
                dry, response = await run_import(stub, data, True)
                print(
                    f"dry run   {rows:>7} rows ({len(data) / 2**20:.1f} MiB): {dry:6.2f} s  created={response.created}"
                )
                real, response = await run_import(stub, data, False)
                print(f"applied   {rows:>7} rows: {real:6.2f} s  applied={response.applied} created={response.created}")
            runtime.bus.nc.options["drain_timeout"] = 0.2
            await runtime.stop()
        finally:
            nats_server.stop()
            pg.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
