"""Sending build notifications: webhooks (HMAC-signed), Slack, email.

:class:`Notifier` is told about every finished build. In a background task (finishing a
build never waits on it) it looks up the job's previous result and its pipeline's
``notify`` block, asks :func:`conveyor.core.notifications.decide_notifications` whom
to tell, claims each delivery by inserting its row (exactly once per build, notifier
and event, also with several controllers) and sends, retrying with exponential
backoff and jitter. Every delivery's outcome is recorded in
``notification_deliveries`` (``conveyor.store.notifications``).

Secrets are never in the configuration file, only the names of environment variables
holding them; they are read when sending, and scrubbed from recorded errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import smtplib
import ssl
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from pydantic import TypeAdapter

from conveyor.controller.clock import Clock
from conveyor.core.notifications import (
    MAX_ATTEMPTS,
    BuildFacts,
    EmailNotifier,
    Notification,
    NotificationsConfig,
    NotifierConfig,
    NotifyEntry,
    Rule,
    SlackNotifier,
    WebhookNotifier,
    backoff_delay,
    build_events,
    build_message,
    build_url,
    decide_notifications,
    delivery_headers,
    email_content,
    parse_notifications_config,
    payload_for,
    substitute_parameters,
)
from conveyor.core.pipeline import SpecError, parse_pipeline
from conveyor.core.plan import BuildPlan, PostCondition, StepPlan
from conveyor.core.states import FINISHED_STATES, BuildState, StepState
from conveyor.errors import NotFound
from conveyor.settings import Settings
from conveyor.store import Store
from conveyor.store.notifications import (
    DELIVERED,
    FAILED,
    DeliveryRecord,
    claim_delivery,
    finish_delivery,
    record_attempt,
    set_build_step,
)
from conveyor.store.records import BuildRecord

log = structlog.get_logger(__name__)

__all__ = ["DeliveryError", "Notifier", "load_notifications_config"]

TIMEOUT_SECONDS = 10.0
RETRYABLE_STATUS = frozenset({408, 425, 429})
#: The post block run for each result (then ``always``), as on the agent; lost too here.
POST_FOR: dict[BuildState, PostCondition] = {
    BuildState.SUCCEEDED: "success",
    BuildState.FAILED: "failure",
    BuildState.TIMED_OUT: "failure",
    BuildState.LOST: "failure",
    BuildState.CANCELLED: "cancelled",
}
MAX_EVENT_LENGTH = 20  # notification_deliveries.event


def post_step_event(key: str) -> str:
    """The delivery row's event for a ``notify`` post step: ``post.failure.0`` →
    ``post:failure.0``. It never equals an event of rules or ``notify`` entries (those
    have no ``:``), so the unique (build, notifier, event) keys cannot collide."""
    return "post:" + key.removeprefix("post.")


class DeliveryError(Exception):
    """A failed attempt. ``permanent``: trying again cannot help (bad configuration,
    a 4xx answer), so the delivery fails at once."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def load_notifications_config(path: Path) -> NotificationsConfig:
    """Read and validate the notifications file; a problem stops the controller's start
    with ``file:line: path: message`` (a ValueError)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the notifications file {path}: {exc}") from exc
    return parse_notifications_config(text, str(path))


def _kind(config: NotifierConfig | None) -> str:
    return "unknown" if config is None else config.type


def _facts(build: BuildRecord) -> BuildFacts:
    return BuildFacts(
        id=build.id,
        job=build.job_name,
        number=build.number,
        state=build.state,
        cause=build.cause,
        queued_at=build.queued_at,
        started_at=build.started_at,
        finished_at=build.finished_at,
        trigger=build.trigger,
    )


_NOTIFIER_ADAPTER: TypeAdapter[NotifierConfig] | None = None


def _notifier_adapter() -> TypeAdapter[NotifierConfig]:
    """One TypeAdapter for the process: building it generates the union's schema,
    which cost more than the rest of a finished build's notification check."""
    global _NOTIFIER_ADAPTER
    if _NOTIFIER_ADAPTER is None:
        _NOTIFIER_ADAPTER = TypeAdapter(NotifierConfig)
    return _NOTIFIER_ADAPTER


def _has_notify_steps(plan: Mapping[str, Any], condition: str) -> bool:
    """Whether the stored plan has ``notify`` post steps for ``condition`` or ``always``,
    looked up in the raw JSON (validating the whole plan for every build is not free)."""
    post = plan.get("post")
    if not isinstance(post, Mapping):
        return True  # unexpected shape: let the validation speak
    for block in (condition, "always"):
        for step in post.get(block) or ():
            if not isinstance(step, Mapping) or step.get("kind") == "notify":
                return True
    return False


class Notifier:
    """Decides and delivers the notifications of finished builds.

    ``config`` is the parsed notifications file (``None``: none given, so only
    pipelines' ``notify`` entries are considered, and they fail as not configured).
    ``base_delay``/``max_delay`` shape the backoff between attempts; ``environ`` is
    where secrets are looked up (default: the process environment, read at send time).
    """

    def __init__(
        self,
        store: Store,
        config: NotificationsConfig | None,
        clock: Clock,
        *,
        base_url: str = "",
        environ: Mapping[str, str] | None = None,
        max_attempts: int = MAX_ATTEMPTS,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        timeout: float = TIMEOUT_SECONDS,
        jitter: Callable[[], float] = random.random,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        config_source: str | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.base_url = base_url
        self.environ = os.environ if environ is None else environ
        self.max_attempts = max(1, max_attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self._jitter = jitter
        self._sleep = sleep
        self._config_source = config_source
        self._http: httpx.AsyncClient | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # Notifiers (and their rules) a config apply stored (docs/config-as-code.md),
        # read again for every build; the file's notifier wins a name clash.
        self._stored: dict[str, NotifierConfig] = {}
        self._stored_rules: list[Rule] = []

    async def load_stored(self) -> None:
        """Read the notifiers a config apply stored. On a store error the last ones
        read stay in use (the file's notifiers never depend on the store)."""
        from conveyor.controller.config_kinds import stored_notifiers

        try:
            async with self.store.read() as conn:
                rows = await stored_notifiers(conn)
        except Exception as exc:
            log.warning("notifications.stored_unreadable", error=repr(exc))
            return
        adapter = _notifier_adapter()
        file_names = set(self.config.notifiers) if self.config is not None else set()
        stored: dict[str, NotifierConfig] = {}
        rules: list[Rule] = []
        for name, (document, raw_rules) in rows.items():
            if name in file_names:
                log.warning("notifications.name_clash", notifier=name, used="file")
                continue
            try:
                stored[name] = adapter.validate_python(document)
                rules.extend(Rule.model_validate({**r, "notifiers": [name]}) for r in raw_rules)
            except ValueError as exc:
                log.warning("notifications.stored_invalid", notifier=name, error=str(exc))
        self._stored, self._stored_rules = stored, rules

    @classmethod
    def from_settings(cls, settings: Settings, store: Store, clock: Clock) -> Notifier:
        """From ``settings.notifications_file`` and ``settings.public_url``; raises
        ValueError (``file:line: path: message``) for a bad notifications file."""
        path: Path | None = getattr(settings, "notifications_file", None)
        config = load_notifications_config(Path(path)) if path else None
        base_url = settings.public_url or ""
        return cls(store, config, clock, base_url=base_url, config_source=str(path or ""))

    # ------------------------------------------------------------------ entry points

    async def on_build_finished(
        self, build: BuildRecord, pipeline_notify: Sequence[NotifyEntry] | None = None
    ) -> None:
        """Schedule the build's notifications and return at once.

        ``pipeline_notify`` is the pipeline's ``notify`` block; ``None`` means "read it
        from the job's spec at the build's spec version" (in the background task)."""
        if not build.state.finished:
            return
        task = asyncio.create_task(self._notify_quietly(build, pipeline_notify))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def notify(
        self, build: BuildRecord, pipeline_notify: Sequence[NotifyEntry] | None = None
    ) -> list[DeliveryRecord]:
        """Decide, claim and deliver; returns the deliveries this call made (those another
        controller or an earlier call had claimed are left to it)."""
        if pipeline_notify is None:
            pipeline_notify = await self._pipeline_notify(build)
        await self.load_stored()
        rules = [*(self.config.rules if self.config is not None else []), *self._stored_rules]
        if not rules and not pipeline_notify:
            return []
        previous = await self.store.list_builds(
            build.job_name, states=sorted(FINISHED_STATES), before_id=build.id, limit=1
        )
        notifications = decide_notifications(
            _facts(build),
            previous[0].state if previous else None,
            rules,
            pipeline_notify,
            self.base_url,
        )
        if not notifications:
            return []
        results = await asyncio.gather(
            *(self._claim_and_deliver(n) for n in notifications), return_exceptions=True
        )
        delivered: list[DeliveryRecord] = []
        for notification, result in zip(notifications, results, strict=True):
            if isinstance(result, DeliveryRecord):
                delivered.append(result)
            elif isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                log.warning(
                    "notification.error",
                    build_id=build.id,
                    notifier=notification.notifier,
                    error=repr(result),
                )
        return delivered

    async def run_post_notify_steps(self, build: BuildRecord) -> list[DeliveryRecord]:
        """Run the ``notify`` steps of the post blocks matching the build's result
        (``success``; ``failure`` for failed, timed out and lost; ``cancelled``), then of
        ``always``, in order; each is delivered once (claimed like any delivery) and its
        step row set ``running``, then ``succeeded`` or ``failed``. Steps of other blocks
        stay ``skipped``. Returns the deliveries this call made."""
        condition = POST_FOR.get(build.state)
        if condition is None or not build.plan or not _has_notify_steps(build.plan, condition):
            return []
        try:
            plan = BuildPlan.model_validate(build.plan)
        except ValueError as exc:
            log.warning("notifications.bad_plan", build_id=build.id, error=str(exc))
            return []
        steps = [
            step
            for block in (condition, "always")
            for step in plan.post.get(block, [])
            if step.kind == "notify" and step.notifier
        ]
        if not steps:
            return []
        await self.load_stored()
        previous = await self.store.list_builds(
            build.job_name, states=sorted(FINISHED_STATES), before_id=build.id, limit=1
        )
        previous_state = previous[0].state if previous else None
        delivered: list[DeliveryRecord] = []
        for step in steps:
            try:
                record = await self._run_notify_step(build, previous_state, step)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one step's trouble must not stop the others
                log.warning(
                    "notification.step_error", build_id=build.id, step=step.key, error=repr(exc)
                )
                await self._finish_step(build.id, step.key, StepState.FAILED)
                continue
            if record is not None:
                delivered.append(record)
        return delivered

    async def _run_notify_step(
        self, build: BuildRecord, previous: BuildState | None, step: StepPlan
    ) -> DeliveryRecord | None:
        assert step.notifier is not None
        facts = _facts(build)
        event = build_events(build.state, previous)[0]
        url = build_url(build.id, self.base_url)
        message = build_message(facts, event, previous, url)
        if step.message:
            message = substitute_parameters(step.message, build.parameters) + "\n" + message
        notification = Notification(
            notifier=step.notifier,
            event=event,
            build=facts,
            url=url,
            message=message,
            previous=previous,
            reasons=(f"post step {step.key}",),
            step=step.key,
        )
        record_event = post_step_event(step.key)
        if len(record_event) > MAX_EVENT_LENGTH:
            log.warning("notification.step_key_too_long", build_id=build.id, step=step.key)
            await self._finish_step(build.id, step.key, StepState.FAILED)
            return None
        record = await self._claim_and_deliver(
            notification, record_event, on_claimed=lambda: self._start_step(build.id, step.key)
        )
        if record is not None:  # None: another controller (or an earlier call) owns it
            state = StepState.SUCCEEDED if record.state == DELIVERED else StepState.FAILED
            await self._finish_step(build.id, step.key, state)
        return record

    async def _start_step(self, build_id: int, key: str) -> None:
        await set_build_step(self.store, build_id, key, StepState.RUNNING, self.clock())

    async def _finish_step(self, build_id: int, key: str, state: StepState) -> None:
        await set_build_step(self.store, build_id, key, state, self.clock())

    async def drain(self, timeout: float | None = 10.0) -> None:
        """Wait for the deliveries in flight (tests; shutdown)."""
        while self._background:
            done, _ = await asyncio.wait(set(self._background), timeout=timeout)
            if not done:
                break

    async def close(self, timeout: float = 5.0) -> None:
        """At shutdown: give deliveries ``timeout`` seconds, cancel the rest, close HTTP.
        A cancelled delivery's row stays ``sending`` with the attempts it made."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout)
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(set(self._background), timeout=1.0)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ------------------------------------------------------------------ internals

    async def _notify_quietly(
        self, build: BuildRecord, pipeline_notify: Sequence[NotifyEntry] | None
    ) -> None:
        try:
            await self.notify(build, pipeline_notify)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let a notification problem hurt the controller
            log.warning("notifications.failed", build_id=build.id, error=repr(exc))

    async def _pipeline_notify(self, build: BuildRecord) -> list[NotifyEntry]:
        """The ``notify`` block of the spec this build was planned from."""
        try:
            job = await self.store.get_job(build.job_name)
            spec = job.spec
            if job.version != build.spec_version:
                versions = await self.store.job_versions(build.job_name)
                spec = next((v.spec for v in versions if v.version == build.spec_version), spec)
            if "notify" not in spec:  # the common case: no need to parse the spec
                return []
            return list(parse_pipeline(spec, f"{build.job_name}.yml").notify)
        except (NotFound, SpecError) as exc:
            log.info("notifications.no_spec", build_id=build.id, error=str(exc))
            return []

    def _notifier(self, name: str) -> NotifierConfig | None:
        found = None if self.config is None else self.config.notifiers.get(name)
        return found if found is not None else self._stored.get(name)

    async def _claim_and_deliver(
        self,
        notification: Notification,
        record_event: str | None = None,
        on_claimed: Callable[[], Awaitable[None]] | None = None,
    ) -> DeliveryRecord | None:
        """Claim the delivery's row (event ``record_event``, default the notification's)
        and, when this call won it, run ``on_claimed`` and deliver."""
        config = self._notifier(notification.notifier)
        record = await claim_delivery(
            self.store,
            notification.build.id,
            notification.notifier,
            record_event or notification.event,
            _kind(config),
            str(uuid.uuid4()),
            notification.reason,
            self.clock(),
        )
        if record is None:  # another controller (or an earlier call) owns it
            return None
        if on_claimed is not None:
            await on_claimed()
        if config is None:
            where = (
                f"the notifications file {self._config_source}"
                if self.config is not None
                else "no notifications file is configured (CONVEYOR_NOTIFICATIONS_FILE)"
            )
            error = f"notifier {notification.notifier!r} is not configured: {where}"
            log.warning("notification.unknown_notifier", build_id=record.build_id, error=error)
            return await finish_delivery(self.store, record.id, FAILED, 0, error, self.clock())
        return await self._deliver(record, notification, config)

    async def _deliver(
        self, record: DeliveryRecord, notification: Notification, config: NotifierConfig
    ) -> DeliveryRecord:
        attempts, error = 0, None
        for attempt in range(1, self.max_attempts + 1):
            attempts = attempt
            secrets: list[str] = []
            try:
                await self._send(config, notification, record.delivery_id, secrets)
            except Exception as exc:
                permanent = isinstance(exc, DeliveryError) and exc.permanent
                error = _redact(_describe(exc), secrets)
                log.info(
                    "notification.attempt_failed",
                    build_id=record.build_id,
                    notifier=record.notifier,
                    attempt=attempt,
                    error=error,
                )
                if permanent or attempt == self.max_attempts:
                    break
                try:  # progress is informative only: a store hiccup must not stop retries
                    await record_attempt(self.store, record.id, attempt, error, self.clock())
                except Exception as exc:
                    log.warning("notification.record_failed", delivery=record.id, error=repr(exc))
                await self._sleep(
                    backoff_delay(attempt, self.base_delay, self.max_delay, self._jitter())
                )
            else:
                log.info(
                    "notification.delivered",
                    build_id=record.build_id,
                    notifier=record.notifier,
                    attempts=attempt,
                )
                return await finish_delivery(
                    self.store, record.id, DELIVERED, attempt, error, self.clock()
                )
        log.warning(
            "notification.failed",
            build_id=record.build_id,
            notifier=record.notifier,
            attempts=attempts,
            error=error,
        )
        return await finish_delivery(self.store, record.id, FAILED, attempts, error, self.clock())

    def _env(self, name: str, what: str, secrets: list[str]) -> str:
        value = self.environ.get(name)
        if not value:
            raise DeliveryError(f"environment variable {name} ({what}) is not set", True)
        secrets.append(value)
        return value

    async def _send(
        self, config: NotifierConfig, n: Notification, delivery_id: str, secrets: list[str]
    ) -> None:
        if isinstance(config, WebhookNotifier):
            secret = (
                self._env(config.secret_env, "secret_env", secrets)
                if config.secret_env is not None
                else None
            )
            body = _json(payload_for(n, "webhook"))
            headers = delivery_headers(body, n.event, delivery_id, secret, config.headers)
            await self._post(config.url, body, headers)
        elif isinstance(config, SlackNotifier):
            url = self._env(config.webhook_url_env, "webhook_url_env", secrets)
            body = _json(payload_for(n, "slack"))
            await self._post(url, body, {"Content-Type": "application/json"})
        elif isinstance(config, EmailNotifier):
            username = password = None
            if config.username_env is not None and config.password_env is not None:
                username = self._env(config.username_env, "username_env", secrets)
                password = self._env(config.password_env, "password_env", secrets)
            subject, text = email_content(n)
            message = EmailMessage()
            message["Subject"] = subject
            message["From"] = config.from_
            message["To"] = ", ".join(config.to)
            message["X-Conveyor-Event"] = n.event
            message["X-Conveyor-Delivery"] = delivery_id
            message.set_content(text)
            await asyncio.to_thread(_send_mail, config, message, username, password, self.timeout)
        else:  # pragma: no cover - the config models allow nothing else
            raise DeliveryError(f"unsupported notifier type {config!r}", True)

    async def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(self.timeout))
        try:
            response = await self._http.post(url, content=body, headers=dict(headers))
        except httpx.TimeoutException as exc:
            raise DeliveryError(
                f"timed out after {self.timeout:g}s ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
        if response.is_success:
            return
        detail = response.text.strip().replace("\n", " ")[:200]
        status = response.status_code
        message = f"HTTP {status}" + (f": {detail}" if detail else "")
        if 300 <= status < 400:
            message += " (redirects are not followed)"
        raise DeliveryError(message, permanent=status < 500 and status not in RETRYABLE_STATUS)


def _send_mail(
    config: EmailNotifier,
    message: EmailMessage,
    username: str | None,
    password: str | None,
    timeout: float,
) -> None:
    """Blocking SMTP (run in a thread); 5xx answers and refused logins are permanent."""
    try:
        with smtplib.SMTP(config.host, config.port, timeout=timeout) as smtp:
            smtp.ehlo()
            if config.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if username is not None and password is not None:
                smtp.login(username, password)
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"SMTP refused every recipient: {exc.recipients}", True) from exc
    except smtplib.SMTPResponseException as exc:
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else ""
        raise DeliveryError(
            f"SMTP {exc.smtp_code}: {text}".strip(), permanent=500 <= exc.smtp_code < 600
        ) from exc
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryError(f"SMTP: {exc}", True) from exc


def _json(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, DeliveryError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` without the secrets; for a secret URL (a Slack webhook) also without its
    path and query, which servers like to echo back in error messages."""
    parts = list(secrets)
    for secret in secrets:
        if secret.startswith(("http://", "https://")):
            url = urlsplit(secret)
            parts += [url.path + ("?" + url.query if url.query else ""), url.path, url.query]
    for secret in sorted((p for p in parts if len(p) >= 4), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
