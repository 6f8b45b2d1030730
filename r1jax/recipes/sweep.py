"""One recipe over several seeds: a table of mean ± 95% interval per held-out metric, and curves with bands.

    from r1jax.recipes import r1_zero, sweep
    result = sweep.run(r1_zero, r1_zero.PRESETS["tiny"], seeds=(0, 1, 2), workdir="runs/sweep_r1_zero")
    print(sweep.report(result, "runs/sweep_r1_zero"))

Each seed is the recipe's own run with `seed` (or `base.seed`, `data.seed`) replaced (its base, data order and RL
randomness all follow from it) in `workdir/seed<N>`, resumed like any run; a text field holding "{seed}" is
formatted per seed (distillation's `teacher=runs/sweep_r1_zero/seed{seed}`: each seed its own teacher).
A recipe made of several runs gives its results through `sweep_results(cfg, workdir)`, its phases named
"<stage>/<phase>" (distill). Every phase whose results hold `pass@1` is an evaluation; the table gives each
metric of EVAL_METRICS per evaluation phase as mean ± the half-width of the 95% Student-t interval over
seeds (r1jax.stats), and paired changes, each seed against itself: from the first evaluation to the last,
or the pairs a recipe names in SWEEP_CHANGES ({label: (phase, minus phase)}). The curves average
metrics.jsonl over the seeds at the steps they share, with the same interval as a band.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from r1jax.errors import UsageError
from r1jax.stats import format_interval, mean_interval

# held-out metrics of r1jax.evaluate, in table order (cons@k is added by its name in the results)
EVAL_METRICS = ("pass@1", "lenient_pass@1", "accuracy_well_formed", "format", "length_mean", "slip_rate",
                "self_correction_rate", "recheck_rate")
CURVES = ("rl/reward/mean", "rl/reward/accuracy", "rl/reward/format", "rl/eval/pass@1",
          "rl/eval/accuracy_well_formed", "rl/completion/length_mean")


def seed_dir(workdir: str, seed: int) -> str:
    return os.path.join(workdir, f"seed{seed}")


SEED_HOLDERS = ("base", "data")  # where a recipe nests the R1-Zero settings that hold its seed


def with_seed(cfg: Any, seed: int) -> Any:
    """`cfg` with its `seed` (or `base.seed` as R1 nests it, `data.seed` as distillation does) replaced, and
    "{seed}" in its text fields formatted with it."""
    names = {f.name for f in dataclasses.fields(cfg)}
    texts = {n: getattr(cfg, n).replace("{seed}", str(seed)) for n in names
             if isinstance(getattr(cfg, n), str) and "{seed}" in getattr(cfg, n)}
    if "seed" in names:
        return dataclasses.replace(cfg, seed=seed, **texts)
    for holder in SEED_HOLDERS:
        if holder in names and dataclasses.is_dataclass(getattr(cfg, holder)):
            return dataclasses.replace(cfg, **{holder: with_seed(getattr(cfg, holder), seed)}, **texts)
    raise UsageError(f"{type(cfg).__name__} has no 'seed' (or base.seed, data.seed) field to sweep")


def recipe_results(recipe: ModuleType, cfg: Any, workdir: str, **runner_kwargs) -> dict[str, dict]:
    """Phase name → results of one run of `recipe`: its Runner's, or its own `sweep_results` (several runs)."""
    if hasattr(recipe, "sweep_results"):
        return recipe.sweep_results(cfg, workdir, **runner_kwargs)
    carry = recipe.build(cfg, workdir, **runner_kwargs).run()
    return {name: dict(r) for name, r in carry.results.items() if isinstance(r, dict)}


def run(recipe: ModuleType, cfg: Any, seeds: Sequence[int], workdir: str, **runner_kwargs) -> dict[str, Any]:
    """Run `recipe` (a module with `build(cfg, workdir, **kw)` or `sweep_results`, and optionally
    `check_config` and SWEEP_CHANGES) once per seed."""
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {seeds}: give one or more distinct seeds")
    configs = {seed: with_seed(cfg, seed) for seed in seeds}  # a config without a seed fails before any run
    for c in configs.values():  # so does seed 2's missing teacher, before seed 0 trains
        if hasattr(recipe, "check_config"):
            recipe.check_config(c)
    runs = {seed: recipe_results(recipe, c, seed_dir(workdir, seed), **runner_kwargs) for seed, c in configs.items()}
    return {"seeds": seeds, "runs": runs, "workdir": workdir, "changes": dict(getattr(recipe, "SWEEP_CHANGES", {}))}


def eval_phases(result: dict[str, Any]) -> list[str]:
    """Evaluation phases (results with pass@1), in run order, present in every seed."""
    runs = list(result["runs"].values())
    names = [n for n, r in runs[0].items() if "pass@1" in r]
    return [n for n in names if all(n in r and "pass@1" in r[n] for r in runs)]


LAST_MINUS_FIRST = "change (last − first, paired)"


def changes(result: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Label → (phase, minus phase) of the paired changes in the table: the recipe's, or last − first."""
    phases = eval_phases(result)
    if result.get("changes"):
        missing = {p for pair in result["changes"].values() for p in pair} - set(phases)
        if missing:
            raise ValueError(f"SWEEP_CHANGES names {sorted(missing)}, not evaluations of every seed ({phases})")
        return dict(result["changes"])
    return {LAST_MINUS_FIRST: (phases[-1], phases[0])} if len(phases) > 1 else {}


def summarize(result: dict[str, Any]) -> dict[str, dict[str, tuple[float, float]]]:
    """metric → {phase or change label: (mean, 95% half-width)} over seeds; a change pairs each seed with
    itself (`changes`)."""
    runs, phases = list(result["runs"].values()), eval_phases(result)
    if not phases:
        raise ValueError(f"no evaluation phase (results with pass@1) in the runs under {result['workdir']}")
    pairs = changes(result)
    cons = sorted({k for r in runs for k in r[phases[-1]] if k.startswith("cons@") and "/" not in k})
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for metric in EVAL_METRICS[:1] + tuple(cons) + EVAL_METRICS[1:]:
        if not all(metric in r[p] for r in runs for p in phases):
            continue
        table[metric] = {p: mean_interval([r[p][metric] for r in runs]) for p in phases}
        for label, (a, b) in pairs.items():
            table[metric][label] = mean_interval([r[a][metric] - r[b][metric] for r in runs])
    return table


def table(result: dict[str, Any]) -> str:
    """Markdown: one row per held-out metric, one column per evaluation phase (mean ± 95% interval)."""
    summary, phases, labels = summarize(result), eval_phases(result), list(changes(result))
    columns = phases + labels
    lines = [f"| held-out metric ({len(result['seeds'])} seeds) | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for metric, cells in summary.items():
        digits = 1 if metric == "length_mean" else 3
        values = [format_interval(*cells[p], digits) for p in phases]
        for label in labels:
            mean, half = cells[label]
            values.append(("+" if mean > 0 else "") + format_interval(mean, half, digits))
        lines.append(f"| {metric} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def curve_bands(result: dict[str, Any], keys: Sequence[str] = CURVES) -> dict[str, list[tuple[int, float, float]]]:
    """key → [(step, mean, 95% half-width)] over the seeds' metrics.jsonl, at the steps every seed logged."""
    from r1jax.metrics import JSONL_NAME, read_metrics

    paths = [os.path.join(seed_dir(result["workdir"], s), JSONL_NAME) for s in result["seeds"]]
    if not all(os.path.exists(p) for p in paths):  # a recipe of several runs logs per stage
        return {}
    per_seed = [read_metrics(p) for p in paths]
    bands = {}
    for key in keys:
        series = [{r["step"]: r[key] for r in records if key in r} for records in per_seed]
        steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
        if steps:
            bands[key] = [(step, *mean_interval([s[step] for s in series])) for step in steps]
    return bands


def plot_bands(bands: dict[str, list[tuple[int, float, float]]], out_png: str, seeds: int) -> str:
    """One panel per curve: the mean over seeds and its 95% band; returns the path."""
    import math

    from matplotlib.figure import Figure

    if not bands:
        raise ValueError("no curve that every seed logged")
    ncols = min(3, len(bands))
    nrows = -(-len(bands) // ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (key, points) in zip(axes, bands.items()):
        steps, means, halves = zip(*points)
        lows = [m - (h if math.isfinite(h) else 0.0) for m, h in zip(means, halves)]
        highs = [m + (h if math.isfinite(h) else 0.0) for m, h in zip(means, halves)]
        ax.plot(steps, means, linewidth=1.2)
        ax.fill_between(steps, lows, highs, alpha=0.25, linewidth=0)
        ax.set_title(f"{key} ({seeds} seeds, 95% band)", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[len(bands):]:
        ax.set_visible(False)
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


def report(results: dict[str, Any], workdir: str) -> str:
    """The table (also in workdir/summary.md, with JSON beside it) and the band plot; returns the table."""
    import json

    from r1jax.cli import save_summary

    text = table(results)
    bands = curve_bands(results)
    plot = ""
    if bands:
        plot = plot_bands(bands, os.path.join(workdir, "curves.png"), len(results["seeds"]))
    with open(os.path.join(workdir, "sweep.json"), "w") as f:
        json.dump({"seeds": results["seeds"], "runs": {str(k): v for k, v in results["runs"].items()},
                   "summary": summarize(results)}, f, indent=1, default=float)
    save_summary(workdir, text + (f"\n\n![curves]({os.path.basename(plot)})" if plot else ""))
    return text
