"""The ``docker`` provider: one container per agent through the Docker Engine API
(the official ``docker`` SDK, low-level client).

Containers carry the labels ``conveyor.pool`` and ``conveyor.agent``; the image must
have ``conveyor`` on its PATH (the agent is started as ``conveyor agent …`` with the
token in ``CONVEYOR_TOKEN``). Tested against a fake Docker API server (no Docker
engine runs where Conveyor's tests run): see docs/scaling.md."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
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
        allowed = {"image", "base_url", "api_version", "network", "env", "command", "tls"}
        unknown = set(config) - allowed
        if unknown:
            raise InvalidInput(f"docker provider: unknown config {', '.join(sorted(unknown))}")
        self.tls = _tls_settings(config.get("tls"))
        self._tls_dir: Path | None = None
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
            self._client = docker.APIClient(
                base_url=self.base_url, version=self.api_version, tls=self._tls_config()
            )
            if self.tls:
                # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's
                # CA: the engine's CA must be the one from this config.
                self._client.trust_env = False
        return self._client

    def _tls_config(self) -> Any:
        """docker's TLSConfig wants files: the PEMs go to a private folder (0700, files
        0600) that :meth:`close` removes; the key is never stored anywhere else."""
        if not self.tls:
            return False
        from docker.tls import TLSConfig

        folder = Path(tempfile.mkdtemp(prefix="conveyor-docker-tls-"))
        self._tls_dir = folder
        paths = {}
        for name in ("ca_cert", "client_cert", "client_key"):
            if self.tls.get(name):
                path = folder / f"{name}.pem"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(self.tls[name])
                paths[name] = str(path)
        client = (paths["client_cert"], paths["client_key"]) if "client_cert" in paths else None
        return TLSConfig(
            client_cert=client,
            ca_cert=paths.get("ca_cert"),
            verify=bool(self.tls.get("verify", True)) and "ca_cert" in paths,
        )

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
            self._client = None
        if self._tls_dir is not None:
            shutil.rmtree(self._tls_dir, ignore_errors=True)
            self._tls_dir = None


def _tls_settings(raw: Any) -> dict[str, Any]:
    """``tls``: ``ca_cert``, ``client_cert`` (PEM text), ``client_key`` (PEM text: a
    secret, sealed or referenced as ``client_key_credential``, see
    providers/secrets.py) and ``verify`` (default true when a CA is given)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput("docker provider: 'tls' is a mapping (ca_cert, client_cert, client_key)")
    unknown = set(raw) - {"ca_cert", "client_cert", "client_key", "verify"}
    if unknown:
        raise InvalidInput(f"docker provider: unknown tls config {', '.join(sorted(unknown))}")
    for name in ("ca_cert", "client_cert", "client_key"):
        if name in raw and not isinstance(raw[name], str):
            raise InvalidInput(f"docker provider: tls.{name} is PEM text")
    if bool(raw.get("client_cert")) != bool(raw.get("client_key")):
        raise InvalidInput("docker provider: tls needs client_cert and client_key together")
    return dict(raw)
