"""Blobs in a folder, local or shared over NFS.

NFS-safe: a put writes to a temporary name in the same folder, fsyncs, then renames
over the key (atomic on one file system, NFS included); nothing relies on file locks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

from conveyor.blobs.base import CHUNK, BlobStore, StoredBlob, check_key, check_prefix
from conveyor.errors import NotFound

# Temporary files of puts in progress (or of puts killed midway): ".NAME.HEX32.tmp".
_TEMP = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")


class FolderBlobStore(BlobStore):
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"folder {self.root}"

    def path_of(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> StoredBlob:
        target = self.path_of(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        digest = hashlib.sha256()
        size = 0
        try:
            with tmp.open("wb") as fh:
                async for chunk in chunks:
                    size += len(chunk)
                    # Hashing a large chunk takes milliseconds: off the event loop too.
                    await asyncio.to_thread(_hash_and_write, digest, fh, chunk)
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
            except (FileNotFoundError, IsADirectoryError) as exc:
                raise NotFound(f"blob {key!r} is missing") from exc

        return await asyncio.to_thread(read)

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        path = self.path_of(key)
        if not path.is_file():
            raise NotFound(f"blob {key!r} is missing")
        with path.open("rb") as fh:
            while True:
                chunk = await asyncio.to_thread(fh.read, CHUNK)
                if not chunk:
                    return
                yield chunk

    async def size(self, key: str) -> int:
        path = self.path_of(key)
        try:
            if path.is_file():
                return path.stat().st_size
        except FileNotFoundError:
            pass
        raise NotFound(f"blob {key!r} is missing")

    async def delete(self, key: str) -> None:
        path = self.path_of(key)
        if not path.is_dir():
            path.unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path_of(key).is_file)

    async def list(self, prefix: str = "") -> AsyncIterator[tuple[str, int]]:
        check_prefix(prefix)
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        for key, size in await asyncio.to_thread(_walk, self.root, base):
            if key.startswith(prefix):
                yield key, size

    def presigned_url(self, key: str, expires_seconds: int = 3600) -> str | None:
        check_key(key)
        return None

    async def close(self) -> None:
        return None


def _walk(root: Path, base: str) -> list[tuple[str, int]]:
    top = root.joinpath(*base.split("/")) if base else root
    found: list[tuple[str, int]] = []
    for folder, _, files in os.walk(top):
        rel = Path(folder).relative_to(root).as_posix()
        for name in files:
            if _TEMP.match(name):
                continue
            try:
                size = os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # deleted while we walked
                continue
            found.append((name if rel == "." else f"{rel}/{name}", size))
    found.sort()
    return found


def _hash_and_write(digest: Any, fh: BinaryIO, chunk: bytes) -> None:
    digest.update(chunk)
    fh.write(chunk)


def _sync_close(fh: object) -> None:
    flush = getattr(fh, "flush")  # noqa: B009
    flush()
    os.fsync(fh.fileno())  # type: ignore[attr-defined]
