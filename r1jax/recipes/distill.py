"""Distillation (DeepSeek-R1 §2.4, §4.1): a small student trained on an RL teacher's rejection-sampled
traces, against the same student trained by RL alone.

Four stages, each a Runner in its own subdirectory of the workdir (each resumes on its own):
  student_base    the student's tokenizer from the teacher (same vocabulary), then the student
                  pretrained on the same synthetic base corpus as the teacher's base;
  teacher_traces  the teacher (an r1jax workdir, e.g. runs/r1_zero_tiny) is evaluated, then
                  samples k completions per training problem; correct, well-formed,
                  single-language ones are kept as an SFT dataset (traces.jsonl);
  distilled       the student base, SFT on the traces (plain SFT as in the paper; set
                  kd_alpha > 0 to add logit distillation from the teacher), then evaluated;
  rl_only         the student base, GRPO with the teacher's rewards, then evaluated.
Every stage's wall time is recorded (timing.json), so the two arms' compute can be compared:
the distilled arm pays for the teacher's sampling plus the student's SFT.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

from r1jax.config import LoRAConfig, ModelConfig, OptimizerConfig
from r1jax.data import R1_ZERO
from r1jax.recipes.r1_zero import (SHORT_BASE, R1ZeroConfig, base_corpus, before_after_table, check_lora,
                                   default_rewards, problems, reward_pool)

STAGES = ("student_base", "teacher_traces", "distilled", "rl_only")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Teacher workdir, student model, and the budgets of both arms; each field can be set with --set."""

    teacher: str = os.path.join("runs", "r1_zero_tiny")  # written by `python experiments/r1_zero.py`
    data: R1ZeroConfig = SHORT_BASE  # problems, base corpus and the GRPO settings of the RL arm
    student: ModelConfig = ModelConfig(vocab_size=512, embed_dim=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                       head_dim=32, mlp_dim=256, max_len=512)
    student_pretrain_steps: int = 500
    trace_problems: int = 1000
    trace_k: int = 4
    traces_per_problem: int = 2
    trace_temperature: float = 0.7
    distill_steps: int = 300
    distill_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3, warmup_steps=10, weight_decay=0.01)
    kd_alpha: float = 0.0  # > 0: add logit distillation from the teacher to the SFT loss
    kd_temperature: float = 1.0
    rl_steps: int = 40
    lora: LoRAConfig = LoRAConfig()  # rank > 0: the distillation SFT and the RL arm train LoRA adapters on the student


PRESETS: dict[str, DistillConfig] = {"tiny": DistillConfig()}

# the paired differences a seed sweep reports (experiments/sweep.py distill), each seed against itself
SWEEP_CHANGES = {"distilled − RL alone": ("distilled/final_eval", "rl_only/final_eval"),
                 "distilled − student base": ("distilled/final_eval", "student_base/final_eval"),
                 "RL alone − student base": ("rl_only/final_eval", "student_base/final_eval")}


def check_teacher(cfg: DistillConfig) -> None:
    """A clear error when the teacher run is missing."""
    if not os.path.isdir(os.path.join(cfg.teacher, "checkpoints")):
        raise FileNotFoundError(f"teacher={cfg.teacher!r} holds no r1jax run: train one first with "
                                f"`python experiments/r1_zero.py --workdir {cfg.teacher}` (or --set teacher=...)")


check_config = check_teacher  # what a seed sweep checks for every seed before the first one runs


def build(cfg: DistillConfig, workdir: str, **runner_kwargs) -> dict[str, Any]:
    """The four stage Runners, in order (see the module docstring)."""
    from r1jax.phases import (EvalPhase, InitFromPhase, RejectionSamplingPhase, RLPhase, Runner, SFTPhase,
                              read_sft_jsonl, source_model_config)

    check_teacher(cfg)
    d = cfg.data
    check_lora(cfg.lora, d.lora, "data.lora")
    train, test = problems(d)
    corpus = base_corpus(d, train)
    student = dataclasses.replace(cfg.student, vocab_size=d.vocab_size)
    pool = reward_pool(d)
    evaluation = dict(template=R1_ZERO, sampling=d.grpo.sampling.paper_evaluation(), k=d.eval_k, rollout=d.grpo.rollout,
                      **pool)
    base_dir, traces_dir = os.path.join(workdir, "student_base"), os.path.join(workdir, "teacher_traces")
    traces = RejectionSamplingPhase("traces", lambda: train[:cfg.trace_problems], R1_ZERO,
                                    sampling=dataclasses.replace(d.grpo.sampling, temperature=cfg.trace_temperature),
                                    k=cfg.trace_k, max_per_problem=cfg.traces_per_problem,
                                    rollout=d.grpo.rollout, **pool)
    traces_path = os.path.join(traces_dir, f"{traces.name}.jsonl")
    common = dict(seed=d.seed, checkpoint_every=d.checkpoint_every, **runner_kwargs)
    return {
        "student_base": Runner(base_dir, student, [
            InitFromPhase(cfg.teacher, name="teacher_tokenizer", tokenizer_only=True),
            SFTPhase("pretrain", lambda: corpus, steps=cfg.student_pretrain_steps, batch_size=d.pretrain_batch,
                     seq_len=d.seq_len, optimizer=d.pretrain_optimizer),
            EvalPhase("final_eval", lambda: test, **evaluation),
        ], **common),
        "teacher_traces": Runner(traces_dir, source_model_config(cfg.teacher), [
            InitFromPhase(cfg.teacher),
            EvalPhase("final_eval", lambda: test, **evaluation),
            traces,
        ], **common),
        "distilled": Runner(os.path.join(workdir, "distilled"), student, [
            InitFromPhase(base_dir),
            SFTPhase("distill", lambda: read_sft_jsonl(traces_path), steps=cfg.distill_steps,
                     batch_size=d.pretrain_batch, seq_len=d.seq_len, optimizer=cfg.distill_optimizer,
                     teacher=cfg.teacher if cfg.kd_alpha > 0 else "", kd_alpha=cfg.kd_alpha,
                     kd_temperature=cfg.kd_temperature, lora=cfg.lora),
            EvalPhase("final_eval", lambda: test, **evaluation),
        ], **common),
        "rl_only": Runner(os.path.join(workdir, "rl_only"), student, [
            InitFromPhase(base_dir),
            RLPhase("rl", lambda: train, default_rewards(), R1_ZERO, steps=cfg.rl_steps, grpo=d.grpo,
                    optimizer=d.rl_optimizer, eval_problems=lambda: test, eval_every=d.eval_every,
                    eval_k=d.eval_k, lora=cfg.lora, **pool),
            EvalPhase("final_eval", lambda: test, **evaluation),
        ], **common),
    }


def run(cfg: DistillConfig, workdir: str, **runner_kwargs) -> dict[str, dict]:
    """Run (or resume) every stage; per stage: its results plus the wall seconds spent on it, all runs summed."""
    out = {}
    for name, runner in build(cfg, workdir, **runner_kwargs).items():
        timing_path = os.path.join(runner.workdir, "timing.json")
        timing = {"seconds": 0.0}
        if os.path.exists(timing_path):
            with open(timing_path) as f:
                timing = json.load(f)
        start = time.perf_counter()
        carry = runner.run()
        if not timing.get("done"):
            timing = {"seconds": timing["seconds"] + time.perf_counter() - start, "done": True}
            with open(timing_path, "w") as f:
                json.dump(timing, f)
        out[name] = {**carry.results, "seconds": timing["seconds"]}
    return out


def sweep_results(cfg: DistillConfig, workdir: str, **runner_kwargs) -> dict[str, dict]:
    """`run`'s results as a seed sweep reads them: "<stage>/<phase>" → that phase's results."""
    return {f"{stage}/{name}": dict(r) for stage, results in run(cfg, workdir, **runner_kwargs).items()
            for name, r in results.items() if isinstance(r, dict)}


def report(results: dict[str, dict], workdir: str) -> str:
    """Markdown: held-out metrics of the student base, the teacher, the distilled and the RL-only student,
    from `run`'s results; also written to workdir/summary.md."""
    from r1jax.cli import save_summary
    from r1jax.evaluate import cons_key

    rows = [("student base", results["student_base"]), ("teacher", results["teacher_traces"]),
            ("student, distilled", results["distilled"]), ("student, RL alone", results["rl_only"])]
    lines = ["| model | pass@1 | cons@k | format | completion length | stage wall time (s) |",
             "|---|---|---|---|---|---|"]
    for label, r in rows:
        ev = r.get("final_eval", {})
        cons = ev.get(cons_key(ev), float("nan"))
        lines.append(f"| {label} | {ev.get('pass@1', float('nan')):.3f} | {cons:.3f} | "
                     f"{ev.get('format', float('nan')):.3f} | {ev.get('length_mean', float('nan')):.1f} | "
                     f"{r['seconds']:.0f} |")
    kept = results["teacher_traces"].get("traces", {})
    distill_s = results["teacher_traces"]["seconds"] + results["distilled"]["seconds"]
    lines.append(f"\nteacher traces kept: {kept.get('kept', 0):.0f} of {kept.get('sampled', 0):.0f} samples; "
                 f"distilled arm (traces + SFT) {distill_s:.0f} s vs RL alone {results['rl_only']['seconds']:.0f} s")
    text = "\n".join(lines)
    save_summary(workdir, text)
    return text


__all__ = ["DistillConfig", "PRESETS", "STAGES", "SWEEP_CHANGES", "before_after_table", "build", "check_config",
           "check_teacher", "report", "run", "sweep_results"]

