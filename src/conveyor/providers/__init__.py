"""Agent providers: how a pool's agents are started and stopped (local processes, a
user command, Docker containers, Kubernetes pods). See docs/scaling.md."""

from __future__ import annotations

from typing import Any

from conveyor.core.scaling import PROVIDER_KINDS
from conveyor.errors import InvalidInput
from conveyor.providers.base import AgentLaunch, Provider, acquire_agent_token


def make_provider(kind: str, config: dict[str, Any], home: Any) -> Provider:
    """The provider for a pool's ``provider`` kind and ``provider_config``; InvalidInput
    for an unknown kind or a config it refuses."""
    if kind == "local":
        from conveyor.providers.local import LocalProvider

        return LocalProvider(config, home)
    if kind == "command":
        from conveyor.providers.command import CommandProvider

        return CommandProvider(config)
    if kind == "docker":
        from conveyor.providers.docker import DockerProvider

        return DockerProvider(config)
    if kind == "kubernetes":
        from conveyor.providers.kubernetes import KubernetesProvider

        return KubernetesProvider(config)
    raise InvalidInput(f"unknown provider {kind!r}: use one of {', '.join(PROVIDER_KINDS)}")


__all__ = ["PROVIDER_KINDS", "AgentLaunch", "Provider", "acquire_agent_token", "make_provider"]
