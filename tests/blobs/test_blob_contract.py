"""The blob store contract: every implementation behaves the same. Each test runs against
a folder and a real S3 server (Swift s3api, see conftest.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from conveyor.blobs import (
    BlobStore,
    BlobStoreUnavailable,
    FolderBlobStore,
    StoredBlob,
    open_blob_store,
    redact_url,
)
from conveyor.blobs.s3 import S3BlobStore
from conveyor.errors import InvalidInput, NotFound
from tests.blobs.conftest import S3Server

MiB = 1024 * 1024
BAD_KEYS = ["", "/abs/key", "../escape", "a/../../b", "a/./b", "a//b", "a/", ".", ".."]


async def _read_all(store: BlobStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.stream(key)])


async def _listed(store: BlobStore, prefix: str = "") -> list[tuple[str, int]]:
    return [item async for item in store.list(prefix)]


async def test_put_read_size_exists_delete(blob_store: BlobStore) -> None:
    stored = await blob_store.put_bytes("logs/000000/1.log", b"hello, world\n")
    assert stored == StoredBlob(
        "logs/000000/1.log", 13, hashlib.sha256(b"hello, world\n").hexdigest()
    )
    assert await blob_store.exists("logs/000000/1.log")
    assert await blob_store.size("logs/000000/1.log") == 13
    assert await blob_store.read_range("logs/000000/1.log", 0, 100) == b"hello, world\n"
    assert await _read_all(blob_store, "logs/000000/1.log") == b"hello, world\n"
    await blob_store.delete("logs/000000/1.log")
    assert not await blob_store.exists("logs/000000/1.log")
    await blob_store.delete("logs/000000/1.log")  # deleting a missing key is fine


async def test_read_range(blob_store: BlobStore) -> None:
    data = bytes(range(256)) * 40
    await blob_store.put_bytes("artifacts/3/bin/data", data)
    assert await blob_store.read_range("artifacts/3/bin/data", 0, 10) == data[:10]
    assert await blob_store.read_range("artifacts/3/bin/data", 1000, 500) == data[1000:1500]
    assert await blob_store.read_range("artifacts/3/bin/data", len(data) - 5, 100) == data[-5:]
    assert await blob_store.read_range("artifacts/3/bin/data", len(data), 100) == b""
    assert await blob_store.read_range("artifacts/3/bin/data", len(data) + 50, 100) == b""
    assert await blob_store.read_range("artifacts/3/bin/data", 7, 0) == b""


async def test_empty_blob(blob_store: BlobStore) -> None:
    stored = await blob_store.put_bytes("empty", b"")
    assert stored.size == 0 and stored.sha256 == hashlib.sha256(b"").hexdigest()
    assert await blob_store.size("empty") == 0
    assert await blob_store.read_range("empty", 0, 10) == b""
    assert await _read_all(blob_store, "empty") == b""


async def test_stream_put_and_stream_read(blob_store: BlobStore) -> None:
    pieces = [os.urandom(n) for n in (1, 1000, 300_000, 17)]

    async def chunks() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    whole = b"".join(pieces)
    stored = await blob_store.put_stream("artifacts/9/out.tar", chunks())
    assert stored.size == len(whole)
    assert stored.sha256 == hashlib.sha256(whole).hexdigest()
    assert await _read_all(blob_store, "artifacts/9/out.tar") == whole


async def test_list_by_prefix(blob_store: BlobStore) -> None:
    for key, size in [("a/1", 1), ("a/2", 22), ("ab/3", 3), ("b/c/4", 4), ("top", 5)]:
        await blob_store.put_bytes(key, b"x" * size)
    assert await _listed(blob_store) == [
        ("a/1", 1),
        ("a/2", 22),
        ("ab/3", 3),
        ("b/c/4", 4),
        ("top", 5),
    ]
    assert await _listed(blob_store, "a/") == [("a/1", 1), ("a/2", 22)]
    assert await _listed(blob_store, "a") == [("a/1", 1), ("a/2", 22), ("ab/3", 3)]
    assert await _listed(blob_store, "b/c/") == [("b/c/4", 4)]
    assert await _listed(blob_store, "b/c/4") == [("b/c/4", 4)]
    assert await _listed(blob_store, "nothing/") == []
    with pytest.raises(InvalidInput):
        await _listed(blob_store, "../")


async def test_overwrite_replaces(blob_store: BlobStore) -> None:
    await blob_store.put_bytes("k", b"a much longer first version" * 100)
    await blob_store.put_bytes("k", b"short")
    assert await blob_store.size("k") == 5
    assert await _read_all(blob_store, "k") == b"short"
    assert await _listed(blob_store) == [("k", 5)]


async def test_missing_key_is_not_found(blob_store: BlobStore) -> None:
    with pytest.raises(NotFound):
        await blob_store.read_range("logs/nope.log", 0, 10)
    with pytest.raises(NotFound):
        await blob_store.read_range("logs/nope.log", 0, 0)
    with pytest.raises(NotFound):
        await blob_store.size("logs/nope.log")
    with pytest.raises(NotFound):
        await _read_all(blob_store, "logs/nope.log")
    assert not await blob_store.exists("logs/nope.log")


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_bad_keys_are_invalid_input(blob_store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidInput):
        await blob_store.put_bytes(key, b"x")
    with pytest.raises(InvalidInput):
        await blob_store.read_range(key, 0, 1)
    with pytest.raises(InvalidInput):
        await blob_store.size(key)
    with pytest.raises(InvalidInput):
        await blob_store.exists(key)
    with pytest.raises(InvalidInput):
        await blob_store.delete(key)
    with pytest.raises(InvalidInput):
        await _read_all(blob_store, key)
    with pytest.raises(InvalidInput):
        blob_store.presigned_url(key, 60)


async def test_large_stream_upload_is_multipart_with_bounded_memory(
    blob_store: BlobStore,
) -> None:
    block = os.urandom(MiB)
    chunk = 64 * 1024
    total = 20 * MiB
    expected = hashlib.sha256()

    async def chunks() -> AsyncIterator[bytes]:
        for n in range(total // chunk):
            start = (n * chunk * 7) % (MiB - chunk)
            piece = block[start : start + chunk] + b""  # a new object, as a socket gives
            expected.update(piece)
            yield piece

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        stored = await blob_store.put_stream("artifacts/big/image.bin", chunks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size == total
    assert stored.sha256 == expected.hexdigest()
    assert peak < 32 * MiB, f"upload held {peak / MiB:.1f} MiB"
    assert await blob_store.size("artifacts/big/image.bin") == total
    digest = hashlib.sha256()
    async for piece in blob_store.stream("artifacts/big/image.bin"):
        digest.update(piece)
    assert digest.hexdigest() == expected.hexdigest()
    if isinstance(blob_store, S3BlobStore):
        head = blob_store.client.head_object(
            Bucket=blob_store.bucket, Key=blob_store.prefix + "artifacts/big/image.bin"
        )
        assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # 8 + 8 + 4 MiB parts


async def test_failed_stream_leaves_nothing(blob_store: BlobStore) -> None:
    await blob_store.put_bytes("artifacts/1/app.zip", b"old")

    async def broken() -> AsyncIterator[bytes]:
        for _ in range(12 * 16):  # 12 MiB: past the first multipart part
            yield b"z" * (64 * 1024)
        raise ConnectionError("agent went away")

    with pytest.raises(ConnectionError):
        await blob_store.put_stream("artifacts/1/app.zip", broken())
    assert await _read_all(blob_store, "artifacts/1/app.zip") == b"old"
    assert await _listed(blob_store) == [("artifacts/1/app.zip", 3)]
    if isinstance(blob_store, S3BlobStore):
        uploads = blob_store.client.list_multipart_uploads(
            Bucket=blob_store.bucket, Prefix=blob_store.prefix
        )
        assert uploads.get("Uploads", []) == []  # aborted


async def test_presigned_url(blob_store: BlobStore) -> None:
    await blob_store.put_bytes("artifacts/5/report.html", b"<h1>ok</h1>")
    url = blob_store.presigned_url("artifacts/5/report.html", 300)
    if isinstance(blob_store, FolderBlobStore):
        assert url is None
        return
    assert url is not None
    async with httpx.AsyncClient() as http:
        answer = await http.get(url)
        assert answer.status_code == 200
        assert answer.content == b"<h1>ok</h1>"
        # The server checks the signature: a tampered one is refused.
        signature = url.rsplit("X-Amz-Signature=", 1)[1]
        forged = url.replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
        assert (await http.get(forged)).status_code == 403


async def test_s3_wrong_secret_is_unavailable(s3_server: S3Server) -> None:
    store = open_blob_store(
        f"s3://{s3_server.bucket}/x?endpoint={s3_server.endpoint}"
        "&region=us-east-1&access_key=test:tester&secret_key=wrong"
    )
    try:
        with pytest.raises(BlobStoreUnavailable):
            await store.put_bytes("k", b"x")
    finally:
        await store.close()


async def test_s3_credentials_from_environment(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    store = open_blob_store(f"s3://{s3_server.bucket}/env-creds")
    try:
        await store.put_bytes("k", b"from env")
        assert await store.read_range("k", 0, 100) == b"from env"
        await store.delete("k")
    finally:
        await store.close()


def test_open_blob_store_urls(tmp_path: Path) -> None:
    folder = open_blob_store(f"file://{tmp_path}/a")
    assert isinstance(folder, FolderBlobStore) and folder.root == tmp_path / "a"
    plain = open_blob_store(str(tmp_path / "b"))
    assert isinstance(plain, FolderBlobStore) and plain.root == tmp_path / "b"
    s3 = open_blob_store(
        "s3://bkt/some/prefix/?endpoint=http://127.0.0.1:9/&region=eu-west-1"
        "&access_key=AK&secret_key=SK&part_size_mib=16"
    )
    assert isinstance(s3, S3BlobStore)
    assert (s3.bucket, s3.prefix, s3.region, s3.part_size) == (
        "bkt",
        "some/prefix/",
        "eu-west-1",
        16 * MiB,
    )
    assert s3.endpoint_url == "http://127.0.0.1:9/"
    assert "SK" not in s3.describe()
    for bad in [
        "",
        "ftp://host/x",
        "file://host/x",
        "file:relative",
        "s3://",
        "s3:///prefix",
        "s3://key:secret@bucket/x",
        "s3://b/x?endpoint=127.0.0.1:9000",
        "s3://b/x?colour=blue",
        "s3://b/../x",
        "s3://b/x?part_size_mib=1",
        "s3://b/x?part_size_mib=big",
    ]:
        with pytest.raises(InvalidInput):
            open_blob_store(bad)
    assert redact_url("s3://b/p?access_key=AK&secret_key=SK") == (
        "s3://b/p?access_key=AK&secret_key=***"
    )


async def test_cancelled_stream_leaves_nothing(blob_store: BlobStore) -> None:
    """A controller shutting down mid-upload: the task is cancelled while waiting for
    the next chunk, after the first multipart part went up."""
    sent = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        for _ in range(10 * 16):  # 10 MiB: one 8 MiB part uploaded, the rest buffered
            yield b"q" * (64 * 1024)
        sent.set()
        await asyncio.Event().wait()  # the agent stops sending
        yield b""

    task = asyncio.create_task(blob_store.put_stream("artifacts/2/half.bin", stalled()))
    await asyncio.wait_for(sent.wait(), 30)
    if isinstance(blob_store, S3BlobStore):
        client, bucket, prefix = blob_store.client, blob_store.bucket, blob_store.prefix
        for _ in range(100):
            if client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no multipart upload in progress")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await blob_store.exists("artifacts/2/half.bin")
    assert await _listed(blob_store) == []
    if isinstance(blob_store, S3BlobStore):
        assert client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []) == []
    if isinstance(blob_store, FolderBlobStore):
        assert [p.name for p in blob_store.root.rglob("*") if p.is_file()] == []


async def test_readers_see_old_or_new_never_a_mix(blob_store: BlobStore) -> None:
    old, new = b"o" * (3 * MiB), b"n" * (2 * MiB)
    await blob_store.put_bytes("logs/000000/7.log", old)

    async def new_version() -> AsyncIterator[bytes]:
        for i in range(0, len(new), 256 * 1024):
            await asyncio.sleep(0.005)
            yield new[i : i + 256 * 1024]

    writer = asyncio.create_task(blob_store.put_stream("logs/000000/7.log", new_version()))
    seen: set[bytes] = set()
    while not writer.done():
        seen.add(await _read_all(blob_store, "logs/000000/7.log"))
    await writer
    seen.add(await _read_all(blob_store, "logs/000000/7.log"))
    assert seen <= {old, new} and new in seen


async def test_folder_listing_hides_puts_in_progress(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path / "blobs")
    await store.put_bytes("logs/000000/1.log", b"done")
    (tmp_path / "blobs/logs/000000" / f".2.log.{'ab' * 16}.tmp").write_bytes(b"half")
    assert [item async for item in store.list()] == [("logs/000000/1.log", 4)]
