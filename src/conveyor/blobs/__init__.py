"""The blob store: finished build logs (``logs/``) and artifacts (``artifacts/``).

Keys are '/'-separated relative paths. ``open_blob_store(url)`` picks the implementation:

- ``/abs/path``, ``relative/path`` or ``file:///abs/path``: a folder (local or NFS),
  see ``FolderBlobStore``;
- ``s3://BUCKET[/PREFIX][?endpoint=URL&region=R&access_key=K&secret_key=S]``: an S3 bucket
  (AWS or S3-compatible), see ``S3BlobStore``. Options missing from the URL come from the
  usual ``AWS_*`` environment variables (``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``,
  ``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SESSION_TOKEN``), then boto3's credential chain; region defaults to us-east-1.

docs/storage.md has the details.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from conveyor.blobs.base import (
    CHUNK,
    BlobStore,
    BlobStoreUnavailable,
    StoredBlob,
    check_key,
    check_prefix,
    redact_url,
)
from conveyor.blobs.folder import FolderBlobStore
from conveyor.errors import InvalidInput

__all__ = [
    "CHUNK",
    "BlobStore",
    "BlobStoreUnavailable",
    "FolderBlobStore",
    "StoredBlob",
    "check_key",
    "check_prefix",
    "open_blob_store",
    "redact_url",
]


def open_blob_store(url: str) -> BlobStore:
    """The blob store a URL names (format above). ``InvalidInput`` if it is malformed.
    Opening makes no network call: an unreachable S3 server shows at first use."""
    url = url.strip()
    if not url:
        raise InvalidInput("empty blob store URL")
    if url.startswith("s3://"):
        from conveyor.blobs.s3 import S3BlobStore  # boto3 is imported only when used

        return S3BlobStore.from_url(url)
    if url.startswith("file:"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise InvalidInput(f"blob URL {url!r}: use file:///ABSOLUTE/PATH")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise InvalidInput(f"blob URL {url!r}: use file:///ABSOLUTE/PATH")
        return FolderBlobStore(Path(path))
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise InvalidInput(
            f"unsupported blob store URL scheme {scheme!r}: use a path, file:///PATH or s3://"
        )
    return FolderBlobStore(Path(url).expanduser().resolve())
