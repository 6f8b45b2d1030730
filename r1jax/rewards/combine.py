"""Weighted sum of reward functions, with each function's raw values and failure counts for logging.

DeepSeek-R1 (arXiv 2501.12948, Sec. 2.2.2) sums accuracy and format rewards with equal weight;
R1 adds the language-consistency reward directly to the sum (Sec. 2.3.2).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from r1jax.rewards.base import RewardFn, check_batch, score_in_process
from r1jax.rewards.pool import RewardPool


@dataclasses.dataclass(frozen=True)
class WeightedReward:
    """A reward function and its weight in the total."""

    fn: RewardFn
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class CombinedRewards:
    """`total[i] = Σ_name weight · values[name][i]`; errors/timeouts count zeroed samples per name."""

    total: list[float]
    values: dict[str, list[float]]
    errors: dict[str, int]
    timeouts: dict[str, int]


def combine_rewards(
    prompts: Sequence[str],
    completions: Sequence[str],
    rewards: Mapping[str, WeightedReward | tuple[RewardFn, float]],
    pool: RewardPool | None = None,
    **columns: Sequence[Any],
) -> CombinedRewards:
    """Scores every reward (concurrently in `pool`, else in-process) and sums them with their weights."""
    n = check_batch(prompts, completions, columns)
    if not rewards:
        raise ValueError("rewards is empty: pass at least one name -> WeightedReward(fn, weight)")
    weighted = {name: r if isinstance(r, WeightedReward) else WeightedReward(*r) for name, r in rewards.items()}
    if pool is None:
        scores = {name: score_in_process(r.fn, prompts, completions, columns) for name, r in weighted.items()}
    else:
        pending = {name: pool.submit(r.fn, prompts, completions, columns) for name, r in weighted.items()}
        scores = {name: p.result() for name, p in pending.items()}
    total = [sum(weighted[name].weight * s.values[i] for name, s in scores.items()) for i in range(n)]
    return CombinedRewards(
        total=total,
        values={name: s.values for name, s in scores.items()},
        errors={name: s.errors for name, s in scores.items()},
        timeouts={name: s.timeouts for name, s in scores.items()},
    )

