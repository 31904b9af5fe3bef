"""A small tokenizer and parser for the Groovy subset that declarative Jenkins
pipelines are written in (used by :mod:`conveyor.core.jenkinsfile`).

Declarative pipelines are nested *calls*: ``name``, optional arguments (in
parentheses or, command style, up to the end of the line) and an optional closure
``{ ... }`` holding more calls; ``environment`` blocks hold ``NAME = value``
assignments. That is all this parser understands. Closures whose body is free
Groovy (``script { }``, ``expression { }``) are kept as raw tokens, and a
statement of any other shape becomes an :class:`Unparsed` node with its line, so
the translator can report it instead of guessing. Pure code, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TokenKind = Literal["ident", "str", "num", "op", "nl", "eof"]

# Closures whose body is arbitrary Groovy, not declarative structure.
RAW_CLOSURES = frozenset({"script", "expression"})

_OPERATORS = ("==", "!=", "&&", "||", "<=", ">=", "?:", "?.", "->", "++", "--")


class GroovySyntaxError(ValueError):
    """The text is not even shaped like a declarative pipeline (unbalanced
    braces, an unterminated string); carries the line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    text: str  # for strings: the raw body between the quotes (escapes untouched)
    line: int
    quote: str = ""  # for strings: ', ", ''' or \"\"\"


def _string_end(src: str, start: int, quote: str, line: int) -> int:
    """Index just past the closing quote of a string body starting at ``start``."""
    i = start
    while i < len(src):
        if src[i] == "\\":
            i += 2
            continue
        if src.startswith(quote, i):
            return i
        if src[i] == "\n" and len(quote) == 1:
            raise GroovySyntaxError(line, "unterminated string")
        i += 1
    raise GroovySyntaxError(line, "unterminated string")


def tokenize(src: str) -> list[Token]:
    """Split Groovy text into tokens; comments are dropped, newlines kept (they end
    command-style calls such as ``sh 'make'``)."""
    tokens: list[Token] = []
    i, line = 0, 1
    n = len(src)
    while i < n:
        c = src[i]
        if c == "\n":
            tokens.append(Token("nl", "\n", line))
            line += 1
            i += 1
        elif c in " \t\r\f":
            i += 1
        elif c == "\\" and src.startswith("\\\n", i):  # line continuation
            line += 1
            i += 2
        elif src.startswith("//", i):
            while i < n and src[i] != "\n":
                i += 1
        elif src.startswith("/*", i):
            end = src.find("*/", i + 2)
            if end < 0:
                raise GroovySyntaxError(line, "unterminated comment")
            line += src.count("\n", i, end)
            i = end + 2
        elif c in "'\"":
            quote = c * 3 if src.startswith(c * 3, i) else c
            body_start = i + len(quote)
            end = _string_end(src, body_start, quote, line)
            body = src[body_start:end]
            tokens.append(Token("str", body, line, quote))
            line += body.count("\n")
            i = end + len(quote)
        elif c.isalpha() or c == "_" or c == "@":
            j = i + 1
            while j < n and (src[j].isalnum() or src[j] == "_"):
                j += 1
            tokens.append(Token("ident", src[i:j], line))
            i = j
        elif c.isdigit():
            j = i + 1
            while j < n and (src[j].isalnum() or src[j] == "."):
                j += 1
            tokens.append(Token("num", src[i:j], line))
            i = j
        else:
            op = next((o for o in _OPERATORS if src.startswith(o, i)), c)
            tokens.append(Token("op", op, line))
            i += len(op)
    tokens.append(Token("eof", "", line))
    return tokens


# ----------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Str:
    raw: str  # body as written; see conveyor.core.jenkinsfile for unescaping
    quote: str
    line: int

    @property
    def interpolated(self) -> bool:
        return self.quote.startswith('"')


@dataclass(frozen=True)
class Num:
    text: str
    line: int


@dataclass(frozen=True)
class Name:
    """An identifier or dotted name (``any``, ``params.X``, ``true``)."""

    dotted: str
    line: int


@dataclass(frozen=True)
class ListValue:
    items: list[Value]
    line: int


@dataclass(frozen=True)
class CallValue:
    """A call used as a value: ``string(credentialsId: 'x', variable: 'T')``."""

    name: str
    args: list[Arg]
    line: int


Value = Str | Num | Name | ListValue | CallValue


@dataclass(frozen=True)
class Arg:
    name: str | None  # None for a positional argument
    value: Value


# ------------------------------------------------------------------------- statements


@dataclass
class Call:
    name: str
    line: int
    args: list[Arg] = field(default_factory=list)
    body: list[Statement] | None = None  # the closure's statements
    raw_body: list[Token] | None = None  # for RAW_CLOSURES
    end_line: int = 0

    def positional(self) -> list[Value]:
        return [a.value for a in self.args if a.name is None]

    def named(self, key: str) -> Value | None:
        return next((a.value for a in self.args if a.name == key), None)


@dataclass
class Assign:
    name: str
    value: Value
    line: int


@dataclass
class Unparsed:
    """A statement of a shape this parser does not know (``def x = ...``)."""

    text: str
    line: int


Statement = Call | Assign | Unparsed


class _ParseFailed(Exception):
    pass


class Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    # -- helpers
    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.pos + offset, len(self.tokens) - 1)]

    def next(self) -> Token:
        tok = self.peek()
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return tok

    def is_op(self, text: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok.kind == "op" and tok.text == text

    def expect_op(self, text: str) -> Token:
        if not self.is_op(text):
            raise _ParseFailed(f"expected {text!r}")
        return self.next()

    def skip_newlines(self) -> None:
        while self.peek().kind == "nl" or self.is_op(";"):
            self.next()

    # -- blocks
    def parse_block(self, closing: bool) -> list[Statement]:
        """Statements up to the matching ``}`` (consumed) or the end of input."""
        statements: list[Statement] = []
        while True:
            self.skip_newlines()
            tok = self.peek()
            if tok.kind == "eof":
                if closing:
                    raise GroovySyntaxError(tok.line, "missing '}'")
                return statements
            if self.is_op("}"):
                if not closing:
                    raise GroovySyntaxError(tok.line, "unexpected '}'")
                self.next()
                return statements
            start = self.pos
            try:
                statements.append(self.parse_statement())
            except _ParseFailed:
                self.pos = start
                statements.append(self.skip_statement())

    def skip_statement(self) -> Unparsed:
        """Skip one statement of unknown shape: up to the end of its line, with
        brackets balanced (so a ``switch (...) { ... }`` is skipped whole)."""
        first = self.peek()
        depth = 0
        parts: list[str] = []
        while True:
            tok = self.peek()
            if tok.kind == "eof":
                break
            if tok.kind == "op" and tok.text in "([{":
                depth += 1
            elif tok.kind == "op" and tok.text in ")]}":
                if depth == 0:
                    break
                depth -= 1
            elif tok.kind == "nl" and depth == 0:
                break
            parts.append(tok.quote + tok.text + tok.quote if tok.kind == "str" else tok.text)
            self.next()
        text = " ".join(p for p in parts if p != "\n")
        return Unparsed(text[:80], first.line)

    def parse_statement(self) -> Statement:
        tok = self.peek()
        if tok.kind != "ident" or tok.text in ("def", "if", "for", "while", "switch", "return"):
            raise _ParseFailed("not a declarative statement")
        self.next()
        name = tok.text
        if self.is_op("="):
            self.next()
            value = self.parse_value()
            self.end_of_statement()
            return Assign(name, value, tok.line)
        call = Call(name, tok.line)
        if self.is_op("("):
            self.next()
            call.args = self.parse_args(")")
            self.expect_op(")")
        elif not (self.is_op("{") or self.is_op("}") or self.peek().kind in ("nl", "eof")):
            call.args = self.parse_args(None)  # command style: `sh 'make'`, `agent any`
        if self.is_op("{"):
            self.next()
            if name in RAW_CLOSURES:
                call.raw_body = self.raw_until_close()
            else:
                call.body = self.parse_block(closing=True)
        call.end_line = self.tokens[self.pos - 1].line
        self.end_of_statement()
        return call

    def end_of_statement(self) -> None:
        if not (self.is_op("}") or self.is_op(";") or self.peek().kind in ("nl", "eof")):
            raise _ParseFailed("unexpected text after a statement")

    def raw_until_close(self) -> list[Token]:
        depth = 0
        raw: list[Token] = []
        while True:
            tok = self.next()
            if tok.kind == "eof":
                raise GroovySyntaxError(tok.line, "missing '}'")
            if tok.kind == "op" and tok.text == "{":
                depth += 1
            elif tok.kind == "op" and tok.text == "}":
                if depth == 0:
                    return raw
                depth -= 1
            raw.append(tok)

    # -- arguments and values
    def parse_args(self, closing: str | None) -> list[Arg]:
        args: list[Arg] = []
        while True:
            if closing is not None:
                while self.peek().kind == "nl":
                    self.next()
                if self.is_op(closing):
                    return args
            tok = self.peek()
            if tok.kind in ("ident", "str") and self.is_op(":", 1):
                self.next()
                self.next()
                if closing is not None:
                    while self.peek().kind == "nl":
                        self.next()
                args.append(Arg(tok.text, self.parse_value()))
            else:
                args.append(Arg(None, self.parse_value()))
            if closing is not None:
                while self.peek().kind == "nl":
                    self.next()
            if self.is_op(","):
                self.next()
                continue
            return args

    def parse_value(self) -> Value:
        tok = self.next()
        if tok.kind == "str":
            return Str(tok.text, tok.quote, tok.line)
        if tok.kind == "num":
            return Num(tok.text, tok.line)
        if tok.kind == "op" and tok.text == "-" and self.peek().kind == "num":
            return Num("-" + self.next().text, tok.line)
        if tok.kind == "op" and tok.text == "[":
            items: list[Value] = []
            while True:
                while self.peek().kind == "nl":
                    self.next()
                if self.is_op("]"):
                    self.next()
                    return ListValue(items, tok.line)
                items.append(self.parse_value())
                while self.peek().kind == "nl":
                    self.next()
                if self.is_op(","):
                    self.next()
                elif not self.is_op("]"):
                    raise _ParseFailed("expected ',' or ']'")
        if tok.kind == "ident":
            dotted = tok.text
            while self.is_op(".") and self.peek(1).kind == "ident":
                self.next()
                dotted += "." + self.next().text
            if self.is_op("("):
                self.next()
                args = self.parse_args(")")
                self.expect_op(")")
                return CallValue(dotted, args, tok.line)
            return Name(dotted, tok.line)
        raise _ParseFailed(f"unexpected {tok.text!r}")


def parse_groovy(src: str) -> list[Statement]:
    """Parse a Jenkinsfile into statements; raise :class:`GroovySyntaxError` when
    it is not shaped like one (unbalanced braces, unterminated strings)."""
    return Parser(tokenize(src)).parse_block(closing=False)
