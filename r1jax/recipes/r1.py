"""DeepSeek-R1, multi-stage (§2.3): cold start → reasoning RL (+ language consistency) → rejection
sampling → SFT → RL for all scenarios.

On the tiny preset it uses the base of r1jax.recipes.r1_zero (tokenizer + base
pretraining on synthetic arithmetic), then:
  1. cold start: SFT on a few hundred correct, readable R1-format solutions;
  2. reasoning RL: GRPO with accuracy + format + language-consistency rewards;
  3. rejection sampling: k samples per training problem from the RL policy, keeping
     correct, well-formed, single-language traces without code blocks (JSONL in the workdir);
  4. SFT on the kept traces: from the RL policy by default, or, with
     `sft_from_base=True`, from the base model as the paper does (a snapshot of the
     pretrained params is kept in the workdir and restored before this SFT);
  5. RL for all scenarios at temperature 0.7;
and evaluates held-out pass@1 / cons@k after every stage.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Any

from r1jax.config import LoRAConfig, OptimizerConfig
from r1jax.data import R1_ZERO, worked_solution
from r1jax.recipes.r1_zero import (SHORT_BASE, TASK_FILE, R1ZeroConfig, base_phases, check_lora, problems, reward_pool,
                                   task_record)

STAGES = ("base_eval", "cold_start_eval", "reasoning_rl_eval", "sft_eval", "final_eval")


@dataclasses.dataclass(frozen=True)
class R1Config:
    """The multi-stage recipe; `base` is the R1-Zero config that provides the model and data."""

    base: R1ZeroConfig = SHORT_BASE
    cold_start_examples: int = 300
    cold_start_steps: int = 60
    cold_start_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=5e-4, warmup_steps=5)
    language_weight: float = 0.5
    rl1_steps: int = 30
    rs_problems: int = 256
    rs_k: int = 4
    rs_temperature: float = 0.7
    sft2_steps: int = 60
    rl2_steps: int = 20
    rl2_temperature: float = 0.7
    sft_from_base: bool = False  # the paper's stage-3 SFT restarts from the base; False continues from RL
    lora: LoRAConfig = LoRAConfig()  # rank > 0: every stage after the base (SFT and RL) trains LoRA adapters


PRESETS: dict[str, R1Config] = {"tiny": R1Config()}


def build(cfg: R1Config, workdir: str, **runner_kwargs):
    """The R1 Runner: base → cold start → reasoning RL → rejection sampling → SFT → RL, evaluated after each."""
    from r1jax.phases import (EvalPhase, RejectionSamplingPhase, RestorePhase, RLPhase, Runner, SFTPhase,
                              SnapshotPhase, read_sft_jsonl)
    from r1jax.rewards import WeightedReward, accuracy_reward, format_reward, language_reward

    b = cfg.base
    check_lora(cfg.lora, b.lora, "base.lora")
    train, test = problems(b)
    model_cfg, phases = base_phases(b, train)
    rng = random.Random(b.seed + 1)
    cold = [(R1_ZERO.render(p.question), " " + worked_solution(p, rng).render())
            for p in train[:cfg.cold_start_examples]]
    reasoning = {"accuracy": WeightedReward(accuracy_reward, 1.0), "format": WeightedReward(format_reward, 1.0),
                 "language": WeightedReward(language_reward, cfg.language_weight)}
    pool = reward_pool(b)
    ev = dict(template=R1_ZERO, sampling=b.grpo.sampling.paper_evaluation(), k=b.eval_k, rollout=b.grpo.rollout,
              **pool)
    rs = RejectionSamplingPhase("rejection_sampling", lambda: train[:cfg.rs_problems], R1_ZERO,
                                sampling=dataclasses.replace(b.grpo.sampling, temperature=cfg.rs_temperature),
                                k=cfg.rs_k, rollout=b.grpo.rollout, **pool)
    sft = dict(batch_size=b.pretrain_batch, seq_len=b.seq_len, optimizer=cfg.cold_start_optimizer, lora=cfg.lora)
    if cfg.sft_from_base:
        phases.append(SnapshotPhase("base"))
    phases += [
        EvalPhase("base_eval", lambda: test, **ev),
        SFTPhase("cold_start", lambda: cold, steps=cfg.cold_start_steps, **sft),
        EvalPhase("cold_start_eval", lambda: test, **ev),
        RLPhase("reasoning_rl", lambda: train, reasoning, R1_ZERO, steps=cfg.rl1_steps, grpo=b.grpo,
                optimizer=b.rl_optimizer, lora=cfg.lora, **pool),
        EvalPhase("reasoning_rl_eval", lambda: test, **ev),
        rs,
        *([RestorePhase("base")] if cfg.sft_from_base else []),
        SFTPhase("sft", lambda: read_sft_jsonl(rs.output_path(workdir)), steps=cfg.sft2_steps, **sft),
        EvalPhase("sft_eval", lambda: test, **ev),
        RLPhase("all_rl", lambda: train, reasoning, R1_ZERO, steps=cfg.rl2_steps,
                grpo=dataclasses.replace(b.grpo, sampling=dataclasses.replace(b.grpo.sampling,
                                                                              temperature=cfg.rl2_temperature)),
                optimizer=b.rl_optimizer, lora=cfg.lora, **pool),
        EvalPhase("final_eval", lambda: test, **ev),
    ]
    return Runner(workdir, model_cfg, phases, seed=b.seed, checkpoint_every=b.checkpoint_every,
                  files={TASK_FILE: task_record(b)}, **runner_kwargs)


def report(results: dict[str, Any], workdir: str) -> str:
    """Markdown table of held-out pass@1, cons@k, format and length after every stage, plus the rejection
    count, from the run's `results` (Runner.run().results); also written to workdir/summary.md."""
    from r1jax.cli import save_summary
    from r1jax.evaluate import cons_key

    lines = ["| stage | pass@1 | cons@k | format | completion length |", "|---|---|---|---|---|"]
    for name in STAGES:
        r = results.get(name, {})
        if r:
            cons = r.get(cons_key(r), float("nan"))
            lines.append(f"| {name.removesuffix('_eval')} | {r['pass@1']:.3f} | {cons:.3f} | {r['format']:.3f} "
                         f"| {r['length_mean']:.1f} |")
    rs = results.get("rejection_sampling", {})
    lines.append(f"\nrejection sampling kept {rs.get('kept', 0):.0f} of {rs.get('sampled', 0):.0f} samples")
    text = "\n".join(lines)
    save_summary(workdir, text)
    return text

