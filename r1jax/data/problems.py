"""`Problem`, the unit every task and dataset yields, and hash-based train/test splits.

A problem's split is decided by a stable hash (sha256) of its canonical key,
never by Python's salted `hash`, so the same question lands in the same split
in every process, for every seed and sample count: train and test drawn with
the same `test_fraction` can never share a question.
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One verifiable question: `answer` is the gold answer string rewards compare against.

    Task-specific fields: `numbers`/`target` for Countdown (there `answer` is one
    reference equation; any equation that reaches `target` is correct);
    `reference` is a worked solution from a dataset, when it has one.
    """

    id: str
    task: str
    question: str
    answer: str
    numbers: tuple[int, ...] = ()
    target: int | None = None
    reference: str | None = None

    def __post_init__(self):
        for name in ("id", "task", "question", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Problem.{name} must be a non-empty str, got {value!r}")
        object.__setattr__(self, "numbers", tuple(self.numbers))
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in self.numbers):
            raise ValueError(f"Problem.numbers must be ints, got {self.numbers!r}")
        if self.target is not None and (not isinstance(self.target, int) or isinstance(self.target, bool)):
            raise ValueError(f"Problem.target must be an int or None, got {self.target!r}")
        if (self.target is None) != (not self.numbers):
            raise ValueError("Problem.numbers and Problem.target go together (Countdown): set both or neither")

    @property
    def key(self) -> str:
        """Canonical key for deduplication and split assignment."""
        return canonical_key(self.task, self.question, self.numbers, self.target)

    def columns(self) -> dict[str, Any]:
        """Keyword columns a reward function receives: `answer`; plus `numbers`, `target` for Countdown."""
        cols: dict[str, Any] = {"answer": self.answer}
        if self.target is not None:
            cols["numbers"] = list(self.numbers)
            cols["target"] = self.target
        return cols


def batch_columns(problems: Sequence[Problem]) -> dict[str, list[Any]]:
    """Per-row `columns()` stacked into the column-per-keyword batch reward functions receive."""
    rows = [p.columns() for p in problems]
    names = list(rows[0]) if rows else ["answer"]
    for p, row in zip(problems, rows):
        if list(row) != names:
            raise ValueError(f"{p.id}: columns {sorted(row)} differ from the batch's {sorted(names)}; "
                             "batch problems of one task (or columns) together")
    return {name: [row[name] for row in rows] for name in names}


def canonical_key(task: str, question: str, numbers: tuple[int, ...] = (), target: int | None = None) -> str:
    """Task plus whitespace-normalized question; Countdown: task, sorted numbers and target."""
    if target is not None:
        return f"{task}|{sorted(numbers)}|{target}"
    return f"{task}|{' '.join(question.split())}"


def stable_hash(text: str) -> int:
    """A 64-bit hash of `text` that is the same in every process (sha256)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def problem_id(key: str) -> str:
    """Stable id from a canonical key: `task-<12 hex digits>`."""
    task = key.split("|", 1)[0]
    return f"{task}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:12]}"


def split_of(key: str, test_fraction: float) -> str:
    """'test' for the `test_fraction` of keys with the lowest hash, else 'train'."""
    return "test" if stable_hash("split:" + key) < test_fraction * 2.0**64 else "train"


def seeded_rng(*parts: object) -> random.Random:
    """A `random.Random` seeded from a stable hash of `parts` (same in every process)."""
    return random.Random(stable_hash("|".join(map(str, parts))))


def check_split_args(split: str, num: int, test_fraction: float) -> None:
    """ValueError with a clear message for a bad split name, count or fraction."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(num, int) or num < 0:
        raise ValueError(f"num must be an int >= 0, got {num!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")


def draw_split(sample: Callable[[random.Random], Problem | None], *, split: str, num: int,
               seed: int, test_fraction: float, max_draws: int | None = None,
               at_most: bool = False) -> tuple[Problem, ...]:
    """The first `num` distinct problems of `split` from the stream `sample(rng)` seeded by `seed`.

    `sample` may return None to reject a draw. Raises ValueError if the task cannot supply `num`
    distinct problems for the split within `max_draws` (default 200·num + 2000), unless `at_most`:
    then the split's every problem found in those draws (a held-out set that is the whole split
    when the task has fewer than `num`; the first ones are the same whatever `at_most`).
    """
    check_split_args(split, num, test_fraction)
    max_draws = max_draws if max_draws is not None else 200 * num + 2000
    rng = seeded_rng("draw", seed)
    seen: set[str] = set()
    out: list[Problem] = []
    for _ in range(max_draws):
        if len(out) == num:
            break
        problem = sample(rng)
        if problem is None or problem.key in seen or split_of(problem.key, test_fraction) != split:
            continue
        seen.add(problem.key)
        out.append(problem)
    if len(out) < num and not at_most:
        raise ValueError(f"found only {len(out)} distinct {split!r} problems of {num} requested in "
                         f"{max_draws} draws; widen the task's value ranges or ask for fewer")
    return tuple(out)
