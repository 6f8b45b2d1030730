"""Attention kernels: the blockwise online-softmax kernel ≡ the dense [L, S] reference, forward and gradients."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.config import MLAConfig, ModelConfig
from r1jax.model import Transformer, init_cache, init_params, positions_from_mask
from r1jax.model.attention import resolve_attention
from r1jax.model.flash import blockwise_attention

RNG = np.random.default_rng(0)


def dense_reference(q_BxLxKxGxD, k_BxKxSxD, v_BxKxSxV, valid_BxS, q_offset, scale, segment_ids_BxL=None):
    """softmax over the visible keys written out whole in numpy (f64); rows that see nothing give 0."""
    q, k, v = (np.asarray(x, np.float64) for x in (q_BxLxKxGxD, k_BxKxSxD, v_BxKxSxV))
    length, slots = q.shape[1], k.shape[2]
    s = np.einsum("blkgd,bksd->bkgls", q, k) * scale
    allowed = (np.arange(slots)[None, None, :] <= (q_offset + np.arange(length))[None, :, None]) & valid_BxS[:, None]
    if segment_ids_BxL is not None:
        allowed &= segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :]
    s = np.where(allowed[:, None, None], s, -np.inf)
    m = np.max(s, -1, keepdims=True)
    p = np.where(allowed[:, None, None], np.exp(s - np.where(np.isfinite(m), m, 0)), 0)
    p /= np.maximum(p.sum(-1, keepdims=True), 1e-300)
    return np.einsum("bkgls,bksv->blkgv", p, v)


CASES = [  # (batch, L, S, kv heads, groups, D, V, q_offset, block_q, block_k, packed)
    (2, 37, 37, 2, 3, 8, 8, 0, 8, 16, False),  # GQA, blocks that do not divide L
    (2, 40, 40, 1, 4, 8, 5, 0, 16, 8, True),  # MQA, value dim ≠ key dim, packed segments
    (2, 10, 50, 2, 2, 8, 8, 20, 4, 8, False),  # a prefill at slot 20 of a 50-slot cache (empty tail skipped)
    (1, 33, 33, 3, 1, 6, 6, 0, 64, 64, False),  # one block covers everything
]


@pytest.mark.parametrize("case", CASES)
def test_blockwise_matches_the_dense_softmax_forward_and_gradients(case):
    batch, length, slots, kv, groups, dim, vdim, offset, bq, bk, packed = case
    q = RNG.standard_normal((batch, length, kv, groups, dim)).astype(np.float32)
    k = RNG.standard_normal((batch, kv, slots, dim)).astype(np.float32)
    v = RNG.standard_normal((batch, kv, slots, vdim)).astype(np.float32)
    valid = RNG.random((batch, slots)) > 0.2
    valid[0, :6] = False  # left padding: the first queries of row 0 see no key at all
    segments = None
    if packed:
        segments = np.sort(RNG.integers(0, 3, (batch, length)), axis=1).astype(np.int32)
        valid = segments != 0
    w = RNG.standard_normal((batch, length, kv, groups, vdim)).astype(np.float32)

    def ours(q, k, v):
        return blockwise_attention(q, k, v, valid, jnp.int32(offset), 0.3, segments, bq, bk)

    np.testing.assert_allclose(jax.jit(ours)(q, k, v), dense_reference(q, k, v, valid, offset, 0.3, segments),
                               atol=2e-5)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(ours(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    # the reference's gradients by finite differences would be slow: differentiate the same math in jax
    def ref_jax(q, k, v):
        s = jnp.einsum("blkgd,bksd->bkgls", q, k) * 0.3
        allowed = (jnp.arange(slots)[None, None, :] <= (offset + jnp.arange(length))[None, :, None]) & valid[:, None]
        if segments is not None:
            allowed &= segments[:, :, None] == segments[:, None, :]
        p = jnp.where(allowed[:, None, None], jax.nn.softmax(jnp.where(allowed[:, None, None], s, -1e30), -1), 0)
        return jnp.einsum("bkgls,bksv->blkgv", p, v)

    ref_grads = jax.grad(lambda *a: jnp.sum(ref_jax(*a) * w), argnums=(0, 1, 2))(q, k, v)
    for ours_g, ref_g in zip(grads, ref_grads):
        np.testing.assert_allclose(ours_g, ref_g, atol=2e-4, rtol=1e-4)


def test_a_query_that_sees_no_key_gets_zeros_and_no_gradient():
    q = RNG.standard_normal((1, 4, 1, 2, 8)).astype(np.float32)
    k = RNG.standard_normal((1, 1, 4, 8)).astype(np.float32)
    v = RNG.standard_normal((1, 1, 4, 8)).astype(np.float32)
    valid = np.array([[False, False, True, True]])
    f = lambda q: blockwise_attention(q, k, v, valid, jnp.int32(0), 1.0, block_q=2, block_k=2)  # noqa: E731
    out = f(q)
    assert np.all(np.isfinite(out)) and np.all(out[:, :2] == 0)
    g = jax.grad(lambda q: jnp.sum(f(q)))(q)
    assert np.all(np.isfinite(g)) and np.all(g[:, :2] == 0) and np.any(g[:, 2:] != 0)


def test_auto_picks_the_platform_kernel_and_falls_back_with_a_cache():
    assert resolve_attention("auto", "cpu") == "blockwise"
    assert resolve_attention("auto", "cpu", length=512, block=512) == "dense"  # one block: the scores are small
    assert resolve_attention("auto", "cpu", length=513, block=512) == "blockwise"
    assert resolve_attention("auto", "gpu") == "cudnn" and resolve_attention("auto", "tpu") == "splash"
    assert resolve_attention("auto", "tpu", cached=True) == "blockwise"
    assert resolve_attention("dense", "tpu") == "dense"
    with pytest.raises(ValueError, match="splash"):
        resolve_attention("splash", "cpu")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU (never run in this project)")
def test_cudnn_kernel_matches_blockwise():
    model_kernels_agree("cudnn", GQA)


@pytest.mark.skipif(jax.default_backend() != "tpu", reason="splash attention needs a TPU (never run in this project)")
def test_splash_kernel_matches_blockwise():
    model_kernels_agree("splash", GQA)


# ------------------------------------------------------------------ through the model

GQA = ModelConfig.tiny(num_layers=2, attention_block=4)
MLA = ModelConfig.tiny(num_layers=2, attention_block=4, mla=MLAConfig(12, 6, 4, 10, q_lora_rank=16))
WIDTH = 11


def padded_batch(side: str):
    lengths = (11, 7, 3)
    ids = np.zeros((3, WIDTH), np.int32)
    mask = np.zeros((3, WIDTH), bool)
    for b, n in enumerate(lengths):
        sl = slice(WIDTH - n, WIDTH) if side == "left" else slice(0, n)
        ids[b, sl], mask[b, sl] = RNG.integers(1, 64, n), True
    return ids, mask


@functools.cache
def _loss_and_grad(cfg):
    def loss(p, ids, mask):
        logits, _ = Transformer(cfg).apply({"params": p}, ids, positions_from_mask(mask), mask)
        return jnp.sum(jnp.where(mask[..., None], jax.nn.log_softmax(logits), 0.0)) / mask.sum(), logits
    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def model_kernels_agree(kernel: str, base: ModelConfig, side: str = "left"):
    params = init_params(base, jax.random.key(1))
    ids, mask = padded_batch(side)
    (loss_a, logits_a), grads_a = _loss_and_grad(dataclasses.replace(base, attention=kernel))(params, ids, mask)
    (loss_b, logits_b), grads_b = _loss_and_grad(dataclasses.replace(base, attention="dense"))(params, ids, mask)
    np.testing.assert_allclose(np.where(mask[..., None], logits_a, 0), np.where(mask[..., None], logits_b, 0),
                               atol=1e-4)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("base", [GQA, MLA], ids=["gqa", "mla"])
def test_model_with_blockwise_attention_equals_dense_logits_and_gradients(base, side):
    model_kernels_agree("blockwise", base, side)


@pytest.mark.parametrize("base", [GQA, MLA], ids=["gqa", "mla"])
def test_blockwise_prefill_into_a_cache_equals_dense(base):
    params = init_params(base, jax.random.key(2))
    ids, mask = padded_batch("left")
    outs = {}
    for kernel in ("blockwise", "dense"):
        cfg = dataclasses.replace(base, attention=kernel)
        step = jax.jit(lambda p, *a, cfg=cfg: Transformer(cfg).apply({"params": p}, *a))
        logits, cache = step(params, ids, positions_from_mask(mask), mask, init_cache(cfg, 3, WIDTH + 9))
        nxt = np.full((3, 1), 5, np.int32)
        logits2, _ = step(params, nxt, positions_from_mask(mask)[:, -1:] + 1, np.ones((3, 1), bool), cache)
        outs[kernel] = (np.where(mask[..., None], logits, 0), logits2)
    for a, b in zip(outs["blockwise"], outs["dense"]):
        np.testing.assert_allclose(a, b, atol=1e-4)
