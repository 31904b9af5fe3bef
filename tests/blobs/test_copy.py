"""`conveyor blobs copy`: folder → real S3 (Swift s3api) → folder, verified; resumed
copies skip what is already there; bad URLs exit 2."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

from typer.testing import CliRunner

from conveyor.blobs import BlobStore, FolderBlobStore, StoredBlob, open_blob_store
from conveyor.blobs.copy import copy_blobs
from conveyor.cli.blobs import app
from tests.blobs.conftest import S3Server

MiB = 1024 * 1024


def _tree(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


def _fill(root: Path) -> dict[str, bytes]:
    blobs = {
        "logs/000000/1.log": b"line one\nline two\n",
        "logs/000000/2.log": b"",
        "artifacts/1/dist/app.txt": b"artifact for world\n",
        "artifacts/2/dist/image.bin": os.urandom(11 * MiB),  # multipart on S3
        "artifacts/2/name with spaces & symbols+.txt": b"odd names survive",
    }
    for key, data in blobs.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return blobs


def _copy(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["copy", *args])
    return result.exit_code, result.output


def test_folder_to_s3_to_folder_verified(tmp_path: Path, s3_server: S3Server) -> None:
    blobs = _fill(tmp_path / "from")
    bucket_url = s3_server.url(f"copy-{uuid.uuid4().hex[:8]}")
    code, out = _copy("--from", str(tmp_path / "from"), "--to", bucket_url, "--verify")
    assert code == 0, out
    assert "copied 5" in out and "verified 5" in out, out
    assert "testing" not in out  # the secret is never shown

    code, out = _copy("--from", bucket_url, "--to", f"file://{tmp_path / 'back'}", "--verify")
    assert code == 0, out
    assert "copied 5" in out and "verified 5" in out, out
    assert _tree(tmp_path / "back") == blobs

    # Again: everything is already there.
    code, out = _copy("--from", bucket_url, "--to", str(tmp_path / "back"), "--verify")
    assert code == 0, out
    assert "copied 0" in out and "skipped 5 already there" in out, out


class CountingStore:
    """A blob store that records which keys were written (and can corrupt reads)."""

    def __init__(self, inner: BlobStore, corrupt: bool = False) -> None:
        self.inner = inner
        self.corrupt = corrupt
        self.puts: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> StoredBlob:
        self.puts.append(key)
        return await self.inner.put_stream(key, chunks)

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        async for chunk in self.inner.stream(key):
            yield (b"!" + chunk[1:]) if self.corrupt and chunk else chunk


async def test_resumed_copy_skips_done_keys(tmp_path: Path, s3_server: S3Server) -> None:
    blobs = _fill(tmp_path / "from")
    source = FolderBlobStore(tmp_path / "from")
    dest = open_blob_store(s3_server.url(f"resume-{uuid.uuid4().hex[:8]}"))
    try:
        # An interrupted earlier run got two blobs across, and one wrong (same size).
        await dest.put_bytes("logs/000000/1.log", blobs["logs/000000/1.log"])
        await dest.put_bytes("artifacts/2/dist/image.bin", blobs["artifacts/2/dist/image.bin"])
        wrong = b"X" * len(blobs["artifacts/1/dist/app.txt"])
        await dest.put_bytes("artifacts/1/dist/app.txt", wrong)
        counting = CountingStore(dest)
        sizes: list[int] = []
        report = await copy_blobs(
            source,
            counting,  # type: ignore[arg-type]
            verify=True,
            on_start=lambda count, total: sizes.append(total),
            on_bytes=sizes.append,
        )
        assert sorted(counting.puts) == [
            "artifacts/1/dist/app.txt",
            "artifacts/2/name with spaces & symbols+.txt",
            "logs/000000/2.log",
        ]
        assert (report.copied, report.skipped, report.verified, report.failures) == (3, 2, 3, [])
        total = sum(len(d) for d in blobs.values())
        assert sizes[0] == total and sum(sizes[1:]) == total  # the progress bar reaches 100%
        for key, data in blobs.items():
            assert hashlib.sha256(await dest.read_range(key, 0, 20 * MiB)).digest() == (
                hashlib.sha256(data).digest()
            )
    finally:
        await dest.close()


async def test_verify_reports_a_corrupt_destination(tmp_path: Path) -> None:
    _fill(tmp_path / "from")
    report = await copy_blobs(
        FolderBlobStore(tmp_path / "from"),
        CountingStore(FolderBlobStore(tmp_path / "to"), corrupt=True),  # type: ignore[arg-type]
        prefix="logs/",
        verify=True,
    )
    assert report.copied == 2
    assert [f.split(":")[0] for f in report.failures] == ["logs/000000/1.log"]


def test_cli_folder_to_folder_and_prefix(tmp_path: Path) -> None:
    blobs = _fill(tmp_path / "from")
    code, out = _copy(
        "--from", str(tmp_path / "from"), "--to", str(tmp_path / "to"), "--prefix", "logs/"
    )
    assert code == 0, out
    assert _tree(tmp_path / "to") == {k: v for k, v in blobs.items() if k.startswith("logs/")}


def test_bad_urls_exit_2(tmp_path: Path) -> None:
    (tmp_path / "from").mkdir()
    for args in [
        ("--from", "ftp://example.com/x", "--to", str(tmp_path / "to")),
        ("--from", str(tmp_path / "from"), "--to", "s3://"),
        ("--from", str(tmp_path / "from"), "--to", "s3://b/x?colour=blue"),
        ("--from", str(tmp_path / "missing"), "--to", str(tmp_path / "to")),
        ("--from", str(tmp_path / "from"), "--to", str(tmp_path / "from")),
    ]:
        code, out = _copy(*args)
        assert code == 2, (args, out)
        assert "error:" in out, out


def test_unreachable_s3_exits_2(tmp_path: Path) -> None:
    _fill(tmp_path / "from")
    code, out = _copy(
        "--from",
        str(tmp_path / "from"),
        "--to",
        "s3://b/x?endpoint=http://127.0.0.1:9&access_key=a&secret_key=sekrit",
    )
    assert code == 2, out
    assert "sekrit" not in out
