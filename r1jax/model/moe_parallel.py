"""Expert parallelism: the routed experts of an MoE layer split over mesh axes inside jax.shard_map.

Taken when a mesh is set (jax.set_mesh, or r1jax.sharding.use_mesh), the rule
table of r1jax.sharding maps the logical 'expert' axis to mesh axes of total
size S > 1 that divides num_experts, and MoEConfig.expert_parallel is not
'none'. Each of the S shards holds X/S experts (shard s: experts s·X/S …
(s+1)·X/S − 1, the layout of a P('expert') weight);
tokens are split over the 'batch' mesh axes plus the expert axes, padded to a
multiple of the shard count. Routing and the balance statistics run outside,
on every token (the compiler partitions them), so they equal the single-device
ones; only the grouped matmuls are split. Two exchanges, same numbers:

  ring        all-gather the tokens of the S expert shards, each shard runs its own
              experts on the pairs routed to them (moe.expert_ffn, first_expert),
              psum_scatter gives each shard its tokens' sums back. Plain collectives:
              CPU, GPU, TPU. Every shard sees S× its tokens.
  all_to_all  each shard sorts its pairs by expert and sends every expert's rows to
              the shard that owns it with jax.lax.ragged_all_to_all, runs its experts,
              and sends the outputs back the same way. Moves only routed rows; XLA:CPU
              does not implement the collective (GPU/TPU only).

A routed weight may be a pytree (moe.AdaptedExperts: W and its LoRA A, B), every leaf with the
leading expert axis: each leaf is split like W. The LoRA dropout key is replicated and folded
with the shard's index over the token axes, so shards draw different masks.

Both are dropless with static shapes: a shard's buffer holds the worst case (all
S·T_s·K pairs on its experts), so the 'blocked' backend computes that many rows
whatever the routing; ragged_dot skips the rows after its groups on GPU/TPU.

Shape legend: T tokens (t: one shard's), E embed_dim, X experts (x: one shard's),
K experts per token, P pairs (p: one shard's), M expert_dim, S expert shards,
R rows of a receive buffer.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from r1jax import logical
from r1jax.config import MoEConfig

Collective = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class ExpertSharding:
    """Where the experts and tokens of an MoE layer go: mesh axes of the active mesh."""

    mode: str  # 'ring' or 'all_to_all'
    expert_axes: tuple[str, ...]  # experts split over these (S shards, row-major)
    token_axes: tuple[str, ...]  # tokens split over these; includes expert_axes
    shards: int  # S
    token_shards: int


def expert_count(weight) -> int:
    """Experts of a routed weight: an [X, in, out] array or a pytree whose leaves all lead with X."""
    return jax.tree.leaves(weight)[0].shape[0]


def expert_sharding(moe: MoEConfig) -> ExpertSharding | None:
    """The active mesh's split of this layer's experts by r1jax.sharding's rules, or None (one device's view).

    None without a mesh, with expert_parallel='none', or when no expert mesh axis of size > 1
    divides num_experts (the rule table then leaves expert weights unsplit too).
    """
    sizes = logical.auto_axes()
    if moe.expert_parallel == "none" or not sizes:
        return None
    expert_axes = logical.axes_of("expert", moe.num_experts)
    shards = math.prod(sizes[a] for a in expert_axes)
    if shards <= 1:
        if sizes.get("expert", 1) > 1:  # an expert axis was asked for but cannot split these experts
            warnings.warn(f"num_experts={moe.num_experts} is not divisible by the mesh's expert axis of size "
                          f"{sizes['expert']}: the experts stay unsplit (no expert parallelism)", stacklevel=2)
        return None
    if moe.expert_parallel == "all_to_all" and jax.default_backend() == "cpu":
        raise ValueError("MoEConfig.expert_parallel='all_to_all' needs jax.lax.ragged_all_to_all, which XLA:CPU "
                         "does not implement; use 'ring' on CPU")
    batch_axes = logical.axes_of("batch")
    token_axes = batch_axes + tuple(a for a in expert_axes if a not in batch_axes)
    return ExpertSharding(moe.expert_parallel, expert_axes, token_axes, shards,
                          math.prod(sizes[a] for a in token_axes))


def parallel_expert_ffn(ep: ExpertSharding, x_TxE: jax.Array, experts_TxK: jax.Array, gates_TxK: jax.Array,
                        wi_gate_XxExM, wi_up_XxExM, wo_XxMxE, *, ffn: Callable[..., jax.Array],
                        grouped: Callable[..., jax.Array], collective: Collective = jax.lax.ragged_all_to_all,
                        dropout_key: jax.Array | None = None) -> jax.Array:
    """moe.expert_ffn's y_TxE with the experts split as `ep` says (inside the active mesh).

    `ffn` is expert_ffn with its backend bound (ring), `grouped` the backend's grouped
    SwiGLU (all_to_all); `collective` stands in for ragged_all_to_all (tests on CPU);
    `dropout_key` draws the LoRA dropout of AdaptedExperts weights.
    """
    tokens, num_experts = x_TxE.shape[0], expert_count(wi_gate_XxExM)
    pad = -tokens % ep.token_shards
    if pad:  # padded tokens route to expert X, which no shard owns: they add nothing
        x_TxE = jnp.pad(x_TxE, ((0, pad), (0, 0)))
        experts_TxK = jnp.pad(experts_TxK, ((0, pad), (0, 0)), constant_values=num_experts)
        gates_TxK = jnp.pad(gates_TxK, ((0, pad), (0, 0)))
    if ep.mode == "ring":
        local = lambda *args: _ring_shard(ep, ffn, *args)  # noqa: E731
    else:
        local = lambda *args: _all_to_all_shard(ep, grouped, collective, *args)  # noqa: E731
    tok, exp = PartitionSpec(ep.token_axes), PartitionSpec(ep.expert_axes)
    y_TxE = jax.shard_map(local, in_specs=(tok, tok, tok, exp, exp, exp, PartitionSpec()), out_specs=tok)(
        x_TxE, experts_TxK, gates_TxK, wi_gate_XxExM, wi_up_XxExM, wo_XxMxE, dropout_key)
    return y_TxE[:tokens]


def _shard_key(ep: ExpertSharding, key: jax.Array | None) -> jax.Array | None:
    """This shard's dropout key: the replicated key folded with the shard's index over the token axes."""
    return None if key is None else jax.random.fold_in(key, jax.lax.axis_index(ep.token_axes))


def _ring_shard(ep: ExpertSharding, ffn, x_txE, experts_txK, gates_txK, wi_gate_xxExM, wi_up_xxExM, wo_xxMxE,
                dropout_key):
    """One shard of the ring: gather the tokens of the expert shards, own experts only, reduce-scatter back."""
    gather = lambda a: jax.lax.all_gather(a, ep.expert_axes, axis=0, tiled=True)  # noqa: E731
    first_expert = jax.lax.axis_index(ep.expert_axes) * expert_count(wi_gate_xxExM)
    y_StxE = ffn(gather(x_txE), gather(experts_txK), gather(gates_txK), wi_gate_xxExM, wi_up_xxExM, wo_xxMxE,
                 first_expert=first_expert, dropout_key=_shard_key(ep, dropout_key))
    return jax.lax.psum_scatter(y_StxE, ep.expert_axes, scatter_dimension=0, tiled=True)


def _exclusive_cumsum(a: jax.Array, axis: int = 0) -> jax.Array:
    return jnp.cumsum(a, axis=axis) - a


def _all_to_all_shard(ep: ExpertSharding, grouped, collective, x_txE, experts_txK, gates_txK, wi_gate_xxExM,
                      wi_up_xxExM, wo_xxMxE, dropout_key):
    """One shard of the all-to-all: send each pair's row to its expert's shard, compute, send the output back."""
    shards, axes = ep.shards, ep.expert_axes
    tokens, top_k = experts_txK.shape
    local_experts = expert_count(wi_gate_xxExM)
    num_experts = shards * local_experts
    me = jax.lax.axis_index(axes)

    experts_p = experts_txK.reshape(-1)
    order_p = jnp.argsort(experts_p, stable=True)  # padding (expert X) last, never sent
    token_p = order_p // top_k
    x_pxE = jnp.take(x_txE, token_p, axis=0)
    counts_X = jnp.bincount(experts_p, length=num_experts).astype(jnp.int32)
    counts_SxSxx = jax.lax.all_gather(counts_X, axes).reshape(shards, shards, local_experts)  # [from, to, expert]
    sizes_SxS = counts_SxSxx.sum(-1)  # rows sender → receiver
    send_S, recv_S = sizes_SxS[me], sizes_SxS[:, me]
    send_offsets_S = _exclusive_cumsum(send_S)
    recv_offsets_S = _exclusive_cumsum(recv_S)  # senders' slices, in sender order, in my buffer
    land_offsets_S = _exclusive_cumsum(sizes_SxS, axis=0)[me]  # where my slice lands on each receiver

    rows = shards * x_pxE.shape[0]  # dropless: room for every pair of every shard
    zeros_RxE = jnp.zeros_like(x_pxE, shape=(rows, x_pxE.shape[1]))
    recv_RxE = collective(x_pxE, zeros_RxE, send_offsets_S, send_S, land_offsets_S, recv_S, axis_name=axes)

    # the buffer holds (sender, local expert) segments in order; regroup its rows by local expert
    segment_end_Sx = jnp.cumsum(counts_SxSxx[:, me, :].reshape(-1))
    segment_R = jnp.searchsorted(segment_end_Sx, jnp.arange(rows), side="right")
    expert_R = jnp.where(segment_R < shards * local_experts, segment_R % local_experts, local_experts)
    order_R = jnp.argsort(expert_R, stable=True)
    group_sizes_x = jnp.bincount(expert_R, length=local_experts).astype(jnp.int32)
    out_RxE = grouped(jnp.take(recv_RxE, order_R, axis=0), group_sizes_x, wi_gate_xxExM, wi_up_xxExM, wo_xxMxE,
                      _shard_key(ep, dropout_key))
    out_RxE = jnp.zeros_like(out_RxE).at[order_R].set(out_RxE, unique_indices=True)  # arrival order again

    back_offsets_S = _exclusive_cumsum(sizes_SxS, axis=1)[:, me]  # where each sender's slice started
    zeros_pxE = jnp.zeros_like(x_pxE)
    back_pxE = collective(out_RxE, zeros_pxE, recv_offsets_S, recv_S, back_offsets_S, send_S, axis_name=axes)
    weighted_pxE = back_pxE.astype(jnp.float32) * gates_txK.reshape(-1)[order_p][:, None]
    y_txE = jnp.zeros((tokens, x_txE.shape[1]), jnp.float32).at[token_p].add(weighted_pxE)
    return y_txE.astype(x_txE.dtype)
