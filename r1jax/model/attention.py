"""Grouped-query attention (arXiv 2305.13245) with RoPE and a slot-indexed KV cache.

Shape legend: B batch, L new tokens, S key slots (L without a cache, the cache
length with one), E embed_dim, H query heads, K kv heads, G = H/K query heads
per kv head, D head_dim, Q = G·L query rows per kv head.

Layout: queries are grouped as (B, K, G·L, D), so both attention matmuls are
plain batched matmuls over (B, K) with one contracting axis, in the forward and
the backward pass: no transposed copy of the [.., L, S] scores in training
(XLA:CPU copies an operand whose contracting axes are split). The cache is
kv-head-major with the keys stored transposed, keys (B, K, D, S) and values
(B, K, S, D): a decode step's q·kᵀ then reads each key row along S, contiguous
in memory; with keys as (B, K, S, D) that matmul streamed the cache at half the
machine's memory bandwidth (decode at batch 64 spends most of a step there).

An attention class owns its cache: `init_cache(cfg, batch, max_len, dtype)`
returns the per-layer pytree that `__call__` reads and returns, so a latent
attention (MLA) can store a different one. Validity of slots and the write
index are shared by all layers and live in `transformer.Cache`.
"""
from __future__ import annotations

import dataclasses
import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax.config import ModelConfig
from r1jax.model.flash import blockwise_attention
from r1jax.model.layers import Dense, RMSNorm, constrain
from r1jax.model import paged
from r1jax.model.paged import (PagedKV, PagedKVPairs, PageTable, paged_attention, ragged_kernel_attention,
                               read_pages, token_slots, write_tokens)
from r1jax.model.rope import apply_rope, rope_frequencies

_MASKED = -1e30  # finite, so a query with no visible key gets a uniform (ignored) row, not NaN
_CAUSAL_BLOCK = 256  # query rows per block when fully masked score blocks are skipped (no cache)


@flax.struct.dataclass
class KVCache:
    """One layer's RoPE'd keys (transposed: slot last) and values, by kv head."""

    k_BxKxDxS: jax.Array
    v_BxKxSxD: jax.Array
    logical_axes = {"k_BxKxDxS": ("batch", "kv_heads", "head_dim", "cache_length"),
                    "v_BxKxSxD": ("batch", "kv_heads", "cache_length", "head_dim")}  # not a field: a class constant


def attention_mask(valid_BxS: jax.Array, index: jax.Array, length: int,
                   segment_ids_BxL: jax.Array | None = None) -> jax.Array:
    """allowed_BxLxS: key slot s is valid and not after query slot index + l (same segment, if given)."""
    q_slots_1xLx1 = (index + jnp.arange(length, dtype=jnp.int32))[None, :, None]
    k_slots_1x1xS = jnp.arange(valid_BxS.shape[1], dtype=jnp.int32)[None, None, :]
    allowed_BxLxS = (k_slots_1x1xS <= q_slots_1xLx1) & valid_BxS[:, None, :]
    if segment_ids_BxL is not None:
        allowed_BxLxS &= segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :]
    return allowed_BxLxS


@flax.struct.dataclass
class AttentionMask:
    """Which key slots a query sees: valid ones not after its own slot (q_offset + l), in its segment if packed.

    Kept as its parts, never as the [B, L, S] matrix, so blockwise kernels build each block's mask.
    """

    valid_BxS: jax.Array  # bool: slot holds a real token
    q_offset: jax.Array  # int32 scalar: slot of query 0 (the cache's write index; 0 without a cache)
    segment_ids_BxL: jax.Array | None = None  # packed rows (no cache): keys only in the query's segment

    def dense(self, length: int) -> jax.Array:
        """allowed_BxLxS for `length` queries (the dense paths)."""
        return attention_mask(self.valid_BxS, self.q_offset, length, self.segment_ids_BxL)


def resolve_attention(impl: str, backend: str | None = None, cached: bool = False, length: int | None = None,
                      block: int = 512) -> str:
    """The kernel an `attention` setting runs for L = `length` queries.

    'auto' is cudnn on GPU and splash on TPU for cache-free calls; elsewhere, and for every
    prefill into a cache, blockwise, except that on CPU rows of at most one block (L <= `block`)
    keep the dense scores: they are small there, and XLA:CPU runs them as one matmul.
    """
    backend = backend or jax.default_backend()
    if impl == "auto":
        if backend == "cpu" and length is not None and length <= block:
            return "dense"
        impl = {"gpu": "cudnn", "cuda": "cudnn", "rocm": "cudnn", "tpu": "splash"}.get(backend, "blockwise")
    if impl in PLATFORM_KERNELS:
        if cached:
            return "blockwise"
        if backend not in PLATFORM_KERNELS[impl]:
            raise ValueError(f"attention={impl!r} runs on {PLATFORM_KERNELS[impl]} only, not on {backend!r}; "
                             "use 'auto', 'blockwise' or 'dense'")
    return impl


PLATFORM_KERNELS = {"cudnn": ("gpu", "cuda", "rocm"), "splash": ("tpu",)}


def attend(q_BxLxHxD: jax.Array, k_BxKxSxD: jax.Array, v_BxKxSxV: jax.Array, mask: AttentionMask, scale: float,
           cfg: ModelConfig, cached: bool = False) -> jax.Array:
    """Attention of L queries over S key slots by the kernel cfg.attention resolves to; out B×L×H×V.

    Every kernel computes softmax(q·kᵀ·scale over visible keys)·v with scores and softmax in f32;
    'blockwise' and the platform kernels never hold the [L, S] probabilities (memory linear in length).
    """
    batch, length, heads, _ = q_BxLxHxD.shape
    impl = resolve_attention(cfg.attention, cached=cached, length=length, block=cfg.attention_block)
    kv_heads = k_BxKxSxD.shape[1]
    if impl == "dense":
        causal_block = None if cached else _CAUSAL_BLOCK
        return grouped_attention(q_BxLxHxD, k_BxKxSxD, v_BxKxSxV, mask.dense(length), scale, causal_block)
    if impl == "cudnn":
        return _cudnn_attention(q_BxLxHxD, k_BxKxSxD, v_BxKxSxV, mask, scale)
    if impl == "splash":
        return _splash_attention(q_BxLxHxD, k_BxKxSxD, v_BxKxSxV, mask, scale, cfg.attention_block)
    q_BxLxKxGxD = q_BxLxHxD.reshape(batch, length, kv_heads, heads // kv_heads, -1)
    out = blockwise_attention(q_BxLxKxGxD, k_BxKxSxD, v_BxKxSxV, mask.valid_BxS, mask.q_offset, scale,
                              mask.segment_ids_BxL, cfg.attention_block, cfg.attention_block)
    return out.reshape(batch, length, heads, -1)


def _cudnn_attention(q_BxLxHxD, k_BxKxSxD, v_BxKxSxV, mask: AttentionMask, scale: float) -> jax.Array:
    """jax.nn.dot_product_attention's cuDNN (flash) kernel; the padding/segment mask goes in as [B, 1, L, S] bool.

    UNTESTED: it has not run on a GPU in this project (the tests skip it on CPU).
    """
    length = q_BxLxHxD.shape[1]
    allowed_Bx1xLxS = mask.dense(length)[:, None]
    return jax.nn.dot_product_attention(q_BxLxHxD, k_BxKxSxD.transpose(0, 2, 1, 3), v_BxKxSxV.transpose(0, 2, 1, 3),
                                        mask=allowed_Bx1xLxS, scale=scale, implementation="cudnn")


def _splash_attention(q_BxLxHxD, k_BxKxSxD, v_BxKxSxV, mask: AttentionMask, scale: float, block: int) -> jax.Array:
    """TPU splash attention (Pallas) with a causal mask and padding as segment ids (pads: segment 0).

    UNTESTED: it has not run on a TPU in this project (the tests skip it elsewhere). Runs per row
    under vmap; on a multi-chip mesh it needs jax.shard_map over the batch and head axes.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    batch, length, heads, dim = q_BxLxHxD.shape
    kv_heads = k_BxKxSxD.shape[1]
    seg_BxL = mask.valid_BxS.astype(jnp.int32)
    if mask.segment_ids_BxL is not None:
        seg_BxL = jnp.where(mask.valid_BxS, mask.segment_ids_BxL.astype(jnp.int32), 0)
    sizes = splash.BlockSizes.get_default()
    sizes = dataclasses.replace(sizes, block_q=min(block, length), block_kv=min(block, length),
                                block_kv_compute=min(block, length))
    kernel = splash.make_splash_mqa_single_device(
        masks.MultiHeadMask([masks.CausalMask((length, length))] * (heads // kv_heads)), block_sizes=sizes)
    q_BxKxGxLxD = (q_BxLxHxD * scale).reshape(batch, length, kv_heads, heads // kv_heads, dim).transpose(0, 2, 3, 1, 4)
    per_kv_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))  # over kv heads: one MQA group each
    per_row = jax.vmap(lambda q, k, v, s: per_kv_head(q, k, v, splash.SegmentIds(q=s, kv=s)))
    out_BxKxGxLxD = per_row(q_BxKxGxLxD, k_BxKxSxD, v_BxKxSxV, seg_BxL)
    return out_BxKxGxLxD.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, -1)


def grouped_attention(q_BxLxHxD: jax.Array, k_BxKxSxD: jax.Array, v_BxKxSxD: jax.Array, allowed_BxLxS: jax.Array,
                      scale: float, causal_block: int | None = None) -> jax.Array:
    """softmax(q·kᵀ·scale, allowed keys only)·v per query head; scores and softmax in f32; out B×L×H×D.

    `causal_block` (queries and keys on the same slots, as without a cache): queries go
    in blocks of that many, each against the keys up to its last slot only, skipping
    score blocks that causality masks whole (about half of them for long rows).
    """
    length = q_BxLxHxD.shape[1]
    if causal_block is not None and length > causal_block:
        outs = []
        for start in range(0, length, causal_block):
            end = min(start + causal_block, length)
            outs.append(grouped_attention(q_BxLxHxD[:, start:end], k_BxKxSxD[:, :, :end], v_BxKxSxD[:, :, :end],
                                          allowed_BxLxS[:, start:end, :end], scale))
        return jnp.concatenate(outs, axis=1)
    q_BxKxQxD = _group_queries(q_BxLxHxD, k_BxKxSxD.shape[1])
    return _ungroup_queries(_attend(q_BxKxQxD, k_BxKxSxD, v_BxKxSxD, allowed_BxLxS, scale), length)


def cached_attention(q_BxLxHxD: jax.Array, k_BxKxDxS: jax.Array, v_BxKxSxD: jax.Array,
                     allowed_BxLxS: jax.Array, scale: float) -> jax.Array:
    """grouped_attention against a cache whose keys are stored transposed (slot last)."""
    batch, length, heads, dim = q_BxLxHxD.shape
    kv_heads = k_BxKxDxS.shape[1]
    q_BxKxQxD = _group_queries(q_BxLxHxD, kv_heads)
    logits_BxKxQxS = jnp.einsum("bkqd,bkds->bkqs", q_BxKxQxD, k_BxKxDxS, preferred_element_type=jnp.float32)
    probs_BxKxQxS = _softmax_allowed(logits_BxKxQxS * scale, allowed_BxLxS)
    out_BxKxQxD = jnp.einsum("bkqs,bksd->bkqd", probs_BxKxQxS.astype(q_BxKxQxD.dtype), v_BxKxSxD)
    return _ungroup_queries(out_BxKxQxD, length)


def _group_queries(q_BxLxHxD: jax.Array, kv_heads: int) -> jax.Array:
    """q_BxKxQxD: the G query heads of each kv head, by head then position (Q = G·L)."""
    batch, length, heads, dim = q_BxLxHxD.shape
    return (q_BxLxHxD.reshape(batch, length, kv_heads, heads // kv_heads, dim).transpose(0, 2, 3, 1, 4)
            .reshape(batch, kv_heads, heads // kv_heads * length, dim))


def _ungroup_queries(out_BxKxQxD: jax.Array, length: int) -> jax.Array:
    batch, kv_heads, rows, dim = out_BxKxQxD.shape
    return (out_BxKxQxD.reshape(batch, kv_heads, rows // length, length, dim).transpose(0, 3, 1, 2, 4)
            .reshape(batch, length, kv_heads * (rows // length), dim))


def _allowed_5d(allowed_BxLxS: jax.Array) -> jax.Array:
    return allowed_BxLxS[:, None, None]  # [B, 1, 1, L, S]: the same keys for every kv head and group


def _softmax_allowed(logits_BxKxQxS: jax.Array, allowed_BxLxS: jax.Array) -> jax.Array:
    """Softmax over the allowed slots of each query row's scaled scores."""
    batch, kv_heads, rows, slots = logits_BxKxQxS.shape
    length = allowed_BxLxS.shape[1]
    logits_BxKxGxLxS = jnp.where(_allowed_5d(allowed_BxLxS),
                                 logits_BxKxQxS.reshape(batch, kv_heads, rows // length, length, slots), _MASKED)
    return jax.nn.softmax(logits_BxKxGxLxS, axis=-1).reshape(logits_BxKxQxS.shape)


def _probs(q_BxKxQxD, k_BxKxSxD, allowed_BxLxS, scale) -> jax.Array:
    """probs_BxKxQxS in f32: softmax over the allowed slots of the scaled scores."""
    logits_BxKxQxS = jnp.einsum("bkqd,bksd->bkqs", q_BxKxQxD, k_BxKxSxD, preferred_element_type=jnp.float32) * scale
    return _softmax_allowed(logits_BxKxQxS, allowed_BxLxS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attend(q_BxKxQxD, k_BxKxSxD, v_BxKxSxD, allowed_BxLxS, scale):
    """probs·v for Q = G·L query rows per kv head.

    The backward pass is written out (as FlashAttention's, arXiv 2205.14135 §B.2):
    dscores = p ⊙ (dp − δ) with δ = Σ_d dout·out, one fused pass over the [Q, S] scores
    instead of autodiff's separate passes for the softmax, the mask and the scale.
    """
    probs_BxKxQxS = _probs(q_BxKxQxD, k_BxKxSxD, allowed_BxLxS, scale)
    return jnp.einsum("bkqs,bksd->bkqd", probs_BxKxQxS.astype(q_BxKxQxD.dtype), v_BxKxSxD)


def _attend_fwd(q_BxKxQxD, k_BxKxSxD, v_BxKxSxD, allowed_BxLxS, scale):
    probs_BxKxQxS = _probs(q_BxKxQxD, k_BxKxSxD, allowed_BxLxS, scale)
    out_BxKxQxD = jnp.einsum("bkqs,bksd->bkqd", probs_BxKxQxS.astype(q_BxKxQxD.dtype), v_BxKxSxD)
    return out_BxKxQxD, (q_BxKxQxD, k_BxKxSxD, v_BxKxSxD, allowed_BxLxS, probs_BxKxQxS, out_BxKxQxD)


def _attend_bwd(scale, res, dout_BxKxQxD):
    q_BxKxQxD, k_BxKxSxD, v_BxKxSxD, allowed_BxLxS, probs_BxKxQxS, out_BxKxQxD = res
    batch, kv_heads, rows, _ = q_BxKxQxD.shape
    length, slots = allowed_BxLxS.shape[1:]
    dtype = q_BxKxQxD.dtype
    dprobs_BxKxQxS = jnp.einsum("bkqd,bksd->bkqs", dout_BxKxQxD, v_BxKxSxD, preferred_element_type=jnp.float32)
    delta_BxKxQx1 = jnp.sum(dout_BxKxQxD.astype(jnp.float32) * out_BxKxQxD.astype(jnp.float32), -1, keepdims=True)
    dlogits_BxKxQxS = probs_BxKxQxS * (dprobs_BxKxQxS - delta_BxKxQx1) * scale
    # masked scores are constants: no gradient (this matters for a query that sees no key at all)
    dlogits_BxKxGxLxS = jnp.where(_allowed_5d(allowed_BxLxS),
                                  dlogits_BxKxQxS.reshape(batch, kv_heads, rows // length, length, slots), 0.0)
    dlogits_BxKxQxS = dlogits_BxKxGxLxS.reshape(dlogits_BxKxQxS.shape).astype(dtype)
    dq_BxKxQxD = jnp.einsum("bkqs,bksd->bkqd", dlogits_BxKxQxS, k_BxKxSxD)
    dk_BxKxSxD = jnp.einsum("bkqs,bkqd->bksd", dlogits_BxKxQxS, q_BxKxQxD)
    dv_BxKxSxD = jnp.einsum("bkqs,bkqd->bksd", probs_BxKxQxS.astype(dtype), dout_BxKxQxD)
    return dq_BxKxQxD, dk_BxKxSxD, dv_BxKxSxD, None


_attend.defvjp(_attend_fwd, _attend_bwd)


class Attention(nn.Module):
    """Multi-head attention with grouped kv heads, optional q/k/v (and output) bias, optional q/k norm, RoPE."""

    cfg: ModelConfig

    @staticmethod
    def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: jnp.dtype) -> KVCache:
        """Zeroed keys (B, K, D, max_len) and values (B, K, max_len, D)."""
        shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        return KVCache(jnp.zeros((batch, cfg.num_kv_heads, cfg.head_dim, max_len), dtype), jnp.zeros(shape, dtype))

    @staticmethod
    def init_paged(cfg: ModelConfig, pages: int, page_size: int, dtype: jnp.dtype) -> PagedKV | PagedKVPairs:
        """A zeroed pool of `pages` pages of `page_size` slots: keys and values (P, K, N, D), or with
        paged_attention='tpu_ragged' both in one (P, N, 2K, D) array."""
        if cfg.paged_attention == "tpu_ragged":
            return PagedKVPairs(jnp.zeros((pages, page_size, 2 * cfg.num_kv_heads, cfg.head_dim), dtype))
        shape = (pages, cfg.num_kv_heads, page_size, cfg.head_dim)
        return PagedKV(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    @nn.compact
    def __call__(self, x_BxLxE: jax.Array, positions_BxL: jax.Array, mask: AttentionMask | PageTable,
                 cache: KVCache | PagedKV | PagedKVPairs | None, index: jax.Array
                 ) -> tuple[jax.Array, KVCache | PagedKV | PagedKVPairs | None]:
        """Attends the L new tokens (written at slots [index, index+L) of the cache, if any) to the keys `mask` allows.

        With a paged cache `mask` is the call's `PageTable` and `index` is unused.
        """
        cfg = self.cfg

        def proj(heads: int, head_axis: str, name: str) -> Dense:
            return Dense(cfg, (heads, cfg.head_dim), ("embed", head_axis, "head_dim"), use_bias=cfg.qkv_bias,
                         name=name)

        q_BxLxHxD = proj(cfg.num_heads, "heads", "q")(x_BxLxE)
        k_BxLxKxD = proj(cfg.num_kv_heads, "kv_heads", "k")(x_BxLxE)
        v_BxLxKxD = proj(cfg.num_kv_heads, "kv_heads", "v")(x_BxLxE)
        if cfg.qk_norm:  # per-head RMSNorm before RoPE (Qwen3)
            q_BxLxHxD = RMSNorm(cfg, name="q_norm")(q_BxLxHxD)
            k_BxLxKxD = RMSNorm(cfg, name="k_norm")(k_BxLxKxD)

        inv_freq, rope_factor = rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        q_BxLxHxD = constrain(apply_rope(q_BxLxHxD, positions_BxL, inv_freq, rope_factor),
                              "batch", "length", "heads", "head_dim")
        k_BxLxKxD = constrain(apply_rope(k_BxLxKxD, positions_BxL, inv_freq, rope_factor),
                              "batch", "length", "kv_heads", "head_dim")
        v_BxLxKxD = constrain(v_BxLxKxD, "batch", "length", "kv_heads", "head_dim")

        v_BxKxLxD = v_BxLxKxD.transpose(0, 2, 1, 3)
        scale = cfg.head_dim ** -0.5
        if isinstance(cache, (PagedKV, PagedKVPairs)):
            out_BxLxHxD, cache = self._paged(q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, mask, cache, scale)
        elif cache is None:  # query l sits on slot l
            out_BxLxHxD = attend(q_BxLxHxD, k_BxLxKxD.transpose(0, 2, 1, 3), v_BxKxLxD, mask, scale, cfg)
        else:
            k_BxKxDxS = jax.lax.dynamic_update_slice(
                cache.k_BxKxDxS, k_BxLxKxD.transpose(0, 2, 3, 1).astype(cache.k_BxKxDxS.dtype),
                (jnp.int32(0), jnp.int32(0), jnp.int32(0), index))
            v_BxKxSxD = jax.lax.dynamic_update_slice(cache.v_BxKxSxD, v_BxKxLxD.astype(cache.v_BxKxSxD.dtype),
                                                     (jnp.int32(0), jnp.int32(0), index, jnp.int32(0)))
            cache = KVCache(constrain(k_BxKxDxS, "batch", "kv_heads", "head_dim", "cache_length"),
                            constrain(v_BxKxSxD, "batch", "kv_heads", "cache_length", "head_dim"))
            k_BxKxDxS, v_BxKxSxD = cache.k_BxKxDxS.astype(cfg.dtype), cache.v_BxKxSxD.astype(cfg.dtype)
            length = q_BxLxHxD.shape[1]
            if length > 1 and resolve_attention(cfg.attention, cached=True, length=length,
                                                block=cfg.attention_block) != "dense":  # prefill in blocks
                out_BxLxHxD = attend(q_BxLxHxD, k_BxKxDxS.transpose(0, 1, 3, 2), v_BxKxSxD, mask, scale, cfg,
                                     cached=True)
            else:  # decode: one query row per kv-head group, linear in S already
                out_BxLxHxD = cached_attention(q_BxLxHxD, k_BxKxDxS, v_BxKxSxD, mask.dense(q_BxLxHxD.shape[1]), scale)
        out_BxLxHxD = constrain(out_BxLxHxD, "batch", "length", "heads", "head_dim")
        out_BxLxE = Dense(cfg, (cfg.embed_dim,), ("heads", "head_dim", "embed"), num_in=2, use_bias=cfg.out_bias,
                          name="o")(out_BxLxHxD)
        return out_BxLxE, cache

    def _paged(self, q_BxLxHxD, k_BxLxKxD, v_BxLxKxD, table: PageTable, cache: PagedKV | PagedKVPairs,
               scale: float):
        """Writes the real new tokens into their pages, then attends over each row's pages."""
        batch, length, heads, _ = q_BxLxHxD.shape
        if isinstance(cache, PagedKVPairs):  # paged_attention='tpu_ragged'
            page_BxL, slot_BxL = token_slots(table, length, cache.kv_PxNx2KxD.shape[1])
            cache = PagedKVPairs(write_tokens(cache.kv_PxNx2KxD, paged.interleave_kv(k_BxLxKxD, v_BxLxKxD),
                                              page_BxL, slot_BxL, 1, table.shards))
            return ragged_kernel_attention(q_BxLxHxD, cache.kv_PxNx2KxD, table, scale, paged.tpu_ragged_kernel()), cache
        page_size, kv_heads = cache.k_PxKxNxD.shape[2], cache.k_PxKxNxD.shape[1]
        page_BxL, slot_BxL = token_slots(table, length, page_size)
        cache = PagedKV(write_tokens(cache.k_PxKxNxD, k_BxLxKxD, page_BxL, slot_BxL, 2, table.shards),
                        write_tokens(cache.v_PxKxNxD, v_BxLxKxD, page_BxL, slot_BxL, 2, table.shards))

        def read_page(page_B):
            return read_pages(cache.k_PxKxNxD, page_B, table.shards), read_pages(cache.v_PxKxNxD, page_B, table.shards)

        q_BxLxKxGxD = q_BxLxHxD.reshape(batch, length, kv_heads, heads // kv_heads, -1)
        out = paged_attention(q_BxLxKxGxD, read_page, table, page_size, scale)
        return out.reshape(batch, length, heads, -1), cache
