"""R1-Zero: GRPO straight from a base model, rule-based rewards only (DeepSeek-R1 §2.2).

    python experiments/r1_zero.py                                   # tiny CPU reproduction
    python experiments/r1_zero.py --workdir runs/r1z --set rl_steps=100 --set grpo.group_size=16

The tiny preset needs no download: it trains a tokenizer and a ~1M-parameter
base model on a synthetic corpus of 2,000 two-step arithmetic problems (+ and −
on 1..9) with worked solutions: 30% written in the R1 <think>/<answer> format,
70% as plain prose ending "The answer is N.", 20% with an arithmetic slip and
10% with a "wait, let me recheck" correction. The base sees the R1-Zero prompt
in context; its loss is on the solutions. Then GRPO with accuracy + format
rewards, equal weights, on the R1-Zero template. Held-out
pass@1 and format rate are measured before and after; metrics go to JSONL and
TensorBoard under the workdir, with PNG plots and a before/after table.
Re-running with the same --workdir resumes where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys

from r1jax.cli import add_common_flags, apply_overrides
from r1jax.config import GRPOConfig, ModelConfig, OptimizerConfig
from r1jax.data import R1_ZERO, ArithmeticConfig, generate_arithmetic, worked_solution


@dataclasses.dataclass(frozen=True)
class R1ZeroConfig:
    """Everything the tiny R1-Zero reproduction uses; each field can be set with --set."""

    seed: int = 0
    task: ArithmeticConfig = ArithmeticConfig(num_ops=2, max_value=9, ops=("+", "-"), allow_negative=False)
    train_problems: int = 2000
    test_problems: int = 64
    base_error_rate: float = 0.2
    base_recheck_rate: float = 0.1
    base_r1_format_share: float = 0.3
    vocab_size: int = 512
    model: ModelConfig = ModelConfig(vocab_size=512, embed_dim=128, num_layers=4, num_heads=4, num_kv_heads=2,
                                     head_dim=32, mlp_dim=512, max_len=512)
    pretrain_steps: int = 500
    pretrain_batch: int = 32
    seq_len: int = 224
    pretrain_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=3e-3, warmup_steps=30, decay_steps=470,
                                                          weight_decay=0.01)
    rl_steps: int = 40
    grpo: GRPOConfig = GRPOConfig(group_size=8, prompts_per_step=16, max_new_tokens=96, num_minibatches=2,
                                  kl_beta=0.0, logprob_chunk=96)
    rl_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=5e-5)
    eval_every: int = 20
    eval_k: int = 4
    checkpoint_every: int = 20


def base_corpus(cfg: R1ZeroConfig, problems) -> list[tuple[str, str]]:
    """(prompt, worked solution) pairs; a share of solutions in the R1 format, the rest as plain prose."""
    rng = random.Random(cfg.seed)
    texts = []
    for p in problems:
        sol = worked_solution(p, rng, error_rate=cfg.base_error_rate, self_correct_rate=cfg.base_recheck_rate)
        if rng.random() < cfg.base_r1_format_share:
            completion = " " + sol.render()
        else:
            completion = f" {sol.reasoning.strip()}\nThe answer is {sol.answer}."
        texts.append((R1_ZERO.render(p.question), completion))
    return texts


def build(cfg: R1ZeroConfig, workdir: str):
    from r1jax.phases import EvalPhase, RLPhase, Runner, SFTPhase, TokenizerPhase
    from r1jax.rewards import WeightedReward, accuracy_reward, format_reward

    train = generate_arithmetic(cfg.task, "train", cfg.train_problems, seed=cfg.seed)
    test = generate_arithmetic(cfg.task, "test", cfg.test_problems, seed=cfg.seed)
    corpus = base_corpus(cfg, train)
    rewards = {"accuracy": WeightedReward(accuracy_reward, 1.0), "format": WeightedReward(format_reward, 1.0)}
    evaluation = dict(template=R1_ZERO, max_new_tokens=cfg.grpo.max_new_tokens, k=cfg.eval_k)
    phases = [
        TokenizerPhase(texts=lambda ctx: [p + c for p, c in corpus], vocab_size=cfg.vocab_size),
        # the base sees the template in context, but its loss is on the solutions (the template is fixed text)
        SFTPhase("pretrain", lambda ctx: corpus, steps=cfg.pretrain_steps,
                 batch_size=cfg.pretrain_batch, seq_len=cfg.seq_len, optimizer=cfg.pretrain_optimizer),
        EvalPhase("base_eval", lambda ctx: test, **evaluation),
        RLPhase("rl", lambda ctx: train, rewards, R1_ZERO, steps=cfg.rl_steps, grpo=cfg.grpo,
                optimizer=cfg.rl_optimizer, eval_problems=lambda ctx: test, eval_every=cfg.eval_every,
                eval_k=cfg.eval_k),
        EvalPhase("final_eval", lambda ctx: test, **evaluation),
    ]
    return Runner(workdir, cfg.model, phases, seed=cfg.seed, checkpoint_every=cfg.checkpoint_every)


def report(ctx, workdir: str) -> str:
    """Before/after table (markdown) and PNG plots of the run's curves."""
    from r1jax.metrics import plot_metrics

    before, after = ctx.results.get("base_eval", {}), ctx.results.get("final_eval", {})
    rows = [("pass@1", "pass@1"), ("cons@k", next((n for n in after if n.startswith("cons@") and "/" not in n), "")),
            ("format", "format"), ("completion length", "length_mean")]
    lines = ["| held-out metric | base | after GRPO |", "|---|---|---|"]
    for label, key in rows:
        if key in before and key in after:
            lines.append(f"| {label} | {before[key]:.3f} | {after[key]:.3f} |")
    table = "\n".join(lines)
    plot = os.path.join(workdir, "curves.png")
    plot_metrics(os.path.join(workdir, "metrics.jsonl"),
                 ["rl/reward/mean", "rl/reward/accuracy", "rl/reward/format", "rl/eval/pass@1", "rl/eval/format",
                  "rl/completion/length_mean"], plot)
    with open(os.path.join(workdir, "summary.md"), "w") as f:
        f.write(table + f"\n\n![curves]({os.path.basename(plot)})\n")
    return table + f"\n\nplots: {plot}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, ["tiny"])
    args = parser.parse_args(argv)
    cfg = apply_overrides(R1ZeroConfig(), args.overrides)
    workdir = args.workdir or os.path.join("runs", "r1_zero_tiny")
    ctx = build(cfg, workdir).run()
    print(report(ctx, workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
