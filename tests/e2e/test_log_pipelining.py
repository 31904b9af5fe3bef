"""Two log chunks in flight against a real controller: the second one fails (a fault
injected in the agent client's httpx transport, the seam we own) while the first is
still being stored, and the build's log still ends whole, exactly once, in order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from conveyor.agent import outbox as outbox_module
from conveyor.agent.client import AgentClient
from conveyor.agent.outbox import BuildOutbox
from tests.harness import AgentProcess, Controller, wait_build_finished, wait_until

SPEC = """\
name: piped
stages:
  - name: s
    steps:
      - sh: "true"
"""

CHUNK = 64 * 1024


class FaultyTransport(httpx.AsyncBaseTransport):
    """The real transport, with one fault: chunk 0's first request is held back (so
    chunk 1 goes while it is in flight, and reaches the controller first), and chunk
    1's first request fails in the way ``fault`` names."""

    def __init__(self, fault: str) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.fault = fault
        self.log_seqs: list[int] = []
        self.busy = 0
        self.busy_max = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/log"):
            return await self.inner.handle_async_request(request)
        seq = int(request.url.params["seq"])
        first = seq not in self.log_seqs
        self.log_seqs.append(seq)
        self.busy += 1
        self.busy_max = max(self.busy_max, self.busy)
        try:
            if seq == 0 and first:
                await asyncio.sleep(0.5)
            if seq == 1 and first:
                if self.fault == "refused":
                    raise httpx.ConnectError("connection refused", request=request)
                if self.fault == "503":
                    return httpx.Response(503, json={"detail": "unavailable"}, request=request)
                # Stored by the controller, but the answer never comes back.
                response = await self.inner.handle_async_request(request)
                await response.aread()
                await response.aclose()
                raise httpx.ReadError("connection reset before the answer", request=request)
            return await self.inner.handle_async_request(request)
        finally:
            self.busy -= 1

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _deliver(controller: Controller, token: str, root: Path, fault: str) -> bytes:
    transport = FaultyTransport(fault)
    client = AgentClient(controller.url, token, transport, max_backoff=0.05)
    try:
        registered = await client.call(
            "POST", "/agent/v1/register", json={"name": "piped-agent", "executors": 1}
        )
        client.agent_id = int(registered["agent_id"])
        assignment = None
        for _ in range(50):
            inbox = await client.call(
                "POST",
                f"/agent/v1/agents/{client.agent_id}/poll",
                json={"wait": 1.0, "start": True},
            )
            if inbox.get("assignments"):
                assignment = inbox["assignments"][0]
                break
        assert assignment is not None, "no assignment offered"
        outbox = BuildOutbox(root, assignment["assignment_id"], client, max_backoff=0.05)
        await outbox.open()
        data = b"".join(f"{i:099d}\n".encode() for i in range(3000))  # ~300 KB, 5 chunks
        await outbox.write(data)
        outbox.start()
        await outbox.finish("succeeded", None)
        assert await asyncio.wait_for(outbox.wait(), 60) is True
        assert transport.log_seqs.count(1) == 2  # chunk 1 failed once and was resent
        assert transport.busy_max == 2  # two chunks were in flight at once
        return data
    finally:
        await client.close()


@pytest.mark.parametrize("fault", ["refused", "503", "answer lost"])
def test_a_failed_second_chunk_in_flight_leaves_the_log_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    monkeypatch.setattr(outbox_module, "MAX_CHUNK", CHUNK)
    monkeypatch.setattr(outbox_module, "PIPELINE_MIN_BYTES", CHUNK // 4)
    controller = Controller(tmp_path / "controller").start()
    try:
        token = AgentProcess(controller, "piped-agent", tmp_path / "agent").enrol()
        with controller.client() as c:
            assert c.put("/api/v1/jobs/piped", json={"spec": SPEC}).status_code in (200, 201)
            build_id = int(c.post("/api/v1/jobs/piped/builds", json={}).json()["id"])
        data = asyncio.run(_deliver(controller, token, tmp_path / "outbox", fault))
        build = wait_build_finished(controller, build_id, 60)
        assert build["result"] == "succeeded"
        with controller.client() as c:
            # Compacted at the finish: the stored log is exactly what was written.
            log = wait_until(
                lambda: (
                    (r := c.get(f"/api/v1/builds/{build_id}/log")).headers.get("X-More-Data")
                    == "false"
                    and r
                ),
                30,
                what="the whole log",
            )
            assert log.content == data
            assert int(log.headers["X-Log-Size"]) == len(data)
    finally:
        controller.stop()
