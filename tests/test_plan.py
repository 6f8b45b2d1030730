"""experiments/plan.py: AOT-compiled GRPO-step programs on the 8 test CPU devices, memory from XLA, no weights."""
import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


plan = _load("plan")
# one layer, 8 rows of a 4-token prompt: every program of an RL step, compiled in seconds
SMALL = ["--shape", "tiny", "--layers", "1", "--mesh", "2x4", "--quick-compile", "--prompts", "2", "--group-size", "4",
         "--prompt-len", "4", "--minibatches", "2"]


def test_every_program_of_a_step_compiles_and_longer_completions_need_more_temp():
    short = plan.main(SMALL + ["--new-tokens", "8"])
    assert {r["program"] for r in short} == set(plan.PROGRAMS)
    for r in short:
        assert r["args"] > 0 and r["temp"] > 0 and r["compile_s"] > 0, r
        assert r["peak"] == r["args"] + r["out"] + r["temp"] - r["alias"]
        assert r["total"] >= r["peak"]  # plus the resident state the program does not take
    (long,) = plan.main(SMALL + ["--new-tokens", "32", "--programs", "logps"])
    (short_logps,) = [r for r in short if r["program"] == "logps"]
    assert long["temp"] > short_logps["temp"]


def test_extrapolation_recovers_a_line_in_depth():
    fixed = {k: 10.0 + i for i, k in enumerate(plan.METRICS)}
    per_layer = {k: 3.0 + i for i, k in enumerate(plan.METRICS)}

    def measured(layers):
        return [{"program": "update", "layers": layers, "full_layers": 28, "model": {"num_layers": layers},
                 **{k: fixed[k] + per_layer[k] * layers for k in plan.METRICS}}]

    (row,) = plan.extrapolate(measured(2), measured(4))
    assert row["extrapolated"] and row["layers"] == row["model"]["num_layers"] == 28
    for k in plan.METRICS:
        assert row[k] == pytest.approx(fixed[k] + per_layer[k] * 28)
        assert row["fit"][k] == pytest.approx({"fixed": fixed[k], "per_layer": per_layer[k]})


def test_unknown_shape_names_the_known_ones():
    with pytest.raises(ValueError, match="qwen2.5-1.5b"):
        plan.main(["--shape", "qwen9"])


def test_a_mesh_larger_than_the_devices_says_how_to_get_them():
    with pytest.raises(ValueError, match="JAX_NUM_CPU_DEVICES"):
        plan.main(["--shape", "tiny", "--mesh", "8x8"])


def test_real_shapes_match_their_config_json():
    q15 = plan.model_config("qwen2.5-1.5b", [])
    assert (q15.embed_dim, q15.num_layers, q15.num_heads, q15.num_kv_heads, q15.head_dim) == (1536, 28, 12, 2, 128)
    assert q15.qkv_bias and q15.tie_embeddings and q15.dtype == "bfloat16" and q15.param_dtype == "float32"
    ds = plan.model_config("deepseek-v2-lite", ["moe.dispatch=ragged_dot"], layers=3)
    assert ds.num_layers == 3 and ds.moe.top_k == 6 and ds.moe.dispatch == "ragged_dot" and ds.mla.kv_lora_rank == 512


def test_params_over_data_halve_the_update_state_on_2x4():
    update = SMALL + ["--new-tokens", "8", "--programs", "update"]
    (hybrid,) = plan.main(update)
    (zero,) = plan.main(update + ["--model-set", "params_over_data=true"])
    assert zero["model"]["params_over_data"] and not hybrid["model"]["params_over_data"]
    # the train state (params + Adam moments) is most of the update's arguments: split 8 ways, not 4
    assert zero["args"] < 0.7 * hybrid["args"]
    assert "params_over_data" in plan.table([zero]) and "params_over_data" not in plan.table([hybrid])


def test_lora_plans_the_adapters_as_state_and_the_base_as_a_frozen_argument():
    update = SMALL + ["--new-tokens", "8", "--programs", "update,logps"]
    full = {r["program"]: r for r in plan.main(update)}
    lora = {r["program"]: r for r in plan.main(update + ["--model-set", "lora.rank=2"])}
    assert "LoRA r2 all-linear" in plan.table(list(lora.values()))
    # no Adam moments for the base: the update's arguments shrink although adapters are added
    assert lora["update"]["args"] < 0.6 * full["update"]["args"]
    assert lora["logps"]["args"] > full["logps"]["args"]  # the same base, plus the adapters


def test_the_engine_plan_splits_the_pool_per_data_shard_in_both_layouts():
    from r1jax.model import paged

    plan_engine = _load("plan_engine")

    small = ["--shape", "tiny", "--mesh", "2x4", "--devices", "8", "--slots", "8", "--prompt-len", "4",
             "--new-tokens", "12", "--page-size", "4", "--prefill-rows", "1", "--prefill-chunk", "4", "--quick-compile"]
    kernel = paged.tpu_ragged_kernel
    portable = plan_engine.main(small)
    paired = plan_engine.main(small + ["--model-set", "paged_attention=tpu_ragged"])
    assert paged.tpu_ragged_kernel is kernel  # the CPU placeholder is put back
    for r in (portable, paired):
        assert r["shards"] == 8 and r["pool_per_device_GiB"] == pytest.approx(r["pool_GiB"] / 8)
        assert set(r["programs"]) == {"decode", "prefill", "admit"}
        assert all(p["args_GiB"] > 0 and p["peak_GiB"] > 0 for p in r["programs"].values())
    assert paired["pool_GiB"] == portable["pool_GiB"]  # the same bytes, keys and values interleaved
    assert paired["model_set"] == ["paged_attention=tpu_ragged"]
