"""The kubernetes provider's lightkube client against the fake API server, over real
HTTP on 127.0.0.1 (no cluster runs here: docs/scaling.md): the generated kubeconfig's
bearer token, a rotated token file re-read after a 401, errors as KubernetesError,
finished pods counted as gone, deleting a gone pod is no error."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.providers.base import AgentLaunch
from conveyor.providers.kubernetes import KubernetesError, KubernetesProvider
from tests.harness import wait_until
from tests.scaling.fakes import FakeKubernetes


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[FakeKubernetes]:
    (tmp_path / "k8s").mkdir()
    server = FakeKubernetes(tmp_path / "k8s").start()
    try:
        yield server
    finally:
        server.close()


def launch(name: str) -> AgentLaunch:
    return AgentLaunch(
        pool="p1",
        agent_name=name,
        url="http://127.0.0.1:1",
        token="cva_not-a-real-one",
        labels=["k"],
        executors=1,
        ephemeral=False,
    )


def provider(kube: FakeKubernetes, command: list[str], **config: object) -> KubernetesProvider:
    """Pods whose container runs ``command`` (the agent's arguments follow it)."""
    template = {"spec": {"containers": [{"image": "agent:1", "command": command}]}}
    return KubernetesProvider(
        {"api_url": kube.url, "namespace": "ci", "pod_template": template, **config}
    )


async def test_pods_are_created_listed_and_deleted_through_lightkube(kube: FakeKubernetes) -> None:
    # `sh -c 'sleep 60' agent …`: a pod that runs; `false`: one that fails at once.
    long = provider(kube, ["/bin/sh", "-c", "sleep 60"], token=kube.token)
    short = provider(kube, ["false"], token=kube.token)
    try:
        assert await long.create(launch("p1-Running_1")) == "p1-running-1"
        assert await short.create(launch("p1-done")) == "p1-done"
        pod = kube.workloads["p1-running-1"]
        assert pod.namespace == "ci"  # type: ignore[attr-defined]
        assert pod.manifest["metadata"]["namespace"] == "ci"  # type: ignore[attr-defined]
        assert pod.labels["conveyor.dev/pool"] == "p1"
        # The finished pod is gone for the autoscaler; the running one is there.
        wait_until(lambda: not kube.workloads["p1-done"].running, 30, what="the pod to fail")
        assert await long.list("p1", {}) == {"p1-running-1"}
        assert await long.list("other-pool", {}) == set()
        await long.delete("p1", "p1-running-1")
        assert kube.workloads["p1-running-1"].deleted
        await long.delete("p1", "p1-running-1")  # gone already: no error
        assert await long.list("p1", {}) == set()
        methods = {(m, p) for m, p, _ in kube.requests}
        assert ("POST", "/api/v1/namespaces/ci/pods") in methods
        assert ("DELETE", "/api/v1/namespaces/ci/pods/p1-running-1") in methods
        assert all(h["Authorization"] == f"Bearer {kube.token}" for _, _, h in kube.requests)
    finally:
        await long.close()
        await short.close()


async def test_a_rotated_token_file_is_read_again_after_a_401(
    kube: FakeKubernetes, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("an-old-token\n")
    client = provider(kube, ["false"], token_file=str(token_file))
    try:
        with pytest.raises(KubernetesError, match="list pods: 401"):
            await client.list("p1", {})
        token_file.write_text(kube.token + "\n")  # the kubelet rotated it
        assert await client.list("p1", {}) == set()
    finally:
        await client.close()


async def test_api_errors_become_kubernetes_errors(kube: FakeKubernetes) -> None:
    client = provider(kube, ["/bin/sh", "-c", "sleep 60"], token=kube.token)
    try:
        await client.create(launch("twice"))
        with pytest.raises(KubernetesError, match="create pod: 409"):
            await client.create(launch("twice"))
        wrong = provider(kube, ["false"], token="wrong")
        with pytest.raises(KubernetesError, match="401"):
            await wrong.delete("p1", "twice")
        await wrong.close()
    finally:
        await client.delete("p1", "twice")
        await client.close()
