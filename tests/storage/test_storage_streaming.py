"""Constant memory and minimal I/O: the writer and reader never hold more than a chunk or a part."""

from __future__ import annotations

import hashlib
import tracemalloc
from pathlib import Path
from typing import Any

from cyxwiz.storage.crypto import DEFAULT_CHUNK_SIZE, HEADER_LEN, TAG_LEN
from cyxwiz.storage.local import LocalBlobStore
from cyxwiz.storage.s3 import MIN_PART_SIZE, S3BlobStore

from .support import KEYS_A, TEST_CHUNK, payload

MIB = 1024 * 1024


def test_local_writer_and_reader_use_constant_memory(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs", KEYS_A, DEFAULT_CHUNK_SIZE)
    block = payload(MIB, seed=1)  # allocated before tracing starts
    n_blocks = 64
    expected = hashlib.sha256()
    for _ in range(n_blocks):
        expected.update(block)

    tracemalloc.start()
    try:
        with store.writer() as w:
            for _ in range(n_blocks):
                w.write(block)
            info = w.finish()
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        got = hashlib.sha256()
        n = 0
        for piece in store.read_range(info.address):
            got.update(piece)
            n += len(piece)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert info.address == expected.hexdigest()
    assert n == n_blocks * MIB
    assert got.hexdigest() == info.address
    # 64 MiB streamed; the writer holds one plaintext + one sealed chunk, the reader one of each
    assert write_peak < 6 * MIB, write_peak
    assert read_peak < 6 * MIB, read_peak


class RecordingClient:
    """Forwards to a boto3 client and records what went over the wire."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._client, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs))
            return target(*args, **kwargs)

        return call

    def named(self, name: str) -> list[dict[str, Any]]:
        return [kw for n, kw in self.calls if n == name]


def test_s3_upload_holds_at_most_one_part(s3_client: Any, s3_bucket: str) -> None:
    client = RecordingClient(s3_client)
    store = S3BlobStore(client, s3_bucket, "p/", KEYS_A, TEST_CHUNK, part_size=MIN_PART_SIZE)
    block = payload(MIB, seed=2)
    with store.writer() as w:
        for _ in range(16):
            w.write(block)
        info = w.finish()
    parts = [len(kw["Body"]) for kw in client.named("upload_part")]
    assert len(parts) == 4
    assert all(MIN_PART_SIZE <= n <= MIN_PART_SIZE + TEST_CHUNK + TAG_LEN for n in parts[:-1])
    assert sum(parts) == store.stored_size(info.address)
    assert client.named("put_object") == []
    assert [kw["Key"] for kw in client.named("copy")] == ["p/" + info.address]
    assert [obj for obj in store.addresses()] == [info.address]


def test_s3_small_blob_is_one_put_to_its_address(s3_client: Any, s3_bucket: str) -> None:
    client = RecordingClient(s3_client)
    store = S3BlobStore(client, s3_bucket, "p/", KEYS_A, TEST_CHUNK, part_size=MIN_PART_SIZE)
    info = store.put_bytes(payload(100_000))
    assert [kw["Key"] for kw in client.named("put_object")] == ["p/" + info.address]
    assert client.named("create_multipart_upload") == []
    assert client.named("copy") == []
    client.calls.clear()
    assert not store.put_bytes(payload(100_000)).created  # dedup: nothing uploaded at all
    assert client.named("put_object") == []


def test_s3_range_read_fetches_only_needed_chunks(s3_client: Any, s3_bucket: str) -> None:
    client = RecordingClient(s3_client)
    store = S3BlobStore(client, s3_bucket, "p/", KEYS_A, TEST_CHUNK, part_size=MIN_PART_SIZE)
    data = payload(20 * TEST_CHUNK)
    address = store.put_bytes(data).address
    client.calls.clear()
    start, end = 7 * TEST_CHUNK + 100, 9 * TEST_CHUNK + 5  # chunks 7, 8, 9
    assert b"".join(store.read_range(address, start, end)) == data[start:end]
    stride = TEST_CHUNK + TAG_LEN
    first, last = HEADER_LEN + 7 * stride, HEADER_LEN + 10 * stride - 1
    assert [kw["Range"] for kw in client.named("get_object")] == [
        f"bytes=0-{HEADER_LEN - 1}",
        f"bytes={first}-{last}",
    ]
