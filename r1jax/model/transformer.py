"""Decoder-only transformer: embed → pre-norm blocks → final RMSNorm → logits; the decode cache.

The interface contract (positions, masks, cache slots) is documented in
`r1jax.model`. Shape legend: B batch, L tokens in this call, S cache slots,
E embed_dim, V vocab_size.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax.config import ModelConfig
from r1jax.model.attention import Attention, attention_mask
from r1jax.model.layers import Embed, LMHead, Mlp, RMSNorm, constrain
from r1jax.model.mla import MLA
from r1jax.model.moe import MoE, is_moe_layer


def block_parts(cfg: ModelConfig, layer: int) -> tuple[type[nn.Module], type[nn.Module]]:
    """(attention class, MLP class) of block `layer`: the one place where MLA or MoE layers plug in."""
    return (Attention if cfg.mla is None else MLA), (MoE if is_moe_layer(cfg.moe, layer) else Mlp)


@flax.struct.dataclass
class Cache:
    """Decode state: one cache per layer (owned by its attention class), slot validity, next write slot."""

    layers: tuple[Any, ...]
    valid_BxS: jax.Array  # bool: slot holds a real token
    index: jax.Array  # int32 scalar: next slot to write, shared by all rows


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> Cache:
    """An empty cache of `max_len` slots; `dtype` defaults to the compute dtype."""
    dtype = jnp.dtype(cfg.dtype if dtype is None else dtype)
    layers = tuple(block_parts(cfg, i)[0].init_cache(cfg, batch, max_len, dtype) for i in range(cfg.num_layers))
    return Cache(layers=layers, valid_BxS=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))


def repeat_cache(cache: Cache, repeats: int) -> Cache:
    """Each row repeated `repeats` times in place (row b → rows b·g … b·g+g−1), like jnp.repeat(axis=0)."""
    rows = jax.tree.map(lambda x: jnp.repeat(x, repeats, axis=0), (cache.layers, cache.valid_BxS))
    return Cache(layers=rows[0], valid_BxS=rows[1], index=cache.index)


def positions_from_mask(mask_BxL: jax.Array) -> jax.Array:
    """Per-token positions 0, 1, … counting only real tokens (pads get their neighbour's position)."""
    return jnp.maximum(jnp.cumsum(mask_BxL.astype(jnp.int32), axis=1) - 1, 0)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    cfg: ModelConfig
    attention_cls: type[nn.Module] = Attention
    mlp_cls: type[nn.Module] = Mlp

    @nn.compact
    def __call__(self, x_BxLxE: jax.Array, positions_BxL: jax.Array, allowed_BxLxS: jax.Array,
                 cache: Any, index: jax.Array, mask_BxL: jax.Array | None = None) -> tuple[jax.Array, Any]:
        attn_BxLxE, cache = self.attention_cls(self.cfg, name="attn")(
            RMSNorm(self.cfg, name="attn_norm")(x_BxLxE), positions_BxL, allowed_BxLxS, cache, index)
        x_BxLxE = constrain(x_BxLxE + attn_BxLxE, "batch", "length", "embed")
        mlp_BxLxE = self.mlp_cls(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(x_BxLxE), mask_BxL)
        return constrain(x_BxLxE + mlp_BxLxE, "batch", "length", "embed"), cache


class Transformer(nn.Module):
    """The language model; `__call__` gives logits, `hidden` the final-norm states, `logits` the head alone."""

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embed = Embed(cfg)
        block = nn.remat(Block) if cfg.remat else Block
        self.layers = [block(cfg, *block_parts(cfg, i)) for i in range(cfg.num_layers)]
        self.final_norm = RMSNorm(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = LMHead(cfg)

    def __call__(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array | None = None,
                 cache: Cache | None = None, segment_ids: jax.Array | None = None
                 ) -> tuple[jax.Array, Cache | None]:
        """(logits_BxLxV in f32, updated cache or None)."""
        hidden_BxLxE, cache = self.hidden(tokens, positions, mask, cache, segment_ids)
        return self.logits(hidden_BxLxE), cache

    def hidden(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array | None = None,
               cache: Cache | None = None, segment_ids: jax.Array | None = None
               ) -> tuple[jax.Array, Cache | None]:
        """(final-norm hidden states B×L×E in the compute dtype, updated cache or None)."""
        batch, length = tokens.shape
        if positions.shape != (batch, length):
            raise ValueError(f"positions shape {positions.shape} != tokens shape {tokens.shape}")
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids (packed rows) are for cache-free forward passes only")
        if mask is None:
            mask = jnp.ones((batch, length), bool) if segment_ids is None else segment_ids != 0
        mask_BxL = mask.astype(bool)
        if mask_BxL.shape != (batch, length):
            raise ValueError(f"mask shape {mask_BxL.shape} != tokens shape {tokens.shape}")

        if cache is None:
            index = jnp.zeros((), jnp.int32)
            valid_BxS = mask_BxL
        else:
            index = cache.index
            valid_BxS = jax.lax.dynamic_update_slice(cache.valid_BxS, mask_BxL, (jnp.int32(0), index))
        allowed_BxLxS = attention_mask(valid_BxS, index, length, segment_ids)

        x_BxLxE = constrain(self.embed(tokens), "batch", "length", "embed")
        layer_caches = []
        for i, layer in enumerate(self.layers):
            x_BxLxE, layer_cache = layer(x_BxLxE, positions, allowed_BxLxS,
                                         None if cache is None else cache.layers[i], index, mask_BxL)
            layer_caches.append(layer_cache)
        x_BxLxE = constrain(self.final_norm(x_BxLxE), "batch", "length", "embed")
        if cache is not None:
            cache = Cache(layers=tuple(layer_caches), valid_BxS=valid_BxS, index=index + length)
        return x_BxLxE, cache

    def logits(self, hidden_BxLxE: jax.Array) -> jax.Array:
        """LM head alone (tied or untied): logits in f32 for any slice of hidden states."""
        if self.cfg.tie_embeddings:
            logits_BxLxV = self.embed.attend(hidden_BxLxE)
        else:
            logits_BxLxV = self.lm_head(hidden_BxLxE)
        return constrain(logits_BxLxV, "batch", "length", "vocab")


def init_params(cfg: ModelConfig, rng: jax.Array) -> Any:
    """Fresh params as plain arrays (logical-axis boxes removed)."""
    tokens_1x1 = jnp.zeros((1, 1), jnp.int32)
    return jax.jit(lambda r: nn.unbox(Transformer(cfg).init(r, tokens_1x1, tokens_1x1)["params"]))(rng)


def param_logical_axes(cfg: ModelConfig) -> Any:
    """PartitionSpecs of logical axis names, one per param leaf (no computation: eval_shape)."""
    tokens_1x1 = jnp.zeros((1, 1), jnp.int32)
    boxed = jax.eval_shape(lambda: Transformer(cfg).init(jax.random.key(0), tokens_1x1, tokens_1x1)["params"])
    return nn.get_partition_spec(boxed)
