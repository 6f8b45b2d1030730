"""Countdown (the TinyZero task): reach a target from 3-4 numbers with + - * /, each used once.

Problems are made by building a random expression over random numbers, so a
solution always exists; every intermediate result of that reference solution
is a positive integer. `Problem.answer` holds the reference equation, but any
equation accepted by `check_countdown` is correct.
"""
from __future__ import annotations

import dataclasses
import random
from r1jax.data import cot
from r1jax.data.expressions import (OPS, BinOp, Node, Num, apply, evaluate, has_unary_minus, leaves, parse,
                                    render)
from r1jax.data.problems import Problem, canonical_key, draw_split, problem_id

TASK = "countdown"
QUESTION_FORMAT = ("Using the numbers {numbers}, create an equation that equals {target}. You can use "
                   "basic arithmetic operations (+, -, *, /) and each number can only be used once.")


@dataclasses.dataclass(frozen=True)
class CountdownConfig:
    """How many numbers, their range, and the range of targets."""

    min_numbers: int = 3
    max_numbers: int = 4
    min_number: int = 1
    max_number: int = 100
    min_target: int = 1
    max_target: int = 100
    ops: tuple[str, ...] = OPS  # operations the generator may use; solvers may use all four
    test_fraction: float = 0.1

    def __post_init__(self):
        if not 2 <= self.min_numbers <= self.max_numbers:
            raise ValueError(f"need 2 <= min_numbers <= max_numbers, got {self.min_numbers}, {self.max_numbers}")
        if not 1 <= self.min_number <= self.max_number:
            raise ValueError(f"need 1 <= min_number <= max_number, got {self.min_number}, {self.max_number}")
        if not 1 <= self.min_target <= self.max_target:
            raise ValueError(f"need 1 <= min_target <= max_target, got {self.min_target}, {self.max_target}")
        if "+" not in self.ops or not set(self.ops) <= set(OPS) or len(set(self.ops)) != len(self.ops):
            raise ValueError(f"ops must be distinct members of {OPS} and include '+', got {self.ops!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


def generate_countdown(config: CountdownConfig, split: str, num: int, seed: int = 0,
                       at_most: bool = False) -> tuple[Problem, ...]:
    """`num` distinct Countdown problems of `split` ('train' or 'test'), reproducible from `seed`; with
    `at_most`, the whole split if it has fewer (r1jax.data.problems.draw_split)."""
    return draw_split(lambda rng: sample_countdown(config, rng), split=split, num=num, seed=seed,
                      test_fraction=config.test_fraction, at_most=at_most)


def sample_countdown(config: CountdownConfig, rng: random.Random) -> Problem | None:
    """One random problem, or None when the drawn target falls outside the config's range."""
    count = rng.randint(config.min_numbers, config.max_numbers)
    values = [rng.randint(config.min_number, config.max_number) for _ in range(count)]
    tree = _random_tree(values, config.ops, rng)
    if tree is None:
        return None
    equation = render(tree)
    try:
        steps = cot.reduce_steps(parse(equation))  # the tree a reader parses from the text
    except (ValueError, ZeroDivisionError):
        return None
    target = steps[-1].true
    if any(s.true <= 0 for s in steps) or not config.min_target <= target <= config.max_target:
        return None
    numbers = list(values)
    rng.shuffle(numbers)
    question = QUESTION_FORMAT.format(numbers=numbers, target=target)
    key = canonical_key(TASK, question, tuple(numbers), int(target))
    return Problem(id=problem_id(key), task=TASK, question=question, answer=equation,
                   numbers=tuple(numbers), target=int(target))


def _random_tree(values: list[int], ops: tuple[str, ...], rng: random.Random) -> Node | None:
    """A random tree over `values` (in order) whose every node is a positive integer."""
    if len(values) == 1:
        return Num(values[0])
    split = rng.randint(1, len(values) - 1)
    left, right = _random_tree(values[:split], ops, rng), _random_tree(values[split:], ops, rng)
    if left is None or right is None:
        return None
    left_value, right_value = evaluate(left), evaluate(right)
    options = []
    for op in ops:
        orders = [(left, left_value, right, right_value)]
        if op in "-/":  # also try the operands swapped
            orders.append((right, right_value, left, left_value))
        for a, a_value, b, b_value in orders:
            value = apply(op, a_value, b_value)
            if value > 0 and value.denominator == 1:
                options.append(BinOp(op, a, b))
    return rng.choice(options) if options else None


def check_countdown(equation: str, numbers: tuple[int, ...] | list[int], target: int) -> bool:
    """True if `equation` uses each of `numbers` exactly once, only + - * / and parentheses, and equals `target`."""
    try:
        tree = parse(equation)
        if has_unary_minus(tree) or sorted(leaves(tree)) != sorted(numbers):
            return False
        return evaluate(tree) == target
    except (ValueError, ZeroDivisionError):
        return False


def solve_countdown(problem: Problem, rng: random.Random, error_rate: float = 0.0,
                    self_correct_rate: float = 0.0) -> cot.Solution:
    """A step-by-step solution ending in an equation; wrong with prob. `error_rate`, else
    self-corrected with prob. `self_correct_rate`, else plainly correct.

    A wrong solution picks one wrong operation and then slips in its last step,
    claiming the target, so its final equation misses the target.
    """
    if problem.task != TASK or problem.target is None:
        raise ValueError(f"{problem.id}: not a countdown problem")
    target = problem.target
    tree = parse(problem.answer)
    kind = cot.choose_kind(rng, error_rate, self_correct_rate)
    if kind == "wrong":
        tree = _wrong_tree(tree, target, rng)
        steps = cot.reduce_steps(tree, final_stated=target)
    else:
        steps = cot.reduce_steps(tree)
    recheck_at, recheck_delta = cot.recheck_slip(steps, rng) if kind == "self_corrected" else (None, 0)
    equation = render(tree)
    numbers = ", ".join(map(str, problem.numbers))
    lines = [f"We need to reach {target} using the numbers {numbers}, each exactly once."]
    lines += cot.step_lines(steps, recheck_at, recheck_delta)
    lines.append(f"So {equation} = {target}.")
    return cot.Solution("\n".join(lines), equation,
                        is_correct=check_countdown(equation, problem.numbers, target),
                        self_corrected=kind == "self_corrected")


def _wrong_tree(tree: Node, target: int, rng: random.Random) -> Node:
    """`tree` with one operation changed so it misses `target` by as little as possible (ties at random)."""
    variants = _op_variants(tree)
    rng.shuffle(variants)
    wrong = []
    for variant in variants:
        variant = parse(render(variant))
        try:
            miss = abs(cot.reduce_steps(variant)[-1].true - target)
        except (ValueError, ZeroDivisionError):
            continue  # a non-integer intermediate or a division by zero
        if miss != 0:
            wrong.append((miss, variant))
    if not wrong:
        raise ValueError(f"no wrong variant of {render(tree)!r}")
    return min(wrong, key=lambda pair: pair[0])[1]


def _op_variants(node: Node) -> list[Node]:
    """Every tree that differs from `node` in exactly one operation."""
    if not isinstance(node, BinOp):
        return []
    out: list[Node] = [BinOp(op, node.left, node.right) for op in OPS if op != node.op]
    out += [BinOp(node.op, left, node.right) for left in _op_variants(node.left)]
    out += [BinOp(node.op, node.left, right) for right in _op_variants(node.right)]
    return out
