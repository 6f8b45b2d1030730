"""Evaluate a run's latest checkpoint: pass@1 over k samples, cons@k, pass@k (DeepSeek-R1 protocol).

    python experiments/evaluate.py --workdir runs/r1_zero_tiny                        # held-out arithmetic
    python experiments/evaluate.py --workdir runs/r1_zero_tiny --data gsm8k_test.jsonl --set k=16
    python experiments/evaluate.py --workdir runs/r1_zero_tiny --set task=countdown
    python experiments/evaluate.py --workdir runs/r1_zero_tiny --set sampling.max_new_tokens=256 \
        --set sampling.temperature=0

Reads the model config, tokenizer and params that the phase runner saved in the
workdir; samples k completions per problem with `sampling` (default: the paper's
protocol, temperature 0.6, top-p 0.95, 96 new tokens) and writes per-problem
records to <workdir>/evaluate.jsonl. A workdir written by r1_zero or r1 records its held-out task in
task.json (the generator's settings, count and seed, or the JSONL file): that is what is evaluated
unless --data or --set says otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from r1jax.cli import add_common_flags, apply_overrides, parse_and_launch, run
from r1jax.config import SamplingSettings
from r1jax.data.arithmetic import ArithmeticConfig
from r1jax.data.countdown import CountdownConfig
from r1jax.errors import UsageError
from r1jax.recipes.r1_zero import TASK_FILE


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to evaluate on; a workdir's task.json (written by the recipes) gives the run's own task."""

    task: str = "arithmetic"  # or "countdown"; ignored with --data or test_jsonl
    problems: int = 256  # at most: the whole test split when it has fewer
    arithmetic: ArithmeticConfig = ArithmeticConfig(num_ops=2, max_value=9, ops=("+", "-"), allow_negative=False)
    countdown: CountdownConfig = CountdownConfig()
    k: int = 4
    sampling: SamplingSettings = SamplingSettings.for_evaluation(max_new_tokens=96)
    seed: int = 0
    test_jsonl: str = ""

    @classmethod
    def from_task_file(cls, path: str) -> EvalConfig:
        """The held-out task a run recorded in its workdir (r1jax.recipes.r1_zero.task_record)."""
        try:
            with open(path) as f:
                task = json.load(f)
            sampling = SamplingSettings.for_evaluation(max_new_tokens=int(task["max_new_tokens"]))
            if "test_jsonl" in task:
                return cls(test_jsonl=str(task["test_jsonl"]), sampling=sampling)
            settings = {k: tuple(v) if isinstance(v, list) else v for k, v in task[task["task"]].items()}
            generator = {"arithmetic": ArithmeticConfig, "countdown": CountdownConfig}[task["task"]](**settings)
            return cls(task=task["task"], problems=int(task["problems"]), seed=int(task["seed"]), sampling=sampling,
                       **{task["task"]: generator})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{path}: not a task file r1jax can read ({type(e).__name__}: {e})") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser, ["default"])
    parser.add_argument("--data", default=None, help="GSM8K/MATH-layout JSONL file to evaluate on")
    args = parse_and_launch(parser, argv)
    if args.workdir is None:
        parser.error("--workdir is required (a directory written by an experiment)")
    task_file = os.path.join(args.workdir, TASK_FILE)
    recorded = os.path.exists(task_file) and not args.data
    cfg = apply_overrides(EvalConfig.from_task_file(task_file) if recorded else EvalConfig(), args.overrides)

    import jax

    from r1jax import data, sharding
    from r1jax.checkpoint import Checkpointer
    from r1jax.config import ModelConfig
    from r1jax.evaluate import evaluate
    from r1jax.rewards import RewardPool
    from r1jax.tokenizer import Tokenizer

    ckpt_dir = os.path.join(args.workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise UsageError(f"--workdir {args.workdir}: no checkpoints/ folder (not a directory written by an "
                         "experiment, or the run has not saved yet)")
    with Checkpointer(ckpt_dir) as ckpt:
        saved, meta = ckpt.restore() if ckpt.latest_step() is not None else (None, None)
    if saved is None:
        raise UsageError(f"--workdir {args.workdir}: no checkpoint to evaluate in {ckpt_dir}")
    if "model" not in meta or not saved.get("params"):
        raise UsageError(f"--workdir {args.workdir}: the latest checkpoint holds no model "
                         f"(phase {meta.get('phase_name')!r})")
    model_cfg = ModelConfig.from_dict(meta["model"])
    tok = Tokenizer.load(os.path.join(args.workdir, "tokenizer.model"))
    if args.data or cfg.test_jsonl:
        problems = args.data or cfg.test_jsonl
    elif cfg.task == "arithmetic":
        problems = data.generate_arithmetic(cfg.arithmetic, "test", cfg.problems, cfg.seed, at_most=True)
    elif cfg.task == "countdown":
        problems = data.generate_countdown(cfg.countdown, "test", cfg.problems, cfg.seed, at_most=True)
    else:
        raise UsageError(f"task={cfg.task!r}: choose arithmetic or countdown, or pass --data")
    mesh = sharding.make_mesh(args.mesh) if args.mesh else sharding.single_device_mesh()
    with RewardPool(2, 10.0) as pool, sharding.use_mesh(mesh):
        params = sharding.place(saved["params"], mesh, model_cfg)
        result = evaluate(params, model_cfg, tok, problems, settings=cfg.sampling, template=data.R1_ZERO,
                          rng=jax.random.key(cfg.seed), k=cfg.k, pool=pool)
    count = f"{len(problems)} {cfg.task} test problems" if not isinstance(problems, str) else problems
    print(f"evaluated on {count}"
          + (f" (the run's task, {task_file})" if recorded else ""), file=sys.stderr)
    result.write_jsonl(os.path.join(args.workdir, "evaluate.jsonl"))
    print(json.dumps({k: round(v, 4) for k, v in result.summary().items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
