"""Evaluation: k samples per problem → pass@1, cons@k, pass@k (DeepSeek-R1, arXiv 2501.12948, Sec. 3).

    problems = load_jsonl("math500.jsonl")        # or generate_arithmetic(cfg, "test", 200), or the path itself
    result = evaluate(params, model_cfg, tok, problems, k=16, template=R1_ZERO, rng=jax.random.key(0),
                      settings=SamplingSettings.for_evaluation(max_new_tokens=1024))
    result.summary()  # {"pass@1": …, "pass@16": …, "cons@16": …, "format": …, "gsm8k/pass@1": …}
    result.write_jsonl("eval.jsonl")  # one line per problem: question, gold, k completions/answers/correctness

Paper protocol (`SamplingSettings.for_evaluation`): temperature 0.6, top-p 0.95, k samples per
question; pass@1 is the mean correctness over the k samples, cons@k the accuracy of the
majority-voted answer. pass@k is the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374, Sec. 2.1).

A sample is correct when its correctness function scores it >= 1 (full marks). The function
has the reward signature `fn(prompts, completions, **columns) -> list[float]` and is called
once per task with that task's `Problem.columns()`; by default accuracy for every task but
countdown, which is scored by the countdown reward. A fork passes its own `correctness_fn`.
cons@k votes over `answer_fn` answers (default: the last `<answer>`, else `\\boxed{}`) grouped by
`normalize_answer`; the vote's correctness is that of the first sample giving the winning answer.
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from r1jax.config import ModelConfig, SamplingSettings
from r1jax.sharding import to_host
from r1jax.data import Problem, batch_columns, load_jsonl
from r1jax.engine import Engine
from r1jax.fileio import atomic_write_jsonl
from r1jax.metrics import progress
from r1jax.rewards.accuracy import normalize_answer
from r1jax.rewards import (RewardFn, RewardPool, WeightedReward, accuracy_reward, combine_rewards, countdown_reward,
                           format_reward)
from r1jax.reasoning import check_trace, lenient_answer
from r1jax.sampling import Sampler
from r1jax.text import final_answer, last_answer_tag
from r1jax.tokenizer import Tokenizer, tokenizer_stop_ids

TASK_CORRECTNESS: dict[str, RewardFn] = {"countdown": countdown_reward}  # every other task: accuracy_reward



# ----------------------------------------------------------------------------- metrics
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 − C(n−c, k)/C(n, k) for c correct of n samples (Chen et al. 2021, product form)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_1(correct_PxK: Any) -> float:
    """Mean correctness over each problem's k samples, averaged over problems (R1 paper's pass@1)."""
    correct_PxK = np.asarray(correct_PxK, np.float64)
    if correct_PxK.ndim != 2 or correct_PxK.size == 0:
        raise ValueError(f"pass_at_1 needs a non-empty [problems, k] array, got shape {correct_PxK.shape}")
    return float(correct_PxK.mean(axis=1).mean())


def cons_key(metrics: Mapping[str, Any]) -> str | None:
    """The overall cons@k entry of an evaluation's metrics (k is the run's), or None; not a `<task>/cons@k`."""
    return next((name for name in metrics if name.startswith("cons@") and "/" not in name), None)


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The first-seen raw answer of the largest group of equal `normalize_answer` keys; ties go to the first seen.

    A sample without an answer votes for None, so None wins when most samples have no answer.
    """
    if not answers:
        raise ValueError("majority_vote needs at least one answer")
    counts: dict[str | None, int] = {}
    first: dict[str | None, str | None] = {}
    for answer in answers:
        key = normalize_answer(answer)
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, answer)
    return first[max(counts, key=counts.__getitem__)]  # dicts keep first-seen order: ties → first


# ----------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class ProblemRecord:
    """One problem's k samples: completions, extracted answers, correctness, and the majority vote."""

    id: str
    task: str
    question: str
    gold: str
    completions: list[str]
    answers: list[str | None]
    correct: list[bool]
    lengths: list[int]
    truncated: list[bool]
    well_formed: list[bool]
    voted: str | None
    voted_correct: bool
    lenient_answers: list[str | None] = dataclasses.field(default_factory=list)  # r1jax.reasoning.lenient_answer
    lenient_correct: list[bool] = dataclasses.field(default_factory=list)
    steps: list[int] = dataclasses.field(default_factory=list)  # one-operation equations stated
    slips: list[int] = dataclasses.field(default_factory=list)  # of which wrong
    corrected: list[int] = dataclasses.field(default_factory=list)  # slips fixed after a recheck phrase
    rechecked: list[bool] = dataclasses.field(default_factory=list)  # a recheck phrase appears


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else math.nan


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else math.nan


def record_metrics(records: Sequence[ProblemRecord], k: int) -> dict[str, float]:
    """pass@1, pass@k, cons@k, format rate, answered rate, length and truncation over `records`, and what
    the reasoning shows (r1jax.reasoning): lenient pass@1 (the answer read even outside the format),
    accuracy among well-formed completions, the slip rate per stated step, the share of completions with a
    slip, the self-correction rate (slips fixed after a recheck, over all slips) and the recheck rate.
    A rate over nothing (no well-formed completion, no slip) is NaN."""
    correct_PxK = np.array([r.correct for r in records], bool)
    flat = lambda name: np.asarray([x for r in records for x in getattr(r, name)], np.float64)  # noqa: E731
    correct, well_formed = flat("correct"), flat("well_formed")
    steps, slips = flat("steps"), flat("slips")
    return {"pass@1": pass_at_1(correct_PxK),
            f"pass@{k}": float(np.mean([pass_at_k(k, int(c), k) for c in correct_PxK.sum(axis=1)])),
            f"cons@{k}": float(np.mean([r.voted_correct for r in records])),
            "format": float(well_formed.mean()),
            "answered": float(np.mean([a is not None for r in records for a in r.answers])),
            "length_mean": float(flat("lengths").mean()),
            "truncated_frac": float(flat("truncated").mean()),
            "lenient_pass@1": _mean(flat("lenient_correct")),
            "accuracy_well_formed": _ratio((correct * well_formed).sum(), well_formed.sum()),
            "slip_rate": _ratio(slips.sum(), steps.sum()),
            "slipped": _mean(slips > 0),
            "self_correction_rate": _ratio(flat("corrected").sum(), slips.sum()),
            "recheck_rate": _mean(flat("rechecked")),
            "problems": float(len(records))}


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Metrics over all problems and per task, and the per-problem records they come from."""

    k: int
    metrics: dict[str, float]
    by_task: dict[str, dict[str, float]]
    records: list[ProblemRecord]
    reward_failures: int = 0

    def summary(self) -> dict[str, float]:
        """Flat floats for metric logging: overall names, then `<task>/<name>` per task."""
        out = {**self.metrics, "reward_failures": float(self.reward_failures)}
        for task, metrics in self.by_task.items():
            out.update({f"{task}/{name}": value for name, value in metrics.items()})
        return out

    def write_jsonl(self, path: str | os.PathLike) -> None:
        """One JSON object per problem record (UTF-8), written atomically."""
        atomic_write_jsonl(path, (dataclasses.asdict(record) for record in self.records))


# ----------------------------------------------------------------------------- sampling and scoring
def sample_completions(sampler: Sampler | Engine, params: Any, tokenizer: Tokenizer, prompts: Sequence[str],
                       rng: jax.Array, *, k: int, settings: SamplingSettings, batch_size: int,
                       add_bos: bool = True) -> tuple[list[str], np.ndarray, np.ndarray]:
    """k completions per prompt as (texts, lengths, truncated), rows i·k … i·k+k−1 for prompt i.

    `settings` gain the tokenizer's stop ids. The static sampler takes prompts `batch_size` at a
    time (batch b samples with `fold_in(rng, b)`); a short last batch is padded with copies of its
    last prompt so every call reuses the compiled shapes. An `Engine` takes them all in one call
    (its slots bound the memory; each sample's key comes from `rng`, its prompt and its index).
    """
    prompt_ids = [tokenizer.encode(p, add_bos=add_bos) for p in prompts]  # as GRPOTrainer.rollout
    settings = settings.with_stop_ids(tokenizer_stop_ids(tokenizer))
    if isinstance(sampler, Engine):
        out = sampler.generate(params, prompt_ids, rng, group_size=k, settings=settings)
        tokens_BxT, lengths_B, truncated_B = to_host((out.tokens_BxT, out.lengths_B, out.truncated_B))
        return ([tokenizer.decode(row[:n]) for row, n in zip(tokens_BxT, lengths_B)], lengths_B.astype(int),
                truncated_B.astype(bool))
    starts = range(0, len(prompt_ids), batch_size)
    texts: list[str] = []
    lengths, truncated = [], []
    shown = False if len(starts) == 1 else None  # None: metrics.progress's default policy
    for b, start in enumerate(progress(starts, "evaluate", unit="batch", enabled=shown)):
        chunk = prompt_ids[start:start + batch_size]
        padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
        out = sampler.generate(params, padded, jax.random.fold_in(rng, b), group_size=k, settings=settings)
        tokens_BxT, lengths_B, truncated_B = to_host((out.tokens_BxT, out.lengths_B, out.truncated_B))
        rows = len(chunk) * k
        texts += [tokenizer.decode(row[:n]) for row, n in zip(tokens_BxT[:rows], lengths_B[:rows])]
        lengths.append(lengths_B[:rows])
        truncated.append(truncated_B[:rows])
    return texts, np.concatenate(lengths).astype(int), np.concatenate(truncated).astype(bool)


def score_correctness(problems: Sequence[Problem], prompts: Sequence[str], completions: Sequence[str], k: int,
                      correctness_fn: RewardFn | None = None,
                      pool: RewardPool | None = None) -> tuple[np.ndarray, int]:
    """(correct_PxK bool, failed samples): each task's rows scored by its function; correct means score >= 1."""
    scores_B = np.zeros(len(completions))
    failures = 0
    for task in dict.fromkeys(p.task for p in problems):
        rows = [i * k + j for i, p in enumerate(problems) if p.task == task for j in range(k)]
        fn = correctness_fn or TASK_CORRECTNESS.get(task, accuracy_reward)
        columns = batch_columns([problems[r // k] for r in rows])
        scored = combine_rewards([prompts[r // k] for r in rows], [completions[r] for r in rows],
                                 {"correct": WeightedReward(fn, 1.0)}, pool=pool, **columns)
        scores_B[rows] = scored.total
        failures += scored.errors["correct"] + scored.timeouts["correct"]
    return (scores_B >= 1.0).reshape(len(problems), k), failures


def lenient_correctness(problems: Sequence[Problem], prompts: Sequence[str], completions: Sequence[str], k: int,
                        correct_PxK: np.ndarray, correctness_fn: RewardFn | None = None,
                        pool: RewardPool | None = None) -> tuple[list[str | None], np.ndarray, int]:
    """(lenient answers, their correctness [B], failed scorings): a completion with an `<answer>` tag keeps
    its strict score; one without is scored, by its task's own check, on the answer its prose commits to."""
    answers = [lenient_answer(t) for t in completions]
    correct_B = correct_PxK.reshape(-1).copy()
    loose = [i for i, t in enumerate(completions) if last_answer_tag(t) is None and answers[i] is not None]
    failures = 0
    if loose:
        picked = [problems[i // k] for i in loose]
        wrapped = [f"<answer> {answers[i]} </answer>" for i in loose]
        scored, failures = score_correctness(picked, [prompts[i // k] for i in loose], wrapped, 1, correctness_fn,
                                             pool)
        correct_B[loose] = scored[:, 0]
    return answers, correct_B, failures


# ----------------------------------------------------------------------------- entry point
def evaluate(params: Any, model_cfg: ModelConfig, tokenizer: Tokenizer,
             problems: Sequence[Problem] | str | os.PathLike, *, settings: SamplingSettings, template: Any,
             rng: jax.Array, k: int = 4, batch_size: int = 32, sampler: Sampler | Engine | None = None,
             correctness_fn: RewardFn | None = None,
             answer_fn: Callable[[str], str | None] = final_answer, pool: RewardPool | None = None,
             add_bos: bool = True) -> EvalResult:
    """Sample k completions per problem with `settings`, score them, and compute pass@1, pass@k, cons@k.

    `problems` is a sequence of Problems or the path of a GSM8K/MATH JSONL file (`load_jsonl`).
    `template` renders questions (e.g. R1_ZERO); `answer_fn` extracts the answer that cons@k votes on;
    pass a trainer's `sampler` (or its `engine`, r1jax.engine) to reuse its compiled code.
    """
    if isinstance(problems, (str, os.PathLike)):
        problems = load_jsonl(problems)
    problems = list(problems)
    if not problems:
        raise ValueError("evaluate needs at least one problem")
    if not all(isinstance(p, Problem) for p in problems):
        raise TypeError("problems must be r1jax.data.Problem instances (or a JSONL path)")
    if not isinstance(settings, SamplingSettings):
        raise TypeError(f"settings must be r1jax.config.SamplingSettings (e.g. SamplingSettings.for_evaluation(1024)), "
                        f"got {type(settings).__name__}")
    for name, value in (("k", k), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if sampler is None:
        sampler = Sampler(model_cfg, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    prompts = [template.render(p.question) for p in problems]
    texts, lengths_B, truncated_B = sample_completions(
        sampler, params, tokenizer, prompts, rng, k=k, settings=settings, batch_size=min(batch_size, len(problems)),
        add_bos=add_bos)
    correct_PxK, failures = score_correctness(problems, prompts, texts, k, correctness_fn, pool)
    well_formed_B = np.asarray(format_reward([p for p in prompts for _ in range(k)], texts)) >= 1.0
    lenient_B, lenient_correct_B, failed = lenient_correctness(problems, prompts, texts, k, correct_PxK,
                                                               correctness_fn, pool)
    failures += failed
    traces_B = [check_trace(t) for t in texts]

    records = []
    for i, p in enumerate(problems):
        rows = slice(i * k, (i + 1) * k)
        answers = [answer_fn(t) for t in texts[rows]]
        voted = majority_vote(answers)
        # the vote's correctness is that of the first sample giving it (the voted raw answer)
        voted_correct = voted is not None and bool(correct_PxK[i, answers.index(voted)])
        records.append(ProblemRecord(
            id=p.id, task=p.task, question=p.question, gold=p.answer, completions=texts[rows], answers=answers,
            correct=correct_PxK[i].tolist(), lengths=lengths_B[rows].tolist(),
            truncated=truncated_B[rows].tolist(), well_formed=well_formed_B[rows].tolist(),
            voted=voted, voted_correct=voted_correct, lenient_answers=lenient_B[rows],
            lenient_correct=lenient_correct_B[rows].tolist(), steps=[len(t.steps) for t in traces_B[rows]],
            slips=[t.slips for t in traces_B[rows]], corrected=[t.corrected for t in traces_B[rows]],
            rechecked=[t.rechecks > 0 for t in traces_B[rows]]))
    by_task = {task: record_metrics([r for r in records if r.task == task], k)
               for task in dict.fromkeys(p.task for p in problems)}
    return EvalResult(k=k, metrics=record_metrics(records, k), by_task=by_task, records=records,
                      reward_failures=failures)
