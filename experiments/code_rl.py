"""GRPO on a tiny code task set with the sandboxed code reward (DeepSeek-R1 §2.2.2: code is checked by tests).

    python experiments/code_rl.py [--workdir runs/code_rl] [--set rl_steps=20] [--set tasks=path.jsonl]

A cold start first (SFT of a tiny model on the tasks' reference programs in the
R1 format), then GRPO where each sampled program runs against the task's tests
in the sandbox (`r1jax.rewards.code_reward`: fraction of tests passed) plus the
format reward. Tasks load from JSONL in the usual layouts (inputs/outputs,
asserts); the default is the 15-task set in r1jax/data/code_tasks.jsonl. The
recipe is r1jax/recipes/code_rl.py; it prints the rewards of every RL step (also
in summary.md).
"""
from __future__ import annotations

import argparse
import os
import sys

from r1jax.cli import add_common_flags, apply_overrides, parse_and_launch, run
from r1jax.recipes import code_rl


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, list(code_rl.PRESETS))
    args = parse_and_launch(parser, argv)
    cfg = apply_overrides(code_rl.PRESETS[args.preset], args.overrides)
    workdir = args.workdir or os.path.join("runs", f"code_rl_{args.preset}")
    carry = code_rl.build(cfg, workdir, mesh=args.mesh).run()
    print(code_rl.report(carry.results, workdir))
    print(f"workdir: {os.path.abspath(workdir)}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
