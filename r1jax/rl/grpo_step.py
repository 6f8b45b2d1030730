"""The jitted GRPO update: μ epochs × minibatches of clipped-ratio updates against fixed old log-probs.

    step = make_grpo_step(model, tx, grpo_cfg)   # or policy_loss=fn: a loss of your own
    state, metrics = step(state, batch, key)     # state is donated
    state, metrics = step(state, batch, key, frozen)   # LoRA: state holds the adapters, `frozen` the base

`batch` is a `GRPOBatch` of B = prompts·G rows. Rows are dealt into
`num_minibatches` strided minibatches (minibatch k holds rows k, k + M, k + 2M, …;
the host shuffles rows beforehand), and each minibatch's gradient is the mean over
`grad_accum` micro-batches dealt the same way. Dealt, not cut: with the batch split
over the devices, each device holds its share of every minibatch, so no update moves
rows between devices. Every inner epoch after the first deals a fresh permutation of
the rows drawn from (key, epoch) (`epoch_order`), so epochs see different minibatches;
the key also draws Clip-Cov's tokens and, with LoRAConfig.dropout > 0, the adapters' dropout in
the policy's forward passes (default: from the optimizer step). Metrics
are means over all updates of the call, plus `skipped` (non-finite updates), and the
sampler–trainer mismatch (`rollout/…`) when the batch carries the sampler's log-probs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from r1jax import lora
from r1jax.config import GRPOConfig
from r1jax.model import Transformer
from r1jax.rl.grpo import aggregate, grpo_objective
from r1jax.rl.objectives import (PolicyLossFn, configured_cov_penalty, configured_policy_loss, rollout_is_weights,
                                 rollout_mismatch)
from r1jax.train.logprobs import balance_experts, completion_logps, completion_logps_aux
from r1jax.train.optim import TrainState, apply_gradients


@flax.struct.dataclass
class GRPOBatch:
    """One rollout laid out for the update (B rows, P prompt slots left-padded, T completion slots)."""

    prompt_BxP: jax.Array  # int32
    prompt_mask_BxP: jax.Array  # bool
    completion_BxT: jax.Array  # int32, padded after the row's end
    completion_mask_BxT: jax.Array  # bool: real completion token (attention)
    loss_mask_BxT: jax.Array  # float: tokens that count in the loss (overlong masking zeroes rows)
    old_logps_BxT: jax.Array  # f32: log π_old of each token (sampler or recomputed)
    ref_logps_BxT: jax.Array  # f32: log π_ref of each token (zeros when kl_beta = 0)
    advantages_B: jax.Array  # f32
    sampler_logps_BxT: jax.Array | None = None  # f32: the sampler's own log-probs (rollout correction, mismatch)


def make_logps_fn(model: Transformer, chunk: int, row_parts: int = 1) -> Callable[..., jax.Array]:
    """Jitted log π(completion tokens) for given params, without gradients (old / reference policy).

    `row_parts` > 1 runs the rows in that many dealt parts one after another (as the update's
    micro-batches), so the activations and one chunk's logits exist for B / row_parts rows at a time.
    """

    def part_logps(params, part: GRPOBatch) -> jax.Array:
        out, _ = completion_logps(model, params, part.prompt_BxP, part.prompt_mask_BxP, part.completion_BxT,
                                  part.completion_mask_BxT, chunk)
        return jax.lax.stop_gradient(out)

    @jax.jit
    def logps(params, batch: GRPOBatch) -> jax.Array:
        rows = batch.advantages_B.shape[0]
        if row_parts == 1 or rows % row_parts:
            return part_logps(params, batch)
        out_PxNxT = jax.lax.map(lambda k: part_logps(params, _deal(batch, k, row_parts)), jnp.arange(row_parts))
        return out_PxNxT.swapaxes(0, 1).reshape(rows, -1)  # row i·parts + k was part k's row i

    return logps


def _deal(batch: GRPOBatch, k: jax.Array, parts: int) -> GRPOBatch:
    """Part k of `parts`: rows k, k + parts, k + 2·parts, … (a local slice on every device of a row-split batch)."""
    def take(x):
        x = x.reshape((x.shape[0] // parts, parts) + x.shape[1:])
        return jax.lax.dynamic_index_in_dim(x, k, axis=1, keepdims=False)
    return jax.tree.map(take, batch)


def epoch_order(key: jax.Array, epoch: jax.Array, rows: int) -> jax.Array:
    """Row order of inner epoch `epoch`: the batch's own for epoch 0 (the host shuffled it), then a fresh
    permutation drawn from (key, epoch), which the strided dealing splits into new minibatches."""
    return jnp.where(epoch == 0, jnp.arange(rows), jax.random.permutation(jax.random.fold_in(key, epoch), rows))


def make_grpo_step(model: Transformer, tx: optax.GradientTransformation, cfg: GRPOConfig,
                   post_update: Callable[[TrainState, dict], TrainState] | None = None, state_sharding: Any = None,
                   policy_loss: PolicyLossFn | None = None
                   ) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """Build the jitted update; `post_update(state, metrics)` runs after each optimizer update
    (the place for state outside the gradient, such as the MoE balancing bias); `state_sharding`
    (r1jax.sharding.tree_shardings of the state) pins the new state's layout to the old one's;
    `policy_loss` (r1jax.rl.objectives.PolicyLossFn) replaces the loss `cfg.policy_loss` names."""
    pg_loss = policy_loss or configured_policy_loss(cfg)

    def loss_fn(params, mb: GRPOBatch, token_count: jax.Array, rng: jax.Array, frozen):
        full = params if frozen is None else lora.merge(frozen, params)  # LoRA: gradients reach the adapters only
        logp_BxT, ent_BxT, aux, stats = completion_logps_aux(
            model, full, mb.prompt_BxP, mb.prompt_mask_BxP, mb.completion_BxT, mb.completion_mask_BxT,
            cfg.logprob_chunk, with_entropy=True, dropout_key=lora.dropout_key(model.cfg, rng))
        is_weights_BxT = None
        if cfg.rollout_is != "none":
            is_weights_BxT, _ = rollout_is_weights(mb.old_logps_BxT, mb.sampler_logps_BxT, mb.loss_mask_BxT,
                                                   cfg.rollout_is, cfg.rollout_is_low, cfg.rollout_is_high)
        loss, metrics = grpo_objective(
            logp_BxT, mb.old_logps_BxT, mb.ref_logps_BxT if cfg.kl_beta else None, mb.advantages_B,
            mb.loss_mask_BxT, kl_beta=cfg.kl_beta, kl_estimator=cfg.kl_estimator, aggregation=cfg.aggregation,
            max_len=cfg.sampling.max_new_tokens, token_count=token_count, policy_loss=pg_loss,
            is_weights_BxT=is_weights_BxT, entropy_BxT=ent_BxT, entropy_coef=cfg.entropy_coef,
            token_penalty=configured_cov_penalty(cfg, rng))
        metrics["entropy"] = aggregate(jax.lax.stop_gradient(ent_BxT), mb.loss_mask_BxT, "token-mean",
                                       token_count=token_count)
        if "expert_load" in stats:  # MoE: balance losses join the objective, loads feed the bias update
            loss = loss + aux
            metrics["moe/aux_loss"] = aux
            metrics["moe/expert_load"] = jax.lax.stop_gradient(stats["expert_load"]) * cfg.grad_accum
        metrics["loss"] = loss
        return loss, metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def minibatch_grads(params, mb: GRPOBatch, rng: jax.Array, frozen):
        # token means over the whole minibatch: each micro-batch divides by its share of the
        # minibatch's tokens, so micro-batches with few tokens are not up-weighted (DAPO)
        token_count = jnp.maximum(mb.loss_mask_BxT.astype(jnp.float32).sum(), 1.0) / cfg.grad_accum

        def accumulate(carry, i):
            return jax.tree.map(jnp.add, carry, grads_and_metrics(i)), None

        def grads_and_metrics(i):
            (_, metrics), grads = grad_fn(params, _deal(mb, i, cfg.grad_accum), token_count,
                                          jax.random.fold_in(rng, i), frozen)
            return grads, metrics

        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grads_and_metrics, 0))
        (grads, metrics), _ = jax.lax.scan(accumulate, zeros, jnp.arange(cfg.grad_accum))
        return jax.tree.map(lambda x: x / cfg.grad_accum, (grads, metrics))

    def step(state: TrainState, batch: GRPOBatch, key: jax.Array | None = None, frozen: Any = None):
        rows = batch.advantages_B.shape[0]
        if rows % (cfg.num_minibatches * cfg.grad_accum):
            raise ValueError(f"batch of {rows} rows does not split into {cfg.num_minibatches} minibatches "
                             f"× {cfg.grad_accum} micro-batches")
        if cfg.rollout_is != "none" and batch.sampler_logps_BxT is None:
            raise ValueError(f"rollout_is={cfg.rollout_is!r} needs the batch's sampler_logps_BxT")
        updates, mbs = cfg.inner_epochs * cfg.num_minibatches, cfg.num_minibatches
        key = jax.random.fold_in(jax.random.key(0), state.step) if key is None else key
        order_key, loss_key = jax.random.split(key)
        extra = {}
        if batch.sampler_logps_BxT is not None:
            extra = rollout_mismatch(batch.sampler_logps_BxT, batch.old_logps_BxT, batch.completion_mask_BxT)
        if cfg.rollout_is != "none":  # MIS drops tokens from the loss mask: out of every token count too
            weights_BxT, keep_BxT = rollout_is_weights(batch.old_logps_BxT, batch.sampler_logps_BxT,
                                                       batch.loss_mask_BxT, cfg.rollout_is, cfg.rollout_is_low,
                                                       cfg.rollout_is_high)
            kept_BxT = batch.loss_mask_BxT * keep_BxT
            extra["rollout/is_weight_mean"] = aggregate(weights_BxT, kept_BxT, "token-mean")
            extra["rollout/is_dropped_frac"] = 1.0 - kept_BxT.sum() / jnp.maximum(batch.loss_mask_BxT.sum(), 1.0)
            batch = batch.replace(loss_mask_BxT=kept_BxT)

        def one_update(state, mb: GRPOBatch, rng: jax.Array):
            grads, metrics = minibatch_grads(state.params, mb, rng, frozen)
            state, opt_metrics = apply_gradients(state, grads, metrics["loss"], tx)
            if frozen is None:  # with LoRA the router bias is part of the frozen base: it stays
                params, metrics = balance_experts(model, state.params, {**metrics, **opt_metrics},
                                                  applied=opt_metrics["finite"] > 0)
                state = state.replace(params=params)
            else:
                metrics = {**{k: v for k, v in metrics.items() if k != "moe/expert_load"}, **opt_metrics}
            if post_update is not None:
                state = post_update(state, metrics)
            return state, metrics

        def one_epoch(state, epoch_batch: GRPOBatch, epoch):
            def body(state, k):
                rng = jax.random.fold_in(loss_key, epoch * mbs + k)
                return one_update(state, _deal(epoch_batch, k, mbs), rng)
            return jax.lax.scan(body, state, jnp.arange(mbs))

        if cfg.inner_epochs == 1:
            state, metrics = one_epoch(state, batch, 0)
        else:
            def shuffled_epoch(state, epoch):
                order_B = epoch_order(order_key, epoch, rows)
                return one_epoch(state, jax.tree.map(lambda x: jnp.take(x, order_B, axis=0), batch), epoch)
            state, metrics = jax.lax.scan(shuffled_epoch, state, jnp.arange(cfg.inner_epochs))
        out = jax.tree.map(jnp.mean, metrics)
        out["skipped"] = updates - metrics["finite"].sum()
        out["updates"] = jnp.asarray(updates, jnp.float32)
        out.update(extra)
        return state, out

    return jax.jit(step, donate_argnums=(0,), out_shardings=(state_sharding, None))

