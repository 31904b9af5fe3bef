"""The pure masking logic: whole values, lines of multi-line secrets, and a stream
split anywhere (hypothesis: random split points never leak a secret)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.core.masking import (
    MASK,
    StreamMasker,
    mask_bytes,
    mask_text,
    secret_patterns,
)


def stream(masker: StreamMasker, chunks: list[bytes]) -> bytes:
    return b"".join(masker.feed(c) for c in chunks) + masker.flush()


def test_patterns_include_long_lines_of_multiline_secrets() -> None:
    key = "-----BEGIN KEY-----\nabcdefgh\nxy\n-----END KEY-----\n"
    patterns = secret_patterns([key, "", "pw"])
    assert key.encode() in patterns
    assert b"abcdefgh" in patterns
    assert b"-----BEGIN KEY-----" in patterns
    assert b"xy" not in patterns  # too short to mask on its own
    assert b"pw" in patterns  # a whole value is always masked, whatever its length
    assert b"" not in patterns
    assert patterns == sorted(patterns, key=lambda p: (-len(p), p))


def test_mask_whole_and_adjacent_and_overlapping() -> None:
    patterns = secret_patterns(["s3cr3t", "abcabc"])
    assert mask_bytes(b"x s3cr3t y", patterns) == b"x **** y"
    assert mask_bytes(b"s3cr3ts3cr3t", patterns) == MASK
    assert mask_bytes(b"abcabcabc!", patterns) == b"****!"  # overlapping occurrences
    assert mask_bytes(b"nothing here", patterns) == b"nothing here"
    assert mask_text("cause: s3cr3t failed", patterns) == "cause: **** failed"


def test_stream_split_secret_is_masked_and_tail_is_bounded() -> None:
    masker = StreamMasker(secret_patterns(["hunter22"]))
    first = masker.feed(b"pass=hunt")
    assert first == b"pass="
    assert masker.held == 4 and masker.held <= len("hunter22") - 1
    assert masker.feed(b"er22 done\n") == b"**** done\n"
    assert masker.held == 0


def test_stream_releases_a_false_start() -> None:
    masker = StreamMasker(secret_patterns(["hunter22"]))
    assert masker.feed(b"a hun") == b"a "
    assert masker.feed(b"gry cat") == b"hungry cat"
    assert masker.flush() == b""


def test_flush_masks_and_releases_the_tail() -> None:
    masker = StreamMasker(secret_patterns(["hunter22"]))
    assert masker.feed(b"x hunte") == b"x "
    assert masker.flush() == b"hunte"  # the step ended: a mere prefix is not the secret


def test_no_patterns_pass_through() -> None:
    masker = StreamMasker([])
    assert masker.feed(b"abc") == b"abc"
    assert masker.flush() == b""


_alphabet = st.sampled_from(list(b"abcxyz01\n -"))
_secret = st.lists(_alphabet, min_size=1, max_size=30).map(bytes)
_noise = st.lists(_alphabet, min_size=0, max_size=30).map(bytes)


@st.composite
def _output_with_splits(draw: st.DrawFn) -> tuple[list[bytes], bytes, list[bytes]]:
    secrets = draw(st.lists(_secret, min_size=1, max_size=3))
    parts: list[bytes] = []
    for _ in range(draw(st.integers(1, 5))):
        parts.append(draw(_noise))
        parts.append(draw(st.sampled_from(secrets)))
    parts.append(draw(_noise))
    data = b"".join(parts)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return secrets, data, chunks


@settings(max_examples=400, deadline=None)
@given(_output_with_splits())
def test_random_splits_never_leak_a_secret(case: tuple[list[bytes], bytes, list[bytes]]) -> None:
    secrets, _, chunks = case
    patterns = secret_patterns([s.decode() for s in secrets])
    masker = StreamMasker(patterns)
    out = b""
    for chunk in chunks:
        out += masker.feed(chunk)
        longest = max(len(p) for p in patterns)
        assert masker.held <= longest - 1
    out += masker.flush()
    for pattern in patterns:
        assert pattern not in out


@settings(max_examples=200, deadline=None)
@given(_noise, st.lists(st.integers(0, 30), max_size=6))
def test_output_without_secrets_is_unchanged(data: bytes, cuts: list[int]) -> None:
    patterns = [b"QQQQ", b"RR"]  # never in the alphabet
    points = sorted(c for c in cuts if c <= len(data))
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert stream(StreamMasker(patterns), chunks) == data


@settings(max_examples=200, deadline=None)
@given(_output_with_splits())
def test_stream_equals_whole_masking_when_secrets_do_not_overlap_cuts(
    case: tuple[list[bytes], bytes, list[bytes]],
) -> None:
    secrets, data, _ = case
    patterns = secret_patterns([s.decode() for s in secrets])
    # Fed in one piece, the stream masks exactly like mask_bytes.
    assert stream(StreamMasker(patterns), [data]) == mask_bytes(data, patterns)


def _pending_reference(data: bytes, patterns: list[bytes]) -> int:
    """The longest tail of ``data`` that is a proper prefix of a pattern, by brute force."""
    best = 0
    for pattern in patterns:
        for k in range(1, min(len(pattern) - 1, len(data)) + 1):
            if data.endswith(pattern[:k]):
                best = max(best, k)
    return best


@settings(max_examples=400, deadline=None)
@given(st.lists(_secret, min_size=1, max_size=4), _noise, _noise)
def test_held_back_tail_is_exactly_the_longest_pending_prefix(
    secrets: list[bytes], before: bytes, after: bytes
) -> None:
    from conveyor.core.masking import _PrefixIndex

    patterns = secret_patterns([s.decode() for s in secrets])
    data = before + secrets[0][: len(secrets[0]) // 2] + after[:3]
    assert _PrefixIndex(patterns).pending(data) == _pending_reference(data, patterns)
