"""Delivering notifications for real: a local HTTP receiver that checks the HMAC signature,
a local SMTP server (aiosmtpd), deliveries recorded in the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from fastapi import FastAPI
from sqlalchemy import update

from conveyor.api.errors import install_error_handlers
from conveyor.api.routes_notifications import router as notifications_router
from conveyor.controller.notifications import Notifier
from conveyor.core.notifications import (
    NotificationsConfig,
    NotifyEntry,
    parse_notifications_config,
)
from conveyor.core.permissions import Scope
from conveyor.core.states import BuildState
from conveyor.errors import NotFound
from conveyor.runtime import Runtime
from conveyor.settings import Settings
from conveyor.store import Store
from conveyor.store.notifications import DELIVERED, FAILED, list_deliveries
from conveyor.store.records import BuildRecord
from conveyor.store.schema import builds
from conveyor.store.store import JobFields, NewBuild
from tests.auth_helpers import user_token
from tests.conftest import FakeClock

SECRET = "s3cret-hmac-key"
SPEC = "name: {job}\nstages: [{{name: s, steps: [{{echo: hi}}]}}]\n"


# ----------------------------------------------------------------- a real HTTP receiver


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def signature_ok(self) -> bool:
        expected = "sha256=" + hmac.new(SECRET.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("x-conveyor-signature", ""), expected)


@dataclass
class Receiver:
    """Answers POSTs with ``statuses`` in order (then 200) and records every request."""

    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    body: bytes = b"boom"
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def delivered(self) -> list[Received]:
        return [r for r in self.requests if r.status == 200]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                status = state.statuses.pop(0) if state.statuses else 200
                headers = {k.lower(): v for k, v in self.headers.items()}
                state.requests.append(Received(self.path, headers, body, status))
            reply = b"ok" if status == 200 else state.body.replace(b"{path}", self.path.encode())
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ----------------------------------------------------------------- a real SMTP server


class MailSink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content))
        )
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[MailSink, int]]:
    sink = MailSink()
    port = _free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


# ----------------------------------------------------------------- helpers


async def finished_build(
    store: Store,
    clock: FakeClock,
    job: str = "team-a/api",
    state: BuildState = BuildState.FAILED,
    cause: str | None = "step 'test' exited with 2",
    spec: str | None = None,
) -> BuildRecord:
    try:
        await store.get_job(job)
    except NotFound:
        fields = JobFields(job, spec or SPEC.format(job=job), None, None, None, 0)
        await store.create_job(fields, None, clock())
    build = await store.create_build(
        NewBuild(
            job_name=job,
            parameters={},
            plan={},
            steps=[],
            priority=0,
            label_expression=None,
            trigger="api:admin",
        ),
        clock(),
    )
    async with store.write() as conn:
        await conn.execute(
            update(builds)
            .where(builds.c.id == build.id)
            .values(
                state=state.value,
                started_at=clock(),
                finished_at=clock() + timedelta(seconds=65),
                cause=cause,
            )
        )
    return await store.get_build(build.id)


def make_notifier(
    store: Store, clock: FakeClock, config: str, environ: dict[str, str] | None = None
) -> Notifier:
    return Notifier(
        store,
        parse_notifications_config(config),
        clock,
        base_url="https://ci.example.com",
        environ={"HOOK_SECRET": SECRET} if environ is None else environ,
        base_delay=0.01,
        max_delay=0.05,
        timeout=5.0,
    )


def webhook_config(url: str, rule_on: str = "[failure]") -> str:
    return (
        "notifiers:\n"
        f"  hook: {{type: webhook, url: '{url}', secret_env: HOOK_SECRET,"
        " headers: {X-Team: platform}}\n"
        "rules:\n"
        f"  - {{jobs: 'team-a/*', on: {rule_on}, notifiers: [hook]}}\n"
    )


async def deliver(notifier: Notifier, build: BuildRecord, notify: list[NotifyEntry]) -> None:
    await notifier.on_build_finished(build, notify)
    await notifier.drain()
    await notifier.close()


# ----------------------------------------------------------------- webhooks


async def test_webhook_fails_twice_then_is_delivered_once(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    receiver.statuses = [500, 500]
    build = await finished_build(store, clock)
    notifier = make_notifier(store, clock, webhook_config(receiver.url()))
    await deliver(notifier, build, [])

    assert [r.status for r in receiver.requests] == [500, 500, 200]
    [got] = receiver.delivered  # the message arrived exactly once
    assert all(r.signature_ok for r in receiver.requests)
    assert len({r.headers["x-conveyor-delivery"] for r in receiver.requests}) == 1
    assert got.headers["x-conveyor-event"] == "failure"
    assert got.headers["x-team"] == "platform"
    assert got.headers["content-type"] == "application/json"
    body = got.json
    assert {k: body[k] for k in ("event", "job", "number", "id", "state", "cause", "url")} == {
        "event": "failure",
        "job": "team-a/api",
        "number": build.number,
        "id": build.id,
        "state": "failed",
        "cause": "step 'test' exited with 2",
        "url": f"https://ci.example.com/api/v1/builds/{build.id}",
    }
    assert body["started_at"] and body["finished_at"] and body["duration_seconds"] == 65.0

    [record] = await list_deliveries(store, build.id)
    assert (record.state, record.attempts, record.notifier, record.event, record.kind) == (
        DELIVERED,
        3,
        "hook",
        "failure",
        "webhook",
    )
    assert record.delivery_id == got.headers["x-conveyor-delivery"]
    assert record.last_error == "HTTP 500: boom"  # the last failed attempt, kept
    assert record.finished_at is not None and record.reason == "rule 0 (jobs team-a/*) on failure"


async def test_webhook_always_failing_is_failed_after_five_attempts(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    receiver.statuses = [500] * 10
    receiver.body = b"internal trouble"
    build = await finished_build(store, clock)
    await deliver(make_notifier(store, clock, webhook_config(receiver.url())), build, [])

    assert len(receiver.requests) == 5 and not receiver.delivered
    [record] = await list_deliveries(store, build.id)
    assert (record.state, record.attempts) == (FAILED, 5)
    assert record.last_error == "HTTP 500: internal trouble"


async def test_client_errors_are_not_retried_and_secrets_are_scrubbed(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    token = "T000/B000/XXXXSECRETXXXX"
    receiver.statuses = [404]
    receiver.body = b"no such hook {path}"
    config = (
        "notifiers:\n  chat: {type: slack, webhook_url_env: CHAT_URL}\n"
        "rules:\n  - {jobs: '*', on: [always], notifiers: [chat]}\n"
    )
    environ = {"CHAT_URL": receiver.url(f"/services/{token}")}
    build = await finished_build(store, clock)
    await deliver(make_notifier(store, clock, config, environ), build, [])

    assert len(receiver.requests) == 1
    [record] = await list_deliveries(store, build.id)
    assert (record.state, record.attempts) == (FAILED, 1)
    assert record.last_error is not None and "404" in record.last_error
    assert "SECRET" not in record.last_error and "***" in record.last_error


async def test_missing_secret_variable_fails_clearly(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    build = await finished_build(store, clock)
    await deliver(make_notifier(store, clock, webhook_config(receiver.url()), {}), build, [])
    assert receiver.requests == []
    [record] = await list_deliveries(store, build.id)
    assert (record.state, record.attempts) == (FAILED, 1)
    assert record.last_error == "environment variable HOOK_SECRET (secret_env) is not set"


async def test_slack_payload_shape(store: Store, clock: FakeClock, receiver: Receiver) -> None:
    config = (
        "notifiers:\n  team-slack: {type: slack, webhook_url_env: TEAM_SLACK_URL}\n"
        "rules:\n  - {jobs: 'team-a/*', on: [timed_out], notifiers: [team-slack]}\n"
    )
    environ = {"TEAM_SLACK_URL": receiver.url("/services/T/B/X")}
    build = await finished_build(store, clock, state=BuildState.TIMED_OUT, cause="timed out")
    await deliver(make_notifier(store, clock, config, environ), build, [])

    [got] = receiver.requests
    assert got.path == "/services/T/B/X"
    assert got.headers["content-type"] == "application/json"
    assert got.json == {
        "text": f"team-a/api #{build.number} timed out: timed out after 1m05s. "
        f"https://ci.example.com/api/v1/builds/{build.id}"
    }
    [record] = await list_deliveries(store, build.id)
    assert (record.state, record.attempts, record.kind, record.event) == (
        DELIVERED,
        1,
        "slack",
        "timed_out",
    )


# ----------------------------------------------------------------- email


async def test_email_over_smtp(store: Store, clock: FakeClock, smtp: tuple[MailSink, int]) -> None:
    sink, port = smtp
    config = (
        "notifiers:\n"
        "  oncall:\n"
        "    type: email\n"
        "    host: 127.0.0.1\n"
        f"    port: {port}\n"
        "    starttls: false\n"
        "    from: ci@example.com\n"
        "    to: [oncall@example.com, lead@example.com]\n"
    )
    build = await finished_build(store, clock)
    notifier = make_notifier(store, clock, config)
    await deliver(notifier, build, [NotifyEntry(on=["failure"], notifier="oncall")])

    [(sender, recipients, mail)] = sink.messages
    assert sender == "ci@example.com"
    assert recipients == ["oncall@example.com", "lead@example.com"]
    assert mail["Subject"] == f"[Conveyor] team-a/api #{build.number} failed"
    assert mail["X-Conveyor-Event"] == "failure"
    text = mail.get_payload(decode=True).decode()
    assert f"team-a/api #{build.number} failed: step 'test' exited with 2 after 1m05s." in text
    assert f"https://ci.example.com/api/v1/builds/{build.id}" in text
    [record] = await list_deliveries(store, build.id)
    assert (record.state, record.attempts, record.kind) == (DELIVERED, 1, "email")
    assert record.reason == "pipeline notify[0] on failure"


async def test_smtp_unreachable_is_retried_then_failed(store: Store, clock: FakeClock) -> None:
    config = (
        "notifiers:\n"
        f"  mail: {{type: email, host: 127.0.0.1, port: {_free_port()}, starttls: false,"
        " from: ci@example.com, to: [a@example.com]}\n"
    )
    build = await finished_build(store, clock)
    notifier = make_notifier(store, clock, config)
    notifier.max_attempts = 2
    await deliver(notifier, build, [NotifyEntry(on=["always"], notifier="mail")])
    [record] = await list_deliveries(store, build.id)
    assert (record.state, record.attempts) == (FAILED, 2)
    assert record.last_error is not None and "ConnectionRefusedError" in record.last_error


# ----------------------------------------------------------------- decisions end to end


async def test_unconfigured_notifier_is_recorded_failed(store: Store, clock: FakeClock) -> None:
    build = await finished_build(store, clock)
    entries = [NotifyEntry(on=["failure"], notifier="nobody")]
    await deliver(Notifier(store, None, clock), build, entries)
    [record] = await list_deliveries(store, build.id)
    assert (record.state, record.attempts, record.kind) == (FAILED, 0, "unknown")
    assert record.last_error == (
        "notifier 'nobody' is not configured: no notifications file is configured "
        "(CONVEYOR_NOTIFICATIONS_FILE)"
    )

    build = await finished_build(store, clock)
    notifier = make_notifier(store, clock, "notifiers: {}\n")
    await deliver(notifier, build, entries)
    [record] = await list_deliveries(store, build.id)
    assert record.state == FAILED and "is not configured" in (record.last_error or "")


async def test_pipeline_notify_read_from_the_spec_and_fixed(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    spec = (
        "name: team-z/app\nstages: [{name: s, steps: [{echo: hi}]}]\n"
        "notify:\n  - on: [fixed]\n    notifier: hook\n"
    )
    config = f"notifiers:\n  hook: {{type: webhook, url: '{receiver.url()}'}}\n"
    notifier = make_notifier(store, clock, config)
    first = await finished_build(store, clock, "team-z/app", BuildState.SUCCEEDED, None, spec)
    failed = await finished_build(store, clock, "team-z/app", BuildState.FAILED)
    fixed = await finished_build(store, clock, "team-z/app", BuildState.SUCCEEDED, None)
    again = await finished_build(store, clock, "team-z/app", BuildState.SUCCEEDED, None)
    for build in (first, failed, fixed, again):
        await notifier.on_build_finished(build)  # None: read the job's spec
    await notifier.drain()
    await notifier.close()

    [got] = receiver.requests
    assert got.json["id"] == fixed.id and got.json["event"] == "fixed"
    assert got.json["previous_state"] == "failed"
    assert "x-conveyor-signature" not in got.headers  # no secret_env: unsigned
    assert [len(await list_deliveries(store, b.id)) for b in (first, failed, fixed, again)] == [
        0,
        0,
        1,
        0,
    ]


async def test_racing_controllers_send_once(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    build = await finished_build(store, clock)
    config = webhook_config(receiver.url())
    one, two = make_notifier(store, clock, config), make_notifier(store, clock, config)
    await one.on_build_finished(build, [])
    await two.on_build_finished(build, [])
    await one.on_build_finished(build, [])  # a repeated finish, too
    for notifier in (one, two):
        await notifier.drain()
        await notifier.close()
    assert len(receiver.requests) == 1
    assert len(await list_deliveries(store, build.id)) == 1


async def test_several_notifiers_listed_most_recent_first(
    store: Store, clock: FakeClock, receiver: Receiver
) -> None:
    config = (
        "notifiers:\n"
        f"  a: {{type: webhook, url: '{receiver.url('/a')}'}}\n"
        f"  b: {{type: webhook, url: '{receiver.url('/b')}'}}\n"
        "rules:\n  - {jobs: '*', on: [always], notifiers: [a, b]}\n"
    )
    build = await finished_build(store, clock, state=BuildState.CANCELLED, cause="by admin")
    await deliver(make_notifier(store, clock, config), build, [])
    assert sorted(r.path for r in receiver.requests) == ["/a", "/b"]
    records = await list_deliveries(store, build.id)
    assert [r.id for r in records] == sorted((r.id for r in records), reverse=True)
    assert {r.notifier for r in records} == {"a", "b"}
    assert {r.event for r in records} == {"cancelled"}


async def test_nothing_to_do_without_configuration(store: Store, clock: FakeClock) -> None:
    build = await finished_build(store, clock)
    notifier = Notifier(store, NotificationsConfig(), clock)
    assert await notifier.notify(build, []) == []
    assert await notifier.notify(build) == []  # the spec has no notify block
    await notifier.close()


# ----------------------------------------------------------------- configuration file


def test_from_settings_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notifications.yml"
    path.write_text(
        "notifiers:\n  s: {type: slack, webhook_url_env: S}\n"
        "rules:\n  - {jobs: '*', on: failure, notifiers: [s]}\n"
    )

    class FakeSettings:
        notifications_file = path
        public_url = "https://ci.example.com"

    notifier = Notifier.from_settings(FakeSettings(), None, FakeClock())  # type: ignore[arg-type]
    assert notifier.config is not None and list(notifier.config.notifiers) == ["s"]
    assert notifier.base_url == "https://ci.example.com"
    path.write_text("notifiers:\n  s: {type: slack, webhook_url_env: S}\nrules: [{jobs: '*'}]\n")
    with pytest.raises(ValueError, match=r"notifications.yml:3: rules\[0\]: missing required"):
        Notifier.from_settings(FakeSettings(), None, FakeClock())  # type: ignore[arg-type]
    assert Notifier.from_settings(Settings(), None, FakeClock()).config is None  # type: ignore[arg-type]


# ----------------------------------------------------------------- API


@pytest.fixture
async def api(tmp_path: Path, clock: FakeClock) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    runtime = Runtime.build(
        Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'c.db'}"), clock
    )
    await runtime.prepare()
    token = await user_token(runtime.store, "reader", scope=Scope.READ)
    app = FastAPI()
    app.state.runtime = runtime
    install_error_handlers(app)
    app.include_router(notifications_router)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://conveyor.test", headers=headers
        ) as client:
            yield client, runtime
    finally:
        await runtime.stop()


async def test_api_lists_deliveries_without_secrets(
    api: tuple[httpx.AsyncClient, Runtime], clock: FakeClock, receiver: Receiver
) -> None:
    client, runtime = api
    receiver.statuses = [503]
    build = await finished_build(runtime.store, clock)
    await deliver(
        make_notifier(runtime.store, clock, webhook_config(receiver.url())),
        build,
        [NotifyEntry(on=["failure"], notifier="ghost")],
    )
    r = await client.get(f"/api/v1/builds/{build.id}/notifications")
    assert r.status_code == 200
    items = r.json()
    assert [(i["notifier"], i["state"], i["attempts"]) for i in items] == [
        ("hook", "delivered", 2),
        ("ghost", "failed", 0),
    ]
    assert set(items[0]) == {
        "id",
        "build_id",
        "notifier",
        "kind",
        "event",
        "reason",
        "delivery_id",
        "state",
        "attempts",
        "last_error",
        "created_at",
        "updated_at",
        "finished_at",
    }
    assert SECRET not in r.text and "sha256=" not in r.text and receiver.url() not in r.text
    assert (await client.get("/api/v1/builds/999999/notifications")).status_code == 404
    r = await client.get(
        f"/api/v1/builds/{build.id}/notifications", headers={"Authorization": "Bearer nope"}
    )
    assert r.status_code == 401
