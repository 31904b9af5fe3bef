"""A 1 GiB artifact end to end with real processes: a build makes it (a sparse file),
the agent uploads it, the API serves it alone and inside the build's zip. Both are
streamed to disk and checked by SHA-256, while the controller's and the agent's
resident memory is sampled every 0.2 s: neither may hold the file in memory."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.harness import (
    PYTHON,
    AgentProcess,
    Controller,
    wait_agents_online,
    wait_build_finished,
)

GiB = 1024**3
MiB = 1024**2
#: Generous: a controller or agent idles at ~60-100 MiB; a buffered 1 GiB would blow it.
RSS_BOUND = 400 * MiB

BIG = """
name: big
agent: linux
stages:
  - name: build
    steps:
      - sh: truncate -s 1G big.bin
      - archive: big.bin
"""


CLI = "import typer; from conveyor.cli.artifacts import artifacts; typer.run(artifacts)"


class PeakRss:
    """Samples the resident set size of some processes (with their children) in a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peaks = dict.fromkeys(pids, 0)
        self.first = {name: self._rss(proc) for name, proc in self.procs.items()}
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self, proc: psutil.Process) -> int:
        total = 0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, proc in self.procs.items():
                try:
                    self.peaks[name] = max(self.peaks[name], self._rss(proc))
                except psutil.Error:
                    pass
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _zeros_sha256(size: int) -> str:
    digest = hashlib.sha256()
    block = bytes(MiB)
    for _ in range(size // MiB):
        digest.update(block)
    return digest.hexdigest()


def _sha256_of(chunks: Iterator[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(MiB):
            yield chunk


@pytest.mark.timeout(240)
def test_a_1_gib_artifact_streams_through_without_filling_memory(tmp_path: Path) -> None:
    controller = Controller(tmp_path / "controller").start()
    agent = AgentProcess(controller, "agent-big", tmp_path / "agent", executors=1).start()
    try:
        wait_agents_online(controller, 1)
        assert controller.proc is not None and agent.proc is not None
        expected = _zeros_sha256(GiB)
        started = time.monotonic()
        with (
            PeakRss({"controller": controller.proc.pid, "agent": agent.proc.pid}) as rss,
            controller.client() as c,
        ):
            r = c.post("/api/v1/jobs", json={"spec": BIG})
            assert r.status_code == 201, r.text
            build_id = c.post("/api/v1/jobs/big/builds", json={}).json()["id"]
            build = wait_build_finished(controller, build_id, timeout=150)
            assert build["state"] == "succeeded", build
            [artifact] = build["artifacts"]
            assert (artifact["path"], artifact["size"]) == ("big.bin", GiB)
            assert artifact["sha256"] == expected
            built = time.monotonic()

            single = tmp_path / "big.bin"
            with (
                c.stream("GET", f"/api/v1/builds/{build_id}/artifacts/big.bin") as response,
                single.open("wb") as fh,
            ):
                assert response.status_code == 200
                for chunk in response.iter_bytes(MiB):
                    fh.write(chunk)
            assert _sha256_of(_file_chunks(single)) == (expected, GiB)
            single.unlink()
            downloaded = time.monotonic()

            wired = (
                "/api/v1/builds/{build_id}/artifacts.zip" in c.get("/openapi.json").json()["paths"]
            )
            assert wired
            archive = tmp_path / "artifacts.zip"
            if wired:
                with (
                    c.stream("GET", f"/api/v1/builds/{build_id}/artifacts.zip") as response,
                    archive.open("wb") as fh,
                ):
                    assert response.status_code == 200
                    for chunk in response.iter_bytes(MiB):
                        fh.write(chunk)
            zipped = time.monotonic()
            tarball = tmp_path / "artifacts.tar.gz"
            if wired:
                with (
                    c.stream("GET", f"/api/v1/builds/{build_id}/artifacts.tar.gz") as response,
                    tarball.open("wb") as fh,
                ):
                    assert response.status_code == 200
                    for chunk in response.iter_bytes(MiB):
                        fh.write(chunk)
            tarred = time.monotonic()

            # The CLI (`conveyor build artifacts BUILD --download DIR`), which checks the
            # SHA-256 itself; run through typer until cli/builds.py registers it.
            fetched = tmp_path / "fetched"
            done = subprocess.run(
                [PYTHON, "-c", CLI, str(build_id), "--download", str(fetched)],
                capture_output=True,
                text=True,
                env={
                    **os.environ,
                    "CONVEYOR_URL": controller.url,
                    "CONVEYOR_TOKEN": controller.token,
                },
                timeout=120,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert "(SHA-256 verified)" in done.stderr
            assert (fetched / "big.bin").stat().st_size == GiB
            (fetched / "big.bin").unlink()
            cli_done = time.monotonic()
        if wired:
            with zipfile.ZipFile(archive) as z:
                [info] = z.infolist()
                assert (info.filename, info.file_size) == ("big.bin", GiB)
                with z.open(info) as member:
                    assert _sha256_of(iter(lambda: member.read(MiB), b"")) == (expected, GiB)
            with tarfile.open(tarball, "r|gz") as tar:  # read as a stream, like a pipe
                entry = tar.next()
                assert entry is not None and (entry.name, entry.size) == ("big.bin", GiB)
                data = tar.extractfile(entry)
                assert data is not None
                assert _sha256_of(iter(lambda: data.read(MiB), b"")) == (expected, GiB)
                assert tar.next() is None
        zip_note = (
            f"zip ({archive.stat().st_size / MiB:.1f} MiB) {zipped - downloaded:.1f}s,"
            f" tar.gz ({tarball.stat().st_size / MiB:.1f} MiB) {tarred - zipped:.1f}s"
            if wired
            else "archives not served (routes_artifacts not registered)"
        )
        print(
            f"\nbig artifact: build+upload {built - started:.1f}s,"
            f" download {downloaded - built:.1f}s,"
            f" {zip_note}, CLI download {cli_done - tarred:.1f}s;"
            f" peak RSS controller {rss.peaks['controller'] / MiB:.0f} MiB"
            f" (idle {rss.first['controller'] / MiB:.0f}),"
            f" agent {rss.peaks['agent'] / MiB:.0f} MiB (idle {rss.first['agent'] / MiB:.0f})"
        )
        for name, peak in rss.peaks.items():
            assert 0 < peak < RSS_BOUND, f"{name} peaked at {peak / MiB:.0f} MiB"
    finally:
        agent.stop()
        controller.stop()
