"""R1-Zero: GRPO straight from a base model, rule-based rewards only (DeepSeek-R1 §2.2).

    python experiments/r1_zero.py                                   # tiny CPU reproduction
    python experiments/r1_zero.py --workdir runs/r1z --set rl_steps=100 --set grpo.group_size=16
    python experiments/r1_zero.py --preset qwen2.5-1.5b --mesh 8x8 --workdir runs/qwen \
        --set init_from=/data/Qwen2.5-1.5B --set train_jsonl=/data/gsm8k/train.jsonl \
        --set test_jsonl=/data/gsm8k/test.jsonl

The tiny preset trains a tokenizer and a ~1M-parameter base on synthetic
arithmetic (make-up in r1jax/recipes/r1_zero.py), then runs GRPO with accuracy
+ format rewards. Held-out pass@1 and format rate are measured before and after;
metrics go to JSONL and TensorBoard under the workdir, with PNG plots and a
before/after table. Re-running with the same --workdir resumes where it stopped.
"""
from __future__ import annotations

import argparse
import os
import sys

from r1jax.cli import add_common_flags, apply_overrides, parse_and_launch, run
from r1jax.recipes import r1_zero


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, list(r1_zero.PRESETS))
    args = parse_and_launch(parser, argv)
    cfg = apply_overrides(r1_zero.PRESETS[args.preset], args.overrides)
    r1_zero.check_config(cfg, args.preset)
    workdir = args.workdir or os.path.join("runs", f"r1_zero_{args.preset}")
    carry = r1_zero.build(cfg, workdir, mesh=args.mesh).run()
    print(r1_zero.report(carry.results, workdir))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
