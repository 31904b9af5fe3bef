"""``notify`` post steps: run by the controller once the build's result is known.

A build is driven through the agent protocol in-process (a prepared Runtime behind the
real FastAPI app) to ``failed``; the post steps then deliver to a real local HTTP
receiver that checks the HMAC signature, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from conveyor.api.app import create_app
from conveyor.core.states import BuildState, StepState
from conveyor.runtime import Runtime
from conveyor.settings import Settings
from conveyor.store.notifications import DELIVERED, FAILED, list_deliveries
from tests.api.conftest import dispatch_once
from tests.api.test_api import create_job, poll, register, trigger
from tests.auth_helpers import split_auth
from tests.conftest import FakeClock, _truncate
from tests.notifications.test_delivery import SECRET, Receiver, receiver  # noqa: F401

SPEC = """\
name: team-a/deploy
parameters:
  - name: TARGET_ENV
    default: staging
stages:
  - name: build
    steps:
      - sh: exit 2
post:
  success:
    - notify: hook
  failure:
    - notify: {notifier: hook, message: "deploy of ${TARGET_ENV} failed ($TARGET_ENV, ${NOPE})"}
    - notify: ghost
  always:
    - echo: bye
"""


@pytest.fixture(params=["sqlite", "postgresql"])
async def runtime(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    clock: FakeClock,
    receiver: Receiver,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Runtime]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'conveyor.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    config = tmp_path / "notifications.yml"
    config.write_text(
        "notifiers:\n"
        f"  hook: {{type: webhook, url: '{receiver.url()}', secret_env: HOOK_SECRET}}\n"
        "rules:\n"
        "  - {jobs: 'team-a/*', on: [failure], notifiers: [hook]}\n"
    )
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    settings = Settings(
        home=tmp_path / "home",
        database_url=url,
        notifications_file=config,
        public_url="https://ci.example.com",
    )
    rt = Runtime.build(settings, clock)
    try:
        if request.param == "postgresql":
            await _truncate(rt.store)
        await rt.prepare()
        yield rt
    finally:
        await rt.stop()


async def run_failed_build(runtime: Runtime) -> int:
    app = create_app(runtime, run_loops=False)
    auth = await split_auth(runtime.store, runtime.first_admin_token)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://conveyor.test", auth=auth
    ) as client:
        await create_job(client, SPEC)
        r = await trigger(client, "team-a/deploy", TARGET_ENV="production")
        assert r.status_code == 201, r.text
        build_id = int(r.json()["id"])
        agent = await register(client, "a1", "linux")
        agent_headers = {"X-Agent-Id": str(agent)}
        assert await dispatch_once(runtime) == 1
        [assignment] = (await poll(client, agent))["assignments"]
        base = f"/agent/v1/assignments/{assignment['assignment_id']}"
        r = await client.post(f"{base}/start", headers=agent_headers)
        assert r.status_code == 200, r.text
        # What the agent gets: the notify steps are in the plan, marked as such.
        post = r.json()["plan"]["post"]["failure"]
        assert [(s["key"], s["kind"], s["notifier"]) for s in post] == [
            ("post.failure.0", "notify", "hook"),
            ("post.failure.1", "notify", "ghost"),
        ]
        step = {"key": "0.0", "state": "failed", "exit_code": 2, "attempt": 1}
        r = await client.post(f"{base}/steps", json=step, headers=agent_headers)
        assert r.status_code == 200, r.text
        step = {"key": "post.always.0", "state": "succeeded", "exit_code": None, "attempt": 1}
        r = await client.post(f"{base}/steps", json=step, headers=agent_headers)
        assert r.status_code == 200, r.text
        r = await client.post(f"{base}/finish", json={"result": "failed"}, headers=agent_headers)
        assert r.status_code == 200, r.text
    await runtime.builds.drain()
    await runtime.notifier.drain()
    return build_id


async def test_post_failure_notify_steps(runtime: Runtime, receiver: Receiver) -> None:  # noqa: F811
    build_id = await run_failed_build(runtime)
    build = await runtime.store.get_build(build_id)
    assert build.state == BuildState.FAILED

    # The rule's delivery and the post step's: same notifier, distinct events.
    from_step = [r for r in receiver.requests if r.json.get("step") == "post.failure.0"]
    from_rule = [r for r in receiver.requests if "step" not in r.json]
    assert len(from_step) == 1 and len(from_rule) == 1
    assert len(receiver.requests) == 2
    [got] = from_step
    assert got.status == 200 and got.signature_ok
    assert got.headers["x-conveyor-event"] == "failure"
    body = got.json
    assert (body["event"], body["id"], body["state"]) == ("failure", build_id, "failed")
    first, second = body["message"].split("\n")
    assert first == "deploy of production failed ($TARGET_ENV, ${NOPE})"
    assert second.startswith(f"team-a/deploy #{build.number} failed")
    assert second.endswith(f"https://ci.example.com/api/v1/builds/{build_id}")

    steps = {s.key: s for s in await runtime.store.build_steps(build_id)}
    assert steps["post.failure.0"].state == StepState.SUCCEEDED
    assert steps["post.failure.0"].exit_code is None
    assert steps["post.failure.0"].started_at is not None
    assert steps["post.failure.0"].finished_at is not None
    assert steps["post.success.0"].state == StepState.SKIPPED  # not this outcome's block
    assert steps["post.always.0"].state == StepState.SUCCEEDED  # the agent's own
    # An unknown notifier: the step fails, the delivery is recorded failed.
    assert steps["post.failure.1"].state == StepState.FAILED
    assert steps["post.failure.1"].exit_code is None

    records = {(r.notifier, r.event): r for r in await list_deliveries(runtime.store, build_id)}
    assert set(records) == {
        ("hook", "failure"),
        ("hook", "post:failure.0"),
        ("ghost", "post:failure.1"),
    }
    assert records["hook", "post:failure.0"].state == DELIVERED
    assert records["hook", "post:failure.0"].reason == "post step post.failure.0"
    assert records["hook", "post:failure.0"].delivery_id == got.headers["x-conveyor-delivery"]
    ghost = records["ghost", "post:failure.1"]
    assert (ghost.state, ghost.attempts, ghost.kind) == (FAILED, 0, "unknown")
    assert ghost.last_error is not None and "'ghost' is not configured" in ghost.last_error

    # Running the steps again (a repeated finish, another controller) sends nothing.
    assert await runtime.notifier.run_post_notify_steps(build) == []
    assert len(receiver.requests) == 2
    steps = {s.key: s for s in await runtime.store.build_steps(build_id)}
    assert steps["post.failure.0"].state == StepState.SUCCEEDED
    assert steps["post.failure.1"].state == StepState.FAILED
