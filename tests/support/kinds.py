"""Which tests are `unit` and which `integration`, decided from what they use, not by hand.

A test is `integration` when it needs a real process: one of the server fixtures below (directly
or through any fixture that builds on them, such as `settings`, `runtime` or `ls_client`), or a
program it runs itself (the modules in RUNS_PROGRAMS). Everything else is `unit`, and a unit test
is forbidden to start any process (`forbid_processes`), so a mislabelled test fails instead of
quietly making `scripts/test -m unit` slow or dependent on the servers.
"""

from __future__ import annotations

import _posixsubprocess
import os
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest

#: The fixtures that start a real server process; every fixture that needs one lists it in its closure.
REAL_PROCESS_FIXTURES = frozenset({"nats_server", "pg_server", "own_nats", "own_postgres", "localstripe"})

#: Test modules (or folders) whose tests run a program themselves, not through a fixture, and what it is.
RUNS_PROGRAMS = {
    "tests/test_demo.py": "`syncmesh up --demo` as a child process",
    "tests/test_metrics.py": "`syncmesh up --demo` as a child process, scraped",
    "tests/test_up.py": "`syncmesh up` and the tools as child processes, in a fresh folder",
    "tests/security/test_up_credentials.py": "`syncmesh up` and a tool as child processes, in a fresh folder",
    "tests/test_self_contained.py": "git ls-files",
    "tests/common/test_gc_tuning.py": "a child Python (GC settings are process-wide)",
    "tests/common/test_grpc_tls.py": "openssl, to make the certificates",
    "tests/common/test_embedded_start.py": "a shell that kills itself and a Python listener, as engines",
    "tests/faults/test_process_faults.py": "`syncmesh serve` and `syncmesh gateway` as child processes",
    "tests/k8s": "kubectl kustomize and hadolint",
    "tests/clusters": "nats-server clusters and PostgreSQL primaries with standbys, services as child processes",
}

ROOT = Path(__file__).resolve().parents[2]


def is_integration(item: pytest.Item) -> bool:
    if REAL_PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    where = item.path.relative_to(ROOT).as_posix()
    return any(where == place or where.startswith(place + "/") for place in RUNS_PROGRAMS)


def mark_kinds(items: list[pytest.Item]) -> None:
    """Give each test its kind, unless it declares one itself."""
    for item in items:
        if item.get_closest_marker("unit") or item.get_closest_marker("integration"):
            continue
        item.add_marker(pytest.mark.integration if is_integration(item) else pytest.mark.unit)


def _refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
    raise AssertionError(
        "a `unit` test started a process: it is an integration test (use a server fixture, or list its "
        "module in tests/support/kinds.py RUNS_PROGRAMS)"
    )


def forbid_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every way of starting a process fail (subprocess, asyncio's subprocesses, fork, spawn)."""
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse)
    monkeypatch.setattr(_posixsubprocess, "fork_exec", _refuse)
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _refuse)
