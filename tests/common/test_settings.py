"""Settings: every bad value names its variable; secrets can come from files."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.deployable import GATEWAY
from services.common.errors import SettingsError
from services.common.settings import load_settings
from services.registry import by_name

BASE = {"SYNCMESH_NATS_URL": "nats://127.0.0.1:4222", "SYNCMESH_WEBHOOK_SECRETS": "whsec_a, whsec_b"}


def test_defaults_and_rotation() -> None:
    s = load_settings(BASE)
    assert s.webhook_secrets == ("whsec_a", "whsec_b")
    assert s.mode == "test" and dict(s.port_overrides) == {}
    assert GATEWAY.port(s) == 8080 and by_name("customer").port(s) == 50051
    assert s.stream_max_age_days == 400
    GATEWAY.require(s)


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
        by_name("billing").deployable.require(load_settings(BASE))


def test_ports_come_from_any_port_variable_and_zero_lets_the_os_pick() -> None:
    s = load_settings({"SYNCMESH_CUSTOMER_PORT": "0", "SYNCMESH_SOMETHING_NEW_PORT": "6000", "SYNCMESH_MODE": "test"})
    assert s.port_overrides == {"SYNCMESH_CUSTOMER_PORT": 0, "SYNCMESH_SOMETHING_NEW_PORT": 6000}
    assert by_name("customer").port(s) == 0 and by_name("billing").port(s) == 50052
    assert s.port_for("SYNCMESH_SOMETHING_NEW_PORT", 1) == 6000
    with pytest.raises(SettingsError, match="SYNCMESH_SOMETHING_NEW_PORT"):
        load_settings({"SYNCMESH_SOMETHING_NEW_PORT": "-1"})


def test_port_from_file(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    port_file.write_text("50100\n")
    assert load_settings({"SYNCMESH_BILLING_PORT_FILE": str(port_file)}).port_overrides == {
        "SYNCMESH_BILLING_PORT": 50100
    }


def test_require_refuses_a_variable_that_is_no_setting() -> None:
    with pytest.raises(SettingsError, match="SYNCMESH_NO_SUCH_THING"):
        load_settings(BASE).require(("SYNCMESH_NO_SUCH_THING",), to_run="a toy")


def test_sync_start_formats() -> None:
    assert load_settings({"SYNCMESH_SYNC_START": "2025-01-31"}).sync_start.isoformat() == "2025-01-31T00:00:00+00:00"
    assert load_settings({"SYNCMESH_SYNC_START": "1700000000"}).sync_start.year == 2023


@pytest.mark.parametrize("replicas", ["2", "4"])
def test_an_even_number_of_stream_replicas_is_refused(replicas: str) -> None:
    with pytest.raises(SettingsError, match=r"SYNCMESH_STREAM_REPLICAS=\d is even"):
        load_settings({"SYNCMESH_STREAM_REPLICAS": replicas})


def test_the_cluster_timings_are_read_and_bounded() -> None:
    settings = load_settings(
        {
            "SYNCMESH_STREAM_REPLICAS": "3",
            "SYNCMESH_NATS_CONNECT_TIMEOUT_SECONDS": "1.5",
            "SYNCMESH_NATS_RECONNECT_WAIT_SECONDS": "0.25",
            "SYNCMESH_DATABASE_CONNECT_TIMEOUT_SECONDS": "3",
            "SYNCMESH_DATABASE_RETRY_MAX_SECONDS": "1",
        }
    )
    assert (settings.stream_replicas, settings.nats_connect_timeout_seconds) == (3, 1.5)
    assert (settings.nats_reconnect_wait_seconds, settings.database_connect_timeout_seconds) == (0.25, 3.0)
    assert settings.database_retry_max_seconds == 1.0
    for name in ("SYNCMESH_NATS_RECONNECT_WAIT_SECONDS", "SYNCMESH_DATABASE_RETRY_MAX_SECONDS"):
        with pytest.raises(SettingsError, match=name):
            load_settings({name: "0"})
