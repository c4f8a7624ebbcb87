"""Settings: master key generation and production refusals."""

from __future__ import annotations

import base64
import secrets
import stat
from pathlib import Path

import pytest

from cyxwiz.config import ConfigError, Settings, key_id


def test_master_key_generated_once_with_0600(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "d")
    keys = s.master_keys
    path = tmp_path / "d" / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(next(iter(keys.values()))) == 32
    again = Settings(data_dir=tmp_path / "d").master_keys
    assert again == keys


def test_explicit_key_and_previous_keys(tmp_path: Path) -> None:
    a, b = secrets.token_bytes(32), secrets.token_bytes(32)
    s = Settings(
        data_dir=tmp_path,
        master_key=base64.b64encode(a).decode(),
        previous_master_keys=base64.b64encode(b).decode(),
    )
    assert list(s.master_keys.items()) == [(key_id(a), a), (key_id(b), b)]
    assert not (tmp_path / "master.key").exists()


@pytest.mark.parametrize(
    "value", ["changeme", "placeholder", base64.b64encode(b"\0" * 32).decode()]
)
def test_production_refuses_placeholder_keys(tmp_path: Path, value: str) -> None:
    s = Settings(data_dir=tmp_path, env="production", master_key=value)
    with pytest.raises(ConfigError):
        _ = s.master_keys


def test_production_refuses_to_generate_a_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be set explicitly"):
        _ = Settings(data_dir=tmp_path, env="production").master_keys
    assert not (tmp_path / "master.key").exists()


def test_bad_key_encoding(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        _ = Settings(data_dir=tmp_path, master_key=base64.b64encode(b"short").decode()).master_keys
    with pytest.raises(ConfigError, match="base64"):
        _ = Settings(data_dir=tmp_path, master_key="not base64!!").master_keys


def test_default_database_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'cyxwiz.db'}"
    assert s.resolved_blob_dir == tmp_path / "blobs"
