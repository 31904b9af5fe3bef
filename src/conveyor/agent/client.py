"""The agent's HTTP client for /agent/v1: timeouts on every call, retries with
exponential backoff and jitter for network and 5xx failures (every agent call
is idempotent), clear errors for 4xx.

The URL may be a load balancer's or a comma-separated list of controllers: on a
network error or a 502/503/504 the client moves on to the next one."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import structlog

from conveyor.errors import ConveyorError

log = structlog.get_logger(__name__)

RETRYABLE_STATUS = {502, 503, 504, 429}


class ProtocolError(ConveyorError):
    """The controller refused a call (4xx); retrying the same call will not help."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status_code = status
        self.detail = detail


class AgentClient:
    def __init__(
        self,
        url: str,
        token: str,
        transport: httpx.AsyncBaseTransport | None = None,
        max_backoff: float = 5.0,
    ) -> None:
        self.urls = [u.strip().rstrip("/") for u in url.split(",") if u.strip()]
        if not self.urls:
            raise ValueError("no controller URL given")
        self._current = 0
        self.max_backoff = max_backoff
        self.agent_id: int | None = None
        self._http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(30.0, connect=5.0),
            transport=transport,
        )

    @property
    def url(self) -> str:
        """The controller URL in use now."""
        return self.urls[self._current]

    def _next_url(self) -> None:
        self._current = (self._current + 1) % len(self.urls)

    async def close(self) -> None:
        await self._http.aclose()

    def _headers(self) -> dict[str, str]:
        return {"X-Agent-Id": str(self.agent_id)} if self.agent_id is not None else {}

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        timeout: float | None = None,
        attempts: int | None = None,
    ) -> Any:
        """One call, retried until it gets an answer (or ``attempts`` run out)."""
        delay = 0.2
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(
                    method,
                    self.url + path,
                    json=json,
                    params=params,
                    content=content,
                    headers=self._headers(),
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                self._next_url()
            else:
                if response.status_code < 400:
                    return response.json() if response.content else None
                if response.status_code not in RETRYABLE_STATUS:
                    raise ProtocolError(response.status_code, _detail(response))
                problem = f"HTTP {response.status_code}"
                if response.status_code != 429:
                    self._next_url()
            if attempts is not None and attempt >= attempts:
                raise ConveyorError(f"{method} {path} failed after {attempt} attempts: {problem}")
            log.warning("agent.call_retry", path=path, problem=problem, retry_in=round(delay, 2))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(self.max_backoff, delay * 2)

    async def upload(self, path: str, params: dict[str, Any], file: Path) -> Any:
        size = (await asyncio.to_thread(file.stat)).st_size
        delay = 0.2
        while True:
            try:
                response = await self._http.put(
                    self.url + path,
                    params=params,
                    content=_file_chunks(file),
                    headers={**self._headers(), "Content-Length": str(size)},
                    timeout=httpx.Timeout(300.0, connect=5.0),
                )
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                self._next_url()
            else:
                if response.status_code < 400:
                    return response.json()
                if response.status_code not in RETRYABLE_STATUS:
                    raise ProtocolError(response.status_code, _detail(response))
                problem = f"HTTP {response.status_code}"
                if response.status_code != 429:
                    self._next_url()
            log.warning("agent.upload_retry", path=path, problem=problem)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(self.max_backoff, delay * 2)


async def _file_chunks(file: Path) -> AsyncIterator[bytes]:
    with file.open("rb") as fh:
        while True:
            chunk = await asyncio.to_thread(fh.read, 256 * 1024)
            if not chunk:
                return
            yield chunk


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("detail") or body)
    except ValueError:
        return response.text[:500]
