"""The pipeline spec (``conveyor.yml``): models, parsing and validation.

:func:`parse_pipeline` turns YAML text into a validated :class:`Pipeline` or raises
:class:`SpecError` listing every problem as ``file:line: path: message``. Building a
:class:`~conveyor.core.plan.BuildPlan` from a pipeline and build parameters lives in
:mod:`conveyor.core.planner` and is re-exported here (:func:`plan_build`,
:func:`resolve_parameters`, :class:`ParameterError`). The format is documented in
``docs/pipelines.md``. This module is pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from conveyor.core.labels import parse_label_expression
from conveyor.core.loglimit import parse_size
from conveyor.core.notifications import NotifyEntry
from conveyor.core.planner import ParameterError, plan_build, resolve_parameters
from conveyor.core.publish import PublishSpec
from conveyor.core.retention import RetentionSpec
from conveyor.core.scm import ScmSpec, TriggersSpec

__all__ = [
    "MAX_SPEC_BYTES",
    "Branch",
    "Condition",
    "CredentialBinding",
    "NotifyEntry",
    "NotifyStep",
    "Parameter",
    "ParameterError",
    "Pipeline",
    "Post",
    "ShScript",
    "SpecError",
    "SpecIssue",
    "Stage",
    "Step",
    "parse_duration",
    "parse_pipeline",
    "plan_build",
    "resolve_parameters",
]

MAX_SPEC_BYTES = 1024 * 1024
MAX_YAML_NODES = 100_000  # after alias expansion ("billion laughs" guard)
MAX_DURATION = 30 * 24 * 3600.0
STEP_KINDS = ("sh", "echo", "archive", "notify", "publish")
NOTIFY_OUTSIDE_POST = "notify steps are only allowed in post blocks"

_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NOTIFIER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def _error(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)  # no context: the text is used literally


def _scalar_to_str(value: Any) -> Any:
    """YAML true/false -> "true"/"false", numbers -> str; anything else unchanged."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def parse_duration(value: Any) -> float:
    """Seconds from an int/float or a string like ``"90"``, ``"90s"``, ``"5m"``, ``"1h30m"``."""
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.replace(" ", "").lower()
        match = _DURATION.fullmatch(text)
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif text and match:
            h, m, s = (float(g) if g else 0.0 for g in match.groups())
            seconds = h * 3600 + m * 60 + s
    if seconds is None:
        raise _error(
            "duration",
            f"invalid duration {value!r}: use seconds (90) or a string like 90s, 5m, 1h30m",
        )
    if not 0 < seconds <= MAX_DURATION:
        raise _error("duration", f"duration {value!r} must be more than 0s and at most 30 days")
    return seconds


def _check_env_name(name: str) -> str:
    if not _IDENT.fullmatch(name):
        raise _error("env_name", f"invalid environment variable name {name!r}")
    return name


Duration = Annotated[float, BeforeValidator(parse_duration)]
Retry = Annotated[int, Field(strict=True, ge=0, le=100)]
EnvValue = Annotated[str, BeforeValidator(_scalar_to_str)]
Environment = dict[Annotated[str, AfterValidator(_check_env_name)], EnvValue]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class Condition(_Model):
    """A ``when`` condition: exactly one of the parameter tests or combinators."""

    parameter: str | None = None
    equals: EnvValue | None = None
    not_equals: EnvValue | None = None
    in_: list[EnvValue] | None = Field(default=None, alias="in")
    not_in: list[EnvValue] | None = None
    all_: list[Condition] | None = Field(default=None, alias="all", min_length=1)
    any_: list[Condition] | None = Field(default=None, alias="any", min_length=1)
    not_: Condition | None = Field(default=None, alias="not")

    @property
    def operator(self) -> str:
        """The form of this condition: equals, not_equals, in, not_in, all, any or not."""
        for name, field in type(self).model_fields.items():
            if name != "parameter" and getattr(self, name) is not None:
                return field.alias or name
        raise AssertionError("validated condition without operator")  # pragma: no cover

    @model_validator(mode="after")
    def _one_form(self) -> Condition:
        tests = [
            k for k in ("equals", "not_equals", "in_", "not_in") if getattr(self, k) is not None
        ]
        combos = [k for k in ("all_", "any_", "not_") if getattr(self, k) is not None]
        if self.parameter is not None:
            if combos or len(tests) != 1:
                raise _error(
                    "condition",
                    "a parameter condition needs exactly one of equals, not_equals, in, not_in",
                )
        elif tests or len(combos) != 1:
            raise _error(
                "condition",
                "a condition is {parameter: NAME, equals|not_equals|in|not_in: ...} "
                "or exactly one of all, any, not",
            )
        return self


class CredentialBinding(_Model):
    """``credentials:`` entry: a stored credential (by id) bound into steps as
    ``{id, env}``, ``{id, username_env, password_env}`` (username_password) or
    ``{id, file}`` (a temp file, path in that variable, removed after the step)."""

    id: Annotated[str, Field(min_length=1, max_length=200)]
    env: Annotated[str, AfterValidator(_check_env_name)] | None = None
    username_env: Annotated[str, AfterValidator(_check_env_name)] | None = None
    password_env: Annotated[str, AfterValidator(_check_env_name)] | None = None
    file: Annotated[str, AfterValidator(_check_env_name)] | None = None

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not all(_SEGMENT.fullmatch(s) for s in value.split("/")):
            raise _error(
                "credential_id",
                f"invalid credential id {value!r}: use [A-Za-z0-9][A-Za-z0-9._-]* segments "
                "joined by '/'",
            )
        return value

    @model_validator(mode="after")
    def _one_form(self) -> CredentialBinding:
        forms = [
            self.env is not None,
            self.file is not None,
            self.username_env is not None or self.password_env is not None,
        ]
        if sum(forms) != 1:
            raise _error(
                "credential",
                "a credential binding has exactly one of env, file, or username_env/password_env",
            )
        return self


Credentials = list[CredentialBinding]


class ShScript(_Model):
    script: str
    timeout: Duration | None = None
    retry: Retry | None = None


class NotifyStep(_Model):
    """A ``notify`` post step: tell a controller-configured notifier, optionally with a
    ``message`` of its own (no shell expansion; ``${PARAM}`` placeholders of build
    parameters are substituted by the controller)."""

    notifier: Annotated[str, Field(min_length=1, max_length=200)]
    message: Annotated[str, BeforeValidator(_scalar_to_str)] | None = None

    @field_validator("notifier")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NOTIFIER_NAME.fullmatch(value):
            raise _error(
                "notifier_name", f"invalid notifier name {value!r} (use [A-Za-z0-9][A-Za-z0-9._-]*)"
            )
        return value


class Step(_Model):
    """One step: exactly one of ``sh``, ``echo``, ``archive`` or (in ``post`` only)
    ``notify``.

    After validation ``timeout``/``retry`` hold the effective values, also when they
    were written inside the ``sh`` mapping (those are moved here; ``sh`` keeps the script).
    """

    sh: ShScript | None = None
    echo: str | None = None
    archive: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    notify: NotifyStep | None = None
    # Upload workspace files to an external repository (docs/publishing.md).
    publish: PublishSpec | None = None
    timeout: Duration | None = None
    retry: Retry | None = None
    credentials: Credentials = Field(default_factory=list)

    @property
    def kind(self) -> Literal["sh", "echo", "archive", "notify", "publish"]:
        if self.sh is not None:
            return "sh"
        if self.echo is not None:
            return "echo"
        if self.publish is not None:
            return "publish"
        return "notify" if self.notify is not None else "archive"

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise _error("step", "a step must be a mapping like {sh: make test}")
        kinds = [k for k in data if k in STEP_KINDS]
        if len(kinds) > 1:
            raise _error("step", f"a step has exactly one type, got {' and '.join(kinds)}")
        if not kinds:
            others = [str(k) for k in data if k not in ("timeout", "retry", "credentials")]
            if len(others) == 1:
                raise _error(
                    "step",
                    f"unknown step type {others[0]!r} (expected sh, echo, archive or publish)",
                )
            raise _error("step", "a step needs exactly one of sh, echo, archive, publish")
        return data

    @field_validator("sh", mode="before")
    @classmethod
    def _sh_string(cls, value: Any) -> Any:
        value = _scalar_to_str(value)
        return {"script": value} if isinstance(value, str) else value

    @field_validator("archive", mode="before")
    @classmethod
    def _archive_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("notify", mode="before")
    @classmethod
    def _notify_short_form(cls, value: Any) -> Any:
        return {"notifier": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _fold_sh_options(self) -> Step:
        if self.notify is not None and (self.timeout is not None or self.retry is not None):
            raise _error(
                "step",
                "notify steps take no timeout or retry (the controller retries deliveries)",
            )
        if self.notify is not None and self.credentials:
            raise _error("step", "notify steps take no credentials (they run on the controller)")
        if self.sh is not None:
            for option in ("timeout", "retry"):
                inner = getattr(self.sh, option)
                if inner is not None and getattr(self, option) is not None:
                    raise _error("step", f"{option} is given both in sh and next to it")
                if inner is not None:
                    setattr(self, option, inner)
                    setattr(self.sh, option, None)
        return self


class Parameter(_Model):
    name: str
    type: Literal["string", "choice", "boolean"] = "string"
    choices: list[str] | None = None
    default: EnvValue | None = None
    required: bool = False
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _IDENT.fullmatch(value):
            raise _error("name", f"invalid parameter name {value!r} (use [A-Za-z_][A-Za-z0-9_]*)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Parameter:
        if self.type == "choice":
            if not self.choices:
                raise _error("parameter", "a choice parameter needs a non-empty 'choices' list")
            if self.default is not None and self.default not in self.choices:
                raise _error(
                    "parameter",
                    f"default {self.default!r} is not one of the choices "
                    f"[{', '.join(self.choices)}]",
                )
        elif self.choices is not None:
            raise _error("parameter", "'choices' is only allowed for type: choice")
        if self.type == "boolean" and self.default is not None:
            self.default = self.default.lower()
            if self.default not in ("true", "false"):
                raise _error("parameter", "the default of a boolean parameter is true or false")
        return self


class _StageBase(_Model):
    name: Annotated[str, Field(min_length=1, max_length=100)]
    when: Condition | None = None
    timeout: Duration | None = None
    retry: Retry = 0
    environment: Environment = Field(default_factory=dict)
    credentials: Credentials = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _no_slash(cls, value: str) -> str:
        if "/" in value or value != value.strip():
            raise _error("name", f"invalid stage name {value!r}: no '/' or surrounding spaces")
        return value


class Branch(_StageBase):
    """A stage inside ``parallel``: it has steps (parallel cannot be nested)."""

    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _not_nested(cls, data: Any) -> Any:
        if isinstance(data, dict) and "parallel" in data:
            raise _error("stage", "parallel stages cannot be nested")
        return data


class Stage(_StageBase):
    """A top-level stage: exactly one of ``steps`` or ``parallel``."""

    steps: list[Step] | None = Field(default=None, min_length=1)
    parallel: list[Branch] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _steps_or_parallel(self) -> Stage:
        if (self.steps is None) == (self.parallel is None):
            raise _error("stage", "a stage has exactly one of 'steps' or 'parallel'")
        return self


class Post(_Model):
    always: list[Step] = Field(default_factory=list)
    success: list[Step] = Field(default_factory=list)
    failure: list[Step] = Field(default_factory=list)
    cancelled: list[Step] = Field(default_factory=list)


class Pipeline(_Model):
    name: str
    description: str | None = None
    agent: str | None = None
    concurrency: Annotated[int, Field(strict=True, ge=1)] | None = None
    priority: Annotated[int, Field(strict=True)] = 0
    timeout: Duration | None = None
    retry: Retry = 0
    # Retries when the agent running a build is lost (it stopped heartbeating);
    # separate from ``retry`` because a lost agent says nothing about the code.
    retry_lost: Retry = 1
    parameters: list[Parameter] = Field(default_factory=list)
    environment: Environment = Field(default_factory=dict)
    # Empty only for a job whose pipeline lives in its repository (``scm`` without
    # ``stages``: read from ``scm.path`` at the built commit; docs/scm.md).
    stages: list[Stage] = Field(default_factory=list, min_length=1)
    post: Post = Field(default_factory=Post)
    # Who is told when a build ends: [{on: [failure, fixed], notifier: NAME}]; the
    # notifiers themselves are configured on the controller (docs/notifications.md).
    notify: list[NotifyEntry] = Field(default_factory=list)
    # Stored credentials bound into every step (docs/credentials.md).
    credentials: Credentials = Field(default_factory=list)
    # How long builds, logs and artifacts of this job are kept (docs/retention.md).
    retention: RetentionSpec | None = None
    # Most log bytes per build, e.g. "200MB" (docs/storage.md); default: the controller's.
    log_limit: Annotated[int, BeforeValidator(parse_size)] | None = None
    scm: ScmSpec | None = None  # the repository the build checks out (docs/scm.md)
    triggers: TriggersSpec | None = None  # cron, polling, upstream (docs/triggers.md)

    @model_validator(mode="after")
    def _stages_unless_from_scm(self) -> Pipeline:
        if not self.stages and self.scm is None:
            raise _error("stages", "missing required field 'stages'")
        return self

    @property
    def from_scm(self) -> bool:
        """Whether the stages are read from the repository at build time."""
        return self.scm is not None and not self.stages

    @field_validator("name")
    @classmethod
    def _job_name(cls, value: str) -> str:
        segments = value.split("/")
        if len(value) > 200 or not all(_SEGMENT.fullmatch(s) for s in segments):
            raise _error(
                "name",
                f"invalid pipeline name {value!r}: use [A-Za-z0-9][A-Za-z0-9._-]* segments "
                "joined by '/', at most 200 characters",
            )
        reserved = [s for s in segments if s in ("builds", "versions")]
        if reserved:
            raise _error("name", f"invalid pipeline name {value!r}: {reserved[0]!r} is reserved")
        return value

    @field_validator("agent")
    @classmethod
    def _label_expression(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_label_expression(value)
            except ValueError as exc:
                raise _error("agent", f"invalid label expression: {exc}") from None
        return value

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)


# --------------------------------------------------------------------------- errors

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class SpecIssue:
    file: str
    line: int  # 1-based
    path: str  # e.g. "stages[1].steps[0]"; "" for the document itself
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


class SpecError(ValueError):
    """An invalid pipeline spec; ``errors`` lists every problem found."""

    def __init__(self, errors: list[SpecIssue]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def _format_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":
            out += f".{part}" if out else part
    return out


def _line_of(root: yaml.Node, loc: Loc) -> int:
    """1-based line of the node at ``loc``, or of its nearest ancestor found."""
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if getattr(k, "value", None) == str(part)]
            if not found:
                break
            key, node = found[-1]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


_MESSAGES = {
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "bool_type": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
}


def _humanize(err: Any) -> tuple[Loc, Loc, str]:
    """(path loc, line loc, message) for one pydantic error."""
    loc: Loc = tuple(err["loc"])
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "missing":
        return loc[:-1], loc[:-1], f"missing required field {loc[-1]!r}"
    if kind == "extra_forbidden":
        return loc[:-1], loc, f"unknown field {loc[-1]!r}"
    if kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return loc, loc, "must not be empty"
    if kind in ("greater_than_equal", "less_than_equal"):
        word = "least" if kind == "greater_than_equal" else "most"
        return loc, loc, f"must be at {word} {ctx.get('ge', ctx.get('le'))}"
    if kind == "literal_error":
        return loc, loc, f"expected one of {ctx.get('expected')}, got {err['input']!r}"
    if kind in _MESSAGES:
        return loc, loc, _MESSAGES[kind]
    message = str(err["msg"]).removeprefix("Value error, ")
    return loc, loc, message[0].lower() + message[1:] if message else message


def _scan(root: yaml.Node) -> list[tuple[Loc, str]]:
    """Duplicate mapping keys; reject recursive or exploding alias structures."""
    problems: list[tuple[Loc, str]] = []
    sizes: dict[int, int] = {}

    def walk(node: yaml.Node, loc: Loc) -> int:
        if id(node) in sizes:
            if sizes[id(node)] < 0:
                raise _TooBig("recursive YAML aliases are not supported")
            return sizes[id(node)]
        sizes[id(node)] = -1
        total = 1
        children: Iterator[tuple[Loc, yaml.Node]] = iter(())
        if isinstance(node, yaml.SequenceNode):
            children = (((*loc, i), child) for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            pairs = []
            for key, value in node.value:
                name = str(getattr(key, "value", ""))
                if name in seen and name != "<<":
                    problems.append(((*loc, name), f"duplicate key {name!r}"))
                seen.add(name)
                pairs.append(((*loc, name), value))
            children = iter(pairs)
        for child_loc, child in children:
            total += walk(child, child_loc)
            if total > MAX_YAML_NODES:
                raise _TooBig(f"document too large (more than {MAX_YAML_NODES} nodes)")
        sizes[id(node)] = total
        return total

    walk(root, ())
    return problems


class _TooBig(Exception):
    pass


def _misplaced_notify(data: dict[Any, Any]) -> list[tuple[Loc, str]]:
    """``notify`` steps in stages or parallel branches: they belong to ``post`` only.
    Checked on the raw document so that the error is reported with the others."""
    problems: list[tuple[Loc, str]] = []

    def check_steps(steps: Any, loc: Loc) -> None:
        if isinstance(steps, list):
            for n, step in enumerate(steps):
                if isinstance(step, dict) and "notify" in step:
                    problems.append(((*loc, n), NOTIFY_OUTSIDE_POST))

    stages = data.get("stages")
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        if not isinstance(stage, dict):
            continue
        check_steps(stage.get("steps"), ("stages", i, "steps"))
        branches = stage.get("parallel")
        for j, branch in enumerate(branches if isinstance(branches, list) else []):
            if isinstance(branch, dict):
                check_steps(branch.get("steps"), ("stages", i, "parallel", j, "steps"))
    return problems


def _semantic_checks(pipeline: Pipeline) -> list[tuple[Loc, str]]:
    """Cross-field checks: unique names, conditions naming declared parameters."""
    problems: list[tuple[Loc, str]] = []

    def unique(names: list[str], loc: Loc, what: str) -> None:
        for i, name in enumerate(names):
            if name in names[:i]:
                problems.append(((*loc, i, "name"), f"duplicate {what} name {name!r}"))

    def check_when(cond: Condition, loc: Loc) -> None:
        for key, children in (("all", cond.all_), ("any", cond.any_)):
            for i, child in enumerate(children or []):
                check_when(child, (*loc, key, i))
        if cond.not_ is not None:
            check_when(cond.not_, (*loc, "not"))
        if cond.parameter is None:
            return
        param = pipeline.parameter(cond.parameter)
        if param is None:
            declared = ", ".join(p.name for p in pipeline.parameters) or "none"
            problems.append(
                (
                    (*loc, "parameter"),
                    f"unknown parameter {cond.parameter!r} (declared: {declared})",
                )
            )
            return
        allowed = param.choices if param.type == "choice" else None
        allowed = ["true", "false"] if param.type == "boolean" else allowed
        values = [cond.equals, cond.not_equals, *(cond.in_ or []), *(cond.not_in or [])]
        for value in values:
            if allowed is not None and value is not None and value not in allowed:
                problems.append(
                    (
                        (*loc, cond.operator),
                        f"{value!r} is not a possible value of {param.name} [{', '.join(allowed)}]",
                    )
                )

    unique([p.name for p in pipeline.parameters], ("parameters",), "parameter")
    unique([s.name for s in pipeline.stages], ("stages",), "stage")
    for i, stage in enumerate(pipeline.stages):
        if stage.when is not None:
            check_when(stage.when, ("stages", i, "when"))
        unique([b.name for b in stage.parallel or []], ("stages", i, "parallel"), "stage")
        for j, branch in enumerate(stage.parallel or []):
            if branch.when is not None:
                check_when(branch.when, ("stages", i, "parallel", j, "when"))
    return problems


def parse_pipeline(text: str, filename: str = "conveyor.yml") -> Pipeline:
    """Parse and validate a pipeline spec; raise :class:`SpecError` on any problem."""

    def fail(line: int, message: str) -> SpecError:
        return SpecError([SpecIssue(filename, line, "", message)])

    if len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise fail(1, f"the file is larger than {MAX_SPEC_BYTES // 1024} KiB")
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            if root is not None:
                problems = _scan(root)
                data = loader.construct_document(root)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        last = max(1, len(text.splitlines()))
        line = min(mark.line + 1, last) if mark is not None else 1
        raise fail(line, f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise fail(1, f"invalid YAML: {str(exc).splitlines()[0]}") from None
    except _TooBig as exc:
        raise fail(1, str(exc)) from None
    except RecursionError:
        raise fail(1, "the document is nested too deeply") from None
    if root is None:
        raise fail(1, "the file is empty; a pipeline needs at least 'name' and 'stages'")
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"{type(data).__name__} {data!r:.40}"
        raise fail(root.start_mark.line + 1, f"a pipeline must be a mapping, got {kind}")

    problems.extend(_misplaced_notify(data))
    issues: list[tuple[Loc, Loc, str]] = [(loc, loc, message) for loc, message in problems]
    pipeline: Pipeline | None = None
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        issues.extend(_humanize(err) for err in exc.errors())
    if pipeline is not None:
        issues.extend((loc, loc, message) for loc, message in _semantic_checks(pipeline))
    if pipeline is not None and not issues:
        return pipeline
    result: list[SpecIssue] = []
    for path_loc, line_loc, message in issues:
        issue = SpecIssue(filename, _line_of(root, line_loc), _format_path(path_loc), message)
        if issue not in result:
            result.append(issue)
    result.sort(key=lambda i: i.line)
    raise SpecError(result)
