"""DeepSeek-R1, multi-stage (§2.3): cold start → reasoning RL (+ language consistency) → rejection
sampling → SFT → RL for all scenarios, at tiny scale on a CPU.

    python experiments/r1.py [--workdir runs/r1_tiny] [--set rl1_steps=40] [--set rs_k=8]

Uses the tiny base of experiments/r1_zero.py (tokenizer + base pretraining on
synthetic arithmetic), then:
  1. cold start: SFT on a few hundred correct, readable R1-format solutions;
  2. reasoning RL: GRPO with accuracy + format + language-consistency rewards;
  3. rejection sampling: k samples per training problem from the RL policy, keeping
     correct, well-formed, single-language traces without code blocks (JSONL in the workdir);
  4. SFT on the kept traces (the paper restarts from the base; here it continues
     from the RL policy, stated as a deviation);
  5. RL for all scenarios at temperature 0.7;
then evaluates held-out pass@1 / cons@k after every stage.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys

from r1jax.cli import add_common_flags, apply_overrides
from r1jax.config import GRPOConfig, OptimizerConfig
from r1jax.data import R1_ZERO, generate_arithmetic, worked_solution

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from r1_zero import R1ZeroConfig, base_corpus  # noqa: E402  the same tiny base


@dataclasses.dataclass(frozen=True)
class R1Config:
    base: R1ZeroConfig = R1ZeroConfig()
    cold_start_examples: int = 300
    cold_start_steps: int = 60
    cold_start_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=5e-4, warmup_steps=5)
    language_weight: float = 0.5
    rl1_steps: int = 30
    rs_problems: int = 256
    rs_k: int = 4
    sft2_steps: int = 60
    rl2_steps: int = 20
    rl2_temperature: float = 0.7


def build(cfg: R1Config, workdir: str):
    from r1jax.phases import (EvalPhase, RejectionSamplingPhase, RLPhase, Runner, SFTPhase, TokenizerPhase,
                              read_sft_jsonl)
    from r1jax.rewards import WeightedReward, accuracy_reward, format_reward, language_reward

    b = cfg.base
    train = generate_arithmetic(b.task, "train", b.train_problems, seed=b.seed)
    test = generate_arithmetic(b.task, "test", b.test_problems, seed=b.seed)
    corpus = base_corpus(b, train)
    rng = random.Random(b.seed + 1)
    cold = [(R1_ZERO.render(p.question), " " + worked_solution(p, rng).render())
            for p in train[:cfg.cold_start_examples]]
    reasoning = {"accuracy": WeightedReward(accuracy_reward, 1.0), "format": WeightedReward(format_reward, 1.0),
                 "language": WeightedReward(language_reward, cfg.language_weight)}
    ev = dict(template=R1_ZERO, max_new_tokens=b.grpo.max_new_tokens, k=b.eval_k)
    rs = RejectionSamplingPhase("rejection_sampling", lambda ctx: train[:cfg.rs_problems], R1_ZERO,
                                max_new_tokens=b.grpo.max_new_tokens, k=cfg.rs_k)
    sft = dict(batch_size=b.pretrain_batch, seq_len=b.seq_len, optimizer=cfg.cold_start_optimizer)
    phases = [
        TokenizerPhase(texts=lambda ctx: [p + c for p, c in corpus], vocab_size=b.vocab_size),
        SFTPhase("pretrain", lambda ctx: corpus, steps=b.pretrain_steps, batch_size=b.pretrain_batch,
                 seq_len=b.seq_len, optimizer=b.pretrain_optimizer),
        EvalPhase("base_eval", lambda ctx: test, **ev),
        SFTPhase("cold_start", lambda ctx: cold, steps=cfg.cold_start_steps, **sft),
        EvalPhase("cold_start_eval", lambda ctx: test, **ev),
        RLPhase("reasoning_rl", lambda ctx: train, reasoning, R1_ZERO, steps=cfg.rl1_steps, grpo=b.grpo,
                optimizer=b.rl_optimizer),
        EvalPhase("reasoning_rl_eval", lambda ctx: test, **ev),
        rs,
        SFTPhase("sft", lambda ctx: read_sft_jsonl(rs.output_path(ctx)), steps=cfg.sft2_steps, **sft),
        EvalPhase("sft_eval", lambda ctx: test, **ev),
        RLPhase("all_rl", lambda ctx: train, reasoning, R1_ZERO, steps=cfg.rl2_steps,
                grpo=dataclasses.replace(b.grpo, temperature=cfg.rl2_temperature), optimizer=b.rl_optimizer),
        EvalPhase("final_eval", lambda ctx: test, **ev),
    ]
    return Runner(workdir, b.model, phases, seed=b.seed, checkpoint_every=b.checkpoint_every)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, ["tiny"])
    args = parser.parse_args(argv)
    cfg = apply_overrides(R1Config(), args.overrides)
    workdir = args.workdir or os.path.join("runs", "r1_tiny")
    ctx = build(cfg, workdir).run()
    print("| stage | pass@1 | format |\n|---|---|---|")
    for name in ("base_eval", "cold_start_eval", "reasoning_rl_eval", "sft_eval", "final_eval"):
        r = ctx.results.get(name, {})
        if r:
            print(f"| {name} | {r['pass@1']:.3f} | {r['format']:.3f} |")
    rs = ctx.results.get("rejection_sampling", {})
    print(f"rejection sampling kept {rs.get('kept', 0):.0f} of {rs.get('sampled', 0):.0f} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
