"""Configuration as code: reading a config repository's files into desired objects,
validating all of them, and deciding what an apply changes. Pure code: no I/O.

Layout: the first folder of a file's path names its *kind*::

    folders/ops.yml              kind folder   {name: ops, description: ...}
    jobs/hello-world.yml         kind job      a pipeline spec (conveyor.yml) named hello-world
    jobs/ops/deploy.yml          kind job      named ops/deploy

Only ``*.yml`` / ``*.yaml`` files count; anything else (README.md, .git) is ignored.
A file's path must match the name inside it (``jobs/ops/deploy.yml`` declares
``name: ops/deploy``), so that an export writes every object back to the same file.

Kinds are a registry (:data:`KINDS`, :func:`register_kind`): a kind knows its folder,
how to validate a file into :class:`Desired` objects, and how to render an object as
file text for export. Kinds whose state lives elsewhere (agent pools, roles and
grants, retention and backup schedules) are added by registering one more
:class:`Kind` here and a store handler in ``conveyor.controller.config_apply``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import yaml

from conveyor.core.pipeline import SpecError, parse_pipeline

__all__ = [
    "KINDS",
    "Change",
    "ConfigError",
    "ConfigIssue",
    "Desired",
    "Kind",
    "load_config",
    "plan_changes",
    "register_kind",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*")
MAX_FILES = 10_000


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ConfigError(ValueError):
    """The configuration is invalid; ``issues`` lists every problem in every file."""

    def __init__(self, issues: list[ConfigIssue], parsed: list[Desired] | None = None) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line, i.message))
        #: The objects of the files that were valid (so that checks needing the store
        #: can report their problems together with these).
        self.parsed: list[Desired] = parsed or []
        super().__init__("\n".join(str(i) for i in self.issues))


@dataclass(frozen=True)
class Desired:
    """One object the configuration declares: its kind, its name, the file it comes
    from and its canonical text (what is stored, and what an export writes back)."""

    kind: str
    name: str
    file: str
    text: str
    fields: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Kind:
    name: str
    folder: str
    parse: Callable[[str, str], Desired]  # (file, text) -> object; raises ConfigError
    path: Callable[[str], str]  # object name -> file path for export


KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> None:
    KINDS[kind.folder] = kind


def _name_from_path(file: str, folder: str) -> str:
    stem = file[len(folder) + 1 :]
    for suffix in (".yml", ".yaml"):
        stem = stem.removesuffix(suffix)
    return stem


def _check_name(file: str, folder: str, name: str, line: int) -> None:
    expected = _name_from_path(file, folder)
    if name != expected:
        raise ConfigError(
            [
                ConfigIssue(
                    file,
                    line,
                    f"this file declares {name!r}; a file under {folder}/ is named after what "
                    f"it declares: move it to {folder}/{name}.yml or rename it to {expected!r}",
                )
            ]
        )


def _parse_job(file: str, text: str) -> Desired:
    try:
        pipeline = parse_pipeline(text, file)
    except SpecError as exc:
        raise ConfigError(
            [ConfigIssue(e.file, e.line, _issue_text(e)) for e in exc.errors]
        ) from None
    _check_name(file, "jobs", pipeline.name, 1 + _key_line(text, "name"))
    return Desired("job", pipeline.name, file, text)


def _issue_text(issue: object) -> str:
    path = getattr(issue, "path", "")
    message = str(getattr(issue, "message", issue))
    return f"{path}: {message}" if path else message


def _key_line(text: str, key: str) -> int:
    for number, line in enumerate(text.splitlines()):
        if line.startswith(f"{key}:"):
            return number
    return 0


def _parse_folder(file: str, text: str) -> Desired:
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(
            [ConfigIssue(file, (mark.line + 1) if mark else 1, f"invalid YAML: {exc.problem}")]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError([ConfigIssue(file, 1, "a folder is a mapping {name, description}")])
    unknown = sorted(set(map(str, data)) - {"name", "description"})
    if unknown:
        raise ConfigError(
            [ConfigIssue(file, 1 + _key_line(text, unknown[0]), f"unknown field {unknown[0]!r}")]
        )
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            [ConfigIssue(file, 1 + _key_line(text, "name"), f"invalid folder name {name!r}")]
        )
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        raise ConfigError(
            [ConfigIssue(file, 1 + _key_line(text, "description"), "description is text")]
        )
    _check_name(file, "folders", name, 1 + _key_line(text, "name"))
    return Desired(
        "folder", name, file, render_folder(name, description), {"description": description}
    )


def render_folder(name: str, description: str | None) -> str:
    data: dict[str, str] = {"name": name}
    if description:
        data["description"] = description
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


register_kind(Kind("folder", "folders", _parse_folder, lambda n: f"folders/{n}.yml"))
register_kind(Kind("job", "jobs", _parse_job, lambda n: f"jobs/{n}.yml"))


def load_config(files: Mapping[str, str]) -> list[Desired]:
    """Validate every file (all problems are collected, not just the first) and return
    the desired objects; raise :class:`ConfigError` if anything is wrong."""
    issues: list[ConfigIssue] = []
    desired: list[Desired] = []
    seen: dict[tuple[str, str], str] = {}
    relevant = sorted(f for f in files if f.endswith((".yml", ".yaml")))
    if len(relevant) > MAX_FILES:
        raise ConfigError([ConfigIssue(".", 1, f"more than {MAX_FILES} configuration files")])
    for file in relevant:
        folder = file.split("/", 1)[0]
        kind = KINDS.get(folder)
        if kind is None or "/" not in file:
            known = ", ".join(f"{k}/" for k in sorted(KINDS))
            issues.append(ConfigIssue(file, 1, f"not in a known kind folder (known: {known})"))
            continue
        try:
            item = kind.parse(file, files[file])
        except ConfigError as exc:
            issues.extend(exc.issues)
            continue
        key = (item.kind, item.name)
        if key in seen:
            issues.append(
                ConfigIssue(file, 1, f"{item.kind} {item.name!r} is also declared in {seen[key]}")
            )
            continue
        seen[key] = file
        desired.append(item)
    if issues:
        raise ConfigError(issues, desired)
    return desired


Action = Literal["create", "update", "unchanged", "release"]


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: Action
    file: str | None

    def __str__(self) -> str:
        sign = {"create": "+", "update": "~", "unchanged": "=", "release": "-"}[self.action]
        where = f"  ({self.file})" if self.file else ""
        return f"{sign} {self.kind} {self.name}: {self.action}{where}"


def plan_changes(
    desired: list[Desired],
    current: Mapping[tuple[str, str], str],
    managed_here: set[tuple[str, str]],
) -> list[Change]:
    """What applying ``desired`` does, given the running objects' canonical texts
    (``current``) and which of them this config source manages. Objects it managed
    that the configuration no longer declares are *released* (no longer managed from
    Git; kept, never deleted)."""
    changes: list[Change] = []
    declared = set()
    for item in desired:
        key = (item.kind, item.name)
        declared.add(key)
        if key not in current:
            action: Action = "create"
        elif current[key] != item.text:
            action = "update"
        else:
            action = "unchanged"
        changes.append(Change(item.kind, item.name, action, item.file))
    for kind, name in sorted(managed_here - declared):
        changes.append(Change(kind, name, "release", None))
    return sorted(changes, key=lambda c: (c.kind != "folder", c.kind, c.name))


# The kinds whose state lives in other features' tables (pools, notifiers, grants,
# instance schedules) register themselves on import.
from conveyor.core import config_kinds as _config_kinds  # noqa: E402, F401
