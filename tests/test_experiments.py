"""Experiment files run end to end at smoke size."""
import importlib.util
import json
import pathlib
import sys

import pytest

from r1jax.metrics import read_metrics

ROOT = pathlib.Path(__file__).parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def code_rl_workdir(tmp_path_factory):
    """One code-RL run, shared: its test reads the metrics, the evaluate test the checkpoint."""
    workdir = tmp_path_factory.mktemp("code_rl")
    assert _load("code_rl").main(["--workdir", str(workdir), "--set", "sft_steps=30", "--set", "rl_steps=2"]) == 0
    return workdir


def test_code_rl_trains_with_the_sandboxed_reward(code_rl_workdir):
    rl = [r for r in read_metrics(code_rl_workdir / "metrics.jsonl") if "rl/reward/code" in r]
    assert len(rl) == 2
    assert all(r["rl/reward/code_failures"] == 0 and 0 <= r["rl/reward/code"] <= 1 for r in rl)


def test_evaluate_reads_a_workdir(code_rl_workdir):
    tmp_path = code_rl_workdir
    ev = _load("evaluate")
    assert ev.main(["--workdir", str(tmp_path), "--set", "problems=3", "--set", "k=2",
                    "--set", "sampling.max_new_tokens=8"]) == 0
    assert len((tmp_path / "evaluate.jsonl").read_text().splitlines()) == 3
    gsm8k = ROOT / "tests" / "fixtures" / "eval" / "gsm8k_tiny.jsonl"
    assert ev.main(["--workdir", str(tmp_path), "--data", str(gsm8k), "--set", "k=1",
                    "--set", "sampling.max_new_tokens=4", "--mesh", "2x4"]) == 0  # params sharded over 8 CPU devices
    assert len((tmp_path / "evaluate.jsonl").read_text().splitlines()) == 4


def test_report_of_a_real_rl_run_opens_in_chromium(code_rl_workdir, tmp_path):
    from report_helpers import console_errors, open_in_chromium

    out = tmp_path / "report.html"
    assert _load("report").main(["--workdir", str(code_rl_workdir), "--out", str(out)]) == 0
    dom, stderr = open_in_chromium(out, tmp_path)
    assert 'id="report-ready"' in dom and 'id="js-error"' not in dom and console_errors(stderr) == []
    assert '<path class="curve" d="M' in dom and 'id="flag-rl-proxy_rising"' in dom
    assert dom.count('<span class="tok') > 0 and 'id="r-' in dom  # the saved RL steps' completions


def test_r1_recipe_composes_every_stage(tmp_path):
    from r1jax.phases import StopRun

    from r1jax.cli import apply_overrides
    from r1jax.recipes import r1

    cfg = apply_overrides(r1.R1Config(), ["base.pretrain_steps=4", "base.pretrain_batch=4", "base.train_problems=50"])
    runner = r1.build(cfg, str(tmp_path))
    names = [p.name for p in runner.phases]
    assert names[:4] == ["tokenizer", "pretrain", "base_eval", "cold_start"] and "rejection_sampling" in names
    assert names[-1] == "final_eval" and not any(n.startswith(("snapshot", "restore")) for n in names)
    from_base = [p.name for p in r1.build(apply_overrides(cfg, ["sft_from_base=true"]), str(tmp_path / "fb")).phases]
    # the paper's order: keep the pretrained base, and SFT on the rejection-sampled traces starts from it
    assert from_base.index("snapshot_base") == from_base.index("pretrain") + 1
    assert from_base.index("restore_base") == from_base.index("rejection_sampling") + 1 == from_base.index("sft") - 1
    from r1jax.checkpoint import Checkpointer

    with pytest.raises(StopRun):
        runner.run(stop_at_step=3)
    # the stop came inside pretraining (4 steps, logged every 10 and at its end; checkpoints every 20):
    # nothing logged yet, and the last checkpoint is the finished tokenizer phase a resume starts after
    with Checkpointer(str(tmp_path / "checkpoints")) as ckpt:
        meta = ckpt.read_meta()
    assert (meta["phase_name"], meta["done"], meta["global_step"]) == ("tokenizer", True, 0)
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_bench_writes_json_and_a_table(tmp_path, capsys):
    mod = _load("bench")
    out = tmp_path / "bench.json"
    assert mod.main(["--quick", "--sections", "peak,memory", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["peak"]["f32_flops"] > 0 and results["meta"]["quick"]
    chunks = [r["chunk"] for r in results["memory"]["rows"]]
    temps = [r["temp_bytes"] for r in results["memory"]["rows"]]
    assert chunks == sorted(chunks, reverse=True) and temps == sorted(temps, reverse=True)  # smaller chunks, less
    assert "e. log-prob memory" in capsys.readouterr().out
