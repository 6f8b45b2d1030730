"""MoE routing and load balancing: gates, balance losses, the auxiliary-loss-free bias (pure functions).

DeepSeek-V3 (arXiv 2412.19437 §2.1.2): sigmoid affinities s = σ(u·e), a
per-expert bias b added only to choose the top-k (eq. 16), gates from the
unbiased s of the chosen experts normalized to sum 1 (eq. 13), times the routed
scaling factor; group-limited routing masks all but the best groups with −inf.
Qwen3-MoE: softmax probabilities, top-k, optional renormalization.

The bias lives in params (leaf `router_bias` of each MoE layer) but reaches the
model only through stop_gradient, so its gradient is exactly 0: exclude it
from the optimizer with `router_bias_mask(params)` and move it after each step
with `update_router_bias`. MoE layers sow their statistics into the
'intermediates' collection; `moe_aux` turns them into the aux loss and logs::

    (logits, _), state = model.apply({'params': p}, tokens, positions, mask, mutable=['intermediates'])
    aux_loss, stats = moe_aux(cfg, state['intermediates'])   # stats['expert_load']: [moe_layers, experts]
    ...                                                      # after the optimizer step:
    params = update_router_bias(params, stats['expert_load'], cfg.moe.bias_update_rate)

Shape legend: T tokens, X experts, K experts per token, G expert groups.
"""
from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp

from r1jax.config import ModelConfig, MoEConfig

BIAS = "router_bias"
_GROUP = re.compile(r"layers_(\d+)|scan_(\d+)_(\d+)")  # one block, or a scanned stack of blocks


def route(logits_TxX: jax.Array, bias_X: jax.Array, moe: MoEConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(gates_TxK f32, experts_TxK int32, scores_TxX f32): top-k by biased score, gates from unbiased scores."""
    logits_TxX = logits_TxX.astype(jnp.float32)
    if moe.router == "sigmoid":
        scores_TxX = jax.nn.sigmoid(logits_TxX)  # V3 eq. 15
    else:
        scores_TxX = jax.nn.softmax(logits_TxX, axis=-1)
    # the bias only chooses (V3 eq. 16); no gradient ever reaches it
    choice_TxX = scores_TxX + jax.lax.stop_gradient(bias_X.astype(jnp.float32))[None, :]
    if moe.num_groups > 1:
        choice_TxX = mask_groups(choice_TxX, moe.num_groups, moe.topk_groups)
    _, experts_TxK = jax.lax.top_k(choice_TxX, moe.top_k)
    gates_TxK = jnp.take_along_axis(scores_TxX, experts_TxK, axis=-1)
    if moe.norm_topk_prob:
        gates_TxK = gates_TxK / (jnp.sum(gates_TxK, axis=-1, keepdims=True) + 1e-20)  # V3 eq. 13
    return gates_TxK * moe.routed_scaling_factor, experts_TxK.astype(jnp.int32), scores_TxX


def mask_groups(choice_TxX: jax.Array, num_groups: int, topk_groups: int) -> jax.Array:
    """Group-limited routing: keep the `topk_groups` groups with the largest sum of their top-2, −inf elsewhere."""
    tokens, experts = choice_TxX.shape
    per_group = experts // num_groups
    grouped_TxGxN = choice_TxX.reshape(tokens, num_groups, per_group)
    group_score_TxG = jnp.sum(jax.lax.top_k(grouped_TxGxN, min(2, per_group))[0], axis=-1)
    _, kept_TxKg = jax.lax.top_k(group_score_TxG, topk_groups)
    keep_TxG = jnp.sum(jax.nn.one_hot(kept_TxKg, num_groups, dtype=jnp.int32), axis=1) > 0
    keep_TxX = jnp.repeat(keep_TxG, per_group, axis=1)
    return jnp.where(keep_TxX, choice_TxX, -jnp.inf)


def expert_counts(experts_TxK: jax.Array, valid_T: jax.Array, num_experts: int) -> jax.Array:
    """counts_X (f32): how many real tokens chose each expert."""
    weight_TxK = jnp.broadcast_to(valid_T[:, None], experts_TxK.shape).astype(jnp.float32)
    return jnp.zeros((num_experts,), jnp.float32).at[experts_TxK.reshape(-1)].add(weight_TxK.reshape(-1))


def seq_balance_loss(scores_BxLxX: jax.Array, experts_BxLxK: jax.Array, mask_BxL: jax.Array) -> jax.Array:
    """DeepSeek-V3 sequence-wise balance loss Σ_i f_i·P_i (eq. 17-20, without α), averaged over sequences.

    f_i = X/(K·T)·(tokens of the sequence choosing i), P_i = mean_t s_i,t / Σ_j s_j,t over
    the sequence's T real tokens; gradients flow through P only.
    """
    num_experts, top_k = scores_BxLxX.shape[-1], experts_BxLxK.shape[-1]
    valid_BxL = mask_BxL.astype(jnp.float32)
    tokens_B = jnp.maximum(jnp.sum(valid_BxL, axis=1), 1.0)
    chosen_BxLxX = jnp.sum(jax.nn.one_hot(experts_BxLxK, num_experts, dtype=jnp.float32), axis=2)
    counts_BxX = jnp.einsum("blx,bl->bx", chosen_BxLxX, valid_BxL)
    f_BxX = jax.lax.stop_gradient(counts_BxX * (num_experts / top_k) / tokens_B[:, None])
    normed_BxLxX = scores_BxLxX / jnp.sum(scores_BxLxX, axis=-1, keepdims=True)
    p_BxX = jnp.einsum("blx,bl->bx", normed_BxLxX, valid_BxL) / tokens_B[:, None]
    has_tokens_B = (jnp.sum(valid_BxL, axis=1) > 0).astype(jnp.float32)
    return jnp.sum(jnp.sum(f_BxX * p_BxX, axis=1) * has_tokens_B) / jnp.maximum(jnp.sum(has_tokens_B), 1.0)


def switch_loss(scores_TxX: jax.Array, experts_TxK: jax.Array, valid_T: jax.Array) -> jax.Array:
    """Switch Transformer load-balancing loss X·Σ_i f_i·P_i over the batch (arXiv 2101.03961 eq. 4-6; Qwen3-MoE).

    f_i = fraction of real tokens choosing i (Σ f = K, as transformers counts it),
    P_i = mean router probability of i (scores renormalized to sum 1 per token).
    """
    num_experts = scores_TxX.shape[-1]
    valid_T = valid_T.astype(jnp.float32)
    tokens = jnp.maximum(jnp.sum(valid_T), 1.0)
    f_X = jax.lax.stop_gradient(expert_counts(experts_TxK, valid_T, num_experts) / tokens)
    normed_TxX = scores_TxX / jnp.sum(scores_TxX, axis=-1, keepdims=True)
    p_X = jnp.einsum("tx,t->x", normed_TxX, valid_T) / tokens
    return num_experts * jnp.sum(f_X * p_X)


# ---------------------------------------------------------------- balancing across steps


def _moe_groups(tree: Any, leaf: str) -> list[tuple[str, bool]]:
    """(top-level key, stacked) of the layer groups whose 'mlp' holds `leaf`, in layer order.

    A key `layers_i` is one block; `scan_a_b` a scanned stack (leaves with a leading layer axis).
    """
    found = []
    for key in tree:
        match = _GROUP.fullmatch(key)
        if match and leaf in tree[key].get("mlp", {}):
            found.append((int(match.group(1) or match.group(2)), key, match.group(1) is None))
    return [(key, stacked) for _, key, stacked in sorted(found)]


def router_bias_mask(params: Any) -> Any:
    """Pytree of bools like `params`: True on the balancing biases (keep them out of the optimizer)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == BIAS, params)


def update_router_bias(params: Any, expert_load: jax.Array, gamma: float | jax.Array) -> Any:
    """b += γ·sign(mean_load − load) (V3 §2.1.2); expert_load [moe_layers, X], global-batch counts."""
    groups = _moe_groups(params, BIAS)
    rows = [params[key]["mlp"][BIAS].shape[0] if stacked else 1 for key, stacked in groups]
    if expert_load.shape[0] != sum(rows):
        raise ValueError(f"expert_load has {expert_load.shape[0]} rows for {sum(rows)} MoE layers")
    new, first = dict(params), 0
    for (key, stacked), n in zip(groups, rows):
        bias = params[key]["mlp"][BIAS]
        load = expert_load[first:first + n] if stacked else expert_load[first]
        first += n
        step = gamma * jnp.sign(jnp.mean(load, axis=-1, keepdims=True) - load)
        new[key] = {**params[key], "mlp": {**params[key]["mlp"], BIAS: (bias + step).astype(bias.dtype)}}
    return new


def moe_aux(cfg: ModelConfig, intermediates: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(aux loss, stats) from a forward pass's 'intermediates' collection.

    aux = seq_aux_alpha·mean(seq-wise losses) + switch_aux_coef·mean(Switch losses), means over
    MoE layers. stats: 'expert_load' [moe_layers, X] (real tokens per expert), 'seq_balance_loss'
    and 'switch_loss' [moe_layers], 'load_max_violation' [moe_layers] = max load / mean load − 1.
    """
    groups = _moe_groups(intermediates, "expert_load")
    if cfg.moe is None or not groups:
        return jnp.zeros((), jnp.float32), {}

    def stack(key: str) -> jax.Array:  # a layer called twice: summed; a scanned group gives its layers' rows
        rows = [sum(intermediates[g]["mlp"][key]) for g, _ in groups]
        return jnp.concatenate([r if stacked else r[None] for r, (_, stacked) in zip(rows, groups)])

    load_LxX = stack("expert_load")
    stats = dict(expert_load=load_LxX, seq_balance_loss=stack("seq_balance_loss"), switch_loss=stack("switch_loss"),
                 load_max_violation=jnp.max(load_LxX, axis=1) / jnp.maximum(jnp.mean(load_LxX, axis=1), 1e-9) - 1)
    aux = (cfg.moe.seq_aux_alpha * jnp.mean(stats["seq_balance_loss"])
           + cfg.moe.switch_aux_coef * jnp.mean(stats["switch_loss"]))
    return aux, stats
