"""The policy-loss family researchers compare, and the per-token terms that join it: pure functions.

Every policy loss is a `PolicyLossFn`: (logp_BxT, old_logp_BxT, advantages_B, mask_BxT) → (loss_BxT,
info), a per-token loss to be minimized before aggregation, and info of per-token 0/1 indicators
(logged as `<name>_frac`) plus optionally "ratio" (logged as `ratio_mean`). `grpo.grpo_objective`
aggregates any of them and adds KL, entropy bonus and rollout-correction weights the same way.
`GRPOConfig.policy_loss` picks one (`configured_policy_loss`); a research fork passes its own
function to `make_grpo_step(..., policy_loss=fn)` or `GRPOTrainer(..., policy_loss=fn)`.
Sequence-level losses (GSPO, GMPO) put each sequence's loss on every one of its tokens, so the
default aggregation "seq-mean-token-mean" gives their papers' 1/G Σ_i.
Shapes: B rows, T completion tokens; sg = stop-gradient.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from r1jax.config import (  # noqa: F401  the modes are named once, in the config
    COV_MODES, POLICY_LOSSES, ROLLOUT_IS_MODES, CovMode, GRPOConfig, PolicyLoss, RolloutIS)
from r1jax.rl.grpo import clipped_policy_loss, kl_penalty

Info = dict[str, jax.Array]
PolicyLossFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, Info]]
# (pg_loss_BxT, logp_BxT, old_logp_BxT, advantages_B, mask_BxT) → (pg_loss_BxT, info)
TokenPenaltyFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], tuple[jax.Array, Info]]

_MAX_LOG_RATIO = 20.0  # exp() stays finite in f32


def _log_ratio(logp_BxT: jax.Array, old_logp_BxT: jax.Array) -> jax.Array:
    return jnp.clip((logp_BxT - old_logp_BxT).astype(jnp.float32), -_MAX_LOG_RATIO, _MAX_LOG_RATIO)


def _seq_mean(x_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
    """Mean over each row's real tokens, as [B, 1]."""
    mask_BxT = mask_BxT.astype(jnp.float32)
    return (x_BxT * mask_BxT).sum(axis=1, keepdims=True) / jnp.maximum(mask_BxT.sum(axis=1, keepdims=True), 1.0)


# ------------------------------------------------------------------------------------------ policy losses
def gspo_loss(logp_BxT: jax.Array, old_logp_BxT: jax.Array, advantages_B: jax.Array, mask_BxT: jax.Array,
              eps_low: float = 3e-4, eps_high: float = 4e-4) -> tuple[jax.Array, Info]:
    """GSPO (arXiv 2507.18071): the sequence ratio s_i = exp(mean_t log ρ_i,t), loss
    −min(s_i·A_i, clip(s_i, 1−ε_low, 1+ε_high)·A_i) on each token of sequence i; the clip drops whole
    sequences (paper: ε 3e-4 / 4e-4)."""
    log_s_BxT = jnp.broadcast_to(_seq_mean(_log_ratio(logp_BxT, old_logp_BxT), mask_BxT), logp_BxT.shape)
    return clipped_policy_loss(log_s_BxT, jnp.zeros_like(log_s_BxT), advantages_B, eps_low, eps_high)


def gspo_token_loss(logp_BxT: jax.Array, old_logp_BxT: jax.Array, advantages_B: jax.Array, mask_BxT: jax.Array,
                    eps_low: float = 3e-4, eps_high: float = 4e-4) -> tuple[jax.Array, Info]:
    """GSPO-token (arXiv 2507.18071): GSPO with s_i,t = sg[s_i]·π_θ(y_i,t)/sg[π_θ(y_i,t)], the value of s_i
    with a per-token gradient (equal to GSPO's when every token has advantage A_i)."""
    log_s_Bx1 = jax.lax.stop_gradient(_seq_mean(_log_ratio(logp_BxT, old_logp_BxT), mask_BxT))
    logp_BxT = logp_BxT.astype(jnp.float32)
    log_s_BxT = log_s_Bx1 + (logp_BxT - jax.lax.stop_gradient(logp_BxT))
    return clipped_policy_loss(log_s_BxT, jnp.zeros_like(log_s_BxT), advantages_B, eps_low, eps_high)


def cispo_loss(logp_BxT: jax.Array, old_logp_BxT: jax.Array, advantages_B: jax.Array, mask_BxT: jax.Array,
               eps_low: float = 1.0, eps_high: float = 5.0) -> tuple[jax.Array, Info]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): −sg(clip(ρ_t, 1−ε_low, 1+ε_high))·A·log π_θ per token, so
    every token keeps its gradient; written −sg(ρ̂)·A·π/sg(π): the same gradient, value −ρ̂·A."""
    del mask_BxT
    ratio_BxT = jnp.exp(_log_ratio(logp_BxT, old_logp_BxT))
    weight_BxT = jax.lax.stop_gradient(jnp.clip(ratio_BxT, 1.0 - eps_low, 1.0 + eps_high))
    logp_BxT = logp_BxT.astype(jnp.float32)
    score_BxT = jnp.exp(logp_BxT - jax.lax.stop_gradient(logp_BxT))  # value 1, gradient ∇log π
    loss_BxT = -advantages_B.astype(jnp.float32)[:, None] * weight_BxT * score_BxT
    info = {"clip_low": (ratio_BxT < 1.0 - eps_low).astype(jnp.float32),
            "clip_high": (ratio_BxT > 1.0 + eps_high).astype(jnp.float32), "ratio": ratio_BxT}
    return loss_BxT, info


def gmpo_loss(logp_BxT: jax.Array, old_logp_BxT: jax.Array, advantages_B: jax.Array, mask_BxT: jax.Array,
              eps_low: float = 0.4, eps_high: float = 0.4) -> tuple[jax.Array, Info]:
    """GMPO (arXiv 2507.20673): the geometric mean of the token ratios, clipped per token in log space,
    −A_i·exp(mean_t sgn(A_i)·min(sgn(A_i)·log ρ_t, sgn(A_i)·clip(log ρ_t, −ε_low, ε_high))) on each token
    of sequence i (paper: ε 0.4 / 0.4)."""
    log_ratio_BxT = _log_ratio(logp_BxT, old_logp_BxT)
    adv_Bx1 = advantages_B.astype(jnp.float32)[:, None]
    sign_Bx1 = jnp.sign(adv_Bx1)
    clipped_BxT = jnp.clip(log_ratio_BxT, -eps_low, eps_high)
    kept_BxT = sign_Bx1 * jnp.minimum(sign_Bx1 * log_ratio_BxT, sign_Bx1 * clipped_BxT)
    ratio_Bx1 = jnp.exp(_seq_mean(kept_BxT, mask_BxT))
    loss_BxT = jnp.broadcast_to(-adv_Bx1 * ratio_Bx1, logp_BxT.shape)
    info = {"clip_low": ((sign_Bx1 < 0) & (log_ratio_BxT < -eps_low)).astype(jnp.float32),
            "clip_high": ((sign_Bx1 > 0) & (log_ratio_BxT > eps_high)).astype(jnp.float32),
            "ratio": jnp.broadcast_to(jnp.exp(_seq_mean(log_ratio_BxT, mask_BxT)), logp_BxT.shape)}
    return loss_BxT, info


def sapo_loss(logp_BxT: jax.Array, old_logp_BxT: jax.Array, advantages_B: jax.Array, mask_BxT: jax.Array,
              tau_pos: float = 1.0, tau_neg: float = 1.05) -> tuple[jax.Array, Info]:
    """SAPO (arXiv 2511.20347): −f(ρ_t)·A with the soft gate f(ρ) = σ(τ·(ρ − 1))·4/τ in place of the hard
    clip, τ = τ_pos where A > 0 else τ_neg; f'(1) = 1 (on-policy: the plain policy gradient), and
    the gradient fades smoothly as ρ leaves 1 (paper: τ_pos 1.0, τ_neg 1.05)."""
    del mask_BxT
    ratio_BxT = jnp.exp(_log_ratio(logp_BxT, old_logp_BxT))
    adv_Bx1 = advantages_B.astype(jnp.float32)[:, None]
    tau_Bx1 = jnp.where(adv_Bx1 > 0, tau_pos, tau_neg)
    gate_BxT = jax.nn.sigmoid(tau_Bx1 * (ratio_BxT - 1.0)) * (4.0 / tau_Bx1)
    return -adv_Bx1 * gate_BxT, {"ratio": ratio_BxT}


def configured_policy_loss(cfg: GRPOConfig) -> PolicyLossFn:
    """The policy loss `cfg.policy_loss` names, with its hyperparameters from `cfg`."""
    name = cfg.policy_loss
    if name == "ppo-clip":
        return lambda logp, old, adv, mask: clipped_policy_loss(logp, old, adv, cfg.eps_low, cfg.eps_high,
                                                                 cfg.dual_clip)
    if name in ("gspo", "gspo-token"):
        fn = gspo_loss if name == "gspo" else gspo_token_loss
        return functools.partial(fn, eps_low=cfg.gspo_eps_low, eps_high=cfg.gspo_eps_high)
    if name == "cispo":
        return functools.partial(cispo_loss, eps_low=cfg.cispo_eps_low, eps_high=cfg.cispo_eps_high)
    if name == "gmpo":
        return functools.partial(gmpo_loss, eps_low=cfg.gmpo_eps_low, eps_high=cfg.gmpo_eps_high)
    if name == "sapo":
        return functools.partial(sapo_loss, tau_pos=cfg.sapo_tau_pos, tau_neg=cfg.sapo_tau_neg)
    raise ValueError(f"policy_loss {name!r} is not one of {POLICY_LOSSES}")


# ------------------------------------------------------------------------------ entropy: Clip-Cov, KL-Cov
def token_covariance(logp_BxT: jax.Array, advantages_B: jax.Array, mask_BxT: jax.Array) -> jax.Array:
    """Per-token centred covariance (log π_t − mean log π)·(A_t − mean A) over the batch's real tokens
    (arXiv 2505.22617, Clip-Cov / KL-Cov); no gradient (it only selects tokens)."""
    mask_BxT = mask_BxT.astype(jnp.float32)
    count = jnp.maximum(mask_BxT.sum(), 1.0)
    logp_BxT = jax.lax.stop_gradient(logp_BxT).astype(jnp.float32)
    adv_BxT = jnp.broadcast_to(advantages_B.astype(jnp.float32)[:, None], logp_BxT.shape)
    mean_logp = (logp_BxT * mask_BxT).sum() / count
    mean_adv = (adv_BxT * mask_BxT).sum() / count
    return (logp_BxT - mean_logp) * (adv_BxT - mean_adv)


def _largest(score_BxT: jax.Array, eligible_BxT: jax.Array, count: jax.Array) -> jax.Array:
    """The `count` (may be traced) eligible tokens with the largest score, as a bool mask."""
    flat = jnp.where(eligible_BxT, score_BxT, -jnp.inf).reshape(-1)
    rank = jnp.argsort(jnp.argsort(-flat))  # 0: the largest
    return (rank < count).reshape(score_BxT.shape) & eligible_BxT


def _how_many(fraction: float, mask_BxT: jax.Array) -> jax.Array:
    """max(1, ⌊fraction · real tokens⌋)."""
    return jnp.maximum(jnp.floor(fraction * (mask_BxT > 0).sum()), 1.0)


def clip_cov(pg_BxT: jax.Array, cov_BxT: jax.Array, mask_BxT: jax.Array, rng: jax.Array, fraction: float = 2e-4,
             low: float = 1.0, high: float = 5.0) -> tuple[jax.Array, Info]:
    """Clip-Cov (arXiv 2505.22617): stop the gradient of max(1, ⌊fraction·N⌋) tokens drawn at random among
    those with covariance in (low, high) (paper: r 2e-4, ω 1 / 5); their loss value is kept."""
    candidates_BxT = (mask_BxT > 0) & (cov_BxT > low) & (cov_BxT < high)
    chosen_BxT = _largest(jax.random.uniform(rng, cov_BxT.shape), candidates_BxT, _how_many(fraction, mask_BxT))
    return jnp.where(chosen_BxT, jax.lax.stop_gradient(pg_BxT), pg_BxT), {"clip_cov": chosen_BxT.astype(jnp.float32)}


def kl_cov(pg_BxT: jax.Array, cov_BxT: jax.Array, logp_BxT: jax.Array, old_logp_BxT: jax.Array,
           mask_BxT: jax.Array, fraction: float = 2e-3, coef: float = 1.0) -> tuple[jax.Array, Info]:
    """KL-Cov (arXiv 2505.22617): add coef·|log π_θ − log π_old| (the authors' per-token KL) to the
    max(1, ⌊fraction·N⌋) tokens of largest covariance (paper: k 2e-3 for 7B, β 1)."""
    chosen_BxT = _largest(cov_BxT, mask_BxT > 0, _how_many(fraction, mask_BxT))
    kl_BxT = jnp.abs((logp_BxT - old_logp_BxT).astype(jnp.float32))
    return pg_BxT + jnp.where(chosen_BxT, coef * kl_BxT, 0.0), {"kl_cov": chosen_BxT.astype(jnp.float32)}


def configured_cov_penalty(cfg: GRPOConfig, rng: jax.Array) -> TokenPenaltyFn | None:
    """`cfg.cov_mode`'s change to the policy term (None for "none"); covariances over the tokens it is given."""
    if cfg.cov_mode == "none":
        return None
    if cfg.cov_mode not in COV_MODES:
        raise ValueError(f"cov_mode {cfg.cov_mode!r} is not one of {COV_MODES}")

    def penalty(pg_BxT, logp_BxT, old_logp_BxT, advantages_B, mask_BxT):
        cov_BxT = token_covariance(logp_BxT, advantages_B, mask_BxT)
        if cfg.cov_mode == "clip-cov":
            return clip_cov(pg_BxT, cov_BxT, mask_BxT, rng, cfg.clip_cov_fraction, cfg.clip_cov_low, cfg.clip_cov_high)
        return kl_cov(pg_BxT, cov_BxT, logp_BxT, old_logp_BxT, mask_BxT, cfg.kl_cov_fraction, cfg.kl_cov_coef)

    return penalty


# ---------------------------------------------------------------------------------- rollout correction
def rollout_is_weights(old_logp_BxT: jax.Array, sampler_logp_BxT: jax.Array, mask_BxT: jax.Array,
                       mode: RolloutIS, low: float = 0.5, high: float = 2.0) -> tuple[jax.Array, jax.Array]:
    """(weights_BxT, keep_BxT): importance weights w = π_trainer/π_sampler that correct the sampler–trainer
    mismatch (no gradient), per token or per sequence (w_i = Π_t w_t over the row's real tokens).

    "tis-*": truncated IS, w clamped at `high` (Yao et al. 2025, "Your efficient RL framework secretly
    brings you off-policy RL training"); "mis-*": masked IS, tokens (or whole sequences) with w outside
    [low, high] leave the loss, `keep` = 0, numerator and denominator (Liu et al. 2025, "When speed
    kills stability"). "none": weights 1, keep 1.
    """
    log_w_BxT = _log_ratio(old_logp_BxT, sampler_logp_BxT)
    ones_BxT = jnp.ones(log_w_BxT.shape, jnp.float32)
    if mode == "none":
        return ones_BxT, ones_BxT
    if mode.endswith("-seq"):
        mask_f_BxT = mask_BxT.astype(jnp.float32)
        log_w_Bx1 = jnp.clip((log_w_BxT * mask_f_BxT).sum(axis=1, keepdims=True), -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        log_w_BxT = jnp.broadcast_to(log_w_Bx1, log_w_BxT.shape)
    w_BxT = jnp.exp(log_w_BxT)
    if mode.startswith("tis-"):
        return jax.lax.stop_gradient(jnp.minimum(w_BxT, high)), ones_BxT
    if mode.startswith("mis-"):
        keep_BxT = ((w_BxT >= low) & (w_BxT <= high)).astype(jnp.float32)
        return jax.lax.stop_gradient(w_BxT * keep_BxT), keep_BxT
    raise ValueError(f"rollout_is {mode!r} is not one of {ROLLOUT_IS_MODES}")


def rollout_mismatch(sampler_logp_BxT: jax.Array, trainer_logp_BxT: jax.Array, mask_BxT: jax.Array
                     ) -> dict[str, jax.Array]:
    """Sampler–trainer mismatch over the real tokens: mean |log π_sampler − log π_trainer| and the k3
    estimate of KL(π_sampler ‖ π_trainer) from the sampled tokens."""
    mask_BxT = mask_BxT.astype(jnp.float32)
    count = jnp.maximum(mask_BxT.sum(), 1.0)
    diff_BxT = jnp.abs((sampler_logp_BxT - trainer_logp_BxT).astype(jnp.float32))
    k3_BxT = kl_penalty(sampler_logp_BxT, trainer_logp_BxT, "k3")
    return {"rollout/logp_abs_diff": (diff_BxT * mask_BxT).sum() / count,
            "rollout/kl_k3": (k3_BxT * mask_BxT).sum() / count}
