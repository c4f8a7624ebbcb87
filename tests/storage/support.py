"""Shared helpers for the blob store tests: keys, payloads and raw access to each backend."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from cyxwiz.config import key_id
from cyxwiz.storage.local import LocalBlobStore
from cyxwiz.storage.s3 import MIN_PART_SIZE, S3BlobStore

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))
KEYS_A = {key_id(KEY_A): KEY_A}
KEYS_B = {key_id(KEY_B): KEY_B}
KEYS_BA = {key_id(KEY_B): KEY_B, key_id(KEY_A): KEY_A}
TEST_CHUNK = 4096
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def payload(n: int, seed: int = 0) -> bytes:
    """Deterministic pseudo-random bytes (fast, reproducible)."""
    return random.Random(seed).randbytes(n)


class LocalBackend:
    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def make(self, keys: dict[str, bytes] = KEYS_A, chunk_size: int = TEST_CHUNK) -> Any:
        return LocalBlobStore(self.root, keys, chunk_size)

    def raw_get(self, store: Any, address: str) -> bytes:
        return Path(store.path_for(address)).read_bytes()

    def raw_put(self, store: Any, address: str, data: bytes) -> None:
        path = Path(store.path_for(address))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def raw_objects(self) -> dict[str, bytes]:
        """Every file under the store root (blobs and temp files)."""
        return {str(p): p.read_bytes() for p in self.root.rglob("*") if p.is_file()}

    def blob_count(self) -> int:
        return sum(1 for p in self.root.rglob("*") if p.is_file() and p.parent.name != "tmp")

    def leftovers(self) -> list[str]:
        return [str(p) for p in (self.root / "tmp").iterdir()]


class S3Backend:
    name = "s3"
    prefix = "blobs/"

    def __init__(self, client: Any, bucket: str, endpoint: str) -> None:
        self.client = client
        self.bucket = bucket
        self.endpoint = endpoint

    def make(self, keys: dict[str, bytes] = KEYS_A, chunk_size: int = TEST_CHUNK) -> Any:
        return S3BlobStore(
            self.client, self.bucket, self.prefix, keys, chunk_size, part_size=MIN_PART_SIZE
        )

    def raw_get(self, store: Any, address: str) -> bytes:
        body = self.client.get_object(Bucket=self.bucket, Key=store.key_for(address))["Body"]
        with body:
            data: bytes = body.read()
        return data

    def raw_put(self, store: Any, address: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=store.key_for(address), Body=data)

    def keys(self) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return [obj["Key"] for page in pages for obj in page.get("Contents", ())]

    def raw_objects(self) -> dict[str, bytes]:
        out = {}
        for key in self.keys():
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            with body:
                out[key] = body.read()
        return out

    def blob_count(self) -> int:
        return sum(1 for k in self.keys() if "/tmp/" not in k)

    def uploads(self) -> list[dict[str, Any]]:
        resp = self.client.list_multipart_uploads(Bucket=self.bucket)
        return list(resp.get("Uploads", ()))

    def leftovers(self) -> list[str]:
        tmp = [k for k in self.keys() if k.startswith(self.prefix + "tmp/")]
        return tmp + [u["Key"] for u in self.uploads()]

    def clear(self) -> None:
        for upload in self.uploads():
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        for key in self.keys():
            self.client.delete_object(Bucket=self.bucket, Key=key)
        self.client.delete_bucket(Bucket=self.bucket)
