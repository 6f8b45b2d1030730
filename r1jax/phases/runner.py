"""The runner: executes a list of phases in one workdir, checkpointing between and inside them.

    Runner(workdir, model_cfg, [TokenizerPhase(...), PretrainPhase(...), RLPhase(...)], seed=0).run()
    Runner(..., mesh="2x4").run()     # every phase runs under the mesh, params and state sharded


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
    """One stage of a recipe (subclasses are frozen dataclasses with a `name`); `run` trains or samples,
    saving through `ctx`. Data a phase reads comes from zero-argument callables (`lambda: pairs`), called
    when the phase starts: nothing is built for a phase a resumed run skips."""

    def state_template(self, ctx: RunContext) -> Any:
        """A pytree shaped like the phase's saved in-progress state (arrays or ShapeDtypeStructs); none by default."""
        return {}

    def run(self, ctx: RunContext, state: Any | None, cursor: dict | None) -> None:
        """Run from the start (state None) or from a restored `state` and `cursor`."""
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
    """Raised by `RunContext.log` at `stop_at_step` (tests use it to emulate a kill)."""


@dataclasses.dataclass
class RunContext:
    """What phases share: workdir, tokenizer, model, params, metrics, checkpoints, the device mesh."""

    workdir: str
    seed: int
    model_cfg: ModelConfig
    ckpt: Checkpointer
    metrics: MetricsWriter
    checkpoint_every: int
    phase_index: int = 0
    phase_name: str = ""
    global_step: int = 0
    saves: int = 0
    tokenizer: Tokenizer | None = None
    params: Any = None
    results: dict = dataclasses.field(default_factory=dict)
    stop_at_step: int | None = None
    mesh: Mesh = dataclasses.field(default_factory=sharding.single_device_mesh)

    @property
    def tokenizer_path(self) -> str:
        return os.path.join(self.workdir, "tokenizer.model")

    @property
    def model(self) -> Transformer:
        return Transformer(self.model_cfg)

    @property
    def phase_seed(self) -> int:
        """An int seed of (run seed, phase name): adding or removing other phases leaves it unchanged."""
        return zlib.crc32(f"{self.seed}/{self.phase_name}".encode()) & 0x7FFFFFFF

    def rng(self, step: int = 0) -> jax.Array:
        """The random key of this phase's `step`: a function of (seed, phase name, step) only."""
        return jax.random.fold_in(jax.random.key(self.phase_seed), step)

    def init_params(self) -> Any:
        """Fresh params of the model, created sharded on the mesh (rng of this phase's step 0)."""
        return sharding.sharded_init(self.model_cfg, self.rng(), self.mesh)

    def place(self, tree: Any) -> Any:
        """Params or a train state moved onto the mesh (params sharded by the rule table, the rest replicated)."""
        return sharding.place(tree, self.mesh, self.model_cfg)

    def set_tokenizer(self, tok: Tokenizer) -> None:
        """Adopt `tok` and size the model's vocabulary to it."""
        self.tokenizer = tok
        self.model_cfg = dataclasses.replace(self.model_cfg, vocab_size=tok.vocab_size)

    def log(self, scalars: dict[str, float], step_done: bool = True) -> None:
        """Write metrics at the current global step (prefixed by the phase name), then advance it."""
        self.metrics.write(self.global_step, {f"{self.phase_name}/{k}": float(v) for k, v in scalars.items()})
        if step_done:
            self.advance()

    def advance(self) -> None:
        """Count one training step done."""
        self.global_step += 1
        if self.stop_at_step is not None and self.global_step >= self.stop_at_step:
            raise StopRun(f"stopped at global step {self.global_step}")

    def save(self, state: Any, cursor: dict, done: bool = False) -> None:
        """Checkpoint params and the phase state with its cursor (done: the phase finished)."""
        self.saves += 1
        meta = {"phase_index": self.phase_index, "phase_name": self.phase_name, "done": done,
                "global_step": self.global_step, "cursor": cursor, "results": encode_nonfinite(self.results),
                "vocab_size": self.model_cfg.vocab_size, "model": self.model_cfg.to_dict()}
        tree = {"params": {} if self.params is None else self.params, "state": {} if state is None else state,
                "global_step": jax.numpy.asarray(self.global_step)}
        self.ckpt.save(self.saves, tree, meta, force=True)

    def maybe_save(self, step: int, state: Any, cursor: dict) -> None:
        if step % self.checkpoint_every == 0:
            self.save(state, cursor)


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
        self.mesh = (sharding.single_device_mesh() if mesh is None
                     else mesh if isinstance(mesh, Mesh) else sharding.make_mesh(mesh))

    def run(self, stop_at_step: int | None = None) -> RunContext:
        """Run every phase not yet done; returns the context (params, tokenizer, results)."""
        os.makedirs(self.workdir, exist_ok=True)
        for name, text in self.files.items():
            atomic_write(os.path.join(self.workdir, name), text)
        ckpt = Checkpointer(os.path.join(self.workdir, "checkpoints"), keep_last=self.keep_last)
        meta = ckpt.read_meta() if ckpt.latest_step() is not None else None
        metrics = MetricsWriter(self.workdir, resume_step=None if meta is None else meta["global_step"] - 1)
        ctx = RunContext(self.workdir, self.seed, self.model_cfg, ckpt, metrics, self.checkpoint_every,
                         stop_at_step=stop_at_step, mesh=self.mesh)
        try:
            with sharding.use_mesh(self.mesh):
                start, state, cursor = self._resume(ctx, meta)
                for i in range(start, len(self.phases)):
                    phase = self.phases[i]
                    ctx.phase_index, ctx.phase_name = i, phase.name
                    if ctx.params is not None:  # params from outside (InitFromPhase, a user phase) onto the mesh
                        ctx.params = ctx.place(ctx.params)
                    phase.run(ctx, state if i == start else None, cursor if i == start else None)
                    if ctx.params is not None:  # sharded before saving: host arrays would be copied to every device
                        ctx.params = ctx.place(ctx.params)
                    ctx.save(None, {}, done=True)
        finally:
            metrics.close()
            ckpt.close()
        return ctx

    def _resume(self, ctx: RunContext, meta: dict | None) -> tuple[int, Any, dict | None]:
        if meta is None:
            return 0, None, None
        ctx.saves = ctx.ckpt.latest_step()
        ctx.global_step, ctx.results = meta["global_step"], decode_nonfinite(meta["results"])
        if os.path.exists(ctx.tokenizer_path):
            ctx.set_tokenizer(Tokenizer.load(ctx.tokenizer_path))
        elif os.path.exists(os.path.join(ctx.workdir, "tokenizer.json")):  # copied by InitFromPhase
            from r1jax.hf_tokenizer import HFTokenizer

            ctx.tokenizer = HFTokenizer.load(ctx.workdir)
        if meta["vocab_size"] != ctx.model_cfg.vocab_size:
            raise ValueError(f"checkpoint in {self.workdir} has vocab_size {meta['vocab_size']}, "
                             f"the run's model has {ctx.model_cfg.vocab_size}")
        index, done = meta["phase_index"], meta["done"]
        if self.phases[index].name != meta["phase_name"]:
            raise ValueError(f"checkpoint in {self.workdir} is from phase {meta['phase_name']!r} at index {index}, "
                             f"but this run's phase {index} is {self.phases[index].name!r}")
        ctx.phase_index, ctx.phase_name = index, meta["phase_name"]
        has_params = self._saved_params(ctx)
        target = {"params": abstract_params(ctx.model_cfg) if has_params else {},
                  "state": {} if done else getattr(self.phases[index], "state_template", lambda c: {})(ctx),
                  "global_step": jax.ShapeDtypeStruct((), jax.numpy.int32)}
        saved, _ = ctx.ckpt.restore(target=sharding.abstract_with_shardings(target, ctx.mesh, ctx.model_cfg))
        ctx.params = saved["params"] if has_params else None
        if done:
            return index + 1, None, None
        return index, saved["state"], meta["cursor"]

    @staticmethod
    def _saved_params(ctx: RunContext) -> bool:
        """Whether the latest checkpoint holds model params (phases before the model have none)."""
        return any(p.startswith("params/") for p in ctx.ckpt.leaf_paths())
