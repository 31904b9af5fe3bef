"""End to end: a real controller and agent run publish steps against real nginx (WebDAV)
and pypiserver; the publications are recorded and shown by the API and the CLI; a
refused upload fails the build with the server's answer in the log; a symlink out of
the workspace is refused and nothing is uploaded."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.credentials.keys import create_key_file
from tests.harness import AgentProcess, Controller, wait_agents_online, wait_build_finished
from tests.publish.servers import PASSWORD, USER, DavServer, PypiServer, write_wheel

PIPELINE = """
name: publisher
parameters:
  - name: REPO_PASSWORD
  - name: WHEELS
stages:
  - name: build
    steps:
      - sh: |
          mkdir -p dist target
          printf 'release notes\\n' > dist/notes.txt
          printf 'jar bytes' > target/app.jar
          cp "$WHEELS"/*.whl dist/
  - name: publish
    environment:
      REPO_USER: {user}
    steps:
      - publish:
          type: http
          url: {dav}/secure/generic/
          files: dist/notes.txt
          username: ${{REPO_USER}}
          password: ${{REPO_PASSWORD}}
      - publish:
          type: maven
          url: {dav}/secure/maven
          group_id: org.example
          artifact_id: app
          version: "2.0"
          files: [target/app.jar]
          username: ${{REPO_USER}}
          password: ${{REPO_PASSWORD}}
      - publish:
          type: pypi
          url: {pypi}
          files: ["dist/*.whl"]
          username: ${{REPO_USER}}
          password: ${{REPO_PASSWORD}}
"""

REFUSED = """
name: refused
stages:
  - name: publish
    steps:
      - sh: echo x > x.bin
      - publish: {{type: http, url: "{dav}/readonly/", files: x.bin}}
      - echo: never printed
"""

ESCAPE = """
name: escape
stages:
  - name: publish
    steps:
      - sh: |
          mkdir -p dist
          echo fine > dist/ok.txt
          ln -s {secret} dist/leak.txt
      - publish: {{type: http, url: "{dav}/repo/", files: "dist/*"}}
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Controller]:
    database = request.getfixturevalue("fresh_pg_url") if request.param == "postgresql" else None
    key_file = tmp_path / "keys" / "secret.key"
    create_key_file(key_file)  # so that publish steps can bind stored credentials
    controller = Controller(
        tmp_path / "controller", database, extra_args=["--secret-key-file", str(key_file)]
    ).start()
    agent = AgentProcess(controller, "publisher-agent", tmp_path / "agent").start()
    try:
        wait_agents_online(controller, 1)
        yield controller
    finally:
        agent.stop()
        controller.stop()


def _apply(controller: Controller, tmp_path: Path, spec: str) -> None:
    path = tmp_path / "conveyor.yml"
    path.write_text(spec)
    done = controller.cli("job", "apply", "-f", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def _log(controller: Controller, build_id: int) -> str:
    with controller.client() as c:
        return c.get(f"/api/v1/builds/{build_id}/log").text


def test_publish_steps_end_to_end(
    cluster: Controller, tmp_path: Path, dav: DavServer, pypi: PypiServer
) -> None:
    controller = cluster
    wheel = write_wheel(tmp_path / "wheels")
    _apply(controller, tmp_path, PIPELINE.format(user=USER, dav=dav.url, pypi=pypi.url))
    with controller.client() as c:
        build = c.post(
            "/api/v1/jobs/publisher/builds",
            json={"parameters": {"REPO_PASSWORD": PASSWORD, "WHEELS": str(wheel.parent)}},
        ).json()
    done = wait_build_finished(controller, build["id"])
    log = _log(controller, build["id"])
    assert done["result"] == "succeeded", log
    assert (dav.root / "secure/generic/notes.txt").read_text() == "release notes\n"
    jar = dav.root / "secure/maven/org/example/app/2.0/app-2.0.jar"
    assert jar.read_bytes() == b"jar bytes"
    assert (jar.parent / "app-2.0.jar.sha1").read_text() == hashlib.sha1(b"jar bytes").hexdigest()
    assert (pypi.packages / wheel.name).read_bytes() == wheel.read_bytes()
    assert PASSWORD not in log

    with controller.client() as c:
        rows = c.get(f"/api/v1/builds/{build['id']}/publications").json()
    assert [(r["repository"], r["file"], r["url"]) for r in rows] == [
        ("http", "dist/notes.txt", f"{dav.url}/secure/generic/notes.txt"),
        ("maven", "target/app.jar", f"{dav.url}/secure/maven/org/example/app/2.0/app-2.0.jar"),
        ("maven", "", f"{dav.url}/secure/maven/org/example/app/2.0/app-2.0.pom"),
        ("pypi", f"dist/{wheel.name}", pypi.url),
    ]
    assert rows[0]["sha256"] == hashlib.sha256(b"release notes\n").hexdigest()
    assert rows[3]["coordinates"] == "conveyor-demo==0.1.0"
    assert all(r["step_key"].startswith("1.") for r in rows)

    cli = controller.cli("build", "publications", str(build["id"]))
    assert cli.returncode == 0, cli.stderr
    assert "notes.txt" in cli.stdout and "conveyor-demo==0.1.0" in cli.stdout
    missing = controller.cli("build", "publications", "999999")
    assert missing.returncode != 0 and "not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_refused_upload_fails_the_build_with_the_answer(
    cluster: Controller, tmp_path: Path, dav: DavServer
) -> None:
    controller = cluster
    _apply(controller, tmp_path, REFUSED.format(dav=dav.url))
    with controller.client() as c:
        build = c.post("/api/v1/jobs/refused/builds", json={}).json()
    done = wait_build_finished(controller, build["id"])
    log = _log(controller, build["id"])
    assert done["result"] == "failed"
    assert f"PUT {dav.url}/readonly/x.bin failed: 405 Not Allowed" in log
    assert "<center>nginx" in log
    assert "never printed" not in log
    with controller.client() as c:
        assert c.get(f"/api/v1/builds/{build['id']}/publications").json() == []


def test_symlink_out_of_the_workspace_is_refused(
    cluster: Controller, tmp_path: Path, dav: DavServer
) -> None:
    controller = cluster
    secret = tmp_path / "secret.txt"
    secret.write_text("do not publish me")
    _apply(controller, tmp_path, ESCAPE.format(dav=dav.url, secret=secret))
    with controller.client() as c:
        build = c.post("/api/v1/jobs/escape/builds", json={}).json()
    done = wait_build_finished(controller, build["id"])
    log = _log(controller, build["id"])
    assert done["result"] == "failed"
    assert "refusing 'dist/leak.txt': outside the workspace" in log
    assert list((dav.root / "repo").iterdir()) == []  # not even the good file
    assert " PUT " not in dav.access_log()


STORED = """
name: stored-credential
stages:
  - name: publish
    steps:
      - sh: echo from-a-vault > note.txt
      - publish:
          type: http
          url: {dav}/secure/vaulted/
          files: note.txt
          username: ${{REPO_USER}}
          password: ${{REPO_PASSWORD}}
        credentials:
          - {{id: team/repo, username_env: REPO_USER, password_env: REPO_PASSWORD}}
"""


def test_publish_uses_a_credential_from_the_store(
    cluster: Controller, tmp_path: Path, dav: DavServer
) -> None:
    """A publish step's ${VAR}s come from a stored username+password credential bound
    to the step; the password never shows in the log."""
    controller = cluster
    added = controller.cli(
        "credentials", "add", "team/repo", "--kind", "username_password",
        "--username", USER, "--value", PASSWORD,
    )  # fmt: skip
    assert added.returncode == 0, added.stdout + added.stderr
    _apply(controller, tmp_path, STORED.format(dav=dav.url))
    with controller.client() as c:
        build = c.post("/api/v1/jobs/stored-credential/builds", json={}).json()
    done = wait_build_finished(controller, build["id"])
    log = _log(controller, build["id"])
    assert done["result"] == "succeeded", log
    assert (dav.root / "secure/vaulted/note.txt").read_text() == "from-a-vault\n"
    assert PASSWORD not in log
