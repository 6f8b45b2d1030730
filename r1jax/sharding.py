"""Device meshes from strings, one logical-axis rule table, and sharded placement of params, state, caches, batches.

Mesh specs (`--mesh`), sizes listed outermost first (the last axis holds adjacent devices: one host's
chips, one node's GPUs):
  "8x8", "-1x8", "2x4", "8"    unnamed: default names by rank (below); one −1 fills from the device count.
  "fsdp=8,expert=8"            named: any of data, fsdp, expert, tensor, in mesh order; one may be −1.
  None                         all devices on one "fsdp" axis (same as "-1").
Default names by rank: 1 → (fsdp,); 2 → (data, fsdp); 3 → (data, fsdp, expert); 4 → (data, fsdp,
expert, tensor). So "8x8" is hybrid FSDP: params sharded 8 ways within a host/node, replicated over 8.

What each mesh axis shards (RULES, in priority order; the first free rule wins per dimension):
  data    batch only (params replicated): plain data parallelism; with ModelConfig.params_over_data
          also the params' fsdp dimensions (ZeRO-3 over data × fsdp, `logical.param_rules`).
  fsdp    batch, and dense weights on their "embed" dimension (else mlp/heads/latent dims): ZeRO-3.
  expert  batch, and MoE expert weights on their "expert" dimension (expert parallelism).
  tensor  heads, kv_heads, mlp, vocab (Megatron-style); off by default.
Rules naming mesh axes absent from the mesh are dropped. For arrays placed here (params, optimizer
state, caches, batches) an axis whose size does not divide the dimension is skipped (that dimension
falls back to fewer axes or replication), so tiny models run on any mesh. The model's activation
constraints (`r1jax.model.layers.constrain` → `constrain` here) read the same table under the
current mesh, shape-aware too, and skip Manual axes (inside shard_map).

    mesh = make_mesh("2x4")
    with use_mesh(mesh):                        # jax.set_mesh + the table as flax logical axis rules
        params = sharded_init(cfg, rng, mesh)   # never materialized whole on any host
        state = place(init_train_state(params, tx), mesh, cfg)   # Adam moments follow their params
        batch = shard_batch(batch_np, mesh)     # leading axis over (data, fsdp, expert)
        step = jax.jit(step_fn, out_shardings=(tree_shardings(state, mesh, cfg=cfg), None))
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from r1jax.config import ModelConfig
from r1jax.errors import UsageError
from r1jax.logical import (BATCH_AXES, DEFAULT_AXES, MESH_AXES, RULES, constrain, logical_rules, logical_to_spec,
                           param_rules)
from r1jax.model import Cache, init_params, map_cache, param_logical_axes

__all__ = ["BATCH_AXES", "DEFAULT_AXES", "MESH_AXES", "RULES", "constrain", "logical_rules", "logical_to_spec"]



def parse_mesh(spec: str | None, num_devices: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(axis sizes, axis names) of a mesh spec over `num_devices` devices; UsageError naming the spec."""
    if spec is None or not spec.strip():
        return (num_devices,), DEFAULT_AXES[1]
    text = spec.strip()
    if "=" in text:
        names, sizes = [], []
        for part in text.split(","):
            name, sep, size = part.partition("=")
            if not sep:
                raise UsageError(f"mesh {spec!r}: {part!r} is not name=size (write all axes named or none)")
            names.append(name.strip())
            sizes.append(size.strip())
        unknown = [n for n in names if n not in MESH_AXES]
        if unknown:
            raise UsageError(f"mesh {spec!r}: unknown axis name(s) {unknown}; known: {list(MESH_AXES)}")
        if len(set(names)) != len(names):
            raise UsageError(f"mesh {spec!r}: an axis is named twice")
    else:
        sizes = [s.strip() for s in text.lower().split("x")]
        if len(sizes) not in DEFAULT_AXES:
            raise UsageError(f"mesh {spec!r}: {len(sizes)} axes; unnamed meshes have 1 to {len(DEFAULT_AXES)} "
                             f"(name them, e.g. 'data=2,fsdp=4')")
        names = list(DEFAULT_AXES[len(sizes)])
    try:
        shape = [int(s) for s in sizes]
    except ValueError:
        raise UsageError(f"mesh {spec!r}: axis sizes must be integers (or one -1), got {sizes}") from None
    if any(s == 0 or s < -1 for s in shape):
        raise UsageError(f"mesh {spec!r}: axis sizes must be positive (or one -1), got {shape}")
    if shape.count(-1) > 1:
        raise UsageError(f"mesh {spec!r}: at most one axis may be -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise UsageError(f"mesh {spec!r}: {num_devices} devices do not divide by the fixed sizes' product {known}")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        hint = ""
        if math.prod(shape) > num_devices and jax.default_backend() == "cpu":
            hint = (f"; on CPU set JAX_NUM_CPU_DEVICES={math.prod(shape)} (or XLA_FLAGS="
                    f"--xla_force_host_platform_device_count={math.prod(shape)}) before starting")
        raise UsageError(f"mesh {spec!r} needs {math.prod(shape)} devices ({dict(zip(names, shape))}) "
                         f"but {num_devices} are available{hint}")
    return tuple(shape), tuple(names)


def make_mesh(spec: str | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with Auto axis types from a spec such as "8x8" over `devices` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    shape, names = parse_mesh(spec, len(devices))
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape), devices=devices)


def single_device_mesh() -> Mesh:
    """A one-device mesh (the default device): the same code path as a real mesh, without sharding."""
    return make_mesh("1", devices=jax.devices()[:1])


def named_sharding(names: Sequence[str | None], mesh: Mesh, shape: Sequence[int] | None = None,
                   rules: tuple = RULES) -> NamedSharding:
    """NamedSharding of `logical_to_spec`."""
    return NamedSharding(mesh, logical_to_spec(names, mesh, shape, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated over the mesh."""
    return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None) -> Iterator[Mesh | None]:
    """Enter the mesh (jax.set_mesh) and its flax logical axis rules together; None is a no-op."""
    if mesh is None:
        yield None
        return
    with jax.set_mesh(mesh), nn.logical_axis_rules(logical_rules(mesh)):
        yield mesh


@functools.lru_cache(maxsize=16)
def _abstract_params(cfg: ModelConfig) -> Any:
    return jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))


@functools.lru_cache(maxsize=16)
def param_shardings(cfg: ModelConfig, mesh: Mesh) -> Any:
    """NamedSharding per param leaf, from `r1jax.model.param_logical_axes`, the leaf shapes and
    `param_rules(cfg.params_over_data)`."""
    rules = param_rules(cfg.params_over_data)
    return jax.tree.map(lambda names, leaf: named_sharding(tuple(names), mesh, leaf.shape, rules),
                        param_logical_axes(cfg), _abstract_params(cfg),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def sharded_init(cfg: ModelConfig, rng: jax.Array, mesh: Mesh) -> Any:
    """Fresh params created directly in their shards (jit with out_shardings): no host holds them whole."""
    shardings = param_shardings(cfg, mesh)
    with use_mesh(mesh):
        return jax.jit(lambda r: init_params(cfg, r), out_shardings=shardings)(rng)


def shard_params(params: Any, mesh: Mesh, cfg: ModelConfig) -> Any:
    """Existing params (host or device arrays) moved onto their shardings."""
    return jax.device_put(params, param_shardings(cfg, mesh))


def _path_keys(path: tuple) -> tuple[str, ...]:
    """One string per key of a jax key path ('params', 'layers_0', '0', …): suffixes of it name a param."""
    return tuple(jax.tree_util.keystr((k,), simple=True) for k in path)


def tree_shardings(tree: Any, mesh: Mesh, cfg: ModelConfig | None = None, params: Any = None) -> Any:
    """Shardings for any pytree holding params (train state, optimizer state, EMA, reference params).

    A leaf whose key path ends with a param's key path and has that param's shape is placed like the
    param (so Adam's mu/nu follow their params); every other leaf is replicated. The params come from
    `cfg` (their logical axes) or from `params`, a tree of sharded arrays.
    """
    if (cfg is None) == (params is None):
        raise ValueError("tree_shardings: pass exactly one of cfg or params")
    if cfg is not None:
        by_path = jax.tree_util.tree_flatten_with_path(param_shardings(cfg, mesh))[0]
        shapes = jax.tree.leaves(_abstract_params(cfg))
        table = {_path_keys(p): (shape.shape, s) for (p, s), shape in zip(by_path, shapes)}
    else:
        table = {_path_keys(p): (x.shape, x.sharding) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    longest = max((len(k) for k in table), default=0)

    def leaf_sharding(path, leaf):
        keys = _path_keys(path)
        for n in range(min(longest, len(keys)), 0, -1):
            hit = table.get(keys[-n:])
            if hit is not None and tuple(hit[0]) == tuple(np.shape(leaf)):
                return hit[1] if isinstance(hit[1], NamedSharding) and hit[1].mesh == mesh else replicated(mesh)
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(leaf_sharding, tree)


def place(tree: Any, mesh: Mesh, cfg: ModelConfig) -> Any:
    """Arrays of a params-holding tree (params, train state) moved onto `tree_shardings` (no-op if already there)."""
    return jax.device_put(tree, tree_shardings(tree, mesh, cfg=cfg))


def abstract_with_shardings(tree: Any, mesh: Mesh, cfg: ModelConfig) -> Any:
    """ShapeDtypeStructs of `tree` carrying `tree_shardings` (a checkpoint restore target on the mesh)."""
    shardings = tree_shardings(tree, mesh, cfg=cfg)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


def cache_shardings(cache: Cache, mesh: Mesh) -> Cache:
    """Shardings of a decode Cache (or its abstract eval_shape), leaf by leaf from `map_cache`'s logical axes."""
    return map_cache(cache, lambda x, names: named_sharding(names, mesh, x.shape))


def data_devices(mesh: Mesh) -> int:
    """How many ways a batch's leading axis can split: the product of the mesh's data-like axes."""
    return math.prod(mesh.shape.get(a, 1) for a in BATCH_AXES)


def check_rows(rows: int, mesh: Mesh | None, what: str, fix: str) -> None:
    """UsageError unless `rows` split evenly over the mesh's data-like axes (else every device would not
    hold its own rows: XLA replicates the work instead, silently)."""
    if mesh is None:
        return
    n = data_devices(mesh)
    if rows % n:
        axes = {a: mesh.shape[a] for a in BATCH_AXES if a in mesh.shape}
        raise UsageError(f"{what} has {rows} rows, which do not split over the {n} devices of the mesh's "
                         f"data-like axes {axes}: {fix}")


def batch_sharding(shape: Sequence[int], mesh: Mesh) -> NamedSharding:
    """Leading axis over the data-like axes that divide it, the rest replicated; scalars replicated."""
    if not len(shape):
        return replicated(mesh)
    return named_sharding(("batch",) + (None,) * (len(shape) - 1), mesh, shape)


def shard_batch(tree: Any, mesh: Mesh, process_local: bool = False) -> Any:
    """Host (numpy) arrays → global arrays with the leading axis split over the data-like axes.

    By default every process passes the same, whole batch. With `process_local=True` each process
    passes its own share and the global batch is the concatenation in process order.
    """
    def put(x):
        x = np.asarray(x)
        global_shape = x.shape
        if process_local and x.ndim:
            global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
        return jax.make_array_from_process_local_data(batch_sharding(global_shape, mesh), x, global_shape)
    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """Numpy copies of global arrays on every process (process_allgather where a process holds only part)."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.device_get(x)
    return jax.tree.map(get, tree)
