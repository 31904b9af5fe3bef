"""Rolling restart under load: three controllers behind real nginx on PostgreSQL are
restarted one at a time (SIGTERM, start again, wait until ready) while builds are
being submitted and jobs and builds read. No accepted build may be lost and no
idempotent request may fail."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.ha.conftest import Cluster
from tests.harness import wait_until


class Load(threading.Thread):
    """One client in a loop through the load balancer, recording every outcome."""

    def __init__(self, cluster: Cluster, request: Callable[[httpx.Client], httpx.Response]) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.request = request
        self.accepted: list[int] = []
        self.ok = 0
        self.failures: list[str] = []
        self.stop_event = threading.Event()
        self.pace = 0.05

    def run(self) -> None:
        with self.cluster.client() as c:
            while not self.stop_event.is_set():
                started = time.monotonic()
                try:
                    r = self.request(c)
                    if r.status_code in (200, 201):
                        self.ok += 1
                        if r.request.method == "POST":
                            self.accepted.append(int(r.json()["id"]))
                    else:
                        self.failures.append(
                            f"{r.request.method} HTTP {r.status_code}: {r.text[:200]}"
                        )
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                # A steady pace, not a flood: 2 CPUs are shared with the controllers.
                time.sleep(max(0.0, self.pace - (time.monotonic() - started)))


def _all_builds(client: httpx.Client, job: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: int | None = None
    while True:
        params: dict[str, Any] = {"job": job, "limit": 500}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get("/api/v1/builds", params=params)
        page.raise_for_status()
        items += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return items


def access_log(cluster: Cluster) -> list[str]:
    return (cluster.nginx.root / "logs" / "access.log").read_text().splitlines()


def test_rolling_restart_loses_no_build_and_fails_no_request(cluster: Cluster) -> None:
    spec = (
        "name: roll\nstages:\n  - name: run\n    steps:\n      - sh: |\n"
        f'          echo "$CONVEYOR_AGENT_NAME" >> {cluster.ledger}/$CONVEYOR_BUILD_ID\n'
    )
    with cluster.client() as c:
        c.post("/api/v1/jobs", json={"spec": spec}).raise_for_status()
    submit = Load(cluster, lambda c: c.post("/api/v1/jobs/roll/builds", json={}))
    reads = [
        Load(cluster, lambda c: c.get("/api/v1/jobs")),
        Load(cluster, lambda c: c.get("/api/v1/builds", params={"job": "roll", "limit": 20})),
    ]
    loads = [submit, *reads]
    for load in loads:
        load.start()
    wait_until(lambda: len(submit.accepted) >= 10, 60, what="builds accepted before the restart")
    restarted = []
    stop_seconds: list[float] = []
    for controller in cluster.controllers:
        before = submit.ok + sum(r.ok for r in reads)
        assert controller.proc is not None
        stopping = time.monotonic()
        controller.stop()  # SIGTERM, then wait for the process to exit
        stop_seconds.append(time.monotonic() - stopping)
        assert controller.proc.returncode is not None
        logged = len(access_log(cluster))
        controller.start()  # same port and home; returns once /readyz answers 200
        restarted.append(controller.home.name)
        # Traffic kept flowing through the restart, and goes on before the next one.
        wait_until(
            lambda b=before: submit.ok + sum(r.ok for r in reads) >= b + 40,  # type: ignore[misc]
            60,
            what="requests to go on after the restart",
        )
        # As an operator would (docs/upgrading.md): the next controller stops only once
        # the load balancer sends this one requests again. nginx keeps a controller that
        # refused connections out of rotation for fail_timeout (5 s), even when it is
        # ready sooner; stopping the next one before then could leave none in rotation.
        served = f"upstream=127.0.0.1:{controller.port} ust=2"
        wait_until(
            lambda n=logged, s=served: any(s in line for line in access_log(cluster)[n:]),  # type: ignore[misc]
            60,
            what=f"nginx to send requests to {controller.home.name} again",
        )
    for load in loads:
        load.stop_event.set()
    for load in loads:
        load.join(60)
    accepted = submit.accepted
    assert restarted == ["c1", "c2", "c3"]
    assert len(accepted) >= 50, f"only {len(accepted)} builds accepted"
    with cluster.client() as c:

        def all_finished() -> list[dict[str, Any]] | None:
            items = _all_builds(c, "roll")
            done = [b for b in items if b["result"]]
            return items if len(done) == len(items) else None

        builds = wait_until(all_finished, 240, interval=0.5, what="every build to finish")
    by_id = {int(b["id"]): b for b in builds}
    # No accepted build is lost: each one exists, succeeded and ran exactly once.
    assert sorted(by_id) == sorted(accepted), "builds in the store differ from those accepted"
    assert {b["state"] for b in builds} == {"succeeded"}
    runs = {int(p.name): p.read_text().split() for p in cluster.ledger.iterdir()}
    assert sorted(runs) == sorted(accepted)
    assert all(len(agents) == 1 for agents in runs.values())
    # No request failed: not the idempotent reads, and not even the build submissions.
    for load in loads:
        assert load.failures == [], load.failures[:5]
    assert all(r.ok > 100 for r in reads), [r.ok for r in reads]
    # nginx's access log names every upstream it tried: more than one means the request
    # was retried on the next controller (connection refused while one was down).
    log = (cluster.nginx.root / "logs" / "access.log").read_text().splitlines()
    retried = [line for line in log if "upstream=" in line and ", " in line.split("upstream=")[1]]
    print(
        f"\nrolling restart: {len(accepted)} builds accepted, "
        f"{sum(r.ok for r in reads)} reads, {len(log)} requests through nginx, "
        f"{len(retried)} retried on another controller; graceful stops took "
        + ", ".join(f"{t:.1f}s" for t in stop_seconds)
    )


def test_a_request_in_flight_completes_during_graceful_shutdown(cluster: Cluster) -> None:
    """SIGTERM while a request is still arriving: the controller stops accepting new
    connections but finishes this one (uvicorn's graceful shutdown), and it is stored."""
    controller = cluster.controllers[0]
    assert controller.proc is not None
    padding = [f"# line {i:06d} of a long comment, sent slowly\n".encode() for i in range(3000)]
    body_head = (
        b'{"spec": "name: in-flight\\nstages:\\n  - name: s\\n    steps:\\n      - echo: hi\\n'
    )
    signalled = threading.Event()

    def slow_body() -> Any:
        yield body_head
        for i, line in enumerate(padding):
            if i == 100:
                controller.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
                signalled.set()
            if i % 100 == 0:
                time.sleep(0.05)  # about 1.5 s in all, well inside the 5 s grace period
            yield json.dumps(line.decode())[1:-1].encode()
        yield b'"}'

    with httpx.Client(
        base_url=controller.url, headers={"Authorization": f"Bearer {cluster.token}"}
    ) as direct:
        response = direct.post(
            "/api/v1/jobs",
            content=slow_body(),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
    assert signalled.is_set()
    assert response.status_code == 201, response.text
    assert response.headers.get("connection") == "close"  # no reuse of a stopping server
    # It then exited: uvicorn re-raises the SIGTERM it handled once it is done, so the
    # status is "terminated by SIGTERM" (what systemd and Kubernetes count as clean).
    assert controller.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    with cluster.client() as c:  # through nginx, served by the other controllers
        assert c.get("/api/v1/jobs/in-flight").json()["version"] == 1
        # New connections to the stopped controller are refused; nginx carries on.
        assert c.get("/api/v1/jobs").status_code == 200
