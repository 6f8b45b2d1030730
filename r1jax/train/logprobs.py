"""Per-token log-probs of a completion, with the LM head applied in sequence chunks.

The full [B, T, V] logits never exist: a rematerialized scan applies the head to
C positions at a time (forward and backward), so peak memory is B·C·V floats.
Sequences are laid out as the sampler makes them: a left-padded prompt of P
slots, then T completion slots.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from r1jax.model import Transformer, moe_aux, update_router_bias


def chunked_token_logps(model: Transformer, params, hidden_BxTxE: jax.Array, targets_BxT: jax.Array,
                        chunk: int, with_entropy: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """log p(target_t | hidden_t) for every t, and optionally the entropy, C positions at a time."""
    batch, length, embed = hidden_BxTxE.shape
    chunk = max(1, min(chunk, length))
    pad = -length % chunk
    if pad:
        hidden_BxTxE = jnp.pad(hidden_BxTxE, ((0, 0), (0, pad), (0, 0)))
        targets_BxT = jnp.pad(targets_BxT, ((0, 0), (0, pad)))
    n = (length + pad) // chunk
    hidden_NxBxCxE = hidden_BxTxE.reshape(batch, n, chunk, embed).swapaxes(0, 1)
    targets_NxBxC = targets_BxT.reshape(batch, n, chunk).swapaxes(0, 1)

    @jax.checkpoint  # recompute each chunk's logits in the backward pass instead of storing them
    def one_chunk(hidden_BxCxE, targets_BxC):
        logits_BxCxV = model.apply({"params": params}, hidden_BxCxE, method="logits").astype(jnp.float32)
        logp_BxCxV = jax.nn.log_softmax(logits_BxCxV, axis=-1)
        logp_BxC = jnp.take_along_axis(logp_BxCxV, targets_BxC[..., None], axis=-1)[..., 0]
        ent_BxC = -(jnp.exp(logp_BxCxV) * logp_BxCxV).sum(-1) if with_entropy else jnp.zeros_like(logp_BxC)
        return logp_BxC, ent_BxC

    _, (logp_NxBxC, ent_NxBxC) = jax.lax.scan(
        lambda carry, xs: (carry, one_chunk(*xs)), None, (hidden_NxBxCxE, targets_NxBxC))
    logp_BxT = logp_NxBxC.swapaxes(0, 1).reshape(batch, -1)[:, :length]
    ent_BxT = ent_NxBxC.swapaxes(0, 1).reshape(batch, -1)[:, :length]
    return logp_BxT, (ent_BxT if with_entropy else None)


def hidden_with_aux(model: Transformer, params, tokens_BxL: jax.Array, positions_BxL: jax.Array,
                    mask_BxL: jax.Array, segment_ids_BxL: jax.Array | None = None
                    ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Final hidden states, the MoE auxiliary loss and expert-load stats (0 and {} for dense models)."""
    args = (tokens_BxL, positions_BxL, mask_BxL)
    if model.cfg.moe is None:
        hidden_BxLxE, _ = model.apply({"params": params}, *args, segment_ids=segment_ids_BxL, method="hidden")
        return hidden_BxLxE, jnp.zeros((), jnp.float32), {}
    (hidden_BxLxE, _), state = model.apply({"params": params}, *args, segment_ids=segment_ids_BxL, method="hidden",
                                           mutable=["intermediates"])
    aux, stats = moe_aux(model.cfg, state["intermediates"])
    return hidden_BxLxE, aux, stats


def balance_experts(model: Transformer, params, metrics: dict[str, jax.Array]) -> tuple[Any, dict[str, jax.Array]]:
    """After an update: the auxiliary-loss-free bias step (DeepSeek-V3 §2.1.2) and a load-imbalance metric.

    Takes `moe/expert_load` out of `metrics` (summed over the batch) and adds
    `moe/load_imbalance` = mean over layers of max load / mean load − 1.
    """
    metrics = dict(metrics)
    load_LxX = metrics.pop("moe/expert_load", None)
    if load_LxX is None:
        return params, metrics
    metrics["moe/load_imbalance"] = jnp.mean(load_LxX.max(axis=1) / jnp.maximum(load_LxX.mean(axis=1), 1e-9) - 1)
    return update_router_bias(params, load_LxX, model.cfg.moe.bias_update_rate), metrics


def completion_logps_aux(model: Transformer, params, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
                         completion_BxT: jax.Array, completion_mask_BxT: jax.Array, chunk: int = 256,
                         with_entropy: bool = False):
    """(logp_BxT, entropy_BxT or None, MoE aux loss, MoE stats) of each completion token."""
    tokens_BxS = jnp.concatenate([prompt_BxP, completion_BxT], axis=1)
    mask_BxS = jnp.concatenate([prompt_mask_BxP, completion_mask_BxT], axis=1).astype(bool)
    positions_BxS = jnp.maximum(jnp.cumsum(mask_BxS, axis=1, dtype=jnp.int32) - 1, 0)
    hidden_BxSxE, aux, stats = hidden_with_aux(model, params, tokens_BxS, positions_BxS, mask_BxS)
    prompt_len, length = prompt_BxP.shape[1], completion_BxT.shape[1]
    # the hidden state at slot s predicts the token at slot s + 1
    hidden_BxTxE = jax.lax.dynamic_slice_in_dim(hidden_BxSxE, prompt_len - 1, length, axis=1)
    logp_BxT, ent_BxT = chunked_token_logps(model, params, hidden_BxTxE, completion_BxT, chunk, with_entropy)
    return logp_BxT, ent_BxT, aux, stats


def completion_logps(model: Transformer, params, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
                     completion_BxT: jax.Array, completion_mask_BxT: jax.Array, chunk: int = 256,
                     with_entropy: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """Log-probs (and entropies) of each completion token given its prompt and earlier tokens."""
    out = completion_logps_aux(model, params, prompt_BxP, prompt_mask_BxP, completion_BxT, completion_mask_BxT,
                               chunk, with_entropy)
    return out[0], out[1]
