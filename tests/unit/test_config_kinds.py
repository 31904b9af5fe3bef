"""The kinds pool, notifier, grant and schedule, read and validated as pure code:
every problem with its file and line, and a canonical form that reads back as itself."""

from __future__ import annotations

import pytest

from conveyor.core.config_repo import ConfigError, load_config

GOOD = {
    "pools/linux.yml": "name: linux\nlabels: linux, docker\nmax: 3\npolicy: {min: 1}\n",
    "notifiers/mail.yml": (
        "name: mail\ntype: email\nhost: smtp.example.com\nfrom: ci@example.com\n"
        "to: oncall@example.com\nrules:\n  - {jobs: '*', on: failure}\n"
    ),
    "grants/alice.yml": "user: alice\ngrants:\n  - {role: viewer}\n  - {role: admin}\n",
    "schedules/retention.yml": "keep_released: false\nartifact_keep_last: null\n",
    "schedules/backup.yml": "{}\n",
}


def test_canonical_form_reads_back_as_itself() -> None:
    first = {d.file: d.text for d in load_config(GOOD)}
    assert {d.file: d.text for d in load_config(first)} == first
    assert first["grants/alice.yml"] == (
        "user: alice\ngrants:\n- role: admin\n  pattern: '*'\n- role: viewer\n  pattern: '*'\n"
    )
    # min inside the policy moves to the top level, like the API does.
    assert "min: 1\nmax: 3\n" in first["pools/linux.yml"]
    assert "policy: {}\n" in first["pools/linux.yml"]
    # Fields in documented order; an explicit null is kept (it switches a limit off).
    assert first["schedules/retention.yml"] == "artifact_keep_last: null\nkeep_released: false\n"
    assert first["notifiers/mail.yml"].endswith("rules:\n- jobs:\n  - '*'\n  'on':\n  - failure\n")


@pytest.mark.parametrize(
    ("file", "text", "expected"),
    [
        ("pools/linux.yml", "name: linux\nexecutors: 0\n", "pools/linux.yml:2: executors must"),
        ("pools/linux.yml", "name: other\n", "pools/linux.yml:1: this file declares 'other'"),
        (
            "pools/linux.yml",
            "name: linux\nsize: 3\n",
            "pools/linux.yml:2: unknown pool field(s): size",
        ),
        (
            "pools/linux.yml",
            "name: linux\nprovider: kubernetes\nprovider_config:\n  password: hunter2\n",
            "pools/linux.yml:4: provider_config.password: a secret is never written",
        ),
        ("notifiers/n.yml", "name: n\ntype: slack\n", "notifiers/n.yml:1: missing required"),
        (
            "notifiers/n.yml",
            "name: n\ntype: slack\nwebhook_url_env: https://hooks.slack.com/x\n",
            "notifiers/n.yml:3: webhook_url_env: invalid environment variable name",
        ),
        (
            "notifiers/n.yml",
            "name: n\ntype: slack\nwebhook_url_env: URL\nrules:\n  - {jobs: a, on: x}\n",
            "notifiers/n.yml:5: rules[0].on[0]: expected one of",
        ),
        (
            "notifiers/n.yml",
            "name: n\ntype: slack\nwebhook_url_env: URL\nrules:\n"
            "  - {jobs: a, on: failure, notifiers: [m]}\n",
            "notifiers/n.yml:5: rules[0]: a rule here sends to this notifier",
        ),
        ("grants/a.yml", "user: a\ngrants:\n  - role: root\n", "grants/a.yml:3: grants[0].role"),
        (
            "grants/a.yml",
            "user: a\ngrants:\n  - {role: viewer, pattern: 'a*b'}\n",
            "grants/a.yml:3: grants[0].pattern",
        ),
        ("grants/a.yml", "user: a\n", "grants/a.yml:1: grants: expected a list"),
        (
            "schedules/backup.yml",
            "full_cron: '0 2 * * 0'\nkeep_weekly_fulls: 0\n",
            "schedules/backup.yml:2: keep_weekly_fulls: expected a whole number of at least 1",
        ),
        ("schedules/nightly.yml", "a: 1\n", "schedules/nightly.yml:1: unknown schedule"),
    ],
)
def test_each_problem_names_its_file_and_line(file: str, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config({file: text})
    assert any(str(i).startswith(expected) for i in caught.value.issues), caught.value.issues
