"""The jitted SFT update: masked next-token cross-entropy on packed rows, optional logit distillation.

    step = make_sft_step(model, tx, chunk=256, grad_accum=4)
    state, metrics = step(state, batch)                       # batch: a PackedBatch; state is donated

    step = make_distill_step(student, teacher, tx, alpha=0.5, temperature=2.0)
    state, metrics = step(state, batch, teacher_params)       # teacher params are not donated

Used for DeepSeek-R1's cold-start SFT, its rejection-sampling SFT and the
distillation of R1 into small dense models (arXiv 2501.12948, §2.3, §2.4); the
paper distils by plain SFT (alpha = 0). The loss is the mean over all loss tokens
of the batch; with `grad_accum` micro-batches each micro-batch's token sum is
divided by the whole batch's token count, so accumulating is exact. The LM head
runs `chunk` positions at a time (rematerialized when the row has more than one
chunk), so [B, L, V] logits never exist whole, for the student or the teacher;
chunk >= L computes them whole and skips the head's recompute. `post_update(state, metrics)` runs
after the optimizer update, as in `r1jax.rl.grpo_step`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from r1jax import lora
from r1jax.data.packing import PackedBatch
from r1jax.model import Transformer
from r1jax.train.logprobs import balance_experts, hidden_with_aux, scan_chunks, target_logp
from r1jax.train.optim import TrainState, apply_gradients

Metrics = dict[str, jax.Array]


def next_token_targets(batch: PackedBatch) -> tuple[jax.Array, jax.Array]:
    """(targets_BxL, weights_BxL): slot t predicts token t+1 of its own segment where that token is a target."""
    tokens_BxL, seg_BxL = jnp.asarray(batch.tokens_BxL), jnp.asarray(batch.segment_ids_BxL)
    same_Bx1L = (seg_BxL[:, 1:] == seg_BxL[:, :-1]) & (seg_BxL[:, 1:] != 0)
    weights_Bx1L = jnp.asarray(batch.loss_mask_BxL, jnp.float32)[:, 1:] * same_Bx1L
    pad_Bx1 = jnp.zeros((tokens_BxL.shape[0], 1), jnp.int32)
    targets_BxL = jnp.concatenate([tokens_BxL[:, 1:], pad_Bx1], axis=1)
    weights_BxL = jnp.concatenate([weights_Bx1L, pad_Bx1.astype(jnp.float32)], axis=1)
    return targets_BxL, weights_BxL


def kd_kl(student_logits_XxV: jax.Array, teacher_logits_XxV: jax.Array, temperature: float) -> jax.Array:
    """KL(softmax(teacher/τ) ‖ softmax(student/τ)) over the last axis (Hinton et al. 2015)."""
    logq_XxV = jax.nn.log_softmax(teacher_logits_XxV.astype(jnp.float32) / temperature, axis=-1)
    logp_XxV = jax.nn.log_softmax(student_logits_XxV.astype(jnp.float32) / temperature, axis=-1)
    return (jnp.exp(logq_XxV) * (logq_XxV - logp_XxV)).sum(-1)


def _hidden(model: Transformer, params, batch: PackedBatch, dropout_key: jax.Array | None = None
            ) -> tuple[jax.Array, jax.Array, dict]:
    seg_BxL = batch.segment_ids_BxL
    return hidden_with_aux(model, params, batch.tokens_BxL, batch.positions_BxL, seg_BxL != 0, seg_BxL, dropout_key)


def token_losses(model: Transformer, params, batch: PackedBatch, chunk: int, teacher: Transformer | None = None,
                 teacher_params=None, temperature: float = 1.0, dropout_key: jax.Array | None = None
                 ) -> tuple[jax.Array, ...]:
    """Per-slot (ce_BxL, correct_BxL, kl_BxL, weights_BxL), MoE (aux loss, stats); kl is zeros without a teacher.

    `dropout_key`: the student's LoRA dropout rng (a training pass, r1jax.lora.dropout_key); the teacher runs without.
    """
    targets_BxL, weights_BxL = next_token_targets(batch)
    hidden_BxLxE, aux, stats = _hidden(model, params, batch, dropout_key)
    t_hidden_BxLxE = (jnp.zeros(hidden_BxLxE.shape[:2] + (1,), hidden_BxLxE.dtype) if teacher is None
                      else jax.lax.stop_gradient(_hidden(teacher, teacher_params, batch)[0]))

    def one_chunk(hidden_BxCxE, t_hidden_BxCxE, targets_BxC):
        logits_BxCxV = model.apply({"params": params}, hidden_BxCxE, method="logits").astype(jnp.float32)
        logp_BxC, _, is_argmax_BxC = target_logp(logits_BxCxV, targets_BxC)
        correct_BxC = is_argmax_BxC.astype(jnp.float32)
        if teacher is None:
            return -logp_BxC, correct_BxC, jnp.zeros_like(logp_BxC)
        t_logits_BxCxV = teacher.apply({"params": teacher_params}, t_hidden_BxCxE, method="logits")
        return -logp_BxC, correct_BxC, kd_kl(logits_BxCxV, jax.lax.stop_gradient(t_logits_BxCxV), temperature)

    ce_BxL, correct_BxL, kl_BxL = scan_chunks(one_chunk, chunk, hidden_BxLxE, t_hidden_BxLxE, targets_BxL)
    return ce_BxL, correct_BxL, kl_BxL, weights_BxL, (aux, stats)


def _rows(batch: PackedBatch, start: jax.Array, size: int) -> PackedBatch:
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, size, axis=0), batch)


def _build_step(model: Transformer, tx: optax.GradientTransformation, chunk: int, grad_accum: int,
                post_update: Callable[[TrainState, Metrics], TrainState] | None,
                teacher: Transformer | None, alpha: float, temperature: float, seed: int = 0):
    """step(state, batch, teacher_params) → (state, metrics), not yet jitted.

    With LoRA dropout (model.cfg.lora.dropout > 0) micro-batch i of update `state.step` draws its masks from
    (seed, state.step, i): reproducible, and the same after a resume.
    """
    if grad_accum < 1:
        raise ValueError(f"grad_accum={grad_accum} must be >= 1")

    def loss_fn(params, mb: PackedBatch, teacher_params, total, frozen, dropout_key):
        full = params if frozen is None else lora.merge(frozen, params)  # LoRA: gradients reach the adapters only
        ce_BxL, correct_BxL, kl_BxL, w_BxL, (aux, stats) = token_losses(model, full, mb, chunk, teacher,
                                                                        teacher_params, temperature, dropout_key)
        per_token_BxL = ce_BxL if teacher is None else (1 - alpha) * ce_BxL + alpha * temperature ** 2 * kl_BxL
        sums = {"loss": (per_token_BxL * w_BxL).sum(), "ce": (ce_BxL * w_BxL).sum(),
                "accuracy": (correct_BxL * w_BxL).sum()}
        if teacher is not None:
            sums["kl"] = (kl_BxL * w_BxL).sum()
        if "expert_load" in stats:  # MoE: balance loss per micro-batch (scaled to a sum), loads for the bias
            sums["moe/aux_loss"] = aux * total / grad_accum
            sums["moe/expert_load"] = jax.lax.stop_gradient(stats["expert_load"]) * total
            sums["loss"] = sums["loss"] + sums["moe/aux_loss"]
        return sums["loss"] / total, sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch: PackedBatch, teacher_params, frozen=None):
        rows = batch.tokens_BxL.shape[0]
        if rows % grad_accum:
            raise ValueError(f"batch of {rows} rows does not split into {grad_accum} micro-batches")
        micro = rows // grad_accum
        tokens = next_token_targets(batch)[1].sum()
        total = jnp.maximum(tokens, 1.0)

        def grads_and_sums(i):
            dropout_key = lora.dropout_key(model.cfg, seed, state.step, i)
            (_, sums), grads = grad_fn(state.params, _rows(batch, i * micro, micro), teacher_params, total, frozen,
                                       dropout_key)
            return grads, sums

        if grad_accum == 1:
            grads, sums = grads_and_sums(0)
        else:
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grads_and_sums, 0))
            (grads, sums), _ = jax.lax.scan(lambda acc, i: (jax.tree.map(jnp.add, acc, grads_and_sums(i)), None),
                                            zeros, jnp.arange(grad_accum))
        metrics = {k: v / total for k, v in sums.items()}
        state, opt_metrics = apply_gradients(state, grads, metrics["loss"], tx)
        if frozen is None:  # with LoRA the router bias is part of the frozen base: it stays
            params, metrics = balance_experts(model, state.params, metrics, applied=opt_metrics["finite"] > 0)
            state = state.replace(params=params)
        else:
            metrics.pop("moe/expert_load", None)
        metrics = {**metrics, **opt_metrics, "skipped": 1.0 - opt_metrics["finite"], "tokens": tokens,
                   "input_tokens": (batch.segment_ids_BxL != 0).sum().astype(jnp.float32)}
        if post_update is not None:
            state = post_update(state, metrics)
        return state, metrics

    return step


def make_sft_step(model: Transformer, tx: optax.GradientTransformation, chunk: int = 256,
                  post_update: Callable[[TrainState, Metrics], TrainState] | None = None, *, grad_accum: int = 1,
                  state_sharding: Any = None, seed: int = 0
                  ) -> Callable[[TrainState, PackedBatch], tuple[TrainState, Metrics]]:
    """Jitted (state, batch, frozen=None) SFT update (state donated); metrics: loss, ce, accuracy, tokens, input_tokens,
    grad_norm, skipped. With LoRA the state holds the adapters and `frozen` the base params (r1jax.lora).

    `state_sharding` (r1jax.sharding.tree_shardings of the state) pins the new state's layout to the old one's;
    `seed` (with the optimizer step) draws the LoRA dropout when model.cfg.lora.dropout > 0.
    """
    step = _build_step(model, tx, chunk, grad_accum, post_update, None, 0.0, 1.0, seed)
    return jax.jit(lambda state, batch, frozen=None: step(state, batch, None, frozen), donate_argnums=(0,),
                   out_shardings=(state_sharding, None))


def make_distill_step(student: Transformer, teacher: Transformer, tx: optax.GradientTransformation,
                      alpha: float = 0.5, temperature: float = 1.0, chunk: int = 256,
                      post_update: Callable[[TrainState, Metrics], TrainState] | None = None, *, grad_accum: int = 1,
                      state_sharding: Any = None, seed: int = 0) -> Callable[..., tuple[TrainState, Metrics]]:
    """Jitted (state, batch, teacher_params) update on (1−α)·CE + α·τ²·KL(teacher_τ ‖ student_τ).

    Logit distillation with temperature τ (Hinton et al. 2015, arXiv 1503.02531):
    the τ² keeps the soft term's gradient scale independent of τ. The teacher may be a
    different (larger) ModelConfig with the same vocabulary; its forward pass runs
    without gradient, its logits chunk by chunk beside the student's.
    """
    if student.cfg.vocab_size != teacher.cfg.vocab_size:
        raise ValueError(f"student vocab {student.cfg.vocab_size} != teacher vocab {teacher.cfg.vocab_size}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0")
    step = _build_step(student, tx, chunk, grad_accum, post_update, teacher, alpha, temperature, seed)
    return jax.jit(step, donate_argnums=(0,), out_shardings=(state_sharding, None))


def make_eval_loss(model: Transformer, chunk: int = 256) -> Callable[..., Metrics]:
    """Jitted (params, batch) → loss and accuracy (means over loss tokens), plus sums to pool batches."""

    @jax.jit
    def eval_loss(params, batch: PackedBatch) -> Metrics:
        ce_BxL, correct_BxL, _, w_BxL, _ = token_losses(model, params, batch, chunk)
        tokens, loss_sum, correct_sum = w_BxL.sum(), (ce_BxL * w_BxL).sum(), (correct_BxL * w_BxL).sum()
        total = jnp.maximum(tokens, 1.0)
        return {"loss": loss_sum / total, "accuracy": correct_sum / total, "tokens": tokens,
                "loss_sum": loss_sum, "correct_sum": correct_sum}

    return eval_loss


def pooled_eval(eval_loss: Callable[..., Metrics], params, batches: Iterable[PackedBatch]) -> dict[str, float]:
    """Loss and accuracy over every loss token of `batches` (token-weighted, not a mean of batch means)."""
    sums = {"loss_sum": 0.0, "correct_sum": 0.0, "tokens": 0.0}
    for batch in batches:
        out = eval_loss(params, batch)
        sums = {k: v + out[k] for k, v in sums.items()}  # stays on device until the end
    tokens = float(sums["tokens"])
    return {"loss": float(sums["loss_sum"]) / max(tokens, 1.0),
            "accuracy": float(sums["correct_sum"]) / max(tokens, 1.0), "tokens": tokens}
