"""Scanned layers ≡ unrolled layers: logits, gradients, decode, MoE statistics and bias, HF files, execution settings."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import hf
from r1jax.config import Execution, ModelConfig, MoEConfig
from r1jax.model import (Transformer, convert_layout, init_cache, init_params, moe_aux, param_logical_axes,
                         positions_from_mask, unstack_layers, update_router_bias)
from r1jax.model.transformer import layer_groups

DENSE = ModelConfig.tiny(num_layers=3)
MOE = ModelConfig.tiny(num_layers=4, moe=MoEConfig(num_experts=4, top_k=2, expert_dim=16, first_k_dense=1,
                                                   num_shared_experts=1))
IDS = np.random.default_rng(0).integers(1, 64, (2, 9)).astype(np.int32)
MASK = np.ones((2, 9), bool)
MASK[0, :3] = False


def scanned(cfg, **kw):
    return dataclasses.replace(cfg, scan_layers=True, **kw)


@functools.cache
def loss_and_grad(cfg):
    def loss(p):
        logits, _ = Transformer(cfg).apply({"params": p}, IDS, positions_from_mask(MASK), MASK)
        return jnp.sum(jnp.where(MASK[..., None], logits, 0.0) ** 2) / 100
    return jax.jit(jax.value_and_grad(loss))


def test_layer_groups_are_runs_of_identical_blocks():
    assert layer_groups(scanned(DENSE)) == ((0, 3),)
    assert layer_groups(scanned(MOE)) == ((0, 1), (1, 4))  # the dense first layer stands alone
    assert layer_groups(MOE) == ((0, 1), (1, 2), (2, 3), (3, 4))
    specs = param_logical_axes(scanned(DENSE))
    assert tuple(specs["scan_0_3"]["mlp"]["gate"]["kernel"]) == ("layers", "embed", "mlp")


@pytest.mark.parametrize("base,remat", [(DENSE, "full"), (DENSE, "dots")], ids=["full", "dots"])
def test_scanned_model_equals_unrolled_loss_and_gradients(base, remat):
    cfg = dataclasses.replace(base, remat=remat)
    params = init_params(cfg, jax.random.key(0))
    stacked = convert_layout(params, scanned(cfg))
    assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(jnp.shape, init_params(scanned(cfg), jax.random.key(0)))
    loss_u, grads_u = loss_and_grad(cfg)(params)
    loss_s, grads_s = loss_and_grad(scanned(cfg))(stacked)
    np.testing.assert_allclose(loss_s, loss_u, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), unstack_layers(grads_s), grads_u)


def test_layouts_convert_both_ways_exactly():
    params = init_params(MOE, jax.random.key(3))
    back = unstack_layers(convert_layout(params, scanned(MOE)))
    jax.tree.map(np.testing.assert_array_equal, back, params)
    jax.tree.map(np.testing.assert_array_equal, convert_layout(convert_layout(params, scanned(MOE)), MOE), params)


def test_scanned_prefill_and_decode_equal_unrolled():
    params = init_params(DENSE, jax.random.key(1))
    outs = []
    for cfg, p in ((DENSE, params), (scanned(DENSE), convert_layout(params, scanned(DENSE)))):
        step = jax.jit(lambda p, *a, cfg=cfg: Transformer(cfg).apply({"params": p}, *a))
        cache = init_cache(cfg, 2, 12)
        logits, cache = step(p, IDS, positions_from_mask(MASK), MASK, cache)
        nxt, _ = step(p, IDS[:, -1:], positions_from_mask(MASK)[:, -1:] + 1, np.ones((2, 1), bool), cache)
        outs.append((np.where(MASK[..., None], logits, 0), nxt))
    assert init_cache(scanned(DENSE), 2, 12).layers[0].k_BxKxDxS.shape == (3, 2, 2, 8, 12)  # layers stacked
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_moe_statistics_and_bias_update_follow_the_layers_through_a_scan():
    params = init_params(MOE, jax.random.key(4))
    stats = []
    for cfg, p in ((MOE, params), (scanned(MOE), convert_layout(params, scanned(MOE)))):
        (_, _), state = Transformer(cfg).apply({"params": p}, IDS, positions_from_mask(MASK), MASK,
                                               mutable=["intermediates"])
        aux, s = moe_aux(cfg, state["intermediates"])
        stats.append((aux, s["expert_load"]))
    np.testing.assert_allclose(stats[1][1], stats[0][1])  # [moe layers, experts], in layer order
    load = stats[0][1].at[1, 0].add(5.0)  # make the layers differ
    new_u = update_router_bias(params, load, 0.01)
    new_s = update_router_bias(convert_layout(params, scanned(MOE)), load, 0.01)
    jax.tree.map(np.testing.assert_array_equal, unstack_layers(new_s), new_u)


def test_hf_files_are_the_same_whatever_the_layout(tmp_path):
    params = jax.tree.map(np.asarray, init_params(DENSE, jax.random.key(5)))
    hf.save_hf(tmp_path / "a", DENSE, params)
    hf.save_hf(tmp_path / "b", scanned(DENSE), convert_layout(params, scanned(DENSE)))
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    cfg, loaded = hf.load_hf(tmp_path / "a", scan_layers=True)
    assert "scan_0_3" in loaded and cfg.scan_layers
    jax.tree.map(np.testing.assert_array_equal, unstack_layers(loaded), params)


def test_execution_settings_load_a_folder_in_another_precision_and_layout(tmp_path):
    from bpe_tokenizer import write_bpe_tokenizer

    from r1jax.phases import load_source

    params = jax.tree.map(np.asarray, init_params(DENSE, jax.random.key(6)))
    hf.save_hf(tmp_path, DENSE, params)
    write_bpe_tokenizer(tmp_path, ["1 + 2 = 3"] * 20, 270, {"eos_token": "<|im_end|>", "bos_token": None})
    run = Execution(param_dtype="bfloat16", dtype="bfloat16", remat="full", scan_layers=True)
    cfg, loaded, _ = load_source(str(tmp_path), run)
    assert (cfg.param_dtype, cfg.dtype, cfg.remat, cfg.scan_layers) == ("bfloat16", "bfloat16", "full", True)
    assert {x.dtype for x in jax.tree.leaves(loaded)} == {jnp.dtype(jnp.bfloat16)}
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b.astype(jnp.bfloat16)), unstack_layers(loaded), params)
    with pytest.raises(ValueError, match="remat"):
        Execution(remat="sometimes")
