"""`conveyor lb-config`: rendered configurations pass the real validators (`nginx -t`,
`haproxy -c`), bad input exits 2 with a message, and the real nginx and HAProxy, run
with a rendered configuration in front of two small HTTP backends, balance, survive a
dead backend, retry only what is safe to retry, and do not buffer Server-Sent Events."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from conveyor.cli.lb import lb_config
from conveyor.lb import (
    Endpoint,
    LbConfigError,
    LbOptions,
    Sticky,
    parse_endpoint,
    prepare_prefix_dir,
    render_haproxy,
    render_nginx,
)
from tests.harness import free_port, wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
LOCAL = "127.0.0.1"

# A tiny HTTP/1.1 backend standing in for a controller: GET /readyz answers 200; the SSE
# path sends one event, then a second once the test creates RELEASE_DIR/<build id>; in
# mode "drop-posts" it reads a POST and closes the connection without an answer;
# everything else echoes the backend id, the request and its headers as JSON. GET
# /_stats (called directly, not through the load balancer) returns what it has seen.
BACKEND = r"""
import asyncio, json, os, sys
from collections import Counter

NAME, PORT, MODE, RELEASE = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
seen = Counter()

async def handle(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0") or 0)
        body = await reader.readexactly(length) if length else b""
        path = target.split("?", 1)[0]
        if path == "/_stats":
            return await send(writer, 200, json.dumps(dict(seen)).encode(), "application/json")
        if path != "/readyz":
            seen[f"{method} {path}"] += 1
        if path == "/readyz":
            return await send(writer, 200, b'{"status": "ready"}', "application/json")
        if MODE == "drop-posts" and method == "POST":
            seen["dropped"] += 1
            writer.close()
            return
        if path.endswith("/log/stream"):
            build = path.split("/")[4]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Cache-Control: no-cache\r\nConnection: close\r\n\r\n")
            writer.write(f"event: log\ndata: first from {NAME}\n\n".encode())
            await writer.drain()
            marker = os.path.join(RELEASE, build)
            for _ in range(600):
                if os.path.exists(marker):
                    break
                await asyncio.sleep(0.05)
            writer.write(b"event: end\ndata: second\n\n")
            await writer.drain()
            writer.close()
            return
        answer = {"backend": NAME, "method": method, "target": target,
                  "headers": headers, "body_size": len(body)}
        await send(writer, 200, json.dumps(answer).encode(), "application/json")
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()

async def send(writer, status, body, ctype):
    writer.write(f"HTTP/1.1 {status} OK\r\nContent-Type: {ctype}\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", PORT)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


# --------------------------------------------------------------------------- helpers


def _kill_group(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10
) -> None:
    """Stop a process we started (own session) and anything left in its group."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=10)


@dataclass
class Backend:
    name: str
    release_dir: Path
    mode: str = "ok"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{LOCAL}:{self.port}"

    def start(self) -> Backend:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                BACKEND,
                self.name,
                str(self.port),
                self.mode,
                str(self.release_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(self._up, 20, what=f"backend {self.name}")
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"backend {self.name} exited with {self.proc.returncode}")
        try:
            return httpx.get(f"http://{self.endpoint}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(f"http://{self.endpoint}/_stats", timeout=5).json())

    def kill(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc, signal.SIGKILL)


@dataclass
class Balancer:
    kind: str
    config: Path
    prefix: Path
    url: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.prefix / "logs" / "output.log"

    def start(self) -> Balancer:
        if self.kind == "nginx":
            args = [
                NGINX,
                "-c",
                str(self.config),
                "-p",
                f"{self.prefix}/",
                "-e",
                str(self.prefix / "logs" / "error.log"),
            ]
        else:
            args = [HAPROXY, "-db", "-f", str(self.config)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(self._ready, 30, interval=0.1, what=f"{self.kind} at {self.url}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.kind} exited: {self.output()}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2, verify=False).status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        text = self.log_path.read_text() if self.log_path.exists() else ""
        error_log = self.prefix / "logs" / "error.log"
        if error_log.exists():
            text += error_log.read_text()
        return text

    def stop(self) -> None:
        if self.proc is not None:
            _kill_group(self.proc)


@pytest.fixture
def processes() -> Iterator[list[Backend | Balancer]]:
    """Everything a test starts goes here and is stopped, by PID, whatever happens."""
    started: list[Backend | Balancer] = []
    try:
        yield started
    finally:
        for item in reversed(started):
            if isinstance(item, Balancer):
                item.stop()
            else:
                item.kill()


def _options(controllers: list[str], **kwargs: Any) -> LbOptions:
    backups = kwargs.pop("backups", [])
    return LbOptions(
        controllers=tuple(parse_endpoint(c) for c in controllers),
        backups=tuple(parse_endpoint(b) for b in backups),
        **kwargs,
    )


def _self_signed(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost: cert, key, and both in one PEM."""
    cert, key, combined = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "combined.pem"
    try:
        _self_signed_with_cryptography(cert, key)
    except ImportError:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-sha256",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    combined.write_bytes(cert.read_bytes() + key.read_bytes())
    return cert, key, combined


def _self_signed_with_cryptography(cert_path: Path, key_path: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import (
        hashes,
        serialization,
    )
    from cryptography.hazmat.primitives.asymmetric import (
        rsa,
    )
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _check_nginx(text: str, prefix: Path) -> None:
    prepare_prefix_dir(prefix)
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    run = subprocess.run(
        [NGINX, "-t", "-c", str(conf), "-p", f"{prefix}/", "-e", str(prefix / "logs/error.log")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr + "\n" + text
    assert "test is successful" in run.stderr


def _check_haproxy(text: str, prefix: Path) -> None:
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "haproxy.cfg"
    conf.write_text(text)
    run = subprocess.run(
        [HAPROXY, "-c", "-f", str(conf)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr + "\n" + text
    assert "Configuration file is valid" in run.stdout + run.stderr
    assert "[WARNING]" not in run.stdout + run.stderr, run.stdout + run.stderr


# --------------------------------------------------------------------------- the validators

COMBINATIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "backups": {"backups": ["127.0.0.1:9101", "localhost:9102"]},
    # Host names are resolved when the configuration loads: use names that resolve here.
    "host-names": {"controllers": ["localhost:9000", "localhost:9001", "127.0.0.1:9002"]},
    "ipv6": {"controllers": ["[::1]:9000", "127.0.0.1:9001"], "listen": "[::1]:8080"},
    "sticky-ip": {"sticky": Sticky.IP},
    "sticky-cookie": {"sticky": Sticky.COOKIE},
    "tls": {"tls": True},
    "tls-custom-ports": {
        "tls": True,
        "listen": "127.0.0.1:8443",
        "http_redirect": "127.0.0.1:8080",
    },
    "tls-sticky-cookie-foreground": {"tls": True, "sticky": Sticky.COOKIE, "foreground": True},
}


@pytest.mark.parametrize("case", list(COMBINATIONS))
@pytest.mark.parametrize("kind", ["nginx", "haproxy"])
def test_rendered_config_passes_the_real_validator(kind: str, case: str, tmp_path: Path) -> None:
    spec = dict(COMBINATIONS[case])
    controllers = spec.pop("controllers", ["127.0.0.1:9000", "127.0.0.1:9001"])
    if spec.pop("tls", False):
        cert, key, combined = _self_signed(tmp_path)
        if kind == "nginx":
            spec |= {"tls_cert": cert, "tls_key": key}
        else:
            spec["tls_cert"] = combined
    for name in ("listen", "http_redirect"):
        if name in spec:
            spec[name] = parse_endpoint(spec[name])
    options = _options(controllers, prefix_dir=tmp_path / "lb", **spec)
    if kind == "nginx":
        _check_nginx(render_nginx(options), tmp_path / "lb")
    else:
        _check_haproxy(render_haproxy(options), tmp_path / "lb")


def test_nginx_part_can_be_included_into_an_existing_nginx(tmp_path: Path) -> None:
    """The BEGIN…END part goes into the http context of an nginx that already has
    Debian-like settings, another site and its own $connection_upgrade map."""
    prefix = prepare_prefix_dir(tmp_path / "host")
    text = render_nginx(
        _options(
            ["127.0.0.1:9000", "127.0.0.1:9001"],
            listen=Endpoint(LOCAL, free_port()),
            prefix_dir=prefix,
        )
    )
    lines = text.splitlines()
    begin = next(i for i, line in enumerate(lines) if "BEGIN conveyor" in line)
    end = next(i for i, line in enumerate(lines) if "END conveyor" in line)
    (prefix / "conveyor.conf").write_text("\n".join(lines[begin : end + 1]) + "\n")
    host = f"""
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{ worker_connections 512; }}
http {{
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    default_type application/octet-stream;
    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
    access_log {prefix}/logs/host-access.log;
    gzip on;
    client_body_temp_path {prefix}/temp/client_body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{ listen {LOCAL}:{free_port()}; location / {{ return 200; }} }}
    include {prefix}/conveyor.conf;
}}
"""
    (prefix / "host.conf").write_text(host)
    run = subprocess.run(
        [NGINX, "-t", "-c", str(prefix / "host.conf"), "-p", f"{prefix}/",
         "-e", str(prefix / "logs/error.log")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr + host


def test_standard_paths_without_prefix_dir(tmp_path: Path) -> None:
    options = _options(["10.0.0.5:8080", "10.0.0.6:8080"])
    nginx = render_nginx(options)
    assert "pid /run/nginx.pid;" in nginx
    assert "error_log /var/log/nginx/error.log warn;" in nginx
    assert "daemon off;" not in nginx
    assert "client_body_temp_path" not in nginx
    haproxy = render_haproxy(options)
    assert "log /dev/log local0 info" in haproxy
    assert "pidfile" not in haproxy
    # The system paths are not touched here; HAProxy's check does not write them anyway.
    _check_haproxy(haproxy, tmp_path)
    foreground = render_haproxy(_options(["10.0.0.5:8080"], foreground=True))
    assert "log stdout format raw local0 info" in foreground


# --------------------------------------------------------------------------- what is rendered


def test_nginx_directives() -> None:
    text = render_nginx(
        _options(
            ["10.0.0.5:8080", "10.0.0.6:8080"],
            backups=["10.0.0.7:8080"],
            prefix_dir=Path("/srv/lb"),
            foreground=True,
        )
    )
    assert "daemon off;" in text
    assert "pid /srv/lb/nginx.pid;" in text
    assert "client_body_temp_path /srv/lb/temp/client_body;" in text
    assert "server 10.0.0.5:8080 max_fails=2 fail_timeout=5s;" in text
    assert "server 10.0.0.7:8080 max_fails=2 fail_timeout=5s backup;" in text
    assert "keepalive 64;" in text
    assert "listen 0.0.0.0:80;" in text
    assert "passive" in text and "no active health checks" in text
    # Only idempotent requests are retried in general...
    general = "proxy_next_upstream error timeout http_502 http_503 http_504;"
    assert general in text
    assert "proxy_next_upstream_tries 3;" in text
    # ...the agent's safe POSTs may be re-sent.
    agent = text.split("location ~ ^/agent/v1/")[1].split("}")[0]
    assert "non_idempotent" in agent
    assert text.count("non_idempotent;") == 1
    for directive in (
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_read_timeout 3600s;",
        "client_max_body_size 0;",
        "map $http_upgrade $conveyor_connection_upgrade",
        "proxy_set_header Connection $conveyor_connection_upgrade;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host $host;",
        "proxy_set_header X-Request-ID $conveyor_request_id;",
        "location ~ ^/api/v1/builds/[^/]+/log/stream$",
    ):
        assert directive in text, directive
    assert "ssl" not in text.replace("proxy_ssl", "")


def test_nginx_tls_and_sticky() -> None:
    text = render_nginx(
        _options(
            ["10.0.0.5:8080"],
            tls_cert=Path("/etc/ssl/c.pem"),
            tls_key=Path("/etc/ssl/k.pem"),
            sticky=Sticky.COOKIE,
        )
    )
    assert "listen 0.0.0.0:443 ssl http2;" in text
    assert "listen 0.0.0.0:80;" in text
    assert "return 308 https://$host$request_uri;" in text
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert "ssl_certificate /etc/ssl/c.pem;" in text
    assert "ssl_certificate_key /etc/ssl/k.pem;" in text
    assert "hash $conveyor_affinity consistent;" in text
    assert "no `sticky cookie`" in text
    assert "Secure" in text
    ip = render_nginx(_options(["10.0.0.5:8080"], sticky=Sticky.IP))
    assert "ip_hash;" in ip
    custom = render_nginx(
        _options(
            ["10.0.0.5:8080"],
            tls_cert=Path("/c.pem"),
            tls_key=Path("/k.pem"),
            listen=Endpoint("127.0.0.1", 8443),
        )
    )
    assert "listen 127.0.0.1:80;" in custom
    assert "return 308 https://$host:8443$request_uri;" in custom


def test_haproxy_directives() -> None:
    text = render_haproxy(
        _options(
            ["10.0.0.5:8080", "10.0.0.6:8080"],
            backups=["10.0.0.7:8080"],
            prefix_dir=Path("/srv/lb"),
            foreground=True,
        )
    )
    for directive in (
        "mode http",
        "timeout connect 5s",
        "timeout client 3600s",
        "timeout server 3600s",
        "timeout tunnel 3600s",
        "option httpchk GET /readyz",
        "http-check expect status 200",
        "default-server inter 2s fall 2 rise 2",
        "retry-on conn-failure empty-response response-timeout 503",
        "retries 3",
        "option redispatch",
        "server controller1 10.0.0.5:8080 check",
        "server controller2 10.0.0.6:8080 check",
        "server backup1 10.0.0.7:8080 check backup",
        "bind 0.0.0.0:80",
        "log stdout format raw local0 info",
        "pidfile /srv/lb/haproxy.pid",
        "http-request disable-l7-retry if non_idempotent !agent_retry_safe",
        "option forwardfor",
    ):
        assert directive in text, directive
    tls = render_haproxy(
        _options(["10.0.0.5:8080"], tls_cert=Path("/etc/ssl/both.pem"), sticky=Sticky.COOKIE)
    )
    assert "bind 0.0.0.0:443 ssl crt /etc/ssl/both.pem" in tls
    assert "http-request redirect scheme https code 308 unless { ssl_fc }" in tls
    assert "ssl-min-ver TLSv1.2" in tls
    assert "cookie CONVEYOR_AFFINITY insert indirect nocache" in tls
    assert "server controller1 10.0.0.5:8080 check cookie c1" in tls
    assert "balance source" in render_haproxy(_options(["10.0.0.5:8080"], sticky=Sticky.IP))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "expected HOST:PORT"),
        ("host:99999", "port 99999 is not from 1 to 65535"),
        ("host:0", "port 0 is not from 1 to 65535"),
        ("host:http", "the port must be a number"),
        (":8080", "expected HOST:PORT"),
        ("::1:8080", "in brackets"),
        ("[::1]8080", "expected HOST:PORT"),
        ("[nope]:8080", "is not an IPv6 address"),
        ("300.1.1.1:80", "is not an IPv4 address"),
        ("bad_host!:80", "is not a valid host name"),
    ],
)
def test_bad_endpoints(text: str, message: str) -> None:
    with pytest.raises(LbConfigError, match=message) as info:
        parse_endpoint(text, "--controller")
    assert isinstance(info.value, ValueError)


def test_good_endpoints() -> None:
    assert parse_endpoint("10.0.0.5:8080") == Endpoint("10.0.0.5", 8080)
    assert parse_endpoint("ctl-1.example.com:1") == Endpoint("ctl-1.example.com", 1)
    assert str(parse_endpoint("[::1]:65535")) == "[::1]:65535"


def test_inconsistent_options() -> None:
    ctl = (Endpoint("10.0.0.5", 8080),)
    with pytest.raises(LbConfigError, match="at least one --controller"):
        LbOptions(controllers=())
    with pytest.raises(LbConfigError, match="listed twice"):
        LbOptions(controllers=ctl, backups=ctl)
    with pytest.raises(LbConfigError, match="--tls-key needs --tls-cert"):
        LbOptions(controllers=ctl, tls_key=Path("/k.pem"))
    with pytest.raises(LbConfigError, match="only makes sense with TLS"):
        LbOptions(controllers=ctl, http_redirect=Endpoint("0.0.0.0", 8080))
    with pytest.raises(LbConfigError, match=r"both 127\.0\.0\.1:8443"):
        LbOptions(
            controllers=ctl,
            tls_cert=Path("/c.pem"),
            listen=Endpoint("127.0.0.1", 8443),
            http_redirect=Endpoint("127.0.0.1", 8443),
        )
    with pytest.raises(LbConfigError, match="cannot hold"):
        LbOptions(controllers=ctl, prefix_dir=Path("/tmp/a b"))
    with pytest.raises(LbConfigError, match="nginx needs both"):
        render_nginx(LbOptions(controllers=ctl, tls_cert=Path("/c.pem")))
    with pytest.raises(LbConfigError, match="one PEM file"):
        render_haproxy(LbOptions(controllers=ctl, tls_cert=Path("/c"), tls_key=Path("/k")))
    with pytest.raises(LbConfigError, match="--sticky with --backup"):
        render_nginx(
            LbOptions(controllers=ctl, backups=(Endpoint("10.0.0.6", 1),), sticky=Sticky.IP)
        )


# --------------------------------------------------------------------------- the command


@pytest.fixture
def cli() -> Callable[..., Any]:
    """The command as main.py registers it (`lb-config`)."""
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command("lb-config")(lb_config)

    @app.command("version")
    def _version() -> None:  # a second command, so `lb-config` is a subcommand
        pass

    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["lb-config", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nginx", "--controller", "nope"], "expected HOST:PORT"),
        (["haproxy", "--controller", "nope"], "expected HOST:PORT"),
        (["nginx", "--controller", "10.0.0.5:99999"], "port 99999 is not from 1 to 65535"),
        (["haproxy", "--controller", "10.0.0.5:8080", "--backup", "x:99999"], "port 99999"),
        (["nginx", "--controller", "10.0.0.5:8080", "--tls-cert", "c.pem"], "--tls-key"),
        (["nginx", "--controller", "10.0.0.5:8080", "--tls-key", "k.pem"], "needs --tls-cert"),
        (["haproxy", "-c", "10.0.0.5:8080", "--tls-cert", "c.pem", "--tls-key", "k.pem"], "PEM"),
        (["nginx"], "at least one --controller"),
        (["nginx", "-c", "10.0.0.5:8080", "--listen", "0.0.0.0"], "expected HOST:PORT"),
        (["nginx", "-c", "10.0.0.5:8080", "-c", "10.0.0.5:8080"], "listed twice"),
        (
            ["nginx", "-c", "10.0.0.5:8080", "--sticky", "cookie", "--backup", "10.0.0.6:1"],
            "--sticky with --backup",
        ),
    ],
)
def test_bad_input_exits_2_with_a_message(
    cli: Callable[..., Any], args: list[str], message: str
) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_unknown_kind_and_sticky_are_usage_errors(cli: Callable[..., Any]) -> None:
    for args in (["apache", "-c", "10.0.0.5:8080"], ["nginx", "-c", "h:1", "--sticky", "x"]):
        result = cli(*args)
        assert result.exit_code == 2
        assert "Invalid value" in result.stderr


def test_prints_to_stdout_and_writes_files(cli: Callable[..., Any], tmp_path: Path) -> None:
    result = cli("haproxy", "-c", "10.0.0.5:8080", "-c", "10.0.0.6:8080")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# HAProxy configuration for Conveyor")
    assert "server controller2 10.0.0.6:8080 check" in result.stdout

    prefix, out = tmp_path / "own-nginx", tmp_path / "conf" / "nginx.conf"
    result = cli(
        "nginx",
        "-c",
        "127.0.0.1:9000",
        "--listen",
        "127.0.0.1:8080",
        "--prefix-dir",
        str(prefix),
        "--foreground",
        "--output",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert f"wroteconfigurationto{out}".replace("wrote", "wrotenginx") in "".join(
        result.stderr.split()
    )
    assert (prefix / "logs").is_dir() and (prefix / "temp").is_dir()
    assert "daemon off;" in out.read_text()
    _check_nginx(out.read_text(), prefix)


# --------------------------------------------------------------------------- live


def _lb(
    kind: str,
    tmp_path: Path,
    processes: list[Backend | Balancer],
    controllers: list[Backend],
    backups: list[Backend] | None = None,
    **kwargs: Any,
) -> Balancer:
    """Render a configuration for these backends, start the real load balancer on it."""
    prefix = tmp_path / f"{kind}-prefix"
    prepare_prefix_dir(prefix)
    listen = Endpoint(LOCAL, free_port())
    scheme = "http"
    if kwargs.get("tls_cert") is not None:
        scheme = "https"
    options = LbOptions(
        controllers=tuple(parse_endpoint(b.endpoint) for b in controllers),
        backups=tuple(parse_endpoint(b.endpoint) for b in backups or []),
        listen=listen,
        prefix_dir=prefix,
        foreground=True,
        **kwargs,
    )
    if kind == "nginx":
        config = prefix / "nginx.conf"
        config.write_text(render_nginx(options))
    else:
        config = prefix / "haproxy.cfg"
        config.write_text(render_haproxy(options))
    balancer = Balancer(kind, config, prefix, f"{scheme}://{LOCAL}:{listen.port}")
    processes.append(balancer)
    return balancer.start()


def _backends(tmp_path: Path, processes: list[Backend | Balancer], *modes: str) -> list[Backend]:
    release = tmp_path / "release"
    release.mkdir(exist_ok=True)
    found = []
    for i, mode in enumerate(modes, 1):
        backend = Backend(f"b{i}", release, mode)
        processes.append(backend)
        found.append(backend.start())
    return found


def _get(client: httpx.Client, path: str) -> dict[str, Any]:
    response = client.get(path)
    assert response.status_code == 200, (response.status_code, response.text)
    return dict(response.json())


KINDS = ["nginx", "haproxy"]


@pytest.mark.parametrize("kind", KINDS)
def test_live_balances_and_survives_a_dead_backend(
    kind: str, tmp_path: Path, processes: list[Backend | Balancer]
) -> None:
    b1, b2 = _backends(tmp_path, processes, "ok", "ok")
    lb = _lb(kind, tmp_path, processes, [b1, b2])
    with httpx.Client(base_url=lb.url, timeout=10) as client:
        answers = [_get(client, f"/api/v1/jobs?i={i}") for i in range(20)]
        assert {a["backend"] for a in answers} == {"b1", "b2"}
        headers = answers[0]["headers"]
        assert headers["x-forwarded-proto"] == "http"
        assert "127.0.0.1" in headers["x-forwarded-for"]
        assert headers["x-request-id"]
        # A client's request id goes through, and comes back.
        mine = client.get("/api/v1/agents", headers={"X-Request-ID": "req-42"})
        assert mine.json()["headers"]["x-request-id"] == "req-42"
        assert mine.headers["X-Request-ID"] == "req-42"

        b2.kill()
        # Right away: a request sent to the dead backend is retried on the live one.
        after = [_get(client, f"/api/v1/jobs?after={i}") for i in range(20)]
        assert {a["backend"] for a in after} == {"b1"}
        if kind == "nginx":
            # Passive health check: the failures took the dead backend out.
            wait_until(
                lambda: "upstream server temporarily disabled" in lb.output(),
                10,
                what="nginx to disable the dead upstream",
            )
        else:
            # Active health check: GET /readyz every 2s, 2 failures → DOWN.
            wait_until(
                lambda: "controller2 is DOWN" in lb.output(),
                20,
                what="HAProxy's health check to mark the dead backend DOWN",
            )
        later = [_get(client, f"/api/v1/jobs?later={i}") for i in range(10)]
        assert {a["backend"] for a in later} == {"b1"}


@pytest.mark.parametrize("kind", KINDS)
def test_live_backup_serves_only_when_controllers_are_down(
    kind: str, tmp_path: Path, processes: list[Backend | Balancer]
) -> None:
    primary, backup = _backends(tmp_path, processes, "ok", "ok")
    lb = _lb(kind, tmp_path, processes, [primary], backups=[backup])
    with httpx.Client(base_url=lb.url, timeout=10) as client:
        assert {_get(client, "/x")["backend"] for _ in range(10)} == {"b1"}
        primary.kill()
        if kind == "haproxy":
            wait_until(lambda: "controller1 is DOWN" in lb.output(), 20, what="primary DOWN")
        assert {_get(client, "/x")["backend"] for _ in range(10)} == {"b2"}


@pytest.mark.parametrize("kind", KINDS)
def test_live_non_idempotent_post_is_not_retried(
    kind: str, tmp_path: Path, processes: list[Backend | Balancer]
) -> None:
    """b1 reads POSTs and hangs up without answering. A job creation that reached it
    fails (502, or HAProxy closing a kept-alive client connection the same way the
    server did): the load balancer must not send it to b2 as well."""
    dropping, healthy = _backends(tmp_path, processes, "drop-posts", "ok")
    lb = _lb(kind, tmp_path, processes, [dropping, healthy])
    outcomes: list[int | str] = []
    with httpx.Client(base_url=lb.url, timeout=10) as client:
        for _ in range(8):
            try:
                outcomes.append(client.post("/api/v1/jobs", json={"spec": "x"}).status_code)
            except httpx.RemoteProtocolError:
                outcomes.append("closed")
    assert set(outcomes) <= {200, 502, "closed"}, outcomes
    failed = len(outcomes) - outcomes.count(200)
    dropped = dropping.stats().get("dropped", 0)
    served = healthy.stats().get("POST /api/v1/jobs", 0)
    assert dropped >= 1, "no POST reached the dropping backend"
    assert failed == dropped, (outcomes, dropped)
    assert served == outcomes.count(200), (outcomes, served)


@pytest.mark.parametrize(
    "path",
    [
        "/agent/v1/assignments/a-1/log?seq=0&offset=0",
        "/agent/v1/agents/7/poll",
        "/agent/v1/agents/7/heartbeat",
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_live_safe_agent_posts_are_retried(
    kind: str, path: str, tmp_path: Path, processes: list[Backend | Balancer]
) -> None:
    """Log chunks, long-polls and heartbeats are safe to send twice: one that reached the
    dropping backend is sent again to the healthy one, and the agent sees success."""
    dropping, healthy = _backends(tmp_path, processes, "drop-posts", "ok")
    lb = _lb(kind, tmp_path, processes, [dropping, healthy])
    with httpx.Client(base_url=lb.url, timeout=10) as client:
        answers = []
        for _ in range(6):
            response = client.post(path, content=b"chunk " * 1000)
            assert response.status_code == 200, response.text
            answers.append(response.json())
    assert {a["backend"] for a in answers} == {"b2"}
    assert all(a["body_size"] == 6000 for a in answers)
    assert dropping.stats().get("dropped", 0) >= 1, "no POST reached the dropping backend"
    assert healthy.stats().get(f"POST {path.split('?')[0]}", 0) == 6


@pytest.mark.parametrize("kind", KINDS)
def test_live_server_sent_events_are_not_buffered(
    kind: str, tmp_path: Path, processes: list[Backend | Balancer]
) -> None:
    (backend,) = _backends(tmp_path, processes, "ok")
    lb = _lb(kind, tmp_path, processes, [backend])
    with (
        httpx.Client(base_url=lb.url, timeout=httpx.Timeout(15.0)) as client,
        client.stream("GET", "/api/v1/builds/7/log/stream") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        # The backend holds the second event until we create the marker: the first one
        # must arrive on its own (a buffering proxy would hold it back: read timeout).
        assert next(lines) == "event: log"
        assert next(lines) == "data: first from b1"
        (backend.release_dir / "7").touch()
        rest = list(lines)
        assert "data: second" in rest


@pytest.mark.parametrize("kind", KINDS)
def test_live_tls_and_redirect(
    kind: str, tmp_path: Path, processes: list[Backend | Balancer]
) -> None:
    b1, b2 = _backends(tmp_path, processes, "ok", "ok")
    cert, key, combined = _self_signed(tmp_path)
    redirect_port = free_port()
    tls: dict[str, Any] = (
        {"tls_cert": cert, "tls_key": key} if kind == "nginx" else {"tls_cert": combined}
    )
    lb = _lb(
        kind, tmp_path, processes, [b1, b2], http_redirect=Endpoint(LOCAL, redirect_port), **tls
    )
    context = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(base_url=lb.url, timeout=10, verify=context) as client:
        answers = [_get(client, "/api/v1/jobs") for _ in range(6)]
        assert {a["backend"] for a in answers} == {"b1", "b2"}
        assert answers[0]["headers"]["x-forwarded-proto"] == "https"
    plain = httpx.post(f"http://{LOCAL}:{redirect_port}/api/v1/jobs?x=1", timeout=10)
    assert plain.status_code == 308
    assert plain.headers["location"] == f"{lb.url}/api/v1/jobs?x=1"


@pytest.mark.parametrize("sticky", [Sticky.COOKIE, Sticky.IP])
@pytest.mark.parametrize("kind", KINDS)
def test_live_sticky_sessions(
    kind: str, sticky: Sticky, tmp_path: Path, processes: list[Backend | Balancer]
) -> None:
    b1, b2 = _backends(tmp_path, processes, "ok", "ok")
    lb = _lb(kind, tmp_path, processes, [b1, b2], sticky=sticky)
    seen: set[str] = set()
    for _ in range(4):  # several clients (fresh cookies); each one sticks to one backend
        with httpx.Client(base_url=lb.url, timeout=10) as client:
            first = client.get("/api/v1/jobs")
            if sticky is Sticky.COOKIE:
                assert any(
                    c.lower().startswith("conveyor_affinity=")
                    for c in first.headers.get_list("set-cookie")
                ), first.headers
            backends = {_get(client, f"/api/v1/jobs?i={i}")["backend"] for i in range(10)}
            assert backends == {first.json()["backend"]}
            seen |= backends
    if sticky is Sticky.COOKIE:
        # Requests without the cookie are still spread over both.
        for i in range(20):
            seen.add(httpx.get(f"{lb.url}/api/v1/jobs?n={i}", timeout=10).json()["backend"])
        assert seen == {"b1", "b2"}


def test_backend_stats_are_json(tmp_path: Path, processes: list[Backend | Balancer]) -> None:
    """The stand-in backend itself (guards the tests above against a silent stub)."""
    (backend,) = _backends(tmp_path, processes, "ok")
    httpx.get(f"http://{backend.endpoint}/a/b", timeout=5)
    assert backend.stats() == {"GET /a/b": 1}
    answer = json.loads(httpx.get(f"http://{backend.endpoint}/x?y", timeout=5).text)
    assert answer["target"] == "/x?y"
