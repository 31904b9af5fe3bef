"""Incoming SCM webhooks: checking who sent them, and reading what happened.

Verification (:func:`verify`) per provider:

* GitHub: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>``;
* Gitea: ``X-Gitea-Signature: <hex HMAC-SHA256>`` (or GitHub's header);
* GitLab: ``X-Gitlab-Token: <secret>`` (GitLab sends the secret itself);
* generic: an HMAC in ``X-Hub-Signature-256`` / ``X-Conveyor-Signature``
  (``sha256=<hex>``), or the secret in ``X-Conveyor-Token``.

:func:`parse_event` turns a payload into a :class:`ScmEvent` (push, tag, pull
request, ping). Pure code: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["PROVIDERS", "EventError", "ScmEvent", "parse_event", "verify"]

PROVIDERS = ("github", "gitlab", "gitea", "generic")
EventKind = Literal["push", "tag", "pull_request", "ping", "other"]
_ZERO = "0" * 40


class EventError(ValueError):
    """The payload is not a webhook this provider sends (the message says what is missing)."""


@dataclass(frozen=True)
class ScmEvent:
    kind: EventKind
    name: str  # the provider's event name, e.g. "push", "Merge Request Hook"
    repo_urls: tuple[str, ...] = ()
    branch: str | None = None  # push: the branch; pull request: the source branch
    tag: str | None = None
    sha: str | None = None
    deleted: bool = False  # push/tag: the ref was deleted; pull request: it was closed
    pull_request: int | None = None
    target_branch: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str | None:
        if self.tag is not None:
            return f"refs/tags/{self.tag}"
        if self.pull_request is not None:
            return f"pull/{self.pull_request}"
        return f"refs/heads/{self.branch}" if self.branch else None


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _check_signature(header: str | None, secret: str, body: bytes) -> bool:
    if not header:
        return False
    given = header.strip().removeprefix("sha256=")
    return hmac.compare_digest(given.lower(), _hmac_hex(secret, body))


def verify(provider: str, headers: Mapping[str, str], body: bytes, secret: str) -> bool:
    """Whether the request was signed (or carries the token) with ``secret``.
    ``headers`` must be case-insensitive (or lower-case keys)."""
    if not secret:
        return False
    if provider == "gitlab":
        token = headers.get("x-gitlab-token")
        return token is not None and hmac.compare_digest(token.encode(), secret.encode())
    if provider == "gitea":
        sig = headers.get("x-gitea-signature") or headers.get("x-hub-signature-256")
        return _check_signature(sig, secret, body)
    if provider == "github":
        return _check_signature(headers.get("x-hub-signature-256"), secret, body)
    sig = headers.get("x-conveyor-signature") or headers.get("x-hub-signature-256")
    if sig:
        return _check_signature(sig, secret, body)
    token = headers.get("x-conveyor-token")
    return token is not None and hmac.compare_digest(token.encode(), secret.encode())


def _dig(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _urls(*values: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if isinstance(v, str) and v))


def _ref_event(name: str, ref: Any, sha: Any, before: Any, urls: tuple[str, ...]) -> ScmEvent:
    if not isinstance(ref, str) or not ref:
        raise EventError("the push names no 'ref'")
    deleted = sha in (None, _ZERO) and before not in (None, _ZERO)
    sha_value = sha if isinstance(sha, str) and sha != _ZERO else None
    if ref.startswith("refs/tags/"):
        return ScmEvent(
            "tag", name, urls, tag=ref.removeprefix("refs/tags/"), sha=sha_value, deleted=deleted
        )
    return ScmEvent(
        "push", name, urls, branch=ref.removeprefix("refs/heads/"), sha=sha_value, deleted=deleted
    )


def _github_like(event: str, data: dict[str, Any]) -> ScmEvent:
    repo = data.get("repository") or {}
    urls = _urls(
        repo.get("clone_url"),
        repo.get("ssh_url"),
        repo.get("html_url"),
        repo.get("git_url"),
        repo.get("url") if isinstance(repo, dict) else None,
    )
    if event == "ping":
        return ScmEvent("ping", event, urls)
    if event == "push":
        return _ref_event(event, data.get("ref"), data.get("after"), data.get("before"), urls)
    if event == "create" and data.get("ref_type") == "tag":  # Gitea sends create for tags too
        return ScmEvent("tag", event, urls, tag=str(data.get("ref")), sha=data.get("sha"))
    if event == "pull_request":
        pr = data.get("pull_request") or {}
        action = str(data.get("action") or "")
        closed = action == "closed"  # merged or not: the request's job is archived
        if action not in ("opened", "synchronize", "synchronized", "reopened", "edited") and (
            not closed
        ):
            return ScmEvent("other", f"pull_request {action}", urls)
        head_repo = _dig(pr, "head", "repo") or {}
        base_repo = _dig(pr, "base", "repo") or {}
        return ScmEvent(
            "pull_request",
            event,
            _urls(*urls, base_repo.get("clone_url"), head_repo.get("clone_url")),
            branch=_dig(pr, "head", "ref"),
            sha=_dig(pr, "head", "sha"),
            pull_request=int(pr.get("number") or data.get("number") or 0) or None,
            target_branch=_dig(pr, "base", "ref"),
            deleted=closed,
        )
    return ScmEvent("other", event, urls)


def _gitlab(event: str, data: dict[str, Any]) -> ScmEvent:
    project = data.get("project") or {}
    repo = data.get("repository") or {}
    urls = _urls(
        project.get("git_http_url"),
        project.get("git_ssh_url"),
        project.get("web_url"),
        repo.get("git_http_url"),
        repo.get("homepage"),
    )
    kind = data.get("object_kind") or event
    if kind in ("push", "tag_push", "Push Hook", "Tag Push Hook"):
        sha = data.get("checkout_sha") or data.get("after")
        return _ref_event(event, data.get("ref"), sha, data.get("before"), urls)
    if kind in ("merge_request", "Merge Request Hook"):
        attrs = data.get("object_attributes") or {}
        action = str(attrs.get("action") or "")
        closed = action in ("close", "merge")
        if action not in ("open", "reopen", "update") and not closed:
            return ScmEvent("other", f"merge_request {action}", urls)
        source = attrs.get("source") or {}
        return ScmEvent(
            "pull_request",
            event,
            _urls(*urls, source.get("git_http_url")),
            branch=attrs.get("source_branch"),
            sha=_dig(attrs, "last_commit", "id"),
            pull_request=int(attrs.get("iid") or 0) or None,
            target_branch=attrs.get("target_branch"),
            deleted=closed,
        )
    return ScmEvent("other", str(kind), urls)


def _generic(data: dict[str, Any]) -> ScmEvent:
    repo = data.get("repository") or data.get("repo")
    if isinstance(repo, dict):
        repo = repo.get("url")
    if not isinstance(repo, str) or not repo:
        raise EventError("a generic webhook needs 'repository' (the clone URL)")
    ref = data.get("ref")
    if not ref and data.get("branch"):
        ref = f"refs/heads/{data['branch']}"
    if not ref and data.get("tag"):
        ref = f"refs/tags/{data['tag']}"
    if not ref:
        raise EventError("a generic webhook needs 'ref', 'branch' or 'tag'")
    return _ref_event("push", ref, data.get("commit") or data.get("after"), None, (repo,))


def parse_event(provider: str, headers: Mapping[str, str], data: Any) -> ScmEvent:
    if not isinstance(data, dict):
        raise EventError("the payload must be a JSON object")
    if provider == "github":
        return _github_like(headers.get("x-github-event") or "", data)
    if provider == "gitea":
        event = headers.get("x-gitea-event") or headers.get("x-github-event") or ""
        return _github_like(event, data)
    if provider == "gitlab":
        return _gitlab(headers.get("x-gitlab-event") or "", data)
    if provider == "generic":
        return _generic(data)
    raise EventError(f"unknown provider {provider!r} (known: {', '.join(PROVIDERS)})")
