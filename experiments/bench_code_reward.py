"""Code reward throughput: programs scored per second for a trivial program, by parallel workers.

    python experiments/bench_code_reward.py [--workers 1,2,4] [--programs 64] [--tests 1]
                                            [--out benchmarks/code_reward.json]

Every program reads two ints and prints their sum; CodeReward extracts it from a fenced block,
runs it in one sandbox (interpreter start, isolation, one fork per test) and compares the output.
Rows are scored on `--workers` threads, each driving its own sandbox process. Reports wall-clock
programs/s and the CPU seconds per program of the sandboxes and of this (judging) process, which
with the core count bound the throughput of an idle host; prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time

from r1jax.rewards.code import CodeReward
from r1jax.rewards.sandbox import SandboxLimits, isolation_level

PROGRAM = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"


def bench(workers: int, programs: int, tests: int, limits: SandboxLimits) -> dict:
    spec = {"inputs": [f"{i} {i + 1}\n" for i in range(tests)], "outputs": [f"{2 * i + 1}\n" for i in range(tests)]}
    reward = CodeReward(limits=limits, workers=workers)
    reward(["p"], [PROGRAM], tests=[spec])  # warm up: the isolation probe, imports
    before = [resource.getrusage(who) for who in (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF)]
    start = time.perf_counter()
    scores = reward(["p"] * programs, [PROGRAM] * programs, tests=[spec] * programs)
    wall = time.perf_counter() - start
    after = [resource.getrusage(who) for who in (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF)]
    if scores != [1.0] * programs:
        raise RuntimeError(f"the trivial program failed: {scores}")
    sandbox_cpu, judge_cpu = ((a.ru_utime - b.ru_utime) + (a.ru_stime - b.ru_stime) for a, b in zip(after, before))
    return {"workers": workers, "programs": programs, "tests_per_program": tests,
            "programs_per_s": programs / wall, "sandbox_cpu_s_per_program": sandbox_cpu / programs,
            "judge_cpu_s_per_program": judge_cpu / programs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2,4", help="comma-separated thread counts")
    p.add_argument("--programs", type=int, default=64)
    p.add_argument("--tests", type=int, default=1, help="stdin/stdout tests per program")
    p.add_argument("--isolation", default="auto", help="auto, root, userns or basic")
    p.add_argument("--out", default=os.path.join("benchmarks", "code_reward.json"))
    args = p.parse_args(argv)
    limits = SandboxLimits(isolation=args.isolation)
    level = isolation_level(args.isolation)
    rows = [bench(int(w), args.programs, args.tests, limits) for w in args.workers.split(",")]
    print(f"isolation level: {level}; {os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f}")
    print(f"{'workers':>8} {'programs/s':>11} {'sandbox CPU s/program':>22} {'judge CPU s/program':>20}")
    for r in rows:
        print(f"{r['workers']:>8} {r['programs_per_s']:>11.1f} {r['sandbox_cpu_s_per_program']:>22.3f} "
              f"{r['judge_cpu_s_per_program']:>20.3f}")
    report = {"level": level, "cpu_count": os.cpu_count(), "load_average": os.getloadavg()[0],
              "python": sys.version.split()[0], "machine": platform.machine(), "rows": rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
