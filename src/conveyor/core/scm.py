"""What a job says about its repository and triggers, and the pure rules around them.

* :class:`ScmSpec` is a pipeline's ``scm`` block: the repository URL, one branch or a
  branch pattern (multibranch), the path of the pipeline file in the repository (for
  a job whose pipeline lives in the repository), and a credential id.
* :class:`TriggersSpec` is its ``triggers`` block: cron, SCM polling, upstream jobs.
* :func:`normalize_repo_url` makes the many spellings of one repository comparable
  (webhooks name repositories by their clone, SSH or web URL).
* :func:`branch_matches` matches ``release/*``-style patterns.
* :func:`sub_job_name` names the per-branch job of a multibranch job.

Pure code: no I/O.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DEFAULT_PIPELINE_PATH",
    "ScmSpec",
    "TriggersSpec",
    "UpstreamTrigger",
    "branch_matches",
    "mirror_key",
    "normalize_repo_url",
    "pr_job_name",
    "sub_job_name",
    "tag_job_name",
]

DEFAULT_PIPELINE_PATH = "conveyor.yml"
_SHA = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_BRANCH_CHARS = re.compile(r"[A-Za-z0-9._/*?-]+")


def _str(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class ScmSpec(_Model):
    """``scm: {git: URL, branch: main | branches: "release/*", path: conveyor.yml,
    credential: ID}``. Without ``branch`` or ``branches`` the branch is ``main``."""

    git: Annotated[str, Field(min_length=1, max_length=2000)]
    branch: Annotated[str, Field(min_length=1, max_length=250)] | None = None
    branches: Annotated[str, Field(min_length=1, max_length=1000)] | None = None
    path: Annotated[str, Field(min_length=1, max_length=500)] = DEFAULT_PIPELINE_PATH
    credential: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    # Tag pushes whose name matches this pattern build too (e.g. "v*").
    tags: Annotated[str, Field(min_length=1, max_length=250)] | None = None
    # Pull/merge request events build the request's head commit.
    pull_requests: bool = False

    @field_validator("git")
    @classmethod
    def _url(cls, value: str) -> str:
        if value != value.strip() or any(c.isspace() for c in value):
            raise ValueError(f"invalid repository URL {value!r}: no spaces")
        scheme = urlsplit(value).scheme
        if scheme not in ("file", "http", "https", "git", "ssh") and not re.fullmatch(
            r"[\w.-]+@[\w.-]+:.+", value
        ):
            raise ValueError(
                f"invalid repository URL {value!r}: use file://, http(s)://, git://, ssh:// "
                "or user@host:path"
            )
        if scheme in ("http", "https") and urlsplit(value).password:
            raise ValueError("put no password in the repository URL; use 'credential'")
        return value

    @field_validator("branch", "branches", "tags")
    @classmethod
    def _branch(cls, value: str | None) -> str | None:
        if value is not None:
            for pattern in _patterns(value):
                if not _BRANCH_CHARS.fullmatch(pattern) or ".." in pattern:
                    raise ValueError(f"invalid branch name or pattern {pattern!r}")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/"):
            raise ValueError(f"invalid pipeline path {value!r}: relative, without '..'")
        return value

    @model_validator(mode="after")
    def _one_branch_form(self) -> ScmSpec:
        if self.branch is not None and self.branches is not None:
            raise ValueError("give either 'branch' (one) or 'branches' (a pattern), not both")
        if self.branch is not None and any(c in self.branch for c in "*?"):
            raise ValueError("'branch' names one branch; use 'branches' for a pattern")
        return self

    @property
    def multibranch(self) -> bool:
        return self.branches is not None

    @property
    def default_branch(self) -> str:
        return self.branch or "main"


class UpstreamTrigger(_Model):
    """Start this job when ``job`` ends with ``on`` (success by default)."""

    job: Annotated[str, Field(min_length=1, max_length=200)]
    on: Literal["success", "failure", "always"] = "success"
    parameters: dict[str, Annotated[str, BeforeValidator(_str)]] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on:` key as the boolean true.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = dict(data)
            data["on"] = data.pop(True)
        return data


def _poll(value: Any) -> Any:
    if value is True:
        return "default"
    if value is False or value is None:
        return None
    return value


class TriggersSpec(_Model):
    """``triggers: {cron: "H/15 * * * *", timezone: Europe/Berlin, poll: 60s | true,
    webhook: true, upstream: [{job: A, on: success, parameters: {K: V}}]}``."""

    cron: Annotated[str, Field(min_length=1, max_length=500)] | None = None
    timezone: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    # Poll the repository with `git ls-remote`: an interval like "60s", or true for the
    # controller's default interval (setting scm_poll_interval).
    poll: Annotated[str | float | None, BeforeValidator(_poll)] = None
    webhook: bool = True
    upstream: list[UpstreamTrigger] = Field(default_factory=list)

    def poll_seconds(self, default: float) -> float | None:
        if self.poll is None:
            return None
        if self.poll == "default":
            return default
        from conveyor.core.pipeline import parse_duration  # same duration syntax

        return parse_duration(self.poll)

    @field_validator("poll")
    @classmethod
    def _poll_interval(cls, value: str | float | None) -> str | float | None:
        if value is not None and value != "default":
            from conveyor.core.pipeline import parse_duration

            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _cron_valid(self) -> TriggersSpec:
        from conveyor.core.cron import CronError, parse_cron

        if self.cron is not None:
            try:
                parse_cron(self.cron, "check", self.timezone or "UTC")
            except CronError as exc:
                raise ValueError(f"cron: {exc}") from None
        elif self.timezone is not None:
            try:
                parse_cron("0 0 * * *", "check", self.timezone)
            except CronError as exc:
                raise ValueError(str(exc)) from None
        return self


def _patterns(text: str) -> list[str]:
    return [p for p in re.split(r"[\s,]+", text.strip()) if p]


def _glob(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def branch_matches(pattern: str, branch: str) -> bool:
    """``release/*`` matches ``release/1.0`` (not ``release/1/x``; ``**`` does);
    several patterns may be given separated by spaces or commas."""
    return any(_glob(p).fullmatch(branch) for p in _patterns(pattern))


def _segment(ref: str) -> str:
    segment = re.sub(r"[^A-Za-z0-9._-]+", "-", ref).strip("-.") or "branch"
    if not segment[0].isalnum():
        segment = "b" + segment
    return segment


def sub_job_name(job: str, branch: str) -> str:
    """The per-branch job of a multibranch job: ``svc`` + ``feature/x`` -> ``svc/feature-x``
    (one name segment per branch, so sub-jobs never collide with folders)."""
    segment = _segment(branch)
    if segment in ("builds", "versions"):
        segment = f"{segment}-branch"
    return f"{job}/{segment}"


def pr_job_name(job: str, number: int) -> str:
    """The job of pull/merge request 12 of ``svc``: ``svc/PR-12`` (Jenkins' name)."""
    return f"{job}/PR-{number}"


def tag_job_name(job: str, tag: str) -> str:
    """The job of tag ``v1.2`` of ``svc``: ``svc/tag-v1.2`` (prefixed, so a tag never
    takes the name of a branch job)."""
    return f"{job}/tag-{_segment(tag)}"


def normalize_repo_url(url: str) -> str:
    """One spelling per repository: no scheme, user or ``.git``; lower-case host.
    ``https://GitHub.com/o/r.git``, ``git@github.com:o/r`` and ``ssh://git@github.com/o/r``
    all give ``github.com/o/r``; ``file:///srv/r.git`` gives ``/srv/r``."""
    text = url.strip()
    scp = re.fullmatch(r"(?:[\w.-]+@)?([\w.-]+):(?!//)(.+)", text)
    if scp and "://" not in text:
        host, path = scp.group(1).lower(), scp.group(2)
    else:
        parts = urlsplit(text)
        host = (parts.hostname or "").lower()
        if parts.port and parts.scheme not in ("http", "https", "ssh", "git"):
            host += f":{parts.port}"
        elif parts.port and parts.scheme in ("http", "https", "git"):
            # A non-default port is part of the identity (test servers, self-hosted).
            default = {"http": 80, "https": 443, "git": 9418}[parts.scheme]
            if parts.port != default:
                host += f":{parts.port}"
        path = parts.path
    path = path.rstrip("/")
    path = path.removesuffix(".git").rstrip("/")
    if host:
        return f"{host}/{path.lstrip('/')}"
    return path


def mirror_key(url: str) -> str:
    """The folder name of a repository's mirror in a cache (stable, filesystem-safe)."""
    return hashlib.sha256(normalize_repo_url(url).encode()).hexdigest()[:24]


def is_commit_sha(text: str) -> bool:
    return bool(_SHA.fullmatch(text))
