"""The blob store: finished build logs and artifacts (later: backups).

Keys are '/'-separated relative paths. The folder implementation is safe on
NFS: it writes to a temporary name in the same folder then renames, and
never relies on file locks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from conveyor.errors import InvalidInput, NotFound

CHUNK = 256 * 1024


@dataclass(frozen=True)
class StoredBlob:
    key: str
    size: int
    sha256: str


class FolderBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or key.startswith("/"):
            raise InvalidInput(f"invalid blob key {key!r}")
        return self.root.joinpath(*parts)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> StoredBlob:
        target = self.path_of(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        digest = hashlib.sha256()
        size = 0
        try:
            with tmp.open("wb") as fh:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(fh.write, chunk)
                await asyncio.to_thread(_sync_close, fh)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredBlob(key=key, size=size, sha256=digest.hexdigest())

    async def put_bytes(self, key: str, data: bytes) -> StoredBlob:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(key, one())

    async def read_range(self, key: str, start: int, limit: int) -> bytes:
        path = self.path_of(key)

        def read() -> bytes:
            try:
                with path.open("rb") as fh:
                    fh.seek(start)
                    return fh.read(limit)
            except FileNotFoundError as exc:
                raise NotFound(f"blob {key!r} is missing") from exc

        return await asyncio.to_thread(read)

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        path = self.path_of(key)
        if not path.exists():
            raise NotFound(f"blob {key!r} is missing")
        with path.open("rb") as fh:
            while True:
                chunk = await asyncio.to_thread(fh.read, CHUNK)
                if not chunk:
                    return
                yield chunk

    async def size(self, key: str) -> int:
        try:
            return self.path_of(key).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"blob {key!r} is missing") from exc

    async def delete(self, key: str) -> None:
        self.path_of(key).unlink(missing_ok=True)


def _sync_close(fh: object) -> None:
    flush = getattr(fh, "flush")  # noqa: B009
    flush()
    os.fsync(fh.fileno())  # type: ignore[attr-defined]
