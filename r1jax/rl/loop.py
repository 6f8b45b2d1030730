"""The GRPO loop on the host: sample G per prompt → rewards in the pool → advantages → jitted update.

    trainer = GRPOTrainer(model_cfg, params, tok, grpo_cfg, opt_cfg, rewards, R1_ZERO, pool=pool)
    for step in range(n):
        metrics = trainer.step(problems_for(step), jax.random.fold_in(rng, step))

Device work (sampling, log-probs, the update) is jitted; rewards, data and
logging stay in Python. DeepSeek-R1 (arXiv 2501.12948) Sec. 2.2; dynamic
sampling and the overlong penalty from DAPO (arXiv 2503.14476). With a `mesh`
(r1jax.sharding) the train state is sharded by the rule table and each batch's
rows are split over the data-like axes; call the trainer inside `use_mesh(mesh)`.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from r1jax import lora as r1lora
from r1jax import sharding
from r1jax.config import GRPOConfig, LoRAConfig, ModelConfig, OptimizerConfig
from r1jax.data import Problem
from r1jax.engine import Engine
from r1jax.rewards import RewardPool, WeightedReward, combine_rewards
from r1jax.rl.grpo import gdpo_advantages, group_advantages
from r1jax.rl.objectives import PolicyLossFn
from r1jax.sampling import Sampler, left_pad
from r1jax.tokenizer import Tokenizer, tokenizer_stop_ids
from r1jax.rl.grpo_step import GRPOBatch, make_grpo_step, make_logps_fn
from r1jax.train.optim import TrainState, init_train_state, learning_rate_schedule, make_optimizer


class TrainingDiverged(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient."""


@dataclasses.dataclass
class Rollout:
    """G completions per problem and their scores (host side; B = P·G rows)."""

    problems: list[Problem]
    prompt_ids: list[list[int]]
    completion_BxT: np.ndarray
    logps_BxT: np.ndarray
    lengths_B: np.ndarray
    truncated_B: np.ndarray
    texts: list[str]
    rewards_B: np.ndarray
    values: dict[str, np.ndarray]
    reward_failures: dict[str, int]


def overlong_penalty(lengths_B: np.ndarray, max_len: int, buffer: int, penalty: float) -> np.ndarray:
    """DAPO's soft overlong penalty: 0 up to max_len − buffer, then linear down to −penalty at max_len."""
    if buffer == 0:
        return np.where(lengths_B >= max_len, -penalty, 0.0)
    excess = np.clip(lengths_B - (max_len - buffer), 0, buffer)
    return -penalty * excess / buffer


def rollout_metrics(r: Rollout) -> dict[str, float]:
    """Per-step statistics of a rollout, named as peer trainers name them."""
    m = {"reward/mean": float(r.rewards_B.mean()), "reward/std": float(r.rewards_B.std()),
         "completion/length_mean": float(r.lengths_B.mean()), "completion/length_max": float(r.lengths_B.max()),
         "completion/truncated_frac": float(r.truncated_B.mean())}
    for name, v in r.values.items():
        m[f"reward/{name}"] = float(v.mean())
    for name, n in r.reward_failures.items():
        m[f"reward/{name}_failures"] = float(n)
    return m


@dataclasses.dataclass(frozen=True)
class TrainerCheckpoint:
    """What a GRPOTrainer resumes from (a checkpoint's): its train state (with LoRA, the adapters' only), the
    reference's trainable part (None without a KL term) and its counters."""

    state: TrainState
    ref_trainable: Any = None
    rl_step: int = 0
    bad_steps: int = 0


class GRPOTrainer:
    """Owns the policy's train state, the reference params, the sampler and the jitted update."""

    def __init__(self, model_cfg: ModelConfig, params: Any, tokenizer: Tokenizer, cfg: GRPOConfig,
                 opt_cfg: OptimizerConfig, rewards: Mapping[str, WeightedReward], template: Any,
                 pool: RewardPool | None = None, add_bos: bool = True, prompt_bucket: int = 32,
                 post_update: Callable[[TrainState, dict], TrainState] | None = None, seed: int = 0,
                 mesh: Mesh | None = None, policy_loss: PolicyLossFn | None = None, lora: LoRAConfig = LoRAConfig(),
                 resume: TrainerCheckpoint | None = None):
        """`lora` with rank > 0 trains adapters on a frozen base (`params`, never updated or donated): the
        optimizer holds the adapters only (fresh, B = 0), and the KL reference is the base with adapters off
        (no copy of the weights). `resume` continues from a checkpoint's state, reference and counters
        instead of a fresh optimizer state (with LoRA, `params` is still the frozen base)."""
        self.cfg, self.tok, self.rewards, self.template, self.pool = cfg, tokenizer, rewards, template, pool
        if lora.rank:
            model_cfg = dataclasses.replace(model_cfg, lora=lora)
            self.frozen = params
            if resume is None:
                params = r1lora.init_adapters(model_cfg, jax.random.key(seed))
        else:
            self.frozen = None
        self.model_cfg = model_cfg
        self.add_bos = add_bos
        self.sampler = Sampler(model_cfg, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                               prompt_bucket=prompt_bucket)
        self.settings = cfg.sampling.with_stop_ids(tokenizer_stop_ids(tokenizer))  # every rollout's
        self.engine = None
        if cfg.rollout == "engine":
            self.engine = Engine(model_cfg, pad_id=tokenizer.pad_id, page_size=cfg.page_size,
                                 slots=cfg.rollout_slots or cfg.group_size * cfg.prompts_per_step)
        self.tx = make_optimizer(opt_cfg)
        self.lr = learning_rate_schedule(opt_cfg)
        self.mesh = mesh
        rows = cfg.group_size * cfg.prompts_per_step
        micro = rows // (cfg.num_minibatches * cfg.grad_accum)
        n = 1 if mesh is None else sharding.data_devices(mesh)
        sharding.check_rows(rows, mesh, f"an RL step (group_size·prompts_per_step = {rows})",
                            "change grpo.group_size or grpo.prompts_per_step")
        sharding.check_rows(micro, mesh, f"a micro-batch ({rows} rows / num_minibatches {cfg.num_minibatches} "
                            f"/ grad_accum {cfg.grad_accum})",
                            f"set grpo.num_minibatches·grpo.grad_accum to a divisor of {rows // n} "
                            f"(e.g. grpo.num_minibatches={max(1, rows // n)})")
        self.state = init_train_state(params, self.tx) if resume is None else resume.state
        state_sharding = None
        if mesh is not None:
            self.state = sharding.place(self.state, mesh, model_cfg)
            state_sharding = sharding.tree_shardings(self.state, mesh, cfg=model_cfg)
        # the reference's trainable part: a copy of the params, or with LoRA the adapters switched off
        self.ref_trainable = None
        if cfg.kl_beta and resume is not None:
            self.ref_trainable = resume.ref_trainable
        elif cfg.kl_beta:
            copied = jax.tree.map(jnp.copy, self.state.params)  # the state is donated to the update
            self.ref_trainable = copied if self.frozen is None else r1lora.adapters_off(copied)
        self._update = make_grpo_step(self.sampler.model, self.tx, cfg, post_update, state_sharding, policy_loss)
        self._logps = make_logps_fn(self.sampler.model, cfg.logprob_chunk, cfg.num_minibatches * cfg.grad_accum)
        self.seed = seed
        self.rl_step = 0 if resume is None else resume.rl_step
        self.bad_steps = 0 if resume is None else resume.bad_steps

    @property
    def params(self) -> Any:
        """The policy's whole params: the train state's, or with LoRA the frozen base merged with the adapters."""
        return self.state.params if self.frozen is None else r1lora.merge(self.frozen, self.state.params)

    @property
    def ref_params(self) -> Any:
        """The KL reference's params (None without a KL term)."""
        if self.ref_trainable is None:
            return None
        return self.ref_trainable if self.frozen is None else r1lora.merge(self.frozen, self.ref_trainable)

    def final_params(self) -> Any:
        """What the run keeps after this trainer: the params, with LoRA the adapters folded into the kernels."""
        return self.params if self.frozen is None else r1lora.fold(self.model_cfg, self.params)[1]

    # ------------------------------------------------------------------ rollout
    def rollout(self, problems: Sequence[Problem], rng: jax.Array) -> Rollout:
        """Sample G completions of each problem with the current policy and score them."""
        cfg, g = self.cfg, self.cfg.group_size
        prompts = [self.template.render(p.question) for p in problems]
        prompt_ids = [self.tok.encode(t, add_bos=self.add_bos) for t in prompts]
        out = (self.engine or self.sampler).generate(self.params, prompt_ids, rng, group_size=g,
                                                     settings=self.settings)
        completion_BxT, logps_BxT, lengths_B, truncated_B = sharding.to_host(
            (out.tokens_BxT, out.logps_BxT, out.lengths_B, out.truncated_B))
        texts = [self.tok.decode(row[:n]) for row, n in zip(completion_BxT, lengths_B)]
        columns: dict[str, list] = {}
        for i, p in enumerate(problems):
            for k, v in p.columns().items():
                columns.setdefault(k, [None] * len(problems))[i] = v
        rows = lambda xs: [x for x in xs for _ in range(g)]  # noqa: E731
        scored = combine_rewards(rows(prompts), texts, self.rewards, pool=self.pool,
                                 **{k: rows(v) for k, v in columns.items()})
        rewards_B = np.asarray(scored.total, np.float64)
        if cfg.overlong == "soft":
            rewards_B = rewards_B + overlong_penalty(lengths_B, cfg.sampling.max_new_tokens, cfg.overlong_buffer,
                                                     cfg.overlong_penalty)
        failures = {k: scored.errors[k] + scored.timeouts[k] for k in scored.errors}
        return Rollout(list(problems), prompt_ids, completion_BxT, logps_BxT, lengths_B, truncated_B, texts,
                       rewards_B, {k: np.asarray(v) for k, v in scored.values.items()}, failures)

    def _select_groups(self, rollouts: list[Rollout]) -> tuple[Rollout, int]:
        """Keep P groups, preferring groups whose rewards differ (DAPO dynamic sampling)."""
        g, p = self.cfg.group_size, self.cfg.prompts_per_step
        groups = [(r, i) for r in rollouts for i in range(len(r.problems))]
        varied = [np.ptp(r.rewards_B[i * g:(i + 1) * g]) > 0 for r, i in groups]
        informative = [x for x, v in zip(groups, varied) if v]
        flat = [x for x, v in zip(groups, varied) if not v]
        # without enough informative groups, flat ones fill the batch (zero advantage, KL only)
        chosen = (informative + flat)[:p] if self.cfg.dynamic_sampling else groups[:p]
        take = lambda r, i, a: a[i * g:(i + 1) * g]  # noqa: E731
        cat = lambda name: np.concatenate([take(r, i, getattr(r, name)) for r, i in chosen])  # noqa: E731
        merged = Rollout(
            problems=[r.problems[i] for r, i in chosen],
            prompt_ids=[r.prompt_ids[i] for r, i in chosen],
            completion_BxT=cat("completion_BxT"), logps_BxT=cat("logps_BxT"), lengths_B=cat("lengths_B"),
            truncated_B=cat("truncated_B"), rewards_B=cat("rewards_B"),
            texts=[t for r, i in chosen for t in r.texts[i * g:(i + 1) * g]],
            values={k: np.concatenate([take(r, i, r.values[k]) for r, i in chosen]) for k in rollouts[0].values},
            reward_failures={k: sum(r.reward_failures[k] for r in rollouts) for k in rollouts[0].reward_failures})
        return merged, len(informative)

    def _batch(self, r: Rollout) -> GRPOBatch:
        """The update's batch as host (numpy) arrays; ref_logps are zeros until computed."""
        g = self.cfg.group_size
        prompt_PxL, prompt_mask_PxL = left_pad(r.prompt_ids, self.tok.pad_id, self.sampler.prompt_bucket)
        completion_mask_BxT = np.arange(r.completion_BxT.shape[1])[None] < r.lengths_B[:, None]
        loss_mask_BxT = completion_mask_BxT.astype(np.float32)
        if self.cfg.overlong == "mask":
            loss_mask_BxT = loss_mask_BxT * ~r.truncated_B[:, None]
        adv_B = np.asarray(self._advantages(r)).reshape(-1)
        return GRPOBatch(
            prompt_BxP=np.repeat(prompt_PxL, g, axis=0),
            prompt_mask_BxP=np.repeat(prompt_mask_PxL, g, axis=0),
            completion_BxT=np.asarray(r.completion_BxT), completion_mask_BxT=completion_mask_BxT,
            loss_mask_BxT=np.asarray(loss_mask_BxT, np.float32), old_logps_BxT=np.asarray(r.logps_BxT),
            ref_logps_BxT=np.zeros(r.logps_BxT.shape, np.float32), advantages_B=np.asarray(adv_B, np.float32),
            sampler_logps_BxT=np.asarray(r.logps_BxT, np.float32))

    def _advantages(self, r: Rollout) -> jax.Array:
        """P×G advantages of the rollout's rewards; "gdpo" normalizes each weighted reward (and the
        soft overlong penalty, a component of its own) within its group before summing."""
        g, cfg = self.cfg.group_size, self.cfg
        if cfg.advantage != "gdpo":
            return group_advantages(jnp.asarray(r.rewards_B.reshape(-1, g)), cfg.advantage)
        parts = [np.asarray(r.values[name], np.float64) for name in self.rewards]
        weights = [float(self.rewards[name].weight) for name in self.rewards]
        if cfg.overlong == "soft":
            parts.append(overlong_penalty(r.lengths_B, cfg.sampling.max_new_tokens, cfg.overlong_buffer,
                                          cfg.overlong_penalty))
            weights.append(1.0)
        rewards_KxPxG = jnp.asarray(np.stack(parts).reshape(len(parts), -1, g))
        return gdpo_advantages(rewards_KxPxG, jnp.asarray(weights), batch_norm=cfg.gdpo_batch_norm)

    # --------------------------------------------------------------------- step
    def step(self, problems: Sequence[Problem], rng: jax.Array,
             more_problems: Callable[[int], Sequence[Problem]] | None = None) -> dict[str, float]:
        """One RL step on `problems` (P of them); `more_problems(round)` refills for dynamic sampling."""
        cfg = self.cfg
        if len(problems) != cfg.prompts_per_step:
            raise ValueError(f"got {len(problems)} problems; GRPOConfig.prompts_per_step={cfg.prompts_per_step}")
        t0 = time.perf_counter()
        rollouts = [self.rollout(problems, jax.random.fold_in(rng, 0))]
        if cfg.dynamic_sampling and more_problems is not None:
            for k in range(1, cfg.max_resample_rounds + 1):
                if self._select_groups(rollouts)[1] >= cfg.prompts_per_step:
                    break
                rollouts.append(self.rollout(more_problems(k), jax.random.fold_in(rng, k)))
        r, informative = self._select_groups(rollouts)
        t_sample = time.perf_counter() - t0

        batch = self._batch(r)
        # row order for minibatches: a function of (seed, step) only, so a resumed run repeats it
        order = np.random.default_rng([self.seed, self.rl_step]).permutation(batch.advantages_B.shape[0])
        batch = jax.tree.map(lambda x: x[order], batch)
        batch = jax.tree.map(jnp.asarray, batch) if self.mesh is None else sharding.shard_batch(batch, self.mesh)
        if cfg.recompute_old_logps:
            batch = batch.replace(old_logps_BxT=self._logps(self.params, batch))
        if self.ref_params is not None:
            batch = batch.replace(ref_logps_BxT=self._logps(self.ref_params, batch))
        # the update's randomness (later epochs' minibatches, Clip-Cov's tokens): a function of (seed, step)
        key = jax.random.fold_in(jax.random.key(self.seed), self.rl_step)
        self.state, dev_metrics = self._update(self.state, batch, key, self.frozen)
        dev_metrics = sharding.to_host(dev_metrics)
        self.rl_step += 1
        if cfg.ref_refresh_every and self.ref_trainable is not None and self.rl_step % cfg.ref_refresh_every == 0:
            self.ref_trainable = jax.tree.map(jnp.copy, self.state.params)

        self.bad_steps = self.bad_steps + 1 if dev_metrics["skipped"] >= dev_metrics["updates"] else 0
        if self.bad_steps >= cfg.max_bad_steps:
            raise TrainingDiverged(f"{self.bad_steps} consecutive RL steps had only non-finite updates "
                                   f"(loss {dev_metrics['loss']}, grad norm {dev_metrics['grad_norm']}); "
                                   "lower the learning rate or check the rewards")
        elapsed = time.perf_counter() - t0
        metrics = rollout_metrics(r)
        metrics.update({k: float(v) for k, v in dev_metrics.items() if k != "finite"})
        metrics.update({"lr": float(self.lr(int(self.state.step))), "time/step_s": elapsed,
                        "time/sample_s": t_sample, "groups/informative": float(informative),
                        "groups/sampled": float(sum(len(x.problems) for x in rollouts)),
                        "throughput/tokens_per_s": float(r.lengths_B.sum()) / elapsed})
        self.last_rollout = r
        self.last_batch, self.last_order = batch, order  # the update's rows (shuffled by order): r1jax.report
        return metrics
