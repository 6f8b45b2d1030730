"""Objectives side by side: from one tiny R1-Zero base, the RL phase with each objective, same seeds and data.

    python experiments/compare_objectives.py                    # runs/compare_objectives, ~45 min on 2 CPU cores
    python experiments/compare_objectives.py --seeds 0,1,2 --set rl_steps=30 --set objectives=grpo,dapo,cispo
    python experiments/compare_objectives.py --set base=runs/other_compare/base   # reuse a trained base

Objectives (r1jax/recipes/compare.py, GRPOConfig overrides): grpo (the paper's loss), dapo, dr-grpo,
gspo, cispo, gmpo, rloo, reinforce++, grpo+entropy, cispo+entropy. The tiny base is trained once
into <workdir>/base; each (objective, seed) arm is its own run under <workdir>/arms/ and a finished
arm is only read back. Writes summary.md (held-out pass@1, format, length, entropy, clip fractions,
wall time: mean ± 95% t-interval over seeds), summary.json and curves.png.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax

from r1jax.cli import add_common_flags, apply_overrides, parse_and_launch, run
from r1jax.recipes import compare


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, list(compare.PRESETS))
    parser.add_argument("--seeds", default=None, metavar="S,S", help="the arms' seeds (same as --set seeds=...)")
    args = parse_and_launch(parser, argv)
    overrides = args.overrides + ([f"seeds={args.seeds}"] if args.seeds is not None else [])
    cfg = apply_overrides(compare.PRESETS[args.preset], overrides)
    workdir = args.workdir or os.path.join("runs", "compare_objectives")
    # the arms run the same sampler and evaluation programs: compiled once, then read from disk
    jax.config.update("jax_compilation_cache_dir", os.path.join(os.path.abspath(workdir), "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    print(compare.report(compare.run(cfg, workdir, mesh=args.mesh), workdir))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
