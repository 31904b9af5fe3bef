"""Masking secrets in build output: pure byte logic, no I/O.

Every value bound into a build (and, for multi-line secrets such as SSH keys,
every line of at least :data:`MIN_LINE_LENGTH` characters) is replaced by
:data:`MASK` wherever it appears. Output arrives in chunks that may split a
secret anywhere, so :class:`StreamMasker` holds back the shortest tail that could
still become a secret with the next chunk: at most ``longest secret - 1`` bytes,
and only while that tail really is the start of some secret. ``flush()`` at the
end of a step releases the tail (masked as far as it matches).

The guarantee, checked by property tests: for any split of any output into
chunks, the concatenated result never contains a secret, and output that holds
no secret passes through unchanged. (A secret made only of ``*`` characters is
indistinguishable from the mask itself; such secrets are not supported.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "MASK",
    "MIN_LINE_LENGTH",
    "StreamMasker",
    "mask_bytes",
    "mask_text",
    "secret_patterns",
]

MASK = b"****"
#: Lines of a multi-line secret shorter than this are not masked on their own
#: (masking every "-----" or "}" line of every log would hide far too much).
MIN_LINE_LENGTH = 4


def secret_patterns(values: Iterable[str]) -> list[bytes]:
    """The byte strings to mask for these secret values: each value, plus each line
    (without its line ending) of at least :data:`MIN_LINE_LENGTH` characters of a
    multi-line value. Empty values are dropped; longest first, no duplicates."""
    found: set[bytes] = set()
    for value in values:
        if not value:
            continue
        found.add(value.encode("utf-8", "surrogatepass"))
        lines = value.splitlines()
        if len(lines) > 1 or value.endswith(("\n", "\r")):
            for line in lines:
                line = line.strip()
                if len(line) >= MIN_LINE_LENGTH:
                    found.add(line.encode("utf-8", "surrogatepass"))
        stripped = value.strip()
        if stripped and stripped != value and len(stripped) >= MIN_LINE_LENGTH:
            found.add(stripped.encode("utf-8", "surrogatepass"))
    return sorted(found, key=lambda s: (-len(s), s))


def _occurrences(data: bytes, patterns: list[bytes]) -> list[tuple[int, int]]:
    """Every occurrence (overlapping ones too) of every pattern, merged into disjoint
    sorted ``[start, end)`` intervals."""
    spans: list[tuple[int, int]] = []
    for pattern in patterns:
        start = data.find(pattern)
        while start >= 0:
            spans.append((start, start + len(pattern)))
            start = data.find(pattern, start + 1)
    if not spans:
        return []
    spans.sort()
    merged = [spans[0]]
    for start, end in spans[1:]:
        last_start, last_end = merged[-1]
        if start <= last_end:
            merged[-1] = (last_start, max(last_end, end))
        else:
            merged.append((start, end))
    return merged


def _replace(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    out = bytearray()
    at = 0
    for start, end in spans:
        out += data[at:start]
        out += MASK
        at = end
    out += data[at:]
    return bytes(out)


def mask_bytes(data: bytes, patterns: list[bytes]) -> bytes:
    """``data`` with every occurrence of every pattern replaced by :data:`MASK`."""
    if not patterns or not data:
        return data
    return _replace(data, _occurrences(data, patterns))


def mask_text(text: str, patterns: list[bytes]) -> str:
    """:func:`mask_bytes` for text (error messages, failure causes)."""
    if not patterns or not text:
        return text
    raw = text.encode("utf-8", "surrogatepass")
    return mask_bytes(raw, patterns).decode("utf-8", "replace")


#: Candidate starts of a pending secret are found by searching for this many of the
#: secret's first bytes (fast, in C); shorter tails are checked one by one.
_HEAD = 8


@dataclass(frozen=True)
class _Prefixes:
    """A pattern prepared for finding a pending tail: its head, and for tails shorter
    than the head, the lengths whose last byte is a given byte (longest first)."""

    pattern: bytes
    head: bytes
    short: dict[int, list[int]]

    @classmethod
    def of(cls, pattern: bytes) -> _Prefixes:
        short: dict[int, list[int]] = {}
        for k in range(min(_HEAD, len(pattern)) - 1, 0, -1):
            short.setdefault(pattern[k - 1], []).append(k)
        return cls(pattern, pattern[:_HEAD], short)


def _pending_prefix(data: bytes, prepared: list[_Prefixes]) -> int:
    """Length of the longest tail of ``data`` that is a proper prefix of a pattern
    (0 if none): those bytes may still turn into a secret with the next chunk."""
    best = 0
    size = len(data)
    if not size:
        return 0
    last = data[-1]
    for p in prepared:
        window = min(len(p.pattern) - 1, size)
        if window <= best:
            continue
        found = False
        # Tails at least as long as the head start with it; the first that matches
        # (leftmost) is the longest for this pattern.
        i = data.find(p.head, size - window)
        while i >= 0 and size - i > best:
            if p.pattern.startswith(data[i:]):
                best, found = size - i, True
                break
            i = data.find(p.head, i + 1)
        if not found:
            for k in p.short.get(last, ()):
                if k <= best:
                    break
                if k <= window and data.endswith(p.pattern[:k]):
                    best = k
                    break
    return best


class StreamMasker:
    """Masks a stream of output chunks; feed each chunk, flush at the end.

    ``feed`` returns what may leave now; what it holds back (a possible beginning
    of a secret, at most ``longest secret - 1`` bytes) comes out of a later ``feed``
    or ``flush``. Output order is preserved and nothing is lost.
    """

    def __init__(self, patterns: Iterable[bytes]) -> None:
        self.patterns = sorted(
            {p for p in patterns if p}, key=lambda s: (-len(s), s)
        )  # longest first
        self._prepared = [_Prefixes.of(p) for p in self.patterns]
        self._held = b""

    @property
    def held(self) -> int:
        """Bytes currently held back."""
        return len(self._held)

    def feed(self, data: bytes) -> bytes:
        if not self.patterns:
            return data
        buf = self._held + data
        if not buf:
            return b""
        spans = _occurrences(buf, self.patterns)
        cut = len(buf) - _pending_prefix(buf, self._prepared)
        for start, end in spans:
            if start < cut < end:
                cut = end  # never split a found secret: emit it masked as a whole
                break
        self._held = buf[cut:]
        return _replace(buf[:cut], [(s, e) for s, e in spans if e <= cut])

    def flush(self) -> bytes:
        """Release the held-back tail (masked); the stream may go on afterwards."""
        held, self._held = self._held, b""
        return mask_bytes(held, self.patterns)
