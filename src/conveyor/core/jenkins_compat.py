"""How Jenkins's remote API spells Conveyor's states, and its ``tree=`` filter.

Pure code (no I/O) for :mod:`conveyor.jenkins`: Jenkins clients and dashboards
compare these strings, so they are exactly Jenkins's (``SUCCESS``, ``blue_anime``).
"""

from __future__ import annotations

from typing import Any

from conveyor.core.states import BuildState

#: The version reported in ``X-Jenkins``: clients check it is a 2.x LTS.
JENKINS_VERSION = "2.440.3"

_RESULTS = {
    BuildState.SUCCEEDED: "SUCCESS",
    BuildState.FAILED: "FAILURE",
    BuildState.TIMED_OUT: "FAILURE",  # Jenkins's timeout step fails the build
    BuildState.LOST: "FAILURE",
    BuildState.CANCELLED: "ABORTED",
}
_COLOURS = {"SUCCESS": "blue", "FAILURE": "red", "ABORTED": "aborted"}


def result_of(state: BuildState) -> str | None:
    """Jenkins's ``result``: None while the build is queued or running."""
    return _RESULTS.get(state)


def colour_of(last_finished: BuildState | None, building: bool) -> str:
    """A job's ``color``: its last finished build's, ``_anime`` while one runs."""
    result = None if last_finished is None else result_of(last_finished)
    colour = _COLOURS.get(result or "", "notbuilt")
    return f"{colour}_anime" if building else colour


Tree = dict[str, "Tree | None"]


class TreeError(ValueError):
    pass


def parse_tree(spec: str) -> Tree:
    """``jobs[name,color],views[name]`` → ``{"jobs": {"name": None, ...}, ...}``.
    Jenkins's ``{M,N}`` range suffix is accepted and ignored."""
    pos = 0

    def parse_level(closing: str | None) -> Tree:
        nonlocal pos
        out: Tree = {}
        while pos < len(spec):
            start = pos
            while pos < len(spec) and spec[pos] not in ",[]{}":
                pos += 1
            name = spec[start:pos].strip()
            sub: Tree | None = None
            if pos < len(spec) and spec[pos] == "[":
                pos += 1
                sub = parse_level("]")
            if pos < len(spec) and spec[pos] == "{":
                end = spec.find("}", pos)
                if end < 0:
                    raise TreeError("tree: unclosed '{'")
                pos = end + 1
            if name:
                out[name] = sub
            if pos < len(spec) and spec[pos] == ",":
                pos += 1
                continue
            if pos < len(spec) and spec[pos] == "]":
                if closing != "]":
                    raise TreeError("tree: unexpected ']'")
                pos += 1
                return out
            if pos < len(spec):
                raise TreeError(f"tree: unexpected {spec[pos]!r}")
        if closing is not None:
            raise TreeError("tree: missing ']'")
        return out

    return parse_level(None)


def apply_tree(value: Any, tree: Tree | None) -> Any:
    """Keep only the fields named in ``tree`` (``_class`` always stays, as in Jenkins)."""
    if tree is None:
        return value
    if isinstance(value, list):
        return [apply_tree(item, tree) for item in value]
    if isinstance(value, dict):
        kept = {k: apply_tree(v, tree[k]) for k, v in value.items() if k in tree}
        if "_class" in value:
            kept = {"_class": value["_class"], **kept}
        return kept
    return value
