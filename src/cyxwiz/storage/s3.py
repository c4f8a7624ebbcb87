"""Blob store on S3 (or any S3-compatible service): objects ``<prefix><address>``.

Uploads stream as a multipart upload to ``<prefix>tmp/<random>`` (holding at most one part in
memory), are completed and then copied server-side to the content address; a blob smaller than
one part is a single PUT straight to its address once its address is known. Reads are ranged
GETs of just the encrypted chunks a range needs, streamed chunk by chunk.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from cyxwiz.errors import IntegrityError, NotFound
from cyxwiz.storage.crypto import ADDRESS_RE, DEFAULT_CHUNK_SIZE, HEADER_LEN, validate_address
from cyxwiz.storage.interfaces import BaseBlobStore, BaseBlobWriter

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_COPY_PART = 5 * 1024**3
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 * 1024 * 1024
_CONTENT_TYPE = "application/octet-stream"
_STREAM_PIECE = 1024 * 1024
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _read_exact(body: Any, n: int) -> bytes:
    data: bytes = body.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more: bytes = body.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class S3BlobWriter(BaseBlobWriter):
    """Streams sealed chunks into a multipart upload (or one PUT for a small blob)."""

    def __init__(self, store: S3BlobStore, max_size: int | None) -> None:
        self._store = store
        self._client = store.client
        self._bucket = store.bucket
        self._tmp_key = f"{store.prefix}tmp/{secrets.token_hex(16)}"
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._completed = False
        super().__init__(store.keyring, store.chunk_size, max_size)

    def _part_target(self) -> int:
        # Grow parts every 1000 so that 10,000 parts hold 55,000 x part_size bytes.
        return self._store.part_size * (1 + len(self._parts) // 1000)

    def _sink(self, sealed: memoryview) -> None:
        self._buf += sealed
        if len(self._buf) >= self._part_target():
            self._upload_part()

    def _upload_part(self) -> None:
        if self._upload_id is None:
            created = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self._tmp_key, ContentType=_CONTENT_TYPE
            )
            self._upload_id = str(created["UploadId"])
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise ValueError("blob needs more than 10,000 upload parts; raise the part size")
        body, self._buf = self._buf, bytearray()
        resp = self._client.upload_part(
            Bucket=self._bucket,
            Key=self._tmp_key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
        )
        part = {"PartNumber": number, "ETag": resp["ETag"]}
        part.update(
            {k: v for k, v in resp.items() if k.startswith("Checksum") and k != "ChecksumType"}
        )
        self._parts.append(part)

    def _commit(self, address: str) -> bool:
        dest = self._store.key_for(address)
        if self._store.exists(address):
            self._discard()  # deduplicated: nothing of ours needs to stay
            return False
        if self._upload_id is None:
            body, self._buf = self._buf, bytearray()
            self._client.put_object(
                Bucket=self._bucket, Key=dest, Body=body, ContentType=_CONTENT_TYPE
            )
            return True
        if self._buf:
            self._upload_part()
        self._client.complete_multipart_upload(
            Bucket=self._bucket,
            Key=self._tmp_key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )
        self._completed = True
        self._client.copy(
            CopySource={"Bucket": self._bucket, "Key": self._tmp_key},
            Bucket=self._bucket,
            Key=dest,
        )
        self._client.delete_object(Bucket=self._bucket, Key=self._tmp_key)
        self._completed = False
        self._upload_id = None
        return True

    def _discard(self) -> None:
        self._buf = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        if self._completed:
            self._completed = False
            self._client.delete_object(Bucket=self._bucket, Key=self._tmp_key)
        else:
            self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._tmp_key, UploadId=upload_id
            )


class S3BlobStore(BaseBlobStore):
    """Encrypted content-addressed blobs in an S3 bucket under a key prefix."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        keys: Mapping[str, bytes],
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        *,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        super().__init__(keys, chunk_size)
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3 minimum)")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def key_for(self, address: str) -> str:
        """The object key of the blob with this (validated) address."""
        return self.prefix + validate_address(address)

    def writer(self, *, max_size: int | None = None) -> S3BlobWriter:
        return S3BlobWriter(self, max_size)

    def _get(self, address: str, start: int, end_incl: int, **extra: Any) -> dict[str, Any]:
        try:
            resp: dict[str, Any] = self.client.get_object(
                Bucket=self.bucket,
                Key=self.key_for(address),
                Range=f"bytes={start}-{end_incl}",
                **extra,
            )
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise NotFound(f"blob {address} not found") from None
            if _code(exc) == "InvalidRange":
                raise IntegrityError(
                    f"blob {address}: stored object ends before byte {start} (truncated)"
                ) from None
            raise
        return resp

    def _read_header(self, address: str) -> tuple[bytes, int]:
        try:
            resp = self._get(address, 0, HEADER_LEN - 1)
        except IntegrityError:
            return b"", 0  # an empty object: Header.parse reports it as truncated
        body = resp["Body"]
        try:
            raw = _read_exact(body, HEADER_LEN)
        finally:
            body.close()
        content_range = resp.get("ContentRange")
        if content_range:
            total = int(str(content_range).rpartition("/")[2])
        else:  # the server ignored the Range header and sent the whole object
            total = int(resp["ContentLength"])
        return raw, total

    def _iter_stored(self, address: str, offset: int, length: int, piece: int) -> Iterator[bytes]:
        body = self._get(address, offset, offset + length - 1)["Body"]
        try:
            remaining = length
            while remaining:
                n = min(piece, remaining)
                data = _read_exact(body, n)
                if len(data) != n:
                    raise IntegrityError(
                        f"blob {address}: ends {remaining - len(data)} bytes early (truncated)"
                    )
                yield data
                remaining -= n
        finally:
            body.close()

    def _head(self, address: str) -> dict[str, Any] | None:
        try:
            resp: dict[str, Any] = self.client.head_object(
                Bucket=self.bucket, Key=self.key_for(address)
            )
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                return None
            raise
        return resp

    def _write_header(self, address: str, header: bytes) -> None:
        head = self._head(address)
        if head is None:
            raise NotFound(f"blob {address} not found")
        stored, etag, key = int(head["ContentLength"]), head["ETag"], self.key_for(address)
        first_end = min(stored, self.part_size)  # stored bytes [0, first_end) form part 1
        rest = self._get(address, HEADER_LEN, first_end - 1, IfMatch=etag)["Body"]
        try:
            first = header + _read_exact(rest, first_end - HEADER_LEN)
        finally:
            rest.close()
        if len(first) != first_end:
            raise IntegrityError(f"blob {address}: changed while its header was rewritten")
        if stored == first_end:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=first, ContentType=_CONTENT_TYPE
            )
            return
        # Large blob: upload the new first part, copy the rest server-side.
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType=_CONTENT_TYPE
        )["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            resp = self.client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=first
            )
            parts.append({"PartNumber": 1, "ETag": resp["ETag"]})
            copy_part = max(self.part_size, -(-(stored - first_end) // (MAX_PARTS - 1)))
            if copy_part > MAX_COPY_PART:
                raise ValueError(f"blob {address} is too large to rewrap in place")
            pos = first_end
            while pos < stored:
                end = min(stored, pos + copy_part)
                copied = self.client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=len(parts) + 1,
                    CopySource={"Bucket": self.bucket, "Key": key},
                    CopySourceRange=f"bytes={pos}-{end - 1}",
                    CopySourceIfMatch=etag,
                )
                parts.append(
                    {"PartNumber": len(parts) + 1, "ETag": copied["CopyPartResult"]["ETag"]}
                )
                pos = end
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def exists(self, address: str) -> bool:
        return self._head(address) is not None

    def delete(self, address: str) -> None:
        if self._head(address) is None:
            raise NotFound(f"blob {address} not found")
        self.client.delete_object(Bucket=self.bucket, Key=self.key_for(address))

    def addresses(self) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        n = len(self.prefix)
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
            for obj in page.get("Contents", ()):
                name = str(obj["Key"])[n:]
                if ADDRESS_RE.fullmatch(name):  # foreign objects under the prefix are skipped
                    yield name

    def purge_temp(self, *, older_than: float = 86400.0) -> int:
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than)
        tmp_prefix = self.prefix + "tmp/"
        removed = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=tmp_prefix):
            for obj in page.get("Contents", ()):
                if obj["LastModified"] <= cutoff:
                    self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])
                    removed += 1
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=tmp_prefix):
            for upload in page.get("Uploads", ()):
                if upload["Initiated"] <= cutoff:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        return removed

    def read_encrypted(self, address: str) -> Iterator[bytes]:
        if self._head(address) is None:
            raise NotFound(f"blob {address} not found")
        return self._stream_object(address)

    def _stream_object(self, address: str) -> Iterator[bytes]:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.key_for(address))
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise NotFound(f"blob {address} not found") from None
            raise
        body = resp["Body"]
        try:
            while chunk := body.read(_STREAM_PIECE):
                yield chunk
        finally:
            body.close()
