"""The pool pages (/ui/pools, /ui/pools/NAME) over plain HTTP, in process, on SQLite
and PostgreSQL: a real autoscaler step (the provider is a recording fake, a seam we
own) records a decision, and the pages show its reason, the schedule period in
effect, the agents, the size chart, and never a provider secret."""

from __future__ import annotations

from datetime import timedelta

import httpx
from fastapi import FastAPI

from conveyor.core.permissions import Role
from conveyor.runtime import Runtime
from conveyor.store.pools import ScalingDecisionRecord, update_pool
from conveyor.web import charts
from tests.api.conftest import _client
from tests.auth_helpers import user_token
from tests.conftest import FakeClock
from tests.scaling.test_autoscaler import RecordingProvider, autoscaler, register

SECRET = "k8s-bearer-" + "9f3c1d2e7a"
SEALED_VALUE = {"$sealed": "c2VhbGVkLWJ5dGVz", "key_id": "0123456789abcdef"}

POOL = {
    "name": "linux",
    "labels": ["linux", "docker"],
    "min": 1,
    "max": 3,
    "provider": "kubernetes",
    "provider_config": {"api_url": "http://127.0.0.1:1", "image": "agent:1", "token_file": "/t"},
    "policy": {
        "scale_up_wait_seconds": 30,
        # The fake clock starts on Monday 2026-01-05 at 12:00 UTC.
        "periods": [
            {"name": "weekdays", "cron": "* 8-18 * * 1-5", "timezone": "UTC", "min": 1},
            {"name": "lunch", "cron": "* 12 * * *", "timezone": "Europe/London", "min": 2},
            {"name": "weekends", "cron": "* * * * 6,0", "min": 0, "max": 1},
        ],
    },
}


async def test_pool_pages_show_bounds_period_agents_and_a_real_decision(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    r = await client.post("/api/v1/pools", json=POOL)
    assert r.status_code == 201, r.text
    # As stored by an older version (a token in clear) and sealed (providers/secrets.py):
    # the pages show neither.
    config = {**POOL["provider_config"], "token": SECRET, "env": {"X_TOKEN": SEALED_VALUE}}  # type: ignore[dict-item]
    await update_pool(runtime.store, "linux", {"provider_config": config}, clock())
    provider = RecordingProvider()
    scaler = autoscaler(runtime.store, clock, "ui-test", provider)
    assert await scaler.lease.run_once()
    [decision] = await scaler.run_once()
    assert decision.reason.startswith("pool linux 0 → 2: below the minimum 2 of period lunch")
    first, _second = provider.launches
    await register(runtime.store, clock, first)
    clock.advance(60)

    listing = await client.get("/ui/pools")
    assert listing.status_code == 200
    text = listing.text
    assert '<a href="/ui/pools/linux">linux</a>' in text
    assert "kubernetes" in text and '<code class="label">docker</code>' in text
    assert "2 / <strong>2</strong> / 3" in text and "(lunch)" in text
    assert decision.reason.replace("→", "&#8594;") in text or decision.reason in text
    assert SECRET not in text

    page = await client.get("/ui/pools/linux")
    assert page.status_code == 200
    html = page.text
    # The decision with its reason, time and controller-side numbers.
    assert decision.reason in html
    assert "0 → 2" in html and "<code>schedule-min</code>" in html
    # The policy and its periods: "lunch" is in effect (the last matching one wins),
    # "weekdays" matches but is overridden, "weekends" does not match.
    assert "in effect" in html
    assert "matches, but a later period wins" in html
    rows = html.split('<table class="periods">', 1)[1].split("</table>", 1)[0]
    lunch_row = rows.split("<td>lunch</td>", 1)[0].rsplit("<tr", 1)[1]
    assert 'class="in-effect"' in lunch_row
    assert "grow when builds wait longer than" in html and "30 s" in html
    # Agents: one registered (idle), one still starting.
    assert first.agent_name in html and "idle" in html and "starting" in html
    # The size chart, drawn from the decisions, with the reason as a mark's title.
    assert '<svg class="chart"' in html and "Pool size, last 6 hours" in html
    assert "1 scaling decisions" in html
    # Secrets are never shown: the provider config is redacted.
    assert SECRET not in html and "***" in html
    assert SEALED_VALUE["$sealed"] not in html and "/t" in html

    live = await client.get("/ui/pools/linux?fragment=live")
    assert live.status_code == 200 and decision.reason in live.text
    assert "<html" not in live.text

    agents = await client.get("/ui/agents")
    assert '<a href="/ui/pools">Pools</a>' in agents.text
    assert '<a href="/ui/pools/linux">linux</a>' in agents.text


async def test_pool_pages_need_agent_read_and_an_unknown_pool_is_a_404_page(
    app: FastAPI, client: httpx.AsyncClient, runtime: Runtime
) -> None:
    assert (await client.post("/api/v1/pools", json=POOL)).status_code == 201
    viewer = await user_token(runtime.store, "pool-viewer", Role.VIEWER)
    async with _client(app, headers={"Authorization": f"Bearer {viewer}"}) as c:
        assert (await c.get("/ui/pools/linux")).status_code == 200
    team = await user_token(runtime.store, "team-dev", Role.DEVELOPER, "team-a/*")
    async with _client(app, headers={"Authorization": f"Bearer {team}"}) as c:
        for path in ("/ui/pools", "/ui/pools/linux"):
            r = await c.get(path)
            assert r.status_code == 403 and "agent.read" in r.text
    async with _client(app) as anon:
        r = await anon.get("/ui/pools")
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
    r = await client.get("/ui/pools/nope")
    assert r.status_code == 404 and "pool &#39;nope&#39; not found" in r.text


def _decision(
    at_minutes: int, current: int, target: int, clock: FakeClock, waiting: int | None = None
) -> ScalingDecisionRecord:
    return ScalingDecisionRecord(
        id=at_minutes,
        pool="p",
        at=clock() - timedelta(minutes=at_minutes),
        current=current,
        target=target,
        min_size=0,
        max_size=5,
        rule="wait",
        reason=f"pool p {current} → {target}: <why & how>",
        removed=[],
        drained=[],
        period=None,
        controller=None,
        waiting=waiting,
    )


def test_the_size_chart_steps_through_the_decisions(clock: FakeClock) -> None:
    decisions = [
        _decision(600, 0, 1, clock),
        _decision(120, 1, 4, clock, waiting=7),
        _decision(30, 4, 2, clock, waiting=0),
    ]
    svg = str(charts.pool_size_chart(decisions, 2, clock(), hours=6))
    # The decision before the window sets where the line starts; two are in it.
    assert "2 scaling decisions, up to 7 builds waiting" in svg and "at most 7" in svg
    assert 'class="waiting"' in svg
    assert svg.count("<circle") == 2
    assert "pool p 1 → 4: &lt;why &amp; how&gt;" in svg  # escaped reasons as titles
    assert 'class="bound"' in svg and 'class="line"' in svg
    empty = str(charts.pool_size_chart([], 0, clock()))
    assert "0 agents now, 0 scaling decisions, at most 1" in empty
    assert 'class="waiting"' not in empty  # decisions recorded before 0017: no line
