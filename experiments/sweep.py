"""One recipe over several seeds: mean ± 95% interval of every held-out metric, curves with bands.

    python experiments/sweep.py r1_zero --seeds 0,1,2                  # three tiny R1-Zero runs
    python experiments/sweep.py r1 --seeds 0,1,2 --set rl1_steps=20    # the multi-stage recipe
    python experiments/sweep.py r1_zero --seeds 0,1 --workdir runs/sw --set rl_steps=60
    python experiments/sweep.py r1_zero --preset tiny-countdown       # Countdown (TinyZero's task)
    python experiments/sweep.py distill --set teacher=runs/sweep_r1_zero/seed{seed}  # each seed its own teacher

Each seed is the recipe's own run (`--set seed=` replaced: base, data order and RL randomness) in
<workdir>/seed<N>, resumed like any run; the table goes to <workdir>/summary.md and sweep.json,
the curves to <workdir>/curves.png (r1jax/recipes/sweep.py).
"""
from __future__ import annotations

import argparse
import os
import sys

from r1jax.cli import add_common_flags, apply_overrides, parse_and_launch, run
from r1jax.errors import UsageError
from r1jax.recipes import distill, r1, r1_zero, sweep

RECIPES = {"r1_zero": r1_zero, "r1": r1, "distill": distill}


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds {text!r}: a comma-separated list of integers, e.g. 0,1,2") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", choices=list(RECIPES))
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    add_common_flags(parser, sorted({p for recipe in RECIPES.values() for p in recipe.PRESETS},
                                    key=lambda p: (p != "tiny", p)))  # each recipe checks its own below
    args = parse_and_launch(parser, argv)
    recipe = RECIPES[args.recipe]
    if args.preset not in recipe.PRESETS:
        raise UsageError(f"--preset {args.preset!r}: {args.recipe} has {sorted(recipe.PRESETS)}")
    cfg = apply_overrides(recipe.PRESETS[args.preset], args.overrides)
    workdir = args.workdir or os.path.join("runs", f"sweep_{args.recipe}_{args.preset}")
    result = sweep.run(recipe, cfg, parse_seeds(args.seeds), workdir, mesh=args.mesh)
    print(sweep.report(result, workdir))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
