"""Command-line overrides of frozen config dataclasses."""
import pytest

from r1jax.cli import OverrideError, apply_overrides
from r1jax.config import GRPOConfig, ModelConfig, OptimizerConfig, SamplingSettings


def test_nested_overrides_parse_by_type():
    cfg = GRPOConfig()
    out = apply_overrides(cfg, ["group_size=4", "prompts_per_step=2", "kl_beta=0.5", "dynamic_sampling=true",
                                "dual_clip=3", "ref_refresh_every=none", "kl_estimator=k2"])
    assert (out.group_size, out.kl_beta, out.dynamic_sampling, out.dual_clip) == (4, 0.5, True, 3.0)
    assert out.ref_refresh_every is None and out.kl_estimator == "k2"
    assert cfg.group_size == 16  # the original is untouched


def test_overrides_of_one_dataclass_apply_together_in_any_order():
    base = GRPOConfig(num_minibatches=16)  # 512 rows; 4 × 2 = 8 rows do not split 16 ways, 1 way they do
    a = apply_overrides(base, ["group_size=4", "prompts_per_step=2", "num_minibatches=1"])
    b = apply_overrides(base, ["num_minibatches=1", "prompts_per_step=2", "group_size=4"])
    assert a == b and (a.group_size, a.prompts_per_step, a.num_minibatches) == (4, 2, 1)  # validated once
    with pytest.raises(OverrideError, match="num_minibatches"):
        apply_overrides(base, ["group_size=4", "prompts_per_step=2"])  # 8 rows cannot make 16 minibatches


def test_unknown_field_and_bad_values_are_clear_errors():
    with pytest.raises(OverrideError, match="no field 'grup_size'"):
        apply_overrides(GRPOConfig(), ["grup_size=4"])
    with pytest.raises(OverrideError, match="group_size: 'four' is not int"):
        apply_overrides(GRPOConfig(), ["group_size=four"])
    with pytest.raises(OverrideError, match="not of the form"):
        apply_overrides(GRPOConfig(), ["group_size"])
    with pytest.raises(OverrideError, match="kl_estimator"):
        apply_overrides(GRPOConfig(), ["kl_estimator=k9"])  # the dataclass's own validation
    with pytest.raises(OverrideError, match="has no fields"):
        apply_overrides(GRPOConfig(), ["group_size.x=1"])
    with pytest.raises(OverrideError, match=r"did you mean sampling\.max_new_tokens\?"):
        apply_overrides(GRPOConfig(), ["max_new_tokens=16"])  # a field of a nested settings object


def test_sampling_settings_are_set_field_by_field_and_validated():
    cfg = apply_overrides(GRPOConfig(), ["sampling.max_new_tokens=16", "sampling.temperature=0",
                                         "sampling.stop_ids=3,4"])
    assert cfg.sampling == SamplingSettings(max_new_tokens=16, temperature=0.0, stop_ids=(3, 4))
    assert cfg.sampling.with_stop_ids((2, 3)).stop_ids == (2, 3, 4)  # the tokenizer's first, each once
    assert cfg.sampling.paper_evaluation() == SamplingSettings(16, temperature=0.6, top_p=0.95, stop_ids=(3, 4))
    with pytest.raises(OverrideError, match=r"SamplingSettings\.top_p=2\.0 must be in \(0, 1\]"):
        apply_overrides(GRPOConfig(), ["sampling.top_p=2"])
    with pytest.raises(OverrideError, match="overlong_buffer=16 must be in"):
        apply_overrides(GRPOConfig(), ["sampling.max_new_tokens=16", "overlong_buffer=16"])


def test_experiment_config_overrides():
    import importlib.util
    import pathlib

    from r1jax.recipes import r1_zero

    cfg = apply_overrides(r1_zero.R1ZeroConfig(), ["rl_steps=5", "grpo.group_size=4", "model.num_layers=2",
                                                   "task.ops=+,-,*", "rl_optimizer.learning_rate=1e-5"])
    assert cfg.rl_steps == 5 and cfg.grpo.group_size == 4 and cfg.model.num_layers == 2
    assert cfg.task.ops == ("+", "-", "*") and cfg.rl_optimizer.learning_rate == 1e-5
    assert isinstance(cfg.model, ModelConfig) and isinstance(cfg.rl_optimizer, OptimizerConfig)
    path = pathlib.Path(__file__).parent.parent / "experiments" / "r1_zero.py"
    spec = importlib.util.spec_from_file_location("r1_zero_cli", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit):
        mod.main(["--preset", "nonexistent"])
    # a real preset without its local files is a clear error, before any work
    with pytest.raises(ValueError, match="init_from=<local Hugging Face folder>"):
        mod.main(["--preset", "qwen2.5-1.5b"])
    with pytest.raises(FileNotFoundError, match="init_from='/no/such/folder' does not exist"):
        mod.main(["--preset", "qwen2.5-7b", "--set", "init_from=/no/such/folder"])
