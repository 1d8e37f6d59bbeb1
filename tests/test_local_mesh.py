"""The local mesh's file: tools in `syncmesh up`'s folder find the mesh without variables, the
environment always wins, and a file left by an `up` that is gone is ignored."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from launcher.cli import port_number
from services.common.errors import SettingsError
from services.common.settings import LOCAL_MESH_FILE, load_settings, with_local_mesh


def _write(folder: Path, pid: int, env: dict[str, str]) -> None:
    path = folder / LOCAL_MESH_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "env": env}))


def test_the_local_mesh_fills_in_what_the_environment_leaves_unset(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("whsec_local\n")
    _write(
        tmp_path,
        os.getpid(),
        {
            "SYNCMESH_NATS_URL": "nats://127.0.0.1:4999",
            "SYNCMESH_DATABASE_URL": "postgresql://postgres@127.0.0.1:5999/syncmesh",
            "SYNCMESH_WEBHOOK_SECRETS_FILE": str(secret),
            "SYNCMESH_CUSTOMER_PORT": "51001",
        },
    )
    environment = {"SYNCMESH_NATS_URL": "nats://elsewhere:4222", "SYNCMESH_WEBHOOK_SECRETS": "whsec_x"}
    env = with_local_mesh(environment, tmp_path)
    settings = load_settings(env)
    assert settings.nats_url == "nats://elsewhere:4222"  # the environment wins
    assert settings.webhook_secrets == ("whsec_x",)  # its _FILE twin from the file is not added
    assert settings.database_url == "postgresql://postgres@127.0.0.1:5999/syncmesh"
    assert settings.port_for("SYNCMESH_CUSTOMER_PORT", 50051) == 51001


def test_a_file_whose_up_is_gone_is_ignored(tmp_path: Path) -> None:
    _write(tmp_path, 2**22 + 12345, {"SYNCMESH_NATS_URL": "nats://127.0.0.1:4999"})  # above pid_max's default
    assert with_local_mesh({}, tmp_path) == {}


def test_an_unreadable_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / LOCAL_MESH_FILE).parent.mkdir()
    (tmp_path / LOCAL_MESH_FILE).write_text("{not json")
    assert with_local_mesh({"A": "b"}, tmp_path) == {"A": "b"}


def test_the_deployables_read_the_environment_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, os.getpid(), {"SYNCMESH_NATS_URL": "nats://127.0.0.1:4999"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SYNCMESH_NATS_URL", raising=False)
    assert load_settings().nats_url == "nats://127.0.0.1:4999"
    assert load_settings(local_mesh=False).nats_url is None


def test_a_timestamp_beyond_the_calendar_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="SYNCMESH_SYNC_START"):
        load_settings({"SYNCMESH_SYNC_START": "99999999999999999999"})


@pytest.mark.parametrize("raw", ["99999", "-1", "http"])
def test_a_bad_port_is_refused(raw: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        port_number(raw)
    assert port_number("0") == 0 and port_number("65535") == 65535
