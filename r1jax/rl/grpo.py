"""GRPO's pure pieces: group advantages, clipped ratio loss, KL estimators, aggregation, entropy.

DeepSeek-R1 (arXiv 2501.12948), Eq. 1–3; variants from DAPO (arXiv 2503.14476)
and Dr. GRPO (arXiv 2503.20783). The other policy losses, Clip-Cov / KL-Cov and rollout
correction are in r1jax.rl.objectives; `grpo_objective` composes them. Shapes: P prompts,
G samples each, B = P·G rows, T completion tokens, V vocabulary, K reward components.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from r1jax.config import (  # noqa: F401  the modes are named once, in the config
    ADVANTAGE_MODES, AGGREGATIONS, KL_ESTIMATORS, AdvantageMode, Aggregation, KLEstimator)


def group_advantages(rewards_PxG: jax.Array, mode: AdvantageMode = "std",
                     eps: float = 1e-6) -> jax.Array:
    """Group-relative advantages, one per sample (R1 Eq. 3).

    "std": (r − mean_group) / std_group (paper; population std);
    "mean": r − mean_group (Dr. GRPO drops the std);
    "batch-std": (r − mean_group) / std over the whole batch (REINFORCE++ with the group baseline,
    arXiv 2501.03262);
    "rloo": r_i − mean of the group's other G − 1 rewards, = G/(G−1)·(r − mean_group) (leave-one-out,
    Ahmadian et al., arXiv 2402.14740, Eq. 6; G ≥ 2);
    "reinforce++": (r − mean_batch) / std_batch, no group baseline (arXiv 2501.03262, Eq. 10);
    "gdpo": `gdpo_advantages` of the total as its one component ("std", then divided by the batch std).
    In every mode but "reinforce++", a group whose rewards are all equal gets advantage 0 (not NaN).
    """
    if mode == "gdpo":
        return gdpo_advantages(rewards_PxG[None], eps=eps)
    rewards_PxG = rewards_PxG.astype(jnp.float32)
    centered_PxG = rewards_PxG - rewards_PxG.mean(axis=1, keepdims=True)
    if mode == "rloo":
        g = rewards_PxG.shape[1]
        if g < 2:
            raise ValueError("advantage 'rloo' needs at least 2 samples per group (group_size >= 2)")
        return centered_PxG * (g / (g - 1))
    if mode == "reinforce++":
        return (rewards_PxG - rewards_PxG.mean()) / (rewards_PxG.std() + eps)
    if mode == "std":
        return centered_PxG / (rewards_PxG.std(axis=1, keepdims=True) + eps)
    if mode == "mean":
        return centered_PxG
    if mode == "batch-std":
        return centered_PxG / (rewards_PxG.std() + eps)
    raise ValueError(f"advantage mode {mode!r} is not one of {ADVANTAGE_MODES}")


def gdpo_advantages(rewards_KxPxG: jax.Array, weights_K: jax.Array | None = None, batch_norm: bool = True,
                    eps: float = 1e-6) -> jax.Array:
    """GDPO (arXiv 2601.05242): each of the K reward components normalized within its group, then summed.

    A = Σ_k w_k·(r_k − mean_group r_k) / std_group r_k, then, with `batch_norm`, A / std_batch(A): the
    paper's batch-wise (A − mean_batch) / std_batch, whose mean is 0 here by construction (every group's
    sum is centred), so a flat group keeps advantage exactly 0. Weights apply after the normalization
    (a weight before it would cancel). Returns P×G.
    """
    rewards_KxPxG = rewards_KxPxG.astype(jnp.float32)
    centered_KxPxG = rewards_KxPxG - rewards_KxPxG.mean(axis=2, keepdims=True)
    normed_KxPxG = centered_KxPxG / (rewards_KxPxG.std(axis=2, keepdims=True) + eps)
    if weights_K is not None:
        normed_KxPxG = normed_KxPxG * jnp.asarray(weights_K, jnp.float32)[:, None, None]
    adv_PxG = normed_KxPxG.sum(axis=0)
    return adv_PxG / (adv_PxG.std() + eps) if batch_norm else adv_PxG


def kl_penalty(logp_BxT: jax.Array, ref_logp_BxT: jax.Array, estimator: KLEstimator = "k3",
               clamp: float = 10.0) -> jax.Array:
    """Per-token KL(π_θ ‖ π_ref) estimate from sampled tokens (Schulman's k1/k2/k3).

    With x = log π_ref − log π_θ: k1 = −x, k2 = x²/2, k3 = exp(x) − x − 1 (R1 Eq. 2,
    unbiased and ≥ 0). Values are clamped to [−clamp, clamp] so one wild token
    cannot blow up the loss.
    """
    x_BxT = (ref_logp_BxT - logp_BxT).astype(jnp.float32)
    if estimator == "k1":
        kl_BxT = -x_BxT
    elif estimator == "k2":
        kl_BxT = 0.5 * jnp.square(x_BxT)
    elif estimator == "k3":
        x_BxT = jnp.clip(x_BxT, -clamp, clamp)  # keep exp() finite
        kl_BxT = jnp.exp(x_BxT) - x_BxT - 1.0
    else:
        raise ValueError(f"KL estimator {estimator!r} is not one of {KL_ESTIMATORS}")
    return jnp.clip(kl_BxT, -clamp, clamp)


def clipped_policy_loss(logp_BxT: jax.Array, old_logp_BxT: jax.Array, advantages_B: jax.Array,
                        eps_low: float = 0.2, eps_high: float = 0.2,
                        dual_clip: float | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-token PPO-style surrogate loss, to be minimized (R1 Eq. 1; clip-higher from DAPO).

    loss = −min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A), ρ = π_θ/π_old per token.
    `dual_clip` = c > 1 also bounds the loss of negative-advantage tokens by −c·A
    (Ye et al., 2020). Returns the loss and per-token 0/1 indicators of which
    clip bound was active (for clip-fraction metrics).
    """
    log_ratio_BxT = (logp_BxT - old_logp_BxT).astype(jnp.float32)
    ratio_BxT = jnp.exp(jnp.clip(log_ratio_BxT, -20.0, 20.0))
    adv_Bx1 = advantages_B.astype(jnp.float32)[:, None]
    unclipped_BxT = -adv_Bx1 * ratio_BxT
    clipped_BxT = -adv_Bx1 * jnp.clip(ratio_BxT, 1.0 - eps_low, 1.0 + eps_high)
    loss_BxT = jnp.maximum(unclipped_BxT, clipped_BxT)
    active_BxT = clipped_BxT > unclipped_BxT
    info = {
        "clip_low": (active_BxT & (ratio_BxT < 1.0 - eps_low)).astype(jnp.float32),
        "clip_high": (active_BxT & (ratio_BxT > 1.0 + eps_high)).astype(jnp.float32),
        "ratio": ratio_BxT,
    }
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        bound_BxT = -adv_Bx1 * dual_clip
        dual_BxT = (adv_Bx1 < 0) & (loss_BxT > bound_BxT)
        loss_BxT = jnp.where(dual_BxT, bound_BxT, loss_BxT)
        info["clip_dual"] = dual_BxT.astype(jnp.float32)
    return loss_BxT, info


def aggregate(values_BxT: jax.Array, mask_BxT: jax.Array, mode: Aggregation = "seq-mean-token-mean",
              max_len: int | None = None, token_count: jax.Array | None = None) -> jax.Array:
    """Reduce per-token values to a scalar over the real (mask=1) tokens.

    "seq-mean-token-mean": mean over sequences of each one's token mean (R1 Eq. 1);
    "token-mean": mean over every token of the batch (DAPO);
    "seq-mean-token-sum-norm": token sums divided by B·max_len, a constant (Dr. GRPO);
    max_len defaults to T. `token_count` replaces the token-mean's denominator (default: this
    batch's real tokens): a micro-batch of a minibatch passes the minibatch's count divided by the
    number of micro-batches, so the average of the micro-batches' values is the minibatch's token
    mean whatever each holds (the other two modes average exactly as they are).
    """
    mask_BxT = mask_BxT.astype(jnp.float32)
    masked_BxT = values_BxT.astype(jnp.float32) * mask_BxT
    if mode == "seq-mean-token-mean":
        per_seq_B = masked_BxT.sum(axis=1) / jnp.maximum(mask_BxT.sum(axis=1), 1.0)
        return per_seq_B.mean()
    if mode == "token-mean":
        count = jnp.maximum(mask_BxT.sum(), 1.0) if token_count is None else token_count
        return masked_BxT.sum() / count
    if mode == "seq-mean-token-sum-norm":
        length = values_BxT.shape[1] if max_len is None else max_len
        return masked_BxT.sum() / (values_BxT.shape[0] * length)
    raise ValueError(f"aggregation {mode!r} is not one of {AGGREGATIONS}")


def grpo_objective(logp_BxT: jax.Array, old_logp_BxT: jax.Array, ref_logp_BxT: jax.Array | None,
                   advantages_B: jax.Array, mask_BxT: jax.Array, *, eps_low: float = 0.2,
                   eps_high: float = 0.2, dual_clip: float | None = None, kl_beta: float = 0.001,
                   kl_estimator: KLEstimator = "k3", aggregation: Aggregation = "seq-mean-token-mean",
                   max_len: int | None = None, token_count: jax.Array | None = None,
                   policy_loss: Callable[..., tuple[jax.Array, dict[str, jax.Array]]] | None = None,
                   is_weights_BxT: jax.Array | None = None, entropy_BxT: jax.Array | None = None,
                   entropy_coef: float = 0.0,
                   token_penalty: Callable[..., tuple[jax.Array, dict[str, jax.Array]]] | None = None
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO loss (negated R1 Eq. 1) and its variants, aggregated; with metrics.

    Per token: w_t·ℓ_t (changed by `token_penalty`) + β·KL_t − c·H_t, then `aggregation`. ℓ is
    `policy_loss(logp, old_logp, advantages, mask)` (r1jax.rl.objectives; default: the clipped ratio
    loss with eps_low/eps_high/dual_clip); w the rollout-correction weights `is_weights_BxT` (no
    gradient); `token_penalty(ℓ, logp, old_logp, advantages, mask)` Clip-Cov or KL-Cov; H the token
    entropy `entropy_BxT` with c = `entropy_coef` (an entropy bonus). Every per-token indicator the
    loss or the penalty reports is logged as `<name>_frac`, its "ratio" as `ratio_mean`.
    `token_count`: every token mean's denominator (see `aggregate`), for a micro-batch of a minibatch.
    """
    if policy_loss is None:
        pg_BxT, info = clipped_policy_loss(logp_BxT, old_logp_BxT, advantages_B, eps_low, eps_high, dual_clip)
    else:
        pg_BxT, info = policy_loss(logp_BxT, old_logp_BxT, advantages_B, mask_BxT)
    info = dict(info)
    if is_weights_BxT is not None:
        pg_BxT = pg_BxT * jax.lax.stop_gradient(is_weights_BxT)
    if token_penalty is not None:
        pg_BxT, more = token_penalty(pg_BxT, logp_BxT, old_logp_BxT, advantages_B, mask_BxT)
        info.update(more)

    def token_mean(x_BxT):
        return aggregate(x_BxT, mask_BxT, "token-mean", token_count=token_count)

    metrics = {"pg_loss": aggregate(pg_BxT, mask_BxT, aggregation, max_len, token_count)}
    loss_BxT = pg_BxT
    if ref_logp_BxT is not None and kl_beta:
        kl_BxT = kl_penalty(logp_BxT, ref_logp_BxT, kl_estimator)
        loss_BxT = loss_BxT + kl_beta * kl_BxT
        metrics["kl"] = token_mean(kl_BxT)
    if entropy_BxT is not None and entropy_coef:
        loss_BxT = loss_BxT - entropy_coef * entropy_BxT.astype(jnp.float32)
    for name, flags_BxT in info.items():
        if name != "ratio":
            metrics[f"{name}_frac"] = token_mean(flags_BxT)
    if "ratio" in info:
        metrics["ratio_mean"] = token_mean(info["ratio"])
    return aggregate(loss_BxT, mask_BxT, aggregation, max_len, token_count), metrics
