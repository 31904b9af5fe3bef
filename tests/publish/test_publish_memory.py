"""Uploads stream from disk: publishing a 200 MB file (http PUT to nginx, and a 200 MB
wheel to pypiserver) does not grow the publishing process's peak memory by anything
like the file's size."""

from __future__ import annotations

import resource
import zipfile
from pathlib import Path

from conveyor.agent.publish import publish
from conveyor.core.publish import PublishSpec
from tests.publish.servers import PASSWORD, USER, DavServer, PypiServer

SIZE = 200 * 1024 * 1024
#: Allowed growth of the peak RSS: buffers, not the file.
BOUND = 64 * 1024 * 1024


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


async def _say(line: str) -> None:
    pass


async def test_a_200_mb_put_streams(tmp_path: Path, dav: DavServer) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    with (ws / "big.bin").open("wb") as fh:
        fh.truncate(SIZE)  # sparse: no disk or memory needed to make it
    before = peak_rss()
    done = await publish(
        PublishSpec(type="http", url=f"{dav.url}/repo/", files=["big.bin"]), ws, {}, _say
    )
    growth = peak_rss() - before
    assert done[0].size == SIZE
    assert (dav.root / "repo/big.bin").stat().st_size == SIZE
    assert growth < BOUND, f"peak RSS grew by {growth / 2**20:.0f} MiB"
    print(f"http PUT of 200 MiB: peak RSS growth {growth / 2**20:.1f} MiB")


async def test_a_200_mb_wheel_upload_streams(tmp_path: Path, pypi: PypiServer) -> None:
    ws = tmp_path / "ws"
    (ws / "dist").mkdir(parents=True)
    wheel = ws / "dist" / "big_demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(
            "big_demo-1.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: big-demo\nVersion: 1.0\n",
        )
        with zf.open("big_demo/data.bin", "w", force_zip64=True) as member:
            block = bytes(1024 * 1024)
            for _ in range(SIZE // len(block)):
                member.write(block)
    before = peak_rss()
    done = await publish(
        PublishSpec(
            type="pypi", url=pypi.url, files=["dist/*.whl"], username=USER, password=PASSWORD
        ),
        ws,
        {},
        _say,
    )
    growth = peak_rss() - before
    assert done[0].size == wheel.stat().st_size
    assert (pypi.packages / wheel.name).stat().st_size == wheel.stat().st_size
    assert growth < BOUND, f"peak RSS grew by {growth / 2**20:.0f} MiB"
    print(f"pypi upload of a 200 MiB wheel: peak RSS growth {growth / 2**20:.1f} MiB")
