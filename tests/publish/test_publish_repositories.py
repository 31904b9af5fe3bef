"""The publish uploaders against real local repositories: nginx with WebDAV PUT (generic
HTTP and Maven layout) and pypiserver (PyPI legacy upload API)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest

from conveyor.agent.publish import Publication, PublishError, publish
from conveyor.core.publish import PublishSpec
from tests.publish.servers import PASSWORD, USER, DavServer, PypiServer, write_wheel

ENV = {"REPO_USER": USER, "REPO_PASSWORD": PASSWORD}


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    async def __call__(self, line: str) -> None:
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def spec(**fields: object) -> PublishSpec:
    return PublishSpec.model_validate(fields)


def workspace_with(tmp_path: Path, files: dict[str, bytes]) -> Path:
    ws = tmp_path / "ws"
    for rel, data in files.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_bytes(data)
    ws.mkdir(exist_ok=True)
    return ws


# --------------------------------------------------------------------------- http


async def test_http_put_lands_files_byte_identical(tmp_path: Path, dav: DavServer) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)  # several read chunks
    ws = workspace_with(tmp_path, {"dist/app-1.0.tar.gz": big, "dist/notes.txt": b"hello\n"})
    log = Log()
    done = await publish(
        spec(type="http", url=f"{dav.url}/repo/releases/", files=["dist/*"]), ws, {}, log
    )
    assert (dav.root / "repo/releases/app-1.0.tar.gz").read_bytes() == big
    assert (dav.root / "repo/releases/notes.txt").read_bytes() == b"hello\n"
    assert sorted(p.file for p in done) == ["dist/app-1.0.tar.gz", "dist/notes.txt"]
    by_file = {p.file: p for p in done}
    assert by_file["dist/app-1.0.tar.gz"] == Publication(
        "http",
        "dist/app-1.0.tar.gz",
        f"{dav.url}/repo/releases/app-1.0.tar.gz",
        len(big),
        hashlib.sha256(big).hexdigest(),
    )
    assert f"publish: dist/notes.txt -> {dav.url}/repo/releases/notes.txt (6 B)" in log.lines


async def test_http_keep_paths_and_credentials_from_environment(
    tmp_path: Path, dav: DavServer
) -> None:
    ws = workspace_with(tmp_path, {"out/a/x.bin": b"x", "out/b/x.bin": b"y"})
    log = Log()
    await publish(
        spec(
            type="http",
            url=f"{dav.url}/secure/",
            files=["out/**/*.bin"],
            keep_paths=True,
            username="${REPO_USER}",
            password="${REPO_PASSWORD}",
        ),
        ws,
        ENV,
        log,
    )
    assert (dav.root / "secure/out/a/x.bin").read_bytes() == b"x"
    assert (dav.root / "secure/out/b/x.bin").read_bytes() == b"y"
    assert PASSWORD not in log.text and USER not in log.text


async def test_http_same_name_twice_is_refused_before_uploading(
    tmp_path: Path, dav: DavServer
) -> None:
    ws = workspace_with(tmp_path, {"a/x.bin": b"x", "b/x.bin": b"y"})
    with pytest.raises(PublishError, match=re.escape("would both be uploaded as 'x.bin'")):
        await publish(spec(type="http", url=f"{dav.url}/repo/", files=["*/x.bin"]), ws, {}, Log())
    assert " PUT " not in dav.access_log()


async def test_refusal_carries_status_and_answer(tmp_path: Path, dav: DavServer) -> None:
    ws = workspace_with(tmp_path, {"x.bin": b"x"})
    with pytest.raises(PublishError) as refused:
        await publish(spec(type="http", url=f"{dav.url}/readonly/", files=["x.bin"]), ws, {}, Log())
    text = str(refused.value)
    assert f"PUT {dav.url}/readonly/x.bin failed: 405 Not Allowed" in text
    assert "<center>nginx" in text  # the server's own answer, as it said it


async def test_wrong_password_fails_with_401_and_no_secret_in_message(
    tmp_path: Path, dav: DavServer
) -> None:
    ws = workspace_with(tmp_path, {"x.bin": b"x"})
    bad = {"REPO_USER": USER, "REPO_PASSWORD": "not-the-password"}
    with pytest.raises(PublishError) as refused:
        await publish(
            spec(
                type="http",
                url=f"{dav.url}/secure/",
                files=["x.bin"],
                username="${REPO_USER}",
                password="${REPO_PASSWORD}",
            ),
            ws,
            bad,
            Log(),
        )
    assert "401 Unauthorized" in str(refused.value)
    assert "not-the-password" not in str(refused.value)
    assert not (dav.root / "secure/x.bin").exists()


async def test_unset_credential_variable_is_named(tmp_path: Path, dav: DavServer) -> None:
    ws = workspace_with(tmp_path, {"x.bin": b"x"})
    with pytest.raises(PublishError, match="environment variable NEXUS_USER is not set"):
        await publish(
            spec(
                type="http",
                url=f"{dav.url}/secure/",
                files=["x.bin"],
                username="${NEXUS_USER}",
                password="${NEXUS_PASSWORD}",
            ),
            ws,
            {},
            Log(),
        )


async def test_unreachable_server_fails_with_the_reason(tmp_path: Path) -> None:
    from tests.harness import free_port

    ws = workspace_with(tmp_path, {"x.bin": b"x"})
    url = f"http://127.0.0.1:{free_port()}/repo/"
    with pytest.raises(PublishError, match=r"PUT .*/repo/x.bin failed: ConnectError"):
        await publish(spec(type="http", url=url, files=["x.bin"]), ws, {}, Log())


# --------------------------------------------------------------------------- maven


def _checksums_match(path: Path) -> None:
    data = path.read_bytes()
    for ext, algo in (("md5", hashlib.md5), ("sha1", hashlib.sha1), ("sha256", hashlib.sha256)):
        assert path.with_name(f"{path.name}.{ext}").read_text() == algo(data).hexdigest(), ext


async def test_maven_layout_checksums_pom_and_metadata(tmp_path: Path, dav: DavServer) -> None:
    jar, sources = os.urandom(50_000), os.urandom(20_000)
    ws = workspace_with(tmp_path, {"target/app.jar": jar, "target/app-src.jar": sources})
    log = Log()
    common = {
        "type": "maven",
        "url": f"{dav.url}/secure/maven/",
        "group_id": "com.example.tools",
        "artifact_id": "app",
        "username": "${REPO_USER}",
        "password": "${REPO_PASSWORD}",
    }
    done = await publish(
        spec(
            **common,
            version="1.0",
            files=["target/app.jar", {"file": "target/app-src.jar", "classifier": "sources"}],
        ),
        ws,
        ENV,
        log,
    )
    version_dir = dav.root / "secure/maven/com/example/tools/app/1.0"
    assert (version_dir / "app-1.0.jar").read_bytes() == jar
    assert (version_dir / "app-1.0-sources.jar").read_bytes() == sources
    for name in ("app-1.0.jar", "app-1.0-sources.jar", "app-1.0.pom"):
        _checksums_match(version_dir / name)
    pom = ElementTree.fromstring((version_dir / "app-1.0.pom").read_text())
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    assert pom.findtext("m:groupId", namespaces=ns) == "com.example.tools"
    assert pom.findtext("m:packaging", namespaces=ns) == "jar"
    assert [p.coordinates for p in done] == [
        "com.example.tools:app:1.0:jar",
        "com.example.tools:app:1.0:sources:jar",
        "com.example.tools:app:1.0:pom",
    ]
    # A second version: maven-metadata.xml now lists both.
    await publish(spec(**common, version="1.1", files=["target/app.jar"]), ws, ENV, log)
    metadata = dav.root / "secure/maven/com/example/tools/app/maven-metadata.xml"
    _checksums_match(metadata)
    root = ElementTree.fromstring(metadata.read_text())
    assert [v.text for v in root.findall("versioning/versions/version")] == ["1.0", "1.1"]
    assert root.findtext("versioning/release") == "1.1"
    assert root.findtext("versioning/latest") == "1.1"
    assert PASSWORD not in log.text


async def test_maven_given_pom_is_used_and_clashing_names_refused(
    tmp_path: Path, dav: DavServer
) -> None:
    pom = b"<project><modelVersion>4.0.0</modelVersion></project>\n"
    ws = workspace_with(tmp_path, {"pom.xml": pom, "a.jar": b"a", "b.jar": b"b"})
    common = {"type": "maven", "url": f"{dav.url}/repo/m", "group_id": "g", "artifact_id": "x"}
    await publish(
        spec(**common, version="2", files=["a.jar", {"file": "pom.xml", "extension": "pom"}]),
        ws,
        {},
        Log(),
    )
    assert (dav.root / "repo/m/g/x/2/x-2.pom").read_bytes() == pom
    with pytest.raises(PublishError, match=re.escape("would both be published as 'x-3.jar'")):
        await publish(spec(**common, version="3", files=["*.jar"]), ws, {}, Log())
    assert not (dav.root / "repo/m/g/x/3").exists()


# --------------------------------------------------------------------------- pypi


async def test_pypi_upload_then_pip_downloads_it(tmp_path: Path, pypi: PypiServer) -> None:
    wheel = write_wheel(tmp_path / "ws" / "dist")
    ws = tmp_path / "ws"
    log = Log()
    common = {
        "type": "pypi",
        "url": pypi.url,
        "files": ["dist/*.whl"],
        "username": "${REPO_USER}",
        "password": "${REPO_PASSWORD}",
    }
    done = await publish(spec(**common), ws, ENV, log)
    assert done[0].coordinates == "conveyor-demo==0.1.0"
    assert done[0].sha256 == hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert (pypi.packages / wheel.name).read_bytes() == wheel.read_bytes()
    # The real pip resolves it from the index.
    target = tmp_path / "downloaded"
    run = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--index-url",
            f"{pypi.url}simple/",
            "-d",
            str(target),
            "conveyor-demo==0.1.0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (target / wheel.name).read_bytes() == wheel.read_bytes()
    # Uploading the same file again: pypiserver refuses (409), and says why.
    with pytest.raises(PublishError) as again:
        await publish(spec(**common), ws, ENV, Log())
    assert "409" in str(again.value)
    assert PASSWORD not in log.text


async def test_pypi_wrong_password_and_not_a_package(tmp_path: Path, pypi: PypiServer) -> None:
    write_wheel(tmp_path / "ws" / "dist")
    (tmp_path / "ws" / "dist" / "README.txt").write_text("not a package")
    ws = tmp_path / "ws"
    with pytest.raises(PublishError) as refused:
        await publish(
            spec(type="pypi", url=pypi.url, files=["dist/*.whl"], username="u", password="nope"),
            ws,
            {},
            Log(),
        )
    assert "401" in str(refused.value) or "403" in str(refused.value)
    with pytest.raises(PublishError, match="neither a wheel"):
        await publish(spec(type="pypi", url=pypi.url, files=["dist/*"]), ws, {}, Log())
    assert list(pypi.packages.iterdir()) == []


# --------------------------------------------------------------------------- path safety


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("../outside.txt", "refusing '../outside.txt': outside the workspace"),
        ("sub/../../outside.txt", "refusing '../outside.txt': outside the workspace"),
        ("/etc/hostname", "refusing absolute pattern '/etc/hostname'"),
        ("escape/*", "refusing 'escape/secret.txt': outside the workspace"),
        ("leak.txt", "refusing 'leak.txt': outside the workspace"),
    ],
)
async def test_paths_outside_the_workspace_are_refused(
    tmp_path: Path, dav: DavServer, pattern: str, message: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (tmp_path / "outside.txt").write_text("secret")
    ws = workspace_with(tmp_path, {"sub/ok.txt": b"ok"})
    (ws / "escape").symlink_to(outside)  # a folder symlink out
    (ws / "leak.txt").symlink_to(outside / "secret.txt")  # a file symlink out
    for kind in ("http", "maven", "pypi"):
        extra = {"group_id": "g", "artifact_id": "a", "version": "1"} if kind == "maven" else {}
        with pytest.raises(PublishError) as refused:
            await publish(
                spec(type=kind, url=f"{dav.url}/repo/", files=[pattern, "sub/ok.txt"], **extra),
                ws,
                {},
                Log(),
            )
        assert message in str(refused.value), kind
    assert list((dav.root / "repo").iterdir()) == []
    assert " PUT " not in dav.access_log()


async def test_symlink_inside_the_workspace_is_followed(tmp_path: Path, dav: DavServer) -> None:
    ws = workspace_with(tmp_path, {"real/app.bin": b"inside"})
    (ws / "link.bin").symlink_to(ws / "real" / "app.bin")
    await publish(spec(type="http", url=f"{dav.url}/repo/", files=["link.bin"]), ws, {}, Log())
    assert (dav.root / "repo/link.bin").read_bytes() == b"inside"


async def test_pypi_sdist_metadata_comes_from_pkg_info(tmp_path: Path, pypi: PypiServer) -> None:
    from tests.publish.servers import write_sdist

    sdist = write_sdist(tmp_path / "ws" / "dist")
    done = await publish(
        spec(
            type="pypi",
            url=pypi.url,
            files=["dist/*.tar.gz"],
            username="${REPO_USER}",
            password="${REPO_PASSWORD}",
        ),
        tmp_path / "ws",
        ENV,
        Log(),
    )
    assert done[0].coordinates == "conveyor-demo-src==0.2.0"
    assert (pypi.packages / sdist.name).read_bytes() == sdist.read_bytes()
    async with httpx.AsyncClient(timeout=10) as c:
        listing = await c.get(f"{pypi.url}simple/conveyor-demo-src/")
    assert listing.status_code == 200 and sdist.name in listing.text
