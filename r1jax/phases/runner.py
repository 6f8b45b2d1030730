"""The runner: executes a list of phases in one workdir, checkpointing between and inside them.

    carry = Runner(workdir, model_cfg, [TokenizerPhase(...), SFTPhase(...), RLPhase(...)], seed=0).run()
    carry.results["final_eval"]["pass@1"], carry.params, carry.tokenizer
    Runner(..., mesh="2x4").run()     # every phase runs under the mesh, params and state sharded

What flows between phases is explicit: each phase's `run(env, carry, state, cursor)` gets the fixed
run environment (RunEnv: workdir, seed, mesh, checkpoint writers) and the previous phase's Carry
(model config, tokenizer, params, results, files written) and returns the next Carry.

A restart with the same workdir resumes at the exact phase and step of the last
committed checkpoint: randomness is a function of (seed, phase name, step) and
data order of (seed, epoch), both saved cursors, so a killed-and-resumed run logs
the same metrics as one left alone. Metrics logged after that checkpoint are
dropped on resume and logged again. Checkpoints are orbax's (written to a
temporary directory, then committed by rename: never half-written) and restored
straight onto the mesh's shardings (r1jax.sharding).
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import zlib
from collections.abc import Mapping
from typing import Any

import jax
from jax.sharding import Mesh

from r1jax import sharding
from r1jax.checkpoint import Checkpointer
from r1jax.config import ModelConfig
from r1jax.errors import UsageError
from r1jax.fileio import atomic_write
from r1jax.metrics import MetricsWriter, decode_nonfinite, encode_nonfinite
from r1jax.model import Transformer
from r1jax.tokenizer import Tokenizer


class Phase:
    """One stage of a recipe (subclasses are frozen dataclasses with a `name`).

    `run(env, carry, state, cursor) -> Carry` trains or samples: `env` is what stays fixed through the
    run (RunEnv), `carry` what the phases before handed over (Carry: model config, tokenizer, params,
    results, files written), and it returns the carry for the next phase. Data a phase reads comes from
    zero-argument callables (`lambda: pairs`), called when the phase starts: nothing is built for a phase
    a resumed run skips."""

    def state_template(self, model_cfg: ModelConfig) -> Any:
        """A pytree shaped like the phase's saved in-progress state (arrays or ShapeDtypeStructs) for a run of
        `model_cfg`; none by default."""
        return {}

    def run(self, env: RunEnv, carry: Carry, state: Any | None, cursor: dict | None) -> Carry:
        """Run from the start (state None) or from a restored `state` and `cursor`; return the new carry."""
        raise NotImplementedError


def read_data(phase: Any, field: str) -> Any:
    """`phase.<field>()`: the phase's data thunk called, or a clear error if it still expects the run context."""
    thunk = getattr(phase, field)
    if thunk is None:
        raise UsageError(f"phase {phase.name!r} needs {field} (a zero-argument callable giving its data)")
    try:
        required = [p for p in inspect.signature(thunk).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # a builtin without a signature: just call it
        required = []
    if required:
        raise UsageError(f"phase {phase.name!r}: {field} must take no arguments (e.g. `lambda: data`); "
                         f"it asks for {', '.join(p.name for p in required)} (phases no longer pass the run context)")
    return thunk()


class StopRun(Exception):
    """Raised by `RunEnv.advance` at `stop_at_step` (tests use it to emulate a kill)."""


@dataclasses.dataclass(frozen=True)
class Carry:
    """What one phase hands the next, and what every checkpoint holds besides a phase's own state.

    `model_cfg` is the run's model (its vocabulary sized to the tokenizer once there is one);
    `tokenizer` and `params` are None until a phase makes them (TokenizerPhase, InitFromPhase, the first
    training phase); `results` maps a phase name to its summary; `files` a phase name to the file or
    folder it wrote in the workdir. Phases return a new Carry (`carry.replace(params=...)`,
    `carry.with_result(name, summary)`), never change one.
    """

    model_cfg: ModelConfig
    tokenizer: Tokenizer | None = None
    params: Any = None
    results: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    files: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def model(self) -> Transformer:
        return Transformer(self.model_cfg)

    def replace(self, **changes: Any) -> Carry:
        return dataclasses.replace(self, **changes)

    def with_result(self, name: str, summary: Any, file: str | None = None) -> Carry:
        """The carry with phase `name`'s summary added (and the path of the file it wrote)."""
        files = self.files if file is None else {**self.files, name: file}
        return dataclasses.replace(self, results={**self.results, name: summary}, files=files)

    def with_tokenizer(self, tok: Tokenizer) -> Carry:
        """The carry with `tok` adopted and the model's vocabulary sized to it."""
        return dataclasses.replace(self, tokenizer=tok,
                                   model_cfg=dataclasses.replace(self.model_cfg, vocab_size=tok.vocab_size))


@dataclasses.dataclass
class _Counters:
    global_step: int = 0  # training steps done in the whole run (metrics are logged at it)
    saves: int = 0  # checkpoints written (the checkpoint manager's step)


@dataclasses.dataclass(frozen=True)
class RunEnv:
    """What stays fixed through a run: workdir, seed, device mesh, checkpoint cadence, the checkpoint and
    metrics writers, and which phase is running (its name seeds its randomness). The run's step and save
    counters advance through `log`, `advance` and `save`; nothing else in it changes."""

    workdir: str
    seed: int
    mesh: Mesh
    checkpoint_every: int
    ckpt: Checkpointer
    metrics: MetricsWriter
    stop_at_step: int | None = None
    phase_index: int = 0
    phase_name: str = ""
    counters: _Counters = dataclasses.field(default_factory=_Counters)

    def for_phase(self, index: int, name: str) -> RunEnv:
        return dataclasses.replace(self, phase_index=index, phase_name=name)

    @property
    def global_step(self) -> int:
        return self.counters.global_step

    @property
    def tokenizer_path(self) -> str:
        return os.path.join(self.workdir, "tokenizer.model")

    @property
    def phase_seed(self) -> int:
        """An int seed of (run seed, phase name): adding or removing other phases leaves it unchanged."""
        return zlib.crc32(f"{self.seed}/{self.phase_name}".encode()) & 0x7FFFFFFF

    def rng(self, step: int = 0) -> jax.Array:
        """The random key of this phase's `step`: a function of (seed, phase name, step) only."""
        return jax.random.fold_in(jax.random.key(self.phase_seed), step)

    def init_params(self, model_cfg: ModelConfig) -> Any:
        """Fresh params of the model, created sharded on the mesh (rng of this phase's step 0)."""
        return sharding.sharded_init(model_cfg, self.rng(), self.mesh)

    def place(self, tree: Any, model_cfg: ModelConfig) -> Any:
        """Params or a train state moved onto the mesh (params sharded by the rule table, the rest replicated)."""
        return sharding.place(tree, self.mesh, model_cfg)

    def log(self, scalars: dict[str, float], step_done: bool = True) -> None:
        """Write metrics at the current global step (prefixed by the phase name), then advance it."""
        self.metrics.write(self.global_step, {f"{self.phase_name}/{k}": float(v) for k, v in scalars.items()})
        if step_done:
            self.advance()

    def advance(self) -> None:
        """Count one training step done."""
        self.counters.global_step += 1
        if self.stop_at_step is not None and self.global_step >= self.stop_at_step:
            raise StopRun(f"stopped at global step {self.global_step}")

    def save(self, carry: Carry, state: Any, cursor: dict, done: bool = False) -> None:
        """Checkpoint the carry (params, results, files) and the phase state with its cursor (done: the phase
        finished)."""
        self.counters.saves += 1
        meta = {"phase_index": self.phase_index, "phase_name": self.phase_name, "done": done,
                "global_step": self.global_step, "cursor": cursor, "results": encode_nonfinite(dict(carry.results)),
                "files": dict(carry.files), "vocab_size": carry.model_cfg.vocab_size,
                "model": carry.model_cfg.to_dict()}
        tree = {"params": {} if carry.params is None else carry.params, "state": {} if state is None else state,
                "global_step": jax.numpy.asarray(self.global_step)}
        self.ckpt.save(self.counters.saves, tree, meta, force=True)

    def maybe_save(self, step: int, carry: Carry, state: Any, cursor: dict) -> None:
        """`save` when the phase's `step` falls on the checkpoint cadence."""
        if step % self.checkpoint_every == 0:
            self.save(carry, state, cursor)


def check_phase(phase: Any) -> None:
    """A clear error for a phase written against the old interface, `run(ctx, state, cursor)`."""
    try:
        params = inspect.signature(phase.run).parameters
    except (TypeError, ValueError, AttributeError):
        raise UsageError(f"{phase!r} is not a phase: it needs run(env, carry, state, cursor)") from None
    if len(params) == 3:
        raise UsageError(f"phase {phase.name!r}: run takes (ctx, state, cursor), the old interface; write "
                         "run(self, env, carry, state, cursor) and return the carry (r1jax.phases.Phase)")


def abstract_params(cfg: ModelConfig) -> Any:
    """ShapeDtypeStructs of a model's params (no memory allocated)."""
    from r1jax.model import init_params

    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


class Runner:
    """Runs `phases` in order in `workdir`, resuming from its last checkpoint."""

    def __init__(self, workdir: str, model_cfg: ModelConfig, phases: list, seed: int = 0,
                 checkpoint_every: int = 50, keep_last: int = 3, mesh: str | Mesh | None = None,
                 files: dict[str, str] | None = None):
        """`mesh`: a Mesh, a spec such as "2x4" or "fsdp=8,expert=8" (r1jax.sharding), or None (one device);
        `files`: name → text written into the workdir when the run starts (a recipe's task.json)."""
        names = [p.name for p in phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique (they prefix metrics): {names}")
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every={checkpoint_every} must be >= 1")
        if model_cfg.lora.rank:
            raise UsageError(f"model.lora.rank={model_cfg.lora.rank}: adapters belong to a training phase, not to "
                             "the run's model (every phase would train them with the base): set the phase's lora "
                             "(RLPhase(lora=...), --set lora.rank=16 in the R1-Zero recipe)")
        self.workdir, self.model_cfg, self.phases, self.seed = os.path.abspath(workdir), model_cfg, phases, seed
        self.checkpoint_every, self.keep_last, self.files = checkpoint_every, keep_last, dict(files or {})
        for phase in phases:
            check_phase(phase)
        self.mesh = (sharding.single_device_mesh() if mesh is None
                     else mesh if isinstance(mesh, Mesh) else sharding.make_mesh(mesh))

    def run(self, stop_at_step: int | None = None) -> Carry:
        """Run every phase not yet done; returns the last phase's carry (params, tokenizer, results, files)."""
        os.makedirs(self.workdir, exist_ok=True)
        for name, text in self.files.items():
            atomic_write(os.path.join(self.workdir, name), text)
        ckpt = Checkpointer(os.path.join(self.workdir, "checkpoints"), keep_last=self.keep_last)
        meta = ckpt.read_meta() if ckpt.latest_step() is not None else None
        metrics = MetricsWriter(self.workdir, resume_step=None if meta is None else meta["global_step"] - 1)
        env = RunEnv(self.workdir, self.seed, self.mesh, self.checkpoint_every, ckpt, metrics,
                     stop_at_step=stop_at_step)
        try:
            with sharding.use_mesh(self.mesh):
                start, carry, state, cursor = self._resume(env, meta)
                for i in range(start, len(self.phases)):
                    phase, phase_env = self.phases[i], env.for_phase(i, self.phases[i].name)
                    carry = self._placed(phase_env, carry)  # params from outside (InitFromPhase, a user phase)
                    out = phase.run(phase_env, carry, state if i == start else None, cursor if i == start else None)
                    if not isinstance(out, Carry):
                        raise TypeError(f"phase {phase.name!r}: run must return the Carry for the next phase "
                                        f"(e.g. `return carry.with_result(self.name, summary)`), got "
                                        f"{type(out).__name__}")
                    carry = self._placed(phase_env, out)  # sharded before saving: host arrays go to every device
                    phase_env.save(carry, None, {}, done=True)
        finally:
            metrics.close()
            ckpt.close()
        return carry

    @staticmethod
    def _placed(env: RunEnv, carry: Carry) -> Carry:
        return carry if carry.params is None else carry.replace(params=env.place(carry.params, carry.model_cfg))

    def _resume(self, env: RunEnv, meta: dict | None) -> tuple[int, Carry, Any, dict | None]:
        carry = Carry(self.model_cfg)
        if meta is None:
            return 0, carry, None, None
        env.counters.saves, env.counters.global_step = env.ckpt.latest_step(), meta["global_step"]
        carry = carry.replace(results=decode_nonfinite(meta["results"]), files=meta.get("files", {}))
        if os.path.exists(env.tokenizer_path):
            carry = carry.with_tokenizer(Tokenizer.load(env.tokenizer_path))
        elif os.path.exists(os.path.join(env.workdir, "tokenizer.json")):  # copied by InitFromPhase
            from r1jax.hf_tokenizer import HFTokenizer

            carry = carry.replace(tokenizer=HFTokenizer.load(env.workdir))
        if meta["vocab_size"] != carry.model_cfg.vocab_size:
            raise ValueError(f"checkpoint in {self.workdir} has vocab_size {meta['vocab_size']}, "
                             f"the run's model has {carry.model_cfg.vocab_size}")
        index, done = meta["phase_index"], meta["done"]
        if self.phases[index].name != meta["phase_name"]:
            raise ValueError(f"checkpoint in {self.workdir} is from phase {meta['phase_name']!r} at index {index}, "
                             f"but this run's phase {index} is {self.phases[index].name!r}")
        has_params = any(p.startswith("params/") for p in env.ckpt.leaf_paths())  # none before the model exists
        target = {"params": abstract_params(carry.model_cfg) if has_params else {},
                  "state": {} if done else self.phases[index].state_template(carry.model_cfg),
                  "global_step": jax.ShapeDtypeStruct((), jax.numpy.int32)}
        saved, _ = env.ckpt.restore(target=sharding.abstract_with_shardings(target, env.mesh, carry.model_cfg))
        carry = carry.replace(params=saved["params"] if has_params else None)
        if done:
            return index + 1, carry, None, None
        return index, carry, saved["state"], meta["cursor"]
