"""The encrypted blob format: a chunked streaming AEAD (AES-256-GCM) with envelope keys.

Layout of one stored blob (all integers big-endian)::

    header (85 bytes, fixed):
        magic        6  b"CXWZB1"
        chunk_size   4  u32, plaintext bytes per chunk
        nonce_prefix 7  random per blob
        key_id       8  ascii id of the master key that wrapped the data key
        wrap_nonce  12  random
        wrapped_key 48  AES-256-GCM(master, wrap_nonce, data_key, aad=magic + key_id)
    chunk 0 .. n-1:
        AES-256-GCM(data_key, nonce, plaintext[i*cs:(i+1)*cs], aad) = ciphertext + 16-byte tag
        nonce = nonce_prefix || u32 i || last-flag (0x01 for the final chunk only)
        aad   = magic || chunk_size || nonce_prefix            (+ the blob's address, final chunk)

Every chunk but the final one is full, the final one holds 0..chunk_size bytes (an empty blob is
one empty final chunk), so the plaintext size follows from the stored size alone and a reader can
seek straight to chunk ``i``. Reordering, truncating, dropping the final chunk or appending
anything fails authentication; the final chunk's AAD also names the blob's address, so a blob
moved to another address fails too. A key rotation rewrites only the header.

Nothing here returns bytes that failed authentication: every failure is ``IntegrityError``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cyxwiz.errors import IntegrityError, InvalidInput

MAGIC = b"CXWZB1"
CHUNK_SIZE_LEN = 4
NONCE_PREFIX_LEN = 7
KEY_ID_LEN = 8
WRAP_NONCE_LEN = 12
DATA_KEY_LEN = 32
TAG_LEN = 16
WRAPPED_KEY_LEN = DATA_KEY_LEN + TAG_LEN
HEADER_LEN = (
    len(MAGIC) + CHUNK_SIZE_LEN + NONCE_PREFIX_LEN + KEY_ID_LEN + WRAP_NONCE_LEN + WRAPPED_KEY_LEN
)  # 85
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 64 * 1024 * 1024
DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_CHUNKS = 2**32

_HEADER = struct.Struct(f">{len(MAGIC)}sI{NONCE_PREFIX_LEN}s{KEY_ID_LEN}s{WRAP_NONCE_LEN}s48s")
_NONCE_SUFFIX = struct.Struct(">IB")
ADDRESS_RE = re.compile(r"[0-9a-f]{64}")
_KEY_ID_RE = re.compile(r"[\x21-\x7e]{8}")

assert _HEADER.size == HEADER_LEN


def validate_address(address: object) -> str:
    """Return ``address`` if it is a content address (64 lowercase hex chars), else raise."""
    if not isinstance(address, str) or ADDRESS_RE.fullmatch(address) is None:
        shown = repr(address)[:80]
        raise InvalidInput(f"not a blob address (64 lowercase hex characters): {shown}")
    return address


def validate_chunk_size(chunk_size: int) -> int:
    """Return ``chunk_size`` if a blob may use it, else raise ``ValueError``."""
    if not isinstance(chunk_size, int) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(
            f"chunk size must be an int in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}], got {chunk_size!r}"
        )
    return chunk_size


@dataclass(frozen=True)
class Header:
    """The parsed fixed-length header of a stored blob."""

    chunk_size: int
    nonce_prefix: bytes
    key_id: str
    wrap_nonce: bytes
    wrapped_key: bytes

    def pack(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            self.chunk_size,
            self.nonce_prefix,
            self.key_id.encode("ascii"),
            self.wrap_nonce,
            self.wrapped_key,
        )

    @classmethod
    def parse(cls, raw: bytes | bytearray | memoryview, address: str) -> Header:
        """Parse a header; anything malformed is an ``IntegrityError`` naming the blob."""
        if len(raw) != HEADER_LEN:
            raise IntegrityError(
                f"blob {address}: header is {len(raw)} bytes, expected {HEADER_LEN} (truncated)"
            )
        magic, chunk_size, prefix, kid, wrap_nonce, wrapped = _HEADER.unpack(bytes(raw))
        if magic != MAGIC:
            raise IntegrityError(f"blob {address}: bad magic {magic!r}, not a CyxWiz blob")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise IntegrityError(f"blob {address}: implausible chunk size {chunk_size}")
        key_id = kid.decode("latin-1")
        if _KEY_ID_RE.fullmatch(key_id) is None:
            raise IntegrityError(f"blob {address}: malformed master key id {kid!r}")
        return cls(chunk_size, prefix, key_id, wrap_nonce, wrapped)


def base_aad(chunk_size: int, nonce_prefix: bytes) -> bytes:
    """Associated data of every chunk: the header part that never changes on rewrap."""
    return MAGIC + chunk_size.to_bytes(CHUNK_SIZE_LEN, "big") + nonce_prefix


def chunk_nonce(nonce_prefix: bytes, index: int, last: bool) -> bytes:
    return nonce_prefix + _NONCE_SUFFIX.pack(index, 1 if last else 0)


class Keyring:
    """Master keys by id; the first one wraps new data keys, all of them unwrap."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("at least one master key is required")
        self._aeads: dict[str, AESGCM] = {}
        for kid, key in keys.items():
            if not isinstance(kid, str) or _KEY_ID_RE.fullmatch(kid) is None:
                raise ValueError(f"master key id must be 8 printable ascii chars, got {kid!r}")
            if not isinstance(key, bytes) or len(key) != 32:
                raise ValueError(f"master key {kid} must be 32 bytes")
            self._aeads[kid] = AESGCM(key)
        self.active_id: str = next(iter(keys))

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._aeads)

    def wrap(self, data_key: bytes) -> tuple[str, bytes, bytes]:
        """Wrap ``data_key`` with the active key: (key id, wrap nonce, wrapped key)."""
        nonce = secrets.token_bytes(WRAP_NONCE_LEN)
        aad = MAGIC + self.active_id.encode("ascii")
        return self.active_id, nonce, self._aeads[self.active_id].encrypt(nonce, data_key, aad)

    def unwrap(self, header: Header, address: str) -> bytes:
        """The blob's data key; ``IntegrityError`` for an unknown key id or a forged header."""
        aead = self._aeads.get(header.key_id)
        if aead is None:
            raise IntegrityError(
                f"blob {address}: data key is wrapped with unknown master key id "
                f"{header.key_id!r} (known: {', '.join(self._aeads)}); "
                "add the old key to CYXWIZ_PREVIOUS_MASTER_KEYS"
            )
        try:
            key = aead.decrypt(
                header.wrap_nonce, header.wrapped_key, MAGIC + header.key_id.encode("ascii")
            )
        except InvalidTag:
            raise IntegrityError(
                f"blob {address}: wrapped data key failed authentication (tampered header)"
            ) from None
        return key

    def rewrap(self, header: Header, address: str) -> Header | None:
        """A header re-wrapped with the active key, or None if it already uses it."""
        if header.key_id == self.active_id:
            return None
        data_key = self.unwrap(header, address)
        kid, nonce, wrapped = self.wrap(data_key)
        return Header(header.chunk_size, header.nonce_prefix, kid, nonce, wrapped)


@dataclass(frozen=True)
class Layout:
    """Where each chunk of a stored blob lies, derived from chunk size and stored size only."""

    chunk_size: int
    stored_size: int
    n_chunks: int
    final_len: int  # stored bytes of the final chunk (plaintext + tag)

    @classmethod
    def of(cls, chunk_size: int, stored_size: int, address: str) -> Layout:
        body = stored_size - HEADER_LEN
        stride = chunk_size + TAG_LEN
        if body < TAG_LEN:
            raise IntegrityError(
                f"blob {address}: {stored_size} stored bytes cannot hold a chunk (truncated)"
            )
        n_chunks = -(-body // stride)
        final_len = body - (n_chunks - 1) * stride
        if final_len < TAG_LEN or (final_len == TAG_LEN and n_chunks > 1):
            raise IntegrityError(
                f"blob {address}: stored size {stored_size} does not match its chunk layout "
                "(truncated or extended)"
            )
        return cls(chunk_size, stored_size, n_chunks, final_len)

    @property
    def plaintext_size(self) -> int:
        return (self.n_chunks - 1) * self.chunk_size + self.final_len - TAG_LEN

    def offset(self, index: int) -> int:
        return HEADER_LEN + index * (self.chunk_size + TAG_LEN)

    def stored_len(self, index: int) -> int:
        return self.final_len if index == self.n_chunks - 1 else self.chunk_size + TAG_LEN


def stored_size_for(plaintext_size: int, chunk_size: int) -> int:
    """How many bytes a blob of ``plaintext_size`` occupies in storage."""
    n_chunks = max(1, -(-plaintext_size // chunk_size))
    return HEADER_LEN + plaintext_size + n_chunks * TAG_LEN


Sink = Callable[[memoryview], None]


class BlobSealer:
    """Encrypts a plaintext stream into the blob format, hashing it on the way.

    Emits the header at once, then each sealed chunk, to ``sink`` (which must consume the view
    before returning: the buffer behind it is reused). Holds back at most one plaintext chunk,
    because a chunk can only be sealed once it is known whether it is the final one.
    """

    def __init__(self, keyring: Keyring, chunk_size: int, sink: Sink) -> None:
        self.chunk_size = validate_chunk_size(chunk_size)
        data_key = secrets.token_bytes(DATA_KEY_LEN)
        self._prefix = secrets.token_bytes(NONCE_PREFIX_LEN)
        kid, wrap_nonce, wrapped = keyring.wrap(data_key)
        self.header = Header(chunk_size, self._prefix, kid, wrap_nonce, wrapped)
        self._aead = AESGCM(data_key)
        self._aad = base_aad(chunk_size, self._prefix)
        self._sink = sink
        self._hash = hashlib.sha256()
        self._pending = bytearray(chunk_size)
        self._pending_view = memoryview(self._pending)
        self._fill = 0
        self._out = memoryview(bytearray(chunk_size + TAG_LEN))
        self._index = 0
        self.size = 0
        self.address: str | None = None
        sink(memoryview(self.header.pack()))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.address is not None:
            raise RuntimeError("blob already sealed")
        view = memoryview(data).cast("B")
        n = len(view)
        if n == 0:
            return
        self._hash.update(view)
        self.size += n
        cs = self.chunk_size
        pos = 0
        if self._fill:
            take = min(cs - self._fill, n)
            self._pending_view[self._fill : self._fill + take] = view[:take]
            self._fill += take
            pos = take
            if pos == n:
                return  # pending may be full, but it may also be the final chunk: hold it
            self._seal(self._pending_view, last=False)
            self._fill = 0
        # With strictly more than one chunk left, the next chunk is not the final one.
        while n - pos > cs:
            self._seal(view[pos : pos + cs], last=False)
            pos += cs
        rest = n - pos
        self._pending_view[:rest] = view[pos:]
        self._fill = rest

    def finish(self) -> str:
        """Seal the final chunk; returns the content address (sha256 of the plaintext)."""
        if self.address is None:
            address = self._hash.hexdigest()
            self._seal(self._pending_view[: self._fill], last=True, address=address)
            self._fill = 0
            self.address = address
        return self.address

    def _seal(self, plaintext: memoryview, *, last: bool, address: str = "") -> None:
        if self._index >= MAX_CHUNKS:
            raise ValueError("blob has too many chunks for its chunk size")
        nonce = chunk_nonce(self._prefix, self._index, last)
        aad = self._aad + address.encode("ascii") if last else self._aad
        out = self._out[: len(plaintext) + TAG_LEN]
        self._aead.encrypt_into(nonce, plaintext, aad, out)
        self._index += 1
        self._sink(out)


class ChunkOpener:
    """Decrypts and authenticates single chunks of one blob."""

    def __init__(self, data_key: bytes, header: Header, address: str) -> None:
        self.address = address
        self._aead = AESGCM(data_key)
        self._prefix = header.nonce_prefix
        self._aad = base_aad(header.chunk_size, header.nonce_prefix)
        self._final_aad = self._aad + address.encode("ascii")

    def open(self, index: int, sealed: bytes | bytearray | memoryview, *, last: bool) -> bytes:
        """The plaintext of chunk ``index`` (fresh bytes the caller may keep)."""
        if len(sealed) < TAG_LEN:
            raise IntegrityError(f"blob {self.address}: chunk {index} is truncated")
        try:
            return self._aead.decrypt(
                chunk_nonce(self._prefix, index, last),
                sealed,
                self._final_aad if last else self._aad,
            )
        except InvalidTag:
            raise IntegrityError(
                f"blob {self.address}: chunk {index} failed authentication "
                "(tampered, truncated, reordered or stored under the wrong address)"
            ) from None


def decrypt_stream(
    data: Iterable[bytes | bytearray | memoryview], data_key: bytes, address: str
) -> Iterator[bytes]:
    """Decrypt a whole stored blob read sequentially (e.g. by an inference node holding the key).

    Yields authenticated plaintext chunk by chunk and raises ``IntegrityError`` on any fault,
    including a stream that ends early or runs on after its final chunk.
    """
    validate_address(address)
    buf = bytearray()
    it = iter(data)
    exhausted = False

    def fill(upto: int) -> None:
        nonlocal exhausted
        while len(buf) < upto and not exhausted:
            try:
                buf.extend(next(it))
            except StopIteration:
                exhausted = True

    fill(HEADER_LEN)
    header = Header.parse(buf[:HEADER_LEN], address)
    del buf[:HEADER_LEN]
    opener = ChunkOpener(data_key, header, address)
    stride = header.chunk_size + TAG_LEN
    index = 0
    while True:
        fill(stride + 1)  # one byte beyond a full chunk tells whether it is the final one
        if len(buf) > stride:
            with memoryview(buf) as view:
                plaintext = opener.open(index, view[:stride], last=False)
            del buf[:stride]
            yield plaintext
            index += 1
            continue
        yield opener.open(index, bytes(buf), last=True)
        return
