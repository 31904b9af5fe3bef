"""The Jenkins-compatible API driven by the unmodified `python-jenkins` client library
(from PyPI) against a real controller, a real agent and real PostgreSQL: build with
parameters, follow the queue item to the build, read the console, stop a build, list
nodes, read jobs and folders — with HTTP Basic `user:apitoken` auth and crumbs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jenkins
import pytest
import requests

from tests.harness import AgentProcess, Controller, wait_agents_online, wait_until

HELLO = """\
name: team/hello
parameters:
  - name: TARGET
    default: staging
  - name: MODE
    type: choice
    choices: [fast, full]
stages:
  - name: greet
    steps:
      - sh: echo "deploying to $TARGET in $MODE mode" | tee deploy.txt
      - archive: deploy.txt
"""

NOWHERE = """\
name: team/nowhere
agent: no-such-label
stages:
  - name: wait
    steps:
      - sh: "true"
"""

SLOW = """\
name: team/slow
stages:
  - name: wait
    steps:
      - sh: |
          echo "slow build started"
          sleep 300
"""


@pytest.fixture
def controller(
    tmp_path: Path, fresh_pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Controller, str]]:
    monkeypatch.setenv("CONVEYOR_JENKINS_METRICS", "true")  # Jenkins metric names too
    controller = Controller(tmp_path / "controller", fresh_pg_url).start()
    agent = AgentProcess(controller, "jenkins-agent", tmp_path / "agent").start()
    try:
        wait_agents_online(controller, 1)
        with controller.client() as c:
            for spec in (HELLO, SLOW, NOWHERE):
                assert c.post("/api/v1/jobs", json={"spec": spec}).status_code == 201
            user = c.get("/api/v1/whoami").json()["user"]
        yield controller, user
    finally:
        agent.stop()
        controller.stop()


def _executable(server: jenkins.Jenkins, queue_id: int) -> dict[str, Any]:
    def started() -> dict[str, Any] | None:
        item = server.get_queue_item(queue_id)
        return item["executable"] if item.get("executable") else None

    return wait_until(started, 60, interval=0.3, what=f"queue item {queue_id} to start")


def test_python_jenkins_drives_conveyor(controller: tuple[Controller, str]) -> None:
    ctl, user = controller
    server = jenkins.Jenkins(ctl.url, username=user, password=ctl.token, timeout=30)
    assert server.get_whoami()["name"] == user
    assert server.get_version().startswith("2.")  # X-Jenkins, read from the root page

    # Build with parameters; the answer is a queue item that leads to the build.
    queue_id = server.build_job("team/hello", {"TARGET": "production", "MODE": "full"})
    executable = _executable(server, queue_id)
    number = executable["number"]
    assert executable["url"].endswith(f"/job/team/job/hello/{number}/")
    info = wait_until(
        lambda: (b := server.get_build_info("team/hello", number))["result"] and b,
        90,
        interval=0.3,
        what="team/hello to finish",
    )
    assert info["result"] == "SUCCESS" and info["building"] is False
    assert info["builtOn"] == "jenkins-agent"
    params = {p["name"]: p["value"] for p in info["actions"][0]["parameters"]}
    assert params == {"TARGET": "production", "MODE": "full"}
    console = server.get_build_console_output("team/hello", number)
    assert "deploying to production in full mode" in console

    job = server.get_job_info("team/hello")
    assert job["color"] == "blue"
    assert job["lastSuccessfulBuild"]["number"] == number
    assert job["lastFailedBuild"] is None
    definitions = job["property"][0]["parameterDefinitions"]
    assert [d["name"] for d in definitions] == ["TARGET", "MODE"]
    assert definitions[1]["choices"] == ["fast", "full"]

    # A running build is stopped: ABORTED, and the job's colour says so.
    slow_queue = server.build_job("team/slow")
    slow = _executable(server, slow_queue)["number"]
    wait_until(
        lambda: "slow build started" in server.get_build_console_output("team/slow", slow),
        60,
        interval=0.3,
        what="the slow build to print",
    )
    assert server.get_job_info("team/slow")["color"].endswith("_anime")
    server.stop_build("team/slow", slow)
    stopped = wait_until(
        lambda: (b := server.get_build_info("team/slow", slow))["result"] and b,
        60,
        interval=0.3,
        what="the slow build to stop",
    )
    assert stopped["result"] == "ABORTED"
    assert server.get_job_info("team/slow")["color"] == "aborted"

    # Nodes are the agents.
    nodes = server.get_nodes()
    assert {"name": "jenkins-agent", "offline": False} in nodes

    # Jobs in folders, as Jenkins lists them (folder_depth follows /job/team/).
    names = {j["fullname"] for j in server.get_all_jobs()}
    assert {"team/hello", "team/slow"} <= names
    assert server.get_queue_info() == []

    # The Jenkins Prometheus plugin's names, for existing dashboards.
    scrape = httpx.get(f"{ctl.url}/prometheus", timeout=30).text
    assert "default_jenkins_up 1.0" in scrape
    assert 'default_jenkins_builds_success_build_count{jenkins_job="team/hello"} 1.0' in scrape
    assert 'default_jenkins_builds_aborted_build_count{jenkins_job="team/slow"} 1.0' in scrape
    assert "default_jenkins_executors_online" in scrape


def test_progressive_text_tree_and_basic_auth(controller: tuple[Controller, str]) -> None:
    ctl, user = controller
    auth = (user, ctl.token)
    with httpx.Client(base_url=ctl.url, auth=auth, timeout=30) as c:
        crumb = c.get("/crumbIssuer/api/json").json()
        assert crumb["crumbRequestField"] == "Jenkins-Crumb"
        r = c.post(
            "/job/team/job/hello/buildWithParameters",
            params={"TARGET": "qa"},
            headers={"Jenkins-Crumb": crumb["crumb"]},
        )
        assert r.status_code == 201 and "/queue/item/" in r.headers["location"]
        assert r.headers["x-jenkins"].startswith("2.")
        item = r.headers["location"].rstrip("/").rsplit("/", 1)[1]
        number = wait_until(
            lambda: (c.get(f"/queue/item/{item}/api/json").json().get("executable") or {}).get(
                "number"
            ),
            60,
            what="the build to start",
        )
        wait_until(
            lambda: c.get(f"/job/team/job/hello/{number}/api/json").json()["result"],
            90,
            what="the build to finish",
        )
        whole = c.get(f"/job/team/job/hello/{number}/logText/progressiveText?start=0")
        assert "deploying to qa" in whole.text
        assert int(whole.headers["x-text-size"]) == len(whole.content)
        assert "x-more-data" not in whole.headers  # finished: nothing more will come
        rest = c.get(
            f"/job/team/job/hello/{number}/logText/progressiveText",
            params={"start": whole.headers["x-text-size"]},
        )
        assert rest.content == b"" and rest.headers["x-text-size"] == whole.headers["x-text-size"]
        last = c.get("/job/team/job/hello/lastBuild/api/json?tree=number,result").json()
        assert last == {
            "_class": "hudson.model.FreeStyleBuild",
            "number": number,
            "result": "SUCCESS",
        }
        built = c.get(f"/job/team/job/hello/{number}/api/json").json()
        assert [a["relativePath"] for a in built["artifacts"]] == ["deploy.txt"]
        artifact = c.get(f"/job/team/job/hello/{number}/artifact/deploy.txt")
        assert artifact.status_code == 200 and artifact.text == "deploying to qa in fast mode\n"
        # A build no agent can take waits in the queue; cancelItem takes it out.
        waiting = c.post("/job/team/job/nowhere/build")
        item_id = int(waiting.headers["location"].rstrip("/").rsplit("/", 1)[1])
        queue = c.get("/queue/api/json").json()["items"]
        assert [i["id"] for i in queue] == [item_id]
        assert queue[0]["task"]["name"] == "nowhere" and queue[0]["why"]
        assert c.post(f"/queue/cancelItem?id={item_id}").status_code == 200
        left = c.get(f"/queue/item/{item_id}/api/json").json()
        assert left["cancelled"] is True and left["executable"] is None
        assert c.get("/queue/api/json").json()["items"] == []
        root = c.get("/api/json", params={"tree": "jobs[name,color]"}).json()
        assert root["jobs"] == [
            {"_class": "com.cloudbees.hudson.plugins.folder.Folder", "name": "team"}
        ]
        assert c.get("/api/json?tree=jobs[name").status_code == 400  # a problem, not a 500
        wrong = c.post("/job/team/job/hello/build", headers={"Jenkins-Crumb": "forged"})
        assert wrong.status_code == 403
    # A wrong token, a token of another user, or the login password are refused.
    bad = httpx.get(f"{ctl.url}/api/json", auth=(user, "cvy_wrong"), timeout=30)
    assert bad.status_code == 401
    other = httpx.get(f"{ctl.url}/api/json", auth=("someone-else", ctl.token), timeout=30)
    assert other.status_code == 401
    with pytest.raises(jenkins.JenkinsException):
        jenkins.Jenkins(ctl.url, username=user, password="cvy_wrong").get_whoami()


FREESTYLE = (Path(__file__).parent / "fixtures" / "freestyle.xml").read_text("utf-8")


def test_python_jenkins_manages_jobs_with_config_xml(controller: tuple[Controller, str]) -> None:
    ctl, user = controller
    server = jenkins.Jenkins(ctl.url, username=user, password=ctl.token, timeout=30)
    # Created from config.xml in a folder, read back, changed, deleted.
    server.create_job("team/demo", FREESTYLE)
    assert server.job_exists("team/demo")
    xml = server.get_job_config("team/demo")
    assert "<hudson.tasks.Shell>" in xml and "linux &amp;&amp; docker" in xml
    with ctl.client() as c:
        spec = c.get("/api/v1/jobs/team/demo").json()["spec"]
    assert "name: team/demo" in spec and "cron: H 3 * * 1-5" in spec
    server.reconfig_job("team/demo", xml.replace("make package", "make dist"))
    assert "make dist" in server.get_job_config("team/demo")
    # Unsupported elements: 400 naming them, and the job is unchanged.
    with pytest.raises(requests.HTTPError) as refused:  # python-jenkins lets a 400 through
        server.reconfig_job(
            "team/demo", xml.replace("<keepDependencies>false", "<keepDependencies>true")
        )
    assert refused.value.response.status_code == 400
    detail = refused.value.response.json()["detail"]
    assert "<keepDependencies>true</keepDependencies> is not supported" in detail
    assert "make dist" in server.get_job_config("team/demo")
    with httpx.Client(base_url=ctl.url, auth=(user, ctl.token), timeout=30) as c:
        r = c.post(
            "/createItem",
            params={"name": "broken"},
            content=FREESTYLE.replace("hudson.tasks.Shell>", "hudson.tasks.BatchFile>"),
            headers={"Content-Type": "application/xml"},
        )
        assert r.status_code == 400 and "hudson.tasks.BatchFile" in r.json()["detail"]
        assert c.get("/job/broken/api/json").status_code == 404
        # A one-stage shell job has a config.xml; one with more stages has none (409).
        assert c.get("/job/team/job/slow/config.xml").status_code == 200
        two = "name: team/two\nstages:\n  - {name: a, steps: [sh: a]}\n"
        two += "  - {name: b, steps: [sh: b]}\n"
        with ctl.client() as api:
            assert api.post("/api/v1/jobs", json={"spec": two}).status_code == 201
        refused = c.get("/job/team/job/two/config.xml")
        assert refused.status_code == 409 and "more than one plain stage" in refused.text
    server.delete_job("team/demo")
    assert not server.job_exists("team/demo")


@pytest.mark.parametrize(
    "path",
    [
        "/job/team/job/hello/99999999999999999999999/api/json",
        "/job/team/job/hello/²/api/json",
        "/job/team/job/hello/1/nothing-here",
        "/job/no-such-job/api/json",
        "/queue/item/99999999999999999999/api/json",
        "/queue/item/0/api/json",
    ],
)
def test_odd_paths_are_404_not_500(path: str, odd_client: httpx.Client) -> None:
    assert odd_client.get(path).status_code == 404


@pytest.fixture(scope="module")
def odd_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One controller (SQLite) for the cheap 404 checks."""
    controller = Controller(tmp_path_factory.mktemp("odd") / "controller").start()
    try:
        with controller.client() as c:
            assert c.post("/api/v1/jobs", json={"spec": HELLO}).status_code == 201
            user = c.get("/api/v1/whoami").json()["user"]
        with httpx.Client(base_url=controller.url, auth=(user, controller.token)) as client:
            yield client
    finally:
        controller.stop()
