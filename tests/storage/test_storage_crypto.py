"""The blob format on its own: sealing, opening, layout arithmetic and key handling."""

from __future__ import annotations

import hashlib
import itertools
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from cyxwiz.errors import IntegrityError
from cyxwiz.storage.crypto import (
    HEADER_LEN,
    MAGIC,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    TAG_LEN,
    BlobSealer,
    Header,
    Keyring,
    Layout,
    decrypt_stream,
    stored_size_for,
)
from cyxwiz.storage.local import LocalBlobStore

from .support import KEYS_A, KEYS_BA

KEYRING = Keyring(KEYS_A)


def seal(pieces: list[bytes], chunk_size: int) -> tuple[str, bytes, BlobSealer]:
    out = bytearray()
    sealer = BlobSealer(KEYRING, chunk_size, out.extend)
    for piece in pieces:
        sealer.write(piece)
    return sealer.finish(), bytes(out), sealer


@hsettings(max_examples=150, deadline=None, database=None)
@given(
    data=st.binary(max_size=600),
    cuts=st.lists(st.integers(0, 600), max_size=8),
    chunk_size=st.integers(MIN_CHUNK_SIZE, 80),
    feed=st.integers(1, 200),
)
def test_seal_then_decrypt_any_split(
    data: bytes, cuts: list[int], chunk_size: int, feed: int
) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    address, blob, sealer = seal(pieces, chunk_size)
    assert address == hashlib.sha256(data).hexdigest()
    assert len(blob) == stored_size_for(len(data), chunk_size)
    layout = Layout.of(chunk_size, len(blob), address)
    assert layout.plaintext_size == len(data)
    key = KEYRING.unwrap(sealer.header, address)
    stream = [blob[i : i + feed] for i in range(0, len(blob), feed)]
    decrypted = list(decrypt_stream(stream, key, address))
    assert b"".join(decrypted) == data
    # every chunk is full except the final one
    assert all(len(c) == chunk_size for c in decrypted[:-1])
    assert 0 <= len(decrypted[-1]) <= chunk_size
    assert len(decrypted[-1]) > 0 or len(data) == 0


def test_decrypt_stream_rejects_truncation_and_extension() -> None:
    data = bytes(range(256)) * 3
    address, blob, sealer = seal([data], 64)
    key = KEYRING.unwrap(sealer.header, address)
    for bad in (blob[:-1], blob[: HEADER_LEN + 2 * (64 + TAG_LEN)], blob + b"\0", blob[:40]):
        with pytest.raises(IntegrityError, match=address):
            b"".join(decrypt_stream([bad], key, address))


def test_header_round_trip_and_validation() -> None:
    address = "ab" * 32
    header = Header(4096, b"1234567", "kid12345", b"n" * 12, b"w" * 48)
    raw = header.pack()
    assert len(raw) == HEADER_LEN
    assert raw.startswith(MAGIC + struct.pack(">I", 4096))
    assert Header.parse(raw, address) == header
    bad_size = raw[:6] + struct.pack(">I", MAX_CHUNK_SIZE + 1) + raw[10:]
    with pytest.raises(IntegrityError, match="implausible chunk size"):
        Header.parse(bad_size, address)
    with pytest.raises(IntegrityError, match="malformed master key id"):
        Header.parse(raw[:17] + b"\x00" * 8 + raw[25:], address)
    with pytest.raises(IntegrityError, match="bad magic"):
        Header.parse(b"X" + raw[1:], address)


def test_keyring_validation() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Keyring({})
    with pytest.raises(ValueError, match="8 printable"):
        Keyring({"short": bytes(32)})
    with pytest.raises(ValueError, match="32 bytes"):
        Keyring({"abcdefgh": bytes(16)})
    ring = Keyring(KEYS_BA)
    assert ring.active_id == next(iter(KEYS_BA))
    assert ring.key_ids == tuple(KEYS_BA)


@pytest.mark.parametrize("chunk_size", [0, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1])
def test_store_rejects_bad_chunk_size(tmp_path: Path, chunk_size: int) -> None:
    with pytest.raises(ValueError, match="chunk size"):
        LocalBlobStore(tmp_path, KEYS_A, chunk_size)


def test_fresh_randomness_per_blob() -> None:
    a = seal([b"same"], 64)
    b = seal([b"same"], 64)
    assert a[0] == b[0]  # same address
    assert a[1] != b[1]  # different data key, nonce prefix and wrap nonce
    assert a[2].header.nonce_prefix != b[2].header.nonce_prefix
