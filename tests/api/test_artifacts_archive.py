"""Whole-build archives (zip, tar.gz), direct download URLs and pinning, in process on
both stores; the build runs through the agent protocol."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conveyor.api.app import create_app
from conveyor.runtime import Runtime
from conveyor.store.retention import is_pinned
from tests.api.conftest import dispatch_once
from tests.api.test_api import assert_problem, create_job, poll, register, trigger

ARTIFACTS = {
    "report.txt": b"all good\n" * 100,
    "dist/app.bin": os.urandom(700 * 1024),  # several blob chunks; compressed off the loop
    "dist/nested/deep/résumé 1.json": b'{"ok": true}\n',
    "dist/logs.tar.gz": b"\x1f\x8b" + os.urandom(5000),  # compressed already: stored
}


@pytest.fixture
def app(runtime: Runtime) -> FastAPI:
    """The real app."""
    app = create_app(runtime, run_loops=False)
    assert "/api/v1/builds/{build_id}/artifacts.zip" in app.openapi()["paths"]
    return app


async def _build_with_artifacts(
    client: httpx.AsyncClient, runtime: Runtime, files: dict[str, bytes]
) -> dict[str, Any]:
    await create_job(client)
    build = (await trigger(client, "hello")).json()
    agent = await register(client, f"agent-{build['id']}", "linux")
    headers = {"X-Agent-Id": str(agent)}
    assert await dispatch_once(runtime) == 1
    [assignment] = (await poll(client, agent))["assignments"]
    base = f"/agent/v1/assignments/{assignment['assignment_id']}"
    assert (await client.post(f"{base}/start", headers=headers)).status_code == 200
    for path, data in files.items():
        r = await client.put(
            f"{base}/artifacts", params={"path": path}, content=data, headers=headers
        )
        assert r.status_code == 200, r.text
    r = await client.post(f"{base}/finish", json={"result": "succeeded"}, headers=headers)
    assert r.status_code == 200
    return dict((await client.get(f"/api/v1/builds/{build['id']}")).json())


async def test_zip_and_tar_gz_hold_every_artifact(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    build = await _build_with_artifacts(client, runtime, ARTIFACTS)
    url = f"/api/v1/builds/{build['id']}"

    r = await client.get(f"{url}/artifacts.zip")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"] == 'attachment; filename="hello-1-artifacts.zip"'
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        assert archive.testzip() is None  # every CRC checks out
        assert sorted(archive.namelist()) == sorted(ARTIFACTS)
        for name, data in ARTIFACTS.items():
            assert archive.read(name) == data
        methods = {i.filename: i.compress_type for i in archive.infolist()}
    assert methods["dist/logs.tar.gz"] == zipfile.ZIP_STORED
    assert methods["report.txt"] == methods["dist/app.bin"] == zipfile.ZIP_DEFLATED
    assert len(r.content) < sum(map(len, ARTIFACTS.values()))  # the text did shrink

    r = await client.get(f"{url}/artifacts.zip", params={"compression": "store"})
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
        assert {n: archive.read(n) for n in archive.namelist()} == ARTIFACTS
    r = await client.get(f"{url}/artifacts.zip", params={"compression": "lzma"})
    assert_problem(r, 400, "compression")

    r = await client.get(f"{url}/artifacts.tar.gz")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/gzip"
    assert r.headers["content-disposition"] == 'attachment; filename="hello-1-artifacts.tar.gz"'
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == [a["path"] for a in build["artifacts"]]
        for member in members:
            assert member.isfile() and member.mode == 0o644
            extracted = archive.extractfile(member)
            assert extracted is not None and extracted.read() == ARTIFACTS[member.name]


async def test_archives_of_a_build_without_artifacts_are_empty(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    build = await _build_with_artifacts(client, runtime, {})
    r = await client.get(f"/api/v1/builds/{build['id']}/artifacts.zip")
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as archive:
        assert archive.namelist() == []
    r = await client.get(f"/api/v1/builds/{build['id']}/artifacts.tar.gz")
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as archive:
        assert archive.getmembers() == []


async def test_unknown_builds_and_missing_blobs_get_404(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    for method, suffix in [
        ("GET", "artifacts.zip"),
        ("GET", "artifacts.tar.gz"),
        ("POST", "pin"),
        ("POST", "unpin"),
    ]:
        r = await client.request(method, f"/api/v1/builds/999/{suffix}")
        assert_problem(r, 404, "build 999 not found")
    r = await client.get("/api/v1/builds/999/artifacts-url/a.txt")
    assert_problem(r, 404, "build 999 has no artifact 'a.txt'")

    build = await _build_with_artifacts(client, runtime, {"a.txt": b"a", "b.txt": b"b"})
    [_, second] = await runtime.store.list_artifacts(build["id"])
    await runtime.blobs.delete(second.blob_key)
    for suffix in ("artifacts.zip", "artifacts.tar.gz"):
        r = await client.get(f"/api/v1/builds/{build['id']}/{suffix}")
        assert_problem(r, 404, "artifact 'b.txt' is missing from the blob store")


async def test_pin_and_unpin(client: httpx.AsyncClient, runtime: Runtime) -> None:
    build = await _build_with_artifacts(client, runtime, {"a.txt": b"a"})
    url = f"/api/v1/builds/{build['id']}"
    for _ in range(2):
        r = await client.post(f"{url}/pin")
        assert r.status_code == 200 and r.json() == {"build_id": build["id"], "pinned": True}
        assert await is_pinned(runtime.store, build["id"])
        assert (await client.get(url)).json()["pinned"] is True
    r = await client.post(f"{url}/unpin")
    assert r.status_code == 200 and r.json() == {"build_id": build["id"], "pinned": False}
    assert not await is_pinned(runtime.store, build["id"])


async def test_artifact_url_and_redirect(
    client: httpx.AsyncClient, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = await _build_with_artifacts(client, runtime, {"dist/a b.txt": b"ab"})
    url = f"/api/v1/builds/{build['id']}/artifacts-url/dist/a b.txt"
    api_url = f"/api/v1/builds/{build['id']}/artifacts/dist/a%20b.txt"
    if getattr(runtime.blobs, "presigned_url", None) is None or (
        runtime.blobs.presigned_url("x", 1) is None  # type: ignore[attr-defined]
    ):
        r = await client.get(url)
        assert r.status_code == 200
        assert r.json() == {"url": api_url, "direct": False, "expires_in": None}
        r = await client.get(url, params={"redirect": "true"})
        assert r.status_code == 302 and r.headers["location"] == api_url
        r = await client.get(url, params={"redirect": "true"}, follow_redirects=True)
        assert r.status_code == 200 and r.content == b"ab"

    def presigned_url(key: str, seconds: int) -> str:
        return f"https://blobs.example/{key}?expires={seconds}"

    monkeypatch.setattr(runtime.blobs, "presigned_url", presigned_url, raising=False)
    direct = f"https://blobs.example/artifacts/{build['id']}/dist/a b.txt?expires=60"
    r = await client.get(url, params={"seconds": 60})
    assert r.json() == {"url": direct, "direct": True, "expires_in": 60}
    r = await client.get(url, params={"redirect": "true", "seconds": 60})
    assert r.status_code == 302 and r.headers["location"] == direct.replace(" ", "%20")
    assert_problem(await client.get(url, params={"seconds": 0}), 400, "seconds")

    async def async_presigned_url(key: str, seconds: int) -> str | None:
        return None  # a store that cannot presign this one

    monkeypatch.setattr(runtime.blobs, "presigned_url", async_presigned_url, raising=False)
    assert (await client.get(url)).json()["direct"] is False
