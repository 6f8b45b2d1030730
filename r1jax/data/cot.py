"""Worked chain-of-thought solutions: step-by-step reduction, slips, self-corrections, R1 format.

The output format is the paper's: `<think> reasoning </think> <answer> answer </answer>`.
A *slip* is a wrong intermediate result that the rest of the chain uses; a
*self-correction* is a slip followed by "Wait, ... let me recheck." and the fix,
the reflective behaviour the paper reports emerging in R1-Zero.
"""
from __future__ import annotations

import dataclasses
import random
from fractions import Fraction

from r1jax.data.expressions import BinOp, Node, Num, apply, has_unary_minus, render

RECHECK_PHRASE = "let me recheck"
SMALL_SLIPS = (1, -1, 2, -2)
CARRY_SLIPS = (10, -10)  # only for results >= 20, where a dropped carry is plausible


@dataclasses.dataclass(frozen=True)
class Solution:
    """A worked solution: the reasoning text and the final answer it commits to."""

    reasoning: str
    answer: str
    is_correct: bool
    self_corrected: bool = False

    def render(self, think_prefilled: bool = False) -> str:
        """This solution as an R1 completion (see `render_r1`)."""
        return render_r1(self.reasoning, self.answer, think_prefilled=think_prefilled)


def render_r1(reasoning: str, answer: str, *, think_prefilled: bool = False) -> str:
    """`<think> reasoning </think> <answer> answer </answer>`; without the opening tag if the prompt has it."""
    opening = "" if think_prefilled else "<think> "
    return f"{opening}{reasoning.strip()} </think> <answer> {answer.strip()} </answer>"


def check_rates(error_rate: float, self_correct_rate: float) -> None:
    """ValueError unless both rates are probabilities."""
    for name, rate in (("error_rate", error_rate), ("self_correct_rate", self_correct_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate}")


def choose_kind(rng: random.Random, error_rate: float, self_correct_rate: float) -> str:
    """'wrong' with prob. error_rate, else 'self_corrected' with prob. self_correct_rate, else 'correct'."""
    check_rates(error_rate, self_correct_rate)
    if rng.random() < error_rate:
        return "wrong"
    if rng.random() < self_correct_rate:
        return "self_corrected"
    return "correct"


@dataclasses.dataclass(frozen=True)
class Step:
    """One reduction `left op right = stated`; `stated != true` marks a slip. `rest` is what remains."""

    left: Fraction
    op: str
    right: Fraction
    true: Fraction
    stated: Fraction
    rest: str

    @property
    def lhs(self) -> str:
        """`left op right` as text."""
        return f"{fmt(self.left)} {self.op} {fmt(self.right)}"


def fmt(value: Fraction) -> str:
    """An integer as text; a non-integer as `p/q`."""
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def reduce_steps(tree: Node, slip_at: int | None = None, slip_delta: int = 0,
                 final_stated: int | None = None) -> list[Step]:
    """Reduce the leftmost innermost operation until one number is left.

    Step `slip_at` states `true + slip_delta`, and later steps use that value;
    `final_stated` overrides what the last step states. ZeroDivisionError if a
    slipped value ends up as a divisor of zero; ValueError on a non-integer
    intermediate or a tree with unary minus.
    """
    if has_unary_minus(tree):
        raise ValueError(f"worked solutions need a tree without unary minus: {render(tree)!r}")
    steps: list[Step] = []
    while isinstance(tree, BinOp):
        holder: list[Step] = []

        def stated(left: Fraction, op: str, right: Fraction) -> Fraction:
            true = apply(op, left, right)
            value = true + slip_delta if len(steps) == slip_at else true
            holder.append(Step(left, op, right, true, value, rest=""))
            return value

        tree = _reduce_once(tree, stated)
        step = holder[0]
        if isinstance(tree, Num) and final_stated is not None:
            tree = Num(final_stated)
            step = dataclasses.replace(step, stated=Fraction(final_stated))
        steps.append(dataclasses.replace(step, rest=render(tree)))
    return steps


def _reduce_once(node: BinOp, stated) -> Node:
    """`node` with its leftmost innermost operation replaced by its stated value."""
    if isinstance(node.left, Num) and isinstance(node.right, Num):
        value = stated(Fraction(node.left.value), node.op, Fraction(node.right.value))
        return _as_num(value)
    if not isinstance(node.left, Num):
        return BinOp(node.op, _reduce_once(node.left, stated), node.right)
    return BinOp(node.op, node.left, _reduce_once(node.right, stated))


def _as_num(value: Fraction) -> Num:
    if value.denominator != 1:
        raise ValueError(f"non-integer intermediate {value}")
    return Num(value.numerator)


def slip_deltas(value: Fraction) -> tuple[int, ...]:
    """Plausible errors for a result: off by one or two, or a dropped carry for larger results."""
    return SMALL_SLIPS + CARRY_SLIPS if abs(value) >= 20 else SMALL_SLIPS


def slipped_steps(tree: Node, rng: random.Random, is_acceptable) -> list[Step]:
    """Steps with one slip, the first random (step, delta) for which `is_acceptable(steps)` holds.

    Tries every step and delta in random order; raises ValueError if none works.
    """
    clean = reduce_steps(tree)
    candidates = [(i, d) for i, step in enumerate(clean) for d in slip_deltas(step.true)]
    rng.shuffle(candidates)
    for slip_at, delta in candidates:
        try:
            steps = reduce_steps(tree, slip_at, delta)
        except (ZeroDivisionError, ValueError):
            continue
        if is_acceptable(steps):
            return steps
    raise ValueError(f"no acceptable slip in {render(tree)!r}")


def step_lines(steps: list[Step], recheck_at: int | None = None, recheck_delta: int = 0) -> list[str]:
    """One line per step; at `recheck_at`, a wrong result, a recheck, and the fix."""
    lines = []
    for i, step in enumerate(steps):
        after = f" Now we have {step.rest}." if i + 1 < len(steps) else ""
        if i == recheck_at:
            wrong = fmt(step.stated + recheck_delta)
            lines.append(f"{step.lhs} = {wrong}.")
            lines.append(f"Wait, {step.lhs} is not {wrong}; {RECHECK_PHRASE}. "
                         f"{step.lhs} = {fmt(step.stated)}.{after}")
        else:
            lines.append(f"{step.lhs} = {fmt(step.stated)}.{after}")
    return lines


def recheck_slip(steps: list[Step], rng: random.Random) -> tuple[int, int]:
    """A random (step index, nonzero delta) for a self-corrected slip."""
    at = rng.randrange(len(steps))
    return at, rng.choice(slip_deltas(steps[at].stated))
