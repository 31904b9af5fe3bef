"""Copy every blob from one store to another (``conveyor blobs copy``).

Resumable without any state of its own: a key already at the destination with the same
size and the same SHA-256 (both sides read and hashed) is skipped, so running the copy
again after an interruption only moves what is missing or different. A put is atomic
in every store (temp name + rename; S3 multipart completion), so an interrupted copy
never leaves half a blob under its key.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from conveyor.blobs.base import BlobStore
from conveyor.errors import NotFound

PARALLEL = 4


@dataclass
class CopyReport:
    blobs: int = 0
    total_bytes: int = 0
    copied: int = 0
    copied_bytes: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    verified: int = 0
    failures: list[str] = field(default_factory=list)


async def sha256_of(store: BlobStore, key: str) -> tuple[int, str]:
    """(size, SHA-256) of a blob, by reading it."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in store.stream(key):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


async def copy_blobs(
    source: BlobStore,
    dest: BlobStore,
    *,
    prefix: str = "",
    verify: bool = False,
    on_start: Callable[[int, int], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    parallel: int = PARALLEL,
) -> CopyReport:
    """Copy every blob under ``prefix``; ``on_start(count, bytes)`` once the source is
    listed, ``on_bytes(n)`` as bytes are done (copied, or found already there)."""
    items = [item async for item in source.list(prefix)]
    report = CopyReport(blobs=len(items), total_bytes=sum(size for _, size in items))
    if on_start is not None:
        on_start(report.blobs, report.total_bytes)
    advance = on_bytes or (lambda _: None)
    todo = iter(items)

    async def counted(key: str) -> AsyncIterator[bytes]:
        async for chunk in source.stream(key):
            advance(len(chunk))
            yield chunk

    async def one(key: str, size: int) -> None:
        if await _same(source, dest, key, size):
            report.skipped += 1
            report.skipped_bytes += size
            advance(size)
            return
        stored = await dest.put_stream(key, counted(key))
        report.copied += 1
        report.copied_bytes += stored.size
        if stored.size != size:
            report.failures.append(
                f"{key}: source changed while copying ({size} bytes listed, {stored.size} read)"
            )
            return
        if verify:
            dest_size, dest_sum = await sha256_of(dest, key)
            if (dest_size, dest_sum) != (stored.size, stored.sha256):
                report.failures.append(
                    f"{key}: destination has sha256 {dest_sum} ({dest_size} bytes),"
                    f" source had {stored.sha256} ({stored.size} bytes)"
                )
            else:
                report.verified += 1

    async def worker() -> None:
        for key, size in todo:  # one shared iterator: each key goes to one worker
            await one(key, size)

    await asyncio.gather(*(worker() for _ in range(max(1, parallel))))
    return report


async def _same(source: BlobStore, dest: BlobStore, key: str, size: int) -> bool:
    try:
        if await dest.size(key) != size:
            return False
    except NotFound:
        return False
    (_, theirs), (_, ours) = await asyncio.gather(sha256_of(dest, key), sha256_of(source, key))
    return theirs == ours
