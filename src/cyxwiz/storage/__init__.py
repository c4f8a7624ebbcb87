"""Encrypted, content-addressed blob storage (local directory or S3) that streams.

See docs/storage.md for the format and the key rotation procedure.
"""

from cyxwiz.storage.factory import blob_store_from_settings
from cyxwiz.storage.interfaces import BlobInfo, BlobStore, BlobWriter

__all__ = ["BlobInfo", "BlobStore", "BlobWriter", "blob_store_from_settings"]
