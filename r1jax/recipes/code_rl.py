"""Code RL: GRPO with the sandboxed code reward (DeepSeek-R1 §2.2.2: code is checked by tests), at tiny scale.

    cfg = CodeRLConfig(rl_steps=20)
    carry = build(cfg, "runs/code_rl").run()
    print(report(carry.results, "runs/code_rl"))

A cold start first (SFT of a tiny model on the tasks' reference programs in the R1 format), then
GRPO where each sampled program runs against the task's tests in the sandbox
(`r1jax.rewards.code_reward`: fraction of tests passed) plus the format reward. Tasks load from
JSONL in the usual layouts (inputs/outputs, asserts); the default is the 15 tasks shipped in
r1jax/data/code_tasks.jsonl.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

from r1jax.config import GRPOConfig, LoRAConfig, ModelConfig, OptimizerConfig, SamplingSettings
from r1jax.data import R1_ZERO

DEFAULT_TASKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                             "code_tasks.jsonl")


@dataclasses.dataclass(frozen=True)
class CodeRLConfig:
    """Everything a code-RL run uses; each field can be set with --set."""

    seed: int = 0
    tasks: str = DEFAULT_TASKS
    vocab_size: int = 400
    model: ModelConfig = ModelConfig(vocab_size=400, embed_dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                     head_dim=16, mlp_dim=256, max_len=1024)
    sft_steps: int = 150
    sft_batch: int = 8
    seq_len: int = 320
    sft_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, warmup_steps=10)
    rl_steps: int = 10
    grpo: GRPOConfig = GRPOConfig(group_size=4, prompts_per_step=4, sampling=SamplingSettings(max_new_tokens=96),
                                  kl_beta=0.0, logprob_chunk=96)
    rl_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-4)
    reward_timeout_s: float = 120.0
    lora: LoRAConfig = LoRAConfig()  # rank > 0: GRPO trains LoRA adapters on the cold-started model


PRESETS: dict[str, CodeRLConfig] = {"tiny": CodeRLConfig()}


def solution_text(solution: str) -> str:
    """A reference program written as an R1-format completion."""
    return f" <think> Write the program. </think> <answer>\n```python\n{solution}\n```\n</answer>"


def build(cfg: CodeRLConfig, workdir: str, mesh: str | None = None):
    """The Runner: tokenizer, cold-start SFT on the reference programs, GRPO on the code + format rewards."""
    from r1jax.phases import RLPhase, Runner, SFTPhase, TokenizerPhase
    from r1jax.rewards import WeightedReward, format_reward
    from r1jax.rewards.code import code_reward, load_code_tasks

    tasks = [t for t in load_code_tasks(cfg.tasks) if t.solution]
    if not tasks:
        raise ValueError(f"{cfg.tasks}: no task has a reference solution for the cold start")
    pairs = [(R1_ZERO.render(t.question), solution_text(t.solution)) for t in tasks]
    rewards = {"code": WeightedReward(code_reward, 1.0), "format": WeightedReward(format_reward, 1.0)}
    phases = [
        TokenizerPhase(texts=lambda: [p + c for p, c in pairs], vocab_size=cfg.vocab_size),
        SFTPhase("cold_start", lambda: pairs, steps=cfg.sft_steps, batch_size=cfg.sft_batch,
                 seq_len=cfg.seq_len, optimizer=cfg.sft_optimizer),
        RLPhase("rl", lambda: tasks, rewards, R1_ZERO, steps=cfg.rl_steps, grpo=cfg.grpo,
                optimizer=cfg.rl_optimizer, reward_timeout_s=cfg.reward_timeout_s, lora=cfg.lora),
    ]
    return Runner(workdir, cfg.model, phases, seed=cfg.seed, checkpoint_every=max(1, cfg.rl_steps), mesh=mesh)


def report(results: dict[str, Any], workdir: str) -> str:
    """Markdown: the code and format rewards of every RL step (from workdir/metrics.jsonl), also written to
    workdir/summary.md. `results` (the run's) is unused: the rewards are per-step metrics, not results."""
    from r1jax.cli import save_summary
    from r1jax.metrics import read_metrics

    del results
    lines = ["| RL step | code reward | format reward | reward failures |", "|---|---|---|---|"]
    for r in read_metrics(os.path.join(workdir, "metrics.jsonl")):
        if "rl/reward/code" in r:
            lines.append(f"| {r['step']} | {r['rl/reward/code']:.3f} | {r['rl/reward/format']:.3f} | "
                         f"{r.get('rl/reward/code_failures', 0):.0f} |")
    text = "\n".join(lines)
    save_summary(workdir, text)
    return text


__all__ = ["CodeRLConfig", "DEFAULT_TASKS", "PRESETS", "build", "report", "solution_text"]
