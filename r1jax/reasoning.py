"""Checkable reasoning: the arithmetic a completion states, its slips, rechecks and self-corrections.

A completion's *steps* are the one-operation equations it writes, `a op b = c` ("8 - 6 = 2"), each
checked exactly against the operands it states (Fractions, r1jax.data.expressions; never eval), so
a slip's consequences further down the chain are not counted again; equations of several operations
("So 8 - 6 + 6 = 8") are claims, not steps. A *slip* is a step whose stated result is wrong. A
*self-correction* is a slip whose expression the completion states again, rightly, after a recheck
phrase ("Wait, 2 + 6 is not 9; let me recheck. 2 + 6 = 8.").
`lenient_answer` reads the answer a completion commits to even outside the R1 format: the
`<answer>` tag (or `\\boxed{}`), else the last "the answer is …" (a number or a Countdown equation), else
the last number.
"""
from __future__ import annotations

import dataclasses
import re
from fractions import Fraction

from r1jax.data.expressions import BinOp, Neg, Num, evaluate, parse
from r1jax.text import final_answer

_NUMBER = r"-?\d+(?:/\d+)?"
# an expression (numbers, operators, brackets, spaces) with at least one operator, then "= number"
_STEP_RE = re.compile(r"(?P<lhs>\(*-?\s*\d[\d\s+\-*/×÷−()]*?)\s*=\s*(?P<rhs>" + _NUMBER + r")(?![\d/])")
# "the answer is 8." / "The answer is 14 - 13 + 6.": up to a "$", a full stop (not a decimal point) or the line's end
_ANSWER_IS_RE = re.compile(r"answer\s+is\s*:?\s*\$?\s*([-\d(][^\n$]*?)\s*(?:\$|\.(?!\d)|\n|$)", re.IGNORECASE)
_LAST_NUMBER_RE = re.compile(_NUMBER)
RECHECK_RE = re.compile(r"\b(?:let me re-?check|let me check|let me verify|double[- ]check|wait)\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Step:
    """One stated equation: its expression (spaces normalized), the stated and the true result."""

    expression: str
    stated: Fraction
    true: Fraction
    start: int  # character offsets of the equation in the completion
    end: int

    @property
    def slip(self) -> bool:
        return self.stated != self.true


@dataclasses.dataclass(frozen=True)
class TraceCheck:
    """What one completion's arithmetic shows."""

    steps: tuple[Step, ...]
    slips: int  # steps with a wrong result
    corrected: int  # slips restated rightly after a recheck phrase
    rechecks: int  # recheck phrases anywhere in the completion ("Wait, … let me recheck" counts 2)


def _is_number(node) -> bool:
    return isinstance(node, Num) or (isinstance(node, Neg) and isinstance(node.operand, Num))


def stated_steps(text: str) -> list[Step]:
    """Every one-operation equation `a op b = c` in `text` (integers, fractions as results)."""
    steps = []
    for m in _STEP_RE.finditer(text):
        lhs = m["lhs"].replace("−", "-").strip()
        try:
            node = parse(lhs)
            true, stated = evaluate(node), Fraction(m["rhs"])
        except (ValueError, ZeroDivisionError):
            continue
        if isinstance(node, BinOp) and _is_number(node.left) and _is_number(node.right):
            steps.append(Step(" ".join(lhs.split()), stated, true, m.start("lhs") + m["lhs"].index(lhs[0]), m.end()))
    return steps


def check_trace(text: str) -> TraceCheck:
    """Steps, slips, self-corrected slips and recheck phrases of one completion."""
    steps = stated_steps(text)
    slips = [i for i, s in enumerate(steps) if s.slip]
    corrected = 0
    for i in slips:
        later = (s for s in steps[i + 1:] if s.expression == steps[i].expression and not s.slip)
        fix = next(later, None)
        if fix is not None and RECHECK_RE.search(text, steps[i].end, fix.start):
            corrected += 1
    return TraceCheck(tuple(steps), len(slips), corrected, len(RECHECK_RE.findall(text)))


def lenient_answer(text: str) -> str | None:
    """The tag's (or box's) answer, else the last "the answer is N", else the last number; None if none."""
    strict = final_answer(text)
    if strict is not None:
        return strict
    said = _ANSWER_IS_RE.findall(text)
    if said:
        return said[-1]
    numbers = _LAST_NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None
