"""RewardPool isolates failing, hanging and crashing rewards; combine_rewards weights and logs them."""
import concurrent.futures
import math
import os
import sys
import time

import pytest

from r1jax.rewards import (
    RewardPool,
    WeightedReward,
    accuracy_reward,
    combine_rewards,
    countdown_reward,
    format_reward,
    score_in_process,
)
from r1jax.rewards.pool import PendingScores

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def pool():
    with RewardPool(num_workers=2, timeout_s=TIMEOUT_S) as p:
        yield p


def _sleepy(prompts, completions, **_):
    """Hangs forever on the completion "hang"."""
    if "hang" in completions:
        time.sleep(10_000)
    return [1.0] * len(completions)


def _raising(prompts, completions, **_):
    if "boom" in completions:
        raise RuntimeError("boom")
    return [float(len(c)) for c in completions]


PROMPTS = ["p"] * 3
COMPLETIONS = [
    "<think>a</think> <answer>\\{2,1\\}</answer>",
    "<answer>941</answer>",
    "<think>b</think><answer>942</answer>",
]
ANSWERS = ["\\{1,2\\}", "941", "941"]


def test_pool_matches_in_process_scores(pool):
    scores = pool.score(accuracy_reward, PROMPTS, COMPLETIONS, answer=ANSWERS, unused=[0, 0, 0])
    assert scores.values == [1.0, 1.0, 0.0]
    assert (scores.errors, scores.timeouts) == (0, 0)
    assert scores == score_in_process(accuracy_reward, PROMPTS, COMPLETIONS, {"answer": ANSWERS})


def test_pool_zeroes_and_counts_a_hanging_sample(pool):
    start = time.perf_counter()
    scores = pool.score(_sleepy, ["p"] * 3, ["ok", "hang", "ok"])
    assert time.perf_counter() - start < TIMEOUT_S + 5.0
    assert scores.values == [1.0, 0.0, 1.0]
    assert (scores.errors, scores.timeouts) == (0, 1)


def test_pool_zeroes_and_counts_a_raising_sample(pool):
    scores = pool.score(_raising, ["p"] * 3, ["ab", "boom", "abc"])
    assert scores.values == [2.0, 0.0, 3.0]
    assert (scores.errors, scores.timeouts) == (1, 0)


def test_pool_counts_a_crashed_worker_and_non_finite_values(pool):
    def crash_or_nan(prompts, completions, **_):
        if completions[0] == "crash":
            os._exit(3)
        return [math.nan if completions[0] == "nan" else 2.0]

    scores = pool.score(crash_or_nan, ["p"] * 3, ["crash", "nan", "fine"])
    assert scores.values == [0.0, 0.0, 2.0]
    assert (scores.errors, scores.timeouts) == (2, 0)


def test_pool_runs_lambdas_and_closures(pool):
    bonus = 0.5
    scores = pool.score(
        lambda prompts, completions, **_: [len(c) + bonus for c in completions], ["p", "q"], ["a", "bcd"]
    )
    assert scores.values == [1.5, 3.5]


def test_pool_passes_columns_row_by_row(pool):
    def row_reward(prompts, completions, numbers, target, **_):
        assert len(numbers) == len(target) == 1
        return [float(sum(numbers[0]) == target[0])]

    scores = pool.score(row_reward, ["p"] * 2, ["a", "b"], numbers=[[1, 2], [3, 4]], target=[3, 8])
    assert scores.values == [1.0, 0.0]


def test_pool_workers_do_not_import_jax(pool):
    scores = pool.score(lambda prompts, completions, **_: [float("jax" in sys.modules)], ["p"], ["c"])
    assert (scores.values, scores.errors) == ([0.0], 0)


def test_pool_rejects_misaligned_columns_and_unstarted_use(pool):
    with pytest.raises(ValueError, match="'answer'"):
        pool.score(accuracy_reward, PROMPTS, COMPLETIONS, answer=["1"])
    with pytest.raises(RuntimeError, match="not running"):
        RewardPool(1).score(format_reward, ["p"], ["c"])


def test_combine_rewards_weights_and_logs_each_function():
    rewards = {
        "accuracy": WeightedReward(accuracy_reward, 1.0),
        "format": (format_reward, 0.5),
        "broken": WeightedReward(_raising, 2.0),
    }
    completions = COMPLETIONS[:2] + ["boom"]
    out = combine_rewards(PROMPTS, completions, rewards, answer=ANSWERS)
    assert out.values == {
        "accuracy": [1.0, 1.0, 0.0],
        "format": [1.0, 0.0, 0.0],
        "broken": [float(len(completions[0])), float(len(completions[1])), 0.0],
    }
    assert out.total == [1.0 + 0.5 + 2 * len(completions[0]), 1.0 + 2 * len(completions[1]), 0.0]
    assert out.errors == {"accuracy": 0, "format": 0, "broken": 1}
    assert out.timeouts == {"accuracy": 0, "format": 0, "broken": 0}


def test_combine_rewards_in_pool_matches_in_process_and_counts_timeouts(pool):
    completions = ["<answer>3*5-2</answer>", "hang"]
    rewards = {"countdown": WeightedReward(countdown_reward, 1.0), "sleepy": WeightedReward(_sleepy, 0.25)}
    columns = {"numbers": [[3, 5, 2]] * 2, "target": [13, 13]}
    out = combine_rewards(["p"] * 2, completions, rewards, pool=pool, **columns)
    assert out.total == [1.25, 0.0]
    assert out.timeouts == {"countdown": 0, "sleepy": 1}
    local = combine_rewards(["p"], completions[:1], rewards, **{k: v[:1] for k, v in columns.items()})
    assert local.total == out.total[:1]


def test_combine_rewards_rejects_empty_rewards():
    with pytest.raises(ValueError, match="rewards is empty"):
        combine_rewards(["p"], ["c"], {})


def test_a_concurrent_futures_timeout_counts_as_a_timeout(monkeypatch):
    """Before Python 3.11 pebble's timeout, concurrent.futures.TimeoutError, is not the builtin TimeoutError."""

    class FuturesTimeoutError(Exception):  # what concurrent.futures.TimeoutError is on Python 3.10
        pass

    monkeypatch.setattr(concurrent.futures, "TimeoutError", FuturesTimeoutError)
    done, late, builtin = (concurrent.futures.Future() for _ in range(3))
    done.set_result(1.0)
    late.set_exception(FuturesTimeoutError())
    builtin.set_exception(TimeoutError())
    scores = PendingScores([done, late, builtin]).result()
    assert (scores.values, scores.timeouts, scores.errors) == ([1.0, 0.0, 0.0], 2, 0)
