"""Command-line overrides of frozen config dataclasses, and entry points' one-line errors on bad input."""
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from r1jax.cli import OverrideError, apply_overrides, run
from r1jax.config import GRPOConfig, ModelConfig, OptimizerConfig, SamplingSettings
from r1jax.data import load_jsonl
from r1jax.errors import UsageError
from r1jax.hf import load_hf, save_hf
from r1jax.model import init_params


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


# ------------------------------------------------------------------ entry points: bad input is one line, exit 2
def test_run_turns_bad_input_into_one_line_and_status_2(capsys, monkeypatch):
    monkeypatch.delenv("R1JAX_TRACEBACK", raising=False)

    def bad_override():
        apply_overrides(GRPOConfig(), ["grup_size=4"])

    assert run(bad_override, prog="r1_zero.py") == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("r1_zero.py: error: grup_size: GRPOConfig has no field 'grup_size'")

    def missing_file():
        open("/nonexistent/train.jsonl")

    assert run(missing_file, prog="x") == 2
    assert capsys.readouterr().err.strip() == "x: error: /nonexistent/train.jsonl: No such file or directory"
    assert run(lambda: 0) == 0 and run(lambda: None) == 0


def test_run_lets_programming_errors_raise_with_their_traceback(monkeypatch):
    def bug():
        return {}["missing"]

    with pytest.raises(KeyError):
        run(bug)
    monkeypatch.setenv("R1JAX_TRACEBACK", "1")  # bad input too, to see where it was found
    with pytest.raises(UsageError):
        run(lambda: (_ for _ in ()).throw(UsageError("x")))


def test_bad_dataset_line_and_truncated_safetensors_name_their_file(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?", "answer": \n')
    assert run(lambda: load_jsonl(data), prog="r1_zero.py") == 2
    assert f"r1_zero.py: error: {data}:2: malformed JSON" in capsys.readouterr().err

    cfg = ModelConfig.tiny(qkv_bias=True)
    save_hf(tmp_path / "hf", cfg, init_params(cfg, jax.random.key(0)))
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a download cut short
    assert run(lambda: load_hf(tmp_path / "hf"), prog="r1_zero.py") == 2
    err = capsys.readouterr().err
    assert f"error: {weights}:" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "hf" / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="config.json: not valid JSON"):
        load_hf(tmp_path / "hf")


@pytest.mark.parametrize("script, args, message", [
    ("r1_zero.py", ["--set", "grpo.grup_size=4"], "GRPOConfig has no field 'grup_size'"),
    ("r1_zero.py", ["--mesh", "3x3", "--set", "pretrain_steps=1"], "mesh '3x3' needs 9 devices"),
    ("evaluate.py", ["--workdir", "{tmp}"], "no checkpoints/ folder"),
    ("sweep.py", ["distill", "--seeds", "0,1", "--set", "teacher={tmp}/teacher{seed}"], "teacher0' holds no r1jax run"),
])
def test_experiments_end_bad_input_with_one_error_line_and_status_2(tmp_path, script, args, message):
    root = pathlib.Path(__file__).parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("R1JAX_TRACEBACK", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if script == "r1_zero.py":
        argv += ["--workdir", str(tmp_path / "run")]
    proc = subprocess.run([sys.executable, str(root / "experiments" / script), *argv], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr
    assert last.startswith(f"{script}: error: ") and message in last, proc.stderr
    assert "Traceback" not in proc.stderr
