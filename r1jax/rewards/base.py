"""The reward signature, per-function scores, and in-process scoring that isolates a failing sample."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class RewardFn(Protocol):
    """`reward(prompts, completions, **columns) -> list[float]`, one float per completion."""

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **columns: Any
    ) -> list[float]: ...


@dataclasses.dataclass(frozen=True)
class Scores:
    """One reward function's values per sample; failed or timed-out samples score 0 and are counted."""

    values: list[float]
    errors: int = 0
    timeouts: int = 0


def check_batch(
    prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence[Any]]
) -> int:
    """Batch size; raises ValueError naming the first column whose length differs from completions."""
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"prompts has {len(prompts)} rows but completions has {n}")
    for name, column in columns.items():
        if len(column) != n:
            raise ValueError(f"column {name!r} has {len(column)} rows but completions has {n}")
    return n


def row(columns: Mapping[str, Sequence[Any]], i: int) -> dict[str, list[Any]]:
    """The columns restricted to row i, each still a (length-1) sequence."""
    return {name: [column[i]] for name, column in columns.items()}


def as_values(out: Any, n: int) -> list[float | None]:
    """A reward's output as n floats; None marks a non-finite or non-numeric entry. Raises on wrong length."""
    if isinstance(out, (str, bytes)):
        raise TypeError(f"a reward must return a sequence of floats, got {type(out).__name__}")
    values = list(out)
    if len(values) != n:
        raise ValueError(f"a reward returned {len(values)} values for {n} completions")
    return [_as_float(v) for v in values]


def _as_float(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def score_in_process(
    fn: RewardFn,
    prompts: Sequence[str],
    completions: Sequence[str],
    columns: Mapping[str, Sequence[Any]],
) -> Scores:
    """Scores the batch in one call; if that raises, rescores per sample so only culprits get 0.

    No timeout is possible in-process: use `RewardPool` for untrusted or slow rewards.
    """
    n = check_batch(prompts, completions, columns)
    try:
        values = as_values(fn(prompts, completions, **columns), n)
    except Exception:  # noqa: BLE001 - any reward bug scores 0, never reaches the trainer
        values = [_score_one(fn, prompts[i], completions[i], row(columns, i)) for i in range(n)]
    errors = sum(v is None for v in values)
    return Scores([0.0 if v is None else v for v in values], errors=errors)


def _score_one(fn: RewardFn, prompt: str, completion: str, columns: dict[str, list[Any]]) -> float | None:
    try:
        return as_values(fn([prompt], [completion], **columns), 1)[0]
    except Exception:  # noqa: BLE001
        return None
