"""Render a production load-balancer configuration (nginx or HAProxy) for a set of
Conveyor controllers. Pure functions: options in, configuration text out, no I/O.

What the configurations do, and why, is explained in docs/load-balancer.md; the
comments written into the generated files say the same thing next to each setting."""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import PurePath

__all__ = [
    "AGENT_RETRY_SAFE_REGEX",
    "BEGIN_MARK",
    "END_MARK",
    "LOG_STREAM_REGEX",
    "Endpoint",
    "LbConfigError",
    "LbOptions",
    "Sticky",
    "parse_endpoint",
    "render",
    "render_haproxy",
    "render_nginx",
]

#: Agent calls that are safe to send again to another controller even though they are
#: POSTs: sequenced log chunks (a re-sent chunk is ignored), the long-poll and the
#: heartbeat (both only read and refresh the agent's last-seen time).
AGENT_RETRY_SAFE_REGEX = r"^/agent/v1/(assignments/[^/]+/log|agents/[^/]+/(poll|heartbeat))$"
#: The live build log (Server-Sent Events): long-lived and never to be buffered.
LOG_STREAM_REGEX = r"^/api/v1/builds/[^/]+/log/stream$"

#: nginx: the http-context part to include into an existing nginx lies between these.
BEGIN_MARK = "# ---- BEGIN conveyor (http context) ----"
END_MARK = "# ---- END conveyor ----"
COOKIE_NAME_NGINX = "conveyor_affinity"
COOKIE_NAME_HAPROXY = "CONVEYOR_AFFINITY"
LONG_TIMEOUT = "3600s"

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
# Characters that would let a path break out of a configuration value.
_UNSAFE_PATH = re.compile(r"[\s;{}\"'#\\$]")


class LbConfigError(ValueError):
    """The options cannot make a valid configuration; the message says which and why."""


class Sticky(enum.StrEnum):
    """Session affinity. Conveyor does not need it (controllers are stateless)."""

    IP = "ip"
    COOKIE = "cookie"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"


def parse_endpoint(text: str, what: str = "address") -> Endpoint:
    """``HOST:PORT`` (``[IPv6]:PORT`` for IPv6) with a port from 1 to 65535."""
    value = text.strip()
    example = f"invalid {what} {text!r}: expected HOST:PORT (e.g. 10.0.0.5:8080 or [::1]:8080)"
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1 : end + 2] != ":":
            raise LbConfigError(example)
        host, port_text = value[1:end], value[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise LbConfigError(
                f"invalid {what} {text!r}: {host!r} is not an IPv6 address"
            ) from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise LbConfigError(example)
        if ":" in host:
            raise LbConfigError(
                f"invalid {what} {text!r}: write IPv6 addresses in brackets, e.g. [::1]:8080"
            )
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise LbConfigError(
                    f"invalid {what} {text!r}: {host!r} is not an IPv4 address"
                ) from None
        elif not _HOSTNAME.match(host):
            raise LbConfigError(f"invalid {what} {text!r}: {host!r} is not a valid host name")
    if not port_text.isdigit():
        raise LbConfigError(f"invalid {what} {text!r}: the port must be a number from 1 to 65535")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise LbConfigError(f"invalid {what} {text!r}: port {port} is not from 1 to 65535")
    return Endpoint(host, port)


def _check_path(path: PurePath, what: str) -> str:
    text = str(path)
    if not text or _UNSAFE_PATH.search(text):
        raise LbConfigError(
            f"{what} {text!r} contains characters a configuration file cannot hold"
            " (spaces, quotes, ';', '#', '$', braces or backslashes)"
        )
    return text


@dataclass(frozen=True)
class LbOptions:
    """Everything a configuration depends on. Checked on creation (LbConfigError)."""

    controllers: tuple[Endpoint, ...]
    backups: tuple[Endpoint, ...] = ()
    #: Where clients connect; default 0.0.0.0:80, or 0.0.0.0:443 with TLS.
    listen: Endpoint | None = None
    #: With TLS: the plain-HTTP listener that redirects to HTTPS (default: port 80 on
    #: the listen host).
    http_redirect: Endpoint | None = None
    #: nginx: the certificate (chain); HAProxy: one PEM holding certificate and key.
    tls_cert: PurePath | None = None
    #: nginx only: the private key.
    tls_key: PurePath | None = None
    sticky: Sticky | None = None
    #: Put pid file, logs and temporary files under this folder (own instance, tests).
    prefix_dir: PurePath | None = None
    #: Run in the foreground: nginx ``daemon off;``, HAProxy logs to stdout.
    foreground: bool = False
    upstream_name: str = field(default="conveyor_controllers")

    def __post_init__(self) -> None:
        if not self.controllers:
            raise LbConfigError("at least one --controller HOST:PORT is required")
        seen: set[Endpoint] = set()
        for endpoint in (*self.controllers, *self.backups):
            if endpoint in seen:
                raise LbConfigError(f"{endpoint} is listed twice (controllers and backups)")
            seen.add(endpoint)
        if self.tls_key is not None and self.tls_cert is None:
            raise LbConfigError("--tls-key needs --tls-cert")
        if self.tls_cert is not None:
            _check_path(self.tls_cert, "--tls-cert")
        if self.tls_key is not None:
            _check_path(self.tls_key, "--tls-key")
        if self.prefix_dir is not None:
            _check_path(self.prefix_dir, "--prefix-dir")
        if self.http_redirect is not None and not self.tls:
            raise LbConfigError("--http-redirect only makes sense with TLS (--tls-cert)")
        if self.tls and self.redirect_endpoint == self.listen_endpoint:
            raise LbConfigError(
                f"the HTTPS listener and the HTTP redirect listener are both {self.listen_endpoint}"
                "; pass --http-redirect HOST:PORT"
            )
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", self.upstream_name):
            raise LbConfigError(f"invalid upstream name {self.upstream_name!r}")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def listen_endpoint(self) -> Endpoint:
        if self.listen is not None:
            return self.listen
        return Endpoint("0.0.0.0", 443 if self.tls else 80)

    @property
    def redirect_endpoint(self) -> Endpoint:
        if self.http_redirect is not None:
            return self.http_redirect
        return Endpoint(self.listen_endpoint.host, 80)


def _header(kind: str, options: LbOptions) -> list[str]:
    servers = ", ".join(str(e) for e in options.controllers)
    lines = [
        f"# {kind} configuration for Conveyor, generated by `conveyor lb-config {kind.lower()}`.",
        f"# Controllers: {servers}",
    ]
    if options.backups:
        lines.append(
            f"# Backups (used only when every controller is down): "
            f"{', '.join(str(e) for e in options.backups)}"
        )
    lines.append("# See docs/load-balancer.md for what each setting is for.")
    return lines


# --------------------------------------------------------------------------- nginx


def render_nginx(options: LbOptions) -> str:
    """A complete nginx.conf (``main`` context: events and http) for ``nginx -c FILE``."""
    if options.tls and options.tls_key is None:
        raise LbConfigError("nginx needs both --tls-cert and --tls-key")
    if options.sticky is not None and options.backups:
        raise LbConfigError(
            "nginx cannot combine --sticky with --backup: its ip_hash and hash balancers"
            " do not support backup servers; drop one of the two"
        )
    prefix = options.prefix_dir
    up = options.upstream_name
    out: list[str] = _header("nginx", options)
    out.append("")
    if options.foreground:
        out += [
            "# Foreground: the supervisor (or `conveyor cluster`) owns the process.",
            "daemon off;",
        ]
    out.append("worker_processes auto;")
    # A worker holds two descriptors per proxied connection: let it open enough.
    out.append("worker_rlimit_nofile 65536;")
    if prefix is not None:
        out += [f"pid {prefix}/nginx.pid;", f"error_log {prefix}/logs/error.log warn;"]
    else:
        out += ["pid /run/nginx.pid;", "error_log /var/log/nginx/error.log warn;"]
    out += [
        "",
        "events {",
        "    # Every agent holds a long-poll open, and every follower of a live log an SSE",
        "    # stream: each costs two connections here (client + controller), per worker.",
        "    # 4096 ran out at ~1,000 agents on one worker (bench/agents.py); 16384 serves",
        "    # ~8,000 per worker. The open-files limit above (and LimitNOFILE) must allow it.",
        "    worker_connections 16384;",
        "}",
        "",
        "http {",
        "    server_tokens off;",
        "    default_type application/octet-stream;",
        "    sendfile on;",
        "    tcp_nodelay on;",
        "    keepalive_timeout 75s;",
        "",
    ]
    if prefix is not None:
        out += [
            f"    client_body_temp_path {prefix}/temp/client_body;",
            f"    proxy_temp_path {prefix}/temp/proxy;",
            f"    fastcgi_temp_path {prefix}/temp/fastcgi;",
            f"    uwsgi_temp_path {prefix}/temp/uwsgi;",
            f"    scgi_temp_path {prefix}/temp/scgi;",
            "",
        ]
    out += [
        f"    {BEGIN_MARK}",
        "    # To add Conveyor to an nginx that already runs, include just the lines between",
        "    # BEGIN and END in its http context (see docs/load-balancer.md).",
        "",
        "    # X-Request-ID: keep the client's, or make one; sent to the controller and back.",
        "    map $http_x_request_id $conveyor_request_id {",
        "        default $http_x_request_id;",
        '        ""      $request_id;',
        "    }",
        "    # WebSocket: pass Upgrade through; otherwise send an empty Connection header so",
        "    # the keepalive connections to the controllers stay open.",
        "    map $http_upgrade $conveyor_connection_upgrade {",
        "        default upgrade;",
        "        ''      '';",
        "    }",
    ]
    if options.sticky is Sticky.COOKIE:
        out += [
            "    # Cookie affinity. Open-source nginx has no `sticky cookie` (that is NGINX Plus),",
            "    # so: a client without the cookie gets a random one ($request_id) set on the",
            "    # response, and the upstream hashes the cookie (`hash ... consistent`), so the",
            "    # same cookie reaches the same controller while the set of controllers holds.",
            f"    map $cookie_{COOKIE_NAME_NGINX} $conveyor_affinity {{",
            f"        default $cookie_{COOKIE_NAME_NGINX};",
            '        ""      $request_id;',
            "    }",
            f"    map $cookie_{COOKIE_NAME_NGINX} $conveyor_affinity_cookie {{",
            '        default "";',
            f'        ""      "{COOKIE_NAME_NGINX}=$conveyor_affinity; Path=/; HttpOnly;'
            f' SameSite=Lax{"; Secure" if options.tls else ""}";',
            "    }",
        ]
    out += [
        "",
        "    log_format conveyor '$remote_addr [$time_local] \"$request\" $status'",
        "                        ' $body_bytes_sent rt=$request_time upstream=$upstream_addr'",
        "                        ' ust=$upstream_status urt=$upstream_response_time'",
        "                        ' rid=$conveyor_request_id';",
    ]
    if prefix is not None:
        access_log = f"        access_log {prefix}/logs/access.log conveyor;"
    else:
        access_log = "        access_log /var/log/nginx/conveyor-access.log conveyor;"
    out += [
        "",
        "    # Health checks: open-source nginx has no active health checks (NGINX Plus has",
        "    # `health_check`). Checks are passive: a controller that fails max_fails=2",
        "    # requests (connection error, timeout, 502/503/504) within fail_timeout=5s is",
        "    # left out for 5s, then tried again with live traffic. Backups get traffic only",
        "    # when every controller is out. The shared zone makes every worker agree.",
        f"    upstream {up} {{",
        f"        zone {up} 64k;",
    ]
    if options.sticky is Sticky.IP:
        out.append("        ip_hash;  # affinity by client address (IPv4: its first 3 octets)")
    elif options.sticky is Sticky.COOKIE:
        out.append("        hash $conveyor_affinity consistent;")
    for endpoint in options.controllers:
        out.append(f"        server {endpoint} max_fails=2 fail_timeout=5s;")
    for endpoint in options.backups:
        out.append(f"        server {endpoint} max_fails=2 fail_timeout=5s backup;")
    out += [
        "        # Reuse connections to the controllers (uvicorn keeps them 75s: close first).",
        "        keepalive 64;",
        "        keepalive_timeout 60s;",
        "    }",
        "",
    ]
    if options.tls:
        redirect = options.redirect_endpoint
        listen = options.listen_endpoint
        port = "" if listen.port == 443 else f":{listen.port}"
        out += [
            "    # Plain HTTP only redirects to HTTPS (308 keeps the method and the body).",
            "    server {",
            f"        listen {redirect};",
            "        server_name _;",
            access_log,
            "        location / {",
            f"            return 308 https://$host{port}$request_uri;",
            "        }",
            "    }",
            "",
        ]
    out += ["    server {"]
    if options.tls:
        out += [
            f"        listen {options.listen_endpoint} ssl http2;",
            "        server_name _;",
            access_log,
            f"        ssl_certificate {options.tls_cert};",
            f"        ssl_certificate_key {options.tls_key};",
            "        ssl_protocols TLSv1.2 TLSv1.3;",
            "        ssl_prefer_server_ciphers off;",
            "        ssl_session_cache shared:conveyor_tls:10m;",
            "        ssl_session_timeout 1d;",
            "        ssl_session_tickets off;",
            "        # Once HTTPS works everywhere, consider HSTS:",
            '        # add_header Strict-Transport-Security "max-age=63072000" always;',
        ]
    else:
        out += [
            f"        listen {options.listen_endpoint};",
            "        server_name _;",
            access_log,
        ]
    out += [
        "",
        "        # Artifact uploads can be GBs: no size limit, streamed to the controller as",
        "        # they arrive (no buffering to disk first).",
        "        client_max_body_size 0;",
        "        proxy_request_buffering off;",
        "        # Long-polls (agents wait ~25s for work) and the live log (Server-Sent Events)",
        "        # must reach the client as soon as the controller writes: no response",
        "        # buffering, and timeouts long enough for a stream that is quiet at times.",
        "        proxy_buffering off;",
        "        proxy_cache off;",
        "        proxy_connect_timeout 5s;",
        f"        proxy_read_timeout {LONG_TIMEOUT};",
        f"        proxy_send_timeout {LONG_TIMEOUT};",
        "        proxy_socket_keepalive on;",
        "",
        "        proxy_http_version 1.1;",
        "        proxy_set_header Host $host;",
        "        proxy_set_header Upgrade $http_upgrade;",
        "        proxy_set_header Connection $conveyor_connection_upgrade;",
        "        proxy_set_header X-Real-IP $remote_addr;",
        "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "        proxy_set_header X-Forwarded-Proto $scheme;",
        "        proxy_set_header X-Forwarded-Host $host;",
        "        proxy_set_header X-Forwarded-Port $server_port;",
        "        proxy_set_header X-Request-ID $conveyor_request_id;",
        "        add_header X-Request-ID $conveyor_request_id always;",
    ]
    if options.sticky is Sticky.COOKIE:
        out.append("        add_header Set-Cookie $conveyor_affinity_cookie always;")
    out += [
        "",
        "        # Retries: a request that fails before any answer (connection error, timeout,",
        "        # 502/503/504) goes to the next controller, at most 3 tries in all. nginx never",
        "        # re-sends a non-idempotent request (POST, PATCH, LOCK) that already reached a",
        "        # controller: creating a job or triggering a build must not happen twice.",
        "        proxy_next_upstream error timeout http_502 http_503 http_504;",
        "        proxy_next_upstream_tries 3;",
        "",
        "        location / {",
        f"            proxy_pass http://{up};",
        "        }",
        "",
        "        # Agent POSTs that are safe to send twice: sequenced log chunks (a duplicate is",
        "        # ignored), the long-poll and the heartbeat. They may go to the next controller",
        "        # even after reaching a failing one. Their bodies are small (chunks <= 4 MiB) and",
        "        # kept in memory, so nginx can re-send them.",
        f"        location ~ {AGENT_RETRY_SAFE_REGEX} {{",
        "            proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;",
        "            proxy_request_buffering on;",
        "            client_body_buffer_size 8m;",
        f"            proxy_pass http://{up};",
        "        }",
        "",
        "        # The live build log (Server-Sent Events): never buffered, held up to an hour",
        "        # (the controller sends a keepalive comment while the log is quiet).",
        f"        location ~ {LOG_STREAM_REGEX} {{",
        "            proxy_buffering off;",
        "            gzip off;",
        f"            proxy_read_timeout {LONG_TIMEOUT};",
        f"            proxy_pass http://{up};",
        "        }",
        "    }",
        f"    {END_MARK}",
        "}",
    ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- HAProxy


def _haproxy_addr(endpoint: Endpoint) -> str:
    return str(endpoint)


def render_haproxy(options: LbOptions) -> str:
    """A complete haproxy.cfg for ``haproxy -f FILE`` (``-db`` in the foreground)."""
    if options.tls_key is not None:
        raise LbConfigError(
            "HAProxy reads the certificate and its key from one PEM file: pass it as"
            " --tls-cert (e.g. `cat cert.pem key.pem > combined.pem`) and drop --tls-key"
        )
    prefix = options.prefix_dir
    backend = options.upstream_name
    out: list[str] = _header("HAProxy", options)
    out += ["", "global"]
    if options.foreground:
        out.append("    log stdout format raw local0 info")
    else:
        out.append("    log /dev/log local0 info")
    if prefix is not None:
        out.append(f"    pidfile {prefix}/haproxy.pid")
    if options.tls:
        out += [
            "    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets",
            "    tune.ssl.default-dh-param 2048",
        ]
    out += [
        "    # maxconn follows the open-files limit (ulimit -n): raise that for many agents,",
        "    # each of which keeps a long-poll open.",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlognull",
        "    option forwardfor",
        "    # Long-polls (agents wait ~25s for work), the live log (Server-Sent Events) and",
        "    # GB-sized artifact uploads need long client/server timeouts; WebSockets and",
        "    # other upgraded connections use the tunnel timeout.",
        "    timeout connect 5s",
        f"    timeout client {LONG_TIMEOUT}",
        f"    timeout server {LONG_TIMEOUT}",
        f"    timeout tunnel {LONG_TIMEOUT}",
        "    timeout http-request 30s",
        "    timeout http-keep-alive 60s",
        "    timeout queue 30s",
        "    timeout check 3s",
        "",
        "frontend conveyor",
    ]
    if options.tls:
        listen = options.listen_endpoint
        redirect = options.redirect_endpoint
        out += [
            f"    bind {_haproxy_addr(listen)} ssl crt {options.tls_cert} alpn h2,http/1.1",
            f"    bind {_haproxy_addr(redirect)}",
            "    # Plain HTTP only redirects to HTTPS (308 keeps the method and the body).",
        ]
        if listen.port == 443 and redirect.port == 80:
            out.append("    http-request redirect scheme https code 308 unless { ssl_fc }")
        else:
            port = "" if listen.port == 443 else f":{listen.port}"
            out.append(
                "    http-request redirect location"
                f" https://%[req.hdr(host),regsub(:[0-9]+$,)]{port}%[capture.req.uri]"
                " code 308 unless { ssl_fc }"
            )
    else:
        out.append(f"    bind {_haproxy_addr(options.listen_endpoint)}")
    out += [
        "    http-request set-header X-Forwarded-Proto https if { ssl_fc }",
        "    http-request set-header X-Forwarded-Proto http unless { ssl_fc }",
        "    http-request set-header X-Forwarded-Host %[req.hdr(host)]",
        "    http-request set-header X-Forwarded-Port %[dst_port]",
        "    # X-Request-ID: keep the client's, or make one; sent to the controller and back.",
        "    unique-id-format %{+X}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid",
        "    http-request set-header X-Request-ID %[unique-id] unless { req.hdr(X-Request-ID) -m found }",  # noqa: E501
        "    http-request set-var(txn.request_id) req.hdr(X-Request-ID)",
        "    http-response set-header X-Request-ID %[var(txn.request_id)]",
        "    # Retries: see the backend. Requests that are not idempotent (POST, PATCH, LOCK)",
        "    # are re-sent only after a connection failure (they never reached a controller),",
        "    # except the agent calls that are safe to send twice: sequenced log chunks,",
        "    # the long-poll and the heartbeat.",
        "    acl non_idempotent method POST PATCH LOCK",
        f"    acl agent_retry_safe path_reg {AGENT_RETRY_SAFE_REGEX}",
        "    http-request disable-l7-retry if non_idempotent !agent_retry_safe",
        "    # A request can be re-sent only while HAProxy holds all of it: wait for the",
        "    # (small) body of those agent calls before choosing a controller. Bodies larger",
        "    # than a buffer (tune.bufsize, 16 kB) are streamed and not re-sent here; the",
        "    # agent itself retries them.",
        "    http-request wait-for-body time 5s if agent_retry_safe",
        f"    default_backend {backend}",
        "",
        f"backend {backend}",
    ]
    if options.sticky is Sticky.IP:
        out.append("    balance source  # affinity by client address")
    else:
        out.append("    balance roundrobin")
    if options.sticky is Sticky.COOKIE:
        secure = " secure" if options.tls else ""
        out.append(f"    cookie {COOKIE_NAME_HAPROXY} insert indirect nocache httponly{secure}")
    out += [
        "    # Active health checks: every 2s GET /readyz; 2 failures take a controller out,",
        "    # 2 successes bring it back. /readyz answers 503 until the controller reaches",
        "    # the database with the current schema.",
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
        "    default-server inter 2s fall 2 rise 2",
        "    # Retry a failed request up to 3 times, each time on another controller.",
        "    retry-on conn-failure empty-response response-timeout 503",
        "    retries 3",
        "    option redispatch 1",
    ]
    if options.backups:
        out.append("    option allbackups  # when every controller is down, use all backups")
    for i, endpoint in enumerate(options.controllers, 1):
        cookie = f" cookie c{i}" if options.sticky is Sticky.COOKIE else ""
        out.append(f"    server controller{i} {_haproxy_addr(endpoint)} check{cookie}")
    for i, endpoint in enumerate(options.backups, 1):
        cookie = f" cookie b{i}" if options.sticky is Sticky.COOKIE else ""
        out.append(f"    server backup{i} {_haproxy_addr(endpoint)} check backup{cookie}")
    return "\n".join(out) + "\n"


def render(kind: str, options: LbOptions) -> str:
    """``kind`` is ``nginx`` or ``haproxy``."""
    if kind == "nginx":
        return render_nginx(options)
    if kind == "haproxy":
        return render_haproxy(options)
    raise LbConfigError(f"unknown load balancer {kind!r}: choose nginx or haproxy")
