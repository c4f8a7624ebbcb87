"""Streaming file responses with Range, HEAD, ETag and digest headers."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import anyio.to_thread
from fastapi import Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.types import Receive, Scope, Send

from cyxwiz.accounts.models import User
from cyxwiz.catalog import service as catalog
from cyxwiz.catalog.models import ModelFile
from cyxwiz.errors import RangeNotSatisfiable
from cyxwiz.licensing.service import check_download, count_license_download
from cyxwiz.storage import BlobStore

if TYPE_CHECKING:
    from cyxwiz.web.deps import AppContext

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class BlobStreamResponse(Response):
    """Streams decrypted pieces of a blob.

    For a local store each piece (1 MiB: a page-cache read and an AES-GCM open, well under a
    millisecond) is produced on the event loop, yielding to other tasks between pieces: a
    thread hop per piece, as Starlette's StreamingResponse does, costs more than the decrypt
    itself (bench/storage.py measures both). Stores that read over a network (S3) produce
    each piece in a worker thread so the loop never waits on I/O.
    """

    def __init__(
        self,
        body: Iterator[bytes],
        *,
        in_loop: bool,
        status_code: int,
        headers: dict[str, str],
        media_type: str,
    ) -> None:
        super().__init__(
            content=None, status_code=status_code, headers=headers, media_type=media_type
        )
        self._pieces = body
        self._in_loop = in_loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        try:
            while True:
                if self._in_loop:
                    piece = next(self._pieces, None)
                else:
                    piece = await anyio.to_thread.run_sync(next, self._pieces, None)
                if piece is None:
                    break
                await send({"type": "http.response.body", "body": piece, "more_body": True})
                if self._in_loop:
                    await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end_exclusive) for a single byte range, None for the whole file."""
    if not header:
        return None
    header = header.strip()
    if "," in header:
        return None  # multiple ranges: serve the whole representation (RFC 9110 allows it)
    m = _RANGE_RE.match(header)
    if not m or (not m.group(1) and not m.group(2)):
        raise RangeNotSatisfiable(
            f"invalid Range header {header!r}", headers={"Content-Range": f"bytes */{size}"}
        )
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
        if start >= size or (last and int(last) < start):
            raise RangeNotSatisfiable(
                f"range starts past the end of a {size}-byte file",
                headers={"Content-Range": f"bytes */{size}"},
            )
        return start, end
    suffix = int(last)
    if suffix == 0:
        raise RangeNotSatisfiable(
            "empty suffix range", headers={"Content-Range": f"bytes */{size}"}
        )
    return max(0, size - suffix), size


def file_headers(f: ModelFile) -> dict[str, str]:
    digest = base64.b64encode(bytes.fromhex(f.sha256)).decode()
    filename = f.path.rsplit("/", 1)[-1]
    return {
        "ETag": f'"{f.sha256}"',
        "Accept-Ranges": "bytes",
        "X-Checksum-Sha256": f.sha256,
        "Repr-Digest": f"sha-256=:{digest}:",
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "private, max-age=0, must-revalidate",
    }


def file_response(request: Request, blobs: BlobStore, f: ModelFile) -> Response:
    """The file (or the requested range of it), streamed from the encrypted blob store."""
    headers = file_headers(f)
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    rng = parse_range(request.headers.get("range"), f.size)
    if rng is not None and request.headers.get("if-range") not in (None, headers["ETag"]):
        rng = None
    status = 200
    start, end = 0, f.size
    if rng is not None:
        start, end = rng
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{f.size}"
    headers["Content-Length"] = str(end - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=f.content_type)
    body: Iterator[bytes] = blobs.read_range(f.sha256, start, end)
    return BlobStreamResponse(
        body,
        in_loop=blobs.reads_are_local,
        status_code=status,
        headers=headers,
        media_type=f.content_type,
    )


def serve_model_file(
    request: Request,
    session: Session,
    ctx: AppContext,
    *,
    owner: str,
    name: str,
    version: str,
    path: str,
    viewer: User | None,
) -> Response:
    """The one download path (API and HF-style routes): visibility, entitlement, streaming,
    and counting a download (per model and per license) on full GETs by non-owners."""
    model = catalog.get_model(session, owner=owner, name=name, viewer=viewer)
    ver = catalog.get_version(session, model=model, version=version, viewer=viewer)
    lic = check_download(
        session,
        version=ver,
        viewer=viewer,
        signer=ctx.signer,
        key=request.headers.get("x-license-key"),
        now=ctx.clock.now(),
    )
    f = catalog.get_file(version=ver, path=path)
    response = file_response(request, ctx.blobs, f)
    if ver.manifest_sha256:
        response.headers["X-Repo-Commit"] = ver.manifest_sha256[:40]
    whole = response.status_code == 200 or (
        response.status_code == 206 and request.headers.get("range", "").startswith("bytes=0-")
    )
    if request.method == "GET" and whole and not catalog.can_edit(model, viewer):
        catalog.record_download(session, model=model)
        if lic is not None:
            count_license_download(session, license=lic)
    return response
