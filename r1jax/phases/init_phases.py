"""Start a run from existing weights: another r1jax run's workdir, or a local Hugging Face folder.

    cfg = source_model_config("runs/r1_zero_tiny")          # the Runner's model config must match the source
    Runner(workdir, cfg, [InitFromPhase("runs/r1_zero_tiny"), EvalPhase(...), ...])

An r1jax workdir gives the params of its latest checkpoint and its SentencePiece
tokenizer; a Hugging Face folder (config.json + safetensors + tokenizer.json)
gives its weights through r1jax.hf and its tokenizer through the `tokenizers`
package. The tokenizer files are copied into the run's workdir, so a resumed run
reloads the same tokenizer without the source.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.checkpoint import Checkpointer
from r1jax.config import EXECUTION_FIELDS, Execution, ModelConfig
from r1jax.model.transformer import convert_layout
from r1jax.phases.runner import Carry, Phase, RunEnv

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")  # the last: stop ids


def is_hf_folder(path: str) -> bool:
    """Whether `path` looks like a Hugging Face model folder (has config.json)."""
    return os.path.isfile(os.path.join(path, "config.json"))


def _checkpoints(workdir: str) -> Checkpointer:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir} is neither an r1jax run (no checkpoints/ inside) "
                                "nor a Hugging Face folder (no config.json inside)")
    return Checkpointer(directory)


def source_model_config(source: str, execution: Execution | None = None) -> ModelConfig:
    """The ModelConfig of an r1jax workdir's latest checkpoint or of a Hugging Face folder's config.json,
    with `execution`'s settings (dtype, remat, scan_layers, …) applied."""
    cfg = _stored_model_config(source)
    return cfg if execution is None else execution.apply(cfg)


def _stored_model_config(source: str) -> ModelConfig:
    if not os.path.exists(source):
        raise FileNotFoundError(f"init source {source!r} does not exist")
    if is_hf_folder(source):
        from r1jax.hf_config import config_from_hf

        path = os.path.join(source, "config.json")
        try:
            with open(path) as f:
                return config_from_hf(json.load(f))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    with _checkpoints(source) as ckpt:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"{source}/checkpoints holds no committed checkpoint")
        meta = ckpt.read_meta()
    if "model" not in meta:
        raise ValueError(f"{source}: its checkpoint records no model config (written by an older r1jax?)")
    return ModelConfig.from_dict(meta["model"])


def load_source(source: str, execution: Execution | None = None) -> tuple[ModelConfig, Any, Any]:
    """(model config, params, tokenizer) of an r1jax workdir or a Hugging Face folder; the params
    in the config's param_dtype and layer layout once `execution` is applied."""
    cfg = source_model_config(source, execution)
    if is_hf_folder(source):
        from r1jax.hf import load_hf
        from r1jax.hf_tokenizer import HFTokenizer

        _, params = load_hf(source)
        tok = HFTokenizer.load(source)
    else:
        from r1jax.tokenizer import Tokenizer

        with _checkpoints(source) as ckpt:
            if not any(p.startswith("params/") for p in ckpt.leaf_paths()):
                raise ValueError(f"{source}: its latest checkpoint holds no params (the run stopped before training)")
            saved, _ = ckpt.restore()
        params = saved["params"]
        tok = Tokenizer.load(os.path.join(source, "tokenizer.model"))
    def cast(path, x):  # floating leaves in cfg.param_dtype, except the MoE balancing bias (always f32)
        x = np.asarray(x)  # on the host: jnp.asarray under a mesh would put a whole copy on every device
        keep = not jnp.issubdtype(x.dtype, jnp.floating) or getattr(path[-1], "key", None) == "router_bias"
        return x if keep else x.astype(jnp.dtype(cfg.param_dtype))

    return cfg, jax.tree_util.tree_map_with_path(cast, convert_layout(params, cfg)), tok


def _config_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
    """Fields where the two models compute different functions (how they run, EXECUTION_FIELDS, may differ)."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da.get(k)!r} vs {db.get(k)!r}" for k in sorted(set(da) | set(db))
            if da.get(k) != db.get(k) and k not in EXECUTION_FIELDS]


@dataclasses.dataclass(frozen=True)
class InitFromPhase(Phase):
    """Set the run's params and tokenizer from `source` (an r1jax workdir or a Hugging Face folder).

    `tokenizer_only`: adopt the source's tokenizer but keep the run's own model
    (a student that shares its teacher's vocabulary).
    """

    source: str
    name: str = "init"
    tokenizer_only: bool = False
    execution: Execution | None = None

    def run(self, env: RunEnv, carry: Carry, state: Any, cursor: dict | None) -> Carry:
        if self.tokenizer_only:
            self._copy_tokenizer(env)
            if is_hf_folder(self.source):
                from r1jax.hf_tokenizer import HFTokenizer

                return carry.replace(tokenizer=HFTokenizer.load(self.source))
            from r1jax.tokenizer import Tokenizer

            return carry.with_tokenizer(Tokenizer.load(env.tokenizer_path))
        cfg, params, tok = load_source(self.source, self.execution)
        diff = _config_differences(cfg, carry.model_cfg)
        if diff:
            raise ValueError(f"phase {self.name!r}: the run's model config differs from {self.source}'s "
                             f"(build the Runner with source_model_config): {'; '.join(diff)}")
        self._copy_tokenizer(env)
        return carry.replace(tokenizer=tok, params=params).with_result(
            self.name, {"source": os.path.abspath(self.source),
                        "params": int(sum(x.size for x in jax.tree.leaves(params)))})

    def _copy_tokenizer(self, env: RunEnv) -> None:
        """Copy the source's tokenizer files into the workdir (a resumed run reloads them from there)."""
        if is_hf_folder(self.source):
            for name in HF_TOKENIZER_FILES:
                if os.path.exists(os.path.join(self.source, name)):
                    shutil.copyfile(os.path.join(self.source, name), os.path.join(env.workdir, name))
            return
        path = os.path.join(self.source, "tokenizer.model")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: {self.source} is not a finished r1jax run")
        shutil.copyfile(path, env.tokenizer_path)


def snapshot_dir(workdir: str, tag: str) -> str:
    """Where SnapshotPhase(tag) keeps its params inside a run's workdir."""
    return os.path.join(workdir, "snapshots", tag)


@dataclasses.dataclass(frozen=True)
class SnapshotPhase(Phase):
    """Keep a copy of the current params under `workdir/snapshots/<tag>` for a later RestorePhase.

    Written as an orbax checkpoint (committed by rename); running it again after a
    resume rewrites the same params.
    """

    tag: str
    name: str = ""

    def __post_init__(self):
        if not self.tag or os.sep in self.tag:
            raise ValueError(f"snapshot tag {self.tag!r} must be a non-empty name without {os.sep!r}")
        if not self.name:
            object.__setattr__(self, "name", f"snapshot_{self.tag}")

    def run(self, env: RunEnv, carry: Carry, state: Any, cursor: dict | None) -> Carry:
        if carry.params is None:
            raise ValueError(f"phase {self.name!r}: there are no params to snapshot yet (put it after training)")
        directory = snapshot_dir(env.workdir, self.tag)
        with Checkpointer(directory, keep_last=1, async_save=False) as ckpt:
            ckpt.save(0, {"params": carry.params}, {"model": carry.model_cfg.to_dict(),
                                                    "global_step": env.global_step}, force=True)
        return carry.with_result(self.name, {"global_step": env.global_step}, file=directory)


@dataclasses.dataclass(frozen=True)
class RestorePhase(Phase):
    """Replace the current params with those SnapshotPhase(tag) kept earlier in the same run.

    DeepSeek-R1 §2.3.3: the rejection-sampled SFT starts again from the base model,
    not from the RL policy that produced the data.
    """

    tag: str
    name: str = ""

    def __post_init__(self):
        if not self.name:
            object.__setattr__(self, "name", f"restore_{self.tag}")

    def run(self, env: RunEnv, carry: Carry, state: Any, cursor: dict | None) -> Carry:
        from r1jax import sharding
        from r1jax.phases.runner import abstract_params

        directory = snapshot_dir(env.workdir, self.tag)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"phase {self.name!r}: no snapshot {self.tag!r} in {env.workdir} "
                                    f"(a SnapshotPhase({self.tag!r}) must run earlier in this run)")
        with Checkpointer(directory) as ckpt:
            if ckpt.latest_step() is None:
                raise FileNotFoundError(f"phase {self.name!r}: {directory} holds no committed snapshot")
            diff = _config_differences(ModelConfig.from_dict(ckpt.read_meta()["model"]), carry.model_cfg)
            if diff:
                raise ValueError(f"phase {self.name!r}: snapshot {self.tag!r} is of another model: {'; '.join(diff)}")
            target = sharding.abstract_with_shardings({"params": abstract_params(carry.model_cfg)}, env.mesh,
                                                      carry.model_cfg)
            saved, meta = ckpt.restore(target=target)
        return carry.replace(params=saved["params"]).with_result(self.name,
                                                                 {"from_global_step": meta["global_step"]})
