"""Checkpoints: a small wrapper over orbax `CheckpointManager` for the phase runner.

Each step directory holds three items, committed together:
  state  the array pytree (orbax StandardSave: sharded, multi-host aware);
  meta   the caller's JSON dict (phase name and index, data cursor, seeds, config);
  info   r1jax's own JSON (which leaves were typed PRNG keys, and their impl).

Atomicity: orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames
it to `<step>` only when every item is written, so a save killed mid-way leaves
a tmp directory that `latest_step`/`restore` ignore and the next `Checkpointer`
on the directory deletes.

Multi-host: every process must call `save`/`restore` with the same step and
pytree; orbax writes each process's shards of a `jax.Array` and only the
primary process (index 0) writes the JSON items and renames the directory.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp



def path_str(path) -> str:
    """'a/0/b' for a jax key path (dict keys, sequence indices, attributes): jax's keystr, simple form."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _is_key(x) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_array(path, x):
    """One state leaf as something orbax saves and restores exactly."""
    if _is_key(x):
        return jax.random.key_data(x)
    if isinstance(x, jax.Array):
        return x
    if isinstance(x, (np.ndarray, np.generic, bool, int, float)):
        try:
            # numpy scalars cannot be restored by orbax; 0-d jax arrays can.
            return jnp.asarray(x)
        except OverflowError as e:
            raise TypeError(f"state leaf {path_str(path)!r}={x!r} does not fit a jax "
                            f"array ({e}); store it in meta instead") from e
    raise TypeError(f"state leaf {path_str(path)!r} has type {type(x).__name__}; "
                    "only arrays and numeric scalars go in state, the rest in meta")


def _key_data_spec(path, x):
    """Abstract key_data for a typed-key target leaf, keeping a NamedSharding."""
    out = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = tuple(sharding.spec) + (None,) * (out.ndim - len(sharding.spec))
        sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
    elif sharding is not None and not isinstance(sharding, jax.sharding.SingleDeviceSharding):
        raise TypeError(f"target PRNG key {path_str(path)!r}: use a NamedSharding "
                        f"or no sharding, not {type(sharding).__name__}")
    return jax.ShapeDtypeStruct(out.shape, out.dtype, sharding=sharding)


def _to_abstract(path, x):
    """One target leaf as a ShapeDtypeStruct (with sharding when it has one)."""
    if _is_key(x):
        return _key_data_spec(path, x)
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if not isinstance(x, jax.Array):
        x = _to_array(path, x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


class Checkpointer:
    """Save/restore `(state pytree, meta dict)` per step under one directory.

    Use as a context manager or call `close()`; with `async_save=True`, `save`
    returns once arrays are copied off device and writing goes on in the
    background (`wait()` blocks until it is committed).
    """

    def __init__(self, directory: str | os.PathLike, keep_last: int | None = None,
                 async_save: bool = True):
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep_last,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # remove saves that a crash left uncommitted
            create=True,
        )
        # Handlers up front, so a fresh manager can read metadata before any save.
        handlers = {"state": ocp.StandardCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler(),
                    "info": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_handlers=handlers)

    def all_steps(self) -> list[int]:
        """Committed steps, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """Newest committed step, or None when there is none."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict | None = None,
             force: bool = False) -> None:
        """Save `state` (array pytree) and `meta` (JSON dict) as `step`.

        Steps must increase; `force=True` first deletes committed steps >= `step`
        (rewinding after a resume from an older checkpoint).
        """
        step = int(step)
        meta = {} if meta is None else meta
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"meta for step {step} in {self.directory} is not "
                            f"strict JSON: {e}") from e
        keys = {}

        def convert(path, x):
            if _is_key(x):
                keys[path_str(path)] = str(jax.random.key_impl(x))
            return _to_array(path, x)

        arrays = jax.tree_util.tree_map_with_path(convert, state)
        latest = self.latest_step()
        if latest is not None and step <= latest:
            if not force:
                raise ValueError(f"step {step} <= latest checkpoint {latest} in "
                                 f"{self.directory}; pass force=True to replace "
                                 "checkpoints at steps >= this one")
            self._manager.wait_until_finished()
            for old in self.all_steps():
                if old >= step:
                    self._manager.delete(old)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(arrays),
            meta=ocp.args.JsonSave(meta),
            info=ocp.args.JsonSave({"prng_keys": keys}),
        )
        if not self._manager.save(step, args=args, force=True):
            raise RuntimeError(f"orbax declined to save step {step} in {self.directory}")

    def _check_target(self, step: int, abstract: Any) -> None:
        """Raise naming each path where `abstract` and the checkpoint differ."""
        stored = self._manager.item_metadata(step)["state"]
        stored = getattr(stored, "tree", stored)
        have = {path_str(p): m for p, m in jax.tree_util.tree_flatten_with_path(stored)[0]}
        want = {path_str(p): a for p, a in jax.tree_util.tree_flatten_with_path(abstract)[0]}
        problems = []
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        if missing:
            problems.append(f"in target but not in checkpoint: {missing}")
        if extra:
            problems.append(f"in checkpoint but not in target: {extra}")
        for name in sorted(set(have) & set(want)):
            if tuple(have[name].shape) != tuple(want[name].shape):
                problems.append(f"{name!r}: checkpoint shape {tuple(have[name].shape)}, "
                                f"target shape {tuple(want[name].shape)}")
        if problems:
            raise ValueError(f"checkpoint step {step} in {self.directory} does not "
                             "match target: " + "; ".join(problems))

    def restore(self, step: int | None = None, target: Any = None) -> tuple[Any, dict]:
        """Return `(state, meta)` of `step` (default: latest committed step).

        `target` is a pytree like the saved state, of arrays or
        `jax.ShapeDtypeStruct`s: the result takes its tree structure, dtypes and
        shardings. Without a target the state comes back as nested dicts/lists
        of arrays laid out as saved.
        """
        self._manager.wait_until_finished()
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no committed checkpoint in {self.directory} "
                                        "(directory empty or missing)")
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in "
                                    f"{self.directory}; committed steps: {steps}")
        abstract = None
        if target is not None:
            abstract = jax.tree_util.tree_map_with_path(_to_abstract, target)
            self._check_target(step, abstract)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            meta=ocp.args.JsonRestore(),
            info=ocp.args.JsonRestore(),
        ))
        keys = (restored.info or {}).get("prng_keys", {})

        def wrap(path, x, like=None):
            name = path_str(path)
            if like is not None and _is_key(like) and name not in keys:
                raise ValueError(f"target leaf {name!r} is a PRNG key but checkpoint "
                                 f"step {step} in {self.directory} saved plain data")
            if name in keys and (like is None or _is_key(like)):
                return jax.random.wrap_key_data(x, impl=keys[name])
            return x

        if target is None:
            state = jax.tree_util.tree_map_with_path(wrap, restored.state)
        else:
            state = jax.tree_util.tree_map_with_path(wrap, restored.state, target)
        return state, dict(restored.meta or {})

    def leaf_paths(self, step: int | None = None) -> list[str]:
        """Paths ('params/embed/embedding', …) of the arrays saved at `step` (default: latest), unread."""
        step = self.latest_step() if step is None else step
        stored = self._manager.item_metadata(step)["state"]
        stored = getattr(stored, "tree", stored)
        return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(stored)[0]]

    def read_meta(self, step: int | None = None) -> dict:
        """The JSON meta of `step` (default: latest) without reading any array."""
        self._manager.wait_until_finished()
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no committed checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta or {})

    def wait(self) -> None:
        """Block until every pending save is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release orbax's resources."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
