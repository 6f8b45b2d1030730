"""Decoder-only transformer: embed → pre-norm blocks → final RMSNorm → logits; the decode cache.

The interface contract (positions, masks, cache slots) is documented in
`r1jax.model`. Shape legend: B batch, L tokens in this call, S cache slots,
E embed_dim, V vocab_size.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from r1jax.config import ModelConfig
from r1jax.model.attention import Attention, AttentionMask
from r1jax.model.layers import Embed, LMHead, Mlp, RMSNorm, constrain
from r1jax.model.mla import MLA
from r1jax.model.moe import MoE, is_moe_layer
from r1jax.model.paged import PageTable


def block_parts(cfg: ModelConfig, layer: int) -> tuple[type[nn.Module], type[nn.Module]]:
    """(attention class, MLP class) of block `layer`: the one place where MLA or MoE layers plug in."""
    return (Attention if cfg.mla is None else MLA), (MoE if is_moe_layer(cfg.moe, layer) else Mlp)


def layer_groups(cfg: ModelConfig) -> tuple[tuple[int, int], ...]:
    """(start, end) of each run of consecutive blocks with the same parts; one run per layer without scan.

    With cfg.scan_layers each run of two or more blocks is one `nn.scan` whose params sit under
    `scan_{start}_{end}` with a leading 'layers' axis; a lone block keeps its `layers_{i}` name.
    """
    if not cfg.scan_layers:
        return tuple((i, i + 1) for i in range(cfg.num_layers))
    groups, start = [], 0
    for i in range(1, cfg.num_layers + 1):
        if i == cfg.num_layers or block_parts(cfg, i) != block_parts(cfg, start):
            groups.append((start, i))
            start = i
    return tuple(groups)


def group_name(start: int, end: int) -> str:
    """Param key of a layer group: `layers_{i}` for a lone block, `scan_{start}_{end}` for a scanned run."""
    return f"layers_{start}" if end - start == 1 else f"scan_{start}_{end}"


@flax.struct.dataclass
class Cache:
    """Decode state: one cache per layer group (owned by its attention class), slot validity, next write slot.

    A scanned group's cache has its layers stacked on a leading axis (`stacked` marks those groups).
    """

    layers: tuple[Any, ...]
    valid_BxS: jax.Array  # bool: slot holds a real token
    index: jax.Array  # int32 scalar: next slot to write, shared by all rows
    stacked: tuple[bool, ...] = flax.struct.field(pytree_node=False, default=())


def _group_caches(cfg: ModelConfig, make: Callable[[type[nn.Module]], Any]) -> tuple[tuple, tuple[bool, ...]]:
    """(one layer cache per layer group, stacked on a leading axis for scanned groups; which are stacked),
    each layer's from `make(attention class)`."""
    layers, stacked = [], []
    for start, end in layer_groups(cfg):
        one = make(block_parts(cfg, start)[0])
        many = end - start > 1
        layers.append(jax.tree.map(lambda x: jnp.zeros((end - start,) + x.shape, x.dtype), one) if many else one)
        stacked.append(many)
    return tuple(layers), tuple(stacked)


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> Cache:
    """An empty cache of `max_len` slots; `dtype` defaults to the compute dtype."""
    dtype = jnp.dtype(cfg.dtype if dtype is None else dtype)
    layers, stacked = _group_caches(cfg, lambda attention: attention.init_cache(cfg, batch, max_len, dtype))
    return Cache(layers=layers, valid_BxS=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32),
                 stacked=stacked)


@flax.struct.dataclass
class PagedCache:
    """Decode state over a page pool: one pool per layer group (stacked like `Cache`), and the rows' page tables.

    A call writes each row's real new tokens after its `lengths_B` tokens and returns the cache with
    `lengths_B` advanced by them; the caller owns which pages each row may use (r1jax.engine).
    """

    layers: tuple[Any, ...]
    pages_BxM: jax.Array  # int32: each row's page ids in token order (0: the null page)
    lengths_B: jax.Array  # int32: tokens each row holds
    stacked: tuple[bool, ...] = flax.struct.field(pytree_node=False, default=())
    shards: int = flax.struct.field(pytree_node=False, default=1)  # runs of pages, one per data shard (paged.py)


def init_paged_cache(cfg: ModelConfig, pages: int, page_size: int, rows: int, max_pages: int,
                     dtype: Any = None, shards: int = 1) -> PagedCache:
    """A zeroed pool of `shards` runs of `pages` pages (page 0 of each the null page) and `rows` empty page
    tables of `max_pages` entries (rows split over the shards in order; page ids local to a row's shard)."""
    dtype = jnp.dtype(cfg.dtype if dtype is None else dtype)
    layers, stacked = _group_caches(cfg, lambda attention: attention.init_paged(cfg, shards * pages, page_size,
                                                                                 dtype))
    return PagedCache(layers=layers, pages_BxM=jnp.zeros((rows, max_pages), jnp.int32),
                      lengths_B=jnp.zeros((rows,), jnp.int32), stacked=stacked, shards=shards)


def map_pages(cache: PagedCache, fn: Callable[[jax.Array, int], Any]) -> PagedCache:
    """`fn(pool leaf, its page axis)` on every pool leaf (axis 1 in a scanned group's stacked pools, else 0)."""
    stacked = cache.stacked or (False,) * len(cache.layers)
    return cache.replace(layers=tuple(jax.tree.map(lambda x, many=many: fn(x, int(many)), c)
                                      for c, many in zip(cache.layers, stacked)))


def map_cache(cache: Cache, fn: Callable[[jax.Array, tuple[str, ...]], Any]) -> Cache:
    """`fn(leaf, logical axis names)` on every cache leaf: layer caches by their class's `logical_axes`
    (a scanned group's stacked layers first), valid slots by batch, the index with no axes."""
    stacked = cache.stacked or (False,) * len(cache.layers)

    def layer(layer_cache, many: bool):
        return layer_cache.replace(**{field: fn(getattr(layer_cache, field), ("layers",) * many + names)
                                      for field, names in type(layer_cache).logical_axes.items()})

    return cache.replace(layers=tuple(layer(c, many) for c, many in zip(cache.layers, stacked)),
                         valid_BxS=fn(cache.valid_BxS, ("batch", "cache_length")), index=fn(cache.index, ()))


def repeat_cache(cache: Cache, repeats: int) -> Cache:
    """Each row repeated `repeats` times in place (row b → rows b·g … b·g+g−1), like jnp.repeat(axis=0).

    The repeated rows are constrained to their logical axes: G times as many rows as the prefill
    ran on split over every data-like axis, not kept in the prefill's coarser layout.
    """
    def repeat(x, names):
        if not names:  # the index
            return x
        return constrain(jnp.repeat(x, repeats, axis=names.index("batch")), *names)
    return map_cache(cache, repeat)


def positions_from_mask(mask_BxL: jax.Array) -> jax.Array:
    """Per-token positions 0, 1, … counting only real tokens (pads get their neighbour's position)."""
    return jnp.maximum(jnp.cumsum(mask_BxL.astype(jnp.int32), axis=1) - 1, 0)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)); (x, layer cache, …) → (x, layer cache)."""

    cfg: ModelConfig
    attention_cls: type[nn.Module] = Attention
    mlp_cls: type[nn.Module] = Mlp

    @nn.compact
    def __call__(self, x_BxLxE: jax.Array, cache: Any, positions_BxL: jax.Array, mask: AttentionMask,
                 index: jax.Array, mask_BxL: jax.Array | None = None) -> tuple[jax.Array, Any]:
        return self.forward(x_BxLxE, cache, positions_BxL, mask, index, mask_BxL)

    def forward(self, x_BxLxE, cache, positions_BxL, mask, index, mask_BxL):
        attn_BxLxE, cache = self.attention_cls(self.cfg, name="attn")(
            RMSNorm(self.cfg, name="attn_norm")(x_BxLxE), positions_BxL, mask, cache, index)
        x_BxLxE = constrain(x_BxLxE + attn_BxLxE, "batch", "length", "embed")
        mlp_BxLxE = self.mlp_cls(self.cfg, name="mlp")(RMSNorm(self.cfg, name="mlp_norm")(x_BxLxE), mask_BxL)
        return constrain(x_BxLxE + mlp_BxLxE, "batch", "length", "embed"), cache


class ScanBlock(Block):
    """A Block as the body of `nn.scan`: ((x, the group's stacked cache or None), layer i, …) → (carry, None).

    The whole stacked cache rides in the carry and layer i reads and writes its own slice of it, so
    a decode step updates the cache in place; scanned as input and output it would be copied whole.
    """

    @nn.compact
    def __call__(self, carry: tuple[jax.Array, Any], i: jax.Array, positions_BxL: jax.Array, mask: AttentionMask,
                 index: jax.Array, mask_BxL: jax.Array | None = None) -> tuple[tuple[jax.Array, Any], None]:
        x_BxLxE, stack = carry
        layer = None if stack is None else jax.tree.map(
            lambda c: jax.lax.dynamic_index_in_dim(c, i, 0, keepdims=False), stack)
        x_BxLxE, layer = self.forward(x_BxLxE, layer, positions_BxL, mask, index, mask_BxL)
        if stack is not None:
            stack = jax.tree.map(lambda c, u: jax.lax.dynamic_update_index_in_dim(c, u.astype(c.dtype), i, 0),
                                 stack, layer)
        return (x_BxLxE, stack), None


_SCAN_KEY = re.compile(r"scan_(\d+)_(\d+)")
_LAYER_KEY = re.compile(r"layers_(\d+)")
REMAT = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def block_class(cfg: ModelConfig, layers: int) -> type[nn.Module]:
    """Block, rematerialized as cfg.remat says; a ScanBlock scanned over `layers` stacked copies when more than one."""
    block = Block if layers == 1 else ScanBlock
    if cfg.remat != "none":
        block = nn.remat(block, policy=REMAT[cfg.remat], prevent_cse=layers == 1)
    if layers == 1:
        return block
    return nn.scan(block, variable_axes={"params": 0, "intermediates": 0},
                   split_rngs={"params": True, "dropout": True},  # LoRA dropout: fresh masks in every layer
                   in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast), length=layers,
                   metadata_params={nn.PARTITION_NAME: "layers"})


class Transformer(nn.Module):
    """The language model; `__call__` gives logits, `hidden` the final-norm states, `logits` the head alone."""

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embed = Embed(cfg)
        self.groups = layer_groups(cfg)
        self.layers = [block_class(cfg, end - start)(cfg, *block_parts(cfg, start), name=group_name(start, end))
                       for start, end in self.groups]
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
               cache: Cache | PagedCache | None = None, segment_ids: jax.Array | None = None
               ) -> tuple[jax.Array, Cache | PagedCache | None]:
        """(final-norm hidden states B×L×E in the compute dtype, updated cache or None).

        With a `PagedCache` each row's real tokens come first (right padding: `mask` True for the
        first new_b of the L) and sit at positions `lengths_B` + 0, 1, …: `positions` is ignored.
        """
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

        if isinstance(cache, PagedCache):
            index = jnp.zeros((), jnp.int32)
            mask = PageTable(cache.pages_BxM, cache.lengths_B, jnp.sum(mask_BxL, axis=1, dtype=jnp.int32),
                             shards=cache.shards)
            positions = cache.lengths_B[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]
        elif cache is None:
            index = jnp.zeros((), jnp.int32)
            valid_BxS = mask_BxL
        else:
            index = cache.index
            valid_BxS = jax.lax.dynamic_update_slice(cache.valid_BxS, mask_BxL, (jnp.int32(0), index))
        if not isinstance(cache, PagedCache):
            mask = AttentionMask(valid_BxS, index, segment_ids)
        if cache is not None and len(cache.layers) != len(self.groups):
            raise ValueError(f"cache has {len(cache.layers)} layer groups, the model {len(self.groups)} "
                             "(build it with init_cache of the same config)")

        x_BxLxE = constrain(self.embed(tokens), "batch", "length", "embed")
        layer_caches = []
        for i, (layer, (start, end)) in enumerate(zip(self.layers, self.groups)):
            layer_cache = None if cache is None else cache.layers[i]
            if end - start == 1:
                x_BxLxE, layer_cache = layer(x_BxLxE, layer_cache, positions, mask, index, mask_BxL)
            else:
                (x_BxLxE, layer_cache), _ = layer((x_BxLxE, layer_cache), jnp.arange(end - start), positions, mask,
                                                  index, mask_BxL)
            layer_caches.append(layer_cache)
        x_BxLxE = constrain(self.final_norm(x_BxLxE), "batch", "length", "embed")
        if isinstance(cache, PagedCache):
            cache = cache.replace(layers=tuple(layer_caches), lengths_B=cache.lengths_B + mask.new_B)
        elif cache is not None:
            cache = cache.replace(layers=tuple(layer_caches), valid_BxS=valid_BxS, index=index + length)
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


def _stack(leaves: list) -> Any:
    if all(isinstance(x, np.ndarray) for x in leaves):
        return np.stack(leaves)
    return jnp.stack(leaves)


def unstack_layers(params: Any) -> Any:
    """Params of either layout in the unrolled one (`layers_{i}` per block): what HF export and users read."""
    out = {}
    for key, value in params.items():
        match = _SCAN_KEY.fullmatch(key)
        if match is None:
            out[key] = value
            continue
        start, end = int(match.group(1)), int(match.group(2))
        for i in range(start, end):
            out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i - start], value)
    return out


def convert_layout(params: Any, cfg: ModelConfig) -> Any:
    """Params of either layout (unrolled or scanned) in the layout `cfg.scan_layers` asks for."""
    flat = unstack_layers(params)
    out = {k: v for k, v in flat.items() if not _LAYER_KEY.fullmatch(k)}
    for start, end in layer_groups(cfg):
        blocks = [flat[f"layers_{i}"] for i in range(start, end)]
        out[group_name(start, end)] = blocks[0] if end - start == 1 else jax.tree.map(lambda *xs: _stack(list(xs)),
                                                                                         *blocks)
    return out
