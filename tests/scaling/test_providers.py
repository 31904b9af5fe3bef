"""The docker, kubernetes and command providers, end to end with a real controller and
real agent processes. Docker and Kubernetes are fake API servers (tests/scaling/fakes.py;
nothing else can run here); the command provider runs a real user script."""

from __future__ import annotations

import json
import secrets
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.credentials.keys import create_key_file
from tests.harness import Controller, wait_until
from tests.scaling.fakes import FakeDocker, FakeKubernetes

JOB = """
name: on-pool
agent: pooled
stages:
  - name: s
    steps:
      - sh: echo "ran on $CONVEYOR_AGENT_NAME"
"""

POLICY = {
    "scale_up_wait_seconds": 0,
    "scale_up_cooldown_seconds": 1,
    "scale_down_idle_seconds": 2,
    "scale_down_cooldown_seconds": 1,
    "max_scale_down_step": 5,
}

COMMAND_SCRIPT = r'''#!{python}
"""A user's provider script: keeps its machines (here: local processes) in a JSON file."""
import json, os, signal, subprocess, sys
state_file = {state!r}
request = json.load(sys.stdin)
state = json.load(open(state_file)) if os.path.exists(state_file) else {{}}
def alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return open(f"/proc/{{pid}}/stat").read().split()[2] != "Z"
if request["action"] == "create":
    workdir = os.path.join(os.path.dirname(state_file), request["agent_name"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", *request["agent_args"], "--workdir", workdir],
        env={{**os.environ, "CONVEYOR_TOKEN": request["token"]}},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    state[str(proc.pid)] = request["pool"]
    json.dump(state, open(state_file, "w"))
    print(json.dumps({{"instance": str(proc.pid)}}))
elif request["action"] == "list":
    print(json.dumps({{"instances": [p for p, pool in state.items()
                                     if pool == request["pool"] and alive(int(p))]}}))
elif request["action"] == "delete":
    try:
        os.kill(int(request["instance"]), signal.SIGTERM)
    except ProcessLookupError:
        pass
    state.pop(request["instance"], None)
    json.dump(state, open(state_file, "w"))
    print("{{}}")
else:
    sys.exit("unknown action")
'''


@pytest.fixture
def controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Controller]:
    monkeypatch.setenv("CONVEYOR_AUTOSCALE_INTERVAL", "1")
    # A credentials key: provider secrets are stored sealed (providers/secrets.py).
    key_file = tmp_path / "keys" / "secret.key"
    create_key_file(key_file)
    c = Controller(tmp_path / "home", extra_args=["--secret-key-file", str(key_file)]).start()
    spec = tmp_path / "job.yml"
    spec.write_text(JOB)
    assert c.cli("job", "apply", "-f", str(spec)).returncode == 0
    yield c
    c.stop()


REGISTRY_PASSWORD = "registry-pw-" + secrets.token_hex(10)


def _assert_not_in_database(controller: Controller, *values: str) -> None:
    """The SQLite database of a real controller (with its WAL) holds none of them."""
    files = [p for p in controller.home.iterdir() if p.name.startswith("conveyor.db")]
    assert files
    for path in files:
        data = path.read_bytes()
        for value in values:
            assert value.encode() not in data, f"a provider secret in clear in {path.name}"


def _run_build(c: httpx.Client) -> dict[str, Any]:
    build_id = c.post("/api/v1/jobs/on-pool/builds", json={}).json()["id"]
    return wait_until(  # type: ignore[no-any-return]
        lambda: (b := c.get(f"/api/v1/builds/{build_id}").json())["result"] and b,
        120,
        interval=0.5,
        what=f"build {build_id}",
    )


def _grow_run_shrink(c: httpx.Client, pool: dict[str, Any]) -> dict[str, Any]:
    """Create the pool (min 1), run a build on its agent, then set it to 0 and wait
    until the agent is gone. Returns the build."""
    created = c.post("/api/v1/pools", json=pool)
    assert created.status_code == 201, created.text
    wait_until(
        lambda: any(
            a["state"] == "online" for a in c.get(f"/api/v1/pools/{pool['name']}").json()["agents"]
        ),
        90,
        what="the pool's agent to register",
    )
    build = _run_build(c)
    assert build["state"] == "succeeded"
    assert c.patch(f"/api/v1/pools/{pool['name']}", json={"min": 0, "max": 0}).status_code == 200
    wait_until(
        lambda: (
            (p := c.get(f"/api/v1/pools/{pool['name']}").json())["size"] == 0 and not p["agents"]
        ),
        60,
        what="the pool to be empty",
    )
    decisions = c.get(f"/api/v1/pools/{pool['name']}/decisions").json()
    assert any(d["removed"] for d in decisions)
    return build


def test_docker_provider_against_a_fake_docker_api(controller: Controller, tmp_path: Path) -> None:
    (tmp_path / "docker").mkdir()
    docker = FakeDocker(tmp_path / "docker").start()
    try:
        pool = {
            "name": "dock",
            "labels": ["pooled"],
            "min": 1,
            "max": 2,
            "provider": "docker",
            "provider_config": {
                "image": "ghcr.io/example/conveyor-agent:1",
                "base_url": docker.url.replace("http://", "tcp://"),
                "env": {"EXTRA": "1", "REGISTRY_PASSWORD": REGISTRY_PASSWORD},
            },
            "policy": POLICY,
        }
        with controller.client() as c:
            _grow_run_shrink(c, pool)
            shown = c.get("/api/v1/pools/dock").json()["provider_config"]
            assert shown["env"] == {"EXTRA": "1", "REGISTRY_PASSWORD": "***"}
        _assert_not_in_database(controller, REGISTRY_PASSWORD)
        [container] = docker.workloads.values()
        assert container.image == "ghcr.io/example/conveyor-agent:1"  # type: ignore[attr-defined]
        assert container.labels == {"conveyor.pool": "dock", "conveyor.agent": container.name}
        assert container.argv[:2] == ["conveyor", "agent"]
        assert "--pool" in container.argv and "dock" in container.argv
        # The token travels in the environment, never on the command line.
        assert container.env["CONVEYOR_TOKEN"].startswith("cva_")
        assert container.env["EXTRA"] == "1"
        assert container.env["REGISTRY_PASSWORD"] == REGISTRY_PASSWORD
        assert not any("cva_" in arg for arg in container.argv)
        assert container.deleted and not container.running
        paths = [(m, p.split("/", 2)[-1]) for m, p, _ in docker.requests]
        assert ("POST", f"containers/{container.id}/stop") in paths
        assert ("DELETE", f"containers/{container.id}") in paths
    finally:
        docker.close()


def test_kubernetes_provider_against_a_fake_api_server(
    controller: Controller, tmp_path: Path
) -> None:
    (tmp_path / "k8s").mkdir()
    kube = FakeKubernetes(tmp_path / "k8s").start()
    token_file = tmp_path / "sa-token"
    token_file.write_text(FakeKubernetes.token + "\n")
    try:
        pool = {
            "name": "kube",
            "labels": ["pooled"],
            "min": 1,
            "max": 2,
            "provider": "kubernetes",
            "provider_config": {
                "api_url": kube.url,
                "namespace": "ci",
                "token_file": str(token_file),
                "pod_template": {
                    "metadata": {"labels": {"team": "platform"}},
                    "spec": {
                        "serviceAccountName": "conveyor-agent",
                        "containers": [
                            {
                                "image": "ghcr.io/example/conveyor-agent:1",
                                "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
                            }
                        ],
                    },
                },
            },
            "policy": POLICY,
        }
        with controller.client() as c:
            _grow_run_shrink(c, pool)
            shown = c.get("/api/v1/pools/kube").json()
            assert "token_file" in shown["provider_config"]
        [pod] = kube.workloads.values()
        manifest = pod.manifest  # type: ignore[attr-defined]
        assert pod.namespace == "ci"  # type: ignore[attr-defined]
        assert manifest["spec"]["restartPolicy"] == "Never"
        assert manifest["spec"]["serviceAccountName"] == "conveyor-agent"
        assert manifest["metadata"]["labels"] == {
            "team": "platform",
            "conveyor.dev/pool": "kube",
            "conveyor.dev/agent": pod.name,
        }
        agent = manifest["spec"]["containers"][0]
        assert agent["resources"]["limits"]["memory"] == "4Gi"
        assert agent["command"] == ["conveyor"] and agent["args"][0] == "agent"
        assert [e["name"] for e in agent["env"]] == ["CONVEYOR_TOKEN"]
        assert pod.deleted and not pod.running
        assert all(h.get("Authorization") == f"Bearer {kube.token}" for _, _, h in kube.requests)
    finally:
        kube.close()


def test_ephemeral_pool_one_build_per_agent_on_kubernetes(
    controller: Controller, tmp_path: Path
) -> None:
    (tmp_path / "k8s").mkdir()
    kube = FakeKubernetes(tmp_path / "k8s").start()
    try:
        pool = {
            "name": "once",
            "labels": ["pooled"],
            "min": 0,
            "max": 3,
            "ephemeral": True,
            "provider": "kubernetes",
            "provider_config": {
                "api_url": kube.url,
                # The bearer token from the credentials store: only its id is in the pool.
                "token_credential": "ci/k8s-token",
                "image": "x",
            },
            "policy": POLICY,
        }
        with controller.client() as c:
            cred = {"id": "ci/k8s-token", "kind": "text", "value": kube.token}
            assert c.post("/api/v1/credentials", json=cred).status_code == 201
            assert c.post("/api/v1/pools", json=pool).status_code == 201
            ids = [c.post("/api/v1/jobs/on-pool/builds", json={}).json()["id"] for _ in range(3)]
            builds = [
                wait_until(
                    lambda i=i: (b := c.get(f"/api/v1/builds/{i}").json())["result"] and b,
                    120,
                    interval=0.5,
                    what=f"build {i}",
                )
                for i in ids
            ]
            assert [b["state"] for b in builds] == ["succeeded"] * 3
            # Each agent took exactly one build, then exited; the pool is empty again.
            assert len({b["agent_id"] for b in builds}) == 3
            wait_until(
                lambda: c.get("/api/v1/pools/once").json()["size"] == 0, 60, what="pool empty"
            )
        assert len(kube.workloads) == 3
        assert all(h.get("Authorization") == f"Bearer {kube.token}" for _, _, h in kube.requests)
        _assert_not_in_database(controller, kube.token)
        wait_until(lambda: not any(p.running for p in kube.workloads.values()), 30)
        # Each one said it was done after its build (the autoscaler may also have
        # stopped it, idle and drained, while it was exiting anyway).
        for name in kube.workloads:
            assert "agent.ephemeral_done" in (tmp_path / "k8s" / f"{name}.log").read_text()
    finally:
        kube.close()


def test_command_provider_runs_the_users_script(controller: Controller, tmp_path: Path) -> None:
    script = tmp_path / "provider.py"
    state = tmp_path / "machines" / "state.json"
    state.parent.mkdir()
    script.write_text(COMMAND_SCRIPT.format(python=sys.executable, state=str(state)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    pool = {
        "name": "cmd",
        "labels": ["pooled"],
        "min": 1,
        "max": 2,
        "provider": "command",
        "provider_config": {"command": [str(script)], "timeout": 30},
        "policy": POLICY,
    }
    with controller.client() as c:
        _grow_run_shrink(c, pool)
    assert json.loads(state.read_text()) == {}


def test_pool_api_refuses_bad_input_and_stores_nothing(controller: Controller) -> None:
    with controller.client() as c:
        for body, status, text in [
            ({"name": "Bad Name"}, 400, "pool name"),
            ({"name": "p", "min": 3, "max": 1}, 400, "min 3 > max 1"),
            ({"name": "p", "provider": "ec2"}, 400, "provider 'ec2'"),
            ({"name": "p", "provider": "docker"}, 400, "'image' is required"),
            ({"name": "p", "provider": "command"}, 400, "'command'"),
            ({"name": "p", "policy": {"periods": [{"cron": "nope"}]}}, 400, "invalid cron"),
            ({"name": "p", "labels": ["a b"]}, 400, "labels"),
            ({"name": "p", "min": "x"}, 400, "min"),
        ]:
            r = c.post("/api/v1/pools", json=body)
            assert r.status_code == status, (body, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert text in r.json()["detail"]
        assert c.get("/api/v1/pools").json() == []
        assert c.get("/api/v1/pools/nope").status_code == 404
        assert c.get("/api/v1/pools/nope/decisions").status_code == 404
        assert c.patch("/api/v1/pools/nope", json={"max": 1}).status_code == 404
        # An agent cannot join a pool that does not exist; nothing is registered.
        enrol = c.post("/api/v1/agent-tokens", json={"pool": "nope"})
        assert enrol.status_code == 201, enrol.text
        r = c.post(
            "/agent/v1/register",
            json={"name": "stray", "executors": 1, "pool": "nope"},
            headers={"Authorization": f"Bearer {enrol.json()['token']}"},
        )
        assert r.status_code == 404
        assert all(a["name"] != "stray" for a in c.get("/api/v1/agents").json())
