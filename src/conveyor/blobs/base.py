"""The blob store interface: what controllers need from wherever logs and artifacts live.

Keys are '/'-separated relative paths (``logs/12.log``, ``artifacts/12/dist/app.txt``);
``..``, ``.``, empty parts and absolute keys are refused with ``InvalidInput``. A missing
key raises ``NotFound``. Implementations: ``FolderBlobStore`` (a local or NFS folder) and
``S3BlobStore`` (any S3-compatible server), chosen by URL with ``open_blob_store``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from conveyor.errors import ConveyorError, InvalidInput

CHUNK = 256 * 1024


@dataclass(frozen=True)
class StoredBlob:
    key: str
    size: int
    sha256: str


class BlobStoreUnavailable(ConveyorError):
    """The blob store cannot be reached right now (network, credentials, missing bucket)."""

    status = 503
    title = "Blob store unavailable"


def check_key(key: str) -> str:
    """Return ``key`` if it is a clean relative '/'-separated path, else raise InvalidInput."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidInput(f"invalid blob key {key!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key prefix (it may end with '/')."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def redact_url(url: str) -> str:
    """``url`` with secret_key / session_token hidden, for messages and logs."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    shown = []
    for item in parts.query.split("&"):
        name, sep, _ = item.partition("=")
        shown.append(f"{name}=***" if sep and name in ("secret_key", "session_token") else item)
    return parts._replace(query="&".join(shown)).geturl()


@runtime_checkable
class BlobStore(Protocol):
    """Where finished logs and artifacts live. Every method is safe to call from any
    controller at once; a put replaces the whole blob atomically (readers see the old or
    the new content, never a mix)."""

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> StoredBlob:
        """Store the chunks as ``key`` (replacing it) without holding them all in memory."""
        ...

    async def put_bytes(self, key: str, data: bytes) -> StoredBlob: ...

    async def read_range(self, key: str, start: int, limit: int) -> bytes:
        """Up to ``limit`` bytes from ``start``; ``b""`` at or past the end."""
        ...

    def stream(self, key: str) -> AsyncIterator[bytes]:
        """The whole blob in chunks (an async generator: NotFound at the first step)."""
        ...

    async def size(self, key: str) -> int: ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; nothing happens if it is missing."""
        ...

    async def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> AsyncIterator[tuple[str, int]]:
        """(key, size) of every blob whose key starts with ``prefix``, sorted by key."""
        ...

    def presigned_url(self, key: str, expires_seconds: int = 3600) -> str | None:
        """A URL anyone can GET the blob from until it expires; None if the store has none."""
        ...

    async def close(self) -> None: ...

    def describe(self) -> str:
        """Where the blobs are, for messages (no secrets)."""
        ...
