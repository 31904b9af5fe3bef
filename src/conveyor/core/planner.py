"""From a validated :class:`~conveyor.core.pipeline.Pipeline` and build parameters to a
:class:`~conveyor.core.plan.BuildPlan`.

* :func:`resolve_parameters` applies defaults and validates given values; every
  value becomes a string (booleans are ``"true"``/``"false"``).
* :func:`plan_build` decides ``when`` conditions and flattens the spec into a plan.

Environment precedence, lowest first: pipeline ``environment``, parameters (as
variables named like the parameter), stage ``environment``, parallel branch
``environment``. ``BuildPlan.environment`` holds the first two; each step's
``environment`` holds the merged stage/branch variables (the agent applies it on top).

Keys: stage ``"<i>"``, parallel branch ``"<i>.<j>"``; step ``"<stage key>.<n>"`` (e.g.
``"0.2"``, ``"1.0.3"``); post step ``"post.<condition>.<n>"`` (also ``notify`` steps,
which the agent leaves to the controller). A stage has either steps
or branches, so all stage and step keys of a plan are distinct. This module is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from conveyor.core.plan import BuildPlan, CredentialBind, PostCondition, StagePlan, StepPlan

if TYPE_CHECKING:
    from conveyor.core.pipeline import (
        Branch,
        Condition,
        CredentialBinding,
        Parameter,
        Pipeline,
        Stage,
        Step,
    )

__all__ = ["ParameterError", "describe_condition", "evaluate", "plan_build", "resolve_parameters"]

MAX_PARAMETER_LENGTH = 64 * 1024
NAME_LENGTH = 80
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


class ParameterError(ValueError):
    """Build parameters that do not fit the pipeline; ``errors`` has one line each."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


def _coerce(param: Parameter, value: str | bool | int) -> tuple[str | None, str | None]:
    """(normalized value, error)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | str):
        text = str(value)
    else:
        return None, f"parameter {param.name!r}: expected a string, got {type(value).__name__}"
    if "\0" in text or len(text) > MAX_PARAMETER_LENGTH:
        return None, f"parameter {param.name!r}: value contains NUL or is too long"
    if param.type == "boolean":
        lowered = text.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return ("true" if lowered in _TRUE else "false"), None
        return None, f"parameter {param.name!r}: expected a boolean (true/false), got {text!r}"
    if param.type == "choice" and text not in (param.choices or []):
        choices = ", ".join(param.choices or [])
        return None, f"parameter {param.name!r}: {text!r} is not one of [{choices}]"
    return text, None


def resolve_parameters(
    pipeline: Pipeline, params: Mapping[str, str | bool | int | None]
) -> dict[str, str]:
    """Every declared parameter's value as a string, in declaration order.

    A value of ``None`` (or ``""`` for a required parameter) counts as not given.
    Not given: the default; else for a required parameter an error; else ``"false"``
    for a boolean, the first choice for a choice, ``""`` for a string.
    """
    errors: list[str] = []
    declared = {p.name for p in pipeline.parameters}
    for name in params:
        if name not in declared:
            errors.append(f"unknown parameter {name!r}")
    resolved: dict[str, str] = {}
    for param in pipeline.parameters:
        value = params.get(param.name)
        if value is None or (value == "" and param.required):
            value = param.default
        if value is None or (value == "" and param.required):
            if param.required:
                errors.append(f"parameter {param.name!r} is required")
                continue
            value = {"boolean": "false", "choice": (param.choices or [""])[0]}.get(param.type, "")
        text, error = _coerce(param, value)
        if error is not None:
            errors.append(error)
        elif text is not None:
            resolved[param.name] = text
    if errors:
        raise ParameterError(errors)
    return resolved


def evaluate(cond: Condition, values: Mapping[str, str]) -> bool:
    """Decide a ``when`` condition against resolved parameter values."""
    if cond.all_ is not None:
        return all(evaluate(c, values) for c in cond.all_)
    if cond.any_ is not None:
        return any(evaluate(c, values) for c in cond.any_)
    if cond.not_ is not None:
        return not evaluate(cond.not_, values)
    value = values.get(cond.parameter or "")
    if cond.equals is not None:
        return value == cond.equals
    if cond.not_equals is not None:
        return value != cond.not_equals
    if cond.in_ is not None:
        return value in cond.in_
    return value not in (cond.not_in or [])


def describe_condition(cond: Condition) -> str:
    """E.g. ``OPERATION not in [deploy, update]`` or ``(A == x and not B == true)``."""
    if cond.all_ is not None or cond.any_ is not None:
        joiner = " and " if cond.all_ is not None else " or "
        parts = [describe_condition(c) for c in (cond.all_ or cond.any_ or [])]
        return parts[0] if len(parts) == 1 else "(" + joiner.join(parts) + ")"
    if cond.not_ is not None:
        return f"not {describe_condition(cond.not_)}"
    if cond.equals is not None:
        return f"{cond.parameter} == {cond.equals}"
    if cond.not_equals is not None:
        return f"{cond.parameter} != {cond.not_equals}"
    if cond.in_ is not None:
        return f"{cond.parameter} in [{', '.join(cond.in_)}]"
    return f"{cond.parameter} not in [{', '.join(cond.not_in or [])}]"


def _step_name(step: Step) -> str:
    if step.notify is not None:
        return f"notify: {step.notify.notifier}"
    if step.sh is not None:
        text = step.sh.script
    elif step.echo is not None:
        text = step.echo
    elif step.publish is not None:
        text = f"{step.publish.type} {', '.join(step.publish.patterns)}"
    else:
        text = ", ".join(step.archive or [])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if len(first) > NAME_LENGTH or len(lines) > 1:
        first = first[: NAME_LENGTH - 3].rstrip() + "..."
    return f"{step.kind}: {first}"


def _binds(bindings: list[CredentialBinding]) -> list[CredentialBind]:
    return [CredentialBind.model_validate(b.model_dump()) for b in bindings]


def _plan_step(
    step: Step,
    key: str,
    stage: str,
    env: dict[str, str],
    credentials: list[CredentialBind] | None = None,
) -> StepPlan:
    return StepPlan(
        key=key,
        stage=stage,
        kind=step.kind,
        name=_step_name(step),
        script=step.sh.script if step.sh is not None else None,
        message=step.notify.message if step.notify is not None else step.echo,
        notifier=step.notify.notifier if step.notify is not None else None,
        paths=list(step.archive or []),
        publish=step.publish.model_dump(mode="json") if step.publish is not None else None,
        timeout=step.timeout,
        retry=step.retry or 0,
        environment=dict(env),
        credentials=[*(credentials or []), *_binds(step.credentials)],
    )


def _plan_stage(
    stage: Stage | Branch,
    key: str,
    path: str,
    env: Mapping[str, str],
    values: Mapping[str, str],
    credentials: list[CredentialBind] | None = None,
) -> StagePlan:
    env = {**env, **stage.environment}
    credentials = [*(credentials or []), *_binds(stage.credentials)]
    skip_reason = None
    if stage.when is not None and not evaluate(stage.when, values):
        skip_reason = f"when: {describe_condition(stage.when)}"
    branches = getattr(stage, "parallel", None) or []
    return StagePlan(
        key=key,
        name=path,
        steps=[
            _plan_step(step, f"{key}.{n}", path, env, credentials)
            for n, step in enumerate(stage.steps or [])
        ],
        parallel=[
            _plan_stage(branch, f"{key}.{j}", f"{path}/{branch.name}", env, values, credentials)
            for j, branch in enumerate(branches)
        ],
        timeout=stage.timeout,
        retry=stage.retry,
        skipped=skip_reason is not None,
        skip_reason=skip_reason,
    )


def plan_build(pipeline: Pipeline, params: Mapping[str, str | bool | int | None]) -> BuildPlan:
    """The plan of one build; raises :class:`ParameterError` for bad ``params``."""
    values = resolve_parameters(pipeline, params)
    shared = _binds(pipeline.credentials)
    stages = [
        _plan_stage(stage, str(i), stage.name, {}, values, shared)
        for i, stage in enumerate(pipeline.stages)
    ]
    post: dict[PostCondition, list[StepPlan]] = {}
    conditions: tuple[PostCondition, ...] = ("always", "success", "failure", "cancelled")
    for condition in conditions:
        steps = getattr(pipeline.post, condition)
        if steps:
            post[condition] = [
                _plan_step(step, f"post.{condition}.{n}", f"post.{condition}", {}, shared)
                for n, step in enumerate(steps)
            ]
    return BuildPlan(
        stages=stages,
        post=post,
        environment={**pipeline.environment, **values},
        timeout=pipeline.timeout,
        log_limit=pipeline.log_limit,
        log_limit_source="job log_limit" if pipeline.log_limit is not None else None,
    )
