"""Sampling phases: evaluation, and rejection sampling into an SFT dataset (DeepSeek-R1 §2.3.3)."""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from r1jax.config import ROLLOUT_SAMPLERS, SamplingSettings
from r1jax.data import Problem
from r1jax.data.jsonl import DatasetError, json_records
from r1jax.engine import Engine
from r1jax.evaluate import evaluate
from r1jax.fileio import atomic_write_jsonl
from r1jax.phases.runner import Carry, Phase, RunEnv, read_data
from r1jax.rewards import RewardPool, language_share
from r1jax.rewards.format import is_well_formed


def sample_and_score(phase: Any, env: RunEnv, carry: Carry, problems: Sequence[Problem]):
    """k samples per problem from the carry's params with `phase.sampling`, scored in a reward pool
    of `phase.reward_workers` workers, `phase.reward_timeout_s` seconds per sample (as RLPhase's).

    `phase.rollout` picks the sampler: "static" (r1jax.sampling) or "engine" (r1jax.engine, with
    `phase.rollout_slots` decode slots).
    """
    if phase.rollout not in ROLLOUT_SAMPLERS:
        raise ValueError(f"{type(phase).__name__} {phase.name!r}: rollout={phase.rollout!r} must be one of "
                         f"{ROLLOUT_SAMPLERS}")
    sampler = None
    if phase.rollout == "engine":
        sampler = Engine(carry.model_cfg, pad_id=carry.tokenizer.pad_id, slots=phase.rollout_slots)
    with RewardPool(phase.reward_workers, phase.reward_timeout_s) as pool:
        return evaluate(carry.params, carry.model_cfg, carry.tokenizer, problems, settings=phase.sampling,
                        template=phase.template, rng=env.rng(), k=phase.k, pool=pool, sampler=sampler)


@dataclasses.dataclass(frozen=True)
class EvalPhase(Phase):
    """pass@1 over k samples, cons@k and pass@k on `problems()`, sampled with `sampling`
    (the paper's protocol: `SamplingSettings.for_evaluation(max_new_tokens)`, T 0.6, top-p 0.95)."""

    name: str
    problems: Callable[[], Sequence[Problem]]
    template: Any
    sampling: SamplingSettings
    k: int = 4
    rollout: str = "static"  # or "engine" (sample_and_score)
    rollout_slots: int = 64
    reward_workers: int = 2  # the reward pool's, as RLPhase's (the code reward needs a long timeout)
    reward_timeout_s: float = 10.0

    def run(self, env: RunEnv, carry: Carry, state: Any, cursor: dict | None) -> Carry:
        result = sample_and_score(self, env, carry, read_data(self, "problems"))
        path = os.path.join(env.workdir, f"{self.name}.jsonl")
        result.write_jsonl(path)
        summary = result.summary()
        env.log(summary)
        return carry.with_result(self.name, summary, file=path)


_CODE_BLOCK = re.compile(r"```")


def keep_trace(completion: str, correct: bool, *, language: str = "en", min_language_share: float = 0.95,
               max_paragraph_chars: int = 2000) -> str | None:
    """Why a sampled trace is rejected, or None to keep it (R1 §2.3.3: correct, one language,
    no very long paragraphs, no code blocks)."""
    if not correct:
        return "incorrect"
    if not is_well_formed(completion):
        return "malformed"
    if _CODE_BLOCK.search(completion):
        return "code_block"
    if max(len(p) for p in completion.split("\n\n")) > max_paragraph_chars:
        return "long_paragraph"
    if language_share(completion, language) < min_language_share:
        return "mixed_language"
    return None


@dataclasses.dataclass(frozen=True)
class RejectionSamplingPhase(Phase):
    """Sample k completions per problem from the current policy, keep the correct and clean ones,
    and write them as a JSONL SFT dataset ({"prompt", "completion", "id"}) in the workdir.
    `sampling`: how the candidates are drawn (the R1 recipe's temperature 0.7)."""

    name: str
    problems: Callable[[], Sequence[Problem]]
    template: Any
    sampling: SamplingSettings
    k: int = 4
    max_per_problem: int = 1
    language: str = "en"
    rollout: str = "static"  # or "engine" (sample_and_score)
    rollout_slots: int = 64
    reward_workers: int = 2  # the reward pool's, as RLPhase's
    reward_timeout_s: float = 10.0

    def output_path(self, workdir: str) -> str:
        """Where the kept traces go: `workdir/<name>.jsonl` (a later SFTPhase reads them from there)."""
        return os.path.join(workdir, f"{self.name}.jsonl")

    def run(self, env: RunEnv, carry: Carry, state: Any, cursor: dict | None) -> Carry:
        problems = list(read_data(self, "problems"))
        result = sample_and_score(self, env, carry, problems)
        rows, reasons = [], {}
        for problem, rec in zip(problems, result.records):
            kept = 0
            for completion, ok, truncated in zip(rec.completions, rec.correct, rec.truncated):
                why = "truncated" if truncated else keep_trace(completion, bool(ok), language=self.language)
                if why is None and kept < self.max_per_problem:
                    rows.append({"id": problem.id, "prompt": self.template.render(problem.question),
                                 "completion": completion})
                    kept += 1
                elif why is not None:
                    reasons[why] = reasons.get(why, 0) + 1
        atomic_write_jsonl(self.output_path(env.workdir), rows)
        summary = {"kept": float(len(rows)), "sampled": float(len(problems) * self.k),
                   **{f"rejected/{k}": float(v) for k, v in reasons.items()}}
        env.log(summary)
        return carry.with_result(self.name, summary, file=self.output_path(env.workdir))


def read_sft_jsonl(path: str) -> list[tuple[str, str]]:
    """(prompt, completion) pairs from a rejection-sampling JSONL file; errors name file and line."""
    pairs = []
    for line_no, row in json_records(path):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("completion"), str):
            raise DatasetError(f"{path}:{line_no}: needs string fields 'prompt' and 'completion'")
        pairs.append((row["prompt"], row["completion"]))
    if not pairs:
        raise DatasetError(f"{path}: no SFT records (did rejection sampling keep nothing?)")
    return pairs
