"""Settings: every bad value names its variable; secrets can come from files."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.errors import SettingsError
from services.common.settings import DEFAULT_PORTS, load_settings

BASE = {"SYNCMESH_NATS_URL": "nats://127.0.0.1:4222", "SYNCMESH_WEBHOOK_SECRETS": "whsec_a, whsec_b"}


def test_defaults_and_rotation() -> None:
    s = load_settings(BASE)
    assert s.webhook_secrets == ("whsec_a", "whsec_b")
    assert s.mode == "test" and dict(s.ports) == DEFAULT_PORTS
    assert s.stream_max_age_days == 400
    s.require("gateway")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SYNCMESH_NATS_URL": "http://x"}, "SYNCMESH_NATS_URL"),
        ({"SYNCMESH_DATABASE_URL": "mysql://x"}, "SYNCMESH_DATABASE_URL"),
        ({"SYNCMESH_WEBHOOK_SECRETS": "sk_test_oops"}, "SYNCMESH_WEBHOOK_SECRETS"),
        ({"SYNCMESH_MODE": "prod"}, "SYNCMESH_MODE"),
        ({"SYNCMESH_SYNC_START": "yesterday"}, "SYNCMESH_SYNC_START"),
        ({"SYNCMESH_GATEWAY_PORT": "eighty"}, "SYNCMESH_GATEWAY_PORT"),
        ({"SYNCMESH_CUSTOMER_PORT": "70000"}, "SYNCMESH_CUSTOMER_PORT"),
        ({"SYNCMESH_STRIPE_API_KEY": "pk_test_123"}, "publishable key"),
        ({"SYNCMESH_STRIPE_API_KEY": "sk_live_123"}, "SYNCMESH_MODE=test"),
        ({"SYNCMESH_MODE": "live", "SYNCMESH_STRIPE_API_KEY": "sk_test_1"}, "live"),
        ({"SYNCMESH_MAX_DELIVER": "0"}, "SYNCMESH_MAX_DELIVER"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings({**BASE, **env})


@pytest.mark.parametrize(
    "env",
    [
        {"SYNCMESH_DATABASE_URL": "mysql://user:hunter2@db/x"},
        {"SYNCMESH_NATS_URL": "nats://a:4222,http://user:hunter2@b:4222"},
        {"SYNCMESH_STRIPE_API_BASE": "ftp://user:hunter2@stripe"},
    ],
)
def test_a_refused_url_is_not_echoed(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(env)
    assert "hunter2" not in str(info.value) and next(iter(env)) in str(info.value)


def test_a_multi_host_database_url_is_one_url_and_nats_takes_a_list() -> None:
    """libpq's multi-host form is how a client follows a promoted primary without a proxy: it
    must reach asyncpg whole, not be split like NATS's list of seed servers."""
    url = "postgresql://u:p@host1:5432,host2:5433/db?target_session_attrs=read-write"
    settings = load_settings({"SYNCMESH_DATABASE_URL": url, "SYNCMESH_NATS_URL": "nats://a:1,nats://b:2"})
    assert settings.database_url == url
    assert settings.nats_url == "nats://a:1,nats://b:2"


def test_secret_from_file_and_ambiguity(tmp_path: Path) -> None:
    secret_file = tmp_path / "secrets"
    secret_file.write_text("whsec_from_file\n")
    s = load_settings({"SYNCMESH_WEBHOOK_SECRETS_FILE": str(secret_file)})
    assert s.webhook_secrets == ("whsec_from_file",)
    with pytest.raises(SettingsError, match="both set"):
        load_settings({"SYNCMESH_WEBHOOK_SECRETS_FILE": str(secret_file), "SYNCMESH_WEBHOOK_SECRETS": "whsec_x"})
    with pytest.raises(SettingsError, match="cannot be read"):
        load_settings({"SYNCMESH_WEBHOOK_SECRETS_FILE": str(tmp_path / "missing")})


def test_require_names_missing_variables() -> None:
    with pytest.raises(SettingsError, match="SYNCMESH_DATABASE_URL"):
        load_settings(BASE).require("billing")


def test_sync_start_formats() -> None:
    assert load_settings({"SYNCMESH_SYNC_START": "2025-01-31"}).sync_start.isoformat() == "2025-01-31T00:00:00+00:00"
    assert load_settings({"SYNCMESH_SYNC_START": "1700000000"}).sync_start.year == 2023
