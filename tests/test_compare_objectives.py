"""The objectives comparison at smoke size: every objective's config validates, a table row per arm, resume."""
import dataclasses
import importlib.util
import json
import math
import pathlib

import pytest

from r1jax.cli import OverrideError, apply_overrides, run
from r1jax.config import GRPOConfig, ModelConfig, SamplingSettings
from r1jax.data import ArithmeticConfig
from r1jax.errors import UsageError
from r1jax.recipes import compare, r1_zero

EXPERIMENT = pathlib.Path(__file__).parent.parent / "experiments" / "compare_objectives.py"
SMOKE = r1_zero.R1ZeroConfig(
    task=ArithmeticConfig(num_ops=1, max_value=9, ops=("+",)), train_problems=40, test_problems=4, vocab_size=400,
    pretrain_steps=3, pretrain_batch=4, seq_len=224,
    model=ModelConfig(vocab_size=400, embed_dim=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                      mlp_dim=64, max_len=256),
    grpo=GRPOConfig(group_size=2, prompts_per_step=2, sampling=SamplingSettings(max_new_tokens=12),
                    logprob_chunk=12, kl_beta=0.0),
    eval_k=1)


@pytest.mark.parametrize("preset", [compare.PRESETS["tiny"].data, SMOKE])
def test_every_objective_gives_a_valid_grpo_config_that_differs_from_grpo(preset):
    cfg = compare.CompareConfig(data=preset)
    compare.check_config(cfg)
    configs = {name: compare.arm_grpo(cfg, name) for name in compare.OBJECTIVES}
    assert configs["grpo"] == preset.grpo  # the paper's loss: the preset unchanged
    assert len(set(configs.values())) == len(compare.OBJECTIVES)
    assert configs["dapo"].dynamic_sampling and configs["dapo"].eps_high == 0.28
    assert configs["dr-grpo"].advantage == "mean" and configs["grpo+entropy"].entropy_coef == cfg.entropy_coef


def test_the_experiment_ends_bad_input_with_one_line_naming_the_field(capsys):
    spec = importlib.util.spec_from_file_location("compare_cli", EXPERIMENT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert run(lambda: mod.main(["--set", "objectives=grpo,ppo"]), prog="compare_objectives.py") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("compare_objectives.py: error: objectives=grpo,ppo") and "\n" not in err


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="objectives"):
        compare.CompareConfig(objectives=("grpo", "ppo"))
    with pytest.raises(OverrideError, match="seeds"):
        apply_overrides(compare.CompareConfig(), ["seeds=0,0"])
    with pytest.raises(FileNotFoundError, match="base="):
        compare.check_config(compare.CompareConfig(base="/nonexistent"))
    small = dataclasses.replace(SMOKE, grpo=dataclasses.replace(SMOKE.grpo, group_size=1))
    with pytest.raises(UsageError, match="objective 'rloo'"):  # leave-one-out needs G >= 2
        compare.check_config(compare.CompareConfig(data=small, objectives=("rloo",)))


def test_comparison_writes_a_row_per_objective_and_resumes(tmp_path):
    cfg = compare.CompareConfig(data=SMOKE, objectives=("grpo", "rloo"), seeds=(0,), rl_steps=1)
    result = compare.run(cfg, str(tmp_path))
    assert [(a["objective"], a["skipped"]) for a in result["arms"]] == [("grpo", False), ("rloo", False)]
    text = compare.report(result, str(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["rows"]) == ["grpo", "rloo"]
    for row in summary["rows"].values():
        assert all(math.isfinite(v) for c in row["columns"].values() for v in c["values"])
    assert "| grpo | 1 |" in text and "| rloo | 1 |" in text and "| base (before RL) |" in text
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "summary.md").exists()
    assert all(len(a["curves"]["rl/entropy"]) == 1 for a in result["arms"])

    metrics = tmp_path / "arms" / "grpo" / "seed0" / "metrics.jsonl"
    before = metrics.read_text()
    again = compare.run(cfg, str(tmp_path))  # finished arms are read back, not run
    assert all(a["skipped"] for a in again["arms"]) and metrics.read_text() == before
    same = lambda x: json.dumps(x, sort_keys=True)  # noqa: E731  (NaN, a rate over nothing, equals itself here)
    assert same([a["final_eval"] for a in again["arms"]]) == same([a["final_eval"] for a in result["arms"]])
    with pytest.raises(UsageError, match="other settings"):
        compare.run(dataclasses.replace(cfg, rl_steps=2), str(tmp_path))
