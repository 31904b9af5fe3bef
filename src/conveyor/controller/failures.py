"""Failure analysis of finished builds: read the end of the log, classify, record.

The decision is pure (:mod:`conveyor.core.failures`); this module does the I/O
around it: loads the shipped pattern set (package data) and the optional user
file once, reads at most the last 2 MiB of a build's log (from the blob when
compacted, else from the live chunks), classifies it off the event loop and
stores the result on the build (``failure_category``, ``failure_detail``, and
``cause`` when that was only the generic failed-step one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import structlog

from conveyor.blobs import BlobStore
from conveyor.core.failures import (
    ANALYSED_STATES,
    MAX_LOG_BYTES,
    Category,
    FailureAnalysis,
    FailurePattern,
    FailurePatternError,
    classify,
    load_pattern_file,
    load_patterns,
    merge_patterns,
)
from conveyor.errors import NotFound
from conveyor.store import Store
from conveyor.store.failures import record_failure_analysis
from conveyor.store.records import BuildRecord

log = structlog.get_logger(__name__)

DEFAULT_PATTERNS_RESOURCE = "failure_patterns.yml"


@lru_cache(maxsize=1)
def default_patterns() -> tuple[FailurePattern, ...]:
    """The shipped pattern set (``conveyor/core/failure_patterns.yml``), parsed once."""
    text = (
        resources.files("conveyor.core")
        .joinpath(DEFAULT_PATTERNS_RESOURCE)
        .read_text(encoding="utf-8")
    )
    return tuple(load_patterns(text, f"shipped {DEFAULT_PATTERNS_RESOURCE}"))


def read_pattern_file(path: Path, defaults: Sequence[FailurePattern]) -> list[FailurePattern]:
    """User patterns from ``path`` first, then the defaults they do not replace or disable.
    Raises FailurePatternError (naming the file and the pattern) for a bad file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FailurePatternError(f"cannot read failure patterns file {path}: {exc}") from exc
    user, disabled = load_pattern_file(text, str(path))
    return merge_patterns(user, defaults, disabled)


class FailureAnalyzer:
    """Classifies failed, timed-out and lost builds with patterns loaded once."""

    def __init__(self, patterns: Sequence[FailurePattern]) -> None:
        self.patterns: tuple[FailurePattern, ...] = tuple(patterns)

    @classmethod
    def load(cls, user_file: Path | None = None) -> FailureAnalyzer:
        """The shipped patterns, preceded by those of ``user_file`` when given
        (``Settings.failure_patterns_file``, env ``CONVEYOR_FAILURE_PATTERNS_FILE``)."""
        defaults = default_patterns()
        if user_file is None:
            return cls(defaults)
        patterns = read_pattern_file(user_file, defaults)
        log.info("failure_patterns.loaded", file=str(user_file), patterns=len(patterns))
        return cls(patterns)

    async def analyse(
        self, runtime_store: Store, blobs: BlobStore, build: BuildRecord
    ) -> FailureAnalysis | None:
        """Analyse and record why ``build`` failed; None if it did not fail (succeeded,
        cancelled, still active). A failure no pattern explains is recorded as
        ``unknown``. Idempotent: analysing twice stores the same result."""
        fresh = await runtime_store.get_build(build.id)  # state/cause/log_blob as of now
        if fresh.state.value not in ANALYSED_STATES:
            return None
        text, offset = await self._read_tail(runtime_store, blobs, fresh)
        analysis = await asyncio.to_thread(
            classify, text, fresh.state.value, fresh.cause, self.patterns, log_offset=offset
        )
        if analysis is None:
            analysis = FailureAnalysis(Category.UNKNOWN.value, None)
        await record_failure_analysis(
            runtime_store, fresh.id, analysis.category, analysis.cause, analysis.detail()
        )
        log.info(
            "build.failure_analysed",
            build_id=fresh.id,
            category=analysis.category,
            pattern=analysis.pattern,
        )
        return analysis

    async def analyse_quietly(
        self, runtime_store: Store, blobs: BlobStore, build: BuildRecord
    ) -> FailureAnalysis | None:
        """:meth:`analyse`, but an error is logged, never raised (the analysis is a
        nicety; it must not break the build's ending)."""
        try:
            return await self.analyse(runtime_store, blobs, build)
        except Exception as exc:
            log.warning("build.failure_analysis_failed", build_id=build.id, error=repr(exc))
            return None

    @staticmethod
    async def _read_tail(store: Store, blobs: BlobStore, build: BuildRecord) -> tuple[str, int]:
        """The last MAX_LOG_BYTES of the log as text (undecodable bytes kept with
        ``surrogateescape``, so offsets stay exact) and where that text starts."""
        start = max(0, build.log_size - MAX_LOG_BYTES)
        try:
            if build.log_blob is not None:
                data = await blobs.read_range(build.log_blob, start, MAX_LOG_BYTES)
            else:
                data = await store.read_log_chunks(build.id, start, MAX_LOG_BYTES)
        except NotFound:
            log.warning("build.failure_analysis_no_log", build_id=build.id)
            return "", 0
        return data.decode("utf-8", "surrogateescape"), start
