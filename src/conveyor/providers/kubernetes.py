"""The ``kubernetes`` provider: one Pod per agent, from a pod template in the pool's
provider config, through the Kubernetes REST API (httpx).

Why not the official ``kubernetes`` client: its current releases (37.x) require
python-dateutil>=3, which botocore (our S3 blob store) forbids, and the three calls
we need (create, list by label, delete a Pod) are plain REST. Tested against a fake
API server (no cluster runs where Conveyor's tests run): see docs/scaling.md.

Config: ``api_url`` (default: in-cluster ``https://kubernetes.default.svc``),
``namespace``, ``token`` or ``token_file`` (default: the service account's),
``ca_file`` / ``verify``, ``image``, and an optional ``pod_template`` (a Pod manifest;
its first container runs the agent)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import httpx
import structlog

from conveyor.errors import InvalidInput
from conveyor.providers.base import AgentLaunch, Provider

log = structlog.get_logger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
POOL_LABEL = "conveyor.dev/pool"
AGENT_LABEL = "conveyor.dev/agent"
GRACE_SECONDS = 30


class KubernetesError(RuntimeError):
    pass


def pod_name(agent_name: str) -> str:
    """A DNS-1123 name for an agent (lowercase alphanumerics and '-', at most 63)."""
    name = re.sub(r"[^a-z0-9-]+", "-", agent_name.lower()).strip("-")
    return name[:63].rstrip("-") or "conveyor-agent"


class KubernetesProvider(Provider):
    kind = "kubernetes"

    def __init__(self, config: dict[str, Any]) -> None:
        allowed = {
            "api_url",
            "namespace",
            "token",
            "token_file",
            "ca_file",
            "verify",
            "image",
            "pod_template",
        }
        unknown = set(config) - allowed
        if unknown:
            raise InvalidInput(f"kubernetes provider: unknown config {', '.join(sorted(unknown))}")
        self.api_url = str(config.get("api_url") or "https://kubernetes.default.svc").rstrip("/")
        self.namespace = str(config.get("namespace") or "default")
        self.token = config.get("token")
        self.token_file = config.get("token_file")
        self.verify: bool | str = config.get("ca_file") or config.get("verify", True)
        if self.verify is True and (SERVICE_ACCOUNT / "ca.crt").exists():
            self.verify = str(SERVICE_ACCOUNT / "ca.crt")
        template = config.get("pod_template") or {}
        if not isinstance(template, dict):
            raise InvalidInput("kubernetes provider: 'pod_template' must be a Pod manifest")
        self.template = template
        self.image = config.get("image")
        if not self.image and not _first_container(template).get("image"):
            raise InvalidInput("kubernetes provider: 'image' or a pod_template image is required")
        self._http: httpx.AsyncClient | None = None

    def _bearer(self) -> str | None:
        if self.token:
            return str(self.token)
        path = Path(self.token_file) if self.token_file else SERVICE_ACCOUNT / "token"
        # Read each time: projected service-account tokens are rotated on disk.
        return path.read_text().strip() if path.exists() else None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self.api_url, verify=self.verify, timeout=30)
        return self._http

    async def _request(self, method: str, path: str, **kw: Any) -> Any:
        bearer = self._bearer()
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        response = await self._client().request(method, path, headers=headers, **kw)
        if response.status_code == 404 and method == "DELETE":
            return {}
        if response.status_code >= 400:
            raise KubernetesError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def manifest(self, launch: AgentLaunch) -> dict[str, Any]:
        pod = copy.deepcopy(self.template) or {}
        pod["apiVersion"], pod["kind"] = "v1", "Pod"
        meta = pod.setdefault("metadata", {})
        meta["name"] = pod_name(launch.agent_name)
        meta.setdefault("labels", {}).update(
            {POOL_LABEL: pod_name(launch.pool), AGENT_LABEL: pod_name(launch.agent_name)}
        )
        spec = pod.setdefault("spec", {})
        # An agent that exits (ephemeral, or stopped) is done: the pod must not restart it.
        spec["restartPolicy"] = "Never"
        containers = spec.setdefault("containers", [{}])
        agent = containers[0]
        agent.setdefault("name", "agent")
        if self.image:
            agent["image"] = self.image
        agent["args"] = [*launch.agent_args(), "--workdir", "/tmp/conveyor-agent"]
        agent.setdefault("command", ["conveyor"])
        env = [e for e in agent.get("env", []) if e.get("name") != "CONVEYOR_TOKEN"]
        env += [{"name": k, "value": v} for k, v in launch.env.items()]
        env.append({"name": "CONVEYOR_TOKEN", "value": launch.token})
        agent["env"] = env
        return pod

    async def create(self, launch: AgentLaunch) -> str:
        pod = self.manifest(launch)
        created = await self._request("POST", f"/api/v1/namespaces/{self.namespace}/pods", json=pod)
        name = str(created["metadata"]["name"])
        log.info("provider.kubernetes.started", pool=launch.pool, pod=name)
        return name

    async def delete(self, pool: str, instance: str) -> None:
        await self._request(
            "DELETE",
            f"/api/v1/namespaces/{self.namespace}/pods/{instance}",
            params={"gracePeriodSeconds": GRACE_SECONDS},
        )
        log.info("provider.kubernetes.stopped", pool=pool, pod=instance)

    async def list(self, pool: str, known: dict[str, str]) -> set[str]:
        answer = await self._request(
            "GET",
            f"/api/v1/namespaces/{self.namespace}/pods",
            params={"labelSelector": f"{POOL_LABEL}={pod_name(pool)}"},
        )
        return {
            str(item["metadata"]["name"])
            for item in answer.get("items", [])
            # A finished pod (an ephemeral agent after its build) is gone for us.
            if (item.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and not (item.get("metadata") or {}).get("deletionTimestamp")
        }

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None


def _first_container(template: dict[str, Any]) -> dict[str, Any]:
    containers = (template.get("spec") or {}).get("containers") or [{}]
    first = containers[0]
    return first if isinstance(first, dict) else {}
