"""Multi-step integer arithmetic, e.g. "Compute (17 + 5) * 3 - 8.": generation and worked solutions.

Every intermediate result is an integer: a division's divisor is a single
number that divides the left operand exactly.
"""
from __future__ import annotations

import dataclasses
import random
import re

from r1jax.data import cot
from r1jax.data.expressions import OPS, BinOp, Node, Num, evaluate, parse, render
from r1jax.data.problems import Problem, canonical_key, draw_split, problem_id

TASK = "arithmetic"
QUESTION_FORMAT = "Compute {expression}."
_QUESTION_RE = re.compile(r"^Compute (.+)\.$")


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
    """Expressions with `num_ops` binary operations over integers in [min_value, max_value]."""

    num_ops: int = 3
    min_value: int = 1
    max_value: int = 20
    ops: tuple[str, ...] = OPS
    max_abs_value: int = 10_000  # bound on every intermediate result
    allow_negative: bool = True  # whether intermediate results may be negative
    test_fraction: float = 0.1

    def __post_init__(self):
        if self.num_ops < 1:
            raise ValueError(f"num_ops must be >= 1, got {self.num_ops}")
        if not 0 <= self.min_value <= self.max_value:
            raise ValueError(f"need 0 <= min_value <= max_value, got {self.min_value}, {self.max_value}")
        if not self.ops or len(set(self.ops)) != len(self.ops) or not set(self.ops) <= set(OPS):
            raise ValueError(f"ops must be distinct members of {OPS}, got {self.ops!r}")
        if "/" in self.ops and self.max_value < 2:
            raise ValueError("division needs max_value >= 2 (divisors are 2..max_value)")
        if self.max_abs_value < self.max_value:
            raise ValueError(f"max_abs_value ({self.max_abs_value}) must be >= max_value ({self.max_value})")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


def generate_arithmetic(config: ArithmeticConfig, split: str, num: int, seed: int = 0,
                        at_most: bool = False) -> tuple[Problem, ...]:
    """`num` distinct arithmetic problems of `split` ('train' or 'test'), reproducible from `seed`; with
    `at_most`, the whole split if it has fewer (r1jax.data.problems.draw_split)."""
    return draw_split(lambda rng: sample_arithmetic(config, rng), split=split, num=num, seed=seed,
                      test_fraction=config.test_fraction, at_most=at_most)


def sample_arithmetic(config: ArithmeticConfig, rng: random.Random) -> Problem | None:
    """One random problem, or None when the draw breaks the config's bounds."""
    tree = _random_tree(config, rng, config.num_ops)
    if tree is None:
        return None
    expression = render(tree)
    try:
        steps = cot.reduce_steps(parse(expression))  # the tree a reader parses from the text
    except (ValueError, ZeroDivisionError):
        return None
    if any(abs(s.true) > config.max_abs_value or (s.true < 0 and not config.allow_negative) for s in steps):
        return None
    question = QUESTION_FORMAT.format(expression=expression)
    key = canonical_key(TASK, question)
    return Problem(id=problem_id(key), task=TASK, question=question, answer=cot.fmt(steps[-1].true))


def _random_tree(config: ArithmeticConfig, rng: random.Random, num_ops: int) -> Node | None:
    """A random tree with `num_ops` operations; a '/' gets a leaf divisor that divides exactly."""
    if num_ops == 0:
        return Num(rng.randint(config.min_value, config.max_value))
    op = rng.choice(config.ops)
    if op == "/":
        left = _random_tree(config, rng, num_ops - 1)
        if left is None:
            return None
        value = evaluate(left)
        divisors = [d for d in range(2, config.max_value + 1) if value % d == 0]
        if divisors:
            return BinOp("/", left, Num(rng.choice(divisors)))
        others = [o for o in config.ops if o != "/"]
        if not others:
            return None
        return BinOp(rng.choice(others), left, Num(rng.randint(config.min_value, config.max_value)))
    num_left = rng.randint(0, num_ops - 1)
    left = _random_tree(config, rng, num_left)
    right = _random_tree(config, rng, num_ops - 1 - num_left)
    return None if left is None or right is None else BinOp(op, left, right)


def expression_of(problem: Problem) -> str:
    """The expression text inside an arithmetic question."""
    match = _QUESTION_RE.match(problem.question)
    if problem.task != TASK or match is None:
        raise ValueError(f"{problem.id}: not an arithmetic question: {problem.question!r}")
    return match.group(1)


def solve_arithmetic(problem: Problem, rng: random.Random, error_rate: float = 0.0,
                     self_correct_rate: float = 0.0) -> cot.Solution:
    """A step-by-step solution; wrong (one propagated slip) with prob. `error_rate`, else
    self-corrected with prob. `self_correct_rate`, else plainly correct."""
    expression = expression_of(problem)
    tree = parse(expression)
    kind = cot.choose_kind(rng, error_rate, self_correct_rate)
    if kind == "wrong":
        steps = cot.slipped_steps(tree, rng, lambda s: cot.fmt(s[-1].stated) != problem.answer)
    else:
        steps = cot.reduce_steps(tree)
    recheck_at, recheck_delta = cot.recheck_slip(steps, rng) if kind == "self_corrected" else (None, 0)
    answer = cot.fmt(steps[-1].stated)
    lines = [f"We need to compute {expression}, one operation at a time."]
    lines += cot.step_lines(steps, recheck_at, recheck_delta)
    lines.append(f"So {expression} = {answer}.")
    return cot.Solution("\n".join(lines), answer, is_correct=answer == problem.answer,
                        self_corrected=kind == "self_corrected")
