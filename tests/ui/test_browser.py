"""The web UI in a real browser (Debian's Chromium driven by Playwright) against a
real controller and a real agent: start a parameterized build from the form, watch
its live log and state with no reload, cancel a running build, re-run one, download
an artifact, drain and resume an agent, and screenshot every page (also at 375 px)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.harness import AgentProcess, Controller, wait_agents_online, wait_until
from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS

LOG_LINES = 400

# Generous liveness bounds: this machine is shared, and a slow answer is not a wrong one.
expect.set_options(timeout=60_000)

PARAMS_JOB = f"""
name: ui/params
description: Parameters from the form, a coloured log, an artifact
parameters:
  - name: TARGET
    type: choice
    choices: [alpha, beta]
    default: alpha
  - name: FLAG
    type: boolean
    default: false
  - name: WHO
    type: string
    default: world
stages:
  - name: build
    steps:
      - sh: |
          for i in $(seq 1 {LOG_LINES}); do echo "filler line $i"; done
          sleep 2
          printf '\\033[31mred alert\\033[0m and \\033[1;32mbold green\\033[0m\\n'
          echo "hello $WHO target=$TARGET flag=$FLAG"
          printf 'artifact-bytes-%s' "$WHO" > out.txt
  - name: publish
    steps:
      - archive: out.txt
      - echo: LAST LINE
"""

BIG_LOG_JOB = """
name: ui/biglog
stages:
  - name: print
    steps:
      - sh: seq 1 200000 | sed 's/^/row /'
"""

SLOW_JOB = """
name: ui/slow
stages:
  - name: wait
    steps:
      - sh: |
          echo "slow build started"
          sleep 300
"""


@pytest.fixture(scope="module")
def conveyor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Controller]:
    base = tmp_path_factory.mktemp("ui")
    controller = Controller(base / "controller").start()
    agent = AgentProcess(controller, "ui-agent", base / "agent", executors=2).start()
    try:
        wait_agents_online(controller, 1)
        with controller.client() as c:
            for spec in (PARAMS_JOB, SLOW_JOB, BIG_LOG_JOB):
                assert c.post("/api/v1/jobs", json={"spec": spec}).status_code == 201
            # The browser signs in through the form as a real user (docs/security.md).
            user = {"name": UI_USER, "password": UI_PASSWORD, "role": "admin"}
            assert c.post("/api/v1/users", json=user).status_code == 201
            # An elastic pool: the leader's autoscaler starts its agent (a real local
            # process) and records why, for the pool pages.
            assert c.post("/api/v1/pools", json=UI_POOL).status_code == 201
        yield controller
    finally:
        agent.stop()
        controller.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


UI_USER, UI_PASSWORD = "ui-admin", "a-long-ui-password"
UI_POOL = {
    "name": "ui-pool",
    "labels": ["ui-pool"],
    "min": 1,
    "max": 2,
    "provider": "local",
    "policy": {
        "periods": [{"name": "always", "cron": "* * * * *", "timezone": "Europe/Berlin", "min": 1}]
    },
}


def _sign_in(page: Page, next_path: str = "/ui/") -> None:
    """Through the real sign-in form: a session cookie and a CSRF cookie result."""
    page.goto(next_path)
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.get_by_label("User name").fill(UI_USER)
    page.get_by_label("Password").fill(UI_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(re.escape(next_path) + "$"))


def _context(browser: Browser, conveyor: Controller, **options: Any) -> BrowserContext:
    context = browser.new_context(base_url=conveyor.url, accept_downloads=True, **options)
    context.set_default_timeout(60_000)
    _sign_in(context.new_page())
    return context


@pytest.fixture
def page(browser: Browser, conveyor: Controller) -> Iterator[Page]:
    context = _context(browser, conveyor)
    try:
        yield context.new_page()
    finally:
        context.close()


def _mark(page: Page) -> None:
    """A value that only survives as long as the document does: a reload loses it."""
    page.evaluate("window.__noReload = 'still here'")


def _not_reloaded(page: Page) -> bool:
    return bool(page.evaluate("window.__noReload === 'still here'"))


def test_start_parameterized_build_follow_log_and_download(
    page: Page, conveyor: Controller, screenshots: Path
) -> None:
    page.goto("/ui/jobs/ui/params")
    page.get_by_label("TARGET").select_option("beta")
    page.get_by_label("FLAG").check()
    page.get_by_label("WHO").fill("playwright")
    page.get_by_role("button", name="Start build").click()
    page.wait_for_url(re.compile(r"/ui/builds/\d+$"))
    build_id = int(page.url.rsplit("/", 1)[1])
    _mark(page)

    log = page.locator("[data-log-lines]")
    # The page was opened while the build sleeps: the rest arrives through SSE.
    expect(log).to_contain_text("LAST LINE", timeout=90_000)
    expect(page.locator("#live [data-build-state]")).to_have_attribute(
        "data-build-state", "succeeded", timeout=60_000
    )
    assert _not_reloaded(page), "the page reloaded instead of updating in place"

    expect(log).to_contain_text("hello playwright target=beta flag=true")
    red = log.locator("span.ansi-fg-1", has_text="red alert")
    expect(red).to_have_count(1)
    expect(log.locator("span.ansi-fg-2.ansi-bold", has_text="bold green")).to_have_count(1)
    assert "\x1b" not in log.inner_text()
    # Absolute line numbers with anchors: filler line 400 is line 400 + the lines before.
    filler = log.locator(".line", has_text=f"filler line {LOG_LINES}")
    number = int(filler.locator("a.ln").inner_text())
    assert filler.get_attribute("id") == f"L{number}"
    assert filler.locator("a.ln").get_attribute("href") == f"#L{number}"

    with conveyor.client() as c:
        build = c.get(f"/api/v1/builds/{build_id}").json()
    assert build["parameters"] == {"TARGET": "beta", "FLAG": "true", "WHO": "playwright"}

    link = page.get_by_role("link", name="out.txt")
    expect(link).to_be_visible(timeout=30_000)
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert Path(download.path()).read_bytes() == b"artifact-bytes-playwright"
    assert download.suggested_filename == "out.txt"
    page.screenshot(path=str(screenshots / "build-succeeded.png"), full_page=True)


def test_cancel_a_running_build(page: Page, conveyor: Controller, screenshots: Path) -> None:
    with conveyor.client() as c:
        build_id = c.post("/api/v1/jobs/ui/slow/builds", json={"parameters": {}}).json()["id"]
    page.goto(f"/ui/builds/{build_id}")
    _mark(page)
    expect(page.locator("[data-log-lines]")).to_contain_text("slow build started", timeout=60_000)
    expect(page.locator("#live [data-build-state]")).to_have_attribute(
        "data-build-state", "running"
    )
    page.screenshot(path=str(screenshots / "build-running.png"), full_page=True)
    page.get_by_role("button", name="Cancel build").click()
    expect(page.locator("#live [data-build-state]")).to_have_attribute(
        "data-build-state", "cancelled", timeout=60_000
    )
    expect(page.get_by_role("button", name="Cancel build")).to_be_hidden()
    expect(page.get_by_role("button", name="Re-run with the same parameters")).to_be_visible()
    assert _not_reloaded(page)


def test_rerun_with_the_same_parameters(page: Page, conveyor: Controller) -> None:
    with conveyor.client() as c:
        first = c.post(
            "/api/v1/jobs/ui/params/builds",
            json={"parameters": {"TARGET": "beta", "WHO": "again", "FLAG": "false"}},
        ).json()["id"]
    page.goto(f"/ui/builds/{first}")
    button = page.get_by_role("button", name="Re-run with the same parameters")
    expect(button).to_be_visible(timeout=90_000)
    button.click()
    page.wait_for_url(re.compile(rf"/ui/builds/(?!{first}$)\d+$"))
    second = int(page.url.rsplit("/", 1)[1])
    assert second != first
    with conveyor.client() as c:
        params = c.get(f"/api/v1/builds/{second}").json()["parameters"]
    assert params == {"TARGET": "beta", "WHO": "again", "FLAG": "false"}


def test_drain_and_resume_an_agent(page: Page, conveyor: Controller) -> None:
    # The login session's CSRF cookie is echoed in X-CSRF-Token on every action.
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "conveyor_csrf")
    posts: list[dict[str, str]] = []

    def on_request(request: Any) -> None:
        if request.method == "POST":
            posts.append(request.headers)

    page.on("request", on_request)
    page.goto("/ui/agents")
    card = page.locator("article.agent", has_text="ui-agent")
    expect(card.locator(".state")).to_have_text("online")
    card.get_by_role("button", name="Drain ui-agent").click()
    expect(card.locator(".state")).to_have_text("draining", timeout=30_000)
    card.get_by_role("button", name="Resume ui-agent").click()
    expect(card.locator(".state")).to_have_text("online", timeout=30_000)
    assert len(posts) == 2
    assert all(h.get("x-csrf-token") == csrf for h in posts), posts


def test_disable_and_enable_a_job_and_delete_a_build(page: Page, conveyor: Controller) -> None:
    spec = "name: ui/toggle\nstages:\n  - name: s\n    steps:\n      - echo: hi\n"
    with conveyor.client() as c:
        assert c.post("/api/v1/jobs", json={"spec": spec}).status_code == 201
        build_id = c.post("/api/v1/jobs/ui/toggle/builds", json={}).json()["id"]
        wait_until(
            lambda: c.get(f"/api/v1/builds/{build_id}").json()["state"] == "succeeded",
            90,
            what="the ui/toggle build to finish",
        )
    page.goto("/ui/jobs/ui/toggle")
    state = page.locator("#job-state .state")
    expect(state).to_have_text("enabled")
    page.get_by_role("button", name="Disable job").click()
    expect(state).to_have_text("disabled", timeout=30_000)
    page.get_by_role("button", name="Start build").click()
    expect(page.locator(".form-error")).to_contain_text("'ui/toggle' is disabled")
    page.get_by_role("button", name="Enable job").click()
    expect(state).to_have_text("enabled", timeout=30_000)

    page.goto(f"/ui/builds/{build_id}")
    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete build").click()
    page.wait_for_url(re.compile(r"/ui/jobs/ui/toggle$"))
    with conveyor.client() as c:
        assert c.get(f"/api/v1/builds/{build_id}").status_code == 404
        assert c.delete("/api/v1/jobs/ui/toggle").status_code == 204


def test_sign_in_lands_on_the_page_asked_for_and_sign_out_ends_the_session(
    browser: Browser, conveyor: Controller
) -> None:
    context = browser.new_context(base_url=conveyor.url)
    context.set_default_timeout(60_000)
    try:
        page = context.new_page()
        page.goto("/login")
        page.get_by_label("User name").fill(UI_USER)
        page.get_by_label("Password").fill("not-the-password")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_be_visible()
        _sign_in(page, "/ui/agents")
        expect(page.locator("article.agent", has_text="ui-agent")).to_be_visible()
        page.get_by_role("button", name=re.compile("Sign out|Log out", re.I)).click()
        page.goto("/ui/jobs")
        expect(page).to_have_url(re.compile(r"/login\?next="))
    finally:
        context.close()


def _line_number(page: Page, text: str) -> int:
    line = page.locator("[data-log-lines] .line", has_text=re.compile(rf"^\d+{text}$"))
    expect(line).to_have_count(1)
    number = int(line.locator("a.ln").inner_text())
    assert line.get_attribute("id") == f"L{number}"
    return number


def test_a_big_log_loads_its_tail_and_pages_back(page: Page, conveyor: Controller) -> None:
    with conveyor.client() as c:
        build_id = c.post("/api/v1/jobs/ui/biglog/builds", json={"parameters": {}}).json()["id"]
    wait_until(lambda: _finished(conveyor, build_id), 120, what="the big-log build")
    page.goto(f"/ui/builds/{build_id}")
    log = page.locator("[data-log-lines]")
    expect(log).to_contain_text("row 200000")
    expect(page.locator("[data-log-status]")).to_contain_text("Build succeeded")
    # Only the tail is in the page (about 256 KB of a 2.3 MB log), numbered truly.
    shown = log.locator(".line").count()
    assert 10_000 < shown < 40_000, shown
    header = _line_number(page, "row 200000") - 200000
    assert header >= 1  # the step's header line comes first
    first_shown = int(log.locator(".line").first.locator("a.ln").inner_text())
    older = page.get_by_role("button", name="Load older lines")
    older.click()
    expect(log.locator(f"#L{first_shown - 1}")).to_have_count(1)
    row = first_shown - 1 - header
    assert _line_number(page, f"row {row}") == first_shown - 1
    assert log.locator(".line").count() > shown

    # A link to an early line shows the part of the log around it, and marks it:
    # followed on the page (hash change) and opened afresh.
    for fresh in (False, True):
        if fresh:
            page.goto("about:blank")
        page.goto(f"/ui/builds/{build_id}#L{header + 5}")
        target = log.locator(f"#L{header + 5}")
        expect(target).to_have_text(f"{header + 5}row 5")
        expect(target).to_have_class(re.compile("hl"))
        expect(older).to_be_hidden()
        assert log.locator(".line").count() < 40_000
    newer = page.get_by_role("button", name="Load newer lines")
    last_shown = int(log.locator(".line").last.locator("a.ln").inner_text())
    newer.click()
    expect(log.locator(f"#L{last_shown + 1}")).to_have_text(
        f"{last_shown + 1}row {last_shown + 1 - header}"
    )


def _finished(conveyor: Controller, build_id: int) -> bool:
    with conveyor.client() as c:
        return c.get(f"/api/v1/builds/{build_id}").json()["result"] == "succeeded"


def test_ui_events_announce_changes(conveyor: Controller) -> None:
    headers = {"Authorization": f"Bearer {conveyor.token}"}
    with (
        httpx.Client(base_url=conveyor.url, headers=headers, timeout=60) as c,
        c.stream("GET", "/ui/events") as events,
    ):
        assert events.status_code == 200
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.iter_lines()
        assert "event: ready" in [next(lines), next(lines)]
        build = c.post("/api/v1/jobs/ui/slow/builds", json={"parameters": {}}).json()["id"]
        try:
            for line in lines:  # a change within a few seconds (read timeout: 60 s)
                if line == "event: change":
                    break
        finally:
            c.post(f"/api/v1/builds/{build}/cancel")


def test_the_dashboard_follows_changes_without_reloading(page: Page, conveyor: Controller) -> None:
    page.goto("/ui/")
    _mark(page)
    with conveyor.client() as c:
        build = c.post("/api/v1/jobs/ui/slow/builds", json={"parameters": {}}).json()
    try:
        # Sooner than the 30 s safety-net poll: the /ui/events stream said so.
        expect(page.locator("#live")).to_contain_text(f"ui/slow #{build['number']}", timeout=25_000)
    finally:
        with conveyor.client() as c:
            c.post(f"/api/v1/builds/{build['id']}/cancel")
    assert _not_reloaded(page)


PAGES = {
    "dashboard": "/ui/",
    "jobs": "/ui/jobs",
    "job": "/ui/jobs/ui/params",
    "job-diff": "/ui/jobs/ui/params?diff_from=1&diff_to=1",
    "build": "/ui/builds/1",
    "agents": "/ui/agents",
    "pools": "/ui/pools",
    "pool": "/ui/pools/ui-pool",
    "cluster": "/ui/cluster",
}


def test_every_page_renders_and_is_screenshotted(
    browser: Browser, conveyor: Controller, screenshots: Path
) -> None:
    wait_until(lambda: _has_finished_build(conveyor), 120, what="a finished build")
    for width, suffix in ((1280, ""), (375, "-375px")):
        context = _context(browser, conveyor, viewport={"width": width, "height": 800})
        try:
            page = context.new_page()
            errors: list[Any] = []

            def on_error(exc: Any, errors: list[Any] = errors) -> None:
                errors.append(exc)

            page.on("pageerror", on_error)
            for name, path in PAGES.items():
                response = page.goto(path)
                assert response is not None and response.status == 200, (name, response)
                expect(page.locator("h1")).to_be_visible()
                # Usable at 375 px: nothing makes the page itself scroll sideways
                # (wide tables scroll inside their own box).
                overflow = page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 1, f"{name} at {width}px overflows by {overflow}px"
                page.screenshot(path=str(screenshots / f"{name}{suffix}.png"), full_page=True)
            assert not errors, errors
        finally:
            context.close()
    assert (screenshots / "dashboard-375px.png").stat().st_size > 0


def test_pool_pages_show_the_autoscalers_real_decision(
    page: Page, conveyor: Controller, screenshots: Path
) -> None:
    def first_decision() -> Any:
        with conveyor.client() as c:
            found = c.get("/api/v1/pools/ui-pool/decisions").json()
        return found[-1] if found else None

    decision = wait_until(first_decision, 60, interval=0.5, what="the autoscaler's decision")
    assert decision["reason"].startswith("pool ui-pool 0 → 1: below the minimum 1")
    page.goto("/ui/agents")
    page.get_by_role("link", name="Pools", exact=True).first.click()
    expect(page).to_have_url(re.compile(r"/ui/pools$"))
    row = page.locator("tr#pool-ui-pool")
    expect(row).to_contain_text("local")
    expect(row).to_contain_text(decision["reason"])
    row.get_by_role("link", name="ui-pool").click()
    expect(page).to_have_url(re.compile(r"/ui/pools/ui-pool$"))
    expect(page.locator("h1")).to_have_text("Pool ui-pool")
    expect(page.locator("table.decisions")).to_contain_text(decision["reason"])
    expect(page.locator("table.periods tr.in-effect")).to_contain_text("always")
    # The pool's agent registers (a real process the autoscaler started).
    expect(page.locator("table.pool-agents")).to_contain_text("online", timeout=90_000)
    expect(page.locator("svg.chart circle")).not_to_have_count(0)
    page.screenshot(path=str(screenshots / "pool-decision.png"), full_page=True)


def test_keyboard_reaches_the_start_button(page: Page) -> None:
    page.goto("/ui/jobs/ui/params")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Start build":
            break
    else:
        raise AssertionError("the Start build button is not reachable with Tab")


def _has_finished_build(conveyor: Controller) -> bool:
    with conveyor.client() as c:
        build = c.get("/api/v1/builds/1").json()
    return build["result"] is not None
