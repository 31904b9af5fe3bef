"""Agent label expressions: which agents may run a job.

A job may restrict where it runs with a boolean expression over agent labels::

    linux && (docker || podman) && !arm64

Grammar (whitespace is ignored)::

    expr   := or
    or     := and ('||' and)*
    and    := unary ('&&' unary)*
    unary  := '!' unary | '(' expr ')' | LABEL
    LABEL  := [A-Za-z0-9_.:/+=-]+

So ``!`` binds tighter than ``&&``, which binds tighter than ``||``:
``a || b && c`` means ``a || (b && c)``.

The parsed form is a small immutable AST (:class:`LabelExpression`). Chains of the
same binary operator are flattened (``a && (b && c)`` parses to the same tree as
``a && b && c``), so ``str(expr)`` is a canonical, minimally parenthesised form and
``parse_label_expression(str(expr)) == expr`` always holds.

An empty (or whitespace-only) expression is an error: callers represent "no
restriction" as ``None``, see :func:`matches`. Expressions are limited to
:data:`MAX_EXPRESSION_LENGTH` characters and :data:`MAX_NESTING_DEPTH` levels of
``(`` / ``!`` nesting so that hostile input cannot exhaust the recursion limit.

This module is pure: no I/O.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "MAX_EXPRESSION_LENGTH",
    "MAX_NESTING_DEPTH",
    "And",
    "Label",
    "LabelExpression",
    "LabelExpressionError",
    "Not",
    "Or",
    "is_valid_label",
    "matches",
    "parse_label_expression",
]

MAX_EXPRESSION_LENGTH = 1000
MAX_NESTING_DEPTH = 50

_LABEL_RE = re.compile(r"[A-Za-z0-9_.:/+=\-]+")


def is_valid_label(label: str) -> bool:
    """Whether ``label`` can be written as a LABEL token in an expression."""
    return _LABEL_RE.fullmatch(label) is not None


class LabelExpressionError(ValueError):
    """A label expression that does not parse.

    ``position`` is the 0-based character offset in ``text`` where the problem was
    found (``len(text)`` for "unexpected end"); ``reason`` is the bare reason.
    """

    def __init__(self, text: str, reason: str, position: int | None = None) -> None:
        self.text = text
        self.reason = reason
        self.position = position
        shown = text if len(text) <= 80 else text[:77] + "..."
        where = "" if position is None else f" at position {position}"
        super().__init__(f"label expression {shown!r}: {reason}{where}")


# --------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class LabelExpression(ABC):
    """Base class of the AST nodes: :class:`Label`, :class:`Not`, :class:`And`, :class:`Or`."""

    @abstractmethod
    def matches(self, labels: frozenset[str] | set[str]) -> bool:
        """Whether an agent with exactly these labels satisfies the expression."""

    @abstractmethod
    def labels(self) -> frozenset[str]:
        """All labels mentioned in the expression (negated ones included)."""

    # Binding strength, used by __str__ to parenthesise minimally.
    @property
    @abstractmethod
    def _precedence(self) -> int: ...


@dataclass(frozen=True)
class Label(LabelExpression):
    name: str

    def matches(self, labels: frozenset[str] | set[str]) -> bool:
        return self.name in labels

    def labels(self) -> frozenset[str]:
        return frozenset((self.name,))

    @property
    def _precedence(self) -> int:
        return 4

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Not(LabelExpression):
    operand: LabelExpression

    def matches(self, labels: frozenset[str] | set[str]) -> bool:
        return not self.operand.matches(labels)

    def labels(self) -> frozenset[str]:
        return self.operand.labels()

    @property
    def _precedence(self) -> int:
        return 3

    def __str__(self) -> str:
        return "!" + _wrap(self.operand, 2)  # "!!a", "!(a && b)"


@dataclass(frozen=True)
class And(LabelExpression):
    """Conjunction of two or more operands; no operand is itself an ``And``."""

    operands: tuple[LabelExpression, ...]

    def matches(self, labels: frozenset[str] | set[str]) -> bool:
        return all(op.matches(labels) for op in self.operands)

    def labels(self) -> frozenset[str]:
        return frozenset().union(*(op.labels() for op in self.operands))

    @property
    def _precedence(self) -> int:
        return 2

    def __str__(self) -> str:
        return " && ".join(_wrap(op, 2) for op in self.operands)


@dataclass(frozen=True)
class Or(LabelExpression):
    """Disjunction of two or more operands; no operand is itself an ``Or``."""

    operands: tuple[LabelExpression, ...]

    def matches(self, labels: frozenset[str] | set[str]) -> bool:
        return any(op.matches(labels) for op in self.operands)

    def labels(self) -> frozenset[str]:
        return frozenset().union(*(op.labels() for op in self.operands))

    @property
    def _precedence(self) -> int:
        return 1

    def __str__(self) -> str:
        return " || ".join(_wrap(op, 1) for op in self.operands)


def _wrap(node: LabelExpression, parent_precedence: int) -> str:
    text = str(node)
    # Operands of a flattened And/Or are never the same operator, so ">" is exact.
    return text if node._precedence > parent_precedence else f"({text})"


def _flatten(
    kind: type[And] | type[Or], operands: Iterable[LabelExpression]
) -> tuple[LabelExpression, ...]:
    out: list[LabelExpression] = []
    for op in operands:
        if isinstance(op, kind):
            out.extend(op.operands)
        else:
            out.append(op)
    return tuple(out)


# ------------------------------------------------------------------------ parser

# Token kinds: "label", "&&", "||", "!", "(", ")", "end".
_Token = tuple[str, str, int]  # (kind, text, position)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        m = _LABEL_RE.match(text, i)
        if m is not None:
            tokens.append(("label", m.group(), i))
            i = m.end()
        elif text.startswith("&&", i) or text.startswith("||", i):
            tokens.append((text[i : i + 2], text[i : i + 2], i))
            i += 2
        elif c in "!()":
            tokens.append((c, c, i))
            i += 1
        elif c in "&|":
            raise LabelExpressionError(text, f"expected '{c}{c}'", i)
        else:
            raise LabelExpressionError(text, f"unexpected character {c!r}", i)
    tokens.append(("end", "", n))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0
        self.depth = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def error(self, reason: str, token: _Token) -> LabelExpressionError:
        return LabelExpressionError(self.text, reason, token[2])

    def describe(self, token: _Token) -> str:
        return "end of expression" if token[0] == "end" else repr(token[1])

    def parse(self) -> LabelExpression:
        expr = self.parse_or()
        tok = self.peek()
        if tok[0] != "end":
            if tok[0] == ")":
                raise self.error("unbalanced ')'", tok)
            raise self.error(f"expected '&&', '||' or end, found {self.describe(tok)}", tok)
        return expr

    def parse_or(self) -> LabelExpression:
        operands = [self.parse_and()]
        while self.peek()[0] == "||":
            self.pos += 1
            operands.append(self.parse_and())
        return operands[0] if len(operands) == 1 else Or(_flatten(Or, operands))

    def parse_and(self) -> LabelExpression:
        operands = [self.parse_unary()]
        while self.peek()[0] == "&&":
            self.pos += 1
            operands.append(self.parse_unary())
        return operands[0] if len(operands) == 1 else And(_flatten(And, operands))

    def parse_unary(self) -> LabelExpression:
        tok = self.peek()
        kind = tok[0]
        if kind == "label":
            self.pos += 1
            return Label(tok[1])
        if kind not in ("!", "("):
            raise self.error(f"expected a label, '!' or '(', found {self.describe(tok)}", tok)
        self.depth += 1
        if self.depth > MAX_NESTING_DEPTH:
            raise self.error(f"nesting deeper than {MAX_NESTING_DEPTH} levels", tok)
        self.pos += 1
        result: LabelExpression
        if kind == "!":
            result = Not(self.parse_unary())
        else:
            result = self.parse_or()
            close = self.peek()
            if close[0] != ")":
                raise self.error("expected ')'", close)
            self.pos += 1
        self.depth -= 1
        return result


@lru_cache(maxsize=1024)
def parse_label_expression(text: str) -> LabelExpression:
    """Parse ``text``; raise :class:`LabelExpressionError` if it is not a valid expression.

    Results are cached (the AST is immutable), so parsing the same string repeatedly
    is cheap.
    """
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise LabelExpressionError(
            text, f"longer than {MAX_EXPRESSION_LENGTH} characters ({len(text)})"
        )
    if not text.strip():
        raise LabelExpressionError(text, "empty expression")
    return _Parser(text).parse()


def matches(expression: str | None, labels: frozenset[str] | set[str]) -> bool:
    """Whether ``labels`` satisfy ``expression``; ``None`` (no restriction) matches anything.

    Raises :class:`LabelExpressionError` for an invalid expression.
    """
    if expression is None:
        return True
    return parse_label_expression(expression).matches(labels)
