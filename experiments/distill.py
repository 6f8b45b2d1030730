"""Distillation vs RL alone (DeepSeek-R1 §4.1) at tiny scale: a small student on an RL teacher's traces.

    python experiments/r1_zero.py                      # first: the teacher (runs/r1_zero_tiny)
    python experiments/distill.py [--workdir runs/distill_tiny] [--set kd_alpha=0.5] [--set rl_steps=60]

Stages (r1jax/recipes/distill.py): the student's own base pretraining, the
teacher's rejection-sampled traces, the student distilled on them, and the same
student base trained by GRPO alone; it prints one table of held-out pass@1,
cons@k, format rate and each stage's wall time (also written to summary.md).
"""
from __future__ import annotations

import argparse
import os
import sys

from r1jax.cli import add_common_flags, apply_overrides, parse_and_launch, run
from r1jax.recipes import distill


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, list(distill.PRESETS))
    args = parse_and_launch(parser, argv)
    cfg = apply_overrides(distill.PRESETS[args.preset], args.overrides)
    distill.check_teacher(cfg)
    workdir = args.workdir or os.path.join("runs", f"distill_{args.preset}")
    print(distill.report(distill.run(cfg, workdir, mesh=args.mesh), workdir))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
