"""/api/v1 artifacts beyond list and download (those are in routes_builds): a whole
build as one streamed archive (zip or tar.gz), direct (presigned) download URLs, and
pinning builds against retention.

Archives are written as they are sent, artifact by artifact and chunk by chunk, so
memory does not grow with their size: zip entries carry a data descriptor (CRC and
sizes after the data; ZIP64 where an entry needs it); tar entries are PAX headers,
data and padding, gzip-compressed on the fly.
"""

from __future__ import annotations

import asyncio
import inspect
import stat
import tarfile
import zipfile
import zlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import BaseModel

from conveyor.api.deps import CallerDep, RuntimeDep
from conveyor.api.routes_builds import content_disposition
from conveyor.errors import NotFound
from conveyor.store.records import ArtifactRecord
from conveyor.store.retention import set_pinned

router = APIRouter(prefix="/api/v1", tags=["artifacts"])

#: Suffixes of files that are compressed already: stored as they are in a zip.
COMPRESSED_SUFFIXES = (
    ".7z",
    ".apk",
    ".br",
    ".bz2",
    ".deb",
    ".gif",
    ".gz",
    ".jar",
    ".jpeg",
    ".jpg",
    ".lz4",
    ".mp3",
    ".mp4",
    ".png",
    ".rpm",
    ".tbz2",
    ".tgz",
    ".txz",
    ".war",
    ".webm",
    ".webp",
    ".whl",
    ".xz",
    ".zip",
    ".zst",
)
#: Compress pieces at least this big in a worker thread (not on the event loop).
THREAD_THRESHOLD = 64 * 1024
GZIP_LEVEL = 6
#: Most seconds a presigned URL may live.
MAX_URL_SECONDS = 7 * 24 * 3600

Compression = Literal["auto", "deflate", "store"]


class PinOut(BaseModel):
    build_id: int
    pinned: bool


class ArtifactUrlOut(BaseModel):
    url: str
    #: True: straight from the blob store (no token needed, until it expires).
    direct: bool
    expires_in: int | None


# ------------------------------------------------------------------- archives
class _Sink:
    """A write-only file for zipfile: collects what it writes until taken."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


async def _off_loop(fn: Any, data: bytes) -> Any:
    """Run a compressor on ``data``: in a thread when it is big enough to matter."""
    if len(data) >= THREAD_THRESHOLD:
        return await asyncio.to_thread(fn, data)
    return fn(data)


def _zip_time(when: datetime) -> tuple[int, int, int, int, int, int]:
    t = when.timetuple()
    if t.tm_year < 1980:
        return (1980, 1, 1, 0, 0, 0)
    return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


def _deflates(path: str, compression: Compression) -> bool:
    if compression != "auto":
        return compression == "deflate"
    return not path.lower().endswith(COMPRESSED_SUFFIXES)


async def zip_chunks(
    blobs: Any, items: Sequence[ArtifactRecord], compression: Compression = "auto"
) -> AsyncIterator[bytes]:
    """A zip of ``items`` (paths as in the build), produced as it is read."""
    sink = _Sink()
    archive = zipfile.ZipFile(sink, "w", allowZip64=True)
    for artifact in items:
        info = zipfile.ZipInfo(artifact.path, date_time=_zip_time(artifact.created_at))
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        info.file_size = artifact.size  # known up front: decides ZIP64 for the entry
        if _deflates(artifact.path, compression):
            info.compress_type = zipfile.ZIP_DEFLATED  # zlib's default level (6)
        with archive.open(info, "w") as entry:
            if data := sink.take():
                yield data
            async for chunk in blobs.stream(artifact.blob_key):
                await _off_loop(entry.write, chunk)
                if data := sink.take():
                    yield data
        if data := sink.take():
            yield data
    archive.close()
    yield sink.take()


def _tar_header(artifact: ArtifactRecord) -> bytes:
    info = tarfile.TarInfo(artifact.path)
    info.size = artifact.size
    info.mtime = int(artifact.created_at.timestamp())
    info.mode = 0o644
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


async def tar_gz_chunks(blobs: Any, items: Sequence[ArtifactRecord]) -> AsyncIterator[bytes]:
    """A gzip-compressed tar (PAX) of ``items``, produced as it is read."""
    gzip = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for artifact in items:
        data = gzip.compress(_tar_header(artifact))
        sent = 0
        async for chunk in blobs.stream(artifact.blob_key):
            sent += len(chunk)
            if sent > artifact.size:
                raise RuntimeError(f"blob {artifact.blob_key!r} is larger than recorded")
            data += await _off_loop(gzip.compress, chunk)
            if data:
                yield data
                data = b""
        if sent != artifact.size:
            # A tar entry cannot be shorter than its header says: abort the transfer.
            raise RuntimeError(f"blob {artifact.blob_key!r} is {sent} bytes, not {artifact.size}")
        padding = -artifact.size % tarfile.BLOCKSIZE
        data += gzip.compress(b"\0" * padding)
        if data:
            yield data
    yield gzip.compress(b"\0" * (2 * tarfile.BLOCKSIZE)) + gzip.flush()


async def _archive_items(runtime: Any, build_id: int) -> tuple[str, list[ArtifactRecord]]:
    build = await runtime.store.get_build(build_id)
    items = await runtime.store.list_artifacts(build_id)
    for artifact in items:  # fail before the first byte, not halfway through
        try:
            await runtime.blobs.size(artifact.blob_key)
        except NotFound as exc:
            raise NotFound(
                f"build {build_id} artifact {artifact.path!r} is missing from the blob store"
            ) from exc
    stem = f"{build.job_name.replace('/', '-')}-{build.number}-artifacts"
    return stem, items


@router.get("/builds/{build_id}/artifacts.zip")
async def download_zip(
    build_id: int,
    runtime: RuntimeDep,
    _: CallerDep,
    compression: Compression = "auto",
) -> StreamingResponse:
    """Every artifact of the build in one zip, streamed. ``compression``: ``auto``
    (deflate, except files compressed already), ``deflate`` or ``store``."""
    stem, items = await _archive_items(runtime, build_id)
    return StreamingResponse(
        zip_chunks(runtime.blobs, items, compression),
        media_type="application/zip",
        headers={"Content-Disposition": content_disposition(f"{stem}.zip")},
    )


@router.get("/builds/{build_id}/artifacts.tar.gz")
async def download_tar_gz(build_id: int, runtime: RuntimeDep, _: CallerDep) -> StreamingResponse:
    """Every artifact of the build in one gzip-compressed tar, streamed."""
    stem, items = await _archive_items(runtime, build_id)
    return StreamingResponse(
        tar_gz_chunks(runtime.blobs, items),
        media_type="application/gzip",
        headers={"Content-Disposition": content_disposition(f"{stem}.tar.gz")},
    )


# ------------------------------------------------------------ direct download
@router.get("/builds/{build_id}/artifacts-url/{path:path}", response_model=None)
async def artifact_url(
    build_id: int,
    path: str,
    runtime: RuntimeDep,
    _: CallerDep,
    redirect: bool = False,
    seconds: Annotated[int, Query(ge=1, le=MAX_URL_SECONDS)] = 300,
) -> ArtifactUrlOut | RedirectResponse:
    """Where to download one artifact: a presigned URL straight from the blob store
    when it offers them (valid ``seconds``), else this API's download URL.
    ``redirect=true`` answers ``302`` to that URL instead."""
    artifact = await runtime.store.get_artifact(build_id, path)
    url: str | None = None
    presign = getattr(runtime.blobs, "presigned_url", None)
    if presign is not None:
        result = presign(artifact.blob_key, seconds)
        url = await result if inspect.isawaitable(result) else result
    direct = url is not None
    if url is None:
        url = f"/api/v1/builds/{build_id}/artifacts/{quote(artifact.path)}"
    if redirect:
        return RedirectResponse(url, status_code=302)
    return ArtifactUrlOut(url=url, direct=direct, expires_in=seconds if direct else None)


# -------------------------------------------------------------------- pinning
@router.post("/builds/{build_id}/pin")
async def pin_build(build_id: int, runtime: RuntimeDep, _: CallerDep) -> PinOut:
    """Keep the build's artifacts whatever the retention policy says."""
    await set_pinned(runtime.store, build_id, True)
    return PinOut(build_id=build_id, pinned=True)


@router.post("/builds/{build_id}/unpin")
async def unpin_build(build_id: int, runtime: RuntimeDep, _: CallerDep) -> PinOut:
    """Let the retention policy decide about the build's artifacts again."""
    await set_pinned(runtime.store, build_id, False)
    return PinOut(build_id=build_id, pinned=False)
