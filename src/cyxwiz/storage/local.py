"""Blob store on a local filesystem: ``<root>/<ab>/<cd>/<address>``, temp files in ``<root>/tmp``.

Writes go to a private temp file while hashing, are fsynced and then renamed into place, so a
blob is visible under its address only once it is complete. Files are 0600, directories 0700.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

from cyxwiz.errors import IntegrityError, NotFound
from cyxwiz.storage.crypto import DEFAULT_CHUNK_SIZE, HEADER_LEN, validate_address
from cyxwiz.storage.interfaces import BaseBlobStore, BaseBlobWriter

_DIR_MODE = 0o700
_FILE_MODE = 0o600
_COPY_BUFFER = 1024 * 1024


def _ensure_dir(path: Path) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, _DIR_MODE)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_private(path: Path) -> io.BufferedWriter:
    fd = os.open(
        path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), _FILE_MODE
    )
    return io.BufferedWriter(io.FileIO(fd, "wb"), buffer_size=256 * 1024)


def _remove_temp(file: io.BufferedWriter, path: Path) -> None:
    try:
        file.close()
    finally:
        path.unlink(missing_ok=True)


class LocalBlobWriter(BaseBlobWriter):
    """Streams sealed chunks into a temp file, then renames it to its content address."""

    def __init__(self, store: LocalBlobStore, max_size: int | None) -> None:
        self._store = store
        self._tmp_path = store.tmp_dir / secrets.token_hex(16)
        self._file = _create_private(self._tmp_path)
        # Removes the temp file if the writer is dropped without finish() or abort().
        self._finalizer = weakref.finalize(self, _remove_temp, self._file, self._tmp_path)
        try:
            super().__init__(store.keyring, store.chunk_size, max_size)
        except BaseException:
            self._finalizer()
            raise

    def _sink(self, sealed: memoryview) -> None:
        self._file.write(sealed)

    def _commit(self, address: str) -> bool:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        dest = self._store.path_for(address)
        if dest.exists():
            self._finalizer()  # deduplicated: the stored copy is as good as ours
            return False
        _ensure_dir(dest.parent.parent)
        _ensure_dir(dest.parent)
        os.replace(self._tmp_path, dest)
        self._finalizer.detach()
        _fsync_dir(dest.parent)
        return True

    def _discard(self) -> None:
        self._finalizer()


class LocalBlobStore(BaseBlobStore):
    """Encrypted content-addressed blobs in a directory tree."""

    reads_are_local = True

    def __init__(
        self, root: Path, keys: Mapping[str, bytes], chunk_size: int = DEFAULT_CHUNK_SIZE
    ) -> None:
        super().__init__(keys, chunk_size)
        self.root = Path(root)
        if not self.root.is_dir():
            self.root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        self.tmp_dir = self.root / "tmp"
        _ensure_dir(self.tmp_dir)

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def path_for(self, address: str) -> Path:
        """Where the blob with this (validated) address lives."""
        validate_address(address)
        return self.root / address[:2] / address[2:4] / address

    def writer(self, *, max_size: int | None = None) -> LocalBlobWriter:
        return LocalBlobWriter(self, max_size)

    def _open_file(self, address: str) -> io.FileIO:
        try:
            return open(self.path_for(address), "rb", buffering=0)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"blob {address} not found") from None

    def _read_header(self, address: str) -> tuple[bytes, int]:
        with self._open_file(address) as f:
            return f.read(HEADER_LEN) or b"", os.fstat(f.fileno()).st_size

    def _iter_stored(
        self, address: str, offset: int, length: int, piece: int
    ) -> Iterator[memoryview]:
        with self._open_file(address) as f:
            f.seek(offset)
            buf = memoryview(bytearray(min(piece, length)))
            remaining = length
            while remaining:
                n = min(piece, remaining)
                view = buf[:n]
                got = 0
                while got < n:
                    r = f.readinto(view[got:])
                    if not r:
                        raise IntegrityError(
                            f"blob {address}: ends {remaining - got} bytes early (truncated)"
                        )
                    got += r
                yield view
                remaining -= n

    def _write_header(self, address: str, header: bytes) -> None:
        dest = self.path_for(address)
        tmp = self.tmp_dir / secrets.token_hex(16)
        with self._open_file(address) as src:
            out = _create_private(tmp)
            try:
                with out:
                    out.write(header)
                    src.seek(HEADER_LEN)
                    shutil.copyfileobj(src, out, _COPY_BUFFER)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        _fsync_dir(dest.parent)

    def exists(self, address: str) -> bool:
        return self.path_for(address).is_file()

    def delete(self, address: str) -> None:
        try:
            self.path_for(address).unlink()
        except FileNotFoundError:
            raise NotFound(f"blob {address} not found") from None

    def addresses(self) -> Iterator[str]:
        hexdigits = set("0123456789abcdef")
        for d1 in sorted(os.listdir(self.root)):
            if len(d1) != 2 or not set(d1) <= hexdigits or not (self.root / d1).is_dir():
                continue
            for d2 in sorted(os.listdir(self.root / d1)):
                sub = self.root / d1 / d2
                if len(d2) != 2 or not set(d2) <= hexdigits or not sub.is_dir():
                    continue
                for name in sorted(os.listdir(sub)):
                    if len(name) == 64 and name.startswith(d1 + d2) and set(name) <= hexdigits:
                        yield name

    def purge_temp(self, *, older_than: float = 86400.0) -> int:
        cutoff = time.time() - older_than
        removed = 0
        for entry in os.scandir(self.tmp_dir):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def read_encrypted(self, address: str) -> Iterator[bytes]:
        if not self.exists(address):
            raise NotFound(f"blob {address} not found")
        return self._stream_file(address)

    def _stream_file(self, address: str) -> Iterator[bytes]:
        with self._open_file(address) as f:
            while chunk := f.read(_COPY_BUFFER):
                yield chunk
