"""Countdown reward (TinyZero, github.com/Jiayi-Pan/TinyZero, `countdown.py`): reach `target` using each of `numbers` once.

The final answer (last `<answer>`, else `\\boxed{}`) is an arithmetic expression over
non-negative numbers with `+ - * /` (also `×`, `÷`, `\\times`, `\\div`), parentheses and unary
minus, optionally followed by `= <number>`. It is read by a tokenizer and a recursive-descent
parser, never eval(), and evaluated exactly with Fraction. Scores follow TinyZero: 0 without a
well-formed equation, `format_score` for a well-formed but wrong one (wrong value, numbers not
each used exactly once, division by zero), 1 when correct.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from r1jax.text import final_answer

MAX_EQUATION_CHARS = 500
MAX_DEPTH = 50  # parenthesis/unary nesting; deeper is treated as malformed
_TOKEN_RE = re.compile(r"\s*(?:([0-9]+(?:\.[0-9]+)?)|(\\times|\\div|\\cdot|[-+*/×÷()=]))")
_SYNONYMS = {"\\times": "*", "×": "*", "\\cdot": "*", "\\div": "/", "÷": "/"}


class EquationError(ValueError):
    """The text is not a well-formed countdown equation."""


def countdown_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    numbers: Sequence[Sequence[int]] | None = None,
    target: Sequence[int] | None = None,
    *,
    format_score: float = 0.1,
    **_: Any,
) -> list[float]:
    """1.0 for a correct equation, `format_score` for a well-formed wrong one, 0.0 otherwise."""
    for name, column in (("numbers", numbers), ("target", target)):
        if column is None:
            raise ValueError(f"countdown_reward needs the dataset column {name!r}")
        if len(column) != len(completions):
            raise ValueError(f"column {name!r} has {len(column)} rows but completions has {len(completions)}")
    return [
        score_equation(final_answer(c), [int(x) for x in nums], int(t), format_score)
        for c, nums, t in zip(completions, numbers, target)
    ]


def make_countdown_reward(format_score: float = 0.1):
    """`countdown_reward` with another score for well-formed wrong equations."""
    return functools.partial(countdown_reward, format_score=format_score)


def score_equation(text: str | None, numbers: Sequence[int], target: int, format_score: float = 0.1) -> float:
    """Score one answer string against the puzzle `numbers` → `target`."""
    if text is None:
        return 0.0
    try:
        value, used, claimed = parse_equation(text)
    except EquationError:
        return 0.0
    correct = (
        value is not None
        and value == target
        and (claimed is None or claimed == target)
        and Counter(used) == Counter(Fraction(n) for n in numbers)
    )
    return 1.0 if correct else format_score


def parse_equation(text: str) -> tuple[Fraction | None, list[Fraction], Fraction | None]:
    """(value or None on division by zero, numbers used in order, the `= N` right side or None)."""
    if len(text) > MAX_EQUATION_CHARS:
        raise EquationError(f"equation longer than {MAX_EQUATION_CHARS} characters")
    parser = _Parser(_tokenize(text))
    value = parser.expression(0)
    claimed = None
    if parser.peek() == "=":
        parser.take()
        claimed = parser.number()
    if parser.peek() is not None:
        raise EquationError(f"unexpected {parser.peek()!r}")
    return (None if parser.divided_by_zero else value), parser.used, claimed


def _tokenize(text: str) -> list[str]:
    tokens, pos, text = [], 0, text.strip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise EquationError(f"unexpected character {text[pos]!r}")
        tokens.append(m[1] or _SYNONYMS.get(m[2], m[2]))
        pos = m.end()
    return tokens


class _Parser:
    """expression := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*;
    factor := number | '(' expression ')' | '-' factor."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.pos = tokens, 0
        self.used: list[Fraction] = []
        self.divided_by_zero = False

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise EquationError("equation ends early")
        self.pos += 1
        return token

    def expression(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            value = value + self.term(depth) if self.take() == "+" else value - self.term(depth)
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/"):
            op, right = self.take(), self.factor(depth)
            if op == "*":
                value *= right
            elif right == 0:
                self.divided_by_zero = True  # keep parsing: a well-formed equation, wrong
            else:
                value /= right
        return value

    def factor(self, depth: int) -> Fraction:
        if depth > MAX_DEPTH:
            raise EquationError("equation nested too deeply")
        token = self.peek()
        if token == "(":
            self.take()
            value = self.expression(depth + 1)
            if self.take() != ")":
                raise EquationError("missing ')'")
            return value
        if token == "-":
            self.take()
            return -self.factor(depth + 1)
        number = self.number()
        self.used.append(number)
        return number

    def number(self) -> Fraction:
        token = self.take()
        if not token[0].isdigit():
            raise EquationError(f"expected a number, got {token!r}")
        return Fraction(token)
