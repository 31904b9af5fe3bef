"""The ``command`` provider: a user script does the work, for any cloud API (EC2 auto
scaling groups, a VM pool, a bare-metal booking system).

Contract (docs/scaling.md): Conveyor runs ``command`` once per action with one JSON
object on stdin and reads one JSON object from stdout; exit status 0 means success,
anything else is an error whose stderr is logged.

* ``{"action": "create", "pool", "agent_name", "url", "token", "labels", "executors",
  "ephemeral", "agent_args", "config"}`` → ``{"instance": "ID"}``: start one machine that
  runs ``CONVEYOR_TOKEN=token conveyor <agent_args...>``;
* ``{"action": "delete", "pool", "instance", "config"}`` → ``{}``: stop it (the agent is
  idle already); deleting an unknown instance must succeed;
* ``{"action": "list", "pool", "config"}`` → ``{"instances": ["ID", ...]}``: the pool's
  instances that still exist.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
from typing import Any

import structlog

from conveyor.errors import InvalidInput
from conveyor.providers.base import AgentLaunch, Provider

log = structlog.get_logger(__name__)


class ProviderError(RuntimeError):
    pass


class CommandProvider(Provider):
    kind = "command"

    def __init__(self, config: dict[str, Any]) -> None:
        unknown = set(config) - {"command", "timeout", "env", "config"}
        if unknown:
            raise InvalidInput(f"command provider: unknown config {', '.join(sorted(unknown))}")
        command = config.get("command")
        if isinstance(command, str) and command.strip():
            self.argv = shlex.split(command)
        elif isinstance(command, list) and command and all(isinstance(c, str) for c in command):
            self.argv = list(command)
        else:
            raise InvalidInput("command provider: 'command' (a string or a list) is required")
        timeout = config.get("timeout", 120)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidInput("command provider: 'timeout' must be a positive number")
        self.timeout = float(timeout)
        self.env = {str(k): str(v) for k, v in (config.get("env") or {}).items()}
        self.user_config: dict[str, Any] = dict(config.get("config") or {})

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **self.env},
        )
        payload = json.dumps({**request, "config": self.user_config}).encode()
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(payload), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise ProviderError(
                f"{self.argv[0]} {request['action']}: no answer in {self.timeout:g} s"
            ) from None
        if proc.returncode != 0:
            raise ProviderError(
                f"{self.argv[0]} {request['action']} exited {proc.returncode}: "
                f"{stderr.decode(errors='replace').strip()[-500:]}"
            )
        try:
            answer = json.loads(stdout or b"{}")
        except json.JSONDecodeError as exc:
            raise ProviderError(
                f"{self.argv[0]} {request['action']}: stdout is not JSON ({exc})"
            ) from None
        if not isinstance(answer, dict):
            raise ProviderError(f"{self.argv[0]} {request['action']}: expected a JSON object")
        return answer

    async def create(self, launch: AgentLaunch) -> str:
        answer = await self._call(
            {
                "action": "create",
                "pool": launch.pool,
                "agent_name": launch.agent_name,
                "url": launch.url,
                "token": launch.token,
                "labels": launch.labels,
                "executors": launch.executors,
                "ephemeral": launch.ephemeral,
                "agent_args": launch.agent_args(),
            }
        )
        instance = answer.get("instance")
        if not isinstance(instance, str) or not instance:
            raise ProviderError(f"{self.argv[0]} create: answer has no 'instance' string")
        return instance

    async def delete(self, pool: str, instance: str) -> None:
        await self._call({"action": "delete", "pool": pool, "instance": instance})

    async def list(self, pool: str, known: dict[str, str]) -> set[str]:
        answer = await self._call({"action": "list", "pool": pool})
        instances = answer.get("instances")
        if not isinstance(instances, list):
            raise ProviderError(f"{self.argv[0]} list: answer has no 'instances' list")
        return {str(i) for i in instances}
