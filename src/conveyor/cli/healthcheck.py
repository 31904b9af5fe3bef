"""`conveyor healthcheck`: a probe for container HEALTHCHECKs and supervisors.

Container images have no curl; this asks a controller over HTTP and answers with the
exit status alone (0 healthy, 1 not), printing the reason on failure:

- a controller: ``GET /healthz`` (alive) or ``--ready`` ``GET /readyz`` (serves traffic);
- an agent (``--agent NAME``): the controller lists that agent as online, i.e. its
  heartbeats arrive — an agent has no HTTP port of its own.
"""

from __future__ import annotations

from typing import Annotated, NoReturn

import httpx
import typer

from conveyor.cli.client import err

UNHEALTHY = 1


def healthcheck(
    url: Annotated[
        str, typer.Option(envvar="CONVEYOR_URL", help="controller or load-balancer URL")
    ] = "http://127.0.0.1:8080",
    ready: Annotated[
        bool, typer.Option("--ready", help="check /readyz (serves traffic), not /healthz")
    ] = False,
    agent: Annotated[
        str | None,
        typer.Option(help="check that the agent of this name is online at the controller"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar=["CONVEYOR_HEALTHCHECK_TOKEN", "CONVEYOR_TOKEN"],
            help="a read-scoped user token (for --agent; an agent's enrollment token may"
            " call the agent protocol only)",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds to wait for an answer")] = 5.0,
) -> None:
    """Exit 0 if the controller (or, with --agent, the agent) is healthy, else 1."""
    base = url.rstrip("/").split(",")[0]
    try:
        if agent is None:
            path = "/readyz" if ready else "/healthz"
            response = httpx.get(f"{base}{path}", timeout=timeout, trust_env=False)
            if response.status_code != 200:
                _unhealthy(f"{base}{path} answered HTTP {response.status_code}")
            return
        if not token:
            _unhealthy("--agent needs a token: pass --token or set CONVEYOR_TOKEN")
        response = httpx.get(
            f"{base}/api/v1/agents",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        _unhealthy(f"cannot reach {base}: {type(exc).__name__}: {exc}")
    if response.status_code != 200:
        _unhealthy(f"{base}/api/v1/agents answered HTTP {response.status_code}")
    states = {a["name"]: a["state"] for a in response.json()}
    if agent not in states:
        _unhealthy(f"agent {agent!r} is not registered at {base}")
    if states[agent] != "online":
        _unhealthy(f"agent {agent!r} is {states[agent]} at {base}")


def _unhealthy(reason: str) -> NoReturn:
    err.print(f"unhealthy: {reason}", highlight=False, markup=False)
    raise typer.Exit(UNHEALTHY)
