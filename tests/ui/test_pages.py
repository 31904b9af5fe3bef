"""Server-rendered pages over plain HTTP (in process, SQLite and PostgreSQL): status,
key content, who may see which action, the login redirect, error pages, the log
viewer's windows with absolute line numbers, version diffs and trend charts."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI

from conveyor.core.permissions import Permission, Role
from conveyor.core.states import BuildState
from conveyor.runtime import Runtime
from conveyor.store import dashboard
from conveyor.store.dashboard import RecentBuild
from conveyor.store.failures import record_failure_analysis
from conveyor.web import charts, logwindow, routes_ui
from conveyor.web.permissions import can
from tests.api.conftest import _client, dispatch_once
from tests.auth_helpers import user_token
from tests.conftest import FakeClock

SPEC = """
name: team/app
description: The app
parameters:
  - name: ENV
    type: choice
    choices: [dev, prod]
    default: prod
  - name: FAST
    type: boolean
    default: true
  - name: NOTE
    type: string
    default: hi there
stages:
  - name: build
    steps:
      - sh: echo build
  - name: test
    steps:
      - sh: echo test
"""

PAGES = ["/ui/", "/ui/jobs", "/ui/jobs/team/app", "/ui/builds/1", "/ui/agents", "/ui/cluster"]


async def _job_with_build(client: httpx.AsyncClient) -> dict[str, object]:
    assert (await client.post("/api/v1/jobs", json={"spec": SPEC})).status_code == 201
    r = await client.post("/api/v1/jobs/team/app/builds", json={"parameters": {"ENV": "dev"}})
    assert r.status_code == 201
    return dict(r.json())


async def _running_build(runtime: Runtime, clock: FakeClock) -> tuple[int, str, int]:
    """Build 1 assigned to a registered agent and started: (build id, assignment, agent)."""
    agent = await runtime.store.register_agent("box-1", ["linux"], 2, "1.0", clock())
    assert await dispatch_once(runtime) == 1
    [item] = await runtime.store.agent_inbox(agent.id)
    await runtime.store.start_build(item.assignment_id, agent.id, clock())
    return item.build_id, item.assignment_id, agent.id


async def test_every_page_renders_with_its_key_content(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    await _job_with_build(client)
    await _running_build(runtime, clock)
    expected = {
        "/ui/": ["Running", "team/app #1", "Queue", "box-1", "Success rate, last 24 hours"],
        "/ui/jobs": ["team", "app", "The app", "#1"],
        "/ui/jobs/team/app": ["Start a build", "Build history", "Version 1", "#1"],
        "/ui/builds/1": ["team/app #1", "Stages", "Artifacts", "Cancel build", "box-1"],
        "/ui/agents": ["box-1", "linux", "1 busy, 1 idle of 2", "Drain"],
        "/ui/cluster": ["Leader", "Epoch", "Database", "Schema", "(current)"],
    }
    for path, fragments in expected.items():
        r = await client.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert r.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in r.headers["content-security-policy"]
        for fragment in fragments:
            assert fragment in r.text, (path, fragment)
        # Live parts are the same template, rendered alone.
        live = await client.get(path, params={"fragment": "live"})
        assert live.status_code == 200 and "<html" not in live.text
    assert (await client.get("/ui/static/app.js")).status_code == 200
    assert (await client.get("/ui/static/nope.js")).status_code == 404


async def test_the_parameters_form_follows_the_spec(client: httpx.AsyncClient) -> None:
    await _job_with_build(client)
    html = (await client.get("/ui/jobs/team/app")).text
    assert re.search(r'<label for="param-ENV">ENV', html)
    assert re.search(r'<select id="param-ENV" name="ENV">', html)
    assert '<option value="prod" selected>' in html
    assert re.search(r'<input type="checkbox" id="param-FAST" name="FAST"[^>]*checked', html)
    assert re.search(r'<input type="text" id="param-NOTE" name="NOTE" value="hi there"', html)
    assert 'data-trigger="/api/v1/jobs/team/app/builds"' in html


async def test_a_read_only_token_is_offered_no_actions(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    await _job_with_build(client)
    await runtime.store.register_agent("box-1", ["linux"], 2, "1.0", clock())
    token = await user_token(runtime.store, "viewer", Role.VIEWER)
    async with _client(app, {"Authorization": f"Bearer {token}"}) as viewer:
        for path in ("/ui/jobs/team/app", "/ui/builds/1", "/ui/agents"):
            r = await viewer.get(path)
            assert r.status_code == 200
            for action in ("Start build", "Cancel build", "Re-run", ">Drain<", "data-post"):
                assert action not in r.text, (path, action)
            assert "viewer" in r.text
    admin = (await client.get("/ui/agents")).text
    assert "Drain" in admin


def test_can_asks_the_permission_each_action_needs() -> None:
    class Who:
        """A caller holding ``held`` permissions on jobs under ``prefix``."""

        def __init__(self, held: set[Permission], prefix: str = "") -> None:
            self.held, self.prefix = held, prefix

        def can(self, permission: Permission, job: str | None = None) -> bool:
            on_job = job is None or job.startswith(self.prefix)
            return permission in self.held and on_job

    viewer = Who({Permission.JOB_READ})
    assert not any(can(viewer, a) for a in ("trigger", "cancel", "rerun", "drain"))
    developer = Who({Permission.BUILD_TRIGGER, Permission.BUILD_CANCEL}, "team-a/")
    assert can(developer, "trigger", "team-a/b") and not can(developer, "trigger", "team-b/x")
    assert not can(developer, "drain")
    admin = Who(set(Permission))
    assert all(can(admin, a) for a in ("trigger", "cancel", "rerun", "drain", "resume"))
    assert not can(None, "trigger")
    with pytest.raises(ValueError, match="unknown UI action"):
        can(Who("admin"), "delete-everything")


async def test_without_credentials_pages_redirect_to_login(anon: httpx.AsyncClient) -> None:
    r = await anon.get("/ui/jobs/team/app", params={"cursor": 5})
    assert r.status_code == 303
    assert r.headers["location"] == "/login?next=/ui/jobs/team/app%3Fcursor%3D5"
    r = await anon.get("/")
    assert r.status_code == 303 and r.headers["location"] == "/ui/"


async def test_unknown_things_get_an_html_error_page(client: httpx.AsyncClient) -> None:
    for path, status in [("/ui/builds/999", 404), ("/ui/jobs/nope", 404)]:
        r = await client.get(path)
        assert r.status_code == status and "text/html" in r.headers["content-type"]
        assert "not found" in r.text
    await _job_with_build(client)
    r = await client.get("/ui/jobs/team/app", params={"diff_from": 1, "diff_to": 7})
    assert r.status_code == 400 and "versions 1 to 1" in r.text
    assert (await client.get("/ui/jobs/team/app", params={"version": 9})).status_code == 404


async def test_version_history_and_diff(client: httpx.AsyncClient) -> None:
    await _job_with_build(client)
    changed = SPEC.replace("echo test", "echo test again")
    assert (await client.put("/api/v1/jobs/team/app", json={"spec": changed})).status_code == 200
    html = (await client.get("/ui/jobs/team/app", params={"diff_from": 1, "diff_to": 2})).text
    assert '<span class="del">-      - sh: echo test</span>' in html
    assert '<span class="add">+      - sh: echo test again</span>' in html
    assert "Version 2" in html and "Version 1" in html
    old = (await client.get("/ui/jobs/team/app", params={"version": 1})).text
    assert "echo test again" not in old.split('class="spec"')[1].split("</pre>")[0]


async def test_history_pages_with_a_cursor(client: httpx.AsyncClient) -> None:
    await _job_with_build(client)
    for _ in range(29):
        await client.post("/api/v1/jobs/team/app/builds", json={"parameters": {}})
    first = (await client.get("/ui/jobs/team/app")).text
    assert ">#30<" in first and ">#6<" in first and ">#5<" not in first
    older = re.search(r'href="/ui/jobs/team/app\?cursor=(\d+)" rel="next"', first)
    assert older is not None
    second = (await client.get("/ui/jobs/team/app", params={"cursor": older.group(1)})).text
    assert ">#5<" in second and ">#1<" in second and ">#6<" not in second


async def test_log_windows_page_backwards_with_absolute_line_numbers(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _job_with_build(client)
    build_id, assignment, agent = await _running_build(runtime, clock)
    lines = [f"line {i} \x1b[32mgreen\x1b[0m é\n".encode() for i in range(1, 3001)]
    data = b"".join(lines)
    for seq, start in enumerate(range(0, len(data), 10_000)):
        chunk = data[start : start + 10_000]
        await runtime.store.append_log(assignment, agent, seq, start, chunk)
    monkeypatch.setattr(logwindow, "WINDOW", 8 * 1024)

    async def window(**params: int) -> dict[str, object]:
        r = await client.get(f"/ui/builds/{build_id}/log-window", params=params)
        assert r.status_code == 200
        return dict(r.json())

    for phase in ("live chunks", "compacted blob"):
        tail = await window()
        assert tail["end"] == tail["size"] == len(data), phase
        text = str(tail["text"])
        first_line = int(str(tail["first_line"]))
        # The window starts at a line start, and its first line has its true number.
        assert text.startswith(f"line {first_line} "), phase
        assert text.endswith("line 3000 \x1b[32mgreen\x1b[0m é\n")
        older = await window(end=int(str(tail["start"])), end_line=first_line)
        assert older["end"] == tail["start"]
        assert str(older["text"]).startswith(f"line {older['first_line']} ")
        assert int(str(older["first_line"])) + str(older["text"]).count("\n") == first_line
        assert (await window(end=0))["text"] == ""
        # Around a line (50 lines of context above it), then onwards from there.
        around = await window(line=1000)
        assert around["first_line"] == 950
        assert str(around["text"]).startswith("line 950 ")
        assert str(around["text"]).endswith("\n") and int(str(around["end"])) < len(data)
        after = await window(
            start=int(str(around["end"])), start_line=950 + str(around["text"]).count("\n")
        )
        assert str(after["text"]).startswith(f"line {after['first_line']} ")
        assert await window(line=99_999) == tail  # no such line: the tail
        r = await client.get(f"/ui/builds/{build_id}/log-window", params={"start": 0})
        assert r.status_code == 400 and "start_line" in r.text
        if phase == "live chunks":
            await runtime.store.finish_build(assignment, agent, BuildState.SUCCEEDED, None, clock())
            await runtime.builds.compact_log(build_id)
            assert (await runtime.store.get_build(build_id)).log_blob is not None


def test_a_cut_utf8_sequence_is_left_for_the_next_window() -> None:
    text = "ab é€😀".encode()
    assert logwindow.complete_utf8_length(text) == len(text)
    for cut in range(1, 4):
        assert logwindow.complete_utf8_length(text[:-cut]) == len(text) - 4
    assert logwindow.complete_utf8_length(b"") == 0


async def test_trends_bucket_finished_builds_by_hour_and_day(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    await _job_with_build(client)
    build_id, assignment, agent = await _running_build(runtime, clock)
    clock.advance(90)
    await runtime.store.finish_build(assignment, agent, BuildState.FAILED, "boom", clock())
    trends = await dashboard.build_trends(runtime.store, clock())
    hours, days = trends.hours, trends.days
    assert len(hours) == 24 and len(days) == 7
    assert hours[-1].start == clock().replace(minute=0, second=0, microsecond=0)
    assert (hours[-1].total, hours[-1].succeeded) == (1, 0)
    assert hours[-1].mean_seconds == pytest.approx(90, abs=1)
    assert sum(p.total for p in hours[:-1]) == 0
    assert days[-1].total == 1 and days[-1].success_rate == 0
    # Far enough in the future, the build falls out of the window.
    later = clock() + timedelta(days=8)
    assert sum(p.total for p in (await dashboard.build_trends(runtime.store, later)).days) == 0
    recent = await dashboard.recent_builds_per_job(runtime.store, ["team/app"])
    assert [b.state for b in recent["team/app"]] == [BuildState.FAILED]
    html = (await client.get(f"/ui/builds/{build_id}")).text
    assert "boom" in html and "Re-run with the same parameters" in html


async def test_trend_charts_refresh_in_the_background(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _job_with_build(client)
    _, assignment, agent = await _running_build(runtime, clock)
    before = (await client.get("/ui/")).text
    assert "Success rate, last 24 hours: no builds" in before
    await runtime.store.finish_build(assignment, agent, BuildState.SUCCEEDED, None, clock())
    # Within the cache period the page shows the charts it has.
    assert "last 24 hours: no builds" in (await client.get("/ui/")).text
    monkeypatch.setattr(routes_ui, "TREND_CACHE_SECONDS", 0.0)
    routes_ui._trend_cache[id(runtime)].expires = 0.0
    stale = (await client.get("/ui/")).text  # served at once, refresh started
    assert "last 24 hours: no builds" in stale
    refresh = routes_ui._trend_cache[id(runtime)].refresh
    if refresh is not None:  # it may have finished while the page was served
        await refresh
    fresh = (await client.get("/ui/")).text
    assert "Success rate, last 24 hours: 100% succeeded (1 builds)" in fresh


def test_charts_and_figures_read_well() -> None:
    recent = [
        RecentBuild(id=i, number=i, state=BuildState.SUCCEEDED, duration_seconds=i * 10.0)
        for i in (3, 2, 1)
    ]
    svg = str(charts.sparkline(recent))
    assert svg.count("<rect") == 3 and "#3 succeeded 30 s" in svg
    assert 'aria-label="last 3 builds, longest 30 s"' in svg
    assert "no builds" in str(charts.sparkline([]))
    assert charts.human_duration(None) == "–" and charts.human_duration(3725) == "1 h 02 min"
    assert charts.figure("memory_total", 25276203008) == "23.5 GiB"
    assert charts.figure("net_recv_bytes", 512) == "512 B"
    assert charts.figure("load1", 9.5458984375) == "9.55"
    assert charts.figure("processes", 12345) == "12,345"


async def test_a_login_session_gets_a_logout_form_with_its_csrf_token(
    app: FastAPI, runtime: Runtime
) -> None:
    headers = {"Authorization": f"Bearer {runtime.first_admin_token}"}
    async with _client(app, headers) as c:
        plain = (await c.get("/ui/cluster")).text
        assert "Signed in as <strong" in plain and 'action="/logout"' not in plain
        c.cookies.set("conveyor_session", "s", domain="conveyor.test")
        c.cookies.set("conveyor_csrf", "csrf-xyz", domain="conveyor.test")
        html = (await c.get("/ui/cluster")).text
    assert '<form method="post" action="/logout"' in html
    assert '<input type="hidden" name="csrf_token" value="csrf-xyz">' in html


async def test_a_failed_build_shows_why_with_a_link_to_the_line(
    client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    await _job_with_build(client)
    build_id, assignment, agent = await _running_build(runtime, clock)
    await runtime.store.finish_build(assignment, agent, BuildState.FAILED, "step failed", clock())
    detail = {"pattern": "pytest", "line_number": 42, "line": "FAILED tests/test_x.py::test_y"}
    await record_failure_analysis(runtime.store, build_id, "test", "a test failed", detail)
    html = (await client.get(f"/ui/builds/{build_id}")).text
    assert "Why it failed" in html
    assert "<strong data-failure-category>test</strong>" in html
    assert '<a href="#L42">line 42</a>' in html
    assert "FAILED tests/test_x.py::test_y" in html


async def test_the_dashboard_shows_running_builds_and_agents_only_to_who_may_see_them(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    await _job_with_build(client)
    await _running_build(runtime, clock)
    everyone = await user_token(runtime.store, "reader", Role.VIEWER)
    elsewhere = await user_token(runtime.store, "other-dev", Role.DEVELOPER, "other/*")
    async with _client(app, {"Authorization": f"Bearer {everyone}"}) as reader:
        page = (await reader.get("/ui/")).text
    assert "team/app" in page and "box-1" in page
    async with _client(app, {"Authorization": f"Bearer {elsewhere}"}) as dev:
        r = await dev.get("/ui/")
    assert r.status_code == 200
    assert "team/app" not in r.text and "box-1" not in r.text
