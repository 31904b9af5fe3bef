"""Windows of a build log for the log viewer: the tail first, older parts on demand.

A 100 MB log is never sent whole. The viewer asks for the last WINDOW bytes, cut at
a line start, plus the number of the first line in it so line numbers (and their
anchors) are absolute; "load older" asks for the window ending where the shown part
begins, passing that part's first line number, so the count never needs a rescan.
Only the very first request counts the newlines before the tail (once per finished
log: cached, the bytes never change). A link to line N asks for the window that
starts a little before line N (found by counting newlines from the start), and
"load newer" for the window after the shown part.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from conveyor.api.logs import read_log
from conveyor.runtime import Runtime
from conveyor.store.records import BuildRecord

WINDOW = 256 * 1024
COUNT_PAGE = 8 * 1024 * 1024
_CACHE_SIZE = 256

#: (build id, byte offset) -> newlines before that offset, for finished logs.
_newline_cache: OrderedDict[tuple[int, int], int] = OrderedDict()


@dataclass(frozen=True)
class LogWindow:
    start: int
    end: int
    first_line: int
    text: str
    size: int
    state: str


def complete_utf8_length(data: bytes) -> int:
    """Length of ``data`` without a UTF-8 sequence cut off at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:  # a lead byte: how long should its sequence be?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)


async def newlines_before(runtime: Runtime, build: BuildRecord, offset: int) -> int:
    key = (build.id, offset)
    if key in _newline_cache:
        _newline_cache.move_to_end(key)
        return _newline_cache[key]
    count = 0
    position = 0
    while position < offset:
        data = await read_log(runtime, build, position, min(COUNT_PAGE, offset - position))
        if not data:
            break
        count += data.count(b"\n")
        position += len(data)
    if build.state.finished:
        _newline_cache[key] = count
        if len(_newline_cache) > _CACHE_SIZE:
            _newline_cache.popitem(last=False)
    return count


def _window(build: BuildRecord, start: int, first_line: int, data: bytes, total: int) -> LogWindow:
    end = start + len(data)
    if end < total:  # end at a line boundary; the next window starts there
        cut = data.rfind(b"\n")
        if cut >= 0:
            data = data[: cut + 1]
            end = start + len(data)
    keep = complete_utf8_length(data)
    end -= len(data) - keep
    return LogWindow(
        start=start,
        end=end,
        first_line=first_line,
        text=data[:keep].decode("utf-8", errors="replace"),
        size=total,
        state=build.state.value,
    )


async def log_window_after(
    runtime: Runtime, build: BuildRecord, start: int, start_line: int, size: int = WINDOW
) -> LogWindow:
    """The part that starts at byte ``start`` (a line start, line ``start_line``)."""
    total = build.log_size
    start = max(0, min(start, total))
    data = await read_log(runtime, build, start, size) if start < total else b""
    return _window(build, start, start_line, data, total)


async def line_offset(runtime: Runtime, build: BuildRecord, line: int) -> tuple[int, int] | None:
    """(byte offset, number) of the start of ``line`` (1-based); None when the log has
    fewer lines."""
    seen = 1  # the line that starts at ``position``
    position = 0
    while seen < line:
        data = await read_log(runtime, build, position, COUNT_PAGE)
        if not data:
            return None
        newlines = data.count(b"\n")
        if seen + newlines < line:
            seen += newlines
            position += len(data)
            continue
        # The wanted line starts after the (line - seen)-th newline of this page.
        rest = data.split(b"\n", line - seen)[-1]
        position += len(data) - len(rest)
        return (position, line) if position < build.log_size else None
    return position, seen


async def log_window(
    runtime: Runtime,
    build: BuildRecord,
    end: int | None = None,
    end_line: int | None = None,
    size: int = WINDOW,
) -> LogWindow:
    """The part of the log that ends at ``end`` (default: everything so far), at most
    ``size`` bytes, starting at a line start. ``end_line`` is the number of the line
    that starts at ``end`` when the caller knows it (paging backwards)."""
    total = build.log_size
    end = total if end is None else max(0, min(end, total))
    start = max(0, end - size)
    data = await read_log(runtime, build, start, end - start) if end > start else b""
    end = start + len(data)
    if start > 0:
        cut = data.find(b"\n")
        if cut >= 0 and cut + 1 < len(data):
            data = data[cut + 1 :]
            start += cut + 1
    keep = complete_utf8_length(data)
    end -= len(data) - keep
    data = data[:keep]
    if end_line is not None and start > 0:
        first_line = max(1, end_line - data.count(b"\n"))
    elif start == 0:
        first_line = 1
    else:
        first_line = 1 + await newlines_before(runtime, build, start)
    return LogWindow(
        start=start,
        end=end,
        first_line=first_line,
        text=data.decode("utf-8", errors="replace"),
        size=total,
        state=build.state.value,
    )
