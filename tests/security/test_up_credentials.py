"""`syncmesh up` on a fresh folder makes its own gRPC credentials and turns authentication on; the
`syncmesh` tools run from that folder present them without being told, and what they change is
in the audit trail under the local identity, each record with its domain event in the outbox."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import grpc
from syncmesh.customer.v1 import customer_service_pb2 as pb
from syncmesh.customer.v1 import customer_service_pb2_grpc as pb_grpc

from gateway.deployable import GATEWAY
from services import registry
from services.common.settings import load_settings, local_mesh_variables


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SYNCMESH_")}


def _tool(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        cwd=folder,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _trail(database_url: str) -> tuple[list[tuple[str, ...]], list[str]]:
    db = await asyncpg.connect(database_url)
    try:
        rows = await db.fetch(
            "SELECT a.method, a.identity, a.via, a.role, a.outcome, o.subject FROM customer.audit_log a "
            "JOIN customer.outbox o ON o.msg_id = a.event_id ORDER BY a.id"
        )
        history = await db.fetch("SELECT outcome FROM customer.customer_history WHERE erp_customer_id = 'CUST-UP1'")
    finally:
        await db.close()
    return [tuple(r.values()) for r in rows], [r["outcome"] for r in history]


async def _anonymous_unlink(address: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await pb_grpc.CustomerServiceStub(channel).UnlinkCustomer(
                pb.UnlinkCustomerRequest(erp_customer_id="CUST-UP1"), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_up_makes_local_credentials_the_tools_use_them_and_their_changes_are_audited(tmp_path: Path) -> None:
    ports = {v: "0" for v in (GATEWAY.port_variable, *(d.port_variable for d in registry.definitions()))}
    out = tmp_path / "up.out"
    with open(out, "w") as stdout:
        up = subprocess.Popen(
            [sys.executable, "-m", "launcher.cli", "up"],
            cwd=tmp_path,
            env={**_clean_env(), **ports},
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        deadline = time.monotonic() + 90
        while "Ctrl-C stops everything" not in (out.read_text() if out.exists() else ""):
            assert up.poll() is None, out.read_text()
            assert time.monotonic() < deadline, "up did not start"
            time.sleep(0.1)
        for name in ("grpc-tokens", "grpc-token"):
            assert (tmp_path / ".syncmesh" / name).stat().st_mode & 0o777 == 0o600
        (tmp_path / "map.csv").write_text("stripe_customer_id,erp_customer_id\ncus_Up1,CUST-UP1\n")

        imported = _tool(tmp_path, "import", "customers", "map.csv")
        assert imported.returncode == 0, imported.stderr
        assert "created 1" in imported.stdout, imported.stdout

        recorded = json.loads((tmp_path / ".syncmesh" / "mesh.json").read_text())
        address = recorded["grpc"]["customer"]
        assert asyncio.run(_anonymous_unlink(address)) == grpc.StatusCode.UNAUTHENTICATED
        variables = local_mesh_variables(tmp_path)

        # The tools' database identity (the migration role), its password in a file beside the URL.
        database_url = load_settings(variables, local_mesh=False).database_url
        assert database_url is not None
        rows, history = asyncio.run(_trail(database_url))
        assert rows == [
            (
                "/syncmesh.customer.v1.CustomerService/ImportCustomerMappingsWithProgress",
                "local-admin",
                "token",
                "admin",
                "OK",
                "syncmesh.customer.call_audited",
            ),
            (
                "/syncmesh.customer.v1.CustomerService/UnlinkCustomer",
                "unauthenticated",
                "",
                "",
                "UNAUTHENTICATED",
                "syncmesh.customer.call_audited",
            ),
        ]
        assert history == ["applied by local-admin"]
    finally:
        up.send_signal(signal.SIGTERM)
        _, err = up.communicate(timeout=60)
    assert up.returncode == 0, err[-3000:]
