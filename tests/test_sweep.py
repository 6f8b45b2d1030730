"""r1jax.recipes.sweep and experiments/sweep.py: a recipe per seed, intervals by hand, bands, resume."""
import dataclasses
import json
import math

import numpy as np
import pytest

from r1jax.errors import UsageError
from r1jax.recipes import r1, r1_zero, sweep
from r1jax.stats import mean_interval, t_quantile

T2 = 4.303  # t_{0.975, 2}: three seeds
T1 = 12.706  # t_{0.975, 1}: two seeds


def test_mean_interval_is_the_student_t_interval():
    values = [0.2, 0.5, 0.35]
    mean, half = mean_interval(values)
    assert mean == pytest.approx(np.mean(values))
    assert half == pytest.approx(T2 * np.std(values, ddof=1) / math.sqrt(3))
    assert math.isnan(mean_interval([0.4])[1]) and math.isnan(mean_interval([])[0])
    assert mean_interval([1.0, math.nan, 3.0])[0] == 2.0  # NaN (nothing to rate) is left out
    assert t_quantile(30) == pytest.approx(2.042, abs=1e-3) and t_quantile(200) == pytest.approx(1.972, abs=1e-3)


def _fake_result(tmp_path):
    runs = {}
    for i, seed in enumerate((0, 1, 2)):
        runs[seed] = {"base_eval": {"pass@1": 0.1 * i, "cons@4": 0.2, "format": 0.5, "slip_rate": math.nan},
                      "pretrain": {"rows": 10.0},
                      "final_eval": {"pass@1": 0.3 + 0.2 * i, "cons@4": 0.4, "format": 1.0, "slip_rate": 0.1}}
        workdir = tmp_path / f"seed{seed}"
        workdir.mkdir()
        lines = [{"step": s, "time": 0.0, "rl/reward/mean": s + i} for s in range(1, 4 + i)]  # seed 2 logs more
        (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return {"seeds": [0, 1, 2], "runs": runs, "workdir": str(tmp_path)}


def test_table_gives_each_metric_per_evaluation_and_the_paired_change(tmp_path):
    result = _fake_result(tmp_path)
    assert sweep.eval_phases(result) == ["base_eval", "final_eval"]  # "pretrain" has no pass@1
    summary = sweep.summarize(result)
    assert list(summary)[:2] == ["pass@1", "cons@4"]
    assert summary["pass@1"]["final_eval"] == pytest.approx((0.5, T2 * 0.2 / math.sqrt(3)))
    assert summary["pass@1"][sweep.LAST_MINUS_FIRST] == pytest.approx((0.4, T2 * 0.1 / math.sqrt(3)))
    assert summary["format"][sweep.LAST_MINUS_FIRST] == (0.5, 0.0)
    assert all(math.isnan(x) for x in summary["slip_rate"]["base_eval"])
    text = sweep.table(result)
    assert "| pass@1 | 0.100 ± 0.248 | 0.500 ± 0.497 | +0.400 ± 0.248 |" in text
    assert "(3 seeds)" in text and "| slip_rate | – | 0.100 ± 0.000 |" in text
    bands = sweep.curve_bands(result, ["rl/reward/mean", "absent"])
    assert [b[0] for b in bands["rl/reward/mean"]] == [1, 2, 3] and "absent" not in bands  # shared steps only
    assert bands["rl/reward/mean"][0][1] == pytest.approx(2.0)
    assert sweep.report(result, str(tmp_path)).startswith("| held-out metric")
    assert (tmp_path / "curves.png").stat().st_size > 5000 and (tmp_path / "summary.md").exists()


def test_a_recipe_names_its_own_paired_changes(tmp_path):
    result = _fake_result(tmp_path)
    for seed, run in result["runs"].items():
        run["other_eval"] = {"pass@1": 0.3, "cons@4": 0.1, "format": 1.0, "slip_rate": 0.0}
    result["changes"] = {"final − other": ("final_eval", "other_eval")}
    summary = sweep.summarize(result)
    assert summary["pass@1"]["final − other"] == pytest.approx((0.2, T2 * 0.2 / math.sqrt(3)))
    assert sweep.LAST_MINUS_FIRST not in summary["pass@1"]
    assert "| held-out metric (3 seeds) | base_eval | final_eval | other_eval | final − other |" in sweep.table(result)
    result["changes"] = {"x": ("final_eval", "missing_eval")}
    with pytest.raises(ValueError, match="missing_eval"):
        sweep.summarize(result)


def test_seed_lands_where_each_recipe_keeps_it():
    from r1jax.recipes import distill

    assert sweep.with_seed(r1_zero.R1ZeroConfig(), 7).seed == 7
    assert sweep.with_seed(r1.R1Config(), 7).base.seed == 7
    cfg = sweep.with_seed(distill.DistillConfig(teacher="runs/sw/seed{seed}"), 7)
    assert cfg.data.seed == 7 and cfg.teacher == "runs/sw/seed7"  # each seed its own teacher
    with pytest.raises(UsageError, match="no 'seed'"):
        sweep.with_seed(sweep_config_without_seed(), 1)
    with pytest.raises(UsageError, match="distinct"):
        sweep.run(r1_zero, r1_zero.R1ZeroConfig(), [1, 1], "unused")


@dataclasses.dataclass(frozen=True)
class sweep_config_without_seed:  # noqa: N801
    steps: int = 1


def test_a_recipe_runs_per_seed_and_resumes(tmp_path):
    from test_recipes import SMOKE  # the smallest R1-Zero that trains, samples and evaluates

    result = sweep.run(r1_zero, SMOKE, [0, 1], str(tmp_path))
    assert set(result["runs"]) == {0, 1}
    assert result["runs"][0]["final_eval"]["pass@1"] >= 0 and (tmp_path / "seed1" / "metrics.jsonl").exists()
    assert result["runs"][0]["base_eval"] != result["runs"][1]["base_eval"] or \
        result["runs"][0]["final_eval"] != result["runs"][1]["final_eval"]  # two seeds, two runs
    again = sweep.run(r1_zero, SMOKE, [0, 1], str(tmp_path))  # both done: restored, not retrained
    assert again["runs"] == result["runs"]
    assert "| pass@1 |" in sweep.report(result, str(tmp_path))


def test_a_recipe_of_several_runs_reports_stage_by_stage(tmp_path, monkeypatch):
    """Distillation's four stage runs (stubbed here) give '<stage>/<phase>' columns and its own changes."""
    from r1jax.recipes import distill

    seen = []

    def run(cfg, workdir):
        seen.append((cfg.data.seed, cfg.teacher, workdir))
        s = cfg.data.seed
        stage = {"student_base": 0.0, "teacher_traces": 0.9, "distilled": 0.3 + 0.1 * s, "rl_only": 0.1}
        return {name: {"final_eval": {"pass@1": p, "format": 1.0}, "seconds": 3.0} for name, p in stage.items()}

    monkeypatch.setattr(distill, "run", run)
    monkeypatch.setattr(distill, "check_config", lambda cfg: None)
    result = sweep.run(distill, distill.DistillConfig(teacher="runs/t{seed}"), [1, 2], str(tmp_path))
    assert seen == [(1, "runs/t1", str(tmp_path / "seed1")), (2, "runs/t2", str(tmp_path / "seed2"))]
    assert sweep.eval_phases(result) == [f"{s}/final_eval" for s in distill.STAGES]
    summary = sweep.summarize(result)["pass@1"]
    assert summary["distilled − RL alone"] == pytest.approx((0.35, T1 * 0.1 / 2))  # 0.3 and 0.4: se 0.05
    assert summary["RL alone − student base"] == (pytest.approx(0.1), 0.0)
    text = sweep.report(result, str(tmp_path))  # no metrics.jsonl at the seed's top: a table, no curves
    assert "| distilled/final_eval | rl_only/final_eval | distilled − RL alone |" in text
    assert not (tmp_path / "curves.png").exists()
