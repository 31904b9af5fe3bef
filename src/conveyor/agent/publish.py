"""The ``publish`` step on the agent: upload workspace files to an external repository.

Three uploaders, one per :class:`~conveyor.core.publish.PublishSpec` type:

* :func:`publish_http`: ``PUT url/<file name>`` (or the workspace path with
  ``keep_paths``), streamed from disk;
* :func:`publish_maven`: the Maven layout with ``.md5``/``.sha1``/``.sha256`` files,
  a generated POM unless one is given, then ``maven-metadata.xml`` (read, merged,
  written back; a server that refuses that gets a warning, not a failure: Nexus and
  Artifactory maintain it themselves);
* :func:`publish_pypi`: the legacy upload API (``multipart/form-data`` POST with
  ``:action=file_upload`` and the metadata read from the wheel or sdist, as twine).

Files are chosen exactly as ``archive`` chooses them (:func:`collect_artifacts`):
absolute patterns, ``..`` and symlinks resolving outside the workspace are refused
before anything is read or sent. Credentials (``username``/``password``, usually
``${VAR}`` references to variables bound by the credentials store) go only into the
``Authorization`` header; no log line holds them, nor a URL's ``user:pass@`` part.
A refused upload raises :class:`PublishError` with the server's status and the first
:data:`ANSWER_BYTES` of its answer, which the executor writes to the build log.
"""

from __future__ import annotations

import asyncio
import email.parser
import hashlib
import os
import tarfile
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from conveyor.core.publish import (
    MavenCoordinates,
    MavenFile,
    PublishSpec,
    UnsetVariable,
    expand_variables,
    maven_artifact_dir,
    maven_file_name,
    maven_metadata,
    maven_pom,
    maven_version_dir,
    split_extension,
)

__all__ = ["ANSWER_BYTES", "Publication", "PublishError", "publish", "redact"]

#: How much of a refusing server's answer goes into the build log.
ANSWER_BYTES = 2048
CHUNK = 256 * 1024
TIMEOUT = httpx.Timeout(60.0, connect=15.0)

Say = Callable[[str], Awaitable[None]]


class PublishError(Exception):
    """Publishing failed; the message is written to the build log as is."""


@dataclass(frozen=True)
class Publication:
    """One file that reached a repository: where from, where to, what."""

    repository: str  # http | maven | pypi
    file: str  # workspace-relative path ('' for a generated POM)
    url: str  # where it went (no credentials)
    size: int
    sha256: str
    coordinates: str | None = None  # maven g:a:v[:classifier]:ext, pypi name==version

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def redact(url: str) -> str:
    """``url`` without a ``user:password@`` part (for log lines and records)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


# ----------------------------------------------------------------- choosing files


def select_files(workspace: Path, patterns: list[str]) -> dict[str, Path]:
    """Workspace files matching ``patterns`` (relative path -> resolved path), chosen
    with the same rules as ``archive``; raises :class:`PublishError` for an absolute
    pattern, a match outside the workspace, or no match at all."""
    from conveyor.agent.executor import collect_artifacts  # the executor imports us

    for pattern in patterns:
        if os.path.isabs(pattern) or pattern.startswith("~"):
            raise PublishError(f"publish: refusing absolute pattern '{pattern}'")
    files, refused, unmatched = collect_artifacts(workspace, patterns)
    if refused:
        names = ", ".join(f"'{r}'" for r in refused)
        raise PublishError(
            f"publish: refusing {names}: outside the workspace (a '..' path or a symlink "
            "pointing out of it); nothing was uploaded"
        )
    if unmatched:
        raise PublishError("publish: no files match " + ", ".join(f"'{p}'" for p in unmatched))
    return files


# ----------------------------------------------------------------- http helpers


def _join(base: str, rel: str) -> str:
    return base.rstrip("/") + "/" + quote(rel.lstrip("/"))


def _answer(response: httpx.Response) -> str:
    text = response.content[:ANSWER_BYTES].decode("utf-8", "replace").strip()
    more = " …" if len(response.content) > ANSWER_BYTES else ""
    return f"{text}{more}" if text else "(empty answer)"


def _refused(method: str, url: str, response: httpx.Response) -> PublishError:
    return PublishError(
        f"publish: {method} {redact(url)} failed: {response.status_code} "
        f"{response.reason_phrase}\n{_answer(response)}"
    )


@dataclass
class _Digests:
    size: int = 0
    sha256: str = ""
    sha1: str = ""
    md5: str = ""


async def _file_body(path: Path, digests: _Digests) -> AsyncIterator[bytes]:
    """The file in chunks, read off the event loop, hashing as it goes."""
    sha256, sha1, md5 = hashlib.sha256(), hashlib.sha1(), hashlib.md5()
    with path.open("rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, CHUNK):
            sha256.update(chunk)
            sha1.update(chunk)
            md5.update(chunk)
            digests.size += len(chunk)
            yield chunk
    digests.sha256, digests.sha1, digests.md5 = (
        sha256.hexdigest(),
        sha1.hexdigest(),
        md5.hexdigest(),
    )


async def _put_file(client: httpx.AsyncClient, url: str, path: Path) -> _Digests:
    digests = _Digests()
    size = (await asyncio.to_thread(path.stat)).st_size
    try:
        response = await client.put(
            url,
            content=_file_body(path, digests),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
        )
    except httpx.HTTPError as exc:
        raise PublishError(
            f"publish: PUT {redact(url)} failed: {type(exc).__name__}: {exc}"
        ) from None
    if not response.is_success:
        raise _refused("PUT", url, response)
    return digests


async def _put_bytes(client: httpx.AsyncClient, url: str, data: bytes, content_type: str) -> None:
    try:
        response = await client.put(url, content=data, headers={"Content-Type": content_type})
    except httpx.HTTPError as exc:
        raise PublishError(
            f"publish: PUT {redact(url)} failed: {type(exc).__name__}: {exc}"
        ) from None
    if not response.is_success:
        raise _refused("PUT", url, response)


def _client(spec: PublishSpec, env: Mapping[str, str]) -> tuple[httpx.AsyncClient, str]:
    """An HTTP client carrying the step's credentials, and the expanded base URL."""
    try:
        url = expand_variables(spec.url, env)
        auth = None
        if spec.username is not None and spec.password is not None:
            auth = httpx.BasicAuth(
                expand_variables(spec.username, env), expand_variables(spec.password, env)
            )
    except UnsetVariable as exc:
        raise PublishError(f"publish: {exc} (needed by url, username or password)") from None
    if not url.startswith(("http://", "https://")):
        raise PublishError(f"publish: url must start with http:// or https://, got {redact(url)!r}")
    client = httpx.AsyncClient(auth=auth, timeout=TIMEOUT, follow_redirects=False)
    return client, url


# ----------------------------------------------------------------- uploaders


async def publish_http(
    spec: PublishSpec, workspace: Path, env: Mapping[str, str], say: Say, done: list[Publication]
) -> None:
    files = await asyncio.to_thread(select_files, workspace, spec.patterns)
    targets: dict[str, str] = {}
    for rel in files:
        name = rel if spec.keep_paths else PurePosixPath(rel).name
        if name in targets:
            raise PublishError(
                f"publish: '{targets[name]}' and '{rel}' would both be uploaded as '{name}' "
                "(use keep_paths: true to keep their folders)"
            )
        targets[name] = rel
    client, base = _client(spec, env)
    async with client:
        for name, rel in targets.items():
            url = _join(base, name)
            digests = await _put_file(client, url, files[rel])
            await say(f"publish: {rel} -> {redact(url)} ({_size(digests.size)})")
            done.append(Publication("http", rel, redact(url), digests.size, digests.sha256))


def _maven_targets(
    spec: PublishSpec, workspace: Path, coords: MavenCoordinates
) -> list[tuple[str, Path, str, str | None]]:
    """(workspace path, file, extension, classifier) of every file to publish; raises
    when two would land on the same name."""
    entries = [f if isinstance(f, MavenFile) else MavenFile(file=f) for f in spec.files]
    seen: dict[str, str] = {}
    out: list[tuple[str, Path, str, str | None]] = []
    for entry in entries:
        for rel, path in select_files(workspace, [entry.file]).items():
            ext = entry.extension or split_extension(PurePosixPath(rel).name)
            if not ext:
                raise PublishError(
                    f"publish: '{rel}' has no extension; give it one with "
                    "{file: ..., extension: jar}"
                )
            name = maven_file_name(coords, ext, entry.classifier)
            if name in seen:
                raise PublishError(
                    f"publish: '{seen[name]}' and '{rel}' would both be published as '{name}' "
                    "(give one a classifier)"
                )
            seen[name] = rel
            out.append((rel, path, ext, entry.classifier))
    return out


async def _put_checksums(client: httpx.AsyncClient, url: str, digests: _Digests) -> None:
    for ext, value in (("md5", digests.md5), ("sha1", digests.sha1), ("sha256", digests.sha256)):
        await _put_bytes(client, f"{url}.{ext}", value.encode(), "text/plain")


async def publish_maven(
    spec: PublishSpec, workspace: Path, env: Mapping[str, str], say: Say, done: list[Publication]
) -> None:
    assert spec.group_id and spec.artifact_id and spec.version  # validated by the spec
    coords = MavenCoordinates(
        group_id=spec.group_id, artifact_id=spec.artifact_id, version=spec.version
    )
    targets = await asyncio.to_thread(_maven_targets, spec, workspace, coords)
    gav = f"{coords.group_id}:{coords.artifact_id}:{coords.version}"
    client, base = _client(spec, env)
    version_url = _join(base, maven_version_dir(coords))
    async with client:
        for rel, path, ext, classifier in targets:
            url = f"{version_url}/{quote(maven_file_name(coords, ext, classifier))}"
            digests = await _put_file(client, url, path)
            await _put_checksums(client, url, digests)
            what = f"{gav}{':' + classifier if classifier else ''}:{ext}"
            await say(f"publish: {rel} -> {redact(url)} ({_size(digests.size)}, {what})")
            done.append(Publication("maven", rel, redact(url), digests.size, digests.sha256, what))
        if not any(ext == "pom" and classifier is None for _, _, ext, classifier in targets):
            main = [ext for _, _, ext, classifier in targets if classifier is None]
            packaging = spec.packaging or (main[0] if main else "pom")
            pom = maven_pom(coords, packaging).encode()
            url = f"{version_url}/{quote(maven_file_name(coords, 'pom'))}"
            await _put_bytes(client, url, pom, "application/xml")
            await _put_checksums(client, url, _digests_of(pom))
            await say(f"publish: generated POM -> {redact(url)} (packaging {packaging})")
            done.append(
                Publication(
                    "maven",
                    "",
                    redact(url),
                    len(pom),
                    hashlib.sha256(pom).hexdigest(),
                    f"{gav}:pom",
                )
            )
        await _update_metadata(client, _join(base, maven_artifact_dir(coords)), coords, say)


def _digests_of(data: bytes) -> _Digests:
    return _Digests(
        len(data),
        hashlib.sha256(data).hexdigest(),
        hashlib.sha1(data).hexdigest(),
        hashlib.md5(data).hexdigest(),
    )


async def _update_metadata(
    client: httpx.AsyncClient, artifact_url: str, coords: MavenCoordinates, say: Say
) -> None:
    """Merge our version into ``maven-metadata.xml``. Repositories that manage it
    themselves (Nexus, Artifactory) may refuse reads or writes: a warning, no failure."""
    url = f"{artifact_url}/maven-metadata.xml"
    try:
        current = await client.get(url)
    except httpx.HTTPError as exc:
        await say(f"publish: maven-metadata.xml not updated: {type(exc).__name__}: {exc}")
        return
    if current.status_code == 404:
        existing = None
    elif current.is_success:
        existing = current.text
    else:
        await say(
            f"publish: maven-metadata.xml not updated: reading it answered "
            f"{current.status_code} (repositories like Nexus maintain it themselves)"
        )
        return
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    document = maven_metadata(coords, existing, stamp).encode()
    try:
        await _put_bytes(client, url, document, "application/xml")
        await _put_checksums(client, url, _digests_of(document))
    except PublishError as exc:
        await say(f"publish: maven-metadata.xml not updated: {str(exc).splitlines()[0]}")
        return
    await say(f"publish: updated {redact(url)}")


# ----------------------------------------------------------------- pypi

#: Metadata fields sent with an upload (form name -> METADATA header), as twine sends them.
_PYPI_FIELDS = {
    "metadata_version": "Metadata-Version",
    "name": "Name",
    "version": "Version",
    "summary": "Summary",
    "home_page": "Home-page",
    "author": "Author",
    "author_email": "Author-email",
    "maintainer": "Maintainer",
    "maintainer_email": "Maintainer-email",
    "license": "License",
    "keywords": "Keywords",
    "platform": "Platform",
    "requires_python": "Requires-Python",
    "description_content_type": "Description-Content-Type",
}
_PYPI_LISTS = {
    "classifiers": "Classifier",
    "requires_dist": "Requires-Dist",
    "provides_extra": "Provides-Extra",
    "project_urls": "Project-URL",
}


def package_metadata(path: Path) -> tuple[dict[str, Any], str, str]:
    """(form fields, filetype, pyversion) for a wheel or an sdist, from the METADATA /
    PKG-INFO inside it; raises :class:`PublishError` for anything else."""
    name = path.name
    try:
        if name.endswith(".whl"):
            with zipfile.ZipFile(path) as zf:
                found = [
                    n
                    for n in zf.namelist()
                    if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
                ]
                if not found:
                    raise PublishError(f"publish: {name} has no .dist-info/METADATA: not a wheel")
                raw = zf.read(found[0])
            parts = name[:-4].split("-")
            filetype, pyversion = "bdist_wheel", parts[-3] if len(parts) >= 5 else "py3"
        elif name.endswith((".tar.gz", ".zip")):
            raw = _sdist_pkg_info(path)
            filetype, pyversion = "sdist", "source"
        else:
            raise PublishError(
                f"publish: {name} is neither a wheel (.whl) nor an sdist (.tar.gz, .zip)"
            )
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise PublishError(f"publish: cannot read {name}: {exc}") from None
    message = email.parser.BytesHeaderParser().parsebytes(raw)
    fields: dict[str, Any] = {}
    for form, header in _PYPI_FIELDS.items():
        value = message.get(header)
        if value:
            fields[form] = str(value)
    for form, header in _PYPI_LISTS.items():
        values = message.get_all(header) or []
        if values:
            fields[form] = [str(v) for v in values]
    if "name" not in fields or "version" not in fields:
        raise PublishError(f"publish: the metadata in {name} has no Name or Version")
    body = message.get_payload()
    if isinstance(body, str) and body.strip():
        fields["description"] = body
    elif message.get("Description"):
        fields["description"] = str(message.get("Description"))
    return fields, filetype, pyversion


def _sdist_pkg_info(path: Path) -> bytes:
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            names = sorted((n for n in zf.namelist() if n.endswith("/PKG-INFO")), key=len)
            if not names:
                raise PublishError(f"publish: {path.name} has no PKG-INFO: not an sdist")
            return zf.read(names[0])
    with tarfile.open(path, "r:gz") as tf:
        members = sorted(
            (m for m in tf.getmembers() if m.isfile() and m.name.endswith("/PKG-INFO")),
            key=lambda m: len(m.name),
        )
        if not members:
            raise PublishError(f"publish: {path.name} has no PKG-INFO: not an sdist")
        fh = tf.extractfile(members[0])
        assert fh is not None
        return fh.read()


def _hash_file(path: Path) -> tuple[int, str, str, str]:
    sha256, md5, blake2 = hashlib.sha256(), hashlib.md5(), hashlib.blake2b(digest_size=32)
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            size += len(chunk)
            sha256.update(chunk)
            md5.update(chunk)
            blake2.update(chunk)
    return size, sha256.hexdigest(), md5.hexdigest(), blake2.hexdigest()


async def publish_pypi(
    spec: PublishSpec, workspace: Path, env: Mapping[str, str], say: Say, done: list[Publication]
) -> None:
    files = await asyncio.to_thread(select_files, workspace, spec.patterns)
    prepared = []
    for rel, path in files.items():
        fields, filetype, pyversion = await asyncio.to_thread(package_metadata, path)
        size, sha256, md5, blake2 = await asyncio.to_thread(_hash_file, path)
        form = {
            ":action": "file_upload",
            "protocol_version": "1",
            **fields,
            "filetype": filetype,
            "pyversion": pyversion,
            "md5_digest": md5,
            "sha256_digest": sha256,
            "blake2_256_digest": blake2,
        }
        prepared.append((rel, path, form, size, sha256))
    client, url = _client(spec, env)
    async with client:
        for rel, path, form, size, sha256 in prepared:
            # httpx streams the file part in chunks while sending (the rest is small).
            with path.open("rb") as fh:
                try:
                    response = await client.post(
                        url,
                        data=form,
                        files={"content": (path.name, fh, "application/octet-stream")},
                    )
                except httpx.HTTPError as exc:
                    raise await _upload_broke(client, url, rel, exc) from None
            if not response.is_success:
                raise _refused("POST", url, response)
            what = f"{form['name']}=={form['version']}"
            await say(
                f"publish: {rel} -> {redact(url)} ({_size(size)}, {what}, {form['filetype']})"
            )
            done.append(Publication("pypi", rel, redact(url), size, sha256, what))


async def _upload_broke(
    client: httpx.AsyncClient, url: str, rel: str, exc: httpx.HTTPError
) -> PublishError:
    """The error for an upload whose connection broke. Servers often answer a refused
    upload (bad credentials, too large) and close before reading the whole body; the
    client then sees only a broken connection (a reset, as unread data was left). An
    empty POST leaves nothing unread, so asking again that way gets the server's real
    answer (401, 403...); a 400 (nothing uploaded, as sent) says nothing new and the
    first error stands."""
    failed = PublishError(
        f"publish: upload of {rel} to {redact(url)} failed: {type(exc).__name__}: {exc}"
    )
    if not isinstance(exc, httpx.TransportError) or isinstance(exc, httpx.ConnectError):
        return failed
    try:
        probe = await client.post(url, content=b"")
    except httpx.HTTPError:
        return failed
    if probe.status_code in (401, 403, 407, 413) or probe.status_code >= 500:
        return _refused("POST", url, probe)
    return failed


_UPLOADERS = {"http": publish_http, "maven": publish_maven, "pypi": publish_pypi}


async def publish(
    spec: PublishSpec,
    workspace: Path,
    env: Mapping[str, str],
    say: Say,
    done: list[Publication] | None = None,
) -> list[Publication]:
    """Upload what ``spec`` names from ``workspace``; ``env`` resolves ``${VAR}`` in the
    URL and credentials; ``say`` writes one log line. Returns what was published.

    Raises :class:`PublishError`; what reached the repository before the failure is
    then in ``done`` (pass a list to see it)."""
    done = [] if done is None else done
    await _UPLOADERS[spec.type](spec, workspace, env, say, done)
    return done
