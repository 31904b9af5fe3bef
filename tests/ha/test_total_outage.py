"""Every controller down for 20 s in the middle of a build: the build finishes on its
agent, and once the controllers are back the store holds its whole log — every line,
in order, once — and its result."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx

from tests.ha.conftest import Cluster, kill9
from tests.harness import wait_until

OUTAGE_SECONDS = 20.0
LINES = 300  # one every 100 ms: ~30 s of output, so the outage falls in the middle

SPEC = f"""
name: chatty
stages:
  - name: talk
    steps:
      - sh: |
          for i in $(seq 1 {LINES}); do echo "line $i"; sleep 0.1; done
"""


def test_every_controller_down_for_20s(cluster: Cluster) -> None:
    with cluster.client() as c:
        c.post("/api/v1/jobs", json={"spec": SPEC}).raise_for_status()
        build = c.post("/api/v1/jobs/chatty/builds", json={}).json()
        wait_until(
            lambda: b"line 20\n" in c.get(f"/api/v1/builds/{build['id']}/log").content,
            60,
            what="the first lines to arrive",
        )
    for controller in cluster.controllers:
        kill9(controller)
    time.sleep(OUTAGE_SECONDS)
    for controller in cluster.controllers:
        controller.start()  # same port, home and database as before
    with cluster.client() as c:
        # nginx may still count the restarted controllers as failed for a few seconds
        # (max_fails/fail_timeout) and answer 502 meanwhile: wait until it routes again.
        wait_until(lambda: _ok(c, "/readyz"), 60, what="nginx to route to a controller")
        done = wait_until(
            lambda: (b := _json(c, f"/api/v1/builds/{build['id']}")) and b["result"] and b,
            120,
            interval=0.5,
            what="the build's result",
        )
        assert done["state"] == "succeeded", done
        log = wait_until(
            lambda: (
                (r := c.get(f"/api/v1/builds/{build['id']}/log")).headers["X-More-Data"] == "false"
                and r
            ),
            60,
        ).text
    numbers = [int(n) for n in re.findall(r"^line (\d+)$", log, flags=re.MULTILINE)]
    assert numbers == list(range(1, LINES + 1))


def _ok(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.HTTPError:
        return False


def _json(client: httpx.Client, path: str) -> dict[str, Any] | None:
    try:
        response = client.get(path)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None
