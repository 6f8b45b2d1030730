"""Objectives side by side: from one tiny R1-Zero base, the same RL phase once per objective and seed.

    run(CompareConfig(), "runs/compare_objectives")   # base (trained once), then every (objective, seed) arm

Layout of the workdir (each part resumes on its own; a finished arm is only read back):
  base/                     the tiny R1-Zero base (tokenizer + pretraining, as r1jax.recipes.r1_zero) and
                            its held-out evaluation; with `base=<workdir>` it is copied from that run's
                            latest checkpoint instead of trained
  arms/<objective>/seed<s>  InitFromPhase(base) → RLPhase("rl") → EvalPhase("final_eval"); arm.json holds
                            its settings, results and wall seconds once it is done
  summary.md, summary.json, curves.png

An objective is a dict of GRPOConfig overrides on top of the preset's GRPO settings (the paper's loss).
Every arm of a seed draws the same first prompts, the same step randomness and the same evaluation
problems; only the objective differs. Per metric the table gives the mean over seeds ± the
half-width of a 95% Student-t interval over seeds (t_{0.975, n−1}·sd/√n, r1jax.stats), and pass@1's paired
difference to "grpo" (seed by seed) with the same interval.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

from r1jax.config import GRPOConfig
from r1jax.data import R1_ZERO
from r1jax.errors import UsageError
from r1jax.recipes.r1_zero import SHORT_BASE, R1ZeroConfig, base_phases, default_rewards, problems, reward_pool
from r1jax.stats import mean_interval

OBJECTIVES: tuple[str, ...] = ("grpo", "dapo", "dr-grpo", "gspo", "cispo", "gmpo", "rloo", "reinforce++",
                               "grpo+entropy", "cispo+entropy")
DEFAULT_OBJECTIVES = OBJECTIVES[:-1]  # cispo+entropy only when asked for: it does not fit the 45-minute budget
CURVES = ("rl/reward/accuracy", "rl/reward/format", "rl/entropy", "rl/completion/length_mean")


def objective_overrides(grpo: GRPOConfig, entropy_coef: float = 1e-3) -> dict[str, dict[str, Any]]:
    """name → GRPOConfig overrides on top of `grpo` ("grpo": none, R1 Eq. 1–3 as the preset sets it)."""
    cispo = dict(policy_loss="cispo", aggregation="token-mean")  # MiniMax-M1 normalizes by all tokens
    return {
        "grpo": {},
        # DAPO (2503.14476): clip-higher 0.28, token-mean, dynamic sampling, soft overlong penalty over the
        # last fifth of the budget (the paper: 4,096 of 20,480 tokens)
        "dapo": dict(eps_high=0.28, aggregation="token-mean", dynamic_sampling=True, overlong="soft",
                     overlong_buffer=max(1, grpo.sampling.max_new_tokens // 5), overlong_penalty=1.0),
        "dr-grpo": dict(advantage="mean", aggregation="seq-mean-token-sum-norm"),  # 2503.20783: no std, no 1/|o|
        "gspo": dict(policy_loss="gspo"),  # 2507.18071, ε 3e-4 / 4e-4
        "cispo": cispo,  # 2506.13585
        "gmpo": dict(policy_loss="gmpo"),  # 2507.20673, ε 0.4 in log space
        "rloo": dict(advantage="rloo"),  # 2402.14740: leave-one-out baseline
        "reinforce++": dict(advantage="reinforce++"),  # 2501.03262: batch-normalized, no group baseline
        "grpo+entropy": dict(entropy_coef=entropy_coef),
        "cispo+entropy": dict(cispo, entropy_coef=entropy_coef),
    }


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """The base, the arms and their shared budget; each field can be set with --set."""

    data: R1ZeroConfig = SHORT_BASE  # base pretraining, problems, and the GRPO settings of the "grpo" arm
    base: str = ""  # an r1jax workdir whose latest checkpoint is the base; empty: train the tiny base here
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    seeds: tuple[int, ...] = (0, 1)
    rl_steps: int = 20
    entropy_coef: float = 1e-3  # of the "+entropy" arms
    tail_steps: int = 5  # entropy and train accuracy are averaged over the arm's last tail_steps RL steps

    def __post_init__(self):
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if not self.objectives or unknown:
            raise ValueError(f"CompareConfig: objectives={self.objectives} must be a non-empty subset of {OBJECTIVES}")
        if len(set(self.objectives)) != len(self.objectives) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"CompareConfig: objectives={self.objectives} and seeds={self.seeds} must not repeat")
        if not self.seeds:
            raise ValueError("CompareConfig: seeds must name at least one seed")
        if self.rl_steps < 1 or self.tail_steps < 1:
            raise ValueError(f"CompareConfig: rl_steps={self.rl_steps} and tail_steps={self.tail_steps} must be >= 1")
        if self.entropy_coef < 0:
            raise ValueError(f"CompareConfig: entropy_coef={self.entropy_coef} must be >= 0")


PRESETS: dict[str, CompareConfig] = {
    # the R1-Zero tiny base and GRPO settings; a held-out set of 128 problems (R1-Zero's: 64) for a tighter pass@1
    "tiny": CompareConfig(data=dataclasses.replace(SHORT_BASE, test_problems=128)),
}


def arm_grpo(cfg: CompareConfig, objective: str) -> GRPOConfig:
    """The GRPOConfig of one arm (validated by GRPOConfig itself; the error names the objective)."""
    overrides = objective_overrides(cfg.data.grpo, cfg.entropy_coef)[objective]
    try:
        return dataclasses.replace(cfg.data.grpo, **overrides)
    except (TypeError, ValueError) as e:
        raise UsageError(f"objective {objective!r} ({overrides}): {e}") from None


def check_config(cfg: CompareConfig) -> None:
    """Clear errors before anything trains: every arm's GRPOConfig, the base workdir."""
    for objective in cfg.objectives:
        arm_grpo(cfg, objective)
    if cfg.base and not os.path.isdir(os.path.join(cfg.base, "checkpoints")):
        raise FileNotFoundError(f"base={cfg.base!r} holds no r1jax run (no checkpoints/ inside)")
    if cfg.data.init_from:
        raise UsageError("data.init_from is not used here: set base=<r1jax workdir> to start from another run")


def _eval_phase(name: str, d: R1ZeroConfig, test: list) -> Any:
    from r1jax.phases import EvalPhase

    return EvalPhase(name, lambda: test, template=R1_ZERO, sampling=d.grpo.sampling.paper_evaluation(),
                     k=d.eval_k, rollout=d.grpo.rollout, **reward_pool(d))


def base_runner(cfg: CompareConfig, workdir: str, **runner_kwargs):
    """The Runner of `workdir/base`: the tiny base trained (or copied from `cfg.base`), then evaluated."""
    from r1jax.phases import InitFromPhase, Runner, source_model_config

    d = cfg.data
    train, test = problems(d)
    if cfg.base:
        model_cfg, phases = source_model_config(cfg.base), [InitFromPhase(cfg.base)]
    else:
        model_cfg, phases = base_phases(d, train)
    phases = phases + [_eval_phase("base_eval", d, test)]
    return Runner(os.path.join(workdir, "base"), model_cfg, phases, seed=d.seed,
                  checkpoint_every=d.checkpoint_every, keep_last=1, **runner_kwargs)


def arm_dir(workdir: str, objective: str, seed: int) -> str:
    return os.path.join(workdir, "arms", objective, f"seed{seed}")


def arm_runner(cfg: CompareConfig, workdir: str, objective: str, seed: int, **runner_kwargs):
    """The Runner of one arm: the base's params, `rl_steps` of RL with the objective, a held-out evaluation."""
    from r1jax.phases import InitFromPhase, RLPhase, Runner, source_model_config

    d = cfg.data
    train, test = problems(d)
    base = os.path.join(workdir, "base")
    phases = [InitFromPhase(base),
              RLPhase("rl", lambda: train, default_rewards(d), R1_ZERO, steps=cfg.rl_steps,
                      grpo=arm_grpo(cfg, objective), optimizer=d.rl_optimizer, eval_every=0, **reward_pool(d)),
              _eval_phase("final_eval", d, test)]
    return Runner(arm_dir(workdir, objective, seed), source_model_config(base), phases, seed=seed,
                  checkpoint_every=d.checkpoint_every, keep_last=1, **runner_kwargs)


def arm_settings(cfg: CompareConfig, objective: str, seed: int) -> dict[str, Any]:
    """What makes an arm's result: a finished arm is reused only if these are unchanged."""
    rl = {"grpo": dataclasses.asdict(arm_grpo(cfg, objective)), "rl_steps": cfg.rl_steps,
          "rl_optimizer": dataclasses.asdict(cfg.data.rl_optimizer)}
    arm = json.loads(json.dumps({"objective": objective, "seed": seed, "rl": rl}, default=str))
    return {**base_settings(cfg), **arm}


def _conflicts(old: Any, new: Any, path: str = "") -> list[str]:
    """The settings that differ, as `path: old -> new`; fields only one side has (added to r1jax since) are not."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in old if k in new for c in _conflicts(old[k], new[k], f"{path}.{k}" if path else k)]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def base_settings(cfg: CompareConfig) -> dict[str, Any]:
    """What makes the base and its evaluation (the RL settings do not)."""
    d = dataclasses.asdict(cfg.data)
    d["grpo"] = {k: d["grpo"][k] for k in ("sampling", "rollout")}  # the evaluation's sampling
    for name in ("rl_steps", "rl_optimizer", "eval_every", "checkpoint_every", "rollout_log"):
        d.pop(name, None)
    return json.loads(json.dumps({"base": cfg.base, "data": d}, default=str))


def run_arm(cfg: CompareConfig, workdir: str, objective: str, seed: int, **runner_kwargs) -> dict[str, Any]:
    """Run (or resume, or only read back) one arm; its arm.json record, with "skipped" if it was done before."""
    directory = arm_dir(workdir, objective, seed)
    path, settings_path = os.path.join(directory, "arm.json"), os.path.join(directory, "settings.json")
    settings = arm_settings(cfg, objective, seed)
    for known in (settings_path, path):  # settings.json is written when the arm starts, arm.json when it ends
        if os.path.exists(known):
            with open(known) as f:
                record = json.load(f)
            conflicts = _conflicts(record.get("settings", record), settings)
            if conflicts:
                raise UsageError(f"{directory} was made with other settings ({', '.join(conflicts)}): remove it "
                                 "or use another --workdir")
    if os.path.exists(path):
        return {**record, "skipped": True}
    os.makedirs(directory, exist_ok=True)
    with open(settings_path, "w") as f:
        json.dump(settings, f, indent=1)
    start = time.perf_counter()
    carry = arm_runner(cfg, workdir, objective, seed, **runner_kwargs).run()
    record = {"objective": objective, "seed": seed, "settings": settings, "seconds": time.perf_counter() - start,
              "overrides": objective_overrides(cfg.data.grpo, cfg.entropy_coef)[objective],
              "final_eval": carry.results["final_eval"],
              **rl_summary(os.path.join(arm_dir(workdir, objective, seed), "metrics.jsonl"), cfg.tail_steps)}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, path)  # written last: its presence means the arm is done
    return {**record, "skipped": False}


def rl_summary(metrics_path: str, tail_steps: int) -> dict[str, Any]:
    """From an arm's metrics.jsonl: the RL curves, tail means of entropy / train accuracy, mean clip fractions."""
    from r1jax.metrics import read_metrics

    records = [r for r in read_metrics(metrics_path) if "rl/reward/mean" in r]
    curves = {k: [r.get(k, math.nan) for r in records] for k in CURVES}
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    col = lambda k: [r[k] for r in records if k in r]  # noqa: E731
    times = [r["time"] for r in records]
    return {"curves": curves,
            "entropy": mean(col("rl/entropy")[-tail_steps:]),
            "train_accuracy": mean(col("rl/reward/accuracy")[-tail_steps:]),
            "clip_low_frac": mean(col("rl/clip_low_frac")), "clip_high_frac": mean(col("rl/clip_high_frac")),
            "train_length": mean(col("rl/completion/length_mean")),
            # steady-state seconds per RL step (compilation is in the first)
            "step_s": (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else math.nan}


def run(cfg: CompareConfig, workdir: str, **runner_kwargs) -> dict[str, Any]:
    """The base, then every arm not done yet; {"base": base_eval results, "arms": [arm records]}."""
    check_config(cfg)
    runner = base_runner(cfg, workdir, **runner_kwargs)
    timing_path, settings = os.path.join(runner.workdir, "timing.json"), base_settings(cfg)
    timing = {"seconds": 0.0, "settings": settings}
    if os.path.exists(timing_path):
        with open(timing_path) as f:
            timing = json.load(f)
        if _conflicts(timing["settings"], settings):
            raise UsageError(f"{runner.workdir} holds a base made with other settings "
                             f"({', '.join(_conflicts(timing['settings'], settings))}): use another --workdir")
    start = time.perf_counter()
    base = runner.run().results["base_eval"]
    if not timing.get("done"):  # the base's wall seconds, summed over the runs that trained it
        timing = {**timing, "seconds": timing["seconds"] + time.perf_counter() - start}
    with open(timing_path, "w") as f:
        json.dump({**timing, "done": True}, f)
    arms = []
    todo = [(o, s) for s in cfg.seeds for o in cfg.objectives]  # seed-major: a cut-short run has whole seeds
    for i, (objective, seed) in enumerate(todo):
        print(f"[compare] {i + 1}/{len(todo)} {objective} seed {seed}", flush=True)
        arms.append(run_arm(cfg, workdir, objective, seed, **runner_kwargs))
    return {"base": base, "base_seconds": timing["seconds"], "arms": arms,
            "seconds": timing["seconds"] + sum(a["seconds"] for a in arms)}


# ----------------------------------------------------------------------------------------------- report
COLUMNS = (("held-out pass@1", lambda a: a["final_eval"]["pass@1"], ".3f"),  # (label, value of an arm, format)
           ("format", lambda a: a["final_eval"]["format"], ".3f"),
           ("length", lambda a: a["final_eval"]["length_mean"], ".1f"),
           ("train acc (last)", lambda a: a["train_accuracy"], ".3f"),
           ("entropy (last)", lambda a: a["entropy"], ".4f"),
           ("clip low", lambda a: a["clip_low_frac"], ".1e"),
           ("clip high", lambda a: a["clip_high_frac"], ".1e"),
           ("wall s", lambda a: a["seconds"], ".0f"))


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Per objective and column: the per-seed values, their mean and the t-interval half-width."""
    by_objective: dict[str, list[dict]] = {}
    for arm in result["arms"]:
        by_objective.setdefault(arm["objective"], []).append(arm)
    grpo = {a["seed"]: a["final_eval"]["pass@1"] for a in by_objective.get("grpo", [])}
    rows = {}
    for objective, arms in by_objective.items():
        row = {}
        for label, get, _ in COLUMNS:
            values = [float(get(a)) for a in arms]
            mean, half = mean_interval(values)
            row[label] = {"values": values, "mean": mean, "ci95": half}
        diffs = [a["final_eval"]["pass@1"] - grpo[a["seed"]] for a in arms if a["seed"] in grpo]
        if diffs and objective != "grpo":
            mean, half = mean_interval(diffs)
            row["pass@1 - grpo (paired)"] = {"values": diffs, "mean": mean, "ci95": half}
        rows[objective] = {"seeds": [a["seed"] for a in arms], "overrides": arms[0]["overrides"],
                           "columns": row}
    return {"base": result["base"], "rows": rows, "seconds": result["seconds"],
            "base_seconds": result["base_seconds"]}


def _cell(entry: dict | None, spec: str) -> str:
    if entry is None:
        return "—"
    mean, half = entry["mean"], entry["ci95"]
    return f"{mean:{spec}}" if math.isnan(half) else f"{mean:{spec}} ± {half:{spec}}"


def table(summary: dict[str, Any]) -> str:
    """Markdown: one row per objective, mean ± 95% t-interval half-width over seeds, and the base."""
    labels = [label for label, _, _ in COLUMNS]
    lines = ["| objective | seeds | " + " | ".join(labels[:1]) + " | Δ pass@1 vs grpo (paired) | "
             + " | ".join(labels[1:]) + " |", "|---" * (len(labels) + 3) + "|"]
    for objective, row in summary["rows"].items():
        c = row["columns"]
        cells = [_cell(c[labels[0]], ".3f"), _cell(c.get("pass@1 - grpo (paired)"), ".3f")]
        cells += [_cell(c[label], spec) for label, _, spec in COLUMNS[1:]]
        lines.append(f"| {objective} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
    b = summary["base"]
    lines.append(f"| base (before RL) | — | {b['pass@1']:.3f} | — | {b['format']:.3f} | {b['length_mean']:.1f} | "
                 + " | ".join("—" for _ in COLUMNS[3:]) + " |")
    return "\n".join(lines)


def plot_curves(result: dict[str, Any], out_png: str) -> str:
    """One panel per CURVES key, one line per objective (the mean over its seeds) against the RL step."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, global backend untouched

    by_objective: dict[str, list[dict]] = {}
    for arm in result["arms"]:
        by_objective.setdefault(arm["objective"], []).append(arm["curves"])
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    styles = ("-", "--", ":", "-.")
    for ax, key in zip(axes, CURVES):
        for i, (objective, curves) in enumerate(by_objective.items()):
            steps = min(len(c[key]) for c in curves)
            ys = [sum(c[key][t] for c in curves) / len(curves) for t in range(steps)]
            ax.plot(range(1, steps + 1), ys, styles[i // 10 % 4], color=f"C{i % 10}", linewidth=1.3,
                    label=objective)
        ax.set_title(key + " (mean over seeds)")
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    fig.savefig(out_png, dpi=80)
    return out_png


def report(results: dict[str, Any], workdir: str) -> str:
    """summary.md (table + plot), summary.json (every per-seed value) and curves.png in `workdir`."""
    from r1jax.cli import save_summary

    summary = summarize(results)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    plot = plot_curves(results, os.path.join(workdir, "curves.png"))
    text = (table(summary) + "\n\nmean over seeds ± half-width of the 95% Student-t interval over seeds; "
            f"wall time {summary['seconds']:.0f} s (base {summary['base_seconds']:.0f} s + the arms', "
            f"summed over runs)\n\n![curves]({os.path.basename(plot)})")
    save_summary(workdir, text)
    return text


__all__ = ["CURVES", "CompareConfig", "DEFAULT_OBJECTIVES", "OBJECTIVES", "PRESETS", "arm_grpo",
           "arm_runner", "base_runner", "check_config", "objective_overrides", "plot_curves", "report",
           "rl_summary", "run", "run_arm", "summarize", "table"]
