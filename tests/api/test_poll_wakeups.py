"""The agent long-poll is purely event-driven: while it waits it reads neither the
store nor its connection; a wake-up of the agent's channel, the agent going away,
or the end of its wait are the only things that make it run again. In process, on
both stores, through the real app (raw ASGI calls, so the test sees every
``receive`` the server is asked for and can disconnect the client)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from fastapi import FastAPI

from conveyor.controller.wakeups import agent_channel
from conveyor.runtime import Runtime
from tests.api.conftest import dispatch_once
from tests.api.test_api import create_job, register, trigger

#: Generous liveness bound: a poll told to wait WAIT seconds must be over well before.
WAIT = 60.0
BOUND = 30.0


class RawPoll:
    """One ``POST /agent/v1/agents/{id}/poll`` called on the ASGI app directly."""

    def __init__(self, app: FastAPI, token: str, agent_id: int, wait: float = WAIT) -> None:
        self.app = app
        body = json.dumps({"running": [], "wait": wait, "start": True}).encode()
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": f"/agent/v1/agents/{agent_id}/poll",
            "raw_path": f"/agent/v1/agents/{agent_id}/poll".encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"conveyor.test"),
                (b"authorization", f"Bearer {token}".encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("conveyor.test", 80),
        }
        self.messages: list[dict[str, Any]] = [
            {"type": "http.request", "body": body, "more_body": False}
        ]
        self.receives = 0
        self.gone = asyncio.Event()
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        self.receives += 1
        if self.messages:
            return self.messages.pop(0)
        await self.gone.wait()  # like uvicorn: the next message is the disconnect
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def start(self) -> asyncio.Task[None]:
        return asyncio.create_task(self.app(self.scope, self.receive, self.send))

    def answer(self) -> tuple[int, dict[str, Any]]:
        status = next(m["status"] for m in self.sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        return int(status), json.loads(body)


def count_inbox_reads(runtime: Runtime) -> list[int]:
    """Counts ``poll_inbox`` calls (the poll's only store read while it holds)."""
    calls: list[int] = []
    real = runtime.store.poll_inbox

    async def counted(agent_id: int, with_running: bool = False) -> Any:
        calls.append(agent_id)
        return await real(agent_id, with_running)

    runtime.store.poll_inbox = counted  # type: ignore[method-assign]
    return calls


async def agent_token(client: httpx.AsyncClient) -> str:
    auth = client.auth
    token = getattr(auth, "agent", None)
    assert isinstance(token, str)
    return token


async def test_an_idle_poll_reads_nothing_until_woken(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    await create_job(client)
    agent = await register(client, "idle-1")
    reads = count_inbox_reads(runtime)
    call = RawPoll(app, await agent_token(client), agent)
    task = call.start()
    # Let it settle into its wait; it must not look at the store or its connection.
    for _ in range(40):
        await asyncio.sleep(0.05)
    assert not task.done()
    assert reads == [agent]  # read once at its start
    assert call.receives == 2  # the body, then one pending wait for a disconnect

    # A wake-up for another agent's channel does not make it run.
    runtime.wakeups.notify(agent_channel(agent + 1000))
    await asyncio.sleep(0.2)
    assert reads == [agent] and not task.done()

    # A build assigned to it: the dispatcher's wake-up ends the wait at once.
    build_id = (await trigger(client, "hello")).json()["id"]
    assert await dispatch_once(runtime) == 1
    await asyncio.wait_for(task, BOUND)
    status, body = call.answer()
    assert status == 200
    [item] = body["assignments"]
    assert item["build_id"] == build_id and item["job"] == "hello"
    assert reads == [agent, agent]
    assert call.receives == 2


async def test_a_spurious_wakeup_reads_once_and_waits_again(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    agent = await register(client, "idle-2")
    reads = count_inbox_reads(runtime)
    call = RawPoll(app, await agent_token(client), agent)
    task = call.start()
    await asyncio.sleep(0.5)
    runtime.wakeups.notify(agent_channel(agent))  # nothing for it in the store
    await asyncio.sleep(0.5)
    assert reads == [agent, agent] and not task.done()
    call.gone.set()
    await asyncio.wait_for(task, BOUND)


async def test_a_poll_ends_when_its_agent_goes_away(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    agent = await register(client, "leaver")
    reads = count_inbox_reads(runtime)
    call = RawPoll(app, await agent_token(client), agent)
    task = call.start()
    await asyncio.sleep(0.5)
    assert not task.done()
    call.gone.set()  # the connection is lost
    await asyncio.wait_for(task, BOUND)  # over long before its 60 s wait
    assert reads == [agent]  # and it did not read the store again for nobody


async def test_the_end_of_a_wait_reads_nothing(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    agent = await register(client, "short")
    reads = count_inbox_reads(runtime)
    call = RawPoll(app, await agent_token(client), agent, wait=0.3)
    await asyncio.wait_for(call.start(), BOUND)
    status, body = call.answer()
    assert status == 200 and body == {"assignments": [], "cancel": [], "abort": []}
    # Read at its start only: the agent polls again at once, and that poll reads.
    assert reads == [agent]
