"""A real agent process enrolled with its own token runs a build; revoking the token
disconnects it: the controller refuses its next call (401) and the process stops with
a clear log line and a non-zero exit code."""

from __future__ import annotations

from pathlib import Path

from tests.harness import AgentProcess, Controller, wait_until

SPEC = "name: e2e/hello\nstages:\n  - name: a\n    steps:\n      - sh: echo hello from the agent\n"


def test_revoking_the_enrollment_token_stops_a_real_agent(tmp_path: Path) -> None:
    controller = Controller(tmp_path / "controller").start()
    agent = AgentProcess(controller, "revokee", tmp_path / "agent")
    try:
        agent.start()  # enrols through POST /api/v1/agent-tokens (agent_name=revokee)
        with controller.client() as c:
            assert c.post("/api/v1/jobs", json={"spec": SPEC}).status_code == 201
            build = c.post("/api/v1/jobs/e2e/hello/builds", json={}).json()
            done = wait_until(
                lambda: (
                    (b := c.get(f"/api/v1/builds/{build['id']}").json())["state"]
                    in ("succeeded", "failed")
                    and b
                ),
                60,
                what="the build to finish on the enrolled agent",
            )
            assert done["state"] == "succeeded"
            [token] = [
                t for t in c.get("/api/v1/agent-tokens").json() if t["agent_name"] == "revokee"
            ]
            assert c.delete(f"/api/v1/agent-tokens/{token['id']}").status_code == 204
        assert agent.proc is not None
        code = wait_until(lambda: agent.proc.poll(), 60, what="the agent process to exit")
        assert code == 2
        log = agent.log_path.read_text()
        assert "agent.token_refused" in log
        assert "revoked or expired" in log
        with controller.client() as c:
            audit = c.get("/api/v1/audit", params={"action": "agent_token"}).json()["events"]
        assert [e["action"] for e in audit] == ["agent_token.revoked", "agent_token.created"]
    finally:
        agent.stop()
        controller.stop()
