"""Hugging Face import/export: parity with transformers' logits (committed fixtures), round trips, errors."""
import dataclasses
import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from r1jax import hf
from r1jax.config import ModelConfig, RopeScaling
from r1jax.model import Transformer, init_params, positions_from_mask, rope_frequencies

FIXTURES = Path(__file__).parent / "fixtures" / "hf"


@functools.cache
def loaded(name):
    return hf.load_hf(FIXTURES / name)


@functools.cache
def forward_fn(cfg):
    return jax.jit(lambda p, ids, positions, mask: Transformer(cfg).apply({"params": p}, ids, positions, mask)[0])


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_logits_match_transformers_unpadded_and_padded(name):
    cfg, params = loaded(name)
    ref = np.load(FIXTURES / name / "reference.npz")
    fwd = forward_fn(cfg)
    ids = ref["ids"]
    np.testing.assert_allclose(fwd(params, ids, positions_from_mask(ids > -1), ids > -1), ref["logits"],
                               atol=1e-4, rtol=0)
    for side in ("left", "right"):
        ids, mask = ref[f"{side}_ids"], ref[f"{side}_mask"]
        logits = fwd(params, ids, positions_from_mask(mask), mask)
        np.testing.assert_allclose(logits[mask], ref[f"{side}_logits"][mask], atol=1e-4, rtol=0)
        # padding invariance against transformers' unpadded rows, too
        for b, n in enumerate(mask.sum(1)):
            np.testing.assert_allclose(logits[b][mask[b]], ref["logits"][b, :n], atol=1e-4, rtol=0)


def test_fixture_configs_map_to_the_expected_model_configs():
    qwen, _ = loaded("qwen2")
    llama, _ = loaded("llama")
    assert (qwen.qkv_bias, qwen.out_bias, qwen.tie_embeddings, qwen.head_dim) == (True, False, True, 16)
    assert qwen.rope_scaling == RopeScaling("yarn", factor=4.0, original_max_len=8)
    assert (llama.qkv_bias, llama.tie_embeddings, llama.num_kv_heads, llama.head_dim) == (False, False, 1, 16)
    assert llama.rope_scaling == RopeScaling("llama3", 8.0, 16, low_freq_factor=1.0, high_freq_factor=4.0)
    assert llama.rope_theta == 500000.0 and llama.norm_eps == 1e-5
    assert (FIXTURES / "llama" / hf.INDEX_FILE).exists()  # the sharded path is the one exercised


def test_rope_frequencies_match_transformers():
    meta = json.loads((FIXTURES / "rope.json").read_text())
    expected = np.load(FIXTURES / "rope.npz")
    assert set(meta) == set(expected.files) and len(meta) >= 5
    for name, case in meta.items():
        scaling = hf.rope_scaling_from_hf(case["rope"], case["max_position_embeddings"])
        inv_freq, factor = rope_frequencies(case["head_dim"], case["rope"]["rope_theta"], scaling)
        np.testing.assert_allclose(inv_freq, expected[name], rtol=1e-6, err_msg=name)
        assert factor == pytest.approx(case["attention_factor"], rel=1e-6), name


def test_load_casts_to_the_requested_dtypes():
    cfg, params = hf.load_hf(FIXTURES / "qwen2", param_dtype="bfloat16", dtype="bfloat16", remat=True)
    assert (cfg.param_dtype, cfg.dtype, cfg.remat) == ("bfloat16", "bfloat16", "full")
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("bfloat16")}


@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_export_writes_back_the_original_tensors(name, tmp_path):
    cfg, params = loaded(name)
    hf.save_hf(tmp_path, cfg, params, dtype=None if name == "llama" else "bfloat16")
    written = load_file(tmp_path / hf.SINGLE_FILE)
    files = {f for f in (FIXTURES / name).glob("*.safetensors")}
    original = {k: v for f in files for k, v in load_file(f).items()}
    assert set(written) == set(original)
    for key, value in original.items():
        assert written[key].dtype == value.dtype, key
        np.testing.assert_array_equal(written[key], value, err_msg=key)


@pytest.mark.parametrize("cfg", [
    ModelConfig.tiny(qkv_bias=True, tie_embeddings=True,
                     rope_scaling=RopeScaling("yarn", 4.0, 16, beta_fast=16.0, truncate=False,
                                              attention_factor=1.2)),
    ModelConfig.tiny(qkv_bias=True, out_bias=True, rope_scaling=RopeScaling("llama3", 8.0, 16), norm_eps=1e-5),
    ModelConfig.tiny(rope_theta=1e6, rope_scaling=RopeScaling("linear", 2.0), max_len=77),
], ids=["qwen2-yarn", "llama-bias", "llama-linear"])
def test_export_then_import_round_trips_config_and_params(cfg, tmp_path):
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), param_shapes(cfg))
    hf.save_hf(tmp_path, cfg, params, max_shard_bytes=30_000)
    assert (tmp_path / hf.INDEX_FILE).exists() and len(list(tmp_path.glob("*.safetensors"))) > 1
    cfg2, params2 = hf.load_hf(tmp_path)
    assert cfg2 == cfg
    assert jax.tree.structure(params2) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def param_shapes(cfg):
    return jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))


def copy_fixture(name, dest):
    shutil.copytree(FIXTURES / name, dest, dirs_exist_ok=True)
    return dest


def edit_tensors(folder, edit):
    """Rewrites qwen2's single safetensors file through `edit(dict)`."""
    tensors = load_file(folder / hf.SINGLE_FILE)
    edit(tensors)
    save_file(tensors, folder / hf.SINGLE_FILE)


def test_a_wrongly_shaped_tensor_is_an_error_naming_it(tmp_path):
    folder = copy_fixture("qwen2", tmp_path)
    name = "model.layers.1.self_attn.k_proj.weight"
    edit_tensors(folder, lambda t: t.update({name: t[name][:-1]}))
    with pytest.raises(ValueError, match=rf"tensor '{name}' has shape \(31, 64\), expected \(32, 64\)"):
        hf.load_hf(folder)


def test_an_unexpected_or_missing_tensor_is_an_error_naming_it(tmp_path):
    folder = copy_fixture("qwen2", tmp_path)
    renamed = "model.layers.0.mlp.gate.weight"
    edit_tensors(folder, lambda t: t.update({renamed: t.pop("model.layers.0.mlp.gate_proj.weight")}))
    with pytest.raises(ValueError) as error:
        hf.load_hf(folder)
    assert "unexpected tensor 'model.layers.0.mlp.gate.weight'" in str(error.value)
    assert "missing tensor 'model.layers.0.mlp.gate_proj.weight'" in str(error.value)


def test_a_tied_checkpoint_may_store_its_head_and_old_rotary_buffers(tmp_path):
    folder = copy_fixture("qwen2", tmp_path)
    extra = {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}
    edit_tensors(folder, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"], **extra}))
    cfg, params = hf.load_hf(folder)
    assert cfg.tie_embeddings and "lm_head" not in params


def test_an_index_naming_an_absent_tensor_is_an_error(tmp_path):
    folder = copy_fixture("llama", tmp_path)
    index = json.loads((folder / hf.INDEX_FILE).read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = "model-00001-of-00002.safetensors"
    (folder / hf.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="model.layers.9.mlp.up_proj.weight"):
        hf.load_hf(folder)


def test_a_folder_without_weights_is_an_error(tmp_path):
    shutil.copy(FIXTURES / "qwen2" / "config.json", tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        hf.load_hf(tmp_path)


def hf_config(**changes):
    config = json.loads((FIXTURES / "llama" / "config.json").read_text())
    config.update(changes)
    return config


@pytest.mark.parametrize("changes, message", [
    (dict(architectures=["MixtralForCausalLM"], model_type="mixtral"),
     "unsupported architecture 'MixtralForCausalLM'"),
    (dict(architectures=None, model_type="mistral"), "unsupported architecture 'mistral'"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(use_sliding_window=True), "use_sliding_window"),
    (dict(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4}), "rope scaling type 'longrope'"),
    (dict(num_attention_heads=4, num_key_value_heads=3), "multiple of num_kv_heads"),
])
def test_unsupported_configs_are_errors_naming_the_feature(changes, message):
    with pytest.raises(ValueError, match=message):
        hf.config_from_hf(hf_config(**changes))


def test_old_style_config_with_top_level_rope_theta_and_rope_scaling_type():
    old = hf_config(rope_theta=1e6, rope_scaling={"type": "yarn", "factor": 4.0,
                                                 "original_max_position_embeddings": 32768})
    del old["rope_parameters"]
    cfg = hf.config_from_hf(old)
    assert cfg.rope_theta == 1e6 and cfg.rope_scaling == RopeScaling("yarn", 4.0, 32768)
    mscale = hf.rope_scaling_from_hf({"rope_type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                                      "original_max_position_embeddings": 4096}, 163840)
    assert mscale.attention_factor == 1.0  # DeepSeek-V3 style: the two mscales cancel
    default = hf.config_from_hf(hf_config(rope_parameters={"rope_type": "default", "rope_theta": 1e4}))
    assert default.rope_scaling is None


def test_export_refuses_bias_layouts_no_architecture_has_and_mismatched_params():
    with pytest.raises(ValueError, match="qkv_bias must equal out_bias"):
        hf.config_to_hf(ModelConfig.tiny(qkv_bias=True), "LlamaForCausalLM")
    with pytest.raises(ValueError, match="Qwen2ForCausalLM needs qkv_bias=True"):
        hf.config_to_hf(ModelConfig.tiny(), "Qwen2ForCausalLM")
    with pytest.raises(ValueError, match="unsupported architecture 'GPT2LMHeadModel'"):
        hf.config_to_hf(ModelConfig.tiny(), "GPT2LMHeadModel")
    cfg = ModelConfig.tiny()
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), param_shapes(cfg))
    with pytest.raises(ValueError, match="params lack layers_0/attn/q/bias"):
        hf.params_to_hf(dataclasses.replace(cfg, qkv_bias=True), params)
    params["layers_1"]["mlp"]["up"]["kernel"] = np.zeros((32, 63))
    with pytest.raises(ValueError, match=r"param layers_1/mlp/up/kernel has shape \(32, 63\), expected \(32, 64\)"):
        hf.params_to_hf(cfg, params)
