"""Failover with real processes: three controllers on PostgreSQL behind nginx."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.ha.conftest import LEASE_TTL, Cluster, kill9
from tests.harness import wait_until


def _leader(client: httpx.Client) -> tuple[str, int] | None:
    info = client.get("/api/v1/cluster").json()
    leader = info["leader"]
    return None if leader is None else (leader["id"], leader["epoch"])


class GetLoop(threading.Thread):
    """A tight loop of GET requests through the load balancer, counting failures."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.ok = 0
        self.failures: list[str] = []
        #: Responses cut mid-body because the controller writing them was killed (-9)
        #: after nginx had passed its headers on: no proxy can retry those. Each is
        #: retried at once, as any client retries an idempotent GET cut by a network error.
        self.cut: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        with self.cluster.client() as c:
            while not self.stop_event.is_set():
                try:
                    r = c.get("/api/v1/jobs", timeout=10)
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
                except httpx.RemoteProtocolError as exc:
                    if "peer closed connection without sending complete message body" in str(exc):
                        self.cut.append(repr(exc))  # the retry is the loop's next request
                    else:
                        self.failures.append(repr(exc))
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))


def test_kill_leader_during_a_burst(cluster: Cluster) -> None:
    spec = (
        "name: burst\nstages:\n  - name: run\n    steps:\n      - sh: |\n"
        f'          echo "$CONVEYOR_AGENT_NAME" >> {cluster.ledger}/$CONVEYOR_BUILD_ID\n'
        "          sleep 0.2\n"
    )
    with cluster.client() as c:
        c.post("/api/v1/jobs", json={"spec": spec}).raise_for_status()
        before = wait_until(lambda: _leader(c), 30, what="a leader")
        loop = GetLoop(cluster)
        loop.start()
        ids = [c.post("/api/v1/jobs/burst/builds", json={}).json()["id"] for _ in range(100)]
        wait_until(lambda: len(list(cluster.ledger.iterdir())) >= 10, 60, what="the burst to start")
        killed_at = time.monotonic()
        kill9(cluster.controller(before[0]))
        after = wait_until(
            lambda: (now := _leader(c)) and now[0] != before[0] and now, 30, interval=0.05,
            what="a new leader",
        )  # fmt: skip
        takeover = time.monotonic() - killed_at
        assert after[1] > before[1]  # the epoch grew: the old leader is fenced out
        # Dispatch resumes: builds queued after the kill start on the new leader's watch.
        late = c.post("/api/v1/jobs/burst/builds", json={}).json()["id"]
        ids.append(late)

        def finished() -> bool:
            items = c.get("/api/v1/builds", params={"job": "burst", "limit": 500}).json()
            return len(items["items"]) == 101 and all(b["result"] for b in items["items"])

        wait_until(finished, 180, interval=0.5, what="101 builds to finish")
        loop.stop_event.set()
        loop.join(30)
        builds = c.get("/api/v1/builds", params={"job": "burst", "limit": 500}).json()["items"]
    assert takeover <= 2 * LEASE_TTL + 1.0, f"takeover took {takeover:.2f}s"
    assert {b["state"] for b in builds} == {"succeeded"}
    assert sorted(b["id"] for b in builds) == sorted(ids)
    # The agents' own record agrees with the store: every build ran exactly once.
    runs = {int(p.name): p.read_text().split() for p in cluster.ledger.iterdir()}
    assert sorted(runs) == sorted(ids)
    assert all(len(agents) == 1 for agents in runs.values()), runs
    assert loop.ok > 0 and loop.failures == [], loop.failures[:5]
    # One controller killed, one request in flight at a time: at most one cut response.
    assert len(loop.cut) <= 1, loop.cut


def test_concurrent_updates_through_two_controllers(cluster: Cluster) -> None:
    spec = "name: shared\nstages:\n  - name: a\n    steps:\n      - echo: v{}\n"
    direct = [c.client() for c in cluster.controllers[:2]]
    try:
        direct[0].post("/api/v1/jobs", json={"spec": spec.format(1)}).raise_for_status()

        def update(i: int) -> int:
            return (
                direct[i]
                .put(
                    "/api/v1/jobs/shared",
                    json={"spec": spec.format(i + 2)},
                    headers={"If-Match": '"1"'},
                )
                .status_code
            )

        with ThreadPoolExecutor(2) as pool:
            codes = sorted(pool.map(update, [0, 1]))
        assert codes == [200, 409]
        assert direct[1].get("/api/v1/jobs/shared").json()["version"] == 2
    finally:
        for d in direct:
            d.close()


def _agent_of(client: httpx.Client, build_id: int) -> str | None:
    build = client.get(f"/api/v1/builds/{build_id}").json()
    if build["agent_id"] is None or build["state"] != "running":
        return None
    agent = client.get(f"/api/v1/agents/{build['agent_id']}").json()
    return str(agent["name"])


def _kill_agent(cluster: Cluster, name: str) -> None:
    agent = next(a for a in cluster.agents if a.name == name)
    assert agent.proc is not None
    os.killpg(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait()


def _run_killing_agent(cluster: Cluster, retry_lost: int) -> dict[str, Any]:
    spec = (
        f"name: victim-{retry_lost}\nretry_lost: {retry_lost}\nstages:\n  - name: s\n"
        "    steps:\n      - sh: |\n"
        f'          echo "$CONVEYOR_AGENT_NAME" >> {cluster.ledger}/victim-{retry_lost}\n'
        "          sleep 3\n"
    )
    with cluster.client() as c:
        c.post("/api/v1/jobs", json={"spec": spec}).raise_for_status()
        build = c.post(f"/api/v1/jobs/victim-{retry_lost}/builds", json={}).json()
        name = wait_until(lambda: _agent_of(c, build["id"]), 60, what="the build to run")
        _kill_agent(cluster, name)
        lost = wait_until(
            lambda: (b := c.get(f"/api/v1/builds/{build['id']}").json())["result"] and b,
            60,
            what="the build to be lost",
        )
        if retry_lost == 0:
            return {"lost": lost, "name": name}

        def retried() -> dict[str, Any] | None:
            items = c.get("/api/v1/builds", params={"job": f"victim-{retry_lost}"}).json()
            retry = next((b for b in items["items"] if b["retry_of"] == build["id"]), None)
            return retry if retry and retry["result"] else None

        retry = wait_until(retried, 90, what="the retry to finish")
        return {"lost": lost, "retry": retry, "name": name}


def test_lost_agent_build_is_retried_elsewhere(cluster: Cluster) -> None:
    outcome = _run_killing_agent(cluster, retry_lost=1)
    assert outcome["lost"]["state"] == "lost" and outcome["lost"]["cause"] == "agent lost"
    assert outcome["retry"]["state"] == "succeeded"
    ran_on = (cluster.ledger / "victim-1").read_text().split()
    assert ran_on[0] == outcome["name"] and ran_on[1] != outcome["name"]


def test_lost_agent_without_retry_fails(cluster: Cluster) -> None:
    outcome = _run_killing_agent(cluster, retry_lost=0)
    assert outcome["lost"]["state"] == "failed"
    assert outcome["lost"]["cause"] == "agent lost"
