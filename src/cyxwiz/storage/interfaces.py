"""The BlobStore protocol and the parts both backends share.

A blob is immutable, stored under its content address (lowercase hex sha256 of the plaintext)
and encrypted at rest in the format of ``cyxwiz.storage.crypto``. Backends supply a handful of
primitives (read the header, stream a span of stored bytes, commit a sealed temp object); the
encryption, range arithmetic, limits and writer life cycle live here once.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from cyxwiz.errors import PayloadTooLarge, RangeNotSatisfiable
from cyxwiz.storage.crypto import (
    HEADER_LEN,
    TAG_LEN,
    BlobSealer,
    ChunkOpener,
    Header,
    Keyring,
    Layout,
    validate_address,
    validate_chunk_size,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlobInfo:
    """What a finished write stored."""

    address: str  # lowercase hex sha256 of the PLAINTEXT (content address; dedup key)
    size: int  # plaintext bytes
    created: bool  # False when the blob already existed (deduplicated)


@runtime_checkable
class BlobWriter(Protocol):
    """An in-progress blob upload; a context manager whose exit aborts unless finished."""

    bytes_written: int  # plaintext bytes so far

    def write(self, data: bytes | memoryview) -> None: ...
    def finish(self) -> BlobInfo: ...
    def abort(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class BlobStore(Protocol):
    """Encrypted content-addressed blob storage that streams in constant memory."""

    # True when reading a chunk never waits on a network (local disk / page cache): the HTTP
    # layer may then decrypt on the event loop instead of paying a thread hop per chunk.
    reads_are_local: bool

    def writer(self, *, max_size: int | None = None) -> BlobWriter: ...
    def put_bytes(self, data: bytes) -> BlobInfo: ...
    def put_stream(self, chunks: Iterable[bytes], *, max_size: int | None = None) -> BlobInfo: ...
    def exists(self, address: str) -> bool: ...
    def size(self, address: str) -> int: ...
    def read_range(
        self, address: str, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]: ...
    def read_all(self, address: str) -> bytes: ...
    def delete(self, address: str) -> None: ...
    def addresses(self) -> Iterator[str]: ...
    def data_key(self, address: str) -> bytes: ...
    def rewrap(self, address: str) -> bool: ...
    def stored_size(self, address: str) -> int: ...
    def read_encrypted(self, address: str) -> Iterator[bytes]: ...
    def purge_temp(self, *, older_than: float = 86400.0) -> int: ...


class BaseBlobWriter(ABC):
    """Writer life cycle shared by the backends: limits, sealing, finish/abort exactly once."""

    def __init__(self, keyring: Keyring, chunk_size: int, max_size: int | None) -> None:
        if max_size is not None and max_size < 0:
            raise ValueError("max_size must be >= 0")
        self.bytes_written = 0
        self._max_size = max_size
        self._info: BlobInfo | None = None
        self._closed = False  # finished or aborted
        self._sealer = BlobSealer(keyring, chunk_size, self._sink)

    # -- backend primitives -------------------------------------------------------------------
    @abstractmethod
    def _sink(self, sealed: memoryview) -> None:
        """Append sealed bytes to the temp object (consume the view before returning)."""

    @abstractmethod
    def _commit(self, address: str) -> bool:
        """Store the sealed temp object under ``address``; False if it already existed."""

    @abstractmethod
    def _discard(self) -> None:
        """Remove all temp state (may raise; the caller logs and swallows)."""

    # -- public -------------------------------------------------------------------------------
    def write(self, data: bytes | memoryview) -> None:
        if self._closed:
            raise RuntimeError("blob writer is already finished or aborted")
        n = memoryview(data).nbytes
        if self._max_size is not None and self.bytes_written + n > self._max_size:
            self.abort()
            raise PayloadTooLarge(
                f"blob exceeds the size limit of {self._max_size} bytes",
                limit=self._max_size,
            )
        try:
            self._sealer.write(data)
        except BaseException:
            self.abort()
            raise
        self.bytes_written += n

    def finish(self) -> BlobInfo:
        if self._info is not None:
            return self._info
        if self._closed:
            raise RuntimeError("blob writer was aborted")
        try:
            address = self._sealer.finish()
            created = self._commit(address)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._info = BlobInfo(address=address, size=self.bytes_written, created=created)
        return self._info

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._discard()
        except Exception:
            log.warning("could not clean up an aborted blob upload", exc_info=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Leaving the block without finish() (normally or by an exception) stores nothing.
        self.abort()


class BaseBlobStore(ABC):
    """The BlobStore operations, written once over a few backend primitives."""

    reads_are_local: bool = False

    def __init__(self, keys: Mapping[str, bytes], chunk_size: int) -> None:
        self.keyring = Keyring(keys)
        self.chunk_size = validate_chunk_size(chunk_size)

    # -- backend primitives -------------------------------------------------------------------
    @abstractmethod
    def writer(self, *, max_size: int | None = None) -> BaseBlobWriter: ...

    @abstractmethod
    def _read_header(self, address: str) -> tuple[bytes, int]:
        """The first HEADER_LEN stored bytes (fewer if the object is shorter) and the stored
        size; ``NotFound`` if there is no such blob."""

    @abstractmethod
    def _iter_stored(
        self, address: str, offset: int, length: int, piece: int
    ) -> Iterator[bytes | bytearray | memoryview]:
        """Stored bytes [offset, offset + length) in pieces of exactly ``piece`` bytes, the
        last one possibly shorter (``IntegrityError`` if the object ends early). A piece may
        be a reused buffer: the caller consumes it before asking for the next one."""

    @abstractmethod
    def _write_header(self, address: str, header: bytes) -> None:
        """Atomically replace the header of a stored blob (the rest stays byte-identical)."""

    @abstractmethod
    def exists(self, address: str) -> bool: ...

    @abstractmethod
    def delete(self, address: str) -> None: ...

    @abstractmethod
    def addresses(self) -> Iterator[str]: ...

    @abstractmethod
    def read_encrypted(self, address: str) -> Iterator[bytes]:
        """The stored (encrypted) bytes of a blob, streamed; ``NotFound`` raised eagerly."""

    @abstractmethod
    def purge_temp(self, *, older_than: float = 86400.0) -> int:
        """Remove temp state left by crashed uploads older than ``older_than`` seconds;
        returns how many temp objects (or pending uploads) were removed."""

    # -- shared -------------------------------------------------------------------------------
    def put_bytes(self, data: bytes) -> BlobInfo:
        with self.writer() as w:
            w.write(data)
            return w.finish()

    def put_stream(self, chunks: Iterable[bytes], *, max_size: int | None = None) -> BlobInfo:
        with self.writer(max_size=max_size) as w:
            for chunk in chunks:
                w.write(chunk)
            return w.finish()

    def _open(self, address: str) -> tuple[Header, Layout]:
        validate_address(address)
        raw, stored = self._read_header(address)
        header = Header.parse(raw, address)
        return header, Layout.of(header.chunk_size, stored, address)

    def size(self, address: str) -> int:
        return self._open(address)[1].plaintext_size

    def stored_size(self, address: str) -> int:
        """Bytes the encrypted blob occupies in storage."""
        return self._open(address)[1].stored_size

    def data_key(self, address: str) -> bytes:
        header, _ = self._open(address)
        return self.keyring.unwrap(header, address)

    def rewrap(self, address: str) -> bool:
        header, _ = self._open(address)
        new = self.keyring.rewrap(header, address)
        if new is None:
            return False
        self._write_header(address, new.pack())
        return True

    def read_all(self, address: str) -> bytes:
        return b"".join(self.read_range(address))

    def read_range(self, address: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Plaintext bytes [start, end) of a blob.

        Existence, header, key and range are checked when called (so ``NotFound``,
        ``RangeNotSatisfiable`` and a bad header raise before anything is streamed); the chunks
        are then read, authenticated and decrypted lazily, only those the range touches.
        """
        header, layout = self._open(address)
        size = layout.plaintext_size
        if end is None:
            end = size
        if not (0 <= start <= end <= size):
            raise RangeNotSatisfiable(
                f"range [{start}, {end}) is outside blob {address} of {size} bytes",
                size=size,
                headers={"Content-Range": f"bytes */{size}"},
            )
        opener = ChunkOpener(self.keyring.unwrap(header, address), header, address)
        return self._decrypt_span(address, opener, layout, start, end)

    def _decrypt_span(
        self, address: str, opener: ChunkOpener, layout: Layout, start: int, end: int
    ) -> Iterator[bytes]:
        cs = layout.chunk_size
        if start == end:
            if layout.plaintext_size == 0:
                # an empty read of an empty blob still authenticates its single chunk
                for sealed in self._iter_stored(
                    address, HEADER_LEN, layout.final_len, layout.final_len
                ):
                    opener.open(0, sealed, last=True)
            return
        first, last = start // cs, (end - 1) // cs
        final = layout.n_chunks - 1
        offset = layout.offset(first)
        length = layout.offset(last) + layout.stored_len(last) - offset
        index = first
        for sealed in self._iter_stored(address, offset, length, cs + TAG_LEN):
            plaintext = opener.open(index, sealed, last=index == final)
            lo = start - index * cs if index == first else 0
            hi = end - index * cs if index == last else len(plaintext)
            yield plaintext if lo == 0 and hi == len(plaintext) else plaintext[lo:hi]
            index += 1
