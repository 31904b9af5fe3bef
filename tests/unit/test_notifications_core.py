"""Notification policy: configuration, decisions (globs, events, fixed), payloads, signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from conveyor.core.notifications import (
    BuildFacts,
    EmailNotifier,
    NotificationsConfig,
    NotifyEntry,
    Rule,
    SlackNotifier,
    WebhookNotifier,
    backoff_delay,
    build_events,
    decide_notifications,
    delivery_headers,
    email_content,
    parse_notifications_config,
    payload_for,
    sign,
    substitute_parameters,
)
from conveyor.core.pipeline import SpecError, parse_pipeline
from conveyor.core.states import BuildState

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)

CONFIG = """\
notifiers:
  team-slack:
    type: slack
    webhook_url_env: TEAM_SLACK_URL
  audit:
    type: webhook
    url: https://audit.example.com/hooks/conveyor
    secret_env: AUDIT_SECRET
    headers: {X-Team: platform}
  oncall:
    type: email
    host: smtp.example.com
    port: 587
    username_env: SMTP_USER
    password_env: SMTP_PASSWORD
    from: ci@example.com
    to: [oncall@example.com, lead@example.com]
rules:
  - jobs: "team-a/*"
    on: [failure, fixed]
    notifiers: [team-slack]
  - jobs: ["*"]
    on: always
    notifiers: [audit]
  - jobs: "team-b/deploy-?"
    on: [timed_out, lost]
    notifiers: [oncall, team-slack]
"""


def facts(
    state: BuildState = BuildState.FAILED,
    job: str = "team-a/api",
    cause: str | None = "step 'test' exited with 2",
) -> BuildFacts:
    return BuildFacts(
        id=57,
        job=job,
        number=12,
        state=state,
        cause=cause,
        queued_at=T0,
        started_at=T0 + timedelta(seconds=3),
        finished_at=T0 + timedelta(seconds=128),
        trigger="api:admin",
    )


@pytest.fixture
def config() -> NotificationsConfig:
    return parse_notifications_config(CONFIG)


# ----------------------------------------------------------------- configuration


def test_config_parses_every_notifier_type(config: NotificationsConfig) -> None:
    slack = config.notifiers["team-slack"]
    webhook = config.notifiers["audit"]
    email = config.notifiers["oncall"]
    assert isinstance(slack, SlackNotifier) and slack.webhook_url_env == "TEAM_SLACK_URL"
    assert isinstance(webhook, WebhookNotifier)
    assert webhook.secret_env == "AUDIT_SECRET" and webhook.headers == {"X-Team": "platform"}
    assert isinstance(email, EmailNotifier)
    assert (email.host, email.port, email.starttls) == ("smtp.example.com", 587, True)
    assert email.from_ == "ci@example.com"
    assert email.to == ["oncall@example.com", "lead@example.com"]
    assert config.rules[0].on == ["failure", "fixed"]  # YAML's `on` key (a boolean) handled
    assert config.rules[1].on == ["always"] and config.rules[1].jobs == ["*"]
    assert config.rules[0].jobs == ["team-a/*"]


def test_empty_config_file_is_no_configuration() -> None:
    assert parse_notifications_config("") == NotificationsConfig()
    assert parse_notifications_config("# nothing yet\n") == NotificationsConfig()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "notifiers:\n  x: {type: slack, webhook_url_env: https://hooks.slack.com/T/B/X}\n",
            "notifications.yml:2: notifiers.x.slack.webhook_url_env: invalid environment "
            "variable name 'https://hooks.slack.com/T/B/X'",
        ),
        (
            "notifiers:\n  x: {type: pager}\n",
            "notifications.yml:2: notifiers.x: input tag 'pager' found using 'type'",
        ),
        (
            "notifiers:\n  x: {type: slack, webhook_url_env: A}\n"
            "rules:\n  - jobs: '*'\n    on: [failure, broken]\n    notifiers: [x]\n",
            "notifications.yml:5: rules[0].on[1]: expected one of 'failure', 'success', 'fixed', "
            "'cancelled', 'timed_out', 'lost' or 'always', got 'broken'",
        ),
        (
            "notifiers:\n  x: {type: slack, webhook_url_env: A}\n"
            "rules:\n  - jobs: '*'\n    on: [failure]\n    notifiers: [x, nope]\n",
            "notifications.yml:6: rules[0].notifiers[1]: unknown notifier 'nope' (configured: x)",
        ),
        (
            "notifiers:\n  m: {type: email, host: h, from: a@b.c, to: [d@e.f], username_env: U}\n",
            "give both username_env and password_env, or neither",
        ),
        (
            "notifiers:\n  w: {type: webhook, url: ftp://x}\n",
            "invalid URL 'ftp://x'",
        ),
        ("- a\n- b\n", "must be a mapping"),
        ("notifiers: [\n", "invalid YAML"),
    ],
)
def test_config_errors_are_clear(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_notifications_config(text)
    assert expected in str(exc.value)


# ----------------------------------------------------------------- pipeline notify


def test_pipeline_notify_block() -> None:
    pipeline = parse_pipeline(
        "name: team-a/api\n"
        "stages: [{name: s, steps: [{echo: hi}]}]\n"
        "notify:\n"
        "  - on: [failure, fixed]\n"
        "    notifier: team-slack\n"
        "  - {on: success, notifier: audit}\n"
    )
    assert pipeline.notify == [
        NotifyEntry(on=["failure", "fixed"], notifier="team-slack"),
        NotifyEntry(on=["success"], notifier="audit"),
    ]
    assert parse_pipeline("name: a\nstages: [{name: s, steps: [{echo: hi}]}]\n").notify == []


def test_pipeline_notify_unknown_event_is_reported_at_its_line() -> None:
    text = (
        "name: team-a/api\n"
        "stages: [{name: s, steps: [{echo: hi}]}]\n"
        "notify:\n"
        "  - on:\n"
        "      - failure\n"
        "      - failed\n"
        "    notifier: team-slack\n"
        "  - {notifier: x}\n"
    )
    with pytest.raises(SpecError) as exc:
        parse_pipeline(text)
    assert [str(e) for e in exc.value.errors] == [
        "conveyor.yml:6: notify[0].on[1]: expected one of 'failure', 'success', 'fixed', "
        "'cancelled', 'timed_out', 'lost' or 'always', got 'failed'",
        "conveyor.yml:8: notify[1]: missing required field 'on'",
    ]


# ----------------------------------------------------------------- decisions


@pytest.mark.parametrize(
    ("state", "previous", "events"),
    [
        (BuildState.SUCCEEDED, None, ["success", "always"]),
        (BuildState.SUCCEEDED, BuildState.SUCCEEDED, ["success", "always"]),
        (BuildState.SUCCEEDED, BuildState.FAILED, ["fixed", "success", "always"]),
        (BuildState.SUCCEEDED, BuildState.CANCELLED, ["fixed", "success", "always"]),
        (BuildState.SUCCEEDED, BuildState.LOST, ["fixed", "success", "always"]),
        (BuildState.FAILED, BuildState.FAILED, ["failure", "always"]),
        (BuildState.TIMED_OUT, None, ["timed_out", "failure", "always"]),
        (BuildState.LOST, None, ["lost", "failure", "always"]),
        (BuildState.CANCELLED, None, ["cancelled", "always"]),
        (BuildState.RUNNING, None, []),
    ],
)
def test_build_events(state: BuildState, previous: BuildState | None, events: list[str]) -> None:
    assert build_events(state, previous) == events


def test_rules_with_globs(config: NotificationsConfig) -> None:
    decided = decide_notifications(facts(), BuildState.SUCCEEDED, config.rules, None)
    assert [(n.notifier, n.event) for n in decided] == [
        ("team-slack", "failure"),
        ("audit", "failure"),
    ]
    # `*` also crosses '/': team-a/* covers every job under team-a.
    deep = decide_notifications(facts(job="team-a/x/y"), None, config.rules, None)
    assert [n.notifier for n in deep] == ["team-slack", "audit"]
    other = decide_notifications(facts(job="team-c/api"), None, config.rules, None)
    assert [n.notifier for n in other] == ["audit"]
    # `?` is one character; the same notifier selected twice is told once.
    timed_out = facts(BuildState.TIMED_OUT, job="team-b/deploy-1")
    decided = decide_notifications(timed_out, None, config.rules, None)
    assert [(n.notifier, n.event) for n in decided] == [
        ("audit", "timed_out"),
        ("oncall", "timed_out"),
        ("team-slack", "timed_out"),
    ]
    not_matched = decide_notifications(
        facts(BuildState.TIMED_OUT, job="team-b/deploy-10"), None, config.rules, None
    )
    assert [n.notifier for n in not_matched] == ["audit"]


def test_success_is_not_sent_to_failure_rules_but_fixed_is(config: NotificationsConfig) -> None:
    ok = facts(BuildState.SUCCEEDED, cause=None)
    assert [
        n.notifier for n in decide_notifications(ok, BuildState.SUCCEEDED, config.rules, [])
    ] == ["audit"]
    assert [n.notifier for n in decide_notifications(ok, None, config.rules, [])] == ["audit"]
    fixed = decide_notifications(ok, BuildState.FAILED, config.rules, [])
    assert [(n.notifier, n.event) for n in fixed] == [("team-slack", "fixed"), ("audit", "fixed")]
    assert "fixed: the previous build failed" in fixed[0].message


def test_pipeline_entries_and_rules_combine() -> None:
    rules = [Rule(jobs=["team-a/*"], on=["failure"], notifiers=["slack"])]
    entries = [
        NotifyEntry(on=["failure"], notifier="slack"),
        NotifyEntry(on=["success"], notifier="mail"),
        NotifyEntry(on=["always"], notifier="hook"),
    ]
    decided = decide_notifications(facts(), None, rules, entries)
    assert [n.notifier for n in decided] == ["slack", "hook"]
    assert decided[0].reasons == (
        "pipeline notify[0] on failure",
        "rule 0 (jobs team-a/*) on failure",
    )
    assert decided[1].reason == "pipeline notify[2] on always"
    assert decided[1].event == "failure"  # the build's event, not the subscription's
    cancelled = decide_notifications(facts(BuildState.CANCELLED), None, rules, entries)
    assert [(n.notifier, n.event) for n in cancelled] == [("hook", "cancelled")]


def test_message_and_url() -> None:
    [n] = decide_notifications(
        facts(),
        None,
        [],
        [NotifyEntry(on=["failure"], notifier="x")],
        base_url="https://ci.example.com/",
    )
    assert n.url == "https://ci.example.com/api/v1/builds/57"
    assert n.message == (
        "team-a/api #12 failed: step 'test' exited with 2 after 2m05s. "
        "https://ci.example.com/api/v1/builds/57"
    )
    [n] = decide_notifications(
        facts(BuildState.SUCCEEDED, cause=None),
        None,
        [],
        [NotifyEntry(on=["always"], notifier="x")],
    )
    assert n.message == "team-a/api #12 succeeded after 2m05s. /api/v1/builds/57"


# ----------------------------------------------------------------- payloads, signature


def test_webhook_and_slack_payloads() -> None:
    [n] = decide_notifications(
        facts(), BuildState.SUCCEEDED, [], [NotifyEntry(on=["failure"], notifier="x")]
    )
    body = payload_for(n)
    assert body == {
        "event": "failure",
        "job": "team-a/api",
        "number": 12,
        "id": 57,
        "state": "failed",
        "previous_state": "succeeded",
        "cause": "step 'test' exited with 2",
        "url": "/api/v1/builds/57",
        "trigger": "api:admin",
        "queued_at": "2026-01-05T12:00:00+00:00",
        "started_at": "2026-01-05T12:00:03+00:00",
        "finished_at": "2026-01-05T12:02:08+00:00",
        "duration_seconds": 125.0,
        "message": n.message,
    }
    json.dumps(body)  # serialisable as is
    assert payload_for(n, "slack") == {"text": n.message}


def test_email_content() -> None:
    [n] = decide_notifications(facts(), None, [], [NotifyEntry(on=["failure"], notifier="x")])
    subject, body = email_content(n)
    assert subject == "[Conveyor] team-a/api #12 failed"
    assert n.message in body and "Cause:    step 'test' exited with 2" in body
    [fixed] = decide_notifications(
        facts(BuildState.SUCCEEDED, cause=None),
        BuildState.TIMED_OUT,
        [],
        [NotifyEntry(on=["fixed"], notifier="x")],
    )
    assert email_content(fixed)[0] == "[Conveyor] team-a/api #12 fixed"


def test_signature_matches_hmac() -> None:
    body = b'{"event":"failure","id":57}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign(body, "s3cret") == f"sha256={expected}"
    assert sign(body, "other") != sign(body, "s3cret")


def test_delivery_headers() -> None:
    body = b"{}"
    headers = delivery_headers(
        body,
        "failure",
        "d-1",
        "s3cret",
        {"X-Team": "platform", "X-Conveyor-Event": "forged", "content-type": "text/plain"},
    )
    assert headers == {
        "X-Team": "platform",
        "Content-Type": "application/json",
        "X-Conveyor-Event": "failure",
        "X-Conveyor-Delivery": "d-1",
        "X-Conveyor-Signature": sign(body, "s3cret"),
    }
    assert "X-Conveyor-Signature" not in delivery_headers(body, "failure", "d-1", None)


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    assert [backoff_delay(a, 1.0, 60.0, 1.0) for a in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert [backoff_delay(a, 1.0, 60.0, 0.0) for a in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delay(10, 1.0, 60.0, 0.5) == 45.0
    assert 0.5 <= backoff_delay(1, 1.0, 60.0, 0.3) <= 1.0


def test_models_reject_secrets_in_place_of_names() -> None:
    with pytest.raises(ValidationError):
        WebhookNotifier(type="webhook", url="https://x.example.com", secret_env="my secret!")


def test_substitute_parameters_only_braced_build_parameters() -> None:
    params = {"TARGET_ENV": "prod", "LOOP": "${TARGET_ENV}"}
    text = "to ${TARGET_ENV}: $TARGET_ENV ${HOME} $(id) ${LOOP} \\${TARGET_ENV}"
    assert substitute_parameters(text, params) == (
        "to prod: $TARGET_ENV ${HOME} $(id) ${TARGET_ENV} \\prod"
    )
