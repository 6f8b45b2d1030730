"""DeepSeek-R1, multi-stage (§2.3): cold start → reasoning RL (+ language consistency) → rejection
sampling → SFT → RL for all scenarios, at tiny scale on a CPU.

    python experiments/r1.py [--workdir runs/r1_tiny] [--set rl1_steps=40] [--set rs_k=8]

The stages and their settings are in r1jax/recipes/r1.py; it prints a table of
held-out pass@1, cons@k and format rate after every stage (also in summary.md).
"""
from __future__ import annotations

import argparse
import os
import sys

from r1jax.cli import add_common_flags, apply_overrides, parse_and_launch, run
from r1jax.recipes import r1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, list(r1.PRESETS))
    args = parse_and_launch(parser, argv)
    cfg = apply_overrides(r1.PRESETS[args.preset], args.overrides)
    workdir = args.workdir or os.path.join("runs", f"r1_{args.preset}")
    carry = r1.build(cfg, workdir, mesh=args.mesh).run()
    print(r1.report(carry.results, workdir))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
