"""Streaming file responses with Range, HEAD, ETag and digest headers."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from cyxwiz.catalog.models import ModelFile
from cyxwiz.errors import RangeNotSatisfiable
from cyxwiz.storage import BlobStore

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


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
        raise RangeNotSatisfiable("empty suffix range", headers={"Content-Range": f"bytes */{size}"})
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
    return StreamingResponse(body, status_code=status, headers=headers, media_type=f.content_type)
