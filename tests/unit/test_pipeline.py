from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.core.pipeline import (
    ParameterError,
    Pipeline,
    SpecError,
    SpecIssue,
    parse_duration,
    parse_pipeline,
    plan_build,
    resolve_parameters,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

FULL = """\
name: team-a/service-x
description: full example
agent: "linux && !arm64"
concurrency: 2
priority: 5
timeout: 1h30m
retry: 1
parameters:
  - name: OPERATION
    type: choice
    choices: [deploy, update, scale, backup]
    default: deploy
  - name: DRY_RUN
    type: boolean
    default: yes
  - name: NOTE
    description: free text
environment: {COLOR: blue, COUNT: 3, FLAG: true, OPERATION: from-env}
stages:
  - name: build
    environment: {STAGE: build}
    timeout: 5m
    retry: 2
    steps:
      - sh: make build
      - sh: {script: "make package", timeout: 90s, retry: 3}
      - sh: make check
        timeout: 60
        retry: 1
      - echo: "hello ${OPERATION}"
      - archive: "dist/*.tar.gz"
      - archive: [a.txt, "logs/*.log"]
  - name: deploy
    when: {parameter: OPERATION, in: [deploy, update]}
    steps:
      - sh: ./deploy.sh
  - name: backup
    when:
      all:
        - {parameter: OPERATION, equals: backup}
        - not: {parameter: DRY_RUN, equals: true}
    steps:
      - sh: ./backup.sh
  - name: test
    environment: {LEVEL: outer}
    parallel:
      - name: unit
        environment: {LEVEL: inner}
        steps:
          - sh: pytest
      - name: lint
        when: {parameter: OPERATION, not_in: [deploy, update]}
        steps:
          - sh: ruff check
post:
  always:
    - echo: done
  success:
    - echo: yay
  failure:
    - sh: echo failed
"""


def spec_error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_pipeline(text)
    return info.value


def only(text: str) -> SpecIssue:
    err = spec_error(text)
    assert len(err.errors) == 1, str(err)
    return err.errors[0]


def test_full_spec_parses() -> None:
    p = parse_pipeline(FULL)
    assert p.name == "team-a/service-x"
    assert p.agent == "linux && !arm64"
    assert (p.concurrency, p.priority, p.retry) == (2, 5, 1)
    assert p.timeout == 5400.0
    assert [x.name for x in p.parameters] == ["OPERATION", "DRY_RUN", "NOTE"]
    assert p.parameters[1].default == "true"
    assert p.parameters[2].type == "string"
    assert p.environment == {"COLOR": "blue", "COUNT": "3", "FLAG": "true", "OPERATION": "from-env"}
    steps = p.stages[0].steps
    assert steps is not None
    assert [s.kind for s in steps] == ["sh", "sh", "sh", "echo", "archive", "archive"]
    assert steps[1].sh is not None and steps[1].sh.script == "make package"
    assert (steps[1].timeout, steps[1].retry) == (90.0, 3)
    assert (steps[2].timeout, steps[2].retry) == (60.0, 1)
    assert steps[4].archive == ["dist/*.tar.gz"]
    assert steps[5].archive == ["a.txt", "logs/*.log"]
    assert p.stages[0].timeout == 300.0 and p.stages[0].retry == 2
    assert p.stages[3].parallel is not None and len(p.stages[3].parallel) == 2
    assert [s.kind for s in p.post.always] == ["echo"] and p.post.cancelled == []
    # A dumped spec validates back to the same model.
    again = Pipeline.model_validate(p.model_dump(by_alias=True, exclude_none=True))
    assert again == p


def test_examples_parse_and_plan() -> None:
    ops = parse_pipeline((EXAMPLES / "operations.yml").read_text(), "operations.yml")
    assert [p.name for p in ops.parameters] == ["OPERATION", "TARGET_ENV", "DRY_RUN"]
    plan = plan_build(ops, {"OPERATION": "scale", "TARGET_ENV": "production", "DRY_RUN": False})
    assert any(step.kind == "archive" for step, _ in plan.iter_steps())
    assert plan.environment["OPERATION"] == "scale"
    running = [s.name for s in plan.stages[1].parallel if not s.skipped]
    assert running == ["operation/scale"]
    hello = parse_pipeline((EXAMPLES / "hello.yml").read_text(), "hello.yml")
    assert len(hello.stages) == 2
    assert plan_build(hello, {}).environment["GREETING"] == "Hello"
    assert plan_build(hello, {"GREETING": "Hi"}).environment["GREETING"] == "Hi"


# ------------------------------------------------------------------ spec errors

BASE = """\
name: demo
parameters:
  - name: OPERATION
    type: choice
    choices: [deploy, update]
stages:
  - name: build
    steps:
      - sh: make
"""


def test_unknown_step_type() -> None:
    issue = only(BASE + "      - shh: make test\n")
    assert str(issue) == (
        "conveyor.yml:10: stages[0].steps[1]: unknown step type 'shh' "
        "(expected sh, echo, archive or publish)"
    )
    assert (issue.file, issue.line, issue.path) == ("conveyor.yml", 10, "stages[0].steps[1]")


def test_unknown_field() -> None:
    issue = only(BASE + "  - name: test\n    stepz: []\n    steps: [{echo: hi}]\n")
    assert (issue.line, issue.path, issue.message) == (11, "stages[1]", "unknown field 'stepz'")
    issue = only("colour: red\n" + BASE)
    assert (issue.line, issue.path, issue.message) == (1, "", "unknown field 'colour'")
    assert str(issue) == "conveyor.yml:1: unknown field 'colour'"
    issue = only(BASE.replace("- sh: make", "- sh: make\n        timout: 5"))
    assert (issue.line, issue.path, issue.message) == (
        10,
        "stages[0].steps[0]",
        "unknown field 'timout'",
    )


def test_missing_name() -> None:
    issue = only(BASE + "  - steps:\n      - echo: hi\n")
    assert (issue.line, issue.path) == (10, "stages[1]")
    assert issue.message == "missing required field 'name'"
    issue = only(BASE.replace("name: demo\n", ""))
    assert (issue.line, issue.path, issue.message) == (1, "", "missing required field 'name'")


def test_bad_duration() -> None:
    issue = only(BASE.replace("- sh: make", "- sh: {script: make, timeout: 5 minutes}"))
    assert (issue.line, issue.path) == (9, "stages[0].steps[0].sh.timeout")
    assert issue.message.startswith("invalid duration '5 minutes'")
    issue = only(BASE.replace("  - name: build\n", "  - name: build\n    timeout: -3\n"))
    assert (issue.line, issue.path) == (8, "stages[0].timeout")
    issue = only("timeout: 1x\n" + BASE)
    assert (issue.line, issue.path) == (1, "timeout")


def test_parse_duration() -> None:
    assert parse_duration(90) == 90.0
    assert parse_duration("90") == 90.0
    assert parse_duration("90s") == 90.0
    assert parse_duration("5m") == 300.0
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("1.5s") == 1.5
    for bad in ("", "m", "5d", "1m1h", True, None, 0, "0s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_duplicate_stage() -> None:
    issue = only(BASE + "  - name: build\n    steps: [{echo: again}]\n")
    assert (issue.line, issue.path, issue.message) == (
        10,
        "stages[1].name",
        "duplicate stage name 'build'",
    )
    text = BASE + "  - name: t\n    parallel:\n      - {name: a, steps: [{echo: x}]}\n"
    issue = only(text + "      - {name: a, steps: [{echo: y}]}\n")
    assert (issue.line, issue.path) == (13, "stages[1].parallel[1].name")


def test_invalid_label_expression() -> None:
    issue = only(BASE.replace("name: demo\n", "name: demo\nagent: 'linux &&'\n"))
    assert (issue.line, issue.path) == (2, "agent")
    assert issue.message.startswith("invalid label expression")


def test_undeclared_parameter_in_when() -> None:
    text = BASE + (
        "  - name: deploy\n"
        "    when:\n"
        "      any:\n"
        "        - {parameter: OPERATION, equals: deploy}\n"
        "        - {parameter: TARGET, equals: prod}\n"
        "    steps: [{echo: x}]\n"
    )
    issue = only(text)
    assert (issue.line, issue.path) == (14, "stages[1].when.any[1].parameter")
    assert issue.message == "unknown parameter 'TARGET' (declared: OPERATION)"


def test_when_value_not_a_choice() -> None:
    text = BASE + (
        "  - name: d\n"
        "    when: {parameter: OPERATION, in: [deploy, scale]}\n"
        "    steps: [{echo: x}]\n"
    )
    issue = only(text)
    assert (issue.line, issue.path) == (11, "stages[1].when.in")
    assert "'scale' is not a possible value of OPERATION" in issue.message


def test_malformed_yaml() -> None:
    issue = only("name: demo\nstages:\n  - name: a\n    steps:\n      - sh: make: x\n")
    assert str(issue) == "conveyor.yml:5: invalid YAML: mapping values are not allowed here"
    issue = only("name: demo\nstages:\n  - name: [unclosed\n  - other\n")
    assert issue.line == 4  # clamped to the last line
    issue = only("name: demo\n\tstages: []\n")
    assert issue.line == 2 and "invalid YAML" in issue.message


def test_top_level_not_mapping() -> None:
    assert "must be a mapping" in only("- a\n- b\n").message
    assert "empty" in only("").message
    assert "must be a mapping" in only("just text").message


def test_multiple_errors_listed_in_line_order() -> None:
    text = "name: bad name\nstages:\n  - name: a\n    steps: [{shh: x}]\n  - name: b/c\n"
    err = spec_error(text)
    assert [i.line for i in err.errors] == [1, 4, 5]
    assert str(err).splitlines()[0].startswith("conveyor.yml:1: name: invalid pipeline name")
    assert len(str(err).splitlines()) == 3


def test_misc_spec_errors() -> None:
    assert "reserved" in only("name: a/builds\nstages: [{name: s, steps: [{echo: x}]}]\n").message
    issue = only("name: a\nstages: []\n")
    assert (issue.path, issue.message) == ("stages", "must not be empty")
    issue = only("name: a\nstages:\n  - name: s\n")
    assert issue.message == "a stage has exactly one of 'steps' or 'parallel'"
    nested = "name: a\nstages:\n  - name: s\n    parallel:\n      - name: t\n        parallel: []\n"
    assert only(nested).message == "parallel stages cannot be nested"
    issue = only("name: a\nname: b\nstages: [{name: s, steps: [{echo: x}]}]\n")
    assert (issue.line, issue.message) == (2, "duplicate key 'name'")
    issue = only("name: a\nstages: [{name: s, steps: [{sh: x, echo: y}]}]\n")
    assert issue.message == "a step has exactly one type, got sh and echo"
    bad_choice = "name: a\nparameters:\n  - {name: P, type: choice, choices: [x], default: y}\n"
    issue = only(bad_choice + "stages: [{name: s, steps: [{echo: x}]}]\n")
    assert (issue.line, issue.path) == (3, "parameters[0]")
    assert "not one of the choices" in issue.message
    issue = only("name: a\nenvironment: {bad-key: 1}\nstages: [{name: s, steps: [{echo: x}]}]\n")
    assert (issue.line, issue.path) == (2, "environment.bad-key")


def test_numeric_field_messages() -> None:
    text = "name: a\nconcurrency: 0\nretry: 101\nstages: [{name: s, steps: [{echo: '{x}'}]}]\n"
    assert [(i.line, i.path, i.message) for i in spec_error(text).errors] == [
        (2, "concurrency", "must be at least 1"),
        (3, "retry", "must be at most 100"),
    ]


def test_size_limit_and_alias_bomb() -> None:
    assert "larger than" in only("#" * (1024 * 1024 + 1)).message
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 8):
        bomb += f"{'b' * i}: &{'b' * i} [" + ", ".join([f"*{'b' * (i - 1) or 'a'}"] * 10) + "]\n"
    bomb = bomb.replace("*b0", "*a")
    assert "too large" in only(bomb).message


# ------------------------------------------------------------------ parameters


def test_resolve_defaults_and_coercion() -> None:
    p = parse_pipeline(FULL)
    assert resolve_parameters(p, {}) == {"OPERATION": "deploy", "DRY_RUN": "true", "NOTE": ""}
    cases: list[tuple[str | bool | int, str]] = [
        ("No", "false"),
        ("1", "true"),
        (False, "false"),
        (1, "true"),
    ]
    for given, expected in cases:
        assert resolve_parameters(p, {"DRY_RUN": given})["DRY_RUN"] == expected
    assert resolve_parameters(p, {"NOTE": 5, "OPERATION": None})["NOTE"] == "5"


def test_parameter_errors() -> None:
    p = parse_pipeline(FULL)
    with pytest.raises(ParameterError) as info:
        resolve_parameters(p, {"OPERATION": "destroy", "DRY_RUN": "maybe", "EXTRA": "x"})
    errors = info.value.errors
    assert errors == [
        "unknown parameter 'EXTRA'",
        "parameter 'OPERATION': 'destroy' is not one of [deploy, update, scale, backup]",
        "parameter 'DRY_RUN': expected a boolean (true/false), got 'maybe'",
    ]
    assert "EXTRA" in str(info.value)


def test_required_parameter() -> None:
    p = parse_pipeline(
        "name: a\nparameters:\n  - {name: WHO, required: true}\n  - {name: B, type: boolean}\n"
        "  - {name: C, type: choice, choices: [x, y]}\n"
        "stages: [{name: s, steps: [{echo: x}]}]\n"
    )
    with pytest.raises(ParameterError, match="parameter 'WHO' is required"):
        resolve_parameters(p, {})
    with pytest.raises(ParameterError, match="WHO"):
        resolve_parameters(p, {"WHO": ""})
    assert resolve_parameters(p, {"WHO": "me"}) == {"WHO": "me", "B": "false", "C": "x"}
    with pytest.raises(ParameterError):
        plan_build(p, {})


# ------------------------------------------------------------------ plans


def test_plan_contents() -> None:
    p = parse_pipeline(FULL)
    plan = plan_build(p, {"OPERATION": "backup", "DRY_RUN": "false"})
    assert plan.timeout == 5400.0
    # Parameters win over the pipeline environment.
    assert plan.environment == {
        "COLOR": "blue",
        "COUNT": "3",
        "FLAG": "true",
        "OPERATION": "backup",
        "DRY_RUN": "false",
        "NOTE": "",
    }
    build, deploy, backup, test = plan.stages
    assert (build.key, build.name, build.timeout, build.retry) == ("0", "build", 300.0, 2)
    assert [s.key for s in build.steps] == ["0.0", "0.1", "0.2", "0.3", "0.4", "0.5"]
    assert [s.name for s in build.steps] == [
        "sh: make build",
        "sh: make package",
        "sh: make check",
        "echo: hello ${OPERATION}",
        "archive: dist/*.tar.gz",
        "archive: a.txt, logs/*.log",
    ]
    first, package = build.steps[0], build.steps[1]
    assert (first.kind, first.script, first.stage, first.environment) == (
        "sh",
        "make build",
        "build",
        {"STAGE": "build"},
    )
    assert (package.timeout, package.retry) == (90.0, 3)
    assert build.steps[3].message == "hello ${OPERATION}"
    assert build.steps[5].paths == ["a.txt", "logs/*.log"]

    assert deploy.skipped and deploy.skip_reason == "when: OPERATION in [deploy, update]"
    assert not backup.skipped and backup.skip_reason is None

    assert test.steps == [] and [b.name for b in test.parallel] == ["test/unit", "test/lint"]
    unit, lint = test.parallel
    assert (unit.key, unit.steps[0].key, unit.steps[0].stage) == ("3.0", "3.0.0", "test/unit")
    assert unit.steps[0].environment == {"LEVEL": "inner"}
    assert lint.steps[0].environment == {"LEVEL": "outer"}
    assert not lint.skipped

    plan = plan_build(p, {"OPERATION": "deploy", "DRY_RUN": True})
    assert plan.stages[2].skip_reason == "when: (OPERATION == backup and not DRY_RUN == true)"
    assert plan.stages[3].parallel[1].skip_reason == "when: OPERATION not in [deploy, update]"

    assert sorted(plan.post) == ["always", "failure", "success"]
    failure = plan.post["failure"][0]
    assert (failure.key, failure.stage, failure.name) == (
        "post.failure.0",
        "post.failure",
        "sh: echo failed",
    )

    keys = [s.key for s, _ in plan.iter_steps()]
    stage_keys = [s.key for s in plan.stages] + [b.key for s in plan.stages for b in s.parallel]
    assert len(set(keys + stage_keys)) == len(keys) + len(stage_keys)
    assert plan_build(p, {"OPERATION": "deploy"}) == plan_build(p, {"OPERATION": "deploy"})


def test_step_name_truncation() -> None:
    long = "x" * 200
    p = parse_pipeline(
        f"name: a\nstages:\n  - name: s\n    steps:\n      - sh: {long}\n"
        "      - sh: |\n          first line\n          second\n"
    )
    steps = plan_build(p, {}).stages[0].steps
    assert len(steps[0].name) <= 4 + 80 and steps[0].name.endswith("...")
    assert steps[1].name == "sh: first line..."
    assert steps[1].script == "first line\nsecond\n"


NOTIFY_POST = BASE + (
    "post:\n"
    "  failure:\n"
    "    - notify: team-slack\n"
    "    - notify: {notifier: ops-webhook, message: 'deploy of ${OPERATION} failed'}\n"
    "  always:\n"
    "    - echo: bye\n"
)


def test_notify_post_steps_short_and_long_form() -> None:
    p = parse_pipeline(NOTIFY_POST)
    short, long = p.post.failure
    assert short.kind == "notify" and short.notify is not None
    assert (short.notify.notifier, short.notify.message) == ("team-slack", None)
    assert long.notify is not None
    assert (long.notify.notifier, long.notify.message) == (
        "ops-webhook",
        "deploy of ${OPERATION} failed",
    )
    plan = plan_build(p, {"OPERATION": "deploy"})
    [s0, s1] = plan.post["failure"]
    assert (s0.key, s0.stage, s0.kind, s0.name, s0.notifier, s0.message) == (
        "post.failure.0",
        "post.failure",
        "notify",
        "notify: team-slack",
        "team-slack",
        None,
    )
    assert (s1.key, s1.name, s1.notifier) == (
        "post.failure.1",
        "notify: ops-webhook",
        "ops-webhook",
    )
    assert s1.message == "deploy of ${OPERATION} failed"  # substituted by the controller
    assert plan.post["always"][0].notifier is None


def test_notify_outside_post_is_an_error_at_its_line() -> None:
    issue = only(BASE + "      - notify: team-slack\n")
    assert str(issue) == (
        "conveyor.yml:10: stages[0].steps[1]: notify steps are only allowed in post blocks"
    )
    text = (
        "name: demo\nstages:\n  - name: t\n    parallel:\n      - name: a\n        steps:\n"
        "          - sh: x\n          - notify: {notifier: hook}\n"
    )
    issue = only(text)
    assert (issue.line, issue.path) == (8, "stages[0].parallel[0].steps[1]")
    assert issue.message == "notify steps are only allowed in post blocks"


def test_notify_step_errors() -> None:
    issue = only(BASE + "post:\n  always:\n    - notify: 'bad name'\n")
    assert issue.line == 12 and "invalid notifier name 'bad name'" in issue.message
    issue = only(BASE + "post:\n  always:\n    - notify: hook\n      timeout: 5m\n")
    assert issue.line == 12 and "notify steps take no timeout or retry" in issue.message
    issue = only(BASE + "post:\n  always:\n    - notify: {message: hi}\n")
    assert "missing required field 'notifier'" in issue.message
