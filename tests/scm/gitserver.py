"""Real git repositories for tests, served over file://, git:// (`git daemon`) and
HTTP (`git http-backend` behind a tiny CGI server), all on 127.0.0.1."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.harness import free_port, wait_until

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.org",
    "GIT_COMMITTER_NAME": "Ada Lovelace",
    "GIT_COMMITTER_EMAIL": "ada@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd or Path.cwd())}
    out = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {out.stderr}")
    return out.stdout.strip()


@dataclass
class Repo:
    """A bare repository (what servers serve) and a working clone to commit in."""

    root: Path  # folder of bare repositories (the servers' base path)
    name: str

    @property
    def bare(self) -> Path:
        return self.root / f"{self.name}.git"

    @property
    def work(self) -> Path:
        return self.root.parent / "work" / self.name

    @property
    def file_url(self) -> str:
        return self.bare.as_uri()

    def create(self, files: dict[str, str], message: str = "initial", branch: str = "main") -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        git("init", "--quiet", "--bare", "--initial-branch", branch, str(self.bare))
        # Smart HTTP serving needs this to be set for a dumb fallback; harmless otherwise.
        git("config", "http.receivepack", "false", cwd=self.bare)
        self.work.parent.mkdir(parents=True, exist_ok=True)
        git("init", "--quiet", "--initial-branch", branch, str(self.work))
        git("remote", "add", "origin", str(self.bare), cwd=self.work)
        return self.commit(files, message, branch)

    def commit(self, files: dict[str, str], message: str, branch: str = "main") -> str:
        current = git("symbolic-ref", "--short", "HEAD", cwd=self.work)
        if current != branch:
            exists = git("branch", "--list", branch, cwd=self.work)
            git("checkout", "--quiet", *([] if exists else ["-b"]), branch, cwd=self.work)
        for path, text in files.items():
            target = self.work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            git("add", path, cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        git("push", "--quiet", "origin", f"{branch}:{branch}", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def delete_branch(self, branch: str) -> None:
        git("push", "--quiet", "origin", f":{branch}", cwd=self.work)


class GitDaemon:
    """`git daemon --export-all` on a free port: git://127.0.0.1:PORT/NAME.git."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GitDaemon:
        self.base.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--export-all",
                "--reuseaddr",
                f"--base-path={self.base}",
                f"--port={self.port}",
                "--listen=127.0.0.1",
                str(self.base),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, 30, what="git daemon")
        return self

    def url(self, repo: Repo) -> str:
        return f"git://127.0.0.1:{self.port}/{repo.name}.git"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class GitHttp:
    """`git http-backend` (smart HTTP, read-only) behind a tiny threaded CGI server."""

    def __init__(self, base: Path, basic_auth: str | None = None) -> None:
        self.base = base
        self.server: ThreadingHTTPServer | None = None
        self.requests = 0
        self.basic_auth = basic_auth  # "user:password" required when set

    def start(self) -> GitHttp:
        base = self.base
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _cgi(self) -> None:
                outer.requests += 1
                if outer.basic_auth is not None:
                    expected = "Basic " + base64.b64encode(outer.basic_auth.encode()).decode()
                    if self.headers.get("Authorization") != expected:
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="git"')
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                path, _, query = self.path.partition("?")
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": str(base),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_ADDR": "127.0.0.1",
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                }
                out = subprocess.run(
                    ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
                ).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                if not _:
                    head, _, payload = out.partition(b"\n\n")
                status = 200
                headers: list[tuple[str, str]] = []
                for line in head.decode(errors="replace").splitlines():
                    key, _, value = line.partition(":")
                    if key.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif key:
                        headers.append((key.strip(), value.strip()))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _cgi
            do_POST = _cgi

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def url(self, repo: Repo) -> str:
        return f"http://127.0.0.1:{self.port}/{repo.name}.git"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
