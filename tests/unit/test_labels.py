from __future__ import annotations

import random

import pytest

from conveyor.core.labels import (
    MAX_EXPRESSION_LENGTH,
    MAX_NESTING_DEPTH,
    And,
    Label,
    LabelExpression,
    LabelExpressionError,
    Not,
    Or,
    is_valid_label,
    matches,
    parse_label_expression,
)

a, b, c, d = Label("a"), Label("b"), Label("c"), Label("d")


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("a", a),
        ("  a\t", a),
        ("a || b && c", Or((a, And((b, c))))),
        ("a && b || c", Or((And((a, b)), c))),
        ("(a || b) && c", And((Or((a, b)), c))),
        ("!a && b", And((Not(a), b))),
        ("!(a && b)", Not(And((a, b)))),
        ("!!a", Not(Not(a))),
        ("a && (b && c)", And((a, b, c))),
        ("(a && b) && c", And((a, b, c))),
        ("a || (b || c) || d", Or((a, b, c, d))),
        ("((a))", a),
        ("a&&b||c", Or((And((a, b)), c))),
        ("x86-64 && os=linux", And((Label("x86-64"), Label("os=linux")))),
        ("zone:eu/west.1 || c++", Or((Label("zone:eu/west.1"), Label("c++")))),
    ],
)
def test_parse(text: str, tree: LabelExpression) -> None:
    assert parse_label_expression(text) == tree


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("a || b && c", "a || b && c"),
        ("(a || b) && c", "(a || b) && c"),
        ("((a)) && ((b))", "a && b"),
        ("a && (b && c)", "a && b && c"),
        ("!(a)", "!a"),
        ("!!a", "!!a"),
        ("!(a || b)", "!(a || b)"),
        ("!(a && b) || c", "!(a && b) || c"),
        ("a && (b || !c) && !(d || a)", "a && (b || !c) && !(d || a)"),
        ("linux&&(docker||podman)&&!arm64", "linux && (docker || podman) && !arm64"),
    ],
)
def test_str_is_canonical(text: str, canonical: str) -> None:
    expr = parse_label_expression(text)
    assert str(expr) == canonical
    assert parse_label_expression(str(expr)) == expr


def _random_expr(rng: random.Random, depth: int) -> LabelExpression:
    if depth == 0 or rng.random() < 0.3:
        return Label(rng.choice(["a", "b", "c", "x86-64", "os=linux"]))
    kind = rng.choice(["not", "and", "or"])
    if kind == "not":
        return Not(_random_expr(rng, depth - 1))
    parts = tuple(_random_expr(rng, depth - 1) for _ in range(rng.randint(2, 3)))
    return And(parts) if kind == "and" else Or(parts)


def test_random_round_trip_preserves_meaning() -> None:
    rng = random.Random(1234)
    universe = ["a", "b", "c", "x86-64", "os=linux"]
    for _ in range(500):
        expr = _random_expr(rng, 5)
        text = str(expr)
        parsed = parse_label_expression(text)
        # Canonical text is a fixed point; meaning is preserved for every label set.
        assert parse_label_expression(str(parsed)) == parsed
        assert str(parse_label_expression(str(parsed))) == str(parsed)
        for _ in range(8):
            labels = frozenset(x for x in universe if rng.random() < 0.5)
            assert parsed.matches(labels) == expr.matches(labels)


DESIGN = "linux && (docker || podman) && !arm64"


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"linux", "docker"}, True),
        ({"linux", "podman", "x86-64"}, True),
        ({"linux", "docker", "podman"}, True),
        ({"linux", "docker", "arm64"}, False),
        ({"linux"}, False),
        ({"docker"}, False),
        ({"windows", "docker"}, False),
        (set(), False),
    ],
)
def test_design_example(labels: set[str], expected: bool) -> None:
    assert parse_label_expression(DESIGN).matches(labels) is expected
    assert parse_label_expression(DESIGN).matches(frozenset(labels)) is expected
    assert matches(DESIGN, labels) is expected


def test_labels_mentioned() -> None:
    assert parse_label_expression(DESIGN).labels() == {"linux", "docker", "podman", "arm64"}
    assert parse_label_expression("!a").labels() == {"a"}


def test_name_as_label() -> None:
    # The dispatcher matches against labels | {agent name}; a bare name is a label.
    agent_name, agent_labels = "build-01", frozenset({"linux"})
    assert matches("build-01", agent_labels | {agent_name})
    assert not matches("build-02", agent_labels | {agent_name})


def test_matches_none_is_any_agent() -> None:
    assert matches(None, set())
    assert matches(None, {"anything"})


def test_matches_invalid_raises() -> None:
    with pytest.raises(LabelExpressionError):
        matches("a &&", {"a"})


@pytest.mark.parametrize(
    ("text", "reason", "position"),
    [
        ("linux && (docker", "expected ')'", 16),
        ("a && ", "expected a label, '!' or '(', found end of expression", 5),
        ("a & b", "expected '&&'", 2),
        ("a | b", "expected '||'", 2),
        ("a b", "expected '&&', '||' or end, found 'b'", 2),
        ("a)", "unbalanced ')'", 1),
        (")", "expected a label, '!' or '(', found ')'", 0),
        ("()", "expected a label, '!' or '(', found ')'", 1),
        ("a && $b", "unexpected character '$'", 5),
        ("a && b!", "expected '&&', '||' or end, found '!'", 6),
        ("!", "expected a label, '!' or '(', found end of expression", 1),
        ("a || || b", "expected a label, '!' or '(', found '||'", 5),
    ],
)
def test_errors_name_position(text: str, reason: str, position: int) -> None:
    with pytest.raises(LabelExpressionError) as info:
        parse_label_expression(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.reason == reason
    assert err.position == position
    assert str(err) == f"label expression {text!r}: {reason} at position {position}"


def test_error_message_example() -> None:
    with pytest.raises(LabelExpressionError, match=r"expected '\)' at position 16"):
        parse_label_expression("linux && (docker")
    assert (
        str(LabelExpressionError("linux && (docker", "expected ')'", 16))
        == "label expression 'linux && (docker': expected ')' at position 16"
    )


@pytest.mark.parametrize("text", ["", " ", "\t\n"])
def test_empty_is_error(text: str) -> None:
    with pytest.raises(LabelExpressionError, match="empty expression"):
        parse_label_expression(text)


def test_length_limit() -> None:
    ok = "a" * MAX_EXPRESSION_LENGTH
    assert parse_label_expression(ok) == Label(ok)
    with pytest.raises(LabelExpressionError, match="longer than"):
        parse_label_expression("a" * (MAX_EXPRESSION_LENGTH + 1))


def test_nesting_limit() -> None:
    ok = "(" * MAX_NESTING_DEPTH + "a" + ")" * MAX_NESTING_DEPTH
    assert parse_label_expression(ok) == a
    assert parse_label_expression("!" * MAX_NESTING_DEPTH + "a") is not None
    for deep in (
        "(" * (MAX_NESTING_DEPTH + 1) + "a" + ")" * (MAX_NESTING_DEPTH + 1),
        "!" * (MAX_NESTING_DEPTH + 1) + "a",
        "(" * 400 + "a" + ")" * 400,
        "!" * 900 + "a",
    ):
        with pytest.raises(LabelExpressionError, match="nesting deeper"):
            parse_label_expression(deep)


def test_long_flat_chains_are_fine() -> None:
    text = " && ".join(f"l{i}" for i in range(120))
    expr = parse_label_expression(text)
    assert isinstance(expr, And) and len(expr.operands) == 120
    assert expr.matches({f"l{i}" for i in range(120)})


def test_ast_is_immutable_and_hashable() -> None:
    expr = parse_label_expression(DESIGN)
    assert hash(expr) == hash(parse_label_expression(DESIGN))
    with pytest.raises(AttributeError):
        expr.operands = ()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("label", "valid"),
    [("x86-64", True), ("os=linux", True), ("a b", False), ("", False), ("a&&b", False)],
)
def test_is_valid_label(label: str, valid: bool) -> None:
    assert is_valid_label(label) is valid
