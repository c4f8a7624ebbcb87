"""blob_store_from_settings: backend choice, master keys and previous keys from Settings."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from cyxwiz.config import BlobBackend, ConfigError, Settings
from cyxwiz.errors import IntegrityError
from cyxwiz.storage import BlobStore, blob_store_from_settings
from cyxwiz.storage.local import LocalBlobStore
from cyxwiz.storage.s3 import S3BlobStore

from .support import KEY_A, KEY_B, payload


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_local_by_default(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, blob_chunk_size=4096)
    store = blob_store_from_settings(settings)
    assert isinstance(store, LocalBlobStore)
    assert isinstance(store, BlobStore)
    assert store.root == tmp_path / "blobs"
    assert store.chunk_size == 4096
    data = payload(10_000)
    assert store.read_all(store.put_bytes(data).address) == data
    assert (tmp_path / "master.key").exists()  # dev: generated once, reused
    again = blob_store_from_settings(Settings(data_dir=tmp_path))
    assert again.read_all(store.put_bytes(data).address) == data


def test_previous_master_keys_and_rotation(tmp_path: Path) -> None:
    blob_dir = tmp_path / "b"
    old = blob_store_from_settings(Settings(blob_dir=blob_dir, master_key=b64(KEY_A)))
    data = payload(5000)
    address = old.put_bytes(data).address

    only_new = Settings(blob_dir=blob_dir, master_key=b64(KEY_B))
    with pytest.raises(IntegrityError, match="CYXWIZ_PREVIOUS_MASTER_KEYS"):
        blob_store_from_settings(only_new).read_all(address)

    rotating = blob_store_from_settings(
        Settings(blob_dir=blob_dir, master_key=b64(KEY_B), previous_master_keys=b64(KEY_A))
    )
    assert rotating.read_all(address) == data
    assert [rotating.rewrap(a) for a in rotating.addresses()] == [True]
    assert blob_store_from_settings(only_new).read_all(address) == data


def test_s3_from_settings(moto_endpoint: str, s3_bucket: str, s3_client: Any) -> None:
    settings = Settings(
        blob_backend=BlobBackend.s3,
        s3_bucket=s3_bucket,
        s3_prefix="models/",
        s3_endpoint_url=moto_endpoint,
        master_key=b64(KEY_A),
    )
    store = blob_store_from_settings(settings)
    assert isinstance(store, S3BlobStore)
    data = payload(70_000)
    info = store.put_bytes(data)
    assert store.read_all(info.address) == data
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["models/" + info.address]
    store.delete(info.address)


def test_s3_needs_a_bucket(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, blob_backend=BlobBackend.s3, master_key=b64(KEY_A))
    with pytest.raises(ConfigError, match="CYXWIZ_S3_BUCKET"):
        blob_store_from_settings(settings)
