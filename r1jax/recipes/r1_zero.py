"""R1-Zero: GRPO straight from a base model with rule-based rewards only (DeepSeek-R1 §2.2).

The tiny preset needs no download: it trains a tokenizer and a ~1M-parameter
base model on a synthetic corpus of 2,000 two-step arithmetic problems (+ and −
on 1..9) with worked solutions: 30% written in the R1 <think>/<answer> format,
70% as plain prose ending "The answer is N.", 20% with an arithmetic slip and
10% with a "wait, let me recheck" correction. The base sees the R1-Zero prompt
in context; its loss is on the solutions. Then GRPO with accuracy + format
rewards, equal weights, on the R1-Zero template.

The real presets start from a local Hugging Face folder (`init_from`, e.g. a
Qwen2.5-1.5B download) and train on local GSM8K / MATH JSONL files
(`train_jsonl`, `test_jsonl`) with the paper's GRPO settings.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from typing import Any

from r1jax.config import (Execution, GRPOConfig, LoRAConfig, ModelConfig, MoEConfig, OptimizerConfig,
                          SamplingSettings)
from r1jax.data import (R1_ZERO, ArithmeticConfig, CountdownConfig, generate_arithmetic, generate_countdown,
                        load_jsonl, worked_solution)
from r1jax.errors import UsageError
from r1jax.report.rollouts import RolloutLog


def pretrain_optimizer(steps: int, warmup: int = 30) -> OptimizerConfig:
    """The tiny base's AdamW: lr 3e-3, `warmup` steps, then cosine decay over the rest of `steps`."""
    return OptimizerConfig(learning_rate=3e-3, warmup_steps=warmup, decay_steps=steps - warmup, weight_decay=0.01)


@dataclasses.dataclass(frozen=True)
class R1ZeroConfig:
    """Everything an R1-Zero run uses; each field can be set with --set."""

    seed: int = 0
    init_from: str = ""  # a Hugging Face folder or r1jax workdir; empty: tokenizer + tiny base trained here
    init: Execution = Execution()  # how the init_from model runs: init.dtype, init.remat, init.scan_layers, …
    train_jsonl: str = ""  # GSM8K / MATH layout; empty: generated arithmetic
    test_jsonl: str = ""
    task: ArithmeticConfig = ArithmeticConfig(num_ops=2, max_value=9, ops=("+", "-"), allow_negative=False)
    countdown: CountdownConfig | None = None  # set: the run is Countdown (TinyZero's task) instead of arithmetic
    train_problems: int = 2000
    test_problems: int = 256  # held out: at most this many, the whole test split when it has fewer (tiny: 233)
    base_error_rate: float = 0.2
    base_recheck_rate: float = 0.1
    base_r1_format_share: float = 0.3
    vocab_size: int = 512
    model: ModelConfig = ModelConfig(vocab_size=512, embed_dim=128, num_layers=4, num_heads=4, num_kv_heads=2,
                                     head_dim=32, mlp_dim=512, max_len=512)
    pretrain_steps: int = 1500  # 500 left the base slipping in a third of its steps: too weak for RL to fix
    pretrain_batch: int = 32
    seq_len: int = 224
    pretrain_optimizer: OptimizerConfig = pretrain_optimizer(1500)  # with another pretrain_steps, set its decay too
    rl_steps: int = 60
    grpo: GRPOConfig = GRPOConfig(group_size=8, prompts_per_step=16, sampling=SamplingSettings(max_new_tokens=96),
                                  num_minibatches=2,
                                  kl_beta=0.0, logprob_chunk=96)
    rl_optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-4)
    reward_workers: int = 2  # the reward pool of every phase that scores samples (RL, evaluation, rejection sampling)
    reward_timeout_s: float = 10.0  # per sample; a code reward needs far more (experiments/code_rl.py: 120)
    eval_every: int = 20
    eval_k: int = 4
    checkpoint_every: int = 20
    rollout_log: RolloutLog = RolloutLog()  # RL steps saved whole for the report: rollout_log.every, .max_rows
    lora: LoRAConfig = LoRAConfig()  # rank > 0: GRPO trains LoRA adapters on the frozen base (lora.rank, .targets)


SHORT_BASE = R1ZeroConfig(pretrain_steps=500, pretrain_optimizer=pretrain_optimizer(500),
                          rl_steps=40, rl_optimizer=OptimizerConfig(learning_rate=5e-5))
"""The tiny base before the 1,500-step one (500 pretraining steps, 40 RL steps at lr 5e-5): the R1, distillation
and objective-comparison recipes keep it, since README's tables for them were measured on it (`--set
base.pretrain_steps=1500 --set base.pretrain_optimizer.decay_steps=1470 …` moves one over). Held out: the whole
test split, as the defaults."""


def _real(max_new_tokens: int, params_over_data: bool = False) -> R1ZeroConfig:
    """The paper's GRPO settings (PAPER.md: lr 3e-6, KL 0.001, G 16) for a model loaded from `init_from`.

    Runs as an accelerator user wants it: bf16 compute on f32 master weights, every block
    rematerialized, layers scanned; with `params_over_data` (the 7B preset) the train state splits over
    the whole mesh, so `--mesh=8x8` holds 1/64 of it per device (fits 16 GiB; README plan). 8 minibatches of 64 rows (the paper: 16 of 32), so that a
    minibatch splits over the 64 devices of an 8x8 mesh; on 32 data devices or fewer
    `--set grpo.num_minibatches=16` gives the paper's.
    """
    return R1ZeroConfig(
        pretrain_steps=0, rl_steps=1000, eval_every=100, eval_k=16, checkpoint_every=50,
        init=Execution(param_dtype="float32", dtype="bfloat16", remat="full", scan_layers=True,
                       params_over_data=params_over_data),
        grpo=GRPOConfig(group_size=16, prompts_per_step=32, sampling=SamplingSettings(max_new_tokens=max_new_tokens),
                        num_minibatches=8, kl_beta=0.001, logprob_chunk=512),
        rl_optimizer=OptimizerConfig(learning_rate=3e-6, warmup_steps=10, weight_decay=0.1),
        rollout_log=RolloutLog(every=10, max_rows=64))  # 64 rows × 4–8k tokens: a few MB a saved step


def _tiny_moe() -> R1ZeroConfig:
    """The tiny preset with DeepSeek-V3-style MoE feed-forwards (sigmoid router, group-limited, 1 shared expert)."""
    moe = MoEConfig(num_experts=8, top_k=2, expert_dim=128, num_shared_experts=1, num_groups=4, topk_groups=2,
                    routed_scaling_factor=2.5, first_k_dense=1, seq_aux_alpha=1e-4)
    tiny = R1ZeroConfig()
    return dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, moe=moe))


def _tiny_countdown() -> R1ZeroConfig:
    """The tiny preset on Countdown (TinyZero's task) at laptop size: three numbers of 1–20, targets up to 60."""
    return R1ZeroConfig(countdown=CountdownConfig(min_numbers=3, max_numbers=3, max_number=20, max_target=60))


PRESETS: dict[str, R1ZeroConfig] = {
    "tiny": R1ZeroConfig(),
    "tiny-moe": _tiny_moe(),
    "tiny-countdown": _tiny_countdown(),
    "qwen2.5-1.5b": _real(4096),
    "qwen2.5-7b": _real(8192, params_over_data=True),
}


def check_lora(lora: LoRAConfig, nested: LoRAConfig, nested_name: str) -> None:
    """A recipe that takes `lora` at its top level ignores the one inside its R1-Zero settings: say so if set."""
    if nested.rank:
        raise UsageError(f"{nested_name}.rank={nested.rank} is not read by this recipe: set lora.rank "
                         f"(--set lora.rank={nested.rank}), which adapts every stage after the base")


def check_config(cfg: R1ZeroConfig, preset: str = "") -> None:
    """Clear errors for settings that cannot run (a real preset without its local files)."""
    where = f"preset {preset!r}: " if preset else ""
    if cfg.pretrain_steps == 0 and not cfg.init_from:
        raise UsageError(f"{where}set init_from=<local Hugging Face folder> (e.g. a Qwen2.5 download); "
                         "r1jax never downloads weights")
    if cfg.init_from and not os.path.exists(cfg.init_from):
        raise FileNotFoundError(f"init_from={cfg.init_from!r} does not exist")
    for field in ("train_jsonl", "test_jsonl"):
        path = getattr(cfg, field)
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{field}={path!r} is not a file")
    if cfg.init_from and not (cfg.train_jsonl and cfg.test_jsonl):
        raise UsageError(f"{where}a model loaded from init_from needs train_jsonl and test_jsonl "
                         "(GSM8K or MATH layout JSONL files)")


def problems(cfg: R1ZeroConfig) -> tuple[list, list]:
    """(train, test) problems: the JSONL files if given, else generated Countdown or arithmetic."""
    if cfg.train_jsonl:
        return list(load_jsonl(cfg.train_jsonl)), list(load_jsonl(cfg.test_jsonl))
    if cfg.countdown is not None:
        return (list(generate_countdown(cfg.countdown, "train", cfg.train_problems, seed=cfg.seed)),
                list(generate_countdown(cfg.countdown, "test", cfg.test_problems, seed=cfg.seed, at_most=True)))
    return (list(generate_arithmetic(cfg.task, "train", cfg.train_problems, seed=cfg.seed)),
            list(generate_arithmetic(cfg.task, "test", cfg.test_problems, seed=cfg.seed, at_most=True)))


TASK_FILE = "task.json"  # in a workdir: the held-out task the run evaluates on (experiments/evaluate.py reads it)


def task_record(cfg: R1ZeroConfig) -> str:
    """The run's held-out task as JSON text (the JSONL file, or the generator's settings, count and seed);
    the Runner writes it to `workdir/task.json` when the run starts."""
    if cfg.test_jsonl:
        task = {"test_jsonl": os.path.abspath(cfg.test_jsonl)}
    elif cfg.countdown is not None:
        task = {"task": "countdown", "countdown": dataclasses.asdict(cfg.countdown), "problems": cfg.test_problems,
                "seed": cfg.seed}
    else:
        task = {"task": "arithmetic", "arithmetic": dataclasses.asdict(cfg.task), "problems": cfg.test_problems,
                "seed": cfg.seed}
    task["max_new_tokens"] = cfg.grpo.sampling.max_new_tokens
    return json.dumps(task, indent=1) + "\n"


def base_corpus(cfg: R1ZeroConfig, problems) -> list[tuple[str, str]]:
    """(prompt, worked solution) pairs; a share of solutions in the R1 format, the rest as plain prose."""
    rng = random.Random(cfg.seed)
    texts = []
    for p in problems:
        sol = worked_solution(p, rng, error_rate=cfg.base_error_rate, self_correct_rate=cfg.base_recheck_rate)
        if rng.random() < cfg.base_r1_format_share:
            completion = " " + sol.render()
        else:
            completion = f" {sol.reasoning.strip()}\nThe answer is {sol.answer}."
        texts.append((R1_ZERO.render(p.question), completion))
    return texts


def base_phases(cfg: R1ZeroConfig, train) -> tuple[ModelConfig, list]:
    """(model config, phases) that produce the starting policy: loaded from init_from, or tokenizer + tiny base."""
    from r1jax.phases import InitFromPhase, SFTPhase, TokenizerPhase, source_model_config

    if cfg.init_from:
        return source_model_config(cfg.init_from, cfg.init), [InitFromPhase(cfg.init_from, execution=cfg.init)]
    corpus = base_corpus(cfg, train)
    return cfg.model, [
        TokenizerPhase(texts=lambda: [p + c for p, c in corpus], vocab_size=cfg.vocab_size),
        # the base sees the template in context, but its loss is on the solutions (the template is fixed text)
        SFTPhase("pretrain", lambda: corpus, steps=cfg.pretrain_steps,
                 batch_size=cfg.pretrain_batch, seq_len=cfg.seq_len, optimizer=cfg.pretrain_optimizer),
    ]


def default_rewards(cfg: R1ZeroConfig | None = None) -> dict[str, Any]:
    """Accuracy + format, equal weights (R1-Zero's rule-based rewards); for Countdown the equation's check
    (numbers used once, target reached: TinyZero's reward without its 0.1 for form, which format pays) + format."""
    from r1jax.rewards import WeightedReward, accuracy_reward, format_reward, make_countdown_reward

    correct = (accuracy_reward if cfg is None or cfg.countdown is None or cfg.train_jsonl
               else make_countdown_reward(format_score=0.0))
    return {"accuracy": WeightedReward(correct, 1.0), "format": WeightedReward(format_reward, 1.0)}


def reward_pool(cfg: R1ZeroConfig) -> dict[str, Any]:
    """The reward-pool settings every scoring phase of a run takes (RLPhase, EvalPhase, RejectionSamplingPhase)."""
    return dict(reward_workers=cfg.reward_workers, reward_timeout_s=cfg.reward_timeout_s)


def build(cfg: R1ZeroConfig, workdir: str, rewards: dict[str, Any] | None = None, **runner_kwargs):
    """The R1-Zero Runner: base → base_eval → rl → final_eval; `rewards` swaps the reward functions."""
    from r1jax.phases import EvalPhase, RLPhase, Runner

    train, test = problems(cfg)
    model_cfg, phases = base_phases(cfg, train)
    pool = reward_pool(cfg)
    evaluation = dict(template=R1_ZERO, sampling=cfg.grpo.sampling.paper_evaluation(), k=cfg.eval_k,
                      rollout=cfg.grpo.rollout, **pool)
    phases += [
        EvalPhase("base_eval", lambda: test, **evaluation),
        RLPhase("rl", lambda: train, rewards or default_rewards(cfg), R1_ZERO, steps=cfg.rl_steps, grpo=cfg.grpo,
                optimizer=cfg.rl_optimizer, eval_problems=lambda: test, eval_every=cfg.eval_every,
                eval_k=cfg.eval_k, rollout_log=cfg.rollout_log, lora=cfg.lora, **pool),
        EvalPhase("final_eval", lambda: test, **evaluation),
    ]
    return Runner(workdir, model_cfg, phases, seed=cfg.seed, checkpoint_every=cfg.checkpoint_every,
                  files={TASK_FILE: task_record(cfg)}, **runner_kwargs)


def before_after_table(before: dict, after: dict, columns: tuple[str, str] = ("base", "after GRPO")) -> str:
    """Markdown table of pass@1, cons@k, format, completion length and what the reasoning shows, before and after."""
    from r1jax.evaluate import cons_key

    cons = cons_key(after) or ""
    rows = [("pass@1", "pass@1"), ("cons@k", cons), ("format", "format"), ("completion length", "length_mean"),
            ("lenient pass@1 (answer outside the format too)", "lenient_pass@1"),
            ("accuracy among well-formed", "accuracy_well_formed"), ("slip rate (per step)", "slip_rate"),
            ("self-correction rate (of slips)", "self_correction_rate"), ("recheck rate", "recheck_rate")]
    lines = [f"| held-out metric | {columns[0]} | {columns[1]} |", "|---|---|---|"]
    for label, key in rows:
        if key in before and key in after:
            lines.append(f"| {label} | {before[key]:.3f} | {after[key]:.3f} |")
    return "\n".join(lines)


def report(results: dict[str, Any], workdir: str) -> str:
    """Before/after table of the run's `results` (Runner.run().results), also in workdir/summary.md, and PNG
    plots of its curves; every recipe's report takes (results, workdir)."""
    from r1jax.cli import save_summary
    from r1jax.metrics import plot_metrics

    table = before_after_table(results.get("base_eval", {}), results.get("final_eval", {}))
    plot = os.path.join(workdir, "curves.png")
    plot_metrics(os.path.join(workdir, "metrics.jsonl"),
                 ["rl/reward/mean", "rl/reward/accuracy", "rl/reward/format", "rl/eval/pass@1", "rl/eval/format",
                  "rl/completion/length_mean"], plot)
    save_summary(workdir, table + f"\n\n![curves]({os.path.basename(plot)})")
    return table + f"\n\nplots: {plot}"
