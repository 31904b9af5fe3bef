"""deploy/kubernetes: every manifest validated against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict: unknown fields are errors; the schemas ship with the
package, so this runs offline), and the wiring between them checked: selectors,
probes, the Secret and ConfigMap keys the pods read, the kustomization's list."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.tools import DEPLOY, load_all_yaml, load_yaml

K8S = DEPLOY / "kubernetes"
#: A Kubernetes version the package ships schemas for, old enough for most clusters.
K8S_VERSION = "1.30.0"
#: Written by the autoscaling work (validated here too once merged; its wiring is its own).
OTHER_OWNERS = {"agents-hpa.yaml"}


def _manifest_files(own: bool = True) -> list[Path]:
    """The manifests (not the kustomization); ``own``: without other work's files."""
    return sorted(
        p
        for p in K8S.glob("*.yaml")
        if p.name != "kustomization.yaml" and not (own and p.name in OTHER_OWNERS)
    )


def _resources() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in _manifest_files():
        for doc in load_all_yaml(path):
            assert isinstance(doc, dict)
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


@pytest.mark.parametrize("path", _manifest_files(own=False), ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    docs = load_all_yaml(path)
    assert docs
    for doc in docs:
        assert isinstance(doc, dict)
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    deployment = copy.deepcopy(_resources()[("Deployment", "conveyor-controller")])
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(_resources()[("Deployment", "conveyor-controller")])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_controller_deployment_is_highly_available() -> None:
    resources = _resources()
    controller = resources[("Deployment", "conveyor-controller")]
    spec = controller["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    container = _container(controller)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["lifecycle"]["preStop"]  # endpoints go before SIGTERM
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["labelSelector"]["matchLabels"].items() <= labels.items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The PodDisruptionBudget, Service and NetworkPolicy select these pods.
    pdb = resources[("PodDisruptionBudget", "conveyor-controller")]
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = resources[("Service", "conveyor")]
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    policy = resources[("NetworkPolicy", "conveyor-controller")]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ingress = resources[("Ingress", "conveyor")]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "conveyor"
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"


def test_pods_read_only_keys_that_exist() -> None:
    resources = _resources()
    secret = resources[("Secret", "conveyor")]
    config = resources[("ConfigMap", "conveyor-controller")]
    claims = {name for kind, name in resources if kind == "PersistentVolumeClaim"}
    for name in ("conveyor-controller", "conveyor-agent"):
        deployment = resources[("Deployment", name)]
        container = _container(deployment)
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "conveyor" and ref["key"] in secret["stringData"], env
        for source in container.get("envFrom", []):
            assert source["configMapRef"]["name"] == config["metadata"]["name"]
        for volume in deployment["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
        mounts = {m["name"] for m in container.get("volumeMounts", [])}
        volumes = {v["name"] for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
        assert mounts <= volumes
    agent = _container(resources[("Deployment", "conveyor-agent")])
    env = {e["name"]: e for e in agent["env"]}
    assert env["CONVEYOR_URL"]["value"] == "http://conveyor.conveyor.svc"  # the Service
    assert all(k.startswith("CONVEYOR_") for k in config["data"])


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert isinstance(kustomization, dict)
    listed = set(kustomization["resources"])
    assert {p.name for p in _manifest_files()} <= listed  # ours, all of them
    assert listed <= {p.name for p in _manifest_files(own=False)}  # nothing missing
