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


class _PrefixIndex:
    """Finds the longest tail of a buffer that is a proper prefix of some pattern.

    Tails of at least :data:`_HEAD` bytes start with a pattern's first ``_HEAD``
    bytes: ``bytes.find`` (C speed) of each head over the last bytes finds the
    candidates. Shorter tails are looked up in a set per length."""

    def __init__(self, patterns: list[bytes]) -> None:
        self.by_head: dict[bytes, list[bytes]] = {}
        self.short: list[set[bytes]] = [set() for _ in range(_HEAD)]
        for pattern in patterns:
            if len(pattern) > _HEAD:
                self.by_head.setdefault(pattern[:_HEAD], []).append(pattern)
            for k in range(1, min(_HEAD, len(pattern))):
                self.short[k].add(pattern[:k])
        #: (head, longest tail that can start with it, patterns with that head)
        self.heads = sorted(
            ((h, max(map(len, ps)) - 1, ps) for h, ps in self.by_head.items()),
            key=lambda item: -item[1],
        )

    def pending(self, data: bytes) -> int:
        size = len(data)
        best = 0
        for head, window, candidates in self.heads:
            if min(window, size) <= best:
                break  # sorted by window: no longer tail possible from here on
            i = data.find(head, size - min(window, size))
            # Leftmost candidate that matches = the longest pending tail for this head.
            while i >= 0 and size - i > best:
                tail = data[i:]
                if any(len(p) > len(tail) and p.startswith(tail) for p in candidates):
                    best = size - i
                    break
                i = data.find(head, i + 1)
        if best:
            return best
        for k in range(min(_HEAD - 1, size), 0, -1):
            if data[size - k :] in self.short[k]:
                return k
        return 0


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
        self._prefixes = _PrefixIndex(self.patterns)
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
        cut = len(buf) - self._prefixes.pending(buf)
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
