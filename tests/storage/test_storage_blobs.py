"""BlobStore behaviour, run against both backends (local directory and S3 via moto)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cyxwiz.errors import (
    IntegrityError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    RangeNotSatisfiable,
)
from cyxwiz.storage import BlobInfo, BlobStore, BlobWriter
from cyxwiz.storage.crypto import (
    DEFAULT_CHUNK_SIZE,
    HEADER_LEN,
    MAGIC,
    TAG_LEN,
    Header,
    decrypt_stream,
    stored_size_for,
)

from .support import KEYS_A, KEYS_B, KEYS_BA, TEST_CHUNK, payload

STRIDE = TEST_CHUNK + TAG_LEN


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# -- round trips ----------------------------------------------------------------------------------


def test_store_satisfies_protocols(store: Any) -> None:
    assert isinstance(store, BlobStore)
    with store.writer() as w:
        assert isinstance(w, BlobWriter)


@pytest.mark.parametrize(
    "size", [1, 100, TEST_CHUNK - 1, TEST_CHUNK + 1, 10 * TEST_CHUNK + 1234, 50_000]
)
def test_round_trip(store: Any, backend: Any, size: int) -> None:
    data = payload(size, seed=size)
    info = store.put_bytes(data)
    assert info == BlobInfo(address=sha(data), size=size, created=True)
    assert store.exists(info.address)
    assert store.size(info.address) == size
    assert store.stored_size(info.address) == stored_size_for(size, TEST_CHUNK)
    assert len(backend.raw_get(store, info.address)) == stored_size_for(size, TEST_CHUNK)
    assert store.read_all(info.address) == data
    assert b"".join(store.read_range(info.address)) == data
    assert backend.leftovers() == []


def test_put_stream_with_irregular_pieces(store: Any) -> None:
    data = payload(7 * TEST_CHUNK + 99, seed=1)
    sizes = [1, 4095, 4096, 4097, 3, 0, 10_000, 8192]
    pieces, pos = [], 0
    for n in sizes:
        pieces.append(data[pos : pos + n])
        pos += n
    pieces.append(data[pos:])
    info = store.put_stream(iter(pieces))
    assert info.address == sha(data)
    assert info.size == len(data)
    assert store.read_all(info.address) == data


def test_writer_accepts_memoryview_and_bytearray(store: Any) -> None:
    data = payload(3 * TEST_CHUNK + 5, seed=2)
    with store.writer() as w:
        w.write(memoryview(data)[:5000])
        w.write(bytearray(data[5000:9000]))
        w.write(data[9000:])
        assert w.bytes_written == len(data)
        info = w.finish()
    assert store.read_all(info.address) == data


def test_empty_blob(store: Any, backend: Any) -> None:
    info = store.put_bytes(b"")
    assert info == BlobInfo(address=sha(b""), size=0, created=True)
    assert store.size(info.address) == 0
    assert len(backend.raw_get(store, info.address)) == HEADER_LEN + TAG_LEN
    assert store.read_all(info.address) == b""
    assert list(store.read_range(info.address, 0, 0)) == []
    with pytest.raises(RangeNotSatisfiable):
        store.read_range(info.address, 0, 1)


@pytest.mark.parametrize("n_chunks", [1, 2, 5])
def test_exact_multiple_of_chunk_size(store: Any, backend: Any, n_chunks: int) -> None:
    data = payload(n_chunks * TEST_CHUNK, seed=n_chunks)
    info = store.put_bytes(data)
    # the final chunk is full: no extra empty chunk
    assert len(backend.raw_get(store, info.address)) == HEADER_LEN + n_chunks * STRIDE
    assert store.size(info.address) == len(data)
    assert store.read_all(info.address) == data
    assert b"".join(store.read_range(info.address, len(data) - 1)) == data[-1:]


def test_default_chunk_size_few_mib(backend: Any) -> None:
    """Default 1 MiB chunks; 12 MiB is a multipart upload + multipart server-side copy on S3."""
    store = backend.make(chunk_size=DEFAULT_CHUNK_SIZE)
    data = payload(12 * 1024 * 1024 + 4321, seed=3)
    info = store.put_stream(chunked(data, 700_000))
    assert info.address == sha(data)
    assert store.size(info.address) == len(data)
    assert hashlib.sha256(b"".join(store.read_range(info.address))).hexdigest() == info.address
    lo, hi = 3 * DEFAULT_CHUNK_SIZE - 10, 5 * DEFAULT_CHUNK_SIZE + 10
    assert b"".join(store.read_range(info.address, lo, hi)) == data[lo:hi]
    assert backend.leftovers() == []
    small = payload(3 * 1024 * 1024 + 1, seed=4)  # below one S3 part: a single PUT
    assert store.read_all(store.put_bytes(small).address) == small


# -- ranges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [5 * TEST_CHUNK + 77, 4 * TEST_CHUNK])
def test_range_reads_match_slices(store: Any, size: int) -> None:
    data = payload(size, seed=size)
    address = store.put_bytes(data).address

    @hsettings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.integers(0, size), st.integers(0, size))
    def check(a: int, b: int) -> None:
        start, end = min(a, b), max(a, b)
        pieces = list(store.read_range(address, start, end))
        assert all(type(p) is bytes for p in pieces)
        assert b"".join(pieces) == data[start:end]
        assert b"".join(store.read_range(address, start)) == data[start:]

    check()


def test_range_reads_only_the_chunks_needed(store: Any, backend: Any) -> None:
    data = payload(6 * TEST_CHUNK, seed=5)
    address = store.put_bytes(data).address
    raw = bytearray(backend.raw_get(store, address))
    raw[HEADER_LEN + 4 * STRIDE + 7] ^= 1  # chunk 4 is corrupt
    backend.raw_put(store, address, bytes(raw))
    # ranges that stay in chunks 0..3 or in chunk 5 still work: only touched chunks are read
    assert b"".join(store.read_range(address, 100, 4 * TEST_CHUNK)) == data[100 : 4 * TEST_CHUNK]
    assert b"".join(store.read_range(address, 5 * TEST_CHUNK + 1)) == data[5 * TEST_CHUNK + 1 :]
    # a range across chunk 4 yields what precedes it, then fails; never the corrupt chunk
    pieces = store.read_range(address, 3 * TEST_CHUNK + 5, 5 * TEST_CHUNK + 5)
    assert next(pieces) == data[3 * TEST_CHUNK + 5 : 4 * TEST_CHUNK]
    with pytest.raises(IntegrityError, match=f"blob {address}: chunk 4"):
        next(pieces)


@pytest.mark.parametrize(
    ("start", "end"),
    [(-1, 10), (0, 10_001), (10_001, None), (10_001, 10_002), (20, 10), (5, -1)],
)
def test_out_of_range_is_rejected_before_streaming(store: Any, start: int, end: int | None) -> None:
    address = store.put_bytes(payload(10_000)).address
    with pytest.raises(RangeNotSatisfiable) as info:
        store.read_range(address, start, end)  # raised by the call, not by iterating
    assert info.value.headers["Content-Range"] == "bytes */10000"
    assert list(store.read_range(address, 10_000)) == []
    assert list(store.read_range(address, 10_000, 10_000)) == []


# -- dedup, delete, listing -----------------------------------------------------------------------


def test_dedup(store: Any, backend: Any) -> None:
    data = payload(3 * TEST_CHUNK + 1, seed=6)
    first = store.put_bytes(data)
    second = store.put_stream(chunked(data, 1000))
    assert first.created
    assert not second.created
    assert second == BlobInfo(address=first.address, size=len(data), created=False)
    assert backend.blob_count() == 1
    assert backend.leftovers() == []
    assert store.read_all(first.address) == data


def test_dedup_large_multipart(backend: Any) -> None:
    store = backend.make()
    data = payload(6 * 1024 * 1024, seed=7)  # more than one S3 part
    assert store.put_bytes(data).created
    assert not store.put_bytes(data).created
    assert backend.blob_count() == 1
    assert backend.leftovers() == []


def test_exists_delete_addresses(store: Any, backend: Any) -> None:
    infos = [store.put_bytes(payload(n, seed=n)) for n in (10, 5000, 0)]
    assert list(store.addresses()) == sorted(i.address for i in infos)
    missing = sha(b"never stored")
    assert not store.exists(missing)
    for call in (store.size, store.read_all, store.data_key, store.rewrap, store.delete):
        with pytest.raises(NotFound):
            call(missing)
    with pytest.raises(NotFound):
        store.read_range(missing)  # eager
    with pytest.raises(NotFound):
        store.read_encrypted(missing)
    store.delete(infos[0].address)
    assert not store.exists(infos[0].address)
    with pytest.raises(NotFound):
        store.delete(infos[0].address)
    assert list(store.addresses()) == sorted(i.address for i in infos[1:])
    assert backend.blob_count() == 2


BAD_ADDRESSES = [
    "../etc/passwd",
    "../../" + "a" * 58,
    "a" * 63,
    "a" * 65,
    "A" * 64,
    "g" * 64,
    "a" * 63 + "/",
    "/" + "a" * 63,
    "",
    " " + "a" * 63,
    "a" * 64 + "\n",
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_invalid_addresses_rejected(store: Any, address: str) -> None:
    for call in (
        store.exists,
        store.size,
        store.read_all,
        store.read_range,
        store.delete,
        store.data_key,
        store.rewrap,
        store.read_encrypted,
    ):
        with pytest.raises(InvalidInput):
            call(address)


# -- tampering ------------------------------------------------------------------------------------


def _stored(store: Any, backend: Any, n: int = 4 * TEST_CHUNK + 100) -> tuple[str, bytes]:
    info = store.put_bytes(payload(n, seed=8))
    return info.address, backend.raw_get(store, info.address)


@pytest.mark.parametrize(
    "offset",
    [
        HEADER_LEN + 5,  # chunk 0
        HEADER_LEN + 2 * STRIDE + TEST_CHUNK + 3,  # chunk 2's tag
        -1,  # final chunk's tag
        -20,  # final chunk's ciphertext
    ],
)
def test_tampered_chunk_byte(store: Any, backend: Any, offset: int) -> None:
    address, raw = _stored(store, backend)
    tampered = bytearray(raw)
    tampered[offset] ^= 0x40
    backend.raw_put(store, address, bytes(tampered))
    with pytest.raises(IntegrityError, match=address):
        store.read_all(address)


@pytest.mark.parametrize(
    ("offset", "field"),
    [
        (0, "magic"),
        (7, "chunk_size"),
        (12, "nonce_prefix"),
        (19, "key_id"),
        (30, "wrap_nonce"),
        (60, "wrapped_key"),
        (HEADER_LEN - 1, "wrapped_key tag"),
    ],
)
def test_tampered_header(store: Any, backend: Any, offset: int, field: str) -> None:
    address, raw = _stored(store, backend)
    tampered = bytearray(raw)
    tampered[offset] ^= 0x01
    backend.raw_put(store, address, bytes(tampered))
    with pytest.raises(IntegrityError, match=address):
        b"".join(store.read_range(address))
    with pytest.raises(IntegrityError):
        b"".join(store.read_range(address, 0, 10))


@pytest.mark.parametrize(
    "cut",
    [
        1,  # last byte of the tag
        16,  # the whole tag
        100 + TAG_LEN,  # the whole final chunk (the rest ends on a chunk border)
        100 + TAG_LEN + 1,
        100 + TAG_LEN + STRIDE,  # two whole chunks
    ],
)
def test_truncated_blob(store: Any, backend: Any, cut: int) -> None:
    address, raw = _stored(store, backend)
    backend.raw_put(store, address, raw[:-cut])
    with pytest.raises(IntegrityError, match=address):
        store.read_all(address)


@pytest.mark.parametrize("keep", [0, 10, HEADER_LEN, HEADER_LEN + 15])
def test_truncated_to_header(store: Any, backend: Any, keep: int) -> None:
    address, raw = _stored(store, backend)
    backend.raw_put(store, address, raw[:keep])
    with pytest.raises(IntegrityError, match=address):
        store.size(address)
    with pytest.raises(IntegrityError, match=address):
        store.read_all(address)


@pytest.mark.parametrize("extra", [b"\x00", b"x" * TAG_LEN, b"y" * 50, b"z" * STRIDE])
def test_appended_bytes(store: Any, backend: Any, extra: bytes) -> None:
    address, raw = _stored(store, backend)
    backend.raw_put(store, address, raw + extra)
    with pytest.raises(IntegrityError, match=address):
        store.read_all(address)


def test_appended_copy_of_a_chunk(store: Any, backend: Any) -> None:
    address, raw = _stored(store, backend, n=3 * TEST_CHUNK)
    backend.raw_put(store, address, raw + raw[HEADER_LEN : HEADER_LEN + STRIDE])
    with pytest.raises(IntegrityError, match=address):
        store.read_all(address)


def test_swapped_chunks(store: Any, backend: Any) -> None:
    address, raw = _stored(store, backend)
    c0 = raw[HEADER_LEN : HEADER_LEN + STRIDE]
    c1 = raw[HEADER_LEN + STRIDE : HEADER_LEN + 2 * STRIDE]
    backend.raw_put(store, address, raw[:HEADER_LEN] + c1 + c0 + raw[HEADER_LEN + 2 * STRIDE :])
    with pytest.raises(IntegrityError, match=address):
        store.read_all(address)
    with pytest.raises(IntegrityError, match=address):
        b"".join(store.read_range(address, 0, 10))


def test_blob_moved_to_another_address(store: Any, backend: Any) -> None:
    """A valid blob copied under a different address fails: the final chunk names its address."""
    a = store.put_bytes(payload(2 * TEST_CHUNK + 3, seed=9))
    b = store.put_bytes(payload(2 * TEST_CHUNK + 3, seed=10))
    backend.raw_put(store, b.address, backend.raw_get(store, a.address))
    with pytest.raises(IntegrityError, match=b.address):
        store.read_all(b.address)


def test_chunk_from_another_blob(store: Any, backend: Any) -> None:
    address, raw = _stored(store, backend)
    other = backend.raw_get(store, store.put_bytes(payload(4 * TEST_CHUNK + 100, seed=11)).address)
    spliced = raw[: HEADER_LEN + STRIDE] + other[HEADER_LEN + STRIDE : HEADER_LEN + 2 * STRIDE]
    backend.raw_put(store, address, spliced + raw[HEADER_LEN + 2 * STRIDE :])
    with pytest.raises(IntegrityError, match="chunk 1"):
        store.read_all(address)


# -- confidentiality at rest ----------------------------------------------------------------------

MARKER = b"<<CYXWIZ-PLAINTEXT-MARKER-0123456789>>"


def _no_marker(objects: dict[str, bytes]) -> None:
    probe = MARKER[:16]
    for name, data in objects.items():
        assert probe not in data, f"plaintext found in {name}"


def test_no_plaintext_at_rest(store: Any, backend: Any) -> None:
    data = MARKER * (6 * 1024 * 1024 // len(MARKER))  # more than one S3 part
    with store.writer() as w:
        w.write(data[: len(data) // 2])
        _no_marker(backend.raw_objects())  # temp state mid-upload
        w.write(data[len(data) // 2 :])
        info = w.finish()
    small = store.put_bytes(MARKER * 10)
    objects = backend.raw_objects()
    assert len(objects) == 2
    _no_marker(objects)
    assert store.read_all(info.address) == data
    assert store.read_all(small.address) == MARKER * 10


# -- limits and aborts ----------------------------------------------------------------------------


def test_max_size_enforced_and_nothing_left(store: Any, backend: Any) -> None:
    data = payload(20_000, seed=12)
    with pytest.raises(PayloadTooLarge):
        store.put_stream(chunked(data, 3000), max_size=10_000)
    assert backend.blob_count() == 0
    assert backend.leftovers() == []
    ok = store.put_stream(chunked(data[:10_000], 3000), max_size=10_000)  # exactly the limit
    assert ok.size == 10_000


def test_max_size_after_parts_uploaded(store: Any, backend: Any) -> None:
    """On S3 the limit hits after a multipart upload has started: it must be aborted."""
    piece = payload(1024 * 1024, seed=13)
    with store.writer(max_size=7 * 1024 * 1024) as w:
        for _ in range(7):
            w.write(piece)
        with pytest.raises(PayloadTooLarge):
            w.write(b"!")
        with pytest.raises(RuntimeError):
            w.write(b"more")
    assert backend.blob_count() == 0
    assert backend.leftovers() == []


def test_abort_leaves_nothing(store: Any, backend: Any) -> None:
    w = store.writer()
    for _ in range(6):
        w.write(payload(1024 * 1024, seed=14))
    w.abort()
    w.abort()  # idempotent, never raises
    with pytest.raises(RuntimeError):
        w.write(b"x")
    with pytest.raises(RuntimeError):
        w.finish()
    assert backend.blob_count() == 0
    assert backend.leftovers() == []


def test_exception_in_with_block_aborts(store: Any, backend: Any) -> None:
    class Boom(Exception):
        pass

    def fail_inside(w: Any) -> None:
        with w:
            w.write(payload(5 * TEST_CHUNK))
            raise Boom

    with pytest.raises(Boom):
        fail_inside(store.writer())
    with store.writer() as w:  # leaving without finish() stores nothing either
        w.write(b"forgotten")
    assert backend.blob_count() == 0
    assert backend.leftovers() == []


def test_purge_temp_removes_only_stale_uploads(store: Any, backend: Any) -> None:
    w = store.writer()
    for _ in range(6):  # on S3 this starts a multipart upload
        w.write(payload(1024 * 1024, seed=17))
    kept = store.put_bytes(b"kept")
    assert len(backend.leftovers()) == 1
    if backend.name == "local":  # moto reports every multipart upload as initiated in 2010
        assert store.purge_temp(older_than=3600) == 0
        assert len(backend.leftovers()) == 1
    assert store.purge_temp(older_than=-1) == 1
    assert backend.leftovers() == []
    w.abort()  # its temp state is gone already: still never raises
    assert store.read_all(kept.address) == b"kept"


def test_finish_is_idempotent_and_abort_after_finish_keeps_blob(store: Any) -> None:
    w = store.writer()
    w.write(b"hello")
    info = w.finish()
    assert w.finish() is info
    w.abort()
    with pytest.raises(RuntimeError):
        w.write(b"more")
    assert store.read_all(info.address) == b"hello"


def test_stream_error_aborts(store: Any, backend: Any) -> None:
    def pieces() -> Any:
        yield payload(3 * TEST_CHUNK)
        raise OSError("client went away")

    with pytest.raises(OSError, match="went away"):
        store.put_stream(pieces())
    assert backend.leftovers() == []
    assert backend.blob_count() == 0


# -- keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3 * TEST_CHUNK + 5, 6 * 1024 * 1024 + 7])
def test_key_rotation(backend: Any, size: int) -> None:
    data = payload(size, seed=15)
    store_a = backend.make(KEYS_A)
    address = store_a.put_bytes(data).address
    with pytest.raises(IntegrityError, match="unknown master key id"):
        backend.make(KEYS_B).read_all(address)

    store_ba = backend.make(KEYS_BA)  # B active, A previous
    assert store_ba.read_all(address) == data
    raw_before = backend.raw_get(store_ba, address)
    assert store_ba.rewrap(address) is True
    assert store_ba.rewrap(address) is False
    raw_after = backend.raw_get(store_ba, address)
    assert raw_after[HEADER_LEN:] == raw_before[HEADER_LEN:]  # only the header changed
    assert raw_after[:HEADER_LEN] != raw_before[:HEADER_LEN]

    store_b = backend.make(KEYS_B)
    assert store_b.read_all(address) == data
    assert store_b.size(address) == size
    with pytest.raises(IntegrityError, match="unknown master key id"):
        store_a.read_all(address)
    assert backend.leftovers() == []
    # new blobs are wrapped with the active key
    fresh = store_ba.put_bytes(b"new")
    assert backend.make(KEYS_B).read_all(fresh.address) == b"new"


def test_data_key_decrypts(store: Any, backend: Any) -> None:
    data = payload(3 * TEST_CHUNK + 9, seed=16)
    address = store.put_bytes(data).address
    key = store.data_key(address)
    assert isinstance(key, bytes)
    assert len(key) == 32
    # the whole blob, as an inference node would: encrypted bytes + the data key
    assert b"".join(decrypt_stream(store.read_encrypted(address), key, address)) == data
    # one chunk by hand, straight from the documented format
    raw = backend.raw_get(store, address)
    header = Header.parse(raw[:HEADER_LEN], address)
    aad = MAGIC + TEST_CHUNK.to_bytes(4, "big") + header.nonce_prefix
    nonce = header.nonce_prefix + (1).to_bytes(4, "big") + b"\x00"
    chunk1 = raw[HEADER_LEN + STRIDE : HEADER_LEN + 2 * STRIDE]
    assert AESGCM(key).decrypt(nonce, chunk1, aad) == data[TEST_CHUNK : 2 * TEST_CHUNK]
    final = raw[HEADER_LEN + 3 * STRIDE :]
    nonce = header.nonce_prefix + (3).to_bytes(4, "big") + b"\x01"
    assert AESGCM(key).decrypt(nonce, final, aad + address.encode()) == data[3 * TEST_CHUNK :]
    # a wrong key or a wrong address fails
    with pytest.raises(IntegrityError):
        b"".join(decrypt_stream(store.read_encrypted(address), bytes(32), address))
    with pytest.raises(IntegrityError):
        b"".join(decrypt_stream(store.read_encrypted(address), key, sha(b"other")))
