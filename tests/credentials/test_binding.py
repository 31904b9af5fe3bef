"""Pipeline `credentials:` bindings (spec validation, planner merge) and the agent's
side: env/temp-file binding and the masking reporter."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from conveyor.agent.credentials import (
    CredentialUnavailable,
    MaskingReporter,
    bind_credentials,
    build_patterns,
)
from conveyor.core.pipeline import SpecError, parse_pipeline, plan_build
from conveyor.core.plan import CredentialBind
from conveyor.core.states import StepState

SPEC = """
name: team-a/app
credentials: [{id: team-a/token, env: TOKEN}]
stages:
  - name: build
    credentials: [{id: team-a/login, username_env: U, password_env: P}]
    steps:
      - sh: make
        credentials: [{id: team-a/key, file: KEY_PATH}]
      - echo: hi
  - name: fan
    parallel:
      - name: one
        credentials: [{id: team-a/one, env: ONE}]
        steps: [{sh: "true"}]
post:
  always:
    - sh: cleanup
"""


def test_bindings_merge_pipeline_stage_branch_step_in_order() -> None:
    plan = plan_build(parse_pipeline(SPEC), {})
    steps = {s.key: [c.id for c in s.credentials] for s, _ in plan.iter_steps()}
    assert steps == {
        "0.0": ["team-a/token", "team-a/login", "team-a/key"],
        "0.1": ["team-a/token", "team-a/login"],
        "1.0.0": ["team-a/token", "team-a/one"],
        "post.always.0": ["team-a/token"],
    }
    assert plan.credential_ids() == ["team-a/key", "team-a/login", "team-a/one", "team-a/token"]


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        ("{id: x}", "exactly one of env, file, or username_env/password_env"),
        ("{id: x, env: A, file: B}", "exactly one of env, file"),
        ("{id: x, env: A, password_env: B}", "exactly one of env, file"),
        ("{id: '../x', env: A}", "invalid credential id"),
        ("{id: x, env: 1BAD}", "invalid environment variable name"),
        ("{id: x, env: A, value: leak}", "unknown field 'value'"),
        ("deploy-key", "expected a mapping"),
    ],
)
def test_bad_bindings_are_spec_errors(binding: str, message: str) -> None:
    spec = (
        "name: a\nstages:\n  - name: s\n    steps:\n      - sh: x\n"
        f"        credentials: [{binding}]\n"
    )
    with pytest.raises(SpecError) as caught:
        parse_pipeline(spec)
    assert message in str(caught.value)
    assert "stages[0].steps[0].credentials[0]" in str(caught.value)


def test_notify_steps_take_no_credentials() -> None:
    spec = (
        "name: a\nstages: [{name: s, steps: [{sh: x}]}]\n"
        "post:\n  always:\n    - notify: team\n      credentials: [{id: x, env: A}]\n"
    )
    with pytest.raises(SpecError, match="notify steps take no credentials"):
        parse_pipeline(spec)


RESOLVED = {
    "tok": {"kind": "text", "value": "T0KEN-VALUE"},
    "login": {"kind": "username_password", "username": "bob", "password": "PASSW0RD"},
    "key": {"kind": "ssh_key", "value": "-----BEGIN-----\nLINE-ONE-XYZ\n-----END-----\n"},
    "gone": {"error": "credential 'gone' does not exist (deleted?)"},
}


def test_bind_env_and_temp_file_removed_even_on_error(tmp_path: Path) -> None:
    binds = [
        CredentialBind(id="tok", env="TOKEN"),
        CredentialBind(id="login", username_env="U", password_env="P"),
        CredentialBind(id="key", file="KEY_PATH"),
    ]
    with (
        pytest.raises(RuntimeError),
        bind_credentials(binds, RESOLVED, tmp_path / "secrets") as env,
    ):
        path = Path(env["KEY_PATH"])
        assert env["TOKEN"] == "T0KEN-VALUE" and env["U"] == "bob" and env["P"] == "PASSW0RD"
        assert path.read_text() == RESOLVED["key"]["value"]
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        assert not path.is_relative_to(tmp_path / "workspace")
        raise RuntimeError("the step blew up")
    assert not path.exists() and not any((tmp_path / "secrets").iterdir())
    with (
        pytest.raises(CredentialUnavailable, match="does not exist"),
        bind_credentials([CredentialBind(id="gone", env="G")], RESOLVED, tmp_path / "s"),
    ):
        pass
    with (
        pytest.raises(CredentialUnavailable, match="not sent"),
        bind_credentials([CredentialBind(id="other", env="G")], RESOLVED, tmp_path / "s"),
    ):
        pass


class _Sink:
    def __init__(self) -> None:
        self.data = b""
        self.events: list[tuple[str, str]] = []

    async def log(self, data: bytes) -> None:
        self.data += data

    async def step_started(self, key: str, attempt: int) -> None:
        self.events.append(("started", key))

    async def step_finished(
        self, key: str, state: StepState, exit_code: int | None, attempt: int
    ) -> None:
        self.events.append(("finished", key))

    async def upload_artifact(self, rel_path: str, file: Path) -> None:
        pass

    async def record_publication(self, step_key: str, publication: dict[str, Any]) -> None:
        pass


def test_masking_reporter_holds_a_prefix_while_a_parallel_step_runs() -> None:
    async def run() -> None:
        sink = _Sink()
        reporter = MaskingReporter(sink, build_patterns(RESOLVED))
        await reporter.step_started("a", 1)
        await reporter.step_started("b", 1)
        await reporter.log(b"[b] T0KEN-")
        await reporter.step_finished("a", StepState.SUCCEEDED, 0, 1)
        # a ended, b still runs: its half-written secret must not be released.
        assert b"T0KEN-" not in sink.data
        await reporter.log(b"VALUE and PASSW0RD, not bob's LINE-ONE-XYZ\n")
        await reporter.step_finished("b", StepState.SUCCEEDED, 0, 1)
        assert sink.data == b"[b] **** and ****, not bob's ****\n"
        await reporter.log(b"tail T0K")
        await reporter.flush()
        assert sink.data.endswith(b"tail T0K")
        assert reporter.mask("agent error: PASSW0RD rejected") == "agent error: **** rejected"
        assert reporter.mask(None) is None
        assert sink.events == [
            ("started", "a"), ("started", "b"), ("finished", "a"), ("finished", "b")
        ]  # fmt: skip

    asyncio.run(run())
