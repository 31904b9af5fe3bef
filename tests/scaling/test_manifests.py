"""deploy/kubernetes/agents-hpa.yaml is valid Kubernetes (schema check, no cluster)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "agents-hpa.yaml"


def test_agents_hpa_manifest_is_valid_and_targets_the_agent_deployment() -> None:
    validate = Path(sys.executable).parent / "kubernetes-validate"
    run = subprocess.run(
        [str(validate), "--strict", str(MANIFEST)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    deployment, hpa = yaml.safe_load_all(MANIFEST.read_text())
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "agent" and hpa["spec"]["minReplicas"] >= 1
