"""Multi-head latent attention: latent cache ≡ full forward, causality, relative positions, YaRN scale."""
import dataclasses
import functools
import math

import jax
import numpy as np
import pytest

from r1jax.config import MLAConfig, ModelConfig, MoEConfig, RopeScaling
from r1jax.model import MLACache, Transformer, init_cache, init_params, positions_from_mask
from r1jax.model.mla import softmax_scale

MLA = MLAConfig(kv_lora_rank=12, qk_nope_dim=6, qk_rope_dim=4, v_head_dim=10, q_lora_rank=16, mscale_all_dim=1.0)
CFG = ModelConfig.tiny(mla=MLA, rope_scaling=RopeScaling("yarn", 4.0, 8))
MOE = MoEConfig(num_experts=8, top_k=2, expert_dim=8, num_shared_experts=1, num_groups=2, topk_groups=1)
LENGTHS = (7, 4, 2)
WIDTH = 7


def random_params(cfg, seed=0):
    """Params of init_params' structure drawn with numpy (compiling the random init of a model is slow)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))
    return jax.tree_util.tree_map_with_path(
        lambda path, s: ((1 + 0.1 * rng.standard_normal(s.shape)) if path[-1].key == "scale" else
                         rng.standard_normal(s.shape) / np.sqrt(s.shape[0])).astype(np.float32), shapes)


@functools.cache
def run(cfg):
    return jax.jit(lambda p, *args: Transformer(cfg).apply({"params": p}, *args))


def forward(params, ids, cfg=CFG, positions=None):
    mask = np.ones(ids.shape, bool)
    return run(cfg)(params, ids, positions_from_mask(mask) if positions is None else positions, mask)[0]


def test_the_cache_holds_only_the_latent_and_the_rope_key():
    cache = init_cache(CFG, 3, 11)
    assert all(isinstance(layer, MLACache) for layer in cache.layers)
    assert cache.layers[0].latent_BxSxC.shape == (3, 11, MLA.kv_lora_rank)
    assert cache.layers[0].k_rope_BxSxR.shape == (3, 11, MLA.qk_rope_dim)
    assert len(jax.tree.leaves(cache.layers)) == 2 * CFG.num_layers


@pytest.mark.parametrize("q_lora_rank, side, moe", [(16, "left", None), (None, "right", MOE)])
def test_decoding_with_the_latent_cache_equals_the_full_forward(q_lora_rank, side, moe):
    cfg = dataclasses.replace(CFG, mla=dataclasses.replace(MLA, q_lora_rank=q_lora_rank), moe=moe)
    params = random_params(cfg, 1)
    steps = 3
    full = np.random.default_rng(2).integers(1, cfg.vocab_size, (len(LENGTHS), WIDTH + steps))
    ids, mask = np.zeros((len(LENGTHS), WIDTH), np.int32), np.zeros((len(LENGTHS), WIDTH), bool)
    for b, n in enumerate(LENGTHS):
        sl = slice(WIDTH - n, WIDTH) if side == "left" else slice(0, n)
        ids[b, sl], mask[b, sl] = full[b, :n], True
    lengths = np.asarray(LENGTHS)
    prefill, cache = run(cfg)(params, ids, positions_from_mask(mask), mask, init_cache(cfg, len(LENGTHS), 12))
    decoded = []
    for t in range(steps):
        logits, cache = run(cfg)(params, full[np.arange(len(LENGTHS)), lengths + t][:, None], (lengths + t)[:, None],
                                 np.ones((len(LENGTHS), 1), bool), cache)
        decoded.append(logits[:, 0])
    unpadded = forward(params, full, cfg)
    for b, n in enumerate(LENGTHS):
        np.testing.assert_allclose(prefill[b][mask[b]], unpadded[b, :n], atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.stack([d[b] for d in decoded]), unpadded[b, n:n + steps], atol=1e-5, rtol=0)


def test_mla_is_causal_and_sees_only_relative_positions():
    params = random_params(CFG, 3)
    ids = np.random.default_rng(4).integers(1, CFG.vocab_size, (2, WIDTH))
    base = forward(params, ids)
    changed = ids.copy()
    changed[:, 4] = (changed[:, 4] + 1) % CFG.vocab_size
    after = forward(params, changed)
    np.testing.assert_array_equal(base[:, :4], after[:, :4])
    assert np.abs(base[:, 4:] - after[:, 4:]).max() > 1e-3
    # RoPE on the shared key and the query: shifting every position by 5 changes nothing
    shifted = forward(params, ids, positions=np.broadcast_to(np.arange(5, 5 + WIDTH), ids.shape))
    np.testing.assert_allclose(shifted, base, atol=2e-5, rtol=0)


def test_yarn_attention_scale_correction():
    d = MLA.qk_nope_dim + MLA.qk_rope_dim
    mscale = 0.1 * 1.0 * math.log(4.0) + 1.0
    assert softmax_scale(CFG) == pytest.approx(d ** -0.5 * mscale ** 2)
    assert softmax_scale(dataclasses.replace(CFG, rope_scaling=None)) == pytest.approx(d ** -0.5)
    no_mscale = dataclasses.replace(CFG, mla=dataclasses.replace(MLA, mscale_all_dim=0.0))
    assert softmax_scale(no_mscale) == pytest.approx(d ** -0.5)
    # DeepSeek-V3's own numbers: 192-d heads, YaRN factor 40, mscale_all_dim 1
    v3 = dataclasses.replace(CFG, rope_scaling=RopeScaling("yarn", 40.0, 4096), mla=MLAConfig(
        kv_lora_rank=512, qk_nope_dim=128, qk_rope_dim=64, v_head_dim=128, q_lora_rank=1536, mscale_all_dim=1.0))
    assert softmax_scale(v3) == pytest.approx(192 ** -0.5 * (0.1 * math.log(40) + 1) ** 2)
    # and the model uses it: the logits change when the correction is dropped
    params = random_params(CFG, 5)
    ids = np.random.default_rng(6).integers(1, CFG.vocab_size, (1, WIDTH))
    assert np.abs(forward(params, ids) - forward(params, ids, no_mscale)).max() > 1e-4


@pytest.mark.parametrize("kwargs, message", [
    (dict(kv_lora_rank=0, qk_nope_dim=4, qk_rope_dim=4, v_head_dim=4), "kv_lora_rank=0"),
    (dict(kv_lora_rank=8, qk_nope_dim=4, qk_rope_dim=3, v_head_dim=4), "qk_rope_dim=3 must be even"),
    (dict(kv_lora_rank=8, qk_nope_dim=4, qk_rope_dim=4, v_head_dim=4, q_lora_rank=0), "q_lora_rank=0"),
    (dict(kv_lora_rank=8, qk_nope_dim=4, qk_rope_dim=4, v_head_dim=4, mscale_all_dim=-1.0), "mscale_all_dim"),
])
def test_invalid_mla_configs_raise_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLAConfig(**kwargs)
