"""Token choice from logits: temperature, top-p, top-k, greedy; log-probs of chosen tokens."""
from __future__ import annotations

import jax
import jax.numpy as jnp

NEG_INF = -1e30


def top_k_mask(logits_BxV: jax.Array, top_k: int | None) -> jax.Array:
    """Logits with everything below the k-th largest per row set to −inf (ties kept)."""
    if top_k is None or top_k <= 0 or top_k >= logits_BxV.shape[-1]:
        return logits_BxV
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    return jnp.where(logits_BxV < kth_Bx1, NEG_INF, logits_BxV)


def top_p_mask(logits_BxV: jax.Array, top_p_B: jax.Array) -> jax.Array:
    """Nucleus filter: keep the smallest set of tokens whose probability reaches top_p.

    A token is kept when the probability mass strictly above it is < top_p, so the
    most likely token always survives and top_p = 1 keeps everything.
    """
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_above_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    keep_BxV = mass_above_BxV < top_p_B[:, None]
    # smallest kept logit per row is the threshold
    threshold_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BxV < threshold_Bx1, NEG_INF, logits_BxV)


def choose_tokens(logits_BxV: jax.Array, rng: jax.Array, temperature_B: jax.Array,
                  top_p_B: jax.Array, top_k: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Sample one token per row; rows with temperature 0 take the argmax.

    Returns `(tokens_B, logp_B)` where logp_B is the log-probability of the
    chosen token under the raw model (temperature 1, no filtering): the
    quantity the GRPO ratio needs.
    """
    logits_BxV = logits_BxV.astype(jnp.float32)
    greedy_B = jnp.argmax(logits_BxV, axis=-1)

    def sample(_):
        safe_t_B = jnp.where(temperature_B > 0, temperature_B, 1.0)
        scaled_BxV = top_k_mask(logits_BxV / safe_t_B[:, None], top_k)
        # the nucleus sort over the vocabulary is skipped when no row asks for it
        scaled_BxV = jax.lax.cond(jnp.all(top_p_B >= 1.0), lambda x: x, lambda x: top_p_mask(x, top_p_B),
                                  scaled_BxV)
        return jax.random.categorical(rng, scaled_BxV, axis=-1)

    # an all-greedy batch draws no random numbers at all
    sampled_B = jax.lax.cond(jnp.any(temperature_B > 0), sample, lambda _: greedy_B, None)
    tokens_B = jnp.where(temperature_B > 0, sampled_B, greedy_B).astype(jnp.int32)
    logp_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
    logp_B = jnp.take_along_axis(logp_BxV, tokens_B[:, None], axis=-1)[:, 0]
    return tokens_B, logp_B
