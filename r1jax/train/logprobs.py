"""Per-token log-probs of a completion, with the LM head applied in sequence chunks.

The full [B, T, V] logits never exist: a rematerialized scan applies the head to
C positions at a time (forward and backward), so peak memory is B·C·V floats;
with C >= T the head runs once and its backward reuses the forward (no recompute).
Sequences are laid out as the sampler makes them: a left-padded prompt of P
slots, then T completion slots.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from r1jax.model import Transformer, moe_aux, update_router_bias


def pick(x_BxCxV: jax.Array, index_BxC: jax.Array) -> jax.Array:
    """x[..., index] along the last axis: a gather forward, a one-hot select backward.

    The plain gather's gradient is a scatter into [B, C, V], and a one-hot select-and-sum
    forward is a reduction XLA:CPU does not vectorize; this pairs the fast half of each.
    """
    return _pick(x_BxCxV.shape[-1], x_BxCxV, index_BxC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _pick(vocab: int, x_BxCxV: jax.Array, index_BxC: jax.Array) -> jax.Array:
    del vocab
    return jnp.take_along_axis(x_BxCxV, index_BxC[..., None], axis=-1)[..., 0]


def _pick_fwd(vocab, x_BxCxV, index_BxC):
    return _pick(vocab, x_BxCxV, index_BxC), index_BxC


def _pick_bwd(vocab, index_BxC, g_BxC):
    shape = index_BxC.shape + (vocab,)
    hit_BxCxV = jax.lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1) == index_BxC[..., None]
    return jnp.where(hit_BxCxV, g_BxC[..., None], jnp.zeros((), g_BxC.dtype)), None


_pick.defvjp(_pick_fwd, _pick_bwd)


def target_logp(logits_BxCxV: jax.Array, targets_BxC: jax.Array, with_entropy: bool = False
                ) -> tuple[jax.Array, jax.Array | None, jax.Array]:
    """(log softmax(logits)[target], entropy or None, target is an argmax) in f32.

    Accuracy compares the target's logit with the row maximum (ties count as correct),
    which costs nothing beyond the max the log-softmax needs; an argmax would be another
    pass over [B, C, V] (a variadic reduce that XLA:CPU does not vectorize).
    """
    logits_BxCxV = logits_BxCxV.astype(jnp.float32)
    max_BxC = jax.lax.stop_gradient(jnp.max(logits_BxCxV, axis=-1))
    shifted_BxCxV = logits_BxCxV - max_BxC[..., None]
    lse_BxC = jnp.log(jnp.sum(jnp.exp(shifted_BxCxV), axis=-1))
    picked_BxC = pick(logits_BxCxV, targets_BxC) - max_BxC  # from the logits: `shifted` is never materialized
    ent_BxC = None
    if with_entropy:  # H = lse − Σ p·shifted
        probs_BxCxV = jnp.exp(shifted_BxCxV - lse_BxC[..., None])
        ent_BxC = lse_BxC - jnp.sum(probs_BxCxV * shifted_BxCxV, axis=-1)
    return picked_BxC - lse_BxC, ent_BxC, picked_BxC >= 0.0


def scan_chunks(fn: Callable[..., tuple[jax.Array, ...]], chunk: int, *xs_BxT: jax.Array) -> tuple[jax.Array, ...]:
    """fn on C positions at a time (each x is [B, T, …], each output [B, C]); outputs [B, T].

    With more than one chunk each chunk is rematerialized (its logits recomputed in the
    backward pass instead of stored), so only one chunk's [B, C, V] exists at a time. With
    one chunk nothing would be saved by that: fn runs once, and its backward reuses the
    forward's values (no recompute of the head).
    """
    batch, length = xs_BxT[0].shape[:2]
    chunk = max(1, min(chunk, length))
    pad = -length % chunk
    n = (length + pad) // chunk
    if n == 1:
        return tuple(fn(*xs_BxT))

    def split(x_BxT):
        x_BxT = jnp.pad(x_BxT, [(0, 0), (0, pad)] + [(0, 0)] * (x_BxT.ndim - 2))
        return x_BxT.reshape(batch, n, chunk, *x_BxT.shape[2:]).swapaxes(0, 1)

    body = jax.checkpoint(fn)
    _, ys_NxBxC = jax.lax.scan(lambda carry, xs: (carry, body(*xs)), None, tuple(split(x) for x in xs_BxT))
    return tuple(y.swapaxes(0, 1).reshape(batch, -1)[:, :length] for y in ys_NxBxC)


def chunked_token_logps(model: Transformer, params, hidden_BxTxE: jax.Array, targets_BxT: jax.Array,
                        chunk: int, with_entropy: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """log p(target_t | hidden_t) for every t, and optionally the entropy, C positions at a time."""

    def one_chunk(hidden_BxCxE, targets_BxC):
        logits_BxCxV = model.apply({"params": params}, hidden_BxCxE, method="logits")
        logp_BxC, ent_BxC, _ = target_logp(logits_BxCxV, targets_BxC, with_entropy)
        return logp_BxC, (ent_BxC if with_entropy else jnp.zeros_like(logp_BxC))

    logp_BxT, ent_BxT = scan_chunks(one_chunk, chunk, hidden_BxTxE, targets_BxT)
    return logp_BxT, (ent_BxT if with_entropy else None)


def hidden_with_aux(model: Transformer, params, tokens_BxL: jax.Array, positions_BxL: jax.Array,
                    mask_BxL: jax.Array, segment_ids_BxL: jax.Array | None = None,
                    dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Final hidden states, the MoE auxiliary loss and expert-load stats (0 and {} for dense models).

    `dropout_key`: the "dropout" rng of a training pass (LoRA dropout, r1jax.lora.dropout_key); None: none.
    """
    args = (tokens_BxL, positions_BxL, mask_BxL)
    kw = dict(segment_ids=segment_ids_BxL, method="hidden")
    if dropout_key is not None:
        kw["rngs"] = {"dropout": dropout_key}
    if model.cfg.moe is None:
        hidden_BxLxE, _ = model.apply({"params": params}, *args, **kw)
        return hidden_BxLxE, jnp.zeros((), jnp.float32), {}
    (hidden_BxLxE, _), state = model.apply({"params": params}, *args, mutable=["intermediates"], **kw)
    aux, stats = moe_aux(model.cfg, state["intermediates"])
    return hidden_BxLxE, aux, stats


def balance_experts(model: Transformer, params, metrics: dict[str, jax.Array],
                    applied: jax.Array | bool = True) -> tuple[Any, dict[str, jax.Array]]:
    """After an update: the auxiliary-loss-free bias step (DeepSeek-V3 §2.1.2) and a load-imbalance metric.

    Takes `moe/expert_load` out of `metrics` (summed over the batch the update saw) and adds
    `moe/load_imbalance` = mean over layers of max load / mean load − 1. The bias moves by γ once
    per optimizer update, and not at all when `applied` is false (an update skipped for a
    non-finite loss or gradient leaves every parameter as it was, the bias included).
    """
    metrics = dict(metrics)
    load_LxX = metrics.pop("moe/expert_load", None)
    if load_LxX is None:
        return params, metrics
    metrics["moe/load_imbalance"] = jnp.mean(load_LxX.max(axis=1) / jnp.maximum(load_LxX.mean(axis=1), 1e-9) - 1)
    moved = update_router_bias(params, load_LxX, model.cfg.moe.bias_update_rate)
    applied = jnp.asarray(applied, bool)  # a select, not γ·0: a skipped update's loads may be NaN
    return jax.tree.map(lambda new, old: jnp.where(applied, new, old), moved, params), metrics


def completion_logps_aux(model: Transformer, params, prompt_BxP: jax.Array, prompt_mask_BxP: jax.Array,
                         completion_BxT: jax.Array, completion_mask_BxT: jax.Array, chunk: int = 256,
                         with_entropy: bool = False, dropout_key: jax.Array | None = None):
    """(logp_BxT, entropy_BxT or None, MoE aux loss, MoE stats) of each completion token; `dropout_key` as in
    hidden_with_aux (a training pass)."""
    tokens_BxS = jnp.concatenate([prompt_BxP, completion_BxT], axis=1)
    mask_BxS = jnp.concatenate([prompt_mask_BxP, completion_mask_BxT], axis=1).astype(bool)
    positions_BxS = jnp.maximum(jnp.cumsum(mask_BxS, axis=1, dtype=jnp.int32) - 1, 0)
    hidden_BxSxE, aux, stats = hidden_with_aux(model, params, tokens_BxS, positions_BxS, mask_BxS,
                                               dropout_key=dropout_key)
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
