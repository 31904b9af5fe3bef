"""The ``docker`` provider: one container per agent through the Docker Engine API
(the official ``docker`` SDK, low-level client).

Containers carry the labels ``conveyor.pool`` and ``conveyor.agent``; the image must
have ``conveyor`` on its PATH (the agent is started as ``conveyor agent …`` with the
token in ``CONVEYOR_TOKEN``). Tested against a fake Docker API server (no Docker
engine runs where Conveyor's tests run): see docs/scaling.md."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from conveyor.errors import InvalidInput
from conveyor.providers.base import AgentLaunch, Provider

log = structlog.get_logger(__name__)

POOL_LABEL = "conveyor.pool"
AGENT_LABEL = "conveyor.agent"
STOP_TIMEOUT = 20


class DockerProvider(Provider):
    kind = "docker"

    def __init__(self, config: dict[str, Any]) -> None:
        unknown = set(config) - {"image", "base_url", "api_version", "network", "env", "command"}
        if unknown:
            raise InvalidInput(f"docker provider: unknown config {', '.join(sorted(unknown))}")
        image = config.get("image")
        if not isinstance(image, str) or not image:
            raise InvalidInput("docker provider: 'image' is required")
        self.image = image
        self.base_url = str(config.get("base_url") or "unix:///var/run/docker.sock")
        self.api_version = str(config.get("api_version") or "1.43")
        self.network = config.get("network")
        self.env = {str(k): str(v) for k, v in (config.get("env") or {}).items()}
        self.command = list(config.get("command") or ["conveyor"])
        self._client: Any = None

    def _api(self) -> Any:
        if self._client is None:
            import docker

            # A fixed API version: no negotiation round trip, and predictable requests.
            self._client = docker.APIClient(base_url=self.base_url, version=self.api_version)
        return self._client

    def _create(self, launch: AgentLaunch) -> str:
        api = self._api()
        host_config = api.create_host_config(network_mode=self.network) if self.network else None
        created = api.create_container(
            image=self.image,
            command=[*self.command, *launch.agent_args(), "--workdir", "/tmp/conveyor-agent"],
            name=launch.agent_name,
            environment={**self.env, **launch.env, "CONVEYOR_TOKEN": launch.token},
            labels={POOL_LABEL: launch.pool, AGENT_LABEL: launch.agent_name},
            host_config=host_config,
        )
        container_id = str(created["Id"])
        api.start(container_id)
        return container_id

    async def create(self, launch: AgentLaunch) -> str:
        container_id = await asyncio.to_thread(self._create, launch)
        log.info("provider.docker.started", pool=launch.pool, container=container_id[:12])
        return container_id

    def _delete(self, instance: str) -> None:
        import docker.errors

        api = self._api()
        try:
            api.stop(instance, timeout=STOP_TIMEOUT)
            api.remove_container(instance, force=True)
        except docker.errors.NotFound:
            pass  # gone already

    async def delete(self, pool: str, instance: str) -> None:
        await asyncio.to_thread(self._delete, instance)
        log.info("provider.docker.stopped", pool=pool, container=instance[:12])

    def _list(self, pool: str) -> set[str]:
        # Running ones only: an ephemeral agent's container exits after its build.
        found = self._api().containers(filters={"label": f"{POOL_LABEL}={pool}"})
        return {str(c["Id"]) for c in found}

    async def list(self, pool: str, known: dict[str, str]) -> set[str]:
        return await asyncio.to_thread(self._list, pool)

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
