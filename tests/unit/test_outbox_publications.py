"""Publication reports go through the durable outbox, in order with the log, once; a
controller without the endpoint gets the build without them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from conveyor.agent.client import AgentClient
from conveyor.agent.outbox import OutboxReporter
from conveyor.core.states import StepState
from tests.unit.test_outbox import FakeController, make


@pytest.fixture
def fake() -> FakeController:
    return FakeController()


@pytest.fixture
async def client(fake: FakeController) -> AsyncIterator[AgentClient]:
    c = AgentClient("http://controller", "token", httpx.MockTransport(fake.handler), 0.05)
    c.agent_id = 1
    yield c
    await c.close()


RECORD = {
    "repository": "http",
    "file": "dist/a.txt",
    "url": "http://repo/a.txt",
    "size": 3,
    "sha256": "0" * 64,
    "coordinates": None,
}


async def _build(reporter: OutboxReporter) -> None:
    await reporter.step_started("0.1", 1)
    await reporter.log(b"publish: dist/a.txt -> http://repo/a.txt\n")
    await reporter.record_publication("0.1", dict(RECORD))
    await reporter.step_finished("0.1", StepState.SUCCEEDED, None, 1)
    await reporter.outbox.finish("succeeded", None)


async def test_publication_is_delivered_in_order_once(
    tmp_path: Path, fake: FakeController, client: AgentClient
) -> None:
    fake.lose_every = 2  # every other answer is lost after the request was applied
    outbox = make(tmp_path / "outbox", client)
    await outbox.open()
    outbox.start()
    await _build(OutboxReporter(outbox))
    assert await asyncio.wait_for(outbox.wait(), 10) is True
    events = fake.events()
    assert [kind for kind, _, _ in events] == ["steps", "publications", "steps", "finish"]
    _, body, at = events[1]
    assert body == {"step": "0.1", **RECORD}
    assert at == len(b"publish: dist/a.txt -> http://repo/a.txt\n")  # after its log line


async def test_a_controller_without_the_endpoint_still_gets_the_build(
    tmp_path: Path, fake: FakeController
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/publications"):
            return httpx.Response(404, json={"detail": "Not Found"})  # an older controller
        return await fake.handler(request)

    client = AgentClient("http://controller", "token", httpx.MockTransport(handler), 0.05)
    client.agent_id = 1
    try:
        outbox = make(tmp_path / "outbox", client)
        await outbox.open()
        outbox.start()
        await _build(OutboxReporter(outbox))
        assert await asyncio.wait_for(outbox.wait(), 10) is True
    finally:
        await client.close()
    assert [kind for kind, _, _ in fake.events()] == ["steps", "steps", "finish"]
