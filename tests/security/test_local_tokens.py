"""`syncmesh up` turns gRPC authentication on with a local token, and the mesh's own tools (run
from the same directory) present it without being told."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.common.auth import Role, local_tokens, parse_tokens
from services.common.grpc_client import bearer_token
from services.common.settings import Settings, load_settings


def test_the_local_tokens_are_made_once_private_and_read_by_the_tools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / ".syncmesh"
    data_dir.mkdir()
    tokens_file, token = local_tokens(data_dir)
    assert local_tokens(data_dir) == (tokens_file, token)  # a restart keeps them
    for path in (tokens_file, data_dir / "grpc-token"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    table = parse_tokens(tokens_file.read_text(), source="t")
    assert [(i.name, i.role) for i in table.by_token_hash.values()] == [("local-admin", Role.ADMIN)]
    assert bearer_token(Settings()) == token  # found under ./.syncmesh
    assert bearer_token(Settings(grpc_token="given-token-0123456789")) == "given-token-0123456789"


def test_no_local_token_means_none_presented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert bearer_token(Settings()) is None


def test_the_client_token_is_a_secret_readable_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("file-token-0123456789\n")
    assert load_settings({"SYNCMESH_GRPC_TOKEN_FILE": str(tmp_path / "t")}).grpc_token == "file-token-0123456789"
    hosts = load_settings({"SYNCMESH_PORTAL_RETURN_HOSTS": "Example.com, billing.example.com"}).portal_return_hosts
    assert hosts == ("example.com", "billing.example.com")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("short x reader\n", "at least 16"),
        ("a-long-enough-token-123 x superuser\n", "not reader, operator or admin"),
        ("a-long-enough-token-123 x\n", "expected"),
        ("sha256:zz x reader\n", "64 hex digits"),
    ],
)
def test_a_malformed_tokens_file_is_refused_naming_the_line_not_the_token(text: str, message: str) -> None:
    from services.common.errors import SettingsError

    with pytest.raises(SettingsError, match=message) as caught:
        parse_tokens("# comment\n" + text, source="tokens")
    assert "line 2" in str(caught.value)
    assert "a-long-enough-token-123" not in str(caught.value)


def test_hashed_tokens_are_accepted() -> None:
    import hashlib

    digest = hashlib.sha256(b"the-real-token-0123456789").hexdigest()
    table = parse_tokens(f"sha256:{digest} ci operator\n", source="t")
    assert list(table.by_token_hash) == [hashlib.sha256(b"the-real-token-0123456789").digest()]
