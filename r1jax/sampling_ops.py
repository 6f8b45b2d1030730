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


def top_k_mask_rows(logits_BxV: jax.Array, top_k_B: jax.Array) -> jax.Array:
    """`top_k_mask` with each row's own k (0: no filter)."""
    vocab = logits_BxV.shape[-1]
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    kth_Bx1 = jnp.take_along_axis(sorted_BxV, jnp.clip(top_k_B - 1, 0, vocab - 1)[:, None], axis=-1)
    return jnp.where((top_k_B[:, None] > 0) & (logits_BxV < kth_Bx1), NEG_INF, logits_BxV)


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


def first_argmax(x_BxV: jax.Array, max_Bx1: jax.Array | None = None) -> jax.Array:
    """jnp.argmax over the last axis (first index of the maximum) as two plain reductions.

    XLA:CPU lowers argmax to a variadic (value, index) reduce that does not vectorize: on a
    [64, 32000] row block it took longer than a third of the LM head's matmul, every decode step.
    """
    if max_Bx1 is None:
        max_Bx1 = jnp.max(x_BxV, axis=-1, keepdims=True)
    iota_BxV = jax.lax.broadcasted_iota(jnp.int32, x_BxV.shape, x_BxV.ndim - 1)
    first_B = jnp.min(jnp.where(x_BxV == max_Bx1, iota_BxV, x_BxV.shape[-1]), axis=-1)
    return jnp.minimum(first_B, x_BxV.shape[-1] - 1)  # a NaN row matches nothing; stay in range


def _last_positive(p_BxC: jax.Array) -> jax.Array:
    """Index of the last entry > 0 in each row (0 if none)."""
    c = p_BxC.shape[-1]
    return c - 1 - first_argmax((p_BxC[:, ::-1] > 0).astype(jnp.int32))


def _is_key_batch(rng: jax.Array) -> bool:
    return jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key) and rng.ndim == 1


def sample_categorical(rng: jax.Array, logits_BxV: jax.Array, block: int = 128) -> jax.Array:
    """One draw per row from softmax(logits), by inverse CDF on a single uniform per row.

    Same distribution as jax.random.categorical, which draws V Gumbel numbers per row
    (threefry: most of a T=1 decode step's sampling cost on CPU). The CDF is walked in
    two levels, blocks of `block` tokens then tokens inside the chosen block, so no
    length-V cumsum is needed. Tokens of probability 0 (masked to −1e30) are never drawn.
    """
    batch, vocab = logits_BxV.shape
    n = -(-vocab // block)
    max_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True)
    p_BxV = jnp.pad(jnp.exp(logits_BxV - max_Bx1), ((0, 0), (0, n * block - vocab)))  # unnormalized, max 1
    p_BxNxC = p_BxV.reshape(batch, n, block)
    mass_BxN = jnp.sum(p_BxNxC, axis=-1)
    cum_BxN = jnp.cumsum(mass_BxN, axis=-1)
    if _is_key_batch(rng):  # one key per row (r1jax.engine: a row's draws do not depend on its neighbours)
        u_B = jax.vmap(lambda key: jax.random.uniform(key, (), jnp.float32))(rng)
    else:
        u_B = jax.random.uniform(rng, (batch,), jnp.float32)
    u_B = u_B * cum_BxN[:, -1]
    blk_B = jnp.minimum(jnp.sum(cum_BxN <= u_B[:, None], axis=-1), n - 1)
    # rounding can put u at the very end of the CDF: fall back to the last block with mass
    has_mass_B = jnp.take_along_axis(mass_BxN, blk_B[:, None], axis=-1)[:, 0] > 0
    blk_B = jnp.where(has_mass_B, blk_B, _last_positive(mass_BxN))
    before_B = jnp.take_along_axis(cum_BxN - mass_BxN, blk_B[:, None], axis=-1)[:, 0]
    p_BxC = jnp.take_along_axis(p_BxNxC, blk_B[:, None, None], axis=1)[:, 0]
    inside_B = jnp.minimum(jnp.sum(jnp.cumsum(p_BxC, axis=-1) <= (u_B - before_B)[:, None], axis=-1), block - 1)
    inside_B = jnp.where(jnp.take_along_axis(p_BxC, inside_B[:, None], axis=-1)[:, 0] > 0, inside_B,
                         _last_positive(p_BxC))
    return jnp.minimum(blk_B * block + inside_B, vocab - 1)  # NaN logits match nothing: stay in range


def choose_tokens(logits_BxV: jax.Array, rng: jax.Array, temperature_B: jax.Array,
                  top_p_B: jax.Array, top_k: int | jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Sample one token per row; rows with temperature 0 take the argmax.

    `rng` is one key for the batch, or a batch of typed keys (one per row); `top_k` one int for
    all rows (None or 0: off) or an int32 array of one per row (0: off for that row).

    Returns `(tokens_B, logp_B)` where logp_B is the log-probability of the
    chosen token under the raw model (temperature 1, no filtering): the
    quantity the GRPO ratio needs.
    """
    logits_BxV = logits_BxV.astype(jnp.float32)
    max_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True)
    greedy_B = first_argmax(logits_BxV, max_Bx1)

    def sample(_):
        safe_t_B = jnp.where(temperature_B > 0, temperature_B, 1.0)
        scaled_BxV = logits_BxV / safe_t_B[:, None]
        if isinstance(top_k, jax.Array) and top_k.ndim == 1:
            scaled_BxV = jax.lax.cond(jnp.any(top_k > 0), lambda x: top_k_mask_rows(x, top_k), lambda x: x,
                                      scaled_BxV)
        else:
            scaled_BxV = top_k_mask(scaled_BxV, top_k)
        # the nucleus sort over the vocabulary is skipped when no row asks for it
        scaled_BxV = jax.lax.cond(jnp.all(top_p_B >= 1.0), lambda x: x, lambda x: top_p_mask(x, top_p_B),
                                  scaled_BxV)
        return sample_categorical(rng, scaled_BxV)

    # an all-greedy batch draws no random numbers at all
    sampled_B = jax.lax.cond(jnp.any(temperature_B > 0), sample, lambda _: greedy_B, None)
    tokens_B = jnp.where(temperature_B > 0, sampled_B, greedy_B).astype(jnp.int32)
    # log p(token) = logit − max − log Σ exp(logit − max), without the [B, V] log-softmax
    lse_B = jnp.log(jnp.sum(jnp.exp(logits_BxV - max_Bx1), axis=-1))
    picked_B = jnp.take_along_axis(logits_BxV, tokens_B[:, None], axis=-1)[:, 0]
    return tokens_B, picked_B - max_Bx1[:, 0] - lse_B
