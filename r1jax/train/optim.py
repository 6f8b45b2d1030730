"""Train state and optimizer: AdamW, warmup + cosine, global-norm clipping, non-finite steps skipped."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from r1jax.config import OptimizerConfig
from r1jax.model import router_bias_mask


@flax.struct.dataclass
class TrainState:
    """Everything a jitted step carries: params, optimizer state, and state outside the gradient."""

    step: jax.Array  # int32 scalar: optimizer updates applied
    params: Any
    opt_state: Any
    skipped: jax.Array  # int32 scalar: updates skipped for a non-finite loss or gradient


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Linear warmup from 0, then cosine decay to end_lr_ratio·lr over decay_steps (or constant)."""
    if cfg.decay_steps is None:
        after = optax.constant_schedule(cfg.learning_rate)
    else:
        after = optax.cosine_decay_schedule(cfg.learning_rate, cfg.decay_steps, alpha=cfg.end_lr_ratio)
    if cfg.warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    # MoE balancing biases are not trained: no weight decay for them (their gradient is exactly 0)
    decay_mask = lambda params: jax.tree.map(lambda frozen: not frozen, router_bias_mask(params))  # noqa: E731
    adamw = optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.grad_clip is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)


def init_train_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      skipped=jnp.zeros((), jnp.int32))


def apply_gradients(state: TrainState, grads: Any, loss: jax.Array,
                    tx: optax.GradientTransformation) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update; a non-finite loss or gradient leaves params and optimizer untouched."""
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    safe_grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
    updates, opt_state = tx.update(safe_grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
    state = state.replace(params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
                          step=state.step + finite.astype(jnp.int32),
                          skipped=state.skipped + (~finite).astype(jnp.int32))
    return state, {"grad_norm": grad_norm, "finite": finite.astype(jnp.float32)}
