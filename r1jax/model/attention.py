"""Grouped-query attention (arXiv 2305.13245) with RoPE and a slot-indexed KV cache.

Shape legend: B batch, L new tokens, S key slots (L without a cache, the cache
length with one), E embed_dim, H query heads, K kv heads, G = H/K query heads
per kv head, D head_dim.

An attention class owns its cache: `init_cache(cfg, batch, max_len, dtype)`
returns the per-layer pytree that `__call__` reads and returns, so a latent
attention (MLA) can store a different one. Validity of slots and the write
index are shared by all layers and live in `transformer.Cache`.
"""
from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax.config import ModelConfig
from r1jax.model.layers import Dense, RMSNorm, constrain
from r1jax.model.rope import apply_rope, rope_frequencies

_MASKED = -1e30  # finite, so a query with no visible key gets a uniform (ignored) row, not NaN


@flax.struct.dataclass
class KVCache:
    """One layer's RoPE'd keys and values by slot."""

    k_BxSxKxD: jax.Array
    v_BxSxKxD: jax.Array


def attention_mask(valid_BxS: jax.Array, index: jax.Array, length: int,
                   segment_ids_BxL: jax.Array | None = None) -> jax.Array:
    """allowed_BxLxS: key slot s is valid and not after query slot index + l (same segment, if given)."""
    q_slots_1xLx1 = (index + jnp.arange(length, dtype=jnp.int32))[None, :, None]
    k_slots_1x1xS = jnp.arange(valid_BxS.shape[1], dtype=jnp.int32)[None, None, :]
    allowed_BxLxS = (k_slots_1x1xS <= q_slots_1xLx1) & valid_BxS[:, None, :]
    if segment_ids_BxL is not None:
        allowed_BxLxS &= segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :]
    return allowed_BxLxS


class Attention(nn.Module):
    """Multi-head attention with grouped kv heads, optional q/k/v (and output) bias, optional q/k norm, RoPE."""

    cfg: ModelConfig

    @staticmethod
    def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: jnp.dtype) -> KVCache:
        """Zeroed keys and values for `max_len` slots."""
        shape = (batch, max_len, cfg.num_kv_heads, cfg.head_dim)
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

    @nn.compact
    def __call__(self, x_BxLxE: jax.Array, positions_BxL: jax.Array, allowed_BxLxS: jax.Array,
                 cache: KVCache | None, index: jax.Array) -> tuple[jax.Array, KVCache | None]:
        """Attends the L new tokens (written at slots [index, index+L) of the cache, if any) to allowed slots."""
        cfg = self.cfg
        batch, length, _ = x_BxLxE.shape
        groups = cfg.num_heads // cfg.num_kv_heads

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

        if cache is None:
            k_BxSxKxD, v_BxSxKxD = k_BxLxKxD, v_BxLxKxD
        else:
            start = (jnp.int32(0), index, jnp.int32(0), jnp.int32(0))
            k_BxSxKxD = jax.lax.dynamic_update_slice(cache.k_BxSxKxD, k_BxLxKxD.astype(cache.k_BxSxKxD.dtype), start)
            v_BxSxKxD = jax.lax.dynamic_update_slice(cache.v_BxSxKxD, v_BxLxKxD.astype(cache.v_BxSxKxD.dtype), start)
            k_BxSxKxD = constrain(k_BxSxKxD, "batch", "cache_length", "kv_heads", "head_dim")
            v_BxSxKxD = constrain(v_BxSxKxD, "batch", "cache_length", "kv_heads", "head_dim")
            cache = KVCache(k_BxSxKxD, v_BxSxKxD)

        q_BxLxKxGxD = q_BxLxHxD.reshape(batch, length, cfg.num_kv_heads, groups, cfg.head_dim)
        # logits and softmax in f32 whatever the compute dtype
        logits_BxKxGxLxS = jnp.einsum("blkgd,bskd->bkgls", q_BxLxKxGxD, k_BxSxKxD.astype(cfg.dtype),
                                      preferred_element_type=jnp.float32) * cfg.head_dim ** -0.5
        logits_BxKxGxLxS = jnp.where(allowed_BxLxS[:, None, None, :, :], logits_BxKxGxLxS, _MASKED)
        probs_BxKxGxLxS = jax.nn.softmax(logits_BxKxGxLxS, axis=-1).astype(cfg.dtype)
        out_BxLxKxGxD = jnp.einsum("bkgls,bskd->blkgd", probs_BxKxGxLxS, v_BxSxKxD.astype(cfg.dtype))
        out_BxLxHxD = constrain(out_BxLxKxGxD.reshape(batch, length, cfg.num_heads, cfg.head_dim),
                                "batch", "length", "heads", "head_dim")
        out_BxLxE = Dense(cfg, (cfg.embed_dim,), ("heads", "head_dim", "embed"), num_in=2, use_bias=cfg.out_bias,
                          name="o")(out_BxLxHxD)
        return out_BxLxE, cache
