"""Scoring rewards in worker processes, so model text never runs reward code in the trainer.

Workers are started with 'spawn' (the trainer runs JAX, which is multithreaded: fork is unsafe)
and reward functions travel with cloudpickle, so lambdas and functions from a notebook's
`__main__` work. Each sample is its own task: pebble's per-task overhead measured ~0.1 ms, so
there is no chunking, a hang or crash zeroes exactly one sample, and `timeout_s` bounds each
sample's call. Consequence: under a pool, a reward sees one row at a time (rewards that compare
samples within a batch must run without a pool). Spawned workers re-import the trainer's
`__main__` module (standard 'spawn' semantics); nothing in r1jax.rewards imports jax.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import multiprocessing
from collections.abc import Mapping, Sequence
from typing import Any

import cloudpickle
import pebble

from r1jax.rewards.base import RewardFn, Scores, as_values, check_batch, row


class RewardPool:
    """A pool of `num_workers` spawned processes; each sample's reward call gets `timeout_s` seconds.

    Use as a context manager: `with RewardPool(4, timeout_s=10) as pool: pool.score(fn, ...)`.
    A call that raises, returns a non-finite value, crashes its worker or runs past `timeout_s`
    scores 0 and is counted in `Scores.errors` / `Scores.timeouts`; a hung worker is killed and
    replaced by pebble. Nothing a reward does raises into the caller.
    """

    def __init__(self, num_workers: int = 4, timeout_s: float = 10.0):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.num_workers, self.timeout_s = num_workers, timeout_s
        self._pool: pebble.ProcessPool | None = None

    def __enter__(self) -> RewardPool:
        self._pool = pebble.ProcessPool(
            max_workers=self.num_workers,
            context=multiprocessing.get_context("spawn"),
            initializer=_warm_up,
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.stop()  # every task has finished or timed out by now; stop, don't wait
            self._pool.join()
            self._pool = None

    def submit(
        self,
        fn: RewardFn,
        prompts: Sequence[str],
        completions: Sequence[str],
        columns: Mapping[str, Sequence[Any]],
    ) -> PendingScores:
        """Schedules one task per sample and returns at once; `.result()` waits for the scores."""
        if self._pool is None:
            raise RuntimeError("RewardPool is not running: use it as `with RewardPool(...) as pool:`")
        n = check_batch(prompts, completions, columns)
        fn_bytes = cloudpickle.dumps(fn)
        futures = [
            self._pool.schedule(
                _score_sample,
                args=(fn_bytes, prompts[i], completions[i], row(columns, i)),
                timeout=self.timeout_s,
            )
            for i in range(n)
        ]
        return PendingScores(futures)

    def score(
        self, fn: RewardFn, prompts: Sequence[str], completions: Sequence[str], **columns: Sequence[Any]
    ) -> Scores:
        """Scores every sample in the workers; waits for all of them."""
        return self.submit(fn, prompts, completions, columns).result()


@dataclasses.dataclass(frozen=True)
class PendingScores:
    """Futures of one reward's per-sample tasks."""

    futures: list[concurrent.futures.Future]

    def result(self) -> Scores:
        """Waits for every sample; failures and timeouts score 0 and are counted."""
        values, errors, timeouts = [], 0, 0
        for future in self.futures:
            try:
                value = future.result()
            # pebble killed the worker after timeout_s; before Python 3.11 pebble's
            # concurrent.futures.TimeoutError is not the builtin TimeoutError
            except (TimeoutError, concurrent.futures.TimeoutError):
                value, timeouts = 0.0, timeouts + 1
            except Exception:  # noqa: BLE001 - the reward raised, its worker died, or pickling failed
                value, errors = 0.0, errors + 1
            if value is None:  # non-finite or non-numeric output
                value, errors = 0.0, errors + 1
            values.append(value)
        return Scores(values, errors=errors, timeouts=timeouts)


def _warm_up() -> None:
    """Worker initializer: import the built-in rewards (math-verify, sympy) before the first task."""
    import r1jax.rewards  # noqa: F401


@functools.lru_cache(maxsize=16)
def _load(fn_bytes: bytes) -> RewardFn:
    return cloudpickle.loads(fn_bytes)


def _score_sample(fn_bytes: bytes, prompt: str, completion: str, columns: dict[str, list[Any]]) -> float | None:
    """Runs in a worker: one reward call on one sample."""
    return as_values(_load(fn_bytes)([prompt], [completion], **columns), 1)[0]
