"""Translate a declarative Jenkinsfile into a Conveyor pipeline (``conveyor.yml``).

The Jenkinsfile is parsed by :mod:`conveyor.core.groovy` into nested calls; this
module maps the declarative subset onto pipeline fields (docs/pipelines.md) and
reports every construct it cannot translate — with its line — instead of guessing.
An untranslated step is replaced by a step that fails the build with the same
message, so a half-translated pipeline never passes silently. Pure code, no I/O.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

import yaml

from conveyor.core.groovy import (
    Assign,
    Call,
    CallValue,
    GroovySyntaxError,
    ListValue,
    Name,
    Num,
    Statement,
    Str,
    Token,
    Unparsed,
    Value,
    parse_groovy,
)

__all__ = [
    "GroovySyntaxError",
    "Issue",
    "NotTranslated",
    "Translation",
    "dump_yaml",
    "is_jenkinsfile_path",
    "pipeline_from_jenkinsfile",
    "translate_jenkinsfile",
]

_UNIT_SECONDS = {"SECONDS": 1, "MINUTES": 60, "HOURS": 3600, "DAYS": 86400}
_POST_BLOCKS = {"always": "always", "success": "success", "failure": "failure"}
_POST_BLOCKS["aborted"] = "cancelled"
_INTERPOLATION = re.compile(r"\$\{([^}]*)\}")
_SIMPLE_REF = re.compile(r"(?:(?:params|env)\.)?([A-Za-z_][A-Za-z0-9_]*)")
_EVERY_N_MINUTES = re.compile(r"(?:H|\*)/(\d+) \* \* \* \*")
_JOB_SEGMENT = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, order=True)
class Issue:
    """One construct that was not translated (or translated only in part)."""

    line: int
    message: str


@dataclass
class Translation:
    pipeline: dict[str, Any]
    issues: list[Issue]


class _Untranslatable(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass
class _StepContext:
    """What enclosing ``dir``/``withEnv``/``withCredentials`` blocks add to a step."""

    directory: str | None = None
    exports: list[tuple[str, str]] = field(default_factory=list)
    credentials: list[dict[str, str]] = field(default_factory=list)


# ----------------------------------------------------------------------------- values


def _unescape(s: Str) -> str:
    """The string's value; for double-quoted strings ``${...}`` is kept for the shell."""
    out: list[str] = []
    raw = s.raw
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "\\" and i + 1 < len(raw):
            nxt = raw[i + 1]
            out.append({"n": "\n", "t": "\t", "$": "$", "\n": ""}.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    text = "".join(out)
    if len(s.quote) == 3:
        text = textwrap.dedent(text.lstrip("\n")).rstrip() + ("\n" if "\n" in text else "")
    return text


def _shell_text(s: Str, line: int) -> str:
    """A string for a shell: Groovy's ``${params.X}`` / ``${env.X}`` become the shell's
    ``${X}`` (parameters and environment are environment variables in Conveyor)."""
    text = _unescape(s)
    if not s.interpolated:
        return text

    def replace(match: re.Match[str]) -> str:
        ref = _SIMPLE_REF.fullmatch(match.group(1).strip())
        if ref is None:
            raise _Untranslatable(
                line, f"Groovy expression '${{{match.group(1)}}}' in a string is not translated"
            )
        return "${" + ref.group(1) + "}"

    return _INTERPOLATION.sub(replace, text)


def _text(value: Value | None, what: str, line: int) -> str:
    if isinstance(value, Str):
        if value.interpolated and "$" in value.raw:
            raise _Untranslatable(line, f"{what}: interpolated Groovy string is not translated")
        return _unescape(value)
    if isinstance(value, Num):
        return value.text
    if isinstance(value, Name) and value.dotted in ("true", "false"):
        return value.dotted
    raise _Untranslatable(line, f"{what}: expected a literal")


def _integer(value: Value | None, what: str, line: int) -> int:
    text = _text(value, what, line)
    if not text.lstrip("-").isdigit():
        raise _Untranslatable(line, f"{what}: expected a whole number, got {text!r}")
    return int(text)


def _duration(call: Call) -> str:
    """``timeout(time: 5, unit: 'MINUTES')`` / ``timeout(5)`` as a Conveyor duration."""
    amount = call.named("time") or next(iter(call.positional()), None)
    seconds = _integer(amount, "timeout time", call.line)
    unit_value = call.named("unit")
    unit = "MINUTES" if unit_value is None else _text(unit_value, "timeout unit", call.line)
    if isinstance(unit_value, Name):  # unit: MINUTES without quotes
        unit = unit_value.dotted.rsplit(".", 1)[-1]
    if unit not in _UNIT_SECONDS:
        raise _Untranslatable(call.line, f"timeout unit {unit!r} is not translated")
    total = seconds * _UNIT_SECONDS[unit]
    if total % 3600 == 0:
        return f"{total // 3600}h"
    if total % 60 == 0:
        return f"{total // 60}m"
    return f"{total}s"


# ----------------------------------------------------------------------------- translator


class _Translator:
    def __init__(self) -> None:
        self.issues: list[Issue] = []
        self.parameters: set[str] = set()
        self.environment: dict[str, str] = {}
        # Stage-level `agent { label }`: (line, stage, label), resolved once all is read.
        self.stage_agents: list[tuple[int, str, str]] = []

    def report(self, line: int, message: str) -> None:
        self.issues.append(Issue(line, message))

    def placeholder(self, line: int, message: str) -> dict[str, Any]:
        """A step standing in for an untranslated one: it fails the build loudly."""
        self.report(line, message)
        note = f"Jenkinsfile:{line}: not translated: {message}".replace("'", "")
        return {"sh": f"echo '{note}' >&2\nexit 1\n"}

    # -- pipeline
    def pipeline(self, statements: list[Statement], name: str) -> dict[str, Any]:
        roots = [s for s in statements if isinstance(s, Call) and s.name == "pipeline"]
        for s in statements:
            if not (isinstance(s, Call) and s.name == "pipeline"):
                self.report(s.line, "only a declarative `pipeline { }` block is translated")
        if len(roots) != 1 or roots[0].body is None:
            raise GroovySyntaxError(1, "expected exactly one declarative `pipeline { ... }` block")
        out: dict[str, Any] = {"name": name}
        body = roots[0].body
        # Parameters and environment first: conditions and strings refer to them.
        for section in sorted(body, key=lambda s: getattr(s, "name", "") != "parameters"):
            if not isinstance(section, Call):
                self.report(section.line, "not a declarative section")
                continue
            try:
                self.pipeline_section(section, out)
            except _Untranslatable as exc:
                self.report(exc.line, exc.message)
        if "stages" not in out:
            raise GroovySyntaxError(roots[0].line, "the pipeline has no `stages { }` section")
        self.resolve_stage_agents(out)
        self.hoist_stage_posts(out)
        order = ["name", "agent", "concurrency", "timeout", "retry", "triggers", "parameters"]
        order += ["environment", "credentials", "stages", "post"]
        return {k: out[k] for k in order if k in out}

    def pipeline_section(self, section: Call, out: dict[str, Any]) -> None:
        handlers = {
            "agent": lambda: self.agent(section, out),
            "parameters": lambda: self.parameters_block(section, out),
            "environment": lambda: self.environment_block(section, out),
            "options": lambda: self.options(section, out, pipeline_level=True),
            "triggers": lambda: self.triggers(section, out),
            "stages": lambda: out.__setitem__("stages", self.stages(section)),
            "post": lambda: self.post(section, out),
        }
        handler = handlers.get(section.name)
        if handler is None:
            raise _Untranslatable(section.line, f"`{section.name}` is not translated")
        handler()

    def agent(self, call: Call, out: dict[str, Any]) -> None:
        args = call.positional()
        if args and isinstance(args[0], Name) and args[0].dotted in ("any", "none"):
            return
        inner = call.body or []
        if len(inner) == 1 and isinstance(inner[0], Call) and inner[0].name == "node":
            inner = inner[0].body or []
        labels = [s for s in inner if isinstance(s, Call) and s.name == "label"]
        if len(labels) == 1 and len(inner) == 1:
            out["agent"] = _text(next(iter(labels[0].positional()), None), "label", call.line)
            return
        raise _Untranslatable(call.line, "agent: only `any`, `none` and `label` are translated")

    def parameters_block(self, block: Call, out: dict[str, Any]) -> None:
        params: list[dict[str, Any]] = []
        for s in block.body or []:
            try:
                params.append(self.parameter(s))
            except _Untranslatable as exc:
                self.report(exc.line, exc.message)
        if params:
            out["parameters"] = params

    def parameter(self, s: Statement) -> dict[str, Any]:
        kinds = {"string": "string", "text": "string", "choice": "choice"}
        kinds["booleanParam"] = "boolean"
        if not isinstance(s, Call) or s.name not in kinds:
            what = s.name if isinstance(s, Call) else "statement"
            raise _Untranslatable(s.line, f"parameter type `{what}` is not translated")
        param: dict[str, Any] = {"name": _text(s.named("name"), "parameter name", s.line)}
        if kinds[s.name] != "string":
            param["type"] = kinds[s.name]
        if s.name == "choice":
            choices = s.named("choices")
            if isinstance(choices, ListValue):
                param["choices"] = [_text(c, "choice", s.line) for c in choices.items]
            else:
                param["choices"] = _text(choices, "choices", s.line).split("\n")
        default = s.named("defaultValue")
        if default is not None:
            param["default"] = _text(default, "defaultValue", s.line)
        description = s.named("description")
        if description is not None:
            param["description"] = _text(description, "description", s.line)
        self.parameters.add(param["name"])
        return param

    def environment_block(self, block: Call, out: dict[str, Any]) -> None:
        env, creds = self.environment_entries(block)
        self.environment.update(env)
        if env:
            out["environment"] = env
        if creds:
            out["credentials"] = creds

    def environment_entries(self, block: Call) -> tuple[dict[str, str], list[dict[str, str]]]:
        env: dict[str, str] = {}
        creds: list[dict[str, str]] = []
        for s in block.body or []:
            if not isinstance(s, Assign):
                self.report(s.line, "environment: only `NAME = value` entries are translated")
                continue
            value = s.value
            if isinstance(value, CallValue) and value.name == "credentials":
                cred_id = _text(next(iter(Call("", 0, value.args).positional()), None), "id", 0)
                creds.append({"id": cred_id, "env": s.name})
                continue
            try:
                env[s.name] = _text(value, f"environment {s.name}", s.line)
            except _Untranslatable as exc:
                self.report(exc.line, exc.message)
        return env, creds

    def options(self, block: Call, out: dict[str, Any], pipeline_level: bool) -> None:
        for s in block.body or []:
            if not isinstance(s, Call):
                self.report(s.line, "options: not an option")
            elif s.name == "timeout":
                out["timeout"] = _duration(s)
            elif s.name == "retry":
                out["retry"] = _integer(next(iter(s.positional()), None), "retry", s.line)
            elif s.name == "disableConcurrentBuilds" and pipeline_level:
                out["concurrency"] = 1
            else:
                self.report(s.line, f"option `{s.name}` is not translated")

    def triggers(self, block: Call, out: dict[str, Any]) -> None:
        triggers: dict[str, Any] = {}
        for s in block.body or []:
            if not isinstance(s, Call) or s.name not in ("cron", "pollSCM"):
                name = s.name if isinstance(s, Call) else "statement"
                self.report(s.line, f"trigger `{name}` is not translated")
                continue
            spec = _text(next(iter(s.positional()), None), s.name, s.line).strip()
            if s.name == "cron":
                triggers["cron"] = spec
                continue
            every = _EVERY_N_MINUTES.fullmatch(spec)
            triggers["poll"] = f"{every.group(1)}m" if every else True
            self.report(
                s.line,
                "pollSCM: Conveyor polls at an interval "
                + (f"(every {every.group(1)}m)" if every else "(the controller's default)")
                + " and needs an `scm:` block naming the repository; add it",
            )
        if triggers:
            out["triggers"] = triggers

    # -- stages
    def stages(self, block: Call) -> list[dict[str, Any]]:
        stages: list[dict[str, Any]] = []
        for s in block.body or []:
            if isinstance(s, Call) and s.name == "stage":
                stages.extend(self.top_stage(s))
            else:
                self.report(s.line, "stages: only `stage` blocks are translated")
        if not stages:
            raise _Untranslatable(block.line, "stages: no stage translated")
        return stages

    def top_stage(self, call: Call) -> list[dict[str, Any]]:
        """A top-level stage, or the stages of a stage with nested sequential
        ``stages { }``: those become top-level stages named ``Outer » Inner`` that
        inherit the outer stage's ``when``, environment and credentials."""
        nested = [s for s in call.body or [] if isinstance(s, Call) and s.name == "stages"]
        if not nested:
            return [self.stage(call, allow_parallel=True)]
        outer = self.stage(call, allow_parallel=True, group=True)
        children: list[dict[str, Any]] = []
        for s in nested[0].body or []:
            if isinstance(s, Call) and s.name == "stage":
                children.extend(self.top_stage(s))
            else:
                self.report(s.line, "stages: only `stage` blocks are translated")
        if not children:
            return [outer | {"steps": [self.placeholder(call.line, "nested stages: none")]}]
        for key in ("timeout", "retry"):
            if key in outer:
                self.report(
                    call.line,
                    f"stage {outer['name']!r}: `{key}` around nested stages applies to each "
                    "nested stage in Conveyor (not to the group as a whole)",
                )
        out = []
        for child in children:
            merged = dict(child)
            merged["name"] = f"{outer['name']} » {child['name']}"[:100]
            if "when" in outer:
                merged["when"] = (
                    {"all": [outer["when"], child["when"]]} if "when" in child else outer["when"]
                )
            for key in ("timeout", "retry"):
                if key in outer and key not in child:
                    merged[key] = outer[key]
            env = {**outer.get("environment", {}), **child.get("environment", {})}
            if env:
                merged["environment"] = env
            creds = outer.get("credentials", []) + child.get("credentials", [])
            if creds:
                merged["credentials"] = creds
            out.append(_ordered_stage(merged))
        if "_post" in outer:  # the group's post: after its last stage
            last = out[-1]
            last["_post"] = last.get("_post", []) + outer["_post"]
        return out

    def stage(self, call: Call, allow_parallel: bool, group: bool = False) -> dict[str, Any]:
        name = _text(next(iter(call.positional()), None), "stage name", call.line).strip()
        stage: dict[str, Any] = {"name": name.replace("/", "-") or f"stage-{call.line}"}
        steps: list[dict[str, Any]] | None = None
        for s in call.body or []:
            try:
                if not isinstance(s, Call):
                    raise _Untranslatable(s.line, f"stage {name!r}: not a stage section")
                if s.name == "stages" and group:
                    continue  # read by top_stage()
                if s.name == "stages":  # sequential stages inside a parallel branch
                    steps = self.sequential_steps(s, name)
                elif s.name == "post":
                    stage["_post"] = [
                        (s.line, block, steps_) for block, steps_ in self.stage_post(s)
                    ]
                elif s.name == "agent":
                    self.stage_agent(s, name)
                elif s.name == "steps":
                    steps = self.stage_steps(s, stage)
                elif s.name == "parallel" and allow_parallel:
                    stage["parallel"] = [
                        self.stage(b, allow_parallel=False)
                        if isinstance(b, Call) and b.name == "stage"
                        else self.unsupported_branch(b)
                        for b in s.body or []
                    ]
                elif s.name == "when":
                    try:
                        condition = self.when(s)
                    except _Untranslatable as exc:
                        raise _Untranslatable(
                            exc.line, f"{exc.message}; the stage {name!r} now always runs"
                        ) from None
                    if condition is not None:
                        stage["when"] = condition
                elif s.name == "environment":
                    env, creds = self.environment_entries(s)
                    if env:
                        stage["environment"] = env
                    if creds:
                        stage["credentials"] = creds
                elif s.name == "options":
                    self.options(s, stage, pipeline_level=False)
                else:
                    raise _Untranslatable(s.line, f"stage {name!r}: `{s.name}` is not translated")
            except _Untranslatable as exc:
                self.report(exc.line, exc.message)
        if steps is not None:
            stage["steps"] = steps
        if "steps" not in stage and "parallel" not in stage and not group:
            stage["steps"] = [self.placeholder(call.line, f"stage {name!r} has no steps")]
        return _ordered_stage(stage)

    def stage_agent(self, call: Call, stage: str) -> None:
        """``agent any|none`` needs nothing (a build runs on one agent); a label is
        remembered and resolved against the other stages' (resolve_stage_agents)."""
        found: dict[str, Any] = {}
        try:
            self.agent(call, found)
        except _Untranslatable as exc:
            raise _Untranslatable(exc.line, f"stage {stage!r}: {exc.message}") from None
        if "agent" in found:
            self.stage_agents.append((call.line, stage, found["agent"]))

    def resolve_stage_agents(self, out: dict[str, Any]) -> None:
        """A Conveyor build runs all its stages on one agent. Stage labels that agree
        (with each other, and with the pipeline's label if it has one) become the
        build's label; a stage asking for another label is reported."""
        labels = sorted({label for _, _, label in self.stage_agents})
        top = out.get("agent")
        if top is None and len(labels) == 1:
            out["agent"] = top = labels[0]
        for line, stage, label in self.stage_agents:
            if label != top:
                where = f"the build's agent ({top})" if top else "one agent"
                self.report(
                    line,
                    f"stage {stage!r}: agent label {label!r}: a Conveyor build runs all its "
                    f"stages on {where}; other labels in one pipeline are not translated "
                    "(split it into jobs chained by an upstream trigger)",
                )

    def stage_post(self, block: Call) -> list[tuple[str, list[dict[str, Any]]]]:
        posts: list[tuple[str, list[dict[str, Any]]]] = []
        for s in block.body or []:
            if isinstance(s, Call) and s.name in _POST_BLOCKS:
                steps = self.steps(s.body or [], _StepContext())
                if steps:
                    posts.append((_POST_BLOCKS[s.name], steps))
            else:
                name = s.name if isinstance(s, Call) else "statement"
                self.report(s.line, f"post condition `{name}` is not translated")
        return posts

    def hoist_stage_posts(self, out: dict[str, Any]) -> None:
        """Conveyor has ``post`` blocks for the whole pipeline only: a stage's post
        steps move there (before the pipeline's own, as Jenkins runs them first).
        That is exact for ``success`` on the last stage (and every block of a
        pipeline's only stage) when the stage has no ``when``; otherwise the steps
        run at the end of the build under the pipeline's condition, which is
        reported."""
        stages = out["stages"]
        moved: dict[str, list[dict[str, Any]]] = {}
        for i, stage in enumerate(stages):
            holders = [(stage, i == len(stages) - 1)]
            holders += [(branch, False) for branch in stage.get("parallel", [])]
            for holder, last in holders:
                for line, block, steps in holder.pop("_post", []):
                    exact = (
                        last and "when" not in holder and (block == "success" or len(stages) == 1)
                    )
                    if not exact:
                        self.report(
                            line,
                            f"stage {holder['name']!r}: post {block}: Conveyor has post blocks "
                            f"for the whole pipeline only; moved to the pipeline's post.{block} "
                            "(it runs after all stages, on the build's result)",
                        )
                    moved.setdefault(block, []).extend(steps)
        if moved:
            post = out.setdefault("post", {})
            for block, steps in moved.items():
                post[block] = steps + post.get(block, [])
            out["post"] = {k: post[k] for k in _POST_BLOCKS.values() if k in post}

    def sequential_steps(self, block: Call, name: str) -> list[dict[str, Any]]:
        """Sequential ``stages { }`` inside a parallel branch: a branch has steps, so
        the nested stages' steps run one after another in it. Only plain nested stages
        (steps, ``agent any``) are folded; anything else is reported."""
        steps: list[dict[str, Any]] = []
        for s in block.body or []:
            if not (isinstance(s, Call) and s.name == "stage"):
                self.report(s.line, "stages: only `stage` blocks are translated")
                continue
            for section in s.body or []:
                if isinstance(section, Call) and section.name == "steps":
                    steps.extend(self.steps(section.body or [], _StepContext()))
                elif isinstance(section, Call) and section.name == "agent":
                    self.stage_agent(section, name)
                else:
                    what = section.name if isinstance(section, Call) else "statement"
                    self.report(
                        section.line,
                        f"stage {name!r}: `{what}` of a stage nested in a parallel branch is "
                        "not translated (a branch is one list of steps)",
                    )
        return steps or [self.placeholder(block.line, "nested stages: no steps")]

    def unsupported_branch(self, s: Statement) -> dict[str, Any]:
        return {
            "name": f"line-{s.line}",
            "steps": [self.placeholder(s.line, "parallel: only `stage` branches are translated")],
        }

    def stage_steps(self, block: Call, stage: dict[str, Any]) -> list[dict[str, Any]]:
        """A stage's steps; a `timeout`/`retry` wrapping all of them becomes the stage's."""
        body = block.body or []
        while len(body) == 1 and isinstance(body[0], Call) and body[0].name in ("timeout", "retry"):
            wrapper = body[0]
            if wrapper.body is None or wrapper.name in stage:
                break
            if wrapper.name == "timeout":
                stage["timeout"] = _duration(wrapper)
            else:
                first = next(iter(wrapper.positional()), None)
                stage["retry"] = _integer(first, "retry", wrapper.line)
            body = wrapper.body
        steps = self.steps(body, _StepContext())
        return steps or [self.placeholder(block.line, "steps: nothing to translate")]

    # -- when
    def when(self, block: Call) -> dict[str, Any] | None:
        conditions: list[dict[str, Any]] = []
        for s in block.body or []:
            if isinstance(s, Call) and s.name == "beforeAgent":
                continue  # Conveyor decides conditions before an agent is chosen anyway
            conditions.append(self.condition(s))
        if not conditions:
            return None
        return conditions[0] if len(conditions) == 1 else {"all": conditions}

    def condition(self, s: Statement) -> dict[str, Any]:
        if not isinstance(s, Call):
            raise _Untranslatable(s.line, "when: not a condition")
        if s.name in ("allOf", "anyOf"):
            parts = [self.condition(c) for c in s.body or []]
            if not parts:
                raise _Untranslatable(s.line, f"when: empty {s.name}")
            return {"all" if s.name == "allOf" else "any": parts}
        if s.name == "not":
            parts = [self.condition(c) for c in s.body or []]
            if len(parts) != 1:
                raise _Untranslatable(s.line, "when: `not` takes one condition")
            return {"not": parts[0]}
        if s.name == "environment":
            var = _text(s.named("name"), "environment name", s.line)
            value = _text(s.named("value"), "environment value", s.line)
            if var in self.parameters:
                return {"parameter": var, "equals": value}
            raise _Untranslatable(
                s.line,
                f"when environment {var!r}: Conveyor conditions test parameters, "
                f"and {var!r} is not a parameter",
            )
        if s.name == "expression" and s.raw_body is not None:
            return _Expression(s.raw_body, self.parameters, s.line).parse()
        if s.name == "branch":
            raise _Untranslatable(
                s.line,
                "when branch: Conveyor conditions test parameters, not branches "
                "(a multibranch job builds each branch; use `scm.branches`)",
            )
        raise _Untranslatable(s.line, f"when: condition `{s.name}` is not translated")

    # -- post
    def post(self, block: Call, out: dict[str, Any]) -> None:
        post: dict[str, Any] = {}
        for s in block.body or []:
            if isinstance(s, Call) and s.name in _POST_BLOCKS:
                steps = self.steps(s.body or [], _StepContext())
                if steps:
                    post[_POST_BLOCKS[s.name]] = steps
            else:
                name = s.name if isinstance(s, Call) else "statement"
                self.report(s.line, f"post condition `{name}` is not translated")
        if post:
            out["post"] = post

    # -- steps
    def steps(self, body: list[Statement], ctx: _StepContext) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = []
        for s in body:
            try:
                steps.extend(self.step(s, ctx))
            except _Untranslatable as exc:
                steps.append(self.placeholder(exc.line, exc.message))
        return steps

    def step(self, s: Statement, ctx: _StepContext) -> list[dict[str, Any]]:
        if isinstance(s, Unparsed):
            raise _Untranslatable(s.line, f"Groovy statement `{s.text}` is not translated")
        if isinstance(s, Assign):
            raise _Untranslatable(s.line, f"assignment to {s.name} is not translated")
        if s.name == "script":
            last = s.end_line if s.end_line > s.line else s.line
            raise _Untranslatable(
                s.line, f"`script {{ }}` block (lines {s.line}-{last}) is arbitrary Groovy"
            )
        simple = {
            "sh": self.sh,
            "echo": self.echo,
            "archiveArtifacts": self.archive,
            "sleep": self.sleep,
            "error": self.error,
        }
        if s.name in simple and s.body is None:
            return [self.with_context(simple[s.name](s), ctx)]
        if s.body is None:
            raise _Untranslatable(s.line, f"step `{s.name}` is not translated")
        if s.name == "dir":
            path = _text(next(iter(s.positional()), s.named("path")), "dir", s.line)
            joined = path if ctx.directory is None else f"{ctx.directory}/{path}"
            return self.steps(s.body, _StepContext(joined, ctx.exports, ctx.credentials))
        if s.name == "withEnv":
            pairs = next(iter(s.positional()), None)
            if not isinstance(pairs, ListValue):
                raise _Untranslatable(s.line, "withEnv: expected a list of 'NAME=value'")
            exports = list(ctx.exports)
            for item in pairs.items:
                name, sep, value = _shell_text(_as_str(item, s.line), s.line).partition("=")
                if not sep:
                    raise _Untranslatable(s.line, "withEnv: expected 'NAME=value'")
                exports.append((name, value))
            return self.steps(s.body, _StepContext(ctx.directory, exports, ctx.credentials))
        if s.name == "withCredentials":
            bindings = list(ctx.credentials) + self.bindings(s)
            return self.steps(s.body, _StepContext(ctx.directory, ctx.exports, bindings))
        if s.name in ("timeout", "retry"):
            inner = self.steps(s.body, ctx)
            if len(inner) != 1 or s.name in inner[0]:
                self.report(
                    s.line,
                    f"`{s.name}` around {len(inner)} steps: Conveyor sets it per step or per "
                    "stage; the steps are translated without it (give them a stage of their own)",
                )
                return inner
            if s.name == "timeout":
                inner[0]["timeout"] = _duration(s)
            else:
                inner[0]["retry"] = _integer(next(iter(s.positional()), None), "retry", s.line)
            return inner
        raise _Untranslatable(s.line, f"step `{s.name}` is not translated")

    def with_context(self, step: dict[str, Any], ctx: _StepContext) -> dict[str, Any]:
        if "sh" in step:
            prefix = "".join(f"export {k}={_quote(v)}\n" for k, v in ctx.exports)
            if ctx.directory is not None:
                prefix += f"cd {_quote(ctx.directory)}\n"
            step["sh"] = prefix + step["sh"]
        elif "archive" in step and ctx.directory is not None:
            step["archive"] = [f"{ctx.directory}/{p}" for p in step["archive"]]
        if ctx.credentials:
            step["credentials"] = [dict(b) for b in ctx.credentials]
        return step

    def bindings(self, call: Call) -> list[dict[str, str]]:
        items = next(iter(call.positional()), None)
        if not isinstance(items, ListValue):
            raise _Untranslatable(call.line, "withCredentials: expected a list of bindings")
        out: list[dict[str, str]] = []
        for item in items.items:
            if not isinstance(item, CallValue):
                raise _Untranslatable(call.line, "withCredentials: expected binding calls")
            args = Call(item.name, item.line, item.args)
            cred = _text(args.named("credentialsId"), "credentialsId", item.line)
            if item.name == "string":
                out.append({"id": cred, "env": _text(args.named("variable"), "variable", 0)})
            elif item.name == "usernamePassword":
                user = _text(args.named("usernameVariable"), "usernameVariable", item.line)
                password = _text(args.named("passwordVariable"), "passwordVariable", item.line)
                out.append({"id": cred, "username_env": user, "password_env": password})
            elif item.name == "file":
                out.append({"id": cred, "file": _text(args.named("variable"), "variable", 0)})
            else:
                raise _Untranslatable(item.line, f"withCredentials: `{item.name}` binding")
        return out

    def sh(self, s: Call) -> dict[str, Any]:
        for key in ("returnStdout", "returnStatus", "label", "encoding"):
            if s.named(key) is not None:
                raise _Untranslatable(s.line, f"sh {key}: is not translated")
        script = s.named("script") or next(iter(s.positional()), None)
        return {"sh": _shell_text(_as_str(script, s.line), s.line)}

    def echo(self, s: Call) -> dict[str, Any]:
        message = _as_str(s.named("message") or next(iter(s.positional()), None), s.line)
        text = _shell_text(message, s.line)
        if message.interpolated and "$" in message.raw:
            # Conveyor's echo prints literally; let the shell expand the variables.
            escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
            return {"sh": f'echo "{escaped}"'}
        return {"echo": text}

    def archive(self, s: Call) -> dict[str, Any]:
        for key in ("excludes", "allowEmptyArchive", "fingerprint", "onlyIfSuccessful"):
            if s.named(key) is not None:
                self.report(s.line, f"archiveArtifacts {key}: is not translated")
        patterns = _text(s.named("artifacts") or next(iter(s.positional()), None), "artifacts", 0)
        return {"archive": [p.strip() for p in patterns.split(",") if p.strip()]}

    def sleep(self, s: Call) -> dict[str, Any]:
        amount = _integer(s.named("time") or next(iter(s.positional()), None), "sleep", s.line)
        unit_value = s.named("unit")
        unit = "SECONDS" if unit_value is None else _text(unit_value, "sleep unit", s.line)
        if unit not in _UNIT_SECONDS:
            raise _Untranslatable(s.line, f"sleep unit {unit!r} is not translated")
        return {"sh": f"sleep {amount * _UNIT_SECONDS[unit]}"}

    def error(self, s: Call) -> dict[str, Any]:
        message = _shell_text(_as_str(next(iter(s.positional()), None), s.line), s.line)
        return {"sh": f"echo {_quote(message)} >&2\nexit 1"}


def _ordered_stage(stage: dict[str, Any]) -> dict[str, Any]:
    order = ["name", "when", "timeout", "retry", "environment", "credentials"]
    return {k: stage[k] for k in [*order, "steps", "parallel", "_post"] if k in stage}


def _as_str(value: Value | None, line: int) -> Str:
    if not isinstance(value, Str):
        raise _Untranslatable(line, "expected a string literal")
    return value


def _quote(text: str) -> str:
    """Single-quote for a POSIX shell, unless the text needs none; ``$`` kept live
    when the text refers to variables (double quotes)."""
    if re.fullmatch(r"[A-Za-z0-9_./:=@%+-]+", text):
        return text
    if "$" in text:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'
    return "'" + text.replace("'", "'\\''") + "'"


class _Expression:
    """``expression { params.X == 'v' && !params.DRY_RUN }`` as a Conveyor condition.

    Grammar: or := and ('||' and)*; and := unary ('&&' unary)*;
    unary := '!' unary | '(' or ')' | operand (('=='|'!=') operand | 'in' list)?
    """

    def __init__(self, tokens: list[Token], parameters: set[str], line: int) -> None:
        self.tokens = [t for t in tokens if t.kind != "nl"]
        if self.tokens and self.tokens[0].kind == "ident" and self.tokens[0].text == "return":
            self.tokens = self.tokens[1:]
        self.pos = 0
        self.parameters = parameters
        self.line = line

    def fail(self, why: str) -> _Untranslatable:
        text = " ".join(t.quote + t.text + t.quote for t in self.tokens)
        return _Untranslatable(self.line, f"when expression `{text[:80]}`: {why}")

    def peek(self, text: str) -> bool:
        return self.pos < len(self.tokens) and self.tokens[self.pos].text == text

    def take(self) -> Token:
        if self.pos >= len(self.tokens):
            raise self.fail("unexpected end")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def parse(self) -> dict[str, Any]:
        result = self.disjunction()
        if self.pos != len(self.tokens):
            raise self.fail(f"unexpected {self.tokens[self.pos].text!r}")
        return result

    def disjunction(self) -> dict[str, Any]:
        parts = [self.conjunction()]
        while self.peek("||"):
            self.take()
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else {"any": parts}

    def conjunction(self) -> dict[str, Any]:
        parts = [self.unary()]
        while self.peek("&&"):
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else {"all": parts}

    def unary(self) -> dict[str, Any]:
        if self.peek("!"):
            self.take()
            return {"not": self.unary()}
        if self.peek("("):
            self.take()
            inner = self.disjunction()
            if self.take().text != ")":
                raise self.fail("expected ')'")
            return inner
        param = self.parameter()
        if self.peek("==") or self.peek("!="):
            op = "equals" if self.take().text == "==" else "not_equals"
            return {"parameter": param, op: self.literal()}
        if self.peek("in"):
            self.take()
            if self.take().text != "[":
                raise self.fail("expected a list after `in`")
            values = [self.literal()]
            while self.peek(","):
                self.take()
                values.append(self.literal())
            if self.take().text != "]":
                raise self.fail("expected ']'")
            return {"parameter": param, "in": values}
        return {"parameter": param, "equals": "true"}  # a boolean parameter on its own

    def parameter(self) -> str:
        first = self.take()
        name = first.text
        if name in ("params", "env") and self.peek("."):
            self.take()
            name = self.take().text
        if first.kind != "ident" or name not in self.parameters:
            raise self.fail(f"{name!r} is not a parameter")
        return name

    def literal(self) -> str:
        tok = self.take()
        if tok.kind == "str" and not (tok.quote.startswith('"') and "$" in tok.text):
            return tok.text
        if tok.kind == "num" or (tok.kind == "ident" and tok.text in ("true", "false")):
            return tok.text
        raise self.fail(f"expected a literal, got {tok.text!r}")


def job_name_from(path_hint: str) -> str:
    """A valid job name from a folder or file name (``my app`` → ``my-app``)."""
    name = _JOB_SEGMENT.sub("-", path_hint).strip("-._")
    return name if name and name not in ("builds", "versions") else "imported"


def translate_jenkinsfile(text: str, name: str) -> Translation:
    """Translate a declarative Jenkinsfile; raise :class:`GroovySyntaxError` when the
    text is not a declarative pipeline at all. Untranslated constructs are in
    ``issues`` (sorted by line), never guessed."""
    translator = _Translator()
    pipeline = translator.pipeline(parse_groovy(text), name)
    return Translation(pipeline, sorted(set(translator.issues)))


class NotTranslated(ValueError):
    """A Jenkinsfile that does not translate completely; ``errors`` has one
    ``FILE:LINE: message`` entry per construct."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def is_jenkinsfile_path(path: str) -> bool:
    """A pipeline file that is not YAML (``Jenkinsfile``, ``ci/build.groovy``...)."""
    return not path.lower().endswith((".yml", ".yaml"))


def pipeline_from_jenkinsfile(text: str, name: str, where: str) -> str:
    """The Conveyor pipeline (YAML) of a Jenkinsfile read from a repository at build
    time. Only a complete translation is accepted: a build never runs a pipeline with
    parts left out, so anything the importer reports raises :class:`NotTranslated`."""
    try:
        translation = translate_jenkinsfile(text, name)
    except GroovySyntaxError as exc:
        raise NotTranslated([f"{where}:{exc.line}: {exc.message}"]) from None
    if translation.issues:
        raise NotTranslated(
            [f"{where}:{i.line}: not translated: {i.message}" for i in translation.issues]
        )
    return yaml.safe_dump(translation.pipeline, sort_keys=False, allow_unicode=True, width=100)


class _BlockDumper(yaml.SafeDumper):
    pass


def _str_block(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_block)


def dump_yaml(translation: Translation, source: str = "Jenkinsfile") -> str:
    """The pipeline as YAML, headed by comments listing what was not translated."""
    header = [f"# Translated from {source} by `conveyor import jenkinsfile`."]
    if translation.issues:
        header.append(
            "# NOT translated (a step that was not is replaced by one failing the build):"
        )
        header += [f"#   {source}:{i.line}: {i.message}" for i in translation.issues]
    body = yaml.dump(
        translation.pipeline,
        Dumper=_BlockDumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        default_flow_style=False,
    )
    return "\n".join(header) + "\n" + body
