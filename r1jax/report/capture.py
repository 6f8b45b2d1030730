"""The RL phase's hook: a GRPO step's rollouts (kept by the trainer) as a saved `RolloutRecord`.

    recorder = RolloutRecorder(workdir, RolloutLog(every=5), "rl", steps=40, start_step=env.global_step)
    trainer.step(...); recorder.maybe_save(trainer, env.global_step, phase_step)

Every process computes (the extra forward pass is one program over the mesh); process 0 writes.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import sharding
from r1jax.report.rollouts import RolloutLog, RolloutRecord, drop_from, save_record, token_pieces
from r1jax.train.logprobs import completion_logps

_MAX_LOG_RATIO = 10.0  # ratios are stored as float16: e^±10 stays finite


def make_token_stats(model: Any, chunk: int) -> Callable[..., dict[str, jax.Array]]:
    """Jitted (params, batch, rows_R) → log π and entropy of the rows' tokens, with their old/ref log-probs."""

    @jax.jit
    def stats(params, batch, rows_R):
        part = jax.tree.map(lambda x: jnp.take(x, rows_R, axis=0), batch)
        logp_RxT, ent_RxT = completion_logps(model, params, part.prompt_BxP, part.prompt_mask_BxP,
                                             part.completion_BxT, part.completion_mask_BxT, chunk, with_entropy=True)
        return {"new_logp": logp_RxT, "entropy": ent_RxT, "old_logp": part.old_logps_BxT,
                "ref_logp": part.ref_logps_BxT, "advantages": part.advantages_B}

    return stats


def capture(trainer: Any, phase: str, phase_step: int, step: int, max_rows: int,
            stats: Callable[..., dict[str, jax.Array]]) -> RolloutRecord:
    """The record of the trainer's last step (`last_rollout`, `last_batch`, `last_order`), first groups up
    to `max_rows` rows; per-token stats run in parts of the update's micro-batch size (which fits)."""
    r, batch, order = trainer.last_rollout, trainer.last_batch, np.asarray(trainer.last_order)
    cfg, g = trainer.cfg, trainer.cfg.group_size
    groups = max(1, min(len(r.problems), max_rows // g))
    n, rows_total = groups * g, len(order)
    where_B = np.argsort(order)  # rollout row i is batch row where_B[i] (the batch was shuffled by `order`)
    part = max(1, rows_total // (cfg.num_minibatches * cfg.grad_accum))
    idx = where_B[:n]
    idx = np.concatenate([idx, np.repeat(idx[-1:], -n % part)]).astype(np.int32)
    outs = [sharding.to_host(stats(trainer.params, batch, jnp.asarray(idx[k:k + part])))
            for k in range(0, len(idx), part)]
    out = {k: np.concatenate([o[k] for o in outs])[:n].astype(np.float32) for k in outs[0]}

    lengths = np.asarray(r.lengths_B[:n], np.int32)
    mask_NxT = np.arange(r.completion_BxT.shape[1])[None] < lengths[:, None]
    log_ratio = np.clip(out["new_logp"] - out["old_logp"], -_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    tokens = {"logp": np.asarray(r.logps_BxT[:n], np.float32), "old_logp": out["old_logp"],
              "ratio": np.exp(log_ratio), "entropy": out["entropy"]}
    if cfg.kl_beta:
        tokens["ref_logp"] = out["ref_logp"]
    tokens = {k: np.where(mask_NxT, v, 0.0) for k, v in tokens.items()}
    token_text, ends = [], np.zeros(mask_NxT.shape, np.int32)
    for i in range(n):
        text, ends_i = token_pieces(trainer.tok.decode, r.completion_BxT[i, :lengths[i]])
        token_text.append(text)
        ends[i] = len(text)
        ends[i, :lengths[i]] = ends_i
    names = list(r.values)
    return RolloutRecord(
        phase=phase, phase_step=phase_step, step=step, group_size=g,
        prompts=[trainer.template.render(p.question) for p in r.problems[:groups]],
        answers=[str(p.columns().get("answer", "")) for p in r.problems[:groups]],  # "": none (code tasks)
        texts=list(r.texts[:n]), token_text=token_text,
        piece_end_NxT=ends, tokens_NxT=np.asarray(r.completion_BxT[:n], np.int32), lengths_N=lengths,
        truncated_N=np.asarray(r.truncated_B[:n], bool), rewards_N=np.asarray(r.rewards_B[:n], np.float32),
        reward_names=names, values_KxN=np.stack([np.asarray(r.values[k][:n], np.float32) for k in names]),
        weights_K=np.asarray([float(trainer.rewards[k].weight) for k in names], np.float32),
        advantages_N=out["advantages"], tokens=tokens,
        info={"eps_low": float(cfg.eps_low), "eps_high": float(cfg.eps_high), "kl_beta": float(cfg.kl_beta),
              "max_new_tokens": int(cfg.sampling.max_new_tokens), "rows_total": int(rows_total)})


class RolloutRecorder:
    """Saves the rollouts of the RL steps `cfg` names; drops files of steps >= `start_step` (a resume)."""

    def __init__(self, workdir: str, cfg: RolloutLog, phase: str, steps: int, start_step: int,
                 enabled: bool | None = None):
        self.workdir, self.cfg, self.phase, self.steps = workdir, cfg, phase, steps
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._stats = None
        if self.enabled:
            drop_from(workdir, start_step)

    def maybe_save(self, trainer: Any, step: int, phase_step: int) -> str | None:
        """Save the trainer's last step when `cfg` names it; returns the file written, if any."""
        if not self.cfg.saves(phase_step, self.steps):
            return None
        if self._stats is None:
            self._stats = make_token_stats(trainer.sampler.model, trainer.cfg.logprob_chunk)
        rec = capture(trainer, self.phase, phase_step, step, self.cfg.max_rows, self._stats)
        return save_record(self.workdir, rec) if self.enabled else None
