"""The agent's HTTP client: retries, a list of controller URLs, clear 4xx errors.
The network is replaced at the httpx transport, a seam we own."""

from __future__ import annotations

import httpx
import pytest

from conveyor.agent.client import AgentClient, ProtocolError


def _client(handler: object) -> AgentClient:
    return AgentClient(
        "http://c1:8080, http://c2:8080/",
        "token",
        httpx.MockTransport(handler),  # type: ignore[arg-type]
        max_backoff=0.01,
    )


async def test_moves_to_the_next_controller_when_one_is_down() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "c1":
            raise httpx.ConnectError("refused", request=request)
        assert request.headers["Authorization"] == "Bearer token"
        return httpx.Response(200, json={"ok": True})

    client = _client(handler)
    assert client.urls == ["http://c1:8080", "http://c2:8080"]
    assert await client.call("POST", "/agent/v1/register", json={}) == {"ok": True}
    assert seen == ["c1", "c2"]
    assert client.url == "http://c2:8080"
    await client.call("POST", "/agent/v1/x")  # stays on the one that works
    assert seen[-1] == "c2"
    await client.close()


async def test_retries_503_and_raises_on_4xx() -> None:
    answers = iter([503, 502, 200, 404])

    def handler(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        if status == 404:
            return httpx.Response(404, json={"detail": "assignment x not found"})
        return httpx.Response(status, json={})

    client = _client(handler)
    assert await client.call("POST", "/a") == {}
    with pytest.raises(ProtocolError) as info:
        await client.call("POST", "/b")
    assert info.value.status_code == 404 and "assignment x not found" in str(info.value)
    await client.close()


def test_needs_a_url() -> None:
    with pytest.raises(ValueError, match="no controller URL"):
        AgentClient(" , ", "token")
