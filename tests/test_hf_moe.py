"""Qwen3-MoE and DeepSeek-V3 checkpoints: logits parity with transformers (committed fixtures), round trips, errors."""
import dataclasses
import functools
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from r1jax import hf
from r1jax.config import MLAConfig, MoEConfig, RopeScaling
from r1jax.model import init_params, positions_from_mask

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
NAMES = ["qwen3_moe", "deepseek_v3"]


from test_hf import forward_fn, loaded  # noqa: E402  shared cached loaders


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers_unpadded_and_padded(name):
    cfg, params = loaded(name)
    ref = np.load(FIXTURES / name / "reference.npz")
    fwd = forward_fn(cfg)
    ids = ref["ids"]
    full = np.ones(ids.shape, bool)
    np.testing.assert_allclose(fwd(params, ids, positions_from_mask(full), full), ref["logits"], atol=1e-4, rtol=0)
    for side in ("left", "right"):
        ids, mask = ref[f"{side}_ids"], ref[f"{side}_mask"]
        logits = fwd(params, ids, positions_from_mask(mask), mask)
        np.testing.assert_allclose(logits[mask], ref[f"{side}_logits"][mask], atol=1e-4, rtol=0)


def test_deepseek_fixture_routing_depends_on_its_correction_bias():
    cfg, params = loaded("deepseek_v3")
    ref = np.load(FIXTURES / "deepseek_v3" / "reference.npz")
    unbiased = jax.tree_util.tree_map_with_path(
        lambda path, x: np.zeros_like(x) if path[-1].key == "router_bias" else x, params)
    full = np.ones(ref["ids"].shape, bool)
    logits = forward_fn(cfg)(unbiased, ref["ids"], positions_from_mask(full), full)
    assert np.abs(logits - ref["logits"]).max() > 1e-2  # so parity above proves the bias is read and used


def test_fixture_configs_map_to_the_expected_model_configs():
    qwen, qwen_params = loaded("qwen3_moe")
    assert qwen.qk_norm and qwen.mla is None and (qwen.num_kv_heads, qwen.head_dim) == (2, 16)
    assert qwen.moe == MoEConfig(num_experts=8, top_k=2, expert_dim=16, router="softmax", norm_topk_prob=True,
                                 dense_layers=(0,), bias_update_rate=0.0, switch_aux_coef=0.001)
    assert qwen_params["layers_1"]["mlp"]["wi_gate"].shape == (8, 32, 16)
    assert not np.any(qwen_params["layers_2"]["mlp"]["router_bias"]) and "router" not in qwen_params["layers_0"]["mlp"]
    v3, v3_params = loaded("deepseek_v3")
    assert v3.mla == MLAConfig(kv_lora_rank=16, qk_nope_dim=8, qk_rope_dim=8, v_head_dim=12, q_lora_rank=24,
                               mscale_all_dim=0.8)
    assert v3.moe == MoEConfig(num_experts=16, top_k=3, expert_dim=8, num_shared_experts=2, router="sigmoid",
                               routed_scaling_factor=2.5, num_groups=4, topk_groups=2, first_k_dense=1,
                               bias_update_rate=0.001, seq_aux_alpha=1e-4)
    assert v3.rope_scaling.kind == "yarn" and v3.rope_scaling.attention_factor != 1.0  # mscale ≠ mscale_all_dim
    assert v3_params["layers_1"]["mlp"]["router_bias"].dtype == np.float32
    assert v3_params["layers_2"]["mlp"]["shared"]["gate"]["kernel"].shape == (32, 16)


@pytest.mark.parametrize("name", NAMES)
def test_export_writes_back_the_original_tensors(name, tmp_path):
    cfg, params = loaded(name)
    hf.save_hf(tmp_path, cfg, params, dtype="bfloat16" if name == "qwen3_moe" else None)
    written = load_file(tmp_path / hf.SINGLE_FILE)
    original = load_file(FIXTURES / name / hf.SINGLE_FILE)
    assert set(written) == set(original)
    for key, value in original.items():  # interleaved RoPE rows and per-expert tensors restored exactly
        assert written[key].dtype == value.dtype, key
        np.testing.assert_array_equal(written[key], value, err_msg=key)


@pytest.mark.parametrize("q_lora_rank, rope_interleave", [(None, True), (12, False)])
def test_deepseek_export_then_import_round_trips_config_and_params(q_lora_rank, rope_interleave, tmp_path):
    cfg, _ = loaded("deepseek_v3")
    cfg = dataclasses.replace(cfg, rope_scaling=RopeScaling("yarn", 8.0, 16, attention_factor=1.1),
                              mla=dataclasses.replace(cfg.mla, q_lora_rank=q_lora_rank))
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
    hf.save_hf(tmp_path, cfg, params, max_shard_bytes=100_000)
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    if not rope_interleave:  # a checkpoint already in rotate-half layout is read as is
        config = json.loads((tmp_path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps({**config, "rope_interleave": False}))
    cfg2, params2 = hf.load_hf(tmp_path)
    assert cfg2 == cfg
    same = jax.tree_util.tree_leaves_with_path(jax.tree.map(np.array_equal, params2, params))
    rope_kernels = [equal for path, equal in same if path[-2].key in ("q", "q_b", "kv_a")]
    assert len(rope_kernels) == 2 * cfg.num_layers and all(equal == rope_interleave for equal in rope_kernels)
    assert all(equal for path, equal in same if path[-2].key not in ("q", "q_b", "kv_a"))


def copy_fixture(name, dest, edit=None, config=None):
    shutil.copytree(FIXTURES / name, dest, dirs_exist_ok=True)
    if edit is not None:
        tensors = load_file(dest / hf.SINGLE_FILE)
        edit(tensors)
        save_file(tensors, dest / hf.SINGLE_FILE)
    if config is not None:
        (dest / "config.json").write_text(json.dumps({**json.loads((dest / "config.json").read_text()), **config}))
    return dest


def test_multi_token_prediction_layers_are_skipped_and_missing_experts_named(tmp_path):
    mtp = "model.layers.3.eh_proj.weight"
    folder = copy_fixture("deepseek_v3", tmp_path / "a", lambda t: t.update({mtp: np.ones((32, 64), np.float32)}),
                          {"num_nextn_predict_layers": 1})
    cfg, params = hf.load_hf(folder)
    assert "layers_3" not in params
    gone = "model.layers.2.mlp.experts.5.up_proj.weight"
    folder = copy_fixture("deepseek_v3", tmp_path / "b", lambda t: t.pop(gone))
    with pytest.raises(ValueError, match=f"missing tensor '{gone}'"):
        hf.load_hf(folder)


@pytest.mark.parametrize("changes, message", [
    (dict(quantization_config={"quant_method": "fp8"}), "dequantize"),
    (dict(scoring_func="softmax"), "scoring_func='softmax'"),
    (dict(topk_method="greedy"), "topk_method='greedy'"),
    (dict(attention_bias=True), "attention_bias"),
])
def test_unsupported_deepseek_configs_are_errors_naming_the_feature(changes, message):
    config = json.loads((FIXTURES / "deepseek_v3" / "config.json").read_text())
    with pytest.raises(ValueError, match=message):
        hf.config_from_hf({**config, **changes})


def test_export_refuses_layouts_no_architecture_has():
    qwen, params = loaded("qwen3_moe")
    biased = jax.tree_util.tree_map_with_path(
        lambda path, x: np.ones_like(x) if path[-1].key == "router_bias" else x, params)
    with pytest.raises(ValueError, match="layers_1 has a nonzero router_bias"):
        hf.params_to_hf(qwen, biased)
    with pytest.raises(ValueError, match="Qwen3MoeForCausalLM needs"):
        hf.config_to_hf(dataclasses.replace(qwen, moe=dataclasses.replace(qwen.moe, num_shared_experts=1)))
    v3, _ = loaded("deepseek_v3")
    with pytest.raises(ValueError, match="DeepseekV3ForCausalLM needs"):
        hf.config_to_hf(dataclasses.replace(v3, moe=dataclasses.replace(v3.moe, router="softmax")))
    with pytest.raises(ValueError, match="LlamaForCausalLM has no MoE"):
        hf.config_to_hf(v3, "LlamaForCausalLM")
