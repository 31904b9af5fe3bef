"""`conveyor build artifacts`: listing, downloading with SHA-256 checks, and refusing
paths from a (malicious) server that would land outside the download folder."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from conveyor.cli import artifacts as cli_artifacts
from conveyor.cli.artifacts import safe_target

FILES = {
    "report.txt": b"all good\n",
    "dist/app.bin": bytes(range(256)) * 5000,
    "dist/deep/résumé 1.json": b"{}\n",
}


def _listing(files: dict[str, bytes], build_id: int = 7) -> list[dict[str, Any]]:
    return [
        {
            "path": path,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "content_type": "application/octet-stream",
            "url": f"/api/v1/builds/{build_id}/artifacts/{path}",
        }
        for path, data in sorted(files.items())
    ]


def _server(listing: list[dict[str, Any]], files: dict[str, bytes]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer t0k"
        path = unquote(request.url.raw_path.decode())
        if path == "/api/v1/builds/7/artifacts":
            return httpx.Response(200, json=listing)
        if path == "/api/v1/builds/8/artifacts":
            return httpx.Response(404, json={"detail": "build 8 not found", "status": 404})
        prefix = "/api/v1/builds/7/artifacts/"
        if path.startswith(prefix) and path[len(prefix) :] in files:
            return httpx.Response(200, content=files[path[len(prefix) :]])
        return httpx.Response(404, json={"detail": f"no {path}"})

    return httpx.MockTransport(handle)


def _run(
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    listing: list[dict[str, Any]],
    files: dict[str, bytes],
) -> Any:
    monkeypatch.setattr(
        httpx, "Client", functools.partial(httpx.Client, transport=_server(listing, files))
    )
    app = typer.Typer()
    app.command("artifacts")(cli_artifacts.artifacts)
    app.command("other")(lambda: None)  # more than one command: `artifacts` is named
    return CliRunner().invoke(
        app, ["artifacts", *args, "--url", "http://conveyor.test", "--token", "t0k"]
    )


def test_list(monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(monkeypatch, ["7"], _listing(FILES), FILES)
    assert result.exit_code == 0, result.output
    # Not a terminal: one tab-separated line per artifact, for scripts.
    assert result.output.splitlines() == [
        f"{a['path']}\t{a['size']}\t{a['sha256']}" for a in _listing(FILES)
    ]


def test_list_on_a_terminal_is_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_artifacts, "out", Console(force_terminal=True, width=160))
    result = _run(monkeypatch, ["7"], _listing(FILES), FILES)
    assert result.exit_code == 0, result.output
    for path, data in FILES.items():
        assert path in result.output
        assert hashlib.sha256(data).hexdigest() in result.output
    assert "1.2 MiB" in result.output


def test_download_keeps_paths_and_checks_sums(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    target = tmp_path / "out"
    result = _run(monkeypatch, ["7", "--download", str(target)], _listing(FILES), FILES)
    assert result.exit_code == 0, result.output
    assert "downloaded 3 artifact(s)" in result.output
    for path, data in FILES.items():
        assert (target / path).read_bytes() == data
    assert sorted(p.name for p in target.rglob("*") if p.is_file()) == sorted(
        Path(p).name for p in FILES
    )  # no partial files left behind


def test_a_checksum_mismatch_fails_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    listing = _listing(FILES)
    tampered = {**FILES, "dist/app.bin": b"evil" + FILES["dist/app.bin"][4:]}
    result = _run(monkeypatch, ["7", "-d", str(tmp_path)], listing, tampered)
    assert result.exit_code == 2
    assert "dist/app.bin: checksum mismatch" in result.output
    assert not (tmp_path / "dist" / "app.bin").exists()
    assert not list(tmp_path.rglob("*.part"))


@pytest.mark.parametrize(
    "path",
    [
        "../escape.txt",
        "dist/../../escape.txt",
        "/etc/passwd",
        "dist/./x",
        "a//b",
        "C:/windows/x",
        "dist\\..\\..\\x",
        "",
    ],
)
def test_paths_leaving_the_folder_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, path: str
) -> None:
    files = {"ok.txt": b"fine", path: b"pwned"}
    target = tmp_path / "out"
    result = _run(monkeypatch, ["7", "-d", str(target)], _listing(files), files)
    assert result.exit_code == 2, result.output
    assert "refusing artifact path" in result.output
    assert not (tmp_path / "escape.txt").exists()
    assert not target.exists() or not any(target.rglob("*"))  # nothing written at all


def test_symlinks_out_of_the_folder_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "out"
    root.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="leads outside"):
        safe_target(root, "link/x.txt")
    assert safe_target(root, "a/b.txt") == root.resolve() / "a" / "b.txt"


def test_server_errors_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(monkeypatch, ["8"], [], {})
    assert result.exit_code == 2
    assert "build 8 not found" in result.output
