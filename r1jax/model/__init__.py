"""The r1jax language model: a pure-functional Flax linen decoder (Qwen2/Qwen2.5, Llama-3, Qwen3-MoE, DeepSeek-V3).

Params in, logits and cache out; nothing is mutable::

    model = Transformer(cfg)
    params = init_params(cfg, rng)          # or model.init(rng, tokens, positions)['params'] (boxed, see below)
    logits_BxLxV, _ = model.apply({'params': params}, tokens_BxL, positions_BxL, mask_BxL)

Arguments of `Transformer.__call__` / `Transformer.hidden`:
  tokens     int [B, L].
  positions  int [B, L]: RoPE position of each token, per row. With padding use
             `positions_from_mask(mask)` so a row's first real token has position 0.
  mask       bool [B, L] or None (all real): False marks padding. Padded keys are
             never attended; outputs at padded queries are finite garbage, to be
             ignored. Left- or right-padded rows give the logits of unpadded rows.
  cache      a `Cache` or None (plain forward pass; the returned cache is None).
  segment_ids int [B, L] or None: packed rows, tokens attend only within their
             segment (0 = padding); forward passes without a cache only.

Attention allows key j for query i iff j is valid (mask) and j's *slot* is not
after i's slot (causal), whatever the positions say.

Cache (`init_cache(cfg, batch, max_len, dtype=None)`, a flax.struct.dataclass):
  layers     per layer, the pytree its attention class owns; for GQA a `KVCache`
             with k_BxKxDxS (keys stored transposed), v_BxKxSxD (RoPE already applied), S = max_len.
  valid_BxS  bool: slot holds a real token.
  index      int32 scalar: next slot to write, the same for every row.
A call with a cache writes its L tokens into slots [index, index + L) of every
row (one dynamic_update_slice), marks them valid where `mask` is True, attends
to all valid slots up to each query's slot, and returns the cache with
index + L. Prefill = one call with a padded prompt batch [B, L] (left or right
padding); decode = calls with [B, 1] tokens at per-row positions
(prompt_len_b + t), writing to the same slot in every row. The caller keeps
index + L <= max_len (dynamic_update_slice clamps silently otherwise).
`repeat_cache(cache, g)` shares a prompt's cache among g samples: row b becomes
rows b·g … b·g+g−1 (as jnp.repeat(x, g, axis=0)).

Paged cache (`init_paged_cache(cfg, pages, page_size, rows, max_pages)`, a `PagedCache`;
r1jax.model.paged): every layer's keys and values (MLA: latents) in one pool of pages shared by all
rows, a page table per row (`pages_BxM`, page 0 the null page) and the tokens each row holds
(`lengths_B`). A call with one writes each row's real tokens (right padding: the first
mask.sum(1) of the L) at positions lengths_b, lengths_b + 1, … (`positions` is ignored), attends
each to its own row's slots up to itself by a loop over the filled pages only, and returns the
cache with `lengths_B` advanced. Rows may share pages read-only (a prompt's G samples);
r1jax.engine owns which pages each row uses.

Hidden states without logits (chunked log-probs, so [B, L, V] never exists whole)::

    hidden_BxLxE, _ = model.apply(v, tokens, positions, mask, method='hidden')
    logits_BxCxV = model.apply(v, hidden_BxLxE[:, i:i + C], method='logits')   # f32

Logical axis names: params are created boxed (`nn.Partitioned`) with names
('vocab', 'embed'), ('embed', 'heads', 'head_dim'), ('embed', 'kv_heads', 'head_dim'),
('heads', 'head_dim', 'embed'), ('embed', 'mlp'), ('mlp', 'embed'), ('norm',),
('embed', 'vocab'), and for MoE/MLA ('expert', 'embed', 'mlp') on stacked expert
weights, ('embed', 'expert') on the router, ('embed', 'q_lora' | 'kv_lora'); activations
are constrained with ('batch', 'length', 'embed' | 'heads' | 'kv_heads' | 'mlp' |
'vocab'), cache values with ('batch', 'kv_heads', 'cache_length', 'head_dim'), keys with
('batch', 'kv_heads', 'head_dim', 'cache_length') (MLA:
'kv_lora' latents). Without a mesh (jax.set_mesh) these are no-ops; r1jax.sharding maps them. `apply`
accepts boxed or plain params; `init_params` returns plain arrays and
`param_logical_axes(cfg)` the matching PartitionSpec tree of names.

Precision: params stored in cfg.param_dtype, matmuls in cfg.dtype; norms,
RoPE, attention softmax and logits in f32. cfg.remat ('none' / 'full' / 'dots')
is what each block keeps for the backward pass.

Swappable parts: `block_parts(cfg, layer)` gives each block's (attention class,
MLP class). An attention class is built as `cls(cfg)`, called as
`(x_BxLxE, positions_BxL, mask: AttentionMask, layer_cache | None, index) -> (y_BxLxE,
layer_cache | None)`, and has a staticmethod `init_cache(cfg, batch, max_len,
dtype)` giving its layer cache, whose class names each field's logical axes in
a class constant `logical_axes` (r1jax.sharding places caches by it). An
`AttentionMask` holds the parts of the mask (valid slots, the slot of query 0,
segment ids), never the [B, L, S] matrix; `attention.attend` runs the kernel
`cfg.attention` picks (on CPU: dense scores for rows of one block, else a blockwise online softmax, memory
linear in length; `.dense(L)` gives the matrix for the dense paths).

Layer layout: with `cfg.scan_layers` each run of identical consecutive blocks
is one `nn.scan` whose params sit under `scan_{start}_{end}` with a leading
layer axis (and its cache is stacked the same way); `convert_layout(params,
cfg)` turns params of either layout into cfg's, `unstack_layers(params)` into
the unrolled `layers_{i}` one. HF import/export and `load_source` convert for
the user. An MLP class is built as `cls(cfg)` and called
on (x_BxLxE, mask_BxL | None); only MoE reads the mask (for its statistics).

Mixture of experts and latent attention (DeepSeek-V3): `cfg.moe` makes layers
`MoE` (routed experts on a leading 'expert' param axis, shared experts,
dropless dispatch), `cfg.mla` makes every attention `MLA` (its cache, an
`MLACache`, holds only latents and RoPE keys). Each MoE layer's balancing bias
is the param leaf `router_bias`, reached only through stop_gradient: keep it out
of the optimizer with `router_bias_mask(params)` and move it after each step
with `update_router_bias(params, stats['expert_load'], cfg.moe.bias_update_rate)`.
MoE layers sow expert loads and balance losses into 'intermediates' when the
caller asks (`mutable=['intermediates']`, else nothing is computed);
`moe_aux(cfg, state['intermediates'])` gives (aux_loss, stats) — see router.py.
"""
from r1jax.model.attention import Attention, AttentionMask, KVCache, attention_mask
from r1jax.model.layers import Embed, LMHead, Mlp, RMSNorm
from r1jax.model.mla import MLA, MLACache
from r1jax.model.moe import MoE, expert_ffn, is_moe_layer
from r1jax.model.router import moe_aux, route, router_bias_mask, update_router_bias
from r1jax.model.rope import apply_rope, rope_frequencies
from r1jax.model.transformer import (
    Block,
    Cache,
    Transformer,
    block_parts,
    convert_layout,
    PagedCache,
    init_cache,
    init_paged_cache,
    init_params,
    map_cache,
    map_pages,
    param_logical_axes,
    positions_from_mask,
    repeat_cache,
    unstack_layers,
)

__all__ = [
    "Attention", "AttentionMask", "Block", "Cache", "Embed", "KVCache", "LMHead", "MLA", "MLACache", "Mlp", "MoE", "RMSNorm",
    "PagedCache", "Transformer", "apply_rope", "attention_mask", "block_parts", "convert_layout", "expert_ffn", "init_cache", "init_paged_cache", "init_params",
    "is_moe_layer", "map_cache", "map_pages", "moe_aux", "param_logical_axes", "positions_from_mask", "repeat_cache", "rope_frequencies",
    "route", "router_bias_mask", "unstack_layers", "update_router_bias",
]
