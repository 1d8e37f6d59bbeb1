"""The NATS identity settings and the permission matrix, derived from the roster (no process)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from launcher.natsauth import (
    LocalCredentials,
    gateway_identity,
    operator_identity,
    render_authorization,
    roster_identities,
    subscriber_identity,
)
from services import registry
from services.common.bus import connect_options
from services.common.errors import SettingsError
from services.common.settings import load_settings, with_local_mesh

TOY = "tests.roster.ledger"


def test_a_fourth_service_gets_its_identity_from_the_roster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "PACKAGES", (*registry.PACKAGES, TOY))
    identities = {i.user: i for i in roster_identities()}
    assert list(identities) == ["gateway", "customer", "billing", "crm-export", "ledger", "operator"]
    ledger = identities["ledger"]
    assert {"syncmesh.ledger.>", "dlq.ledger", "$JS.API.CONSUMER.MSG.NEXT.STRIPE.ledger"} <= set(ledger.publish)
    assert "stripe.>" not in ledger.publish
    assert ledger.subscribe == ("_INBOX_ledger.>",)
    # The walkers keep their hands off its durable too.
    for walker in (identities["gateway"], identities["operator"]):
        assert "$JS.API.CONSUMER.MSG.NEXT.STRIPE.ledger" in walker.publish_deny


def test_only_the_gateway_and_the_operator_publish_stripe_events_and_change_streams() -> None:
    for identity in roster_identities():
        may_publish_stripe = "stripe.>" in identity.publish
        may_update = "$JS.API.STREAM.UPDATE.STRIPE" in identity.publish
        assert may_publish_stripe == may_update == (identity.user in ("gateway", "operator")), identity.user
        assert not any(".DELETE.STRIPE" in s and "CONSUMER" not in s for s in identity.publish)
        assert not any("PURGE" in s for s in identity.publish)


def test_a_subscriber_reads_domain_events_only() -> None:
    team = subscriber_identity("team-a")
    assert "syncmesh.>" in team.subscribe and "stripe.>" not in team.subscribe
    assert not any(s.startswith(("stripe.", "syncmesh.", "dlq.")) for s in team.publish)
    assert not any("STRIPE" in s or "DLQ" in s for s in team.publish)
    with pytest.raises(ValueError):
        subscriber_identity("operator")


def test_the_rendered_block_keeps_dollar_subjects_literal_and_refers_to_variables() -> None:
    block = render_authorization([gateway_identity(["customer"])], {"gateway": "$NATS_PASSWORD_GATEWAY"})
    assert "password: $NATS_PASSWORD_GATEWAY," in block
    assert '"$JS.API.STREAM.INFO.STRIPE"' in block
    block = render_authorization([operator_identity([])], {"operator": 'a"b'})
    assert 'password: "a\\"b"' in block


def test_local_passwords_are_private_and_kept(tmp_path: Path) -> None:
    credentials = LocalCredentials(tmp_path / "users")
    first = credentials.password("customer")
    assert len(first) == 48 and credentials.password("customer") == first
    assert os.stat(credentials.password_file("customer")).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "users").st_mode & 0o777 == 0o700
    assert credentials.password("billing") != first


def test_identity_settings_come_from_files_and_go_together(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    settings = load_settings({"SYNCMESH_NATS_USER": "customer", "SYNCMESH_NATS_PASSWORD_FILE": str(secret)})
    assert (settings.nats_user, settings.nats_password) == ("customer", "s3cret")
    options = connect_options(settings)
    assert (options["user"], options["password"], options["inbox_prefix"]) == ("customer", "s3cret", "_INBOX_customer")
    with pytest.raises(SettingsError, match="go together") as refused:
        load_settings({"SYNCMESH_NATS_PASSWORD_FILE": str(secret)})
    assert "s3cret" not in str(refused.value)
    with pytest.raises(SettingsError, match="go together"):
        load_settings({"SYNCMESH_NATS_TLS_CERT_FILE": str(secret)})
    with pytest.raises(SettingsError, match="not a readable file"):
        load_settings({"SYNCMESH_NATS_TLS_CA_FILE": str(tmp_path / "missing.pem")})


def test_an_nkey_seed_without_the_nkeys_package_is_one_clear_line(tmp_path: Path) -> None:
    seed = tmp_path / "seed.nk"
    seed.write_text("SUA...")
    settings = load_settings({"SYNCMESH_NATS_NKEY_SEED_FILE": str(seed)})
    try:
        import nkeys  # noqa: F401
    except ImportError:
        with pytest.raises(SettingsError, match="pip install nkeys"):
            connect_options(settings)
    else:
        assert connect_options(settings)["nkeys_seed"] == str(seed)


def test_a_tls_url_turns_tls_on_with_the_system_trust_store() -> None:
    options = connect_options(load_settings({"SYNCMESH_NATS_URL": "tls://nats.example:4222"}))
    assert options["tls"] is not None and "user" not in options


def test_the_local_operator_identity_stays_away_from_another_nats(tmp_path: Path) -> None:
    (tmp_path / ".syncmesh").mkdir()
    recorded = {
        "SYNCMESH_NATS_URL": "nats://127.0.0.1:4222",
        "SYNCMESH_NATS_USER": "operator",
        "SYNCMESH_NATS_PASSWORD_FILE": str(tmp_path / "operator.password"),
    }
    (tmp_path / ".syncmesh" / "mesh.json").write_text(json.dumps({"pid": os.getpid(), "env": recorded}))
    assert with_local_mesh({}, tmp_path) == recorded
    elsewhere = with_local_mesh({"SYNCMESH_NATS_URL": "nats://prod:4222"}, tmp_path)
    assert elsewhere == {"SYNCMESH_NATS_URL": "nats://prod:4222"}
