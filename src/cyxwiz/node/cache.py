"""The node's on-disk cache of ENCRYPTED model blobs, bounded by total bytes (LRU).

Only the stored ciphertext (exactly as the marketplace's blob store holds it) is ever written
here; plaintext and data keys live in memory only. A cached blob saves the download when a
model is loaded again after its session was evicted; it is useless without the data key,
which the node fetches from the marketplace each time it loads a model.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import secrets
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO

from cyxwiz.storage.crypto import ADDRESS_RE

log = logging.getLogger("cyxwiz.node")
_DIR_MODE = 0o700
_FILE_MODE = 0o600


def _mkdir(path: Path) -> None:
    path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)


class BlobCache:
    """Encrypted blobs under ``<root>/blobs/<address>``, temp files under ``<root>/tmp``."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.blob_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        _mkdir(self.blob_dir)
        _mkdir(self.tmp_dir)
        for entry in os.scandir(self.tmp_dir):  # leftovers of a crash
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
        found = []
        for entry in os.scandir(self.blob_dir):
            if entry.is_file(follow_symlinks=False) and ADDRESS_RE.fullmatch(entry.name):
                st = entry.stat()
                found.append((st.st_mtime, entry.name, st.st_size))
        self._index: OrderedDict[str, int] = OrderedDict(
            (name, size) for _, name, size in sorted(found)
        )

    @property
    def total_bytes(self) -> int:
        return sum(self._index.values())

    def __contains__(self, address: str) -> bool:
        return address in self._index

    def path_for(self, address: str) -> Path:
        if not ADDRESS_RE.fullmatch(address):
            raise ValueError(f"not a blob address: {address!r}")
        return self.blob_dir / address

    def open_cached(self, address: str, stored_size: int) -> BinaryIO | None:
        """The cached ciphertext opened for reading if present and of the expected size."""
        if address not in self._index:
            return None
        path = self.path_for(address)
        try:
            f = open(path, "rb")  # noqa: SIM115 - handed to the caller, who closes it
        except FileNotFoundError:
            self._index.pop(address, None)
            return None
        if os.fstat(f.fileno()).st_size != stored_size:
            f.close()
            self.discard(address)
            return None
        self._index.move_to_end(address)
        with contextlib.suppress(OSError):
            os.utime(path)
        return f

    def temp_writer(self) -> tuple[Path, io.BufferedWriter]:
        path = self.tmp_dir / secrets.token_hex(16)
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), _FILE_MODE
        )
        return path, io.BufferedWriter(io.FileIO(fd, "wb"), buffer_size=256 * 1024)

    def commit(self, tmp: Path, address: str) -> BinaryIO:
        """Move a finished download into place and open it; evicts older blobs over budget."""
        dest = self.path_for(address)
        os.replace(tmp, dest)
        f = open(dest, "rb")  # noqa: SIM115 - handed to the caller, who closes it
        self._index[address] = os.fstat(f.fileno()).st_size
        self._index.move_to_end(address)
        self._evict(keep=address)
        return f

    def discard(self, address: str) -> None:
        self._index.pop(address, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_for(address))

    def _evict(self, *, keep: str) -> None:
        total = self.total_bytes
        for address in list(self._index):
            if total <= self.max_bytes:
                break
            if address == keep:
                continue
            total -= self._index[address]
            log.info("cache: evicting encrypted blob %s", address)
            self.discard(address)
