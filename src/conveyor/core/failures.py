"""Failure analysis: why did a build fail? Patterns over the end of its log.

A pattern file (YAML) is a list of patterns, tried in file order; the first one
that matches wins::

    patterns:
      - name: gcc-error
        category: compile
        regex: '^(?P<file>[^\\s:]+):\\d+:(?:\\d+:)? (?:fatal )?error: '
        cause: "compile error in {file}"
        applies_to_states: [failed]      # optional; this is the default
        cause_regex: 'exit code [12]$'   # optional: only when the build's cause matches

``cause`` is a :meth:`str.format` template over the regex's named groups (plus
``{line}``, the matching line); it may not use attributes, indexes, conversions
or format specs. A named group that did not take part in the match is empty.

How a log is scanned (bounded work, deterministic):

- only the last :data:`MAX_LOG_CHARS` (2 MiB) of the log are examined; when the
  text starts inside the log, its first (partial) line is ignored;
- matching is line by line; lines longer than :data:`MAX_LINE_LENGTH` (4 KiB) are
  skipped entirely, ANSI colour sequences are removed and a carriage-return
  progress line counts as its last segment;
- patterns are tried in order; each one scans the lines from the end backwards
  (the relevant error is usually near the end) and the first pattern with a
  match wins, reporting its match closest to the end.

Regular expressions are Python's :mod:`re`, compiled once at load time. A
pattern with nested quantifiers such as ``(a+)+`` can still backtrack
exponentially on a line that almost matches; the line-length limit bounds the
polynomial cases only. Write patterns with a literal anchor (``error:``,
``FAILED``), avoid nested quantifiers, and use atomic groups ``(?>...)`` or
possessive quantifiers ``*+`` where in doubt.

Builds that timed out are classified ``timeout`` and builds whose agent was lost
(state ``lost``, or cause "agent lost") ``agent_lost`` from their state, unless a
pattern that lists that state in ``applies_to_states`` matches first.

This module is pure: no I/O.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import yaml

__all__ = [
    "ANALYSED_STATES",
    "MAX_LINE_LENGTH",
    "MAX_LOG_BYTES",
    "MAX_LOG_CHARS",
    "Category",
    "FailureAnalysis",
    "FailurePattern",
    "FailurePatternError",
    "classify",
    "load_patterns",
    "merge_patterns",
]

#: How much of the end of a log is examined (callers read this many bytes).
MAX_LOG_BYTES = 2 * 1024 * 1024
MAX_LOG_CHARS = MAX_LOG_BYTES
#: Longer lines are not matched at all (bounds regex backtracking per line).
MAX_LINE_LENGTH = 4 * 1024
#: Lengths of what an analysis reports.
MAX_CAUSE_LENGTH = 500
MAX_GROUP_LENGTH = 200
MAX_REPORTED_LINE = 1000
#: Limits of a pattern file.
MAX_PATTERNS = 500
MAX_REGEX_LENGTH = 2000


class Category(StrEnum):
    """The well-known categories. Pattern files may use others (``[a-z][a-z0-9_]*``)."""

    COMPILE = "compile"
    TEST = "test"
    DEPENDENCY = "dependency"
    NETWORK = "network"
    OUT_OF_MEMORY = "out_of_memory"
    INFRASTRUCTURE = "infrastructure"
    TIMEOUT = "timeout"
    AGENT_LOST = "agent_lost"
    UNKNOWN = "unknown"


#: The build states a failure analysis is made for.
ANALYSED_STATES = frozenset({"failed", "timed_out", "lost"})
DEFAULT_STATES = frozenset({"failed"})
AGENT_LOST_CAUSE = "agent lost"

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_CATEGORY_RE = re.compile(r"[a-z][a-z0-9_]{0,49}")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_FIELDS = frozenset({"name", "category", "regex", "cause", "applies_to_states", "cause_regex"})
_DISABLE_FIELDS = frozenset({"name", "enabled"})


class FailurePatternError(ValueError):
    """A pattern file that cannot be used; the message names the pattern."""


@dataclass(frozen=True)
class FailurePattern:
    name: str
    category: str
    regex: re.Pattern[str]
    cause: str
    applies_to_states: frozenset[str] = DEFAULT_STATES
    cause_regex: re.Pattern[str] | None = None

    def applies(self, state: str, build_cause: str | None) -> bool:
        if state not in self.applies_to_states:
            return False
        if self.cause_regex is None:
            return True
        return build_cause is not None and self.cause_regex.search(build_cause) is not None

    def render(self, match: re.Match[str], line: str) -> str:
        values: dict[str, str] = {"line": _clip(line.strip(), MAX_GROUP_LENGTH)}
        for key, value in match.groupdict().items():
            values[key] = _clip((value or "").strip(), MAX_GROUP_LENGTH)
        return _clip(self.cause.format_map(values), MAX_CAUSE_LENGTH)


@dataclass(frozen=True)
class FailureAnalysis:
    """Why a build failed. ``pattern``/``line*``/``offset`` are None when the
    category comes from the build's state (timeout, agent lost) or is unknown.

    ``line_number`` is 1-based in the whole log, None when only its tail was
    examined; ``offset`` is the byte offset of the line's start in the log."""

    category: str
    cause: str | None
    pattern: str | None = None
    line_number: int | None = None
    line: str | None = None
    offset: int | None = None

    def detail(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "line_number": self.line_number,
            "line": self.line,
            "offset": self.offset,
        }


# --------------------------------------------------------------------- loading


def load_patterns(yaml_text: str, source: str = "failure patterns") -> list[FailurePattern]:
    """Parse and validate a pattern file. Entries ``{name: X, enabled: false}`` are
    dropped here; use :func:`load_pattern_file` to also get those names."""
    return load_pattern_file(yaml_text, source)[0]


def load_pattern_file(
    yaml_text: str, source: str = "failure patterns"
) -> tuple[list[FailurePattern], frozenset[str]]:
    """(patterns in file order, names of patterns the file disables)."""
    try:
        data = yaml.safe_load(yaml_text)
    except yaml.YAMLError as exc:
        raise FailurePatternError(f"{source}: not valid YAML: {exc}") from exc
    if data is None:
        return [], frozenset()
    if not isinstance(data, dict) or set(data) != {"patterns"}:
        raise FailurePatternError(f"{source}: expected a mapping with one key, 'patterns'")
    entries = data["patterns"]
    if entries is None:
        return [], frozenset()
    if not isinstance(entries, list):
        raise FailurePatternError(f"{source}: 'patterns' must be a list")
    if len(entries) > MAX_PATTERNS:
        raise FailurePatternError(f"{source}: at most {MAX_PATTERNS} patterns")
    patterns: list[FailurePattern] = []
    disabled: set[str] = set()
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{source}: pattern #{index + 1}"
        if not isinstance(entry, dict):
            raise FailurePatternError(f"{where}: must be a mapping")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise FailurePatternError(
                f"{where}: 'name' is required: letters, digits, '_', '.', '-' (at most 100)"
            )
        where = f"{source}: pattern {name!r}"
        if name in seen:
            raise FailurePatternError(f"{where}: duplicate name")
        seen.add(name)
        if "enabled" in entry:
            if entry["enabled"] is not False or set(entry) != _DISABLE_FIELDS:
                raise FailurePatternError(
                    f"{where}: 'enabled' may only be false, with no other field than 'name'"
                )
            disabled.add(name)
            continue
        patterns.append(_parse_pattern(entry, name, where))
    return patterns, frozenset(disabled)


def merge_patterns(
    user: Sequence[FailurePattern],
    defaults: Sequence[FailurePattern],
    disabled: Iterable[str] = (),
) -> list[FailurePattern]:
    """User patterns first; a default whose name a user pattern has (or disables) is dropped."""
    off = set(disabled)
    taken = {p.name for p in user} | off
    return [p for p in user if p.name not in off] + [p for p in defaults if p.name not in taken]


def _parse_pattern(entry: Mapping[str, Any], name: str, where: str) -> FailurePattern:
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise FailurePatternError(f"{where}: unknown field(s) {', '.join(unknown)}")
    category = entry.get("category")
    if not isinstance(category, str) or not _CATEGORY_RE.fullmatch(category):
        raise FailurePatternError(
            f"{where}: 'category' is required: lowercase letters, digits and '_' (at most 50),"
            f" e.g. {', '.join(c.value for c in Category)}"
        )
    regex = _compile(entry.get("regex"), "regex", where)
    if regex is None:
        raise FailurePatternError(f"{where}: 'regex' is required")
    cause_regex = _compile(entry.get("cause_regex"), "cause_regex", where)
    cause = entry.get("cause")
    if not isinstance(cause, str) or not cause.strip():
        raise FailurePatternError(f"{where}: 'cause' is required (text, may use {{group}})")
    _check_template(cause, frozenset(regex.groupindex) | {"line"}, where)
    return FailurePattern(
        name=name,
        category=category,
        regex=regex,
        cause=cause,
        applies_to_states=_states(entry.get("applies_to_states"), where),
        cause_regex=cause_regex,
    )


def _compile(value: object, field: str, where: str) -> re.Pattern[str] | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise FailurePatternError(f"{where}: '{field}' must be a non-empty string")
    if len(value) > MAX_REGEX_LENGTH:
        raise FailurePatternError(f"{where}: '{field}' is longer than {MAX_REGEX_LENGTH}")
    try:
        return re.compile(value)
    except re.error as exc:
        at = "" if exc.pos is None else f" at position {exc.pos}"
        raise FailurePatternError(
            f"{where}: invalid regular expression in '{field}': {exc.msg}{at}: {value!r}"
        ) from exc


def _check_template(template: str, groups: frozenset[str], where: str) -> None:
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise FailurePatternError(f"{where}: invalid 'cause' template: {exc}") from exc
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if field not in groups:
            known = ", ".join(sorted(groups))
            raise FailurePatternError(
                f"{where}: 'cause' uses {{{field}}}, which is not a named group of the regex"
                f" (known: {known})"
            )
        if spec or conversion:
            raise FailurePatternError(
                f"{where}: 'cause' field {{{field}}} may not have a conversion or format spec"
            )


def _states(value: object, where: str) -> frozenset[str]:
    if value is None:
        return DEFAULT_STATES
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(s, str) and s in ANALYSED_STATES for s in value)
    ):
        allowed = ", ".join(sorted(ANALYSED_STATES))
        raise FailurePatternError(
            f"{where}: 'applies_to_states' must be a non-empty list of: {allowed}"
        )
    return frozenset(value)


# ------------------------------------------------------------------ classifying


def classify(
    log_text: str,
    build_state: str,
    step_cause: str | None,
    patterns: Sequence[FailurePattern],
    *,
    log_offset: int = 0,
) -> FailureAnalysis | None:
    """Classify a finished build's failure, or None (not a failure, or nothing matched).

    ``log_text`` is the log (or its end: ``log_offset`` is where it starts in the
    whole log, in bytes; the caller decodes with ``surrogateescape`` for exact
    offsets). ``step_cause`` is the build's current cause (e.g. "step 'sh: make' in
    stage build failed with exit code 2", "agent lost")."""
    state = _effective_state(build_state, step_cause)
    if state is None:
        return None
    applicable = [p for p in patterns if p.applies(state, step_cause)]
    found = _scan(log_text, applicable, log_offset) if applicable else None
    if found is not None:
        return found
    if state == "timed_out":
        return FailureAnalysis(Category.TIMEOUT.value, step_cause or "build timed out")
    if state == "lost":
        return FailureAnalysis(Category.AGENT_LOST.value, step_cause or AGENT_LOST_CAUSE)
    if step_cause is not None and step_cause.startswith("step '") and "timed out" in step_cause:
        return FailureAnalysis(Category.TIMEOUT.value, step_cause)
    return None


def _effective_state(build_state: str, step_cause: str | None) -> str | None:
    if build_state not in ANALYSED_STATES:
        return None
    if step_cause is not None and step_cause.startswith(AGENT_LOST_CAUSE):
        return "lost"  # a lost build that was not retried ends failed, cause kept
    return build_state


def _scan(text: str, patterns: Sequence[FailurePattern], log_offset: int) -> FailureAnalysis | None:
    if len(text) > MAX_LOG_CHARS:
        cut = len(text) - MAX_LOG_CHARS
        log_offset += _byte_length(text[:cut])
        text = text[cut:]
    lines = text.split("\n")
    first = 1 if log_offset > 0 else 0  # a partial first line says nothing
    candidates: list[tuple[int, str]] = []
    for index in range(len(lines) - 1, first - 1, -1):
        line = lines[index]
        if not line or len(line) > MAX_LINE_LENGTH:
            continue
        cleaned = _clean(line)
        if cleaned:
            candidates.append((index, cleaned))
    for pattern in patterns:
        search = pattern.regex.search
        for index, line in candidates:
            match = search(line)
            if match is None:
                continue
            start = sum(len(lines[i]) + 1 for i in range(index))
            return FailureAnalysis(
                category=pattern.category,
                cause=_printable(pattern.render(match, line)),
                pattern=pattern.name,
                line_number=None if log_offset > 0 else index + 1,
                line=_printable(_clip(line, MAX_REPORTED_LINE)),
                offset=log_offset + _byte_length(text[:start]),
            )
    return None


def _clean(line: str) -> str:
    if "\r" in line:
        segments = [s for s in line.split("\r") if s]
        line = segments[-1] if segments else ""
    if "\x1b" in line:
        line = _ANSI_RE.sub("", line)
    return line.rstrip()


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that surrogateescape did not make
        return text.encode("utf-8", "replace")


def _byte_length(text: str) -> int:
    return len(_encode(text))


def _printable(text: str) -> str:
    """Undo ``surrogateescape`` (invalid UTF-8 becomes U+FFFD) and drop control
    characters other than tab: safe to store (PostgreSQL text has no NUL) and show."""
    text = _encode(text).decode("utf-8", "replace")
    return _CONTROL_RE.sub("", text) if _CONTROL_RE.search(text) else text


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
