"""GRPO on a toy task, from scratch on a CPU in seconds: a random tiny model learns to say "a".

    python experiments/grpo_toy.py [--steps 40] [--lr 3e-3] [--group 8] [--kl 0.0] [--out grpo_toy.jsonl]

The reward is the share of the letter "a" in each completion (a dense,
hand-checkable signal), computed in a process pool like any reward. Prints the
reward, entropy and KL per step and writes them as JSONL. A research fork swaps
`share_of_a` for its own function with the same signature.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time

from r1jax.cli import run


def share_of_a(prompts, completions, **_):
    """Reward: fraction of characters that are 'a'."""
    return [c.count("a") / max(len(c), 1) for c in completions]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--kl", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="grpo_toy.jsonl")
    args = p.parse_args(argv)

    import jax

    from r1jax.config import GRPOConfig, ModelConfig, OptimizerConfig, SamplingSettings
    from r1jax.data import Problem, PromptTemplate
    from r1jax.model import init_params
    from r1jax.rewards import RewardPool, WeightedReward
    from r1jax.rl.loop import GRPOTrainer
    from r1jax.tokenizer import Tokenizer

    rng = random.Random(args.seed)
    corpus = (" ".join("".join(rng.choices("abcdefgh", k=rng.randint(1, 5))) for _ in range(8)) for _ in range(300))
    tok = Tokenizer.train(corpus, vocab_size=300)
    cfg = ModelConfig.tiny(vocab_size=tok.vocab_size)
    gcfg = GRPOConfig(group_size=args.group, prompts_per_step=4, sampling=SamplingSettings(max_new_tokens=8),
                      kl_beta=args.kl, logprob_chunk=8)
    problems = [Problem(id=f"toy-{q}", task="toy", question=q, answer="a") for q in "abcd"]
    t0 = time.time()
    with RewardPool(num_workers=2, timeout_s=10.0) as pool, open(args.out, "w") as log:
        trainer = GRPOTrainer(cfg, init_params(cfg, jax.random.key(args.seed)), tok, gcfg,
                              OptimizerConfig(learning_rate=args.lr), {"share_of_a": WeightedReward(share_of_a)},
                              PromptTemplate("toy", "Say: {prompt}"), pool=pool)
        print(f"{'step':>4} {'reward':>7} {'entropy':>7} {'kl':>8} {'s':>6}")
        for step in range(args.steps):
            m = trainer.step(problems, jax.random.fold_in(jax.random.key(args.seed + 1), step))
            log.write(json.dumps({"step": step, **m}) + "\n")
            print(f"{step:4d} {m['reward/mean']:7.3f} {m['entropy']:7.2f} {m.get('kl', 0.0):8.4f} "
                  f"{time.time() - t0:6.1f}")
    print("last completions:", trainer.last_rollout.texts[:4])
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
