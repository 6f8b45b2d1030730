"""DeepSeekMoE / Qwen3-MoE feed-forward layer with dropless dispatch (DeepSeek-V3, arXiv 2412.19437 §2.1.2).

    h'_t = Σ_shared FFN_s(h_t) + Σ_{i ∈ top-k} g_i,t · FFN_i(h_t)      (V3 eq. 12)

Dispatch keeps every token: the T·K (token, expert) pairs are sorted by
expert, each expert's contiguous group goes through its SwiGLU, outputs are
weighted by their gates and scatter-added back to their tokens. Two grouped
matmul back ends, same numbers:
  ragged_dot  jax.lax.ragged_dot over the groups; native (cost ∝ T·K) on GPU/TPU,
              but jax lowers it on CPU to a dense masked dot over all experts.
  blocked     groups padded to blocks of `pairs // experts` rows, one batched
              matmul of blocks with their expert's weights gathered; compiled cost
              ≤ 2× the T·K ideal on every backend, whatever the number of experts.
`expert_ffn` is a pure function of (tokens, routing, weights); under a mesh whose
expert axis has more than one device, the layer splits the experts over it with
jax.shard_map (moe_parallel.py, MoEConfig.expert_parallel). Where ModelConfig.lora adapts
a routed projection, its weight is an `AdaptedExperts` (W, A, B per expert) and every
backend computes x·W_e + dropout(x)·A_e·B_e·scale with the same grouped matmul.

Shape legend: B batch, L length, T = B·L tokens, E embed_dim, X experts,
K experts per token, P = T·K pairs, M expert_dim, N blocks, R rows per block.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax.config import ModelConfig, MoEConfig
from r1jax.model import moe_parallel, router
from r1jax.model.layers import Mlp, constrain, lora_dropout, lora_dropout_key, zeros_init


def is_moe_layer(moe: MoEConfig | None, layer: int) -> bool:
    """Whether block `layer` has an MoE feed-forward (first_k_dense, dense_layers, sparse_step)."""
    return (moe is not None and layer >= moe.first_k_dense and layer not in moe.dense_layers
            and (layer + 1) % moe.sparse_step == 0)


def dispatch_backend(moe: MoEConfig) -> str:
    """'ragged_dot' or 'blocked'; 'auto' picks ragged_dot on GPU/TPU only (on CPU jax's ragged_dot is dense)."""
    if moe.dispatch != "auto":
        return moe.dispatch
    return "ragged_dot" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "blocked"


@flax.struct.dataclass
class AdaptedExperts:
    """A routed projection with per-expert LoRA: a row of expert e gets x·W_e + dropout(x)·A_e·B_e·scale.

    Every leaf has the leading expert axis, so expert parallelism splits the adapters as it splits W.
    """

    w_XxIxO: jax.Array
    a_XxIxR: jax.Array
    b_XxRxO: jax.Array
    scale: float = flax.struct.field(pytree_node=False, default=1.0)
    dropout: float = flax.struct.field(pytree_node=False, default=0.0)


ExpertWeight = jax.Array | AdaptedExperts  # a routed projection: W [X, in, out], with or without adapters


def _swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
    return nn.silu(gate) * up


def _project(matmul: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array, w: ExpertWeight,
             key: jax.Array | None) -> jax.Array:
    """Each row times its expert's projection, by the backend's grouped `matmul(rows, [X, in, out])`, LoRA included."""
    if not isinstance(w, AdaptedExperts):
        return matmul(x, w)
    lora = matmul(matmul(lora_dropout(x, w.dropout, key), w.a_XxIxR), w.b_XxRxO) * w.scale
    return matmul(x, w.w_XxIxO) + lora.astype(x.dtype)


def _swiglu_ffn(matmul: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array, wi_gate: ExpertWeight,
                wi_up: ExpertWeight, wo: ExpertWeight, dropout_key: jax.Array | None) -> jax.Array:
    """SwiGLU of each row by its expert's weights; `dropout_key` draws the LoRA dropout of the three projections."""
    keys = (None,) * 3 if dropout_key is None else tuple(jax.random.split(dropout_key, 3))
    gate, up = _project(matmul, x, wi_gate, keys[0]), _project(matmul, x, wi_up, keys[1])
    return _project(matmul, _swiglu(gate, up), wo, keys[2])


def ragged_ffn(x_PxE: jax.Array, group_sizes_X: jax.Array, wi_gate_XxExM: ExpertWeight, wi_up_XxExM: ExpertWeight,
               wo_XxMxE: ExpertWeight, dropout_key: jax.Array | None = None) -> jax.Array:
    """SwiGLU of each expert on its contiguous group of rows, by jax.lax.ragged_dot."""
    matmul = lambda x, w: jax.lax.ragged_dot(x, w, group_sizes_X)  # noqa: E731
    return _swiglu_ffn(matmul, x_PxE, wi_gate_XxExM, wi_up_XxExM, wo_XxMxE, dropout_key)


def blocked_ffn(x_PxE: jax.Array, group_sizes_X: jax.Array, wi_gate_XxExM: ExpertWeight, wi_up_XxExM: ExpertWeight,
                wo_XxMxE: ExpertWeight, dropout_key: jax.Array | None = None) -> jax.Array:
    """ragged_ffn's result by block-padded batched matmuls (MegaBlocks-style, arXiv 2211.15841), static shapes.

    Each group is padded to a multiple of R = max(1, P // X) rows, so the blocks hold at
    most P + X·(R−1) < 2P rows: FLOPs ≤ 2× those of the real rows, for any X. Rows after
    the last group (Σ group sizes < P) give 0, as with ragged_dot.
    """
    pairs, embed = x_PxE.shape
    num_experts = group_sizes_X.shape[0]
    rows = max(1, pairs // num_experts)
    num_blocks = -(-(pairs + num_experts * (rows - 1)) // rows)
    blocks_X = (group_sizes_X + rows - 1) // rows
    first_block_X = jnp.cumsum(blocks_X) - blocks_X
    first_row_X = jnp.cumsum(group_sizes_X) - group_sizes_X
    row_P = jnp.arange(pairs)
    grouped_P = row_P < jnp.sum(group_sizes_X)
    expert_P = jnp.repeat(jnp.arange(num_experts), group_sizes_X, total_repeat_length=pairs)
    # rows after the groups go, in order, to the slots after the used blocks: unique and in bounds
    slot_P = jnp.where(grouped_P, first_block_X[expert_P] * rows + row_P - first_row_X[expert_P],
                       jnp.sum(blocks_X) * rows + row_P - jnp.sum(group_sizes_X))
    # trailing unused blocks hold zeros; any expert will do for them
    block_expert_N = jnp.minimum(jnp.searchsorted(jnp.cumsum(blocks_X), jnp.arange(num_blocks), side="right"),
                                 num_experts - 1)
    x_NxRxE = (jnp.zeros((num_blocks * rows, embed), x_PxE.dtype).at[slot_P].set(x_PxE, unique_indices=True)
               .reshape(num_blocks, rows, embed))
    matmul = lambda x_NxRxI, w_XxIxO: jnp.einsum("nri,nio->nro", x_NxRxI, w_XxIxO[block_expert_N])  # noqa: E731
    out_NxRxE = _swiglu_ffn(matmul, x_NxRxE, wi_gate_XxExM, wi_up_XxExM, wo_XxMxE, dropout_key)
    out_PxE = out_NxRxE.reshape(num_blocks * rows, embed)[slot_P]
    return jnp.where(grouped_P[:, None], out_PxE, jnp.zeros_like(out_PxE))


def grouped_ffn(backend: str) -> Callable[..., jax.Array]:
    """The grouped SwiGLU of a dispatch backend: (x_PxE, group_sizes_X, wi_gate, wi_up, wo, dropout_key) → out_PxE."""
    return ragged_ffn if backend == "ragged_dot" else blocked_ffn


def expert_ffn(x_TxE: jax.Array, experts_TxK: jax.Array, gates_TxK: jax.Array, wi_gate_XxExM: ExpertWeight,
               wi_up_XxExM: ExpertWeight, wo_XxMxE: ExpertWeight, backend: str = "blocked",
               first_expert: int | jax.Array = 0, dropout_key: jax.Array | None = None) -> jax.Array:
    """Σ_k gate_tk · FFN_{expert_tk}(x_t), dropless: sort pairs by expert, grouped matmuls, scatter-add back.

    The weights are experts first_expert … first_expert + X − 1; pairs routed to any other
    expert add nothing (an expert-parallel shard's share of the routing, moe_parallel.py). A
    weight may be AdaptedExperts (LoRA); `dropout_key` draws their dropout, per (token, expert) row.
    """
    tokens, top_k = experts_TxK.shape
    num_experts = moe_parallel.expert_count(wi_gate_XxExM)
    local_P = experts_TxK.reshape(-1) - first_expert
    owned_P = (local_P >= 0) & (local_P < num_experts)
    local_P = jnp.where(owned_P, local_P, num_experts)  # not ours: sorted last, counted in no group
    order_P = jnp.argsort(local_P, stable=True)
    token_P = order_P // top_k
    group_sizes_X = jnp.bincount(local_P, length=num_experts).astype(jnp.int32)
    out_PxE = grouped_ffn(backend)(jnp.take(x_TxE, token_P, axis=0), group_sizes_X, wi_gate_XxExM, wi_up_XxExM,
                                   wo_XxMxE, dropout_key)
    gates_P = jnp.where(owned_P, gates_TxK.reshape(-1), 0.0)[order_P]
    weighted_PxE = out_PxE.astype(jnp.float32) * gates_P[:, None]
    y_TxE = jnp.zeros((tokens, x_TxE.shape[1]), jnp.float32).at[token_P].add(weighted_PxE)
    return y_TxE.astype(x_TxE.dtype)


def _expert_init(in_axis: int) -> nn.initializers.Initializer:
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=-1,
                                            batch_axis=(0,))


class MoE(nn.Module):
    """Routed experts (leading 'expert' axis) plus shared experts; sows load statistics and balance losses."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxE: jax.Array, mask_BxL: jax.Array | None = None) -> jax.Array:
        """y_BxLxE; `mask_BxL` (False: padding) only keeps pads out of the statistics, every token is computed."""
        cfg, moe = self.cfg, self.cfg.moe
        batch, length, embed = x_BxLxE.shape
        x_TxE = jnp.asarray(x_BxLxE, cfg.dtype).reshape(batch * length, embed)
        experts_shape = (moe.num_experts, embed, moe.expert_dim)

        def param(name, init, shape, axes, dtype=cfg.param_dtype):
            return self.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)

        router_ExX = param("router", nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
                           (embed, moe.num_experts), ("embed", "expert"))
        # f32 whatever param_dtype: updates of 1e-3 must not round away
        bias_X = param(router.BIAS, nn.initializers.zeros_init(), (moe.num_experts,), ("expert",), jnp.float32)
        routed = (("wi_gate", experts_shape, ("expert", "embed", "mlp")),
                  ("wi_up", experts_shape, ("expert", "embed", "mlp")),
                  ("wo", (moe.num_experts, moe.expert_dim, embed), ("expert", "mlp", "embed")))
        kernels = [param(name, _expert_init(-2), shape, axes) for name, shape, axes in routed]

        # router in f32 (V3 keeps the gate in full precision)
        logits_TxX = jnp.einsum("te,ex->tx", x_TxE.astype(jnp.float32), router_ExX.astype(jnp.float32))
        gates_TxK, experts_TxK, scores_TxX = router.route(logits_TxX, bias_X, moe)
        # adapters after every base param: the base's init draws stay those of a model without LoRA
        weights = [self._adapted(name, kernel, axes) for (name, _, axes), kernel in zip(routed, kernels)]
        dropout_key = lora_dropout_key(self) if any(isinstance(w, AdaptedExperts) for w in weights) else None
        backend = dispatch_backend(moe)
        ep = moe_parallel.expert_sharding(moe)
        if ep is None:
            y_TxE = expert_ffn(x_TxE, experts_TxK, gates_TxK, *weights, backend, dropout_key=dropout_key)
        else:  # the routing above and the statistics below see every token; only the experts are split
            y_TxE = moe_parallel.parallel_expert_ffn(ep, x_TxE, experts_TxK, gates_TxK, *weights,
                                                     ffn=functools.partial(expert_ffn, backend=backend),
                                                     grouped=grouped_ffn(backend), dropout_key=dropout_key)
        y_BxLxE = y_TxE.reshape(batch, length, embed)
        if moe.num_shared_experts:
            shared_cfg = dataclasses.replace(cfg, mlp_dim=moe.num_shared_experts * moe.expert_dim)
            y_BxLxE = y_BxLxE + Mlp(shared_cfg, name="shared")(x_BxLxE)

        if self.is_mutable_collection("intermediates"):  # statistics cost nothing unless asked for
            mask_BxL = jnp.ones((batch, length), bool) if mask_BxL is None else mask_BxL
            valid_T = mask_BxL.reshape(-1)
            self.sow("intermediates", "expert_load", router.expert_counts(experts_TxK, valid_T, moe.num_experts))
            self.sow("intermediates", "seq_balance_loss", router.seq_balance_loss(
                scores_TxX.reshape(batch, length, -1), experts_TxK.reshape(batch, length, -1), mask_BxL))
            self.sow("intermediates", "switch_loss", router.switch_loss(scores_TxX, experts_TxK, valid_T))
        return constrain(y_BxLxE.astype(cfg.dtype), "batch", "length", "embed")

    def _adapted(self, name: str, kernel_XxIxO: jax.Array, axes: tuple[str, str, str]) -> ExpertWeight:
        """The routed projection `name` in the compute dtype, as AdaptedExperts where cfg.lora adapts it:
        `{name}_lora_a` [X, in, r] kaiming-uniform as PEFT's (fan-in: in), `{name}_lora_b` [X, r, out] zeros."""
        cfg, r = self.cfg, self.cfg.lora.rank
        kernel = kernel_XxIxO.astype(cfg.dtype)
        if not cfg.lora.adapts("/".join(self.path + (name,))):
            return kernel
        experts, size_in, size_out = kernel_XxIxO.shape
        init_a = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=-2, out_axis=-1, batch_axis=(0,))
        a = self.param(f"{name}_lora_a", nn.with_logical_partitioning(init_a, (axes[0], axes[1], "lora_rank")),
                       (experts, size_in, r), cfg.param_dtype)
        b = self.param(f"{name}_lora_b", zeros_init(axes[0], "lora_rank", axes[2]), (experts, r, size_out),
                       cfg.param_dtype)
        return AdaptedExperts(kernel, a.astype(cfg.dtype), b.astype(cfg.dtype), cfg.lora.scale, cfg.lora.dropout)
