"""Multi-head latent attention (DeepSeek-V2/V3; V3: arXiv 2412.19437 §2.1.1, eq. 1-11) with a latent KV cache.

    c_KV = RMSNorm(W_DKV h)                   latent, kv_lora_rank dims        (eq. 1)
    k_C, v_C = W_UK c_KV, W_UV c_KV           per head, rebuilt from c_KV      (eq. 2, 5)
    k_R = RoPE(W_KR h)                        one RoPE key shared by all heads (eq. 3)
    q = W_UQ RMSNorm(W_DQ h) → [q_C; RoPE(q_R)]                               (eq. 6-9)
    o = softmax([q_C; q_R]·[k_C; k_R] · scale) v_C                           (eq. 10-11)

The cache holds only c_KV and k_R per slot. Without a cache the keys and values
are expanded (training, full forward); with one, W_UK is folded into the query
and W_UV applied after attention (the absorbed form), so a decode step never
expands the cached latents. Both give the same numbers.

Shape legend: B batch, L new tokens, S key slots, E embed_dim, H heads,
C kv_lora_rank, Q q_lora_rank, N qk_nope_dim, R qk_rope_dim, V v_head_dim.
"""
from __future__ import annotations

import dataclasses
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax.config import ModelConfig
from r1jax.model.attention import _MASKED, AttentionMask, attend, resolve_attention
from r1jax.model.layers import Dense, RMSNorm, constrain
from r1jax.model.paged import PagedLatent, PageTable, paged_attention, read_pages, token_slots, write_tokens
from r1jax.model.rope import apply_rope, rope_frequencies

LATENT_NORM_EPS = 1e-6  # DeepSeek's latent norms use the default eps, whatever rms_norm_eps says


@flax.struct.dataclass
class MLACache:
    """One layer's normalized KV latents and RoPE'd shared keys by slot."""

    latent_BxSxC: jax.Array
    k_rope_BxSxR: jax.Array
    logical_axes = {"latent_BxSxC": ("batch", "cache_length", "kv_lora"),
                    "k_rope_BxSxR": ("batch", "cache_length", "head_dim")}  # not a field: a class constant


def softmax_scale(cfg: ModelConfig) -> float:
    """1/sqrt(N + R), times YaRN's mscale² when the rope is scaled (DeepSeek's attention-scale correction)."""
    mla, scaling = cfg.mla, cfg.rope_scaling
    scale = (mla.qk_nope_dim + mla.qk_rope_dim) ** -0.5
    if scaling is not None and mla.mscale_all_dim > 0 and scaling.factor > 1:
        mscale = 0.1 * mla.mscale_all_dim * math.log(scaling.factor) + 1.0
        scale *= mscale * mscale
    return scale


class Kernel(nn.Module):
    """A bare projection kernel (for weights used in more than one contraction), named like Dense's."""

    cfg: ModelConfig
    shape: tuple[int, ...]
    axes: tuple[str, ...]

    @nn.compact
    def __call__(self) -> jax.Array:
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=0,
                                                out_axis=tuple(range(1, len(self.shape))))
        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), self.shape, self.cfg.param_dtype)
        return kernel.astype(self.cfg.dtype)


class MLA(nn.Module):
    """Multi-head latent attention; its layer cache is an `MLACache`."""

    cfg: ModelConfig

    @staticmethod
    def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: jnp.dtype) -> MLACache:
        """Zeroed latents and RoPE keys for `max_len` slots."""
        return MLACache(jnp.zeros((batch, max_len, cfg.mla.kv_lora_rank), dtype),
                        jnp.zeros((batch, max_len, cfg.mla.qk_rope_dim), dtype))

    @staticmethod
    def init_paged(cfg: ModelConfig, pages: int, page_size: int, dtype: jnp.dtype) -> PagedLatent:
        """A zeroed pool of latents (P, N, C) and RoPE keys (P, N, R)."""
        return PagedLatent(jnp.zeros((pages, page_size, cfg.mla.kv_lora_rank), dtype),
                           jnp.zeros((pages, page_size, cfg.mla.qk_rope_dim), dtype))

    @nn.compact
    def __call__(self, x_BxLxE: jax.Array, positions_BxL: jax.Array, mask: AttentionMask,
                 cache: MLACache | None, index: jax.Array) -> tuple[jax.Array, MLACache | None]:
        """Attends the L new tokens (written at slots [index, index+L) of the cache, if any) to the keys `mask` allows."""
        cfg, mla = self.cfg, self.cfg.mla
        heads, nope, rope, latent = cfg.num_heads, mla.qk_nope_dim, mla.qk_rope_dim, mla.kv_lora_rank
        latent_cfg = dataclasses.replace(cfg, norm_eps=LATENT_NORM_EPS)

        if mla.q_lora_rank is None:
            q_BxLxHxD = Dense(cfg, (heads, nope + rope), ("embed", "heads", "head_dim"), name="q")(x_BxLxE)
        else:
            q_BxLxQ = Dense(cfg, (mla.q_lora_rank,), ("embed", "q_lora"), name="q_a")(x_BxLxE)
            q_BxLxQ = RMSNorm(latent_cfg, name="q_norm")(q_BxLxQ)
            q_BxLxHxD = Dense(cfg, (heads, nope + rope), ("q_lora", "heads", "head_dim"), name="q_b")(q_BxLxQ)
        kv_BxLxCR = Dense(cfg, (latent + rope,), ("embed", "kv_lora"), name="kv_a")(x_BxLxE)
        latent_BxLxC = RMSNorm(latent_cfg, name="kv_norm")(kv_BxLxCR[..., :latent])

        inv_freq, rope_factor = rope_frequencies(rope, cfg.rope_theta, cfg.rope_scaling)
        q_nope_BxLxHxN = q_BxLxHxD[..., :nope]
        q_rope_BxLxHxR = apply_rope(q_BxLxHxD[..., nope:], positions_BxL, inv_freq, rope_factor)
        k_rope_BxLxR = apply_rope(kv_BxLxCR[..., None, latent:], positions_BxL, inv_freq, rope_factor)[:, :, 0]

        kv_up_CxHxNV = Kernel(cfg, (latent, heads, nope + mla.v_head_dim), ("kv_lora", "heads", "head_dim"),
                              name="kv_b")()
        w_uk_CxHxN, w_uv_CxHxV = kv_up_CxHxNV[..., :nope], kv_up_CxHxNV[..., nope:]

        if isinstance(cache, PagedLatent):
            out_BxLxHxV, cache = self._paged(q_nope_BxLxHxN, q_rope_BxLxHxR, latent_BxLxC, k_rope_BxLxR, w_uk_CxHxN,
                                             w_uv_CxHxV, mask, cache)
            out_BxLxE = Dense(cfg, (cfg.embed_dim,), ("heads", "head_dim", "embed"), num_in=2, name="o")(out_BxLxHxV)
            return out_BxLxE, cache
        if cache is not None:
            start = (jnp.int32(0), index, jnp.int32(0))
            latent_BxSxC = jax.lax.dynamic_update_slice(
                cache.latent_BxSxC, latent_BxLxC.astype(cache.latent_BxSxC.dtype), start)
            k_rope_BxSxR = jax.lax.dynamic_update_slice(
                cache.k_rope_BxSxR, k_rope_BxLxR.astype(cache.k_rope_BxSxR.dtype), start)
            cache = MLACache(constrain(latent_BxSxC, "batch", "cache_length", "kv_lora"),
                             constrain(k_rope_BxSxR, "batch", "cache_length", "head_dim"))
        length = q_BxLxHxD.shape[1]
        blocks = resolve_attention(cfg.attention, cached=cache is not None, length=length,
                                   block=cfg.attention_block) != "dense"
        if cache is None and blocks:  # expanded keys and values, one kv head per query head
            k_BxSxHxD = jnp.concatenate([jnp.einsum("bsc,chn->bshn", latent_BxLxC, w_uk_CxHxN), jnp.broadcast_to(
                k_rope_BxLxR[:, :, None], k_rope_BxLxR.shape[:2] + (heads, rope))], axis=-1)
            v_BxSxHxV = jnp.einsum("bsc,chv->bshv", latent_BxLxC, w_uv_CxHxV)
            q_BxLxHxD = jnp.concatenate([q_nope_BxLxHxN, q_rope_BxLxHxR], axis=-1)
            out_BxLxHxV = attend(q_BxLxHxD, k_BxSxHxD.transpose(0, 2, 1, 3), v_BxSxHxV.transpose(0, 2, 1, 3), mask,
                                 softmax_scale(cfg), cfg)
        elif cache is not None and length > 1 and blocks:  # absorbed prefill: one shared latent kv head
            latent_BxSxC, k_rope_BxSxR = cache.latent_BxSxC.astype(cfg.dtype), cache.k_rope_BxSxR.astype(cfg.dtype)
            q_BxLxHxCR = jnp.concatenate([jnp.einsum("blhn,chn->blhc", q_nope_BxLxHxN, w_uk_CxHxN), q_rope_BxLxHxR],
                                         axis=-1)
            k_Bx1xSxCR = jnp.concatenate([latent_BxSxC, k_rope_BxSxR], axis=-1)[:, None]
            out_BxLxHxC = attend(q_BxLxHxCR, k_Bx1xSxCR, latent_BxSxC[:, None], mask, softmax_scale(cfg), cfg,
                                 cached=True)
            out_BxLxHxV = jnp.einsum("blhc,chv->blhv", out_BxLxHxC, w_uv_CxHxV)
        else:
            out_BxLxHxV = self._dense(q_nope_BxLxHxN, q_rope_BxLxHxR, latent_BxLxC, k_rope_BxLxR, w_uk_CxHxN,
                                      w_uv_CxHxV, mask.dense(length), cache)
        out_BxLxHxV = constrain(out_BxLxHxV, "batch", "length", "heads", "head_dim")
        out_BxLxE = Dense(cfg, (cfg.embed_dim,), ("heads", "head_dim", "embed"), num_in=2, name="o")(out_BxLxHxV)
        return out_BxLxE, cache

    def _paged(self, q_nope_BxLxHxN, q_rope_BxLxHxR, latent_BxLxC, k_rope_BxLxR, w_uk_CxHxN, w_uv_CxHxV,
               table: PageTable, cache: PagedLatent):
        """Absorbed attention over each row's latent pages (one shared kv head), after writing the new latents."""
        page_size = cache.latent_PxNxC.shape[1]
        page_BxL, slot_BxL = token_slots(table, latent_BxLxC.shape[1], page_size)
        shards = table.shards
        cache = PagedLatent(write_tokens(cache.latent_PxNxC, latent_BxLxC, page_BxL, slot_BxL, 1, shards),
                            write_tokens(cache.k_rope_PxNxR, k_rope_BxLxR, page_BxL, slot_BxL, 1, shards))

        def read_page(page_B):
            latent_BxNxC = read_pages(cache.latent_PxNxC, page_B, shards)
            k_rope_BxNxR = read_pages(cache.k_rope_PxNxR, page_B, shards)
            return jnp.concatenate([latent_BxNxC, k_rope_BxNxR], axis=-1)[:, None], latent_BxNxC[:, None]

        q_BxLxHxCR = jnp.concatenate([jnp.einsum("blhn,chn->blhc", q_nope_BxLxHxN, w_uk_CxHxN), q_rope_BxLxHxR], -1)
        out_BxLx1xHxC = paged_attention(q_BxLxHxCR[:, :, None], read_page, table, page_size, softmax_scale(self.cfg))
        return jnp.einsum("blhc,chv->blhv", out_BxLx1xHxC[:, :, 0], w_uv_CxHxV), cache

    def _dense(self, q_nope_BxLxHxN, q_rope_BxLxHxR, latent_BxLxC, k_rope_BxLxR, w_uk_CxHxN, w_uv_CxHxV,
               allowed_BxLxS, cache: MLACache | None) -> jax.Array:
        """The [L, S] scores whole: expanded without a cache, absorbed with one (decode)."""
        cfg, f32 = self.cfg, jnp.float32
        if cache is None:  # expanded: per-head keys and values from the L latents
            latent_BxSxC, k_rope_BxSxR = latent_BxLxC, k_rope_BxLxR
            k_nope_BxSxHxN = jnp.einsum("bsc,chn->bshn", latent_BxSxC, w_uk_CxHxN)
            v_BxSxHxV = jnp.einsum("bsc,chv->bshv", latent_BxSxC, w_uv_CxHxV)
            logits_BxHxLxS = jnp.einsum("blhn,bshn->bhls", q_nope_BxLxHxN, k_nope_BxSxHxN, preferred_element_type=f32)
        else:  # absorbed: W_UK folded into the query, attention over the cached latents
            latent_BxSxC, k_rope_BxSxR = cache.latent_BxSxC.astype(cfg.dtype), cache.k_rope_BxSxR.astype(cfg.dtype)
            q_latent_BxLxHxC = jnp.einsum("blhn,chn->blhc", q_nope_BxLxHxN, w_uk_CxHxN)
            logits_BxHxLxS = jnp.einsum("blhc,bsc->bhls", q_latent_BxLxHxC, latent_BxSxC, preferred_element_type=f32)
        # logits and softmax in f32 whatever the compute dtype
        logits_BxHxLxS = logits_BxHxLxS + jnp.einsum("blhr,bsr->bhls", q_rope_BxLxHxR, k_rope_BxSxR,
                                                     preferred_element_type=f32)
        logits_BxHxLxS = jnp.where(allowed_BxLxS[:, None, :, :], logits_BxHxLxS * softmax_scale(cfg), _MASKED)
        probs_BxHxLxS = jax.nn.softmax(logits_BxHxLxS, axis=-1).astype(cfg.dtype)
        if cache is None:
            return jnp.einsum("bhls,bshv->blhv", probs_BxHxLxS, v_BxSxHxV)
        out_BxLxHxC = jnp.einsum("bhls,bsc->blhc", probs_BxHxLxS, latent_BxSxC)
        return jnp.einsum("blhc,chv->blhv", out_BxLxHxC, w_uv_CxHxV)
