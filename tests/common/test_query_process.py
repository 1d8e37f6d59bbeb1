"""`syncmesh serve NAME` with SYNCMESH_GRPC_QUERY_PROCESS: one process consumes, a forked one
answers gRPC on the service's port; they start, serve, and stop together, as deployed (real
processes on real NATS and PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from syncmesh.customer.v1 import customer_service_pb2 as customer_pb
from syncmesh.customer.v1 import customer_service_pb2_grpc
from syncmesh.events.v1 import envelope_pb2

from services.common.bus import Bus
from services.common.embedded import free_port
from services.common.events import parse_event, to_envelope
from services.common.settings import Settings, load_settings
from tests.conftest import eventually
from tests.support.signing import TEST_SECRET
from tests.support.stripe_events import event, fixture

ROOT = Path(__file__).resolve().parents[2]


def descendants(pid: int) -> list[int]:
    """The children of `pid` (the query process is the only one `serve` starts)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:  # it has ended
        return []


SERVICE = "syncmesh.customer.v1.CustomerService"


@pytest.fixture
def serve(nats_url: str, database_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCMESH_", "OTEL_"))}
    env.update(
        SYNCMESH_NATS_URL=nats_url,
        SYNCMESH_DATABASE_URL=database_url,
        SYNCMESH_WEBHOOK_SECRETS=TEST_SECRET,
        SYNCMESH_MODE="test",
        SYNCMESH_SHUTDOWN_GRACE_SECONDS="2",
        SYNCMESH_LOG_LEVEL="WARNING",
        SYNCMESH_GRPC_QUERY_PROCESS="true",
    )
    with open(tmp_path / "customer.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.customer", "serve", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc, port
    finally:
        for pid in [*descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)


async def _serving(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE), timeout=1
            )
        except grpc.aio.AioRpcError:
            return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie child of this test's process still answers kill(0): its state says it ended.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_the_query_process_answers_what_the_consuming_process_wrote_and_both_stop_together(
    serve: tuple[subprocess.Popen[bytes], int], nats_url: str
) -> None:
    proc, port = serve
    await eventually(lambda: _serving(port), timeout=60)
    (child,) = descendants(proc.pid)  # the query process, forked by `serve`

    obj = fixture("customer")
    obj["id"] = "cus_QueryProcess1"
    parsed = parse_event(json.dumps(event("customer.created", obj)).encode())
    bus = Bus(Settings(nats_url=nats_url), name="test")
    await bus.start(wait=10)
    try:
        await bus.wait_ready(10)
        envelope = to_envelope(parsed, source=envelope_pb2.EVENT_SOURCE_WEBHOOK)
        await bus.publish(parsed.subject, envelope, msg_id=parsed.id)
    finally:
        await bus.close()

    async def read() -> customer_pb.GetCustomerResponse | None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                return await customer_service_pb2_grpc.CustomerServiceStub(channel).GetCustomer(
                    customer_pb.GetCustomerRequest(stripe_customer_id="cus_QueryProcess1"), timeout=2
                )
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
                return None

    answer = await eventually(read, timeout=30)
    assert answer.customer.stripe_customer_id == "cus_QueryProcess1"

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 30) == 0
    await eventually(lambda: _gone(child), timeout=10)


async def test_a_query_process_that_dies_stops_the_service_with_an_error(
    serve: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = serve
    await eventually(lambda: _serving(port), timeout=60)
    (child,) = descendants(proc.pid)
    os.kill(child, signal.SIGKILL)
    assert await asyncio.to_thread(proc.wait, 30) != 0  # an orchestrator restarts the whole service


async def test_a_query_process_stops_when_the_consuming_process_is_killed(
    serve: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = serve
    await eventually(lambda: _serving(port), timeout=60)
    (child,) = descendants(proc.pid)
    proc.kill()
    await asyncio.to_thread(proc.wait, 10)
    await eventually(lambda: _gone(child), timeout=15)  # it would otherwise hold the port
    assert not await _serving(port)


def test_the_query_process_is_a_setting_off_by_default() -> None:
    assert Settings().grpc_query_process is False
    assert load_settings({"SYNCMESH_GRPC_QUERY_PROCESS": "true"}, local_mesh=False).grpc_query_process is True
    with pytest.raises(Exception, match="SYNCMESH_GRPC_QUERY_PROCESS"):
        load_settings({"SYNCMESH_GRPC_QUERY_PROCESS": "maybe"}, local_mesh=False)
