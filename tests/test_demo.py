"""`syncmesh up --demo`, run as a newcomer runs it: embedded servers, localstripe, every service."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.deployable import GATEWAY
from services import registry


def test_demo_flows_through_every_service(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCMESH_")}
    # Every deployable on a port the OS picks, so the demo runs beside anything else.
    ports = {v: "0" for v in (GATEWAY.port_variable, *(d.port_variable for d in registry.definitions()))}
    runs = [
        subprocess.run(
            [sys.executable, "-m", "launcher.cli", "up", "--demo", "--once", "--data-dir", str(tmp_path / "data")],
            cwd=tmp_path,
            env={**env, **ports},
            capture_output=True,
            text=True,
            timeout=180,
        )
        for _ in range(2)  # a second run in the same folder starts afresh, and says so
    ]
    for result in runs:
        assert result.returncode == 0, result.stderr[-3000:]
    assert "starting from a clean slate" not in runs[0].stdout
    assert "starting from a clean slate" in runs[1].stdout
    out = runs[1].stdout
    assert "customer: 4 ERP customer record(s)" in out  # not 8: the first run's people are gone
    # Money one way: 49.00 USD, never raw minor units or a zero balance in another currency.
    assert "49.00 USD" in out and "minor units" not in out and "0 eur" not in out.lower()
    assert "syncmesh call customer GetCustomer" in out
    assert "stripe-sync-mesh is up" in out
    assert "webhook to queryable in every service" in out
    # What each service recorded, read back over gRPC (ERP ids are assigned by the mesh).
    assert "CUST-000001" in out and "inactive (deleted in Stripe)" in out
    assert "paid in full" in out
    assert "3 x Pro" in out and "churned" in out
    # Customer e-mails are masked even in the demo's own report.
    assert "ada@analytical.example" not in out
