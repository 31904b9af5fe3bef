"""The configuration kinds beyond folders and jobs (docs/config-as-code.md). Pure code.

==================  ====================  ===============================================
kind                file                  content
==================  ====================  ===============================================
``pool``            ``pools/NAME.yml``    an agent pool, as ``conveyor pool add --file``
                                          and ``POST /api/v1/pools`` take it
``notifier``        ``notifiers/NAME.yml`` a notifier (as in the notifications file) and
                                          the global rules that send to it
``grant``           ``grants/USER.yml``   every role grant of one (existing) user
``schedule``        ``schedules/retention.yml``, ``schedules/backup.yml``: instance
                                          retention defaults and backup schedules
==================  ====================  ===============================================

Each parser validates exactly what the API validates (the same functions and models),
reports problems as ``file:line: message`` and renders the object in canonical form,
which is both what is compared with the running object and what an export writes.
Checks that need the store (a grant's user exists, the last admin grant stays, a
provider's config, a notifier name not taken by the notifications file) are made by
``conveyor.controller.config_apply`` before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml
from croniter import croniter
from pydantic import TypeAdapter, ValidationError

from conveyor.core.config_repo import (
    ConfigError,
    ConfigIssue,
    Desired,
    Kind,
    _check_name,
    register_kind,
)
from conveyor.core.notifications import NotifierConfig, Rule
from conveyor.core.permissions import Role, valid_pattern
from conveyor.core.provider_secrets import REDACTED, inline_secrets, redacted
from conveyor.core.scaling import POOL_FIELDS, PolicyError, parse_pool_document

__all__ = [
    "REDACTED",
    "SCHEDULE_FIELDS",
    "render_grants",
    "render_notifier",
    "render_pool",
    "render_schedule",
]

USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")

Loc = tuple[str | int, ...]


def _line_of(root: yaml.Node | None, loc: Loc) -> int:
    from conveyor.core.pipeline import _line_of as line_of

    return 1 if root is None else line_of(root, loc)


def _load(file: str, text: str, what: str) -> tuple[dict[str, Any], yaml.Node]:
    """The file's mapping and its YAML node tree (for line numbers)."""
    from conveyor.core.pipeline import _scan, _TooBig

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None:
            # Duplicate keys, recursive or exploding aliases: refused before loading.
            try:
                problems = _scan(root)
            except _TooBig as exc:
                raise ConfigError([ConfigIssue(file, 1, str(exc))]) from None
            if problems:
                raise ConfigError(
                    [ConfigIssue(file, _line_of(root, loc), msg) for loc, msg in problems]
                )
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([ConfigIssue(file, line, f"invalid YAML: {exc.problem}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(file, 1, f"invalid YAML: {exc}")]) from None
    if not isinstance(data, dict) or root is None:
        raise ConfigError([ConfigIssue(file, 1, f"{what} is a mapping")])
    return data, root


def _sorted(value: Any) -> Any:
    """Mappings with sorted keys, at every depth (a canonical form)."""
    if isinstance(value, dict):
        return {str(k): _sorted(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _dump(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True, width=1000)


def _pydantic_issues(
    file: str, root: yaml.Node, exc: ValidationError, prefix: Loc = ()
) -> list[ConfigIssue]:
    from conveyor.core.pipeline import _format_path, _humanize

    issues: list[ConfigIssue] = []
    for err in exc.errors():
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            found = err.get("ctx", {}).get("tag")
            got = f", not {found!r}" if found else ""
            issue = ConfigIssue(
                file,
                _line_of(root, (*prefix, "type")),
                f"type: expected webhook, slack or email{got}",
            )
            if issue not in issues:
                issues.append(issue)
            continue
        path_loc, line_loc, message = _humanize(err)
        # Discriminated unions put the tag ("webhook") in the location: drop it.
        path_loc = tuple(p for p in path_loc if p not in ("webhook", "slack", "email"))
        line_loc = tuple(p for p in line_loc if p not in ("webhook", "slack", "email"))
        where = _format_path((*prefix, *path_loc))
        issue = ConfigIssue(
            file,
            _line_of(root, (*prefix, *line_loc)),
            f"{where}: {message}" if where else message,
        )
        if issue not in issues:
            issues.append(issue)
    return issues


# ------------------------------------------------------------------------ pools


def render_pool(values: Mapping[str, Any]) -> str:
    """A pool in canonical form; ``values`` as the pools table holds them (name,
    labels, min_size, max_size, executors, provider, provider_config, policy,
    ephemeral). Secrets in provider_config are written as ``***`` (an apply keeps the
    stored value for it: secrets are set through the API, never in Git); credential
    references as they are."""
    config = redacted(dict(values["provider_config"] or {}))
    return _dump(
        {
            "name": values["name"],
            "labels": sorted(values["labels"]),
            "min": values["min_size"],
            "max": values["max_size"],
            "executors": values["executors"],
            "provider": values["provider"],
            "provider_config": _sorted(config),
            "policy": _sorted(dict(values["policy"] or {})),
            "ephemeral": values["ephemeral"],
        }
    )


def _pool_error_line(root: yaml.Node, data: Mapping[str, Any], message: str) -> int:
    """The line a PolicyError is about: the first field it names (or line 1)."""
    words = set(re.findall(r"[a-z_]+", message.lower()))
    if "pool name" in message:
        return _line_of(root, ("name",))
    for key in ("policy", *POOL_FIELDS, *map(str, data)):
        if key in words and key in data:
            return _line_of(root, (key,))
    policy = data.get("policy")
    if isinstance(policy, dict):
        for key in policy:
            if str(key) in words:
                return _line_of(root, ("policy", str(key)))
    return 1


def _text_keys(value: Any) -> bool:
    """Whether every mapping key, at any depth, is text, and every value one JSON has
    (what the API accepts: no dates, no binary)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _text_keys(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_text_keys(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def _parse_pool(file: str, text: str) -> Desired:
    data, root = _load(file, text, "a pool")
    if not _text_keys(data):
        raise ConfigError(
            [
                ConfigIssue(
                    file,
                    1,
                    "a pool holds only text keys and JSON values (text, numbers, true/false, "
                    "null, lists, mappings): quote dates and other values",
                )
            ]
        )
    issues: list[ConfigIssue] = []
    config = data.get("provider_config")
    if isinstance(config, dict):
        for path in inline_secrets(config):
            issues.append(
                ConfigIssue(
                    file,
                    _line_of(root, ("provider_config", *path.split("."))),
                    f"provider_config.{path}: a secret is never written in the config "
                    f"repository: store it as a credential and reference it "
                    f"(NAME_credential: ID, or {{credential: ID}}), or set it through the API "
                    f"(an export writes {REDACTED!r} for it, which keeps the stored value)",
                )
            )
    if issues:
        raise ConfigError(issues)
    try:
        spec = parse_pool_document(data)
    except PolicyError as exc:
        raise ConfigError(
            [ConfigIssue(file, _pool_error_line(root, data, str(exc)), str(exc))]
        ) from None
    _check_name(file, "pools", spec.name, _line_of(root, ("name",)))
    values = spec.values()
    return Desired(
        "pool",
        spec.name,
        file,
        render_pool(values),
        {"values": values, "provider_line": _line_of(root, ("provider",))},
    )


# -------------------------------------------------------------------- notifiers

_NOTIFIER = TypeAdapter(NotifierConfig)
_NOTIFIER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def render_notifier(name: str, document: Mapping[str, Any], rules: list[Any]) -> str:
    """A notifier in canonical form: name, its settings (defaults left out), rules."""
    config = _NOTIFIER.validate_python(dict(document))
    data: dict[str, Any] = {
        "name": name,
        **config.model_dump(mode="json", by_alias=True, exclude_defaults=True),
    }
    if rules:
        data["rules"] = [{"jobs": list(r["jobs"]), "on": list(r["on"])} for r in rules]
    return _dump(data)


def _parse_notifier(file: str, text: str) -> Desired:
    data, root = _load(file, text, "a notifier")
    name = data.get("name")
    if not isinstance(name, str) or not _NOTIFIER_NAME.fullmatch(name) or len(name) > 200:
        raise ConfigError(
            [
                ConfigIssue(
                    file,
                    _line_of(root, ("name",)),
                    f"invalid notifier name {name!r} (use [A-Za-z0-9][A-Za-z0-9._-]*)",
                )
            ]
        )
    issues: list[ConfigIssue] = []
    document = {k: v for k, v in data.items() if k not in ("name", "rules")}
    try:
        config = _NOTIFIER.validate_python(document)
    except ValidationError as exc:
        issues.extend(_pydantic_issues(file, root, exc))
        config = None
    raw_rules = data.get("rules") or []
    rules: list[dict[str, list[str]]] = []
    if not isinstance(raw_rules, list):
        issues.append(ConfigIssue(file, _line_of(root, ("rules",)), "rules: expected a list"))
        raw_rules = []
    for i, raw in enumerate(raw_rules):
        if isinstance(raw, dict) and "notifiers" in raw:
            issues.append(
                ConfigIssue(
                    file,
                    _line_of(root, ("rules", i, "notifiers")),
                    f"rules[{i}]: a rule here sends to this notifier; it names no notifiers",
                )
            )
            continue
        body = {**raw, "notifiers": [name]} if isinstance(raw, dict) else raw
        try:
            rule = Rule.model_validate(body)
        except ValidationError as exc:
            issues.extend(_pydantic_issues(file, root, exc, ("rules", i)))
            continue
        rules.append({"jobs": list(rule.jobs), "on": [str(e) for e in rule.on]})
    if issues:
        raise ConfigError(issues)
    assert config is not None
    _check_name(file, "notifiers", name, _line_of(root, ("name",)))
    stored = config.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return Desired(
        "notifier",
        name,
        file,
        render_notifier(name, stored, rules),
        {"document": stored, "rules": rules, "name_line": _line_of(root, ("name",))},
    )


# ----------------------------------------------------------------------- grants

_ROLE_ORDER = {role.value: i for i, role in enumerate(Role)}


def render_grants(user: str, grants: list[tuple[str, str]]) -> str:
    """A user's grants in canonical form: (role, pattern) by role, then pattern."""
    ordered = sorted(set(grants), key=lambda g: (_ROLE_ORDER.get(g[0], 99), g[1]))
    return _dump({"user": user, "grants": [{"role": r, "pattern": p} for r, p in ordered]})


def _parse_grants(file: str, text: str) -> Desired:
    data, root = _load(file, text, "a grants file {user, grants}")
    issues: list[ConfigIssue] = []
    for key in sorted(set(map(str, data)) - {"user", "grants"}):
        issues.append(ConfigIssue(file, _line_of(root, (key,)), f"unknown field {key!r}"))
    user = data.get("user")
    if not isinstance(user, str) or not USER_NAME.fullmatch(user) or len(user) > 100:
        issues.append(ConfigIssue(file, _line_of(root, ("user",)), f"invalid user name {user!r}"))
    raw = data.get("grants")
    if not isinstance(raw, list):
        issues.append(
            ConfigIssue(
                file,
                _line_of(root, ("grants",)),
                "grants: expected a list of {role, pattern} ([] for none)",
            )
        )
        raw = []
    grants: list[tuple[str, str]] = []
    lines: dict[str, int] = {}
    for i, item in enumerate(raw):
        line = _line_of(root, ("grants", i))
        if not isinstance(item, dict):
            issues.append(ConfigIssue(file, line, f"grants[{i}]: expected {{role, pattern}}"))
            continue
        extra = sorted(set(map(str, item)) - {"role", "pattern"})
        if extra:
            issues.append(
                ConfigIssue(
                    file,
                    _line_of(root, ("grants", i, extra[0])),
                    f"grants[{i}]: unknown field {extra[0]!r}",
                )
            )
            continue
        role = item.get("role")
        if role not in _ROLE_ORDER:
            roles = ", ".join(_ROLE_ORDER)
            issues.append(
                ConfigIssue(
                    file,
                    _line_of(root, ("grants", i, "role")),
                    f"grants[{i}].role: {role!r} is not a role (use {roles})",
                )
            )
            continue
        pattern = item.get("pattern", "*")
        if not isinstance(pattern, str) or not valid_pattern(pattern):
            issues.append(
                ConfigIssue(
                    file,
                    _line_of(root, ("grants", i, "pattern")),
                    f"grants[{i}].pattern: {pattern!r}: use '*', a prefix such as 'team-a/*' "
                    "or one job name",
                )
            )
            continue
        if (role, pattern) in grants:
            issues.append(
                ConfigIssue(file, line, f"grants[{i}]: {role} on {pattern!r} is listed twice")
            )
            continue
        grants.append((role, pattern))
        lines.setdefault(role, line)
    if issues:
        raise ConfigError(issues)
    assert isinstance(user, str)
    _check_name(file, "grants", user, _line_of(root, ("user",)))
    return Desired(
        "grant",
        user,
        file,
        render_grants(user, grants),
        {
            "grants": sorted(grants),
            "user_line": _line_of(root, ("user",)),
            "grants_line": _line_of(root, ("grants",)),
        },
    )


# -------------------------------------------------------------------- schedules

#: Per schedule file: its fields -> (the controller setting it overrides, kind).
#: Kinds: "count" (whole number >= 1 or null: no limit), "days" (>= 0 or null),
#: "days1" (>= 1 or null), "min1" (>= 1), "min0" (>= 0), "bool", "cron" (or null: off).
SCHEDULE_FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "retention": {
        "artifact_keep_last": ("artifact_keep_last", "count"),
        "artifact_keep_days": ("artifact_keep_days", "days"),
        "build_keep_last": ("build_keep_last", "count"),
        "build_keep_days": ("build_keep_days", "days1"),
        "keep_released": ("retention_keep_released", "bool"),
    },
    "backup": {
        "full_cron": ("backup_full_cron", "cron"),
        "incremental_cron": ("backup_incremental_cron", "cron"),
        "prune_cron": ("backup_prune_cron", "cron"),
        "keep_weekly_fulls": ("backup_keep_weekly_fulls", "min1"),
        "keep_incremental_days": ("backup_keep_incremental_days", "min0"),
        "artifacts": ("backup_artifacts", "bool"),
    },
}


def _check_value(kind: str, value: Any) -> str | None:
    """None if ``value`` fits ``kind``, else what is expected."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return None if isinstance(value, bool) else "expected true or false"
    if kind == "cron":
        if value is None or (isinstance(value, str) and croniter.is_valid(value)):
            return None
        return f"{value!r} is not a cron expression (e.g. '0 2 * * *'), or null for off"
    if kind in ("count", "days", "days1") and value is None:
        return None
    least = 0 if kind in ("days", "min0") else 1
    if whole and value >= least:
        return None
    suffix = ", or null for no limit" if kind in ("count", "days", "days1") else ""
    return f"expected a whole number of at least {least}{suffix}"


def render_schedule(name: str, document: Mapping[str, Any]) -> str:
    """A schedule in canonical form: its fields in the documented order."""
    fields = SCHEDULE_FIELDS[name]
    return _dump({k: document[k] for k in fields if k in document}) if document else "{}\n"


def _parse_schedule(file: str, text: str) -> Desired:
    from conveyor.core.config_repo import _name_from_path

    name = _name_from_path(file, "schedules")
    if name not in SCHEDULE_FIELDS:
        raise ConfigError(
            [
                ConfigIssue(
                    file,
                    1,
                    f"unknown schedule {name!r}: the schedules are "
                    + " and ".join(f"schedules/{n}.yml" for n in SCHEDULE_FIELDS),
                )
            ]
        )
    if not text.strip() or text.strip() == "{}":
        data: dict[str, Any] = {}
        root = None
    else:
        data, root = _load(file, text, f"schedules/{name}.yml")
    fields = SCHEDULE_FIELDS[name]
    issues: list[ConfigIssue] = []
    for key, value in data.items():
        line = _line_of(root, (str(key),))
        if key not in fields:
            issues.append(
                ConfigIssue(file, line, f"unknown field {key!r} (known: {', '.join(fields)})")
            )
            continue
        problem = _check_value(fields[key][1], value)
        if problem:
            issues.append(ConfigIssue(file, line, f"{key}: {problem}"))
    if issues:
        raise ConfigError(issues)
    document = {k: data[k] for k in fields if k in data}
    return Desired("schedule", name, file, render_schedule(name, document), {"document": document})


register_kind(Kind("pool", "pools", _parse_pool, lambda n: f"pools/{n}.yml"))
register_kind(Kind("notifier", "notifiers", _parse_notifier, lambda n: f"notifiers/{n}.yml"))
register_kind(Kind("grant", "grants", _parse_grants, lambda n: f"grants/{n}.yml"))
register_kind(Kind("schedule", "schedules", _parse_schedule, lambda n: f"schedules/{n}.yml"))
