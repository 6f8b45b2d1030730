"""Training phases: tokenizer, supervised (pretraining, cold start, SFT, distillation), GRPO.

Each is a frozen dataclass; data comes from zero-argument callables (`lambda: pairs`),
so an experiment file composes a recipe in Python and a fork swaps a reward or
a dataset by passing a different function.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from r1jax import sharding
from r1jax.config import GRPOConfig, LoRAConfig, OptimizerConfig, SamplingSettings
from r1jax.data import Problem
from r1jax.data.packing import batches, batches_per_epoch, encode_examples, pack
from r1jax.lora import abstract_adapters, count, fold, init_adapters, merge
from r1jax.metrics import progress, show_metrics
from r1jax.model import Transformer
from r1jax.config import ModelConfig
from r1jax.phases.runner import Carry, Phase, RunEnv, abstract_params, read_data
from r1jax.report.capture import RolloutRecorder
from r1jax.report.rollouts import RolloutLog
from r1jax.rewards import RewardPool, WeightedReward
from r1jax.rl.loop import GRPOTrainer, TrainerCheckpoint
from r1jax.tokenizer import Tokenizer
from r1jax.train.optim import init_train_state, make_optimizer
from r1jax.train.sft_step import make_distill_step, make_sft_step


@dataclasses.dataclass(frozen=True)
class TokenizerPhase(Phase):
    """Train the SentencePiece tokenizer on `texts()` and size the model's vocabulary to it."""

    texts: Callable[[], Sequence[str]]
    vocab_size: int = 512
    name: str = "tokenizer"

    def run(self, env: RunEnv, carry: Carry, state: Any, cursor: dict | None) -> Carry:
        tok = Tokenizer.train(iter(read_data(self, "texts")), vocab_size=self.vocab_size)
        tok.save(env.tokenizer_path)
        return carry.with_tokenizer(tok).with_result(self.name, {"vocab_size": tok.vocab_size},
                                                     file=env.tokenizer_path)


def trainable_template(model_cfg: ModelConfig, lora: LoRAConfig) -> Any:
    """Abstract params a training phase's optimizer holds: the model's, or with LoRA its adapters only."""
    if lora.rank:
        return abstract_adapters(dataclasses.replace(model_cfg, lora=lora))
    return abstract_params(model_cfg)


@dataclasses.dataclass(frozen=True)
class SFTPhase(Phase):
    """Supervised training on (prompt, completion) pairs, loss on completion tokens, packed rows.

    Pretraining of the tiny base is this phase with empty prompts; the cold start,
    the rejection-sampling SFT and distillation are this phase on their data. With
    a `teacher`, the loss adds logit distillation (make_distill_step); the paper
    distils by plain SFT on teacher traces (no teacher). `lora` with rank > 0 trains LoRA adapters
    on the frozen params, folded into the kernels when the phase ends (as RLPhase does).
    """

    name: str
    pairs: Callable[[], Sequence[tuple[str, str]]]
    steps: int
    batch_size: int = 32
    seq_len: int = 256
    optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-3)
    logprob_chunk: int = 256
    log_every: int = 10
    teacher: str = ""  # logit distillation from this r1jax workdir or HF folder (same vocabulary)
    kd_alpha: float = 0.5  # with a teacher: (1−α)·CE + α·τ²·KL(teacher_τ ‖ student_τ)
    kd_temperature: float = 1.0
    lora: LoRAConfig = LoRAConfig()

    def _tx(self):
        return make_optimizer(self.optimizer)

    def _trainable(self, carry: Carry, params: Any, rng: jax.Array) -> Any:
        """What the optimizer trains: the params, or with LoRA fresh adapters (B = 0)."""
        if not self.lora.rank:
            return params
        return init_adapters(dataclasses.replace(carry.model_cfg, lora=self.lora), rng)

    def state_template(self, model_cfg: ModelConfig) -> Any:
        return jax.eval_shape(lambda q: init_train_state(q, self._tx()), trainable_template(model_cfg, self.lora))

    def run(self, env: RunEnv, carry: Carry, state: Any, cursor: dict | None) -> Carry:
        if carry.tokenizer is None:
            raise ValueError(f"phase {self.name!r} needs a tokenizer: put a TokenizerPhase before it")
        params = carry.params if carry.params is not None else env.init_params(carry.model_cfg)
        examples = encode_examples(carry.tokenizer, list(read_data(self, "pairs")))
        packed, stats = pack(examples, self.seq_len)
        tx = self._tx()
        model_cfg = dataclasses.replace(carry.model_cfg, lora=self.lora) if self.lora.rank else carry.model_cfg
        model = Transformer(model_cfg)
        frozen = params if self.lora.rank else None  # with LoRA the run's params stay the base until the end
        if state is None:
            state = sharding.place(init_train_state(self._trainable(carry, params, env.rng(0)), tx), env.mesh,
                                   model_cfg)
        state_sharding = sharding.tree_shardings(state, env.mesh, cfg=model_cfg)
        if self.teacher:
            from r1jax.phases.init_phases import load_source

            teacher_cfg, teacher_params, _ = load_source(self.teacher)
            teacher_params = sharding.place(teacher_params, env.mesh, teacher_cfg)
            distill = make_distill_step(model, Transformer(teacher_cfg), tx, alpha=self.kd_alpha,
                                        temperature=self.kd_temperature, chunk=self.logprob_chunk,
                                        state_sharding=state_sharding, seed=env.phase_seed)
            step_fn = lambda s, b: distill(s, b, teacher_params, frozen)  # noqa: E731
        else:
            sft = make_sft_step(model, tx, chunk=self.logprob_chunk, state_sharding=state_sharding, seed=env.phase_seed)
            step_fn = lambda s, b: sft(s, b, frozen)  # noqa: E731
        cursor = cursor or {"step": 0, "epoch": 0, "index": 0}
        per_epoch = batches_per_epoch(packed, self.batch_size)
        if per_epoch == 0:
            raise ValueError(f"phase {self.name!r}: {len(examples)} examples packed into "
                             f"{packed.tokens_BxL.shape[0]} rows of seq_len={self.seq_len} "
                             f"({stats.dropped_overlong} dropped as longer), fewer than batch_size={self.batch_size}")
        epochs = cursor["epoch"] + -(-(self.steps - cursor["step"]) // per_epoch) + 1
        stream = batches(packed, self.batch_size, env.seed, cursor["epoch"], cursor["index"], epochs=epochs)
        bar = progress(total=self.steps, desc=self.name, initial=cursor["step"])
        for step, (batch, after) in zip(range(cursor["step"], self.steps), stream):
            state, metrics = step_fn(state, sharding.shard_batch(batch, env.mesh))
            cursor = {"step": step + 1, "epoch": after.epoch, "index": after.index}
            if (step + 1) % self.log_every == 0 or step + 1 == self.steps:
                m = {k: float(v) for k, v in sharding.to_host(metrics).items()}
                m["epoch"] = step * self.batch_size / packed.tokens_BxL.shape[0]
                show_metrics(bar, m)
                env.log(m, step_done=False)
            env.advance()
            bar.update(1)
            # a checkpoint inside the phase holds the params as they are now (with LoRA: the base as it came)
            env.maybe_save(step + 1, carry.replace(params=params if frozen is not None else state.params), state,
                           cursor)
        bar.close()
        summary = {"rows": int(packed.tokens_BxL.shape[0]), "fill": float(stats.fill),
                   "dropped_overlong": int(stats.dropped_overlong)}
        if frozen is not None:
            summary.update({"lora/trainable_params": float(count(state.params)),
                            "lora/total_params": float(count(frozen))})
        params = state.params if frozen is None else fold(model_cfg, merge(frozen, state.params))[1]
        return carry.replace(params=params).with_result(self.name, summary)


def problem_stream(problems: Sequence[Problem], seed: int, start: int) -> Callable[[int], list[Problem]]:
    """`take(n)`: the next n problems of an endless reshuffled stream, from position `start`."""
    pos = [start]

    @functools.lru_cache(maxsize=2)
    def order(epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(len(problems))

    def take(n: int) -> list[Problem]:
        out = [problems[order(i // len(problems))[i % len(problems)]] for i in range(pos[0], pos[0] + n)]
        pos[0] += n
        return out

    take.position = pos  # type: ignore[attr-defined]
    return take


@dataclasses.dataclass(frozen=True)
class RLPhase(Phase):
    """GRPO on `problems()` with rule-based `rewards` (R1-Zero, R1 reasoning RL).

    Every `eval_every` steps it evaluates on `eval_problems()` with `eval_sampling` (None: the
    paper's protocol at the rollouts' max_new_tokens and stop ids, `SamplingSettings.paper_evaluation`).
    `rollout_log` names the steps whose whole rollouts are saved under `workdir/rollouts/` (r1jax.report).
    `lora` with rank > 0 trains LoRA adapters on the frozen params (r1jax.lora): checkpoints inside the
    phase hold the base as it came and the adapters in the phase state; at the end the adapters are
    folded into the kernels, so later phases see plain params.
    """

    name: str
    problems: Callable[[], Sequence[Problem]]
    rewards: Mapping[str, WeightedReward]
    template: Any
    steps: int
    grpo: GRPOConfig = GRPOConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    reward_workers: int = 2
    reward_timeout_s: float = 10.0
    eval_problems: Callable[[], Sequence[Problem]] | None = None
    eval_every: int = 0
    eval_k: int = 4
    eval_sampling: SamplingSettings | None = None
    rollout_log: RolloutLog = RolloutLog()
    lora: LoRAConfig = LoRAConfig()

    def state_template(self, model_cfg: ModelConfig) -> Any:
        p = trainable_template(model_cfg, self.lora)
        train = jax.eval_shape(lambda q: init_train_state(q, make_optimizer(self.optimizer)), p)
        return {"train": train, "ref": p if self.grpo.kl_beta else {}}

    def _evaluate(self, env: RunEnv, trainer: GRPOTrainer, step: int, problems: Sequence[Problem]
                  ) -> dict[str, float]:
        from r1jax.evaluate import evaluate

        result = evaluate(trainer.params, trainer.model_cfg, trainer.tok, problems,
                          settings=self.eval_sampling or self.grpo.sampling.paper_evaluation(), template=self.template,
                          rng=jax.random.fold_in(env.rng(step), 1 << 20), k=self.eval_k,
                          sampler=trainer.engine or trainer.sampler,
                          pool=trainer.pool)
        return {f"eval/{k}": v for k, v in result.summary().items()}

    def run(self, env: RunEnv, carry: Carry, state: Any, cursor: dict | None) -> Carry:
        if carry.tokenizer is None or carry.params is None:
            raise ValueError(f"phase {self.name!r} needs a tokenizer and params from earlier phases")
        cursor = cursor or {"step": 0, "problems": 0, "bad_steps": 0}
        problems = list(read_data(self, "problems"))
        held_out = list(read_data(self, "eval_problems")) if self.eval_every else []
        take = problem_stream(problems, env.phase_seed, cursor["problems"])
        with RewardPool(self.reward_workers, self.reward_timeout_s) as pool:
            resume = None if state is None else TrainerCheckpoint(
                state["train"], state["ref"] if self.grpo.kl_beta else None, cursor["step"], cursor["bad_steps"])
            trainer = GRPOTrainer(carry.model_cfg, carry.params, carry.tokenizer, self.grpo, self.optimizer,
                                  self.rewards, self.template, pool=pool, seed=env.phase_seed, mesh=env.mesh,
                                  lora=self.lora, resume=resume)
            bar = progress(total=self.steps, desc=self.name, initial=cursor["step"])
            recorder = RolloutRecorder(env.workdir, self.rollout_log, self.name, self.steps, env.global_step)
            if cursor["step"] == 0 and self.eval_every:
                env.log(self._evaluate(env, trainer, 0, held_out), step_done=False)
            for step in range(cursor["step"], self.steps):
                m = trainer.step(take(self.grpo.prompts_per_step), env.rng(step),
                                 more_problems=lambda _: take(self.grpo.prompts_per_step))
                recorder.maybe_save(trainer, env.global_step, step)
                if self.eval_every and (step + 1) % self.eval_every == 0:
                    m.update(self._evaluate(env, trainer, step + 1, held_out))
                show_metrics(bar, {k: m[k] for k in ("reward/mean", "completion/length_mean") if k in m})
                bar.update(1)
                env.log({k: v for k, v in m.items() if not k.startswith("time/") and "throughput" not in k})
                cursor = {"step": step + 1, "problems": take.position[0], "bad_steps": trainer.bad_steps}
                # with LoRA a checkpoint holds the base as it came; the adapters are in the phase state
                params = carry.params if self.lora.rank else trainer.params
                env.maybe_save(step + 1, carry.replace(params=params),
                               {"train": trainer.state, "ref": trainer.ref_trainable or {}}, cursor)
            bar.close()
        carry = carry.replace(params=trainer.final_params())
        if self.lora.rank:
            carry = carry.with_result(self.name, {"lora/trainable_params": float(count(trainer.state.params)),
                                                  "lora/total_params": float(count(trainer.frozen))})
        return carry
