"""Fake Docker Engine and Kubernetes API servers (no Docker engine and no cluster run
where the tests run). They speak the subset of each HTTP API the providers use and
"run" a container or pod as a real `conveyor agent` process on this host, so the
agents really register, run builds and stop."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse


@dataclass
class FakeWorkload:
    """A container or pod: its spec and the agent process standing in for it."""

    id: str
    name: str
    labels: dict[str, str]
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    deleted: bool = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class FakeServer:
    root: Path
    workloads: dict[str, FakeWorkload] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    httpd: ThreadingHTTPServer | None = None

    tls: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        assert self.httpd is not None
        host, port = self.httpd.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def start(self, tls: ssl.SSLContext | None = None) -> FakeServer:
        """Serve on 127.0.0.1 (a free port); with ``tls``, over TLS with that context."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length)) if length else None

            def _send(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                url = urlparse(self.path)
                fake.requests.append((method, url.path, dict(self.headers)))
                status, body = fake.handle(method, url.path, parse_qs(url.query), self._body())
                self._send(status, body)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.tls = tls
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        raise NotImplementedError

    def run(self, w: FakeWorkload) -> None:
        """Start the workload's `conveyor agent` as a process of this host."""
        argv = list(w.argv)
        if argv and argv[0] == "conveyor":
            argv = [sys.executable, "-m", "conveyor", *argv[1:]]
        # Each "container" has its own file system: its own agent work folder.
        if "--workdir" in argv:
            argv[argv.index("--workdir") + 1] = str(self.root / w.name)
        with (self.root / f"{w.name}.log").open("ab") as log:
            w.proc = subprocess.Popen(
                argv,
                env={**os.environ, **w.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, w: FakeWorkload) -> None:
        if w.running:
            assert w.proc is not None
            w.proc.send_signal(signal.SIGTERM)
            try:
                w.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()

    def close(self) -> None:
        for w in list(self.workloads.values()):
            self.stop(w)
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


class FakeDocker(FakeServer):
    """/v1.43/containers/create, …/start, …/stop, DELETE …, GET /containers/json."""

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        m = re.fullmatch(r"/v[\d.]+/containers(?:/([^/]+))?(?:/(\w+))?", path)
        if not m:
            return 404, {"message": f"no route {method} {path}"}
        cid, action = m.groups()
        with self.lock:
            if method == "POST" and cid == "create":
                container = FakeWorkload(
                    id=uuid.uuid4().hex * 2,
                    name=query["name"][0],
                    labels=body.get("Labels") or {},
                    argv=list(body["Cmd"]),
                    env=dict(e.split("=", 1) for e in body.get("Env") or []),
                )
                container.image = body["Image"]  # type: ignore[attr-defined]
                self.workloads[container.id] = container
                return 201, {"Id": container.id, "Warnings": []}
            if method == "GET" and cid == "json":
                filters = json.loads(query.get("filters", ["{}"])[0])
                wanted = [f.split("=", 1) for f in filters.get("label", [])]
                return 200, [
                    {"Id": c.id, "Names": [f"/{c.name}"], "Labels": c.labels, "State": "running"}
                    for c in self.workloads.values()
                    if c.running and all(c.labels.get(k) == v for k, v in wanted)
                ]
            container = self.workloads.get(cid or "")
            if container is None or container.deleted:
                return 404, {"message": f"No such container: {cid}"}
            if method == "POST" and action == "start":
                self.run(container)
                return 204, None
            if method == "POST" and action == "stop":
                self.stop(container)
                return 204, None
            if method == "DELETE" and action is None:
                self.stop(container)
                container.deleted = True
                return 204, None
        return 404, {"message": f"no route {method} {path}"}


class FakeKubernetes(FakeServer):
    """POST/GET /api/v1/namespaces/NS/pods, DELETE …/pods/NAME; checks the bearer token."""

    #: Random per test run: the tests look for it in the database's bytes.
    token = "fake-sa-token-" + secrets.token_hex(8)

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any]:
        if self.requests[-1][2].get("Authorization") != f"Bearer {self.token}":
            return 401, {"kind": "Status", "message": "Unauthorized", "code": 401}
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?", path)
        if not m:
            return 404, {"kind": "Status", "code": 404}
        namespace, name = m.groups()
        with self.lock:
            if method == "POST" and name is None:
                meta = body["metadata"]
                if meta["name"] in self.workloads and not self.workloads[meta["name"]].deleted:
                    return 409, {"kind": "Status", "reason": "AlreadyExists", "code": 409}
                agent = body["spec"]["containers"][0]
                pod = FakeWorkload(
                    id=meta["name"],
                    name=meta["name"],
                    labels=meta.get("labels") or {},
                    argv=[*agent.get("command", []), *agent.get("args", [])],
                    env={e["name"]: e["value"] for e in agent.get("env", [])},
                )
                pod.manifest = body  # type: ignore[attr-defined]
                pod.namespace = namespace  # type: ignore[attr-defined]
                self.workloads[pod.name] = pod
                self.run(pod)
                return 201, {**body, "status": {"phase": "Pending"}}
            if method == "GET" and name is None:
                selector = query.get("labelSelector", [""])[0]
                wanted = [s.split("=", 1) for s in selector.split(",") if s]
                items = []
                for pod in self.workloads.values():
                    if pod.deleted or not all(pod.labels.get(k) == v for k, v in wanted):
                        continue
                    if pod.running:
                        phase = "Running"
                    else:
                        phase = "Succeeded" if pod.proc and pod.proc.returncode == 0 else "Failed"
                    items.append({"metadata": {"name": pod.name, "labels": pod.labels},
                                  "status": {"phase": phase}})  # fmt: skip
                return 200, {"kind": "PodList", "items": items}
            pod = self.workloads.get(name or "")
            if method == "DELETE":
                if pod is None or pod.deleted:
                    return 404, {"kind": "Status", "code": 404}
                self.stop(pod)
                pod.deleted = True
                return 200, {"kind": "Status", "status": "Success"}
        return 404, {"kind": "Status", "code": 404}
