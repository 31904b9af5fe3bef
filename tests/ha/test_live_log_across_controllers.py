"""A follower of a build's live log on one controller sees the chunks that the agent
delivers to another controller as they arrive (woken by LISTEN/NOTIFY), not at the
follower's fallback re-check (every KEEPALIVE_SECONDS)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from conveyor.api.logs import KEEPALIVE_SECONDS
from tests.ha.conftest import start_controller
from tests.harness import AgentProcess, Controller, wait_agents_online

SPEC = """\
name: live-across
stages:
  - name: s
    steps:
      - sh: "echo first; sleep 3; echo second; sleep 3; echo third"
"""


def test_a_follower_on_another_controller_is_woken_by_each_chunk(
    fresh_pg_url: str, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    c1 = start_controller(tmp_path / "c1", fresh_pg_url, blobs)
    controllers: list[Controller] = [c1]
    agent: AgentProcess | None = None
    try:
        c2 = start_controller(tmp_path / "c2", fresh_pg_url, blobs, token=c1.token)
        controllers.append(c2)
        agent = AgentProcess(c1, "agent-1", tmp_path / "agent-1", executors=1).start()
        wait_agents_online(c1, 1)
        with c1.client() as c:
            assert c.put("/api/v1/jobs/live-across", json={"spec": SPEC}).status_code in (200, 201)
            build = c.post("/api/v1/jobs/live-across/builds", json={}).json()
        arrivals: dict[str, float] = {}
        text = ""
        end = None
        headers = {"Authorization": f"Bearer {c2.token}"}
        with (
            httpx.Client(base_url=c2.url, headers=headers, timeout=120) as follower,
            follower.stream("GET", f"/api/v1/builds/{build['id']}/log/stream") as stream,
        ):
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "log":
                    text += json.loads(line.split(":", 1)[1])["text"]
                    for word in ("first", "second", "third"):
                        if f"{word}\n" in text and word not in arrivals:
                            arrivals[word] = time.monotonic()
                elif line.startswith("data:") and event == "end":
                    end = json.loads(line.split(":", 1)[1])["state"]
                    break
        assert end == "succeeded"
        assert list(arrivals) == ["first", "second", "third"]
        # The agent talks to c1 only; the follower is on c2. Lines printed 3 s apart
        # arrive about 3 s apart: each chunk woke the follower. Without the wake-up it
        # would re-check only every KEEPALIVE_SECONDS (15 s).
        gaps = [arrivals["second"] - arrivals["first"], arrivals["third"] - arrivals["second"]]
        assert all(gap < KEEPALIVE_SECONDS - 5 for gap in gaps), gaps
    finally:
        if agent is not None:
            agent.stop()
        for controller in controllers:
            controller.stop()
