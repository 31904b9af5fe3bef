"""A real S3 server for the blob tests: OpenStack Swift with its s3api middleware (it
checks SigV4 signatures), started once per test session on free ports and stopped by
the script's own stop command. Never skipped: if Swift is not installed the S3 tests
fail (scripts/install-system-deps.sh installs it)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import boto3
import pytest
from botocore.config import Config

from conveyor.blobs import BlobStore, FolderBlobStore, open_blob_store

# A copy of the workplace's Swift s3api launcher lives in scripts/ so CI has it too.
SWIFT_S3_SCRIPT = Path(
    os.environ.get(
        "CONVEYOR_TEST_SWIFT_S3", str(Path(__file__).resolve().parents[2] / "scripts/swift_s3.sh")
    )
)
BUCKET = "conveyor-test"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    base: Path
    access_key: str = "test:tester"
    secret_key: str = "testing"
    region: str = "us-east-1"
    bucket: str = BUCKET

    def url(self, prefix: str = "", *, credentials: bool = True) -> str:
        """An s3:// blob URL for ``prefix`` in the test bucket."""
        query = f"endpoint={self.endpoint}&region={self.region}"
        if credentials:
            query += f"&access_key={quote(self.access_key)}&secret_key={quote(self.secret_key)}"
        return f"s3://{self.bucket}/{prefix}?{query}"

    def client(self) -> object:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_block(width: int) -> int:
    """A port P with P..P+width-1 all free (Swift's proxy, container, account, object)."""
    for _ in range(200):
        port = random.randrange(20000, 40000)
        if all(_bindable(port + i) for i in range(width)):
            return port
    raise AssertionError("no block of free ports for Swift")


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    if not SWIFT_S3_SCRIPT.is_file():
        pytest.fail(f"{SWIFT_S3_SCRIPT} is missing (set CONVEYOR_TEST_SWIFT_S3)")
    if shutil.which("swift-proxy-server") is None or shutil.which("memcached") is None:
        pytest.fail("OpenStack Swift is not installed: run scripts/install-system-deps.sh")
    base = tmp_path_factory.mktemp("swift-s3")
    port = _free_block(4)
    env = {**os.environ, "S3_PORT": str(port), "MEMCACHED_PORT": str(_free_block(1))}
    out = base / "start.log"
    try:
        with out.open("wb") as log:
            started = subprocess.run(
                ["bash", str(SWIFT_S3_SCRIPT), "start", str(base)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                timeout=120,
            )
        if started.returncode != 0:
            logs = "\n".join(_tail(p) for p in sorted((base / "log").glob("*.log")))
            raise AssertionError(f"Swift did not start: {_tail(out)}\n{logs}")
        server = S3Server(endpoint=f"http://127.0.0.1:{port}", base=base)
        client = server.client()
        deadline = time.monotonic() + 60
        while True:  # the account/container servers may answer a moment after the proxy
            try:
                client.create_bucket(Bucket=server.bucket)  # type: ignore[attr-defined]
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield server
    finally:
        subprocess.run(
            ["bash", str(SWIFT_S3_SCRIPT), "stop", str(base)], env=env, check=False, timeout=60
        )


@pytest.fixture(params=["folder", "s3"])
async def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    """The same contract runs against a folder and a real S3 server (a fresh prefix)."""
    store: BlobStore
    if request.param == "folder":
        store = FolderBlobStore(tmp_path / "blobs")
    else:
        server: S3Server = request.getfixturevalue("s3_server")
        store = open_blob_store(server.url(f"t-{uuid.uuid4().hex[:12]}"))
    try:
        yield store
    finally:
        await store.close()
