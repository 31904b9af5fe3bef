"""Real repositories for publish tests: nginx with WebDAV PUT (a generic / Maven
repository on disk) and pypiserver (a PyPI-style index), each on a free 127.0.0.1
port, started as processes and stopped by PID."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.harness import free_port, wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
USER, PASSWORD = "ci-user", "s3cret-pw"

NGINX_CONF = """\
daemon off;
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        # An open generic repository: PUT creates files and folders.
        location /repo/ {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
        # The same, behind basic auth.
        location /secure/ {{
            auth_basic "conveyor test repository";
            auth_basic_user_file {prefix}/htpasswd;
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
        # A read-only location: PUT is refused (405) by nginx itself.
        location /readonly/ {{ }}
        location = /readyz {{ return 200 "ok"; }}
    }}
}}
"""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(20)


@dataclass
class DavServer:
    """nginx serving ``root``; ``url`` is its base (no trailing slash)."""

    root: Path
    prefix: Path
    url: str
    proc: subprocess.Popen[bytes]

    @classmethod
    def start(cls, base: Path) -> DavServer:
        prefix, root = base / "nginx", base / "www"
        for path in (prefix, root / "repo", root / "secure", root / "readonly"):
            path.mkdir(parents=True, exist_ok=True)
        # nginx's {PLAIN} scheme: a plain-text password file is fine for a test server.
        (prefix / "htpasswd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        port = free_port()
        # As root, workers would drop to 'nobody' and could not write into tmp folders.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=prefix, root=root, port=port, user=user))
        with (prefix / "output.log").open("ab") as out:
            proc = subprocess.Popen(
                [NGINX, "-c", str(conf), "-p", f"{prefix}/", "-e", str(prefix / "error.log")],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(root, prefix, f"http://127.0.0.1:{port}", proc)
        try:
            wait_until(server._ready, 30, what="nginx WebDAV server")
        except BaseException:
            server.stop()
            raise
        return server

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited: {self.errors()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def errors(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text() if path.exists() else ""

    def access_log(self) -> str:
        path = self.prefix / "access.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        _stop(self.proc)


@dataclass
class PypiServer:
    """pypiserver with uploads allowed for USER/PASSWORD only; ``url`` ends with '/'."""

    packages: Path
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, base: Path) -> PypiServer:
        packages = base / "packages"
        packages.mkdir(parents=True, exist_ok=True)
        # The {SHA} htpasswd scheme (read by pypiserver through passlib), written here so
        # that the test process never imports passlib (its 'crypt' import warns).
        sha = base64.b64encode(hashlib.sha1(PASSWORD.encode()).digest()).decode()
        (base / "htpasswd").write_text(f"{USER}:{{SHA}}{sha}\n")
        port = free_port()
        log = base / "pypiserver.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pypiserver",
                    "run",
                    "--host",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-P",
                    str(base / "htpasswd"),
                    "-a",
                    "update",
                    str(packages),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(packages, f"http://127.0.0.1:{port}/", proc, log)
        try:
            wait_until(server._ready, 60, what="pypiserver")
        except BaseException:
            server.stop()
            raise
        return server

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"pypiserver exited: {self.log.read_text()}")
        try:
            return httpx.get(f"{self.url}simple/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        _stop(self.proc)


def write_wheel(folder: Path, name: str = "conveyor_demo", version: str = "0.1.0") -> Path:
    """A tiny but valid pure-Python wheel, written by hand (zip + dist-info)."""
    folder.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b'VALUE = "published by conveyor"\n',
        f"{dist_info}/METADATA": (
            "Metadata-Version: 2.1\n"
            f"Name: {name.replace('_', '-')}\n"
            f"Version: {version}\n"
            "Summary: A package published by a Conveyor test\n"
            "Requires-Python: >=3.8\n"
            "Classifier: Programming Language :: Python :: 3\n"
            "\nLong description.\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: conveyor-test\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return wheel


def write_sdist(folder: Path, name: str = "conveyor-demo-src", version: str = "0.2.0") -> Path:
    """A tiny source distribution (.tar.gz with NAME-VERSION/PKG-INFO), by hand."""
    import io
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    base = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{base}/PKG-INFO": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            "Summary: An sdist published by a Conveyor test\n\nLong text.\n"
        ).encode(),
        f"{base}/setup.py": b"from setuptools import setup\nsetup()\n",
    }
    sdist = folder / f"{base}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return sdist
