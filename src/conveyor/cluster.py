"""`conveyor cluster`: a high-availability Conveyor on one machine, for trying the
cluster setup and for tests. N controllers (`conveyor server`) on free 127.0.0.1 ports
share one PostgreSQL database and one blob folder, nginx (configured by
`conveyor.lb`) balances them on 127.0.0.1:PORT, and M agents connect through nginx.

Every process runs detached (own session, output in HOME/logs/NAME.log); HOME/cluster.json
records them (PID and start time, so a reused PID is never signalled), and `down` stops
them by PID: agents first, then nginx, controllers last."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil

from conveyor.cli.config import write_cli_file
from conveyor.credentials.keys import DEFAULT_KEY_FILE, create_key_file
from conveyor.errors import ConveyorError
from conveyor.lb import Endpoint, LbOptions, prepare_prefix_dir, render_nginx

CLUSTER_FILE = "cluster.json"
HOST = "127.0.0.1"
#: Stop order for `down`: agents finish (or cancel) their builds while controllers
#: are still there to record it; nginx goes before the controllers it fronts.
STOP_ORDER = ("agent", "nginx", "controller")

Report = Callable[[str], None]


class ClusterError(ConveyorError):
    """`cluster up/down/status` cannot do what was asked; the message says why."""


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------- records


@dataclass
class ClusterProcess:
    role: str  # controller | nginx | agent
    name: str
    pid: int
    #: psutil's create_time: tells our process from a later one given the same PID.
    started: float
    log: str
    port: int | None = None

    def process(self) -> psutil.Process | None:
        """The live process, or None if it exited (zombies count as exited)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.started) > 1.0:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def alive(self) -> bool:
        return self.process() is not None


@dataclass
class ClusterState:
    home: str
    url: str
    database: str  # password removed
    created_at: str
    processes: list[ClusterProcess] = field(default_factory=list)

    def save(self) -> Path:
        path = Path(self.home) / CLUSTER_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, home: Path) -> ClusterState | None:
        path = home / CLUSTER_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot read {path}: {exc}") from exc
        try:
            processes = [ClusterProcess(**p) for p in data.pop("processes", [])]
            return cls(**data, processes=processes)
        except TypeError as exc:
            raise ClusterError(f"{path} is not a cluster record: {exc}") from exc

    def live(self) -> list[ClusterProcess]:
        return [p for p in self.processes if p.alive()]


@dataclass(frozen=True)
class ClusterConfig:
    home: Path
    database_url: str
    controllers: int = 3
    agents: int = 2
    executors: int = 2
    port: int = 8080
    #: An admin token to use when the database already has tokens and
    #: HOME/controller-1/admin-token does not hold a valid one.
    token: str | None = None
    nginx: str | None = None
    timeout: float = 90.0
    log_level: str = "info"
    #: The controllers' notifications file (CONVEYOR_NOTIFICATIONS_FILE; notifiers and
    #: rules, docs/notifications.md). Our own CONVEYOR_* variables are not passed on.
    notifications_file: Path | None = None


def redact(url: str) -> str:
    """The database URL without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def check_database_url(url: str | None) -> str:
    if not url:
        raise ClusterError(
            "a cluster needs PostgreSQL: pass --database postgresql://USER@HOST/DB"
            " (or set CONVEYOR_DATABASE_URL); controllers share it, SQLite cannot be shared"
        )
    if not url.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
        raise ClusterError(
            f"a cluster needs PostgreSQL, got {redact(url)!r}: pass --database postgresql://..."
        )
    return url


def find_nginx(explicit: str | None = None) -> str:
    if explicit:
        if not Path(explicit).is_file():
            raise ClusterError(f"nginx not found at {explicit}")
        return explicit
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
    )
    if found is None:
        raise ClusterError("nginx is not installed (scripts/install-system-deps.sh installs it)")
    return found


# --------------------------------------------------------------------------- processes


def _child_env(**extra: str) -> dict[str, str]:
    # Our own CONVEYOR_* settings (controller id, role, public URL…) must not leak into
    # every controller: each gets exactly the flags below.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(extra)
    return env


def _spawn(
    role: str, name: str, args: list[str], home: Path, env: dict[str, str], port: int | None
) -> tuple[ClusterProcess, subprocess.Popen[bytes]]:
    log = home / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"--- {datetime.now(UTC).isoformat()} {' '.join(args)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=home,
            start_new_session=True,  # detached: survives `up`, not hit by its Ctrl-C
        )
    try:
        started = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        started = time.time()
    return ClusterProcess(role, name, proc.pid, started, str(log), port), proc


def _get(url: str, **kwargs: Any) -> httpx.Response:
    # Local addresses only: never through an HTTP proxy from the environment.
    return httpx.get(url, trust_env=False, **kwargs)


def _tail(path: str, lines: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def _wait_ready(
    info: ClusterProcess, proc: subprocess.Popen[bytes], url: str, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(
                f"{info.name} exited with status {proc.returncode}; the end of {info.log}:\n"
                + _tail(info.log)
            )
        try:
            response = _get(f"{url}/readyz", timeout=2.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise ClusterError(f"{info.name} not ready after {timeout:.0f}s ({last}); see {info.log}")


def _agent_token(home: Path, url: str, admin_token: str) -> str:
    """The cluster agents' enrollment token (a pool token), saved in HOME/agent-token and
    reused while the controllers accept it (agents then keep their names)."""
    path = home / "agent-token"
    if path.exists():
        saved = path.read_text().strip()
        probe = _post(
            f"{url}/agent/v1/agents/0/heartbeat",
            json={},
            headers={"Authorization": f"Bearer {saved}"},
        )
        if probe.status_code != 401:
            return saved
    response = _post(
        f"{url}/api/v1/agent-tokens",
        json={"pool": "cluster", "name": "conveyor cluster up"},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    if response.status_code != 201:
        raise ClusterError(f"cannot create the agents' enrollment token: {response.text[:300]}")
    token = str(response.json()["token"])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def _post(url: str, **kwargs: Any) -> httpx.Response:
    try:
        return httpx.post(url, timeout=10, **kwargs)
    except httpx.HTTPError as exc:
        raise ClusterError(f"cannot reach {url}: {exc}") from exc


def _check_token(url: str, token: str) -> bool:
    response = _get(
        f"{url}/api/v1/agents", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    return response.status_code == 200


def _wait_agents(
    url: str,
    token: str,
    names: set[str],
    procs: list[tuple[ClusterProcess, subprocess.Popen[bytes]]],
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    online: set[str] = set()
    while time.monotonic() < deadline:
        for info, proc in procs:
            if proc.poll() is not None:
                raise ClusterError(
                    f"{info.name} exited with status {proc.returncode}; the end of {info.log}:\n"
                    + _tail(info.log)
                )
        try:
            response = _get(
                f"{url}/api/v1/agents", headers={"Authorization": f"Bearer {token}"}, timeout=5
            )
            if response.status_code == 200:
                online = {a["name"] for a in response.json() if a.get("state") == "online"}
                if names <= online:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    missing = ", ".join(sorted(names - online))
    raise ClusterError(f"agents not online after {timeout:.0f}s: {missing}")


# --------------------------------------------------------------------------- up


def up(config: ClusterConfig, report: Report = _quiet) -> ClusterState:
    """Start the cluster and return once every process is up (they keep running)."""
    database_url = check_database_url(config.database_url)
    if config.controllers < 1:
        raise ClusterError("a cluster needs at least one controller")
    home = config.home.absolute()
    existing = ClusterState.load(home)
    if existing is not None and existing.live():
        pids = ", ".join(f"{p.name} ({p.pid})" for p in existing.live())
        raise ClusterError(
            f"a cluster is already running from {home}: {pids}."
            f" Stop it first: conveyor cluster down --home {config.home}"
        )
    nginx = find_nginx(config.nginx)
    if not _port_is_free(config.port):
        raise ClusterError(f"port {config.port} on {HOST} is in use: pass --port")
    home.mkdir(parents=True, exist_ok=True)
    url = f"http://{HOST}:{config.port}"
    state = ClusterState(
        home=str(home),
        url=url,
        database=redact(database_url),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    state.save()
    started: list[tuple[ClusterProcess, subprocess.Popen[bytes]]] = []

    def record(item: tuple[ClusterProcess, subprocess.Popen[bytes]]) -> None:
        started.append(item)
        state.processes.append(item[0])
        state.save()  # after every start: `down` finds whatever is running

    try:
        _start(config, home, url, database_url, nginx, state, record, report)
    except BaseException as exc:
        report("start failed: stopping what was started…")
        _stop_all([info for info, _ in started], timeout=15)
        for _, proc in started:
            proc.poll()  # reap our children
        (home / CLUSTER_FILE).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ClusterError(f"cannot start the cluster: {exc}") from exc
        raise
    return state


def _start(
    config: ClusterConfig,
    home: Path,
    url: str,
    database_url: str,
    nginx: str,
    state: ClusterState,
    record: Callable[[tuple[ClusterProcess, subprocess.Popen[bytes]]], None],
    report: Report,
) -> None:
    taken = {config.port}
    blobs = home / "blobs"
    blobs.mkdir(exist_ok=True)
    env = _child_env()
    # The database URL (it may hold a password) goes by environment, not on the command
    # line where `ps` and the log header would show it.
    controller_env = _child_env(CONVEYOR_DATABASE_URL=database_url)
    if config.notifications_file is not None:
        controller_env["CONVEYOR_NOTIFICATIONS_FILE"] = str(config.notifications_file.absolute())
    # Every controller must share ONE credentials key: the caller's, or one made here once.
    controller_env.update(
        {k: os.environ[k] for k in ("CONVEYOR_SECRET_KEY", "CONVEYOR_SECRET_KEY_FILE")
         if k in os.environ}
    )  # fmt: skip
    if not ({"CONVEYOR_SECRET_KEY", "CONVEYOR_SECRET_KEY_FILE"} & controller_env.keys()):
        create_key_file(home / DEFAULT_KEY_FILE)
        controller_env["CONVEYOR_SECRET_KEY_FILE"] = str(home / DEFAULT_KEY_FILE)

    def controller(i: int) -> tuple[ClusterProcess, subprocess.Popen[bytes]]:
        port = _free_port(taken)
        args = [
            sys.executable, "-m", "conveyor", "server",
            "--home", str(home / f"controller-{i}"),
            "--host", HOST,
            "--port", str(port),
            "--blob-dir", str(blobs),
            "--log-level", config.log_level,
        ]  # fmt: skip
        item = _spawn("controller", f"controller-{i}", args, home, controller_env, port)
        record(item)
        return item

    # Controller 1 first: on a fresh database it migrates the schema and creates the
    # admin token (in its home); the others then find both in place.
    first = controller(1)
    report(f"controller-1 starting on {HOST}:{first[0].port} (migrates the database)…")
    _wait_ready(first[0], first[1], f"http://{HOST}:{first[0].port}", config.timeout)
    token = _admin_token(config, home, f"http://{HOST}:{first[0].port}")
    others = [controller(i) for i in range(2, config.controllers + 1)]
    if others:
        report(f"controller-2…{config.controllers} starting…")
    for info, proc in others:
        _wait_ready(info, proc, f"http://{HOST}:{info.port}", config.timeout)

    prefix = prepare_prefix_dir(home / "nginx")
    options = LbOptions(
        controllers=tuple(Endpoint(HOST, p.port) for p in state.processes if p.port),
        listen=Endpoint(HOST, config.port),
        prefix_dir=prefix,
        foreground=True,
    )
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx(options))
    nginx_args = [nginx, "-c", str(conf), "-p", f"{prefix}/", "-e", str(prefix / "logs/error.log")]
    lb = _spawn("nginx", "nginx", nginx_args, home, env, config.port)
    record(lb)
    report(f"nginx starting on {url}…")
    _wait_ready(lb[0], lb[1], url, config.timeout)
    write_cli_file(home, url, token)

    labels = f"local,{platform.system().lower()},{platform.machine().lower()}"
    agent_env = _child_env(CONVEYOR_TOKEN=_agent_token(home, url, token))
    agents = []
    for i in range(1, config.agents + 1):
        name = f"cluster-agent-{i}"
        args = [
            sys.executable, "-m", "conveyor", "agent",
            "--url", url,
            "--name", name,
            "--labels", labels,
            "--executors", str(config.executors),
            "--workdir", str(home / "agents" / name),
            "--log-level", config.log_level,
        ]  # fmt: skip
        item = _spawn("agent", name, args, home, agent_env, None)
        record(item)
        agents.append(item)
    if agents:
        report(f"{len(agents)} agent(s) connecting through nginx…")
        _wait_agents(url, token, {info.name for info, _ in agents}, agents, config.timeout)


def _admin_token(config: ClusterConfig, home: Path, controller_url: str) -> str:
    from conveyor.runtime import ADMIN_TOKEN_FILE

    candidates: list[tuple[str, str]] = []
    if config.token:
        candidates.append(("--token", config.token))
    saved = home / "controller-1" / ADMIN_TOKEN_FILE
    if saved.exists():
        candidates.append((str(saved), saved.read_text().strip()))
    for _, token in candidates:
        if token and _check_token(controller_url, token):
            return token
    where = " or ".join(source for source, _ in candidates) or f"{saved} (missing)"
    raise ClusterError(
        f"no valid admin token: {where} is not accepted. The database already has tokens"
        " (an earlier cluster or server created them): pass --token with an admin token"
    )


# --------------------------------------------------------------------------- down / status


@dataclass(frozen=True)
class Stopped:
    process: ClusterProcess
    outcome: str  # stopped | killed | not running


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def _stop_group(infos: list[ClusterProcess], timeout: float) -> list[Stopped]:
    """SIGTERM each, wait up to ``timeout`` for all, then SIGKILL their process groups."""
    live: dict[int, tuple[ClusterProcess, psutil.Process]] = {}
    results: list[Stopped] = []
    for info in infos:
        proc = info.process()
        if proc is None:
            results.append(Stopped(info, "not running"))
            continue
        live[info.pid] = (info, proc)
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        for pid, (info, _) in list(live.items()):
            if not info.alive():
                results.append(Stopped(info, "stopped"))
                del live[pid]
        if live:
            time.sleep(0.1)
    for info, proc in live.values():
        try:
            os.killpg(info.pid, signal.SIGKILL)  # own session: the group is its own
        except (ProcessLookupError, PermissionError):
            _signal(proc, signal.SIGKILL)
        results.append(Stopped(info, "killed"))
    for info, _ in live.values():
        end = time.monotonic() + 5
        while info.alive() and time.monotonic() < end:
            time.sleep(0.05)
    order = {id(info): i for i, info in enumerate(infos)}
    return sorted(results, key=lambda r: order[id(r.process)])


def _stop_all(processes: list[ClusterProcess], timeout: float) -> list[Stopped]:
    results: list[Stopped] = []
    for role in STOP_ORDER:
        results += _stop_group([p for p in processes if p.role == role], timeout)
    return results


def down(home: Path, timeout: float = 30.0, report: Report = _quiet) -> list[Stopped]:
    """Stop every recorded process (agents, nginx, controllers) and forget the cluster."""
    home = home.absolute()
    state = ClusterState.load(home)
    if state is None:
        raise ClusterError(f"no cluster recorded in {home} (no {CLUSTER_FILE})")
    for role in STOP_ORDER:
        if any(p.role == role for p in state.processes):
            report(f"stopping {role}s…" if role != "nginx" else "stopping nginx…")
    results = _stop_all(state.processes, timeout)
    still = [r.process for r in results if r.process.alive()]
    if still:
        raise ClusterError("could not stop: " + ", ".join(f"{p.name} ({p.pid})" for p in still))
    (home / CLUSTER_FILE).unlink(missing_ok=True)
    return results


@dataclass(frozen=True)
class ProcessStatus:
    process: ClusterProcess
    alive: bool
    ready: bool | None  # /readyz for controllers and nginx; None for agents


def status(home: Path) -> tuple[ClusterState, list[ProcessStatus]]:
    home = home.absolute()
    state = ClusterState.load(home)
    if state is None:
        raise ClusterError(f"no cluster recorded in {home} (no {CLUSTER_FILE})")
    rows = []
    for p in state.processes:
        alive = p.alive()
        ready: bool | None = None
        if p.port is not None:
            ready = False
            if alive:
                try:
                    ready = _get(f"http://{HOST}:{p.port}/readyz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    ready = False
        rows.append(ProcessStatus(p, alive, ready))
    return state, rows
