"""Webhook verification and payload reading for GitHub, GitLab, Gitea and generic;
repository URL normalisation, branch patterns, spec validation (pure code)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from conveyor.core.pipeline import SpecError, parse_pipeline
from conveyor.core.scm import branch_matches, normalize_repo_url, sub_job_name
from conveyor.core.webhooks import EventError, parse_event, verify

BODY = b'{"ref": "refs/heads/main"}'
SECRET = "topsecret"
SIG = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()


def test_verification_per_provider() -> None:
    assert verify("github", {"x-hub-signature-256": f"sha256={SIG}"}, BODY, SECRET)
    assert not verify("github", {"x-hub-signature-256": f"sha256={SIG}"}, BODY + b" ", SECRET)
    assert not verify("github", {}, BODY, SECRET)
    assert verify("gitea", {"x-gitea-signature": SIG}, BODY, SECRET)
    assert verify("gitlab", {"x-gitlab-token": SECRET}, BODY, SECRET)
    assert not verify("gitlab", {"x-gitlab-token": "nope"}, BODY, SECRET)
    assert verify("generic", {"x-conveyor-signature": f"sha256={SIG}"}, BODY, SECRET)
    assert verify("generic", {"x-conveyor-token": SECRET}, BODY, SECRET)
    assert not verify("generic", {"x-conveyor-token": SECRET}, BODY, "")


def test_github_and_gitea_events() -> None:
    repo = {"clone_url": "https://github.com/o/r.git", "ssh_url": "git@github.com:o/r.git"}
    push = parse_event(
        "github",
        {"x-github-event": "push"},
        {"ref": "refs/heads/feature/x", "after": "a" * 40, "before": "b" * 40, "repository": repo},
    )
    assert (push.kind, push.branch, push.sha, push.deleted) == (
        "push",
        "feature/x",
        "a" * 40,
        False,
    )
    deleted = parse_event(
        "gitea",
        {"x-gitea-event": "push"},
        {"ref": "refs/heads/x", "after": "0" * 40, "before": "b" * 40, "repository": repo},
    )
    assert deleted.deleted and deleted.sha is None
    tag = parse_event(
        "github", {"x-github-event": "push"}, {"ref": "refs/tags/v1.2", "after": "c" * 40}
    )
    assert (tag.kind, tag.tag, tag.ref) == ("tag", "v1.2", "refs/tags/v1.2")
    pr = parse_event(
        "github",
        {"x-github-event": "pull_request"},
        {
            "action": "synchronize",
            "number": 7,
            "pull_request": {
                "number": 7,
                "head": {
                    "ref": "fix",
                    "sha": "d" * 40,
                    "repo": {"clone_url": "https://github.com/f/r.git"},
                },
                "base": {"ref": "main", "repo": repo},
            },
            "repository": repo,
        },
    )
    assert (pr.kind, pr.branch, pr.sha, pr.pull_request, pr.target_branch) == (
        "pull_request",
        "fix",
        "d" * 40,
        7,
        "main",
    )
    # A closed request (merged or not) archives its job: a pull_request event, "deleted".
    closed = parse_event(
        "github",
        {"x-github-event": "pull_request"},
        {"action": "closed", "number": 7, "pull_request": {"number": 7}, "repository": repo},
    )
    assert (closed.kind, closed.pull_request, closed.deleted) == ("pull_request", 7, True)
    assert not pr.deleted
    labeled = parse_event("github", {"x-github-event": "pull_request"}, {"action": "labeled"})
    assert labeled.kind == "other"
    assert parse_event("github", {"x-github-event": "ping"}, {"zen": "hi"}).kind == "ping"


def test_gitlab_events() -> None:
    project = {"git_http_url": "https://gitlab.example.org/g/p.git"}
    push = parse_event(
        "gitlab",
        {"x-gitlab-event": "Push Hook"},
        {
            "object_kind": "push",
            "ref": "refs/heads/main",
            "checkout_sha": "e" * 40,
            "before": "f" * 40,
            "project": project,
        },
    )
    assert (push.kind, push.branch, push.sha) == ("push", "main", "e" * 40)
    mr = parse_event(
        "gitlab",
        {"x-gitlab-event": "Merge Request Hook"},
        {
            "object_kind": "merge_request",
            "project": project,
            "object_attributes": {
                "action": "open",
                "iid": 3,
                "source_branch": "fix",
                "target_branch": "main",
                "last_commit": {"id": "1" * 40},
            },
        },
    )
    assert (mr.kind, mr.branch, mr.pull_request, mr.sha) == ("pull_request", "fix", 3, "1" * 40)
    for action in ("close", "merge"):
        gone = parse_event(
            "gitlab",
            {"x-gitlab-event": "Merge Request Hook"},
            {
                "object_kind": "merge_request",
                "project": project,
                "object_attributes": {"action": action, "iid": 3, "source_branch": "fix"},
            },
        )
        assert (gone.kind, gone.pull_request, gone.deleted) == ("pull_request", 3, True)


def test_generic_events_and_errors() -> None:
    event = parse_event(
        "generic", {}, {"repository": "file:///srv/r.git", "branch": "main", "commit": "2" * 40}
    )
    assert (event.kind, event.branch, event.sha) == ("push", "main", "2" * 40)
    with pytest.raises(EventError, match="repository"):
        parse_event("generic", {}, {"branch": "main"})
    with pytest.raises(EventError, match="JSON object"):
        parse_event("github", {}, [1, 2])


def test_repository_urls_compare_across_spellings() -> None:
    same = {
        normalize_repo_url(u)
        for u in (
            "https://GitHub.com/o/r.git",
            "git@github.com:o/r.git",
            "ssh://git@github.com/o/r",
            "https://github.com/o/r/",
        )
    }
    assert same == {"github.com/o/r"}
    assert normalize_repo_url("file:///srv/r.git") == "/srv/r"
    assert normalize_repo_url("http://127.0.0.1:8000/r.git") == "127.0.0.1:8000/r"


def test_branch_patterns_and_sub_job_names() -> None:
    assert branch_matches("release/*", "release/1.0")
    assert not branch_matches("release/*", "release/1/x")
    assert branch_matches("release/**", "release/1/x")
    assert branch_matches("main feature/*", "feature/y")
    assert not branch_matches("main", "mainline")
    assert sub_job_name("svc", "feature/x") == "svc/feature-x"
    assert sub_job_name("svc", "main") == "svc/main"
    assert sub_job_name("svc", "builds") == "svc/builds-branch"


def test_scm_and_trigger_specs_are_validated() -> None:
    ok = parse_pipeline("name: a\nscm: {git: 'https://h/o/r.git', branches: 'feature/*'}\n")
    assert ok.from_scm and ok.scm is not None and ok.scm.multibranch
    bad = {
        "name: a\nscm: {git: 'not a url'}\n": "invalid repository URL",
        "name: a\nscm: {git: 'https://u:pw@h/r.git'}\n": "credential",
        "name: a\nscm: {git: 'https://h/r', branch: main, branches: '*'}\n": "either",
        "name: a\nscm: {git: 'https://h/r', branch: 'rel/*'}\n": "use 'branches'",
        "name: a\nscm: {git: 'https://h/r', path: '../x.yml'}\n": "invalid pipeline path",
        "name: a\ntriggers: {cron: 'H H H'}\nstages: [{name: s, steps: [{echo: x}]}]\n": "cron",
        "name: a\ntriggers: {poll: soon}\nstages: [{name: s, steps: [{echo: x}]}]\n": "duration",
        "name: a\ntriggers: {upstream: [{job: b, on: maybe}]}\n"
        "stages: [{name: s, steps: [{echo: x}]}]\n": "expected one of",
        "name: a\n": "missing required field 'stages'",
    }
    for text, fragment in bad.items():
        with pytest.raises(SpecError, match=fragment):
            parse_pipeline(text)
