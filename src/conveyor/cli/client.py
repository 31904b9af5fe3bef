"""The CLI's HTTP client: problems from the API become a clear message and exit code 2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console

from conveyor.cli.config import ClientConfig, resolve

err = Console(stderr=True)

EXIT_ERROR = 2


def fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)
    raise typer.Exit(EXIT_ERROR)


class ApiClient:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.http = httpx.Client(
            base_url=config.url,
            headers={"Authorization": f"Bearer {config.token}"},
            timeout=httpx.Timeout(30.0, connect=5.0),
        )

    @classmethod
    def from_options(cls, url: str | None, token: str | None) -> ApiClient:
        config = resolve(url, token)
        if config is None:
            fail(
                "no server configured: pass --url and --token, set CONVEYOR_URL and"
                " CONVEYOR_TOKEN, or run `conveyor up` here first"
            )
        return cls(config)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(f"cannot reach {self.config.url}: {exc}")
        if response.status_code >= 400:
            fail(_problem(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    def events(self, path: str, params: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        """Server-Sent Events as (event, data) pairs."""
        try:
            with self.http.stream(
                "GET", path, params=params, timeout=httpx.Timeout(60.0, connect=5.0)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    fail(_problem(response))
                event, data = "message", ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data += line[5:].strip()
                    elif line == "" and data:
                        yield event, json.loads(data)
                        event, data = "message", ""
        except httpx.HTTPError as exc:
            fail(f"lost the log stream from {self.config.url}: {exc}")


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"
    detail = body.get("detail") if isinstance(body, dict) else None
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors and isinstance(errors, list) and (len(errors) > 1 or str(errors[0]) != detail):
        return "\n  ".join([f"{detail or 'HTTP ' + str(response.status_code)}", *map(str, errors)])
    return str(detail or body)
