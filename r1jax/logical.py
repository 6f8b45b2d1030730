"""The logical-axis rule table and activation constraints: jax only, so r1jax.model imports it at no cost.

Arrays name their dimensions with logical axes ('batch', 'embed', 'heads', …); RULES says which
mesh axes each may be split over, in priority order (the first free rule wins per dimension). Rules
naming mesh axes absent from the mesh are dropped, and an axis whose size does not divide the
dimension is skipped (that dimension falls back to fewer axes or replication). r1jax.sharding
builds meshes and placements on top of this table; the model constrains its activations with
`constrain` under the current mesh (a no-op without one).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
from jax.sharding import AxisType, Mesh, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")  # every name a mesh axis may have, in canonical order
DEFAULT_AXES = {1: ("fsdp",), 2: ("data", "fsdp"), 3: ("data", "fsdp", "expert"), 4: MESH_AXES}
BATCH_AXES = ("data", "fsdp", "expert")  # the data-like axes: a batch's leading axis is split over these

# The one table: (logical axis name, mesh axes it may be split over). Order is priority.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", BATCH_AXES),
    ("expert", ("expert",)),
    ("vocab", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("mlp", ("tensor",)),
    ("embed", ("fsdp",)),
    # fallbacks when "embed" is absent or not divisible (MLA up-projections, odd sizes)
    ("mlp", ("fsdp",)),
    ("kv_lora", ("fsdp",)),
    ("q_lora", ("fsdp",)),
    ("heads", ("fsdp",)),
    ("vocab", ("fsdp",)),
)
# never sharded: length, cache_length, head_dim, norm, layers (a scanned stack)
Rules = tuple[tuple[str, tuple[str, ...]], ...]


def param_rules(over_data: bool = False) -> Rules:
    """The table for params: RULES, or with `over_data` every 'fsdp' rule extended by 'data' (ZeRO-3
    over the whole mesh, ModelConfig.params_over_data): a dimension that fsdp × data does not divide
    keeps fsdp alone. Params carry no 'batch' axis, so 'data' is free for them."""
    if not over_data:
        return RULES
    return tuple((logical, axes + ("data",) if "fsdp" in axes and logical != "batch" else axes)
                 for logical, axes in RULES)


def logical_rules(mesh: Mesh) -> tuple[tuple[str, str | tuple[str, ...]], ...]:
    """RULES restricted to the mesh's axes, in flax's `nn.logical_axis_rules` form (for activations)."""
    rules = []
    for logical, axes in RULES:
        present = tuple(a for a in axes if a in mesh.shape and mesh.shape[a] > 1)
        if present:
            rules.append((logical, present if len(present) > 1 else present[0]))
    return tuple(rules)


def logical_to_spec(names: Sequence[str | None], mesh: Mesh | dict[str, int],
                    shape: Sequence[int] | None = None, rules: Rules = RULES) -> PartitionSpec:
    """PartitionSpec for an array with logical axis `names`; with `shape`, only axes that divide each dimension.

    `mesh` may be a Mesh, an AbstractMesh or a dict {axis name: size}; `rules` defaults to RULES.
    """
    sizes = dict(mesh) if isinstance(mesh, dict) else dict(mesh.shape)
    names = tuple(names)
    if shape is not None and len(shape) != len(names):
        raise ValueError(f"logical axes {names} do not match shape {tuple(shape)}")
    assigned: list[tuple[str, ...] | None] = [None] * len(names)
    used: set[str] = set()
    for logical, axes in rules:
        if logical not in names or assigned[names.index(logical)] is not None:
            continue
        dim = names.index(logical)
        chosen: list[str] = []
        for axis in axes:
            size = sizes.get(axis, 1)
            if axis in used or size == 1:
                continue
            if shape is not None and shape[dim] % (math.prod(sizes[a] for a in chosen) * size):
                continue
            chosen.append(axis)
        if chosen:
            assigned[dim] = tuple(chosen)
            used.update(chosen)
    return PartitionSpec(*(None if a is None else a[0] if len(a) == 1 else a for a in assigned))


def auto_axes() -> dict[str, int]:
    """The current mesh's axes that are not Manual (inside shard_map), with their sizes; {} without a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return {}
    return {n: s for n, s, t in zip(mesh.axis_names, mesh.axis_sizes, mesh.axis_types) if t != AxisType.Manual}


def _axes(name: str, size: int | None, auto: dict[str, int]) -> tuple[str, ...]:
    spec = logical_to_spec((name,), auto, None if size is None else (size,))[0]
    return () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)


def axes_of(name: str, size: int | None = None) -> tuple[str, ...]:
    """The current mesh's axes that `constrain` splits a dimension named `name` (of `size`, if given) over;
    () without a mesh. For the specs of a jax.shard_map that must agree with the constraints."""
    return _axes(name, size, auto_axes())


def split_ways(name: str, size: int) -> int:
    """Into how many pieces `constrain` splits a dimension of `size` named `name` under the current mesh."""
    auto = auto_axes()
    return math.prod(auto[a] for a in _axes(name, size, auto))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation by logical names under the current mesh; a no-op without one.

    Shape-aware (axes that do not divide a dimension are skipped) and blind to Manual axes (inside shard_map).
    """
    auto = auto_axes()
    if not auto or all(s == 1 for s in auto.values()):
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, auto, x.shape))
