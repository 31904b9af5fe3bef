"""The container files: Dockerfile (hadolint), its entry point, the Compose and Swarm
stacks (compose-spec JSON schema via check-jsonschema, plus structure: services,
healthchecks, dependencies, secrets), the nginx configurations (exactly what
`conveyor lb-config` renders) and the Compose Prometheus configuration (promtool).
No Docker engine runs here: `docker build` / `docker compose config` are the
checks to run where one does (docs/deployment.md)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from conveyor.lb.render import Endpoint, LbOptions, render_nginx
from tests.deploy.tools import DEPLOY, ROOT, VENV_BIN, load_yaml, run, tool

COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
STACK = DEPLOY / "swarm" / "stack.yml"


def _dockerfile_stages() -> dict[str, list[str]]:
    """Instructions per build stage (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE):
            current = stages.setdefault(m.group(1), [])
        current.append(line)
    return stages


def test_dockerfile_passes_hadolint() -> None:
    result = run(tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_two_non_root_targets_with_healthchecks() -> None:
    stages = _dockerfile_stages()
    assert {"build", "base", "controller", "agent"} <= set(stages)
    assert stages["controller"][0].split()[1] == "base"
    assert stages["agent"][0].split()[1] == "base"
    # The runtime stages never run as root: USER in base (both inherit it), numeric.
    users = [i.split()[1] for i in stages["base"] if i.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    for target in ("controller", "agent"):
        checks = [i for i in stages[target] if i.startswith("HEALTHCHECK")]
        assert len(checks) == 1 and "healthcheck" in checks[0], target
        assert any(i.startswith("CMD") for i in stages[target]), target
    # Multi-stage: the runtime copies the built environment, it does not build.
    assert any("--from=build" in i for i in stages["base"])
    assert not any("pip install" in i for i in stages["base"] + stages["controller"])


def _dockerignore_allows(path: str) -> bool:
    allowed = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern == "*" or path == pattern or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


def test_every_copied_file_is_in_the_build_context() -> None:
    sources = []
    for instructions in _dockerfile_stages().values():
        for i in instructions:
            if i.startswith("COPY") and "--from=" not in i:
                sources += i.split()[1:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert _dockerignore_allows(source.rstrip("/")), f"{source} is excluded by .dockerignore"
    assert not _dockerignore_allows("tests")
    assert not _dockerignore_allows(".git")


def _entrypoint(tmp_path: Path, *args: str, **env: str) -> Any:
    environment = {"PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HOME": str(tmp_path), **env}
    import subprocess

    return subprocess.run(
        ["sh", str(DEPLOY / "docker" / "entrypoint.sh"), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )


def test_entrypoint_reads_secrets_from_files_and_runs_conveyor(tmp_path: Path) -> None:
    secret = tmp_path / "database_url"
    secret.write_text("postgresql://conveyor:s3cret@db/conveyor")
    shown = _entrypoint(
        tmp_path,
        "sh",
        "-c",
        'echo "$CONVEYOR_DATABASE_URL|${CONVEYOR_DATABASE_URL_FILE:-unset}"',
        CONVEYOR_DATABASE_URL_FILE=str(secret),
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "postgresql://conveyor:s3cret@db/conveyor|unset"
    version = _entrypoint(tmp_path, "version")
    assert version.returncode == 0 and version.stdout.strip(), version.stderr
    missing = _entrypoint(tmp_path, "version", CONVEYOR_TOKEN_FILE=str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "CONVEYOR_TOKEN_FILE" in missing.stderr


@pytest.mark.parametrize("path", [COMPOSE, STACK], ids=["compose", "swarm"])
def test_stack_files_match_the_compose_spec_schema(path: Path) -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def _services(path: Path) -> dict[str, dict[str, Any]]:
    doc = load_yaml(path)
    assert isinstance(doc, dict)
    return doc["services"]


def test_compose_stack_structure() -> None:
    doc = load_yaml(COMPOSE)
    assert isinstance(doc, dict)
    services = doc["services"]
    assert set(services) == {
        "postgres", "controller-1", "controller-2", "controller-3",
        "nginx", "agent-1", "agent-2", "prometheus",
    }  # fmt: skip
    controllers = [services[f"controller-{i}"] for i in (1, 2, 3)]
    targets = {s["build"]["target"] for s in services.values() if "build" in s}
    assert targets == {"controller", "agent"}
    ids = [c["command"][c["command"].index("--controller-id") + 1] for c in controllers]
    assert ids == ["controller-1", "controller-2", "controller-3"]
    for c in controllers:
        assert c["environment"]["CONVEYOR_DATABASE_URL_FILE"] == "/run/secrets/database_url"
        assert "blobs:/var/lib/conveyor/blobs" in c["volumes"]  # one shared blob folder
    # Services waited for as healthy have a healthcheck: their own, or the image's
    # HEALTHCHECK (the Dockerfile target they are built from).
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule["condition"] == "service_healthy":
                other = services[dependency]
                assert "healthcheck" in other or other.get("build", {}).get("target"), dependency
    assert services["controller-2"]["depends_on"] == {
        "controller-1": {"condition": "service_healthy"}
    }
    assert set(services["nginx"]["depends_on"]) == {"controller-1", "controller-2", "controller-3"}
    for agent in ("agent-1", "agent-2"):
        env = services[agent]["environment"]
        assert env["CONVEYOR_URL"] == "http://nginx:80"  # through the load balancer
        assert env["CONVEYOR_AGENT_NAME"] == agent
        assert services[agent]["depends_on"] == {"nginx": {"condition": "service_healthy"}}
    # Every secret and named volume used is declared.
    for name, service in services.items():
        for secret in service.get("secrets", []):
            assert secret in doc["secrets"], f"{name}: secret {secret} not declared"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in doc["volumes"], f"{name}: volume {source} not declared"
            else:
                assert (COMPOSE.parent / source).exists(), source
    prometheus_volumes = services["prometheus"]["volumes"]
    assert "../prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in prometheus_volumes


def test_compose_secrets_script_makes_a_consistent_set(tmp_path: Path) -> None:
    copy = tmp_path / "compose"
    copy.mkdir()
    shutil.copy(DEPLOY / "compose" / "init-secrets.sh", copy)
    first = run("sh", str(copy / "init-secrets.sh"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    secrets = {p.name: p.read_text() for p in (copy / "secrets").iterdir()}
    assert set(secrets) == {"postgres_password", "database_url", "admin_token"}
    assert secrets["database_url"] == (
        f"postgresql://conveyor:{secrets['postgres_password']}@postgres:5432/conveyor"
    )
    assert re.fullmatch(r"cvy_[0-9a-f]{48}", secrets["admin_token"])
    assert run("sh", str(copy / "init-secrets.sh"), cwd=tmp_path).returncode == 0
    assert (copy / "secrets" / "admin_token").read_text() == secrets["admin_token"]  # kept


def test_swarm_stack_structure() -> None:
    doc = load_yaml(STACK)
    assert isinstance(doc, dict)
    services = doc["services"]
    assert {"postgres", "controller", "nginx", "agent"} <= set(services)
    controller = services["controller"]
    assert controller["deploy"]["replicas"] == 3
    update = controller["deploy"]["update_config"]
    assert update["parallelism"] == 1 and update["order"] == "start-first"
    assert "/readyz" not in str(controller["healthcheck"]) and "--ready" in str(
        controller["healthcheck"]["test"]
    )
    assert services["agent"]["deploy"]["replicas"] >= 2
    # Secrets are Docker secrets made outside the file, handed in as *_FILE.
    assert all(s.get("external") for s in doc["secrets"].values())
    for name, service in services.items():
        for secret in service.get("secrets", []):
            assert secret in doc["secrets"], f"{name}: {secret}"
        for key, value in service.get("environment", {}).items():
            if key.endswith("_FILE"):
                assert value.removeprefix("/run/secrets/") in service["secrets"], key
    assert "build" not in str(doc)  # Swarm runs images from a registry


def _render(*controllers: str) -> str:
    return render_nginx(
        LbOptions(
            controllers=tuple(Endpoint(c.split(":")[0], int(c.split(":")[1])) for c in controllers),
            listen=Endpoint("0.0.0.0", 80),
            foreground=True,
        )
    )


def test_nginx_configs_are_what_lb_config_renders() -> None:
    assert (DEPLOY / "compose" / "nginx.conf").read_text() == _render(
        "controller-1:8080", "controller-2:8080", "controller-3:8080"
    )
    assert (DEPLOY / "swarm" / "nginx.conf").read_text() == _render("controller:8080")


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    # As mounted in the container: prometheus.yml next to the shipped alerts.yml.
    shutil.copy(DEPLOY / "compose" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    result = run(tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
