"""Job enable/disable, build deletion and pipeline-from-SCM jobs through the unmodified
`python-jenkins` client library against a real controller, a real agent, real
PostgreSQL and a real git repository (file://) created by the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import httpx
import jenkins
import pytest
import requests

from tests.harness import AgentProcess, Controller, wait_agents_online, wait_until
from tests.scm.gitserver import Repo

HELLO = """\
name: team/hello
stages:
  - name: greet
    steps:
      - sh: echo hello | tee hello.txt
post:
  always:
    - archive: hello.txt
"""

JENKINSFILE = """\
pipeline {
    agent any
    parameters {
        string(name: 'WHO', defaultValue: 'world', description: 'who to greet')
    }
    stages {
        stage('Greet') {
            steps {
                sh 'echo "hello $WHO from the repository" | tee greeting.txt'
            }
        }
    }
    post {
        always {
            archiveArtifacts artifacts: 'greeting.txt'
        }
    }
}
"""

BROKEN = JENKINSFILE.replace(
    "                sh 'echo", "                script { def x = 1 }\n                sh 'echo"
)


def scm_flow(url: str, script_path: str, disabled: bool = False) -> str:
    return f"""<?xml version='1.1' encoding='UTF-8'?>
<flow-definition plugin="workflow-job@1400">
  <actions/>
  <description>from the repository</description>
  <keepDependencies>false</keepDependencies>
  <properties/>
  <definition class="org.jenkinsci.plugins.workflow.cps.CpsScmFlowDefinition" plugin="cps">
    <scm class="hudson.plugins.git.GitSCM" plugin="git@5.2.1">
      <configVersion>2</configVersion>
      <userRemoteConfigs>
        <hudson.plugins.git.UserRemoteConfig><url>{escape(url)}</url></hudson.plugins.git.UserRemoteConfig>
      </userRemoteConfigs>
      <branches><hudson.plugins.git.BranchSpec><name>*/main</name></hudson.plugins.git.BranchSpec></branches>
      <doGenerateSubmoduleConfigurations>false</doGenerateSubmoduleConfigurations>
      <submoduleCfg class="empty-list"/>
      <extensions/>
    </scm>
    <scriptPath>{script_path}</scriptPath>
    <lightweight>true</lightweight>
  </definition>
  <triggers/>
  <disabled>{str(disabled).lower()}</disabled>
</flow-definition>
"""


@pytest.fixture
def controller(tmp_path: Path, fresh_pg_url: str) -> Iterator[tuple[Controller, str]]:
    controller = Controller(tmp_path / "controller", fresh_pg_url).start()
    agent = AgentProcess(controller, "jenkins-agent", tmp_path / "agent").start()
    try:
        wait_agents_online(controller, 1)
        with controller.client() as c:
            assert c.post("/api/v1/jobs", json={"spec": HELLO}).status_code == 201
            user = c.get("/api/v1/whoami").json()["user"]
        yield controller, user
    finally:
        agent.stop()
        controller.stop()


def _finished(server: jenkins.Jenkins, job: str, queue_id: int) -> dict[str, Any]:
    def started() -> dict[str, Any] | None:
        item = server.get_queue_item(queue_id)
        return item["executable"] if item.get("executable") else None

    number = wait_until(started, 60, interval=0.3, what=f"queue item {queue_id}")["number"]
    return dict(
        wait_until(
            lambda: (b := server.get_build_info(job, number))["result"] and b,
            90,
            interval=0.3,
            what=f"{job} #{number} to finish",
        )
    )


def test_enable_disable_and_delete_build_with_python_jenkins(
    controller: tuple[Controller, str],
) -> None:
    ctl, user = controller
    server = jenkins.Jenkins(ctl.url, username=user, password=ctl.token, timeout=30)
    first = _finished(server, "team/hello", server.build_job("team/hello"))
    assert first["result"] == "SUCCESS"

    server.disable_job("team/hello")
    server.disable_job("team/hello")  # idempotent
    job = server.get_job_info("team/hello")
    assert job["buildable"] is False and job["disabled"] is True and job["color"] == "disabled"
    assert "<disabled>true</disabled>" in server.get_job_config("team/hello")
    with pytest.raises((jenkins.JenkinsException, requests.HTTPError)):
        server.build_job("team/hello")
    with httpx.Client(base_url=ctl.url, auth=(user, ctl.token), timeout=30) as c:
        refused = c.post("/job/team/job/hello/build")
        assert refused.status_code == 409 and "'team/hello' is disabled" in refused.json()["detail"]
        crumb = c.get("/crumbIssuer/api/json").json()["crumb"]
        forged = c.post("/job/team/job/hello/enable", headers={"Jenkins-Crumb": "forged"})
        assert forged.status_code == 403  # the crumb is checked like every POST
        ok = c.post("/job/team/job/hello/enable", headers={"Jenkins-Crumb": crumb})
        assert ok.status_code == 200
    job = server.get_job_info("team/hello")
    assert job["buildable"] is True and job["disabled"] is False and job["color"] == "blue"

    # POST config.xml honours <disabled> both ways; the spec is not touched by it.
    xml = server.get_job_config("team/hello")
    server.reconfig_job("team/hello", xml.replace("<disabled>false", "<disabled>true"))
    assert server.get_job_info("team/hello")["disabled"] is True
    with ctl.client() as api:
        version = api.get("/api/v1/jobs/team/hello").json()["version"]
        server.reconfig_job("team/hello", xml)
        assert server.get_job_info("team/hello")["disabled"] is False
        assert api.get("/api/v1/jobs/team/hello").json()["version"] == version
    # createItem with <disabled>true creates a disabled job.
    server.create_job("team/copy", xml.replace("<disabled>false", "<disabled>true"))
    assert server.get_job_info("team/copy")["color"] == "disabled"

    # delete_build: the build, its console and its artifact are gone.
    second = _finished(server, "team/hello", server.build_job("team/hello"))
    number = second["number"]
    server.delete_build("team/hello", number)
    with pytest.raises(jenkins.JenkinsException):
        server.get_build_info("team/hello", number)
    with httpx.Client(base_url=ctl.url, auth=(user, ctl.token), timeout=30) as c:
        assert c.get(f"/job/team/job/hello/{number}/consoleText").status_code == 404
        assert c.get(f"/job/team/job/hello/{number}/artifact/hello.txt").status_code == 404
        audit = c.get("/api/v1/audit", params={"action": "build.delete"}).json()["events"]
        assert audit[0]["target"] == f"team/hello #{number}"
    assert server.get_job_info("team/hello")["lastBuild"]["number"] == first["number"]

    # The same through the CLI: a message and a non-zero exit, never a traceback.
    done = ctl.cli("job", "disable", "team/hello")
    assert done.returncode == 0 and "team/hello is disabled" in done.stdout
    assert "disabled" in ctl.cli("job", "list").stdout
    refused_cli = ctl.cli("build", "start", "team/hello")
    assert refused_cli.returncode != 0 and "is disabled" in refused_cli.stderr
    assert "Traceback" not in refused_cli.stderr
    assert ctl.cli("job", "enable", "team/hello").returncode == 0
    deleted = ctl.cli("build", "delete", str(first["queueId"]), "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert f"deleted build team/hello #{first['number']}" in deleted.stdout
    again = ctl.cli("build", "delete", str(first["queueId"]), "--yes")
    assert again.returncode != 0 and "not found" in again.stderr


def test_pipeline_from_scm_job_builds_the_repository_jenkinsfile(
    controller: tuple[Controller, str], tmp_path: Path
) -> None:
    ctl, user = controller
    repo = Repo(tmp_path / "srv", "app")
    repo.create({"ci/Jenkinsfile": JENKINSFILE, "README": "app"}, "initial")
    server = jenkins.Jenkins(ctl.url, username=user, password=ctl.token, timeout=30)
    config = scm_flow(repo.file_url, "ci/Jenkinsfile")
    server.create_job("team/app", config)
    assert server.get_job_info("team/app")["_class"].endswith("WorkflowJob")
    # The round trip keeps url, branch and scriptPath.
    back = server.get_job_config("team/app")
    assert f"<url>{repo.file_url}</url>" in back and "<name>*/main</name>" in back
    assert "<scriptPath>ci/Jenkinsfile</scriptPath>" in back

    info = _finished(server, "team/app", server.build_job("team/app", {"WHO": "jenkins"}))
    assert info["result"] == "SUCCESS"
    assert info["_class"] == "org.jenkinsci.plugins.workflow.job.WorkflowRun"
    last = server.get_job_info("team/app")["lastBuild"]
    assert last["_class"].endswith("WorkflowRun") and last["number"] == info["number"]
    console = server.get_build_console_output("team/app", info["number"])
    assert "hello jenkins from the repository" in console
    assert [a["relativePath"] for a in info["artifacts"]] == ["greeting.txt"]

    # A Jenkinsfile the importer cannot translate completely is refused with its report.
    sha = repo.commit({"ci/Jenkinsfile": BROKEN}, "script block")
    with httpx.Client(base_url=ctl.url, auth=(user, ctl.token), timeout=30) as c:
        refused = c.post("/job/team/job/app/build")
        assert refused.status_code == 400, refused.text
        problem = refused.json()
        assert "does not translate" in problem["detail"]
        assert problem["errors"] == [
            f"ci/Jenkinsfile@{sha[:12]}:9: not translated: "
            "`script { }` block (lines 9-9) is arbitrary Groovy"
        ]
