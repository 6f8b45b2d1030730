"""The report of a run: one HTML file that opens offline in a browser (curves, flags, rollouts).

    python experiments/report.py --workdir runs/r1_zero_tiny                 # → runs/r1_zero_tiny/report.html
    python experiments/report.py --workdir runs/r1_zero_tiny --out /tmp/r.html --max-steps 20

Curves of every logged metric by phase, eval tables, reward-hacking and instability flags of each RL
phase with links to the completions that show them, and a rollout browser (step → group → G
completions by reward) whose tokens are coloured by log-prob, entropy, ratio, advantage or KL.
Rollouts come from `workdir/rollouts/`, saved by the RL phase (`--set rollout_log.every=N` in the
experiment). Not named inspect.py: a script's folder comes first on sys.path, and that name would
hide the standard library's `inspect` module from every experiment.
"""
from __future__ import annotations

import argparse
import os
import sys

from r1jax.cli import run
from r1jax.report import REPORT_NAME, load_run, rl_flags, save_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the run's workdir (has metrics.jsonl)")
    parser.add_argument("--out", default=None, help="HTML file to write (default: WORKDIR/report.html)")
    parser.add_argument("--max-steps", type=int, default=12,
                        help="saved RL steps embedded in the rollout browser (flagged ones first)")
    args = parser.parse_args(argv)
    run_ = load_run(args.workdir)
    flags = rl_flags(run_)
    path = save_report(run_, flags, args.out or os.path.join(args.workdir, REPORT_NAME), args.max_steps)
    for phase, found in flags.items():
        for f in found:
            if f.fired:
                print(f"flag [{phase}] {f.title} at step {f.step}: {f.detail}")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
