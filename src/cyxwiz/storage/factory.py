"""Build the configured BlobStore from Settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cyxwiz.config import Settings
    from cyxwiz.storage.interfaces import BlobStore


def blob_store_from_settings(settings: Settings) -> BlobStore:
    """The blob store the settings ask for: local directory (default) or S3.

    New blobs are wrapped with the first of ``settings.master_keys``; blobs wrapped with any of
    the others (previous keys) stay readable until rewrapped.
    """
    from cyxwiz.config import BlobBackend, ConfigError

    keys = settings.master_keys
    chunk_size = settings.blob_chunk_size
    if settings.blob_backend is BlobBackend.s3:
        if not settings.s3_bucket:
            raise ConfigError("CYXWIZ_BLOB_BACKEND=s3 needs CYXWIZ_S3_BUCKET")
        import boto3  # heavy; only when S3 is used
        from botocore.config import Config

        from cyxwiz.storage.s3 import S3BlobStore

        options: dict[str, Any] = {"retries": {"max_attempts": 5, "mode": "standard"}}
        if settings.s3_endpoint_url:
            # S3-compatible services (MinIO, R2, Ceph, moto) differ in their support for the
            # newer default checksums; the blob format authenticates every byte anyway.
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            config=Config(**options),
        )
        return S3BlobStore(client, settings.s3_bucket, settings.s3_prefix, keys, chunk_size)
    from cyxwiz.storage.local import LocalBlobStore

    return LocalBlobStore(settings.resolved_blob_dir, keys, chunk_size)
