"""The jitted GRPO update: μ epochs × minibatches of clipped-ratio updates against fixed old log-probs.

    step = make_grpo_step(model, tx, grpo_cfg)
    state, metrics = step(state, batch)          # state is donated

`batch` is a `GRPOBatch` of B = prompts·G rows. Rows are dealt into
`num_minibatches` strided minibatches (minibatch k holds rows k, k + M, k + 2M, …;
the host shuffles rows beforehand), and each minibatch's gradient is the mean over
`grad_accum` micro-batches dealt the same way. Dealt, not cut: with the batch split
over the devices, each device holds its share of every minibatch, so no update moves
rows between devices. Metrics
are means over all updates of the call, plus `skipped` (non-finite updates).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from r1jax.config import GRPOConfig
from r1jax.model import Transformer
from r1jax.rl.grpo import aggregate, grpo_objective
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


def make_grpo_step(model: Transformer, tx: optax.GradientTransformation, cfg: GRPOConfig,
                   post_update: Callable[[TrainState, dict], TrainState] | None = None, state_sharding: Any = None
                   ) -> Callable[[TrainState, GRPOBatch], tuple[TrainState, dict[str, jax.Array]]]:
    """Build the jitted update; `post_update(state, metrics)` runs after each optimizer update
    (the place for state outside the gradient, such as the MoE balancing bias); `state_sharding`
    (r1jax.sharding.tree_shardings of the state) pins the new state's layout to the old one's."""

    def loss_fn(params, mb: GRPOBatch, token_count: jax.Array):
        logp_BxT, ent_BxT, aux, stats = completion_logps_aux(
            model, params, mb.prompt_BxP, mb.prompt_mask_BxP, mb.completion_BxT, mb.completion_mask_BxT,
            cfg.logprob_chunk, with_entropy=True)
        loss, metrics = grpo_objective(
            logp_BxT, mb.old_logps_BxT, mb.ref_logps_BxT if cfg.kl_beta else None, mb.advantages_B,
            mb.loss_mask_BxT, eps_low=cfg.eps_low, eps_high=cfg.eps_high, dual_clip=cfg.dual_clip,
            kl_beta=cfg.kl_beta, kl_estimator=cfg.kl_estimator, aggregation=cfg.aggregation,
            max_len=cfg.sampling.max_new_tokens, token_count=token_count)
        metrics["entropy"] = aggregate(jax.lax.stop_gradient(ent_BxT), mb.loss_mask_BxT, "token-mean",
                                       token_count=token_count)
        if "expert_load" in stats:  # MoE: balance losses join the objective, loads feed the bias update
            loss = loss + aux
            metrics["moe/aux_loss"] = aux
            metrics["moe/expert_load"] = jax.lax.stop_gradient(stats["expert_load"]) * cfg.grad_accum
        metrics["loss"] = loss
        return loss, metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def minibatch_grads(params, mb: GRPOBatch):
        # token means over the whole minibatch: each micro-batch divides by its share of the
        # minibatch's tokens, so micro-batches with few tokens are not up-weighted (DAPO)
        token_count = jnp.maximum(mb.loss_mask_BxT.astype(jnp.float32).sum(), 1.0) / cfg.grad_accum

        def accumulate(carry, i):
            return jax.tree.map(jnp.add, carry, grads_and_metrics(i)), None

        def grads_and_metrics(i):
            (_, metrics), grads = grad_fn(params, _deal(mb, i, cfg.grad_accum), token_count)
            return grads, metrics

        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grads_and_metrics, 0))
        (grads, metrics), _ = jax.lax.scan(accumulate, zeros, jnp.arange(cfg.grad_accum))
        return jax.tree.map(lambda x: x / cfg.grad_accum, (grads, metrics))

    def step(state: TrainState, batch: GRPOBatch):
        rows = batch.advantages_B.shape[0]
        if rows % (cfg.num_minibatches * cfg.grad_accum):
            raise ValueError(f"batch of {rows} rows does not split into {cfg.num_minibatches} minibatches "
                             f"× {cfg.grad_accum} micro-batches")
        updates = cfg.inner_epochs * cfg.num_minibatches

        def one_update(state, k):
            mb = _deal(batch, k % cfg.num_minibatches, cfg.num_minibatches)
            grads, metrics = minibatch_grads(state.params, mb)
            state, opt_metrics = apply_gradients(state, grads, metrics["loss"], tx)
            params, metrics = balance_experts(model, state.params, {**metrics, **opt_metrics},
                                              applied=opt_metrics["finite"] > 0)
            state = state.replace(params=params)
            if post_update is not None:
                state = post_update(state, metrics)
            return state, metrics

        state, metrics = jax.lax.scan(one_update, state, jnp.arange(updates))
        out = jax.tree.map(jnp.mean, metrics)
        out["skipped"] = updates - metrics["finite"].sum()
        out["updates"] = jnp.asarray(updates, jnp.float32)
        return state, out

    return jax.jit(step, donate_argnums=(0,), out_shardings=(state_sharding, None))

