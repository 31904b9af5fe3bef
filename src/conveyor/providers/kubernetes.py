"""The ``kubernetes`` provider: one Pod per agent, from a pod template in the pool's
provider config, through the Kubernetes API with lightkube (a well-kept, typed,
async client; httpx2-based).

Why lightkube and not the official ``kubernetes`` client: the official client's
current releases (37.x) require python-dateutil>=3, which botocore (our S3 blob store)
forbids; lightkube depends on neither. Tested against a fake API server over real
HTTP on 127.0.0.1 (no cluster runs where Conveyor's tests run): see docs/scaling.md.

Config: ``api_url`` (default: in-cluster ``https://kubernetes.default.svc``),
``namespace``, ``token`` (or ``token_credential``: a credentials-store id, see
providers/secrets.py) or ``token_file`` (default: the service account's; re-read
when the API server answers 401, as projected tokens are rotated), ``ca_file`` /
``verify``, ``image``, and an optional ``pod_template`` (a Pod manifest; its first
container runs the agent)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, cast

import httpx2
import structlog
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod

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
        self._kube: AsyncClient | None = None

    def kubeconfig(self) -> KubeConfig:
        """A kubeconfig for lightkube, generated from the provider config (nothing is
        written to disk; the token stays in memory)."""
        if self.token:
            user = User(token=str(self.token))
        else:
            path = Path(self.token_file) if self.token_file else SERVICE_ACCOUNT / "token"
            # lightkube re-reads the file when the server answers 401 (rotated tokens).
            user = User(token_file=str(path)) if path.exists() or self.token_file else User()
        cluster = Cluster(
            server=self.api_url,
            certificate_auth=self.verify if isinstance(self.verify, str) else None,
            insecure=self.verify is False,
        )
        return KubeConfig.from_one(cluster=cluster, user=user, namespace=self.namespace)

    def _client(self) -> AsyncClient:
        if self._kube is None:
            # trust_env=False: the cluster's address and CA come from this config only,
            # never from HTTP(S)_PROXY or SSL_CERT_FILE meant for other traffic.
            self._kube = AsyncClient(
                config=self.kubeconfig(),
                namespace=self.namespace,
                timeout=httpx2.Timeout(30.0),
                trust_env=False,
                field_manager="conveyor",
            )
        return self._kube

    def manifest(self, launch: AgentLaunch) -> dict[str, Any]:
        pod = copy.deepcopy(self.template) or {}
        pod["apiVersion"], pod["kind"] = "v1", "Pod"
        meta = pod.setdefault("metadata", {})
        meta["name"] = pod_name(launch.agent_name)
        meta["namespace"] = self.namespace  # the provider's, whatever the template says
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
        pod = cast(Pod, Pod.from_dict(self.manifest(launch)))
        try:
            created = await self._client().create(pod)
        except ApiError as exc:
            raise _error("create pod", exc) from None
        name = str(created.metadata.name if created.metadata else pod_name(launch.agent_name))
        log.info("provider.kubernetes.started", pool=launch.pool, pod=name)
        return name

    async def delete(self, pool: str, instance: str) -> None:
        try:
            await self._client().delete(
                Pod, instance, namespace=self.namespace, grace_period=GRACE_SECONDS
            )
        except ApiError as exc:
            if exc.status.code != 404:  # gone already: nothing to stop
                raise _error(f"delete pod {instance}", exc) from None
        log.info("provider.kubernetes.stopped", pool=pool, pod=instance)

    async def list(self, pool: str, known: dict[str, str]) -> set[str]:
        alive = set()
        try:
            async for pod in self._client().list(
                Pod, namespace=self.namespace, labels={POOL_LABEL: pod_name(pool)}
            ):
                meta, status = pod.metadata, pod.status
                if meta is None or meta.name is None or meta.deletionTimestamp is not None:
                    continue
                # A finished pod (an ephemeral agent after its build) is gone for us.
                if status is not None and status.phase in ("Succeeded", "Failed"):
                    continue
                alive.add(meta.name)
        except ApiError as exc:
            raise _error("list pods", exc) from None
        return alive

    async def close(self) -> None:
        if self._kube is not None:
            await self._kube.close()
            self._kube = None


def _error(what: str, exc: ApiError) -> KubernetesError:
    return KubernetesError(f"{what}: {exc.status.code} {str(exc.status.message)[:500]}")


def _first_container(template: dict[str, Any]) -> dict[str, Any]:
    containers = (template.get("spec") or {}).get("containers") or [{}]
    first = containers[0]
    return first if isinstance(first, dict) else {}
