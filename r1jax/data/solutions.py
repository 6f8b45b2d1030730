"""Worked solutions for any generated problem, by task: the source of tiny pretraining and cold-start SFT data."""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from r1jax.data.arithmetic import TASK as ARITHMETIC, solve_arithmetic
from r1jax.data.cot import Solution, check_rates
from r1jax.data.countdown import TASK as COUNTDOWN, solve_countdown
from r1jax.data.problems import Problem, seeded_rng

Solver = Callable[[Problem, random.Random, float, float], Solution]
SOLVERS: dict[str, Solver] = {ARITHMETIC: solve_arithmetic, COUNTDOWN: solve_countdown}


def worked_solution(problem: Problem, rng: random.Random, error_rate: float = 0.0,
                    self_correct_rate: float = 0.0) -> Solution:
    """A worked solution for `problem`, by its task; ValueError for tasks without a solver."""
    solver = SOLVERS.get(problem.task)
    if solver is None:
        raise ValueError(f"{problem.id}: no worked-solution generator for task {problem.task!r}; "
                         f"have {sorted(SOLVERS)}")
    return solver(problem, rng, error_rate, self_correct_rate)


def worked_solutions(problems: Iterable[Problem], seed: int = 0, error_rate: float = 0.0,
                     self_correct_rate: float = 0.0) -> tuple[Solution, ...]:
    """One solution per problem; each depends only on (seed, problem.id), not on its neighbours."""
    check_rates(error_rate, self_correct_rate)
    return tuple(worked_solution(p, seeded_rng("cot", seed, p.id), error_rate, self_correct_rate)
                 for p in problems)
