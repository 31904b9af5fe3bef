"""Build notifications: who is told about a finished build, what they are sent, and how.

Pure policy, no I/O. The controller (``conveyor.controller.notifications``) loads the
configuration file, asks :func:`decide_notifications` which notifiers to tell about a
finished build, and delivers what :func:`payload_for` / :func:`email_content` build,
signed with :func:`sign` and retried after :func:`backoff_delay`.

Configuration (``notifications_file``, documented in ``docs/notifications.md``)::

    notifiers:
      team-slack: {type: slack, webhook_url_env: TEAM_SLACK_URL}
      audit:      {type: webhook, url: "https://audit.example.com/hook", secret_env: AUDIT_SECRET}
      oncall:     {type: email, host: smtp.example.com, from: ci@example.com, to: [a@example.com]}
    rules:
      - {jobs: "team-a/*", on: [failure, fixed], notifiers: [team-slack]}

A pipeline adds its own subscriptions with a top-level ``notify`` list of
:class:`NotifyEntry` (``{on: [failure], notifier: team-slack}``).

Events of a finished build, most specific first (a build matches all of its events):

* ``succeeded`` → ``fixed`` (only when the previous finished build of the job did not
  succeed), ``success``
* ``failed`` → ``failure``;  ``timed_out`` → ``timed_out``, ``failure``;
  ``lost`` → ``lost``, ``failure``
* ``cancelled`` → ``cancelled``
* and every build: ``always``

Each notifier is told at most once per build, whatever number of rules and pipeline
entries select it; the notification's ``event`` is the build's most specific event.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from conveyor.core.states import BuildState

__all__ = [
    "EVENTS",
    "MAX_ATTEMPTS",
    "BuildFacts",
    "EmailNotifier",
    "Event",
    "Notification",
    "NotificationsConfig",
    "NotifierConfig",
    "NotifyEntry",
    "Rule",
    "SlackNotifier",
    "WebhookNotifier",
    "backoff_delay",
    "build_events",
    "build_message",
    "decide_notifications",
    "delivery_headers",
    "email_content",
    "format_duration",
    "parse_notifications_config",
    "payload_for",
    "sign",
    "substitute_parameters",
]

Event = Literal["failure", "success", "fixed", "cancelled", "timed_out", "lost", "always"]
EVENTS: tuple[Event, ...] = (
    "failure",
    "success",
    "fixed",
    "cancelled",
    "timed_out",
    "lost",
    "always",
)
MAX_ATTEMPTS = 5
SIGNATURE_HEADER = "X-Conveyor-Signature"
DELIVERY_HEADER = "X-Conveyor-Delivery"
EVENT_HEADER = "X-Conveyor-Event"

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NOTIFIER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_RESULT_WORDS = {
    BuildState.SUCCEEDED: "succeeded",
    BuildState.FAILED: "failed",
    BuildState.CANCELLED: "was cancelled",
    BuildState.TIMED_OUT: "timed out",
    BuildState.LOST: "was lost (its agent stopped responding)",
}


def _error(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


def _one_or_many(value: Any) -> Any:
    """``failure`` → ``[failure]``: a single value where a list is expected."""
    return [value] if isinstance(value, str) else value


def _yaml_on_key(data: Any) -> Any:
    """YAML 1.1 reads a bare ``on`` key as the boolean true: give it its name back."""
    if isinstance(data, dict) and True in data and "on" not in data:
        data = dict(data)
        data["on"] = data.pop(True)
    return data


def _env_name(value: str) -> str:
    if not _IDENT.fullmatch(value):
        raise _error(
            "env_name",
            f"invalid environment variable name {value!r}: give the NAME of a variable "
            "holding the secret, never the secret itself",
        )
    return value


def _notifier_name(value: str) -> str:
    if not _NOTIFIER_NAME.fullmatch(value) or len(value) > 200:
        raise _error(
            "notifier_name",
            f"invalid notifier name {value!r} (use [A-Za-z0-9][A-Za-z0-9._-]*)",
        )
    return value


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+\S*", value):
        raise _error("url", f"invalid URL {value!r}: expected http://... or https://...")
    return value


Events = Annotated[list[Event], BeforeValidator(_one_or_many), Field(min_length=1)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WebhookNotifier(_Model):
    """A JSON POST, signed with HMAC-SHA256 when ``secret_env`` names a variable."""

    type: Literal["webhook"]
    url: str
    secret_env: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("secret_env")
    @classmethod
    def _secret_env(cls, value: str | None) -> str | None:
        return None if value is None else _env_name(value)


class SlackNotifier(_Model):
    """A Slack incoming webhook; its URL is a secret, so only its variable is named."""

    type: Literal["slack"]
    webhook_url_env: str

    @field_validator("webhook_url_env")
    @classmethod
    def _url_env(cls, value: str) -> str:
        return _env_name(value)


class EmailNotifier(_Model):
    """Mail over SMTP (STARTTLS by default); credentials come from environment variables."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: Literal["email"]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(strict=True, ge=1, le=65535)] = 587
    starttls: bool = True
    username_env: str | None = None
    password_env: str | None = None
    from_: Annotated[str, Field(alias="from", min_length=3)]
    to: Annotated[
        list[Annotated[str, Field(min_length=3)]],
        BeforeValidator(_one_or_many),
        Field(min_length=1),
    ]

    @field_validator("username_env", "password_env")
    @classmethod
    def _credential_env(cls, value: str | None) -> str | None:
        return None if value is None else _env_name(value)

    @model_validator(mode="after")
    def _both_or_neither(self) -> EmailNotifier:
        if (self.username_env is None) != (self.password_env is None):
            raise _error("email", "give both username_env and password_env, or neither")
        return self


NotifierConfig = Annotated[
    WebhookNotifier | SlackNotifier | EmailNotifier, Field(discriminator="type")
]


class Rule(_Model):
    """A global rule: builds of jobs matching ``jobs`` with one of the ``on`` events go to
    ``notifiers``. ``jobs`` is a glob (``*``, ``?``, ``[...]``; ``*`` also matches ``/``,
    so ``team-a/*`` is every job under ``team-a``), or a list of globs."""

    jobs: Annotated[
        list[Annotated[str, Field(min_length=1)]],
        BeforeValidator(_one_or_many),
        Field(min_length=1),
    ]
    on: Events
    notifiers: Annotated[
        list[Annotated[str, BeforeValidator(_notifier_name)]],
        BeforeValidator(_one_or_many),
        Field(min_length=1),
    ]

    @model_validator(mode="before")
    @classmethod
    def _on_key(cls, data: Any) -> Any:
        return _yaml_on_key(data)

    def matches(self, job: str) -> bool:
        return any(fnmatchcase(job, pattern) for pattern in self.jobs)


class NotifyEntry(_Model):
    """One entry of a pipeline's ``notify`` list: ``{on: [failure, fixed], notifier: NAME}``."""

    on: Events
    notifier: Annotated[str, Field(min_length=1, max_length=200)]

    @model_validator(mode="before")
    @classmethod
    def _on_key(cls, data: Any) -> Any:
        return _yaml_on_key(data)


class NotificationsConfig(_Model):
    """The notifications file: named notifiers and global rules."""

    notifiers: dict[Annotated[str, BeforeValidator(_notifier_name)], NotifierConfig] = Field(
        default_factory=dict
    )
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _known_notifiers(self) -> NotificationsConfig:
        for i, rule in enumerate(self.rules):
            for j, name in enumerate(rule.notifiers):
                if name not in self.notifiers:
                    known = ", ".join(sorted(self.notifiers)) or "none"
                    # Names are [A-Za-z0-9._-]: no braces for the template to expand.
                    raise PydanticCustomError(
                        "unknown_notifier",
                        f"rules[{i}].notifiers[{j}]: unknown notifier {name!r} "
                        f"(configured: {known})",
                        {"rule": i, "item": j},
                    )
        return self


def parse_notifications_config(
    text: str, filename: str = "notifications.yml"
) -> NotificationsConfig:
    """Parse and validate the notifications file; raises
    :class:`~conveyor.core.pipeline.SpecError` (``file:line: path: message``)."""
    from conveyor.core.pipeline import SpecError, SpecIssue, _format_path, _humanize, _line_of

    def fail(line: int, message: str) -> SpecError:
        return SpecError([SpecIssue(filename, line, "", message)])

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise fail(
            mark.line + 1 if mark is not None else 1, f"invalid YAML: {exc.problem}"
        ) from None
    except yaml.YAMLError as exc:
        raise fail(1, f"invalid YAML: {str(exc).splitlines()[0]}") from None
    if root is None or data is None:
        return NotificationsConfig()
    if not isinstance(data, dict):
        raise fail(1, "the notifications file must be a mapping with 'notifiers' and 'rules'")
    try:
        return NotificationsConfig.model_validate(data)
    except ValidationError as exc:
        issues: list[SpecIssue] = []
        for err in exc.errors():
            path_loc, line_loc, message = _humanize(err)
            if err["type"] == "unknown_notifier":
                ctx = err.get("ctx") or {}
                path_loc = line_loc = ("rules", ctx["rule"], "notifiers", ctx["item"])
                message = message.split(": ", 1)[1]
            issue = SpecIssue(filename, _line_of(root, line_loc), _format_path(path_loc), message)
            if issue not in issues:
                issues.append(issue)
        raise SpecError(sorted(issues, key=lambda i: i.line)) from None


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class BuildFacts:
    """What notifications say about a finished build."""

    id: int
    job: str
    number: int
    state: BuildState
    cause: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    trigger: str | None = None

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, (self.finished_at - self.started_at).total_seconds())


@dataclass(frozen=True)
class Notification:
    """One notifier to tell about one build: ``event`` is the build's most specific event,
    ``reasons`` say which subscriptions selected the notifier."""

    notifier: str
    event: Event
    build: BuildFacts
    url: str
    message: str
    previous: BuildState | None = None
    reasons: tuple[str, ...] = field(default_factory=tuple)
    step: str | None = None  # the key of the post step that sent it (``notify`` steps)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def build_events(state: BuildState, previous: BuildState | None) -> list[Event]:
    """The events of a finished build, most specific first (always ends with ``always``)."""
    events: list[Event]
    if state == BuildState.SUCCEEDED:
        fixed = previous is not None and previous != BuildState.SUCCEEDED
        events = ["fixed", "success"] if fixed else ["success"]
    elif state == BuildState.FAILED:
        events = ["failure"]
    elif state == BuildState.TIMED_OUT:
        events = ["timed_out", "failure"]
    elif state == BuildState.LOST:
        events = ["lost", "failure"]
    elif state == BuildState.CANCELLED:
        events = ["cancelled"]
    else:
        return []  # not finished: nothing to say
    return [*events, "always"]


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.1f}s" if seconds < 10 else f"{secs}s"


def build_url(build_id: int, base_url: str = "") -> str:
    return f"{base_url.rstrip('/')}/api/v1/builds/{build_id}"


def build_message(build: BuildFacts, event: Event, previous: BuildState | None, url: str) -> str:
    """The standard one-line summary, e.g. ``team-a/api #12 failed: ... after 2m05s. URL``."""
    return _message(build, event, previous, url)


_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def substitute_parameters(text: str, parameters: Mapping[str, str]) -> str:
    """Replace ``${NAME}`` by the value of the build parameter ``NAME``, in one pass (a
    value containing ``${...}`` is not expanded again). Anything else stays as written:
    ``$NAME`` without braces, ``${NAME}`` for a name that is not a parameter, ``$(...)``."""
    return _PLACEHOLDER.sub(lambda m: parameters.get(m.group(1), m.group(0)), text)


def _message(build: BuildFacts, event: Event, previous: BuildState | None, url: str) -> str:
    result = _RESULT_WORDS.get(build.state, build.state.value)
    text = f"{build.job} #{build.number} {result}"
    if event == "fixed" and previous is not None:
        text += f" (fixed: the previous build {_RESULT_WORDS.get(previous, previous.value)})"
    if build.cause and build.state != BuildState.SUCCEEDED:
        text += f": {build.cause}"
    if build.duration_seconds is not None:
        text += f" after {format_duration(build.duration_seconds)}"
    return f"{text}. {url}"


def decide_notifications(
    build: BuildFacts,
    previous: BuildState | None,
    rules: Sequence[Rule],
    pipeline_notify: Sequence[NotifyEntry] | None,
    base_url: str = "",
) -> list[Notification]:
    """Which notifiers to tell about ``build`` and why, one :class:`Notification` each.

    ``previous`` is the result of the job's previous finished build (``None`` for the
    first), which decides ``fixed``. Pipeline entries come first, then global rules, in
    their order; a notifier selected several times is told once, with every reason.
    """
    events = build_events(build.state, previous)
    if not events:
        return []
    selected: dict[str, list[str]] = {}

    def select(notifier: str, on: Sequence[Event], source: str) -> None:
        matched = [e for e in events if e in on]
        if matched:
            reasons = selected.setdefault(notifier, [])
            reason = f"{source} on {matched[0]}"
            if reason not in reasons:
                reasons.append(reason)

    for i, entry in enumerate(pipeline_notify or ()):
        select(entry.notifier, entry.on, f"pipeline notify[{i}]")
    for i, rule in enumerate(rules):
        if rule.matches(build.job):
            for name in rule.notifiers:
                select(name, rule.on, f"rule {i} (jobs {', '.join(rule.jobs)})")
    event = events[0]
    url = build_url(build.id, base_url)
    message = _message(build, event, previous, url)
    return [
        Notification(
            notifier=name,
            event=event,
            build=build,
            url=url,
            message=message,
            previous=previous,
            reasons=tuple(reasons),
        )
        for name, reasons in selected.items()
    ]


# --------------------------------------------------------------------------- messages


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def payload_for(
    notification: Notification, kind: Literal["webhook", "slack"] = "webhook"
) -> dict[str, Any]:
    """The JSON body: the full event for a webhook, ``{"text": ...}`` for Slack."""
    if kind == "slack":
        return {"text": notification.message}
    build = notification.build
    return {
        "event": notification.event,
        "job": build.job,
        "number": build.number,
        "id": build.id,
        "state": build.state.value,
        "previous_state": None if notification.previous is None else notification.previous.value,
        "cause": build.cause,
        "url": notification.url,
        "trigger": build.trigger,
        "queued_at": _iso(build.queued_at),
        "started_at": _iso(build.started_at),
        "finished_at": _iso(build.finished_at),
        "duration_seconds": build.duration_seconds,
        "message": notification.message,
        **({"step": notification.step} if notification.step is not None else {}),
    }


def email_content(notification: Notification) -> tuple[str, str]:
    """(subject, plain-text body) of the mail for ``notification``."""
    build = notification.build
    result = _RESULT_WORDS.get(build.state, build.state.value)
    label = "fixed" if notification.event == "fixed" else result.split(" (")[0]
    subject = f"[Conveyor] {build.job} #{build.number} {label}"
    lines = [
        notification.message,
        "",
        f"Job:      {build.job}",
        f"Build:    #{build.number} (id {build.id})",
        f"Result:   {build.state.value}",
        f"Event:    {notification.event}",
        f"Cause:    {build.cause or '-'}",
        f"Duration: {format_duration(build.duration_seconds)}",
        f"Started:  {_iso(build.started_at) or '-'}",
        f"Finished: {_iso(build.finished_at) or '-'}",
        f"URL:      {notification.url}",
    ]
    return subject, "\n".join(lines) + "\n"


def sign(body: bytes, secret: str) -> str:
    """``sha256=<hex HMAC-SHA256 of body>``, the value of ``X-Conveyor-Signature``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery_headers(
    body: bytes,
    event: str,
    delivery_id: str,
    secret: str | None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Headers of a webhook request; the ``X-Conveyor-*`` ones win over ``extra``."""
    headers = {
        k: v
        for k, v in (extra or {}).items()
        if k.lower() not in ("content-type", "content-length")
        and not k.lower().startswith("x-conveyor-")
    }
    headers["Content-Type"] = "application/json"
    headers[EVENT_HEADER] = event
    headers[DELIVERY_HEADER] = delivery_id
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    return headers


def backoff_delay(attempt: int, base: float, cap: float, jitter: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): exponential
    (``base * 2**(attempt-1)``, at most ``cap``) with "equal jitter": between half and all
    of it, ``jitter`` being a random number in [0, 1)."""
    delay: float = min(cap, base * 2.0 ** max(0, attempt - 1))
    return delay / 2 + delay / 2 * min(max(jitter, 0.0), 1.0)
