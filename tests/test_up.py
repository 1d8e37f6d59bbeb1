"""`syncmesh up` as a newcomer meets it: a fresh folder, no SYNCMESH_ variable for the tools,
the commands it prints working as printed, and stops that leave nothing behind."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from gateway.deployable import GATEWAY
from services import registry
from services.common import db

UP = [sys.executable, "-m", "launcher.cli", "up"]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SYNCMESH_")}


def _any_port_env() -> dict[str, str]:
    """`up` on OS-picked ports, so it runs beside anything else on this machine."""
    return {v: "0" for v in (GATEWAY.port_variable, *(d.port_variable for d in registry.definitions()))}


def _processes_under(folder: Path) -> list[str]:
    """Command lines of running processes that name `folder` (the embedded servers do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in command:
            found.append(f"{entry.name}: {command}")
    return found


def _wait_for(path: Path, text: str, process: subprocess.Popen[Any], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        assert process.poll() is None, f"up exited with {process.returncode}: {content}"
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not printed within {timeout}s")


def _tool(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        cwd=folder,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _listening_on(port: int) -> tuple[str, ...]:
    """The addresses a TCP port is listening on, from /proc/net/tcp and tcp6 (IPv4 loopback is
    0100007F there; every interface is 00000000, or all zeros in tcp6)."""
    addresses = set()
    for table, loopback in (("/proc/net/tcp", "0100007F"), ("/proc/net/tcp6", "00000000000000000000000001000000")):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                addresses.add("127.0.0.1" if address in (loopback, "0000000000000000FFFF00000100007F") else address)
    return tuple(sorted(addresses))


def _anonymous_nats_answer(url: str) -> str:
    """What nats-server answers a client that connects without credentials (protocol by hand)."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.recv(4096)  # INFO
        conn.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        return conn.recv(4096).decode(errors="replace")


def test_tools_find_the_local_mesh_without_variables_and_the_stop_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "up.out"
    with open(out, "w") as stdout:
        up = subprocess.Popen(
            UP, cwd=tmp_path, env={**_clean_env(), **_any_port_env()}, stdout=stdout, stderr=subprocess.PIPE, text=True
        )
    try:
        printed = _wait_for(out, "Ctrl-C stops everything", up, timeout=90)
        state = tmp_path / ".syncmesh" / "mesh.json"
        assert state.stat().st_mode & 0o777 == 0o600
        recorded = json.loads(state.read_text())
        ports = [int(recorded["webhook_url"].split(":")[2].split("/")[0])]
        ports += [int(address.rsplit(":", 1)[1]) for address in recorded["grpc"].values()]
        ports += [int(url.split(":")[2].split("/")[0]) for url in recorded.get("metrics", {}).values()]
        assert {_listening_on(port) for port in ports} == {("127.0.0.1",)}, "up listens on this machine only"

        # Each service is connected as its own database role, and the tools' settings name the
        # migration role's password file, never a password (SECURITY.md, "Database identities").
        tools_url = recorded["env"]["SYNCMESH_DATABASE_URL"]
        assert urlsplit(tools_url).username == db.MIGRATION_ROLE and urlsplit(tools_url).password is None
        assert Path(recorded["env"]["SYNCMESH_DATABASE_PASSWORD_FILE"]).stat().st_mode & 0o777 == 0o600
        sessions = asyncio.run(_sessions(tmp_path / ".syncmesh" / "postgres", urlsplit(tools_url).port))
        assert {f"syncmesh-{d.schema}": {db.runtime_role(d.schema)} for d in registry.definitions()} == {
            app: users for app, users in sessions.items() if app.startswith("syncmesh-")
        }
        # NATS runs with authorization: a password per identity, private files, the tools as operator.
        users = tmp_path / ".syncmesh" / "nats" / "users"
        expected = {f"{u}.password" for u in ("gateway", "operator", "subscriber", *registry.names())}
        assert {p.name for p in users.iterdir()} == expected
        assert {p.stat().st_mode & 0o777 for p in users.iterdir()} == {0o600}
        assert recorded["env"]["SYNCMESH_NATS_USER"] == "operator"
        assert "Authorization Violation" in _anonymous_nats_answer(recorded["env"]["SYNCMESH_NATS_URL"])

        listed = _tool(tmp_path, "dlq", "list")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.strip() == "no dead letters"
        assert listed.stderr == ""  # no JSON log lines in a tool's output unless --verbose

        replayed = _tool(tmp_path, "replay", "billing", "--dry-run")
        assert replayed.returncode == 0, replayed.stderr
        assert "dry run: nothing written" in replayed.stdout

        # The printed call line works as printed.
        call_line = next(line for line in printed.splitlines() if " call customer health" in line)
        called = subprocess.run(
            shlex.split(call_line), cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, timeout=60
        )
        assert called.returncode == 0, called.stderr
        assert '"status": "SERVING"' in called.stdout
    finally:
        up.send_signal(signal.SIGTERM)
        _, err = up.communicate(timeout=60)
    assert up.returncode == 0, err[-3000:]
    assert "disconnected from NATS" not in err  # a deliberate close is not an outage
    assert not (tmp_path / ".syncmesh" / "mesh.json").exists()
    assert _processes_under(tmp_path) == []
    # Without `up`, the tools say what to do in one line.
    orphaned = _tool(tmp_path, "dlq", "list")
    assert orphaned.returncode == 2
    assert "syncmesh up" in orphaned.stderr and len(orphaned.stderr.strip().splitlines()) == 1


async def _sessions(pg_dir: Path, port: int | None) -> dict[str, set[str]]:
    """Who is connected to the embedded PostgreSQL, by application name (as its superuser)."""
    password = (pg_dir / "superuser-password").read_text().strip()
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", password=password, database="syncmesh")
    try:
        rows = await conn.fetch("SELECT application_name, usename FROM pg_stat_activity WHERE application_name <> ''")
    finally:
        await conn.close()
    sessions: dict[str, set[str]] = {}
    for row in rows:
        sessions.setdefault(row["application_name"], set()).add(row["usename"])
    return sessions


def test_a_taken_port_is_one_line_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            UP,
            cwd=tmp_path,
            env={**_clean_env(), **_any_port_env(), GATEWAY.port_variable: str(port)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    # Refused before anything starts: about a second on an idle machine (mostly imports); the
    # bound leaves room for a CI machine under load, and is far from the 12 minutes this once hung.
    assert time.monotonic() - started < 30
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert GATEWAY.port_variable in lines[0] and str(port) in lines[0] and "Traceback" not in result.stderr
    assert _processes_under(tmp_path) == []
    assert not (tmp_path / ".syncmesh" / "nats").exists()


@pytest.mark.parametrize(
    ("moment", "sign"),
    [
        ("nats-server starting", ".syncmesh/nats"),
        ("PostgreSQL starting", ".syncmesh/postgres/pgdata"),
        ("services starting", ".syncmesh/postgres/pgdata/postmaster.pid"),
    ],
)
def test_sigterm_while_starting_stops_everything(tmp_path: Path, moment: str, sign: str) -> None:
    up = subprocess.Popen(
        UP,
        cwd=tmp_path,
        env={**_clean_env(), **_any_port_env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # While something is starting: the moments a signal used to be ignored or orphan a server.
    deadline = time.monotonic() + 60
    while not (tmp_path / sign).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (tmp_path / sign).exists(), f"never reached: {moment}"
    up.send_signal(signal.SIGTERM)
    _, err = up.communicate(timeout=60)
    assert up.returncode in (0, 130), err[-3000:]
    assert "Traceback" not in err
    assert _processes_under(tmp_path) == []
    assert not (tmp_path / ".syncmesh" / "mesh.json").exists()


def test_a_bad_value_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        UP,
        cwd=tmp_path,
        env={**_clean_env(), "SYNCMESH_SYNC_START": "99999999999999999999"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "syncmesh: configuration error: SYNCMESH_SYNC_START='99999999999999999999' is not a date: "
        "use ISO-8601 like 2025-01-31 or 2025-01-31T00:00:00Z"
    ]
    assert _processes_under(tmp_path) == []


def test_the_next_up_recovers_from_a_killed_one(tmp_path: Path) -> None:
    """SIGKILL leaves nats-server and PostgreSQL running (their own sessions) and a postmaster.pid
    behind; the next `up` in the folder stops those orphans, as recorded in mesh.json, and starts."""

    def start(name: str) -> tuple[subprocess.Popen[bytes], Path]:
        out = tmp_path / name
        with open(out, "w") as stdout:
            process = subprocess.Popen(
                UP, cwd=tmp_path, env={**_clean_env(), **_any_port_env()}, stdout=stdout, stderr=subprocess.DEVNULL
            )
        return process, out

    first, out = start("first.out")
    _wait_for(out, "Ctrl-C stops everything", first, timeout=90)
    first.kill()
    first.wait(10)
    assert _processes_under(tmp_path), "the embedded servers outlive a SIGKILLed up"
    second, out = start("second.out")
    try:
        printed = _wait_for(out, "Ctrl-C stops everything", second, timeout=90)
        assert "stripe-sync-mesh is up" in printed
        assert _tool(tmp_path, "dlq", "list").returncode == 0
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    assert _processes_under(tmp_path) == []
