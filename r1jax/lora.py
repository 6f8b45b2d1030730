"""LoRA adapters as params: split from the base, merged back, switched off, folded into the kernels.

A model whose ModelConfig has `lora.rank > 0` carries, beside each adapted projection's `kernel`,
`lora_a` [in…, r] and `lora_b` [r, out…] (r1jax.model.layers.Dense); the projection computes
x·W + x·A·B·scale. An adapted routed projection of an MoE layer (`wi_gate` [X, in, out], r1jax.model.moe)
has its experts' adapters beside it as `wi_gate_lora_a` [X, in, r] and `wi_gate_lora_b` [X, r, out].
This module works on those params trees, whatever the layout (scanned stacks carry a leading layer
axis on all of them):

    params = add_adapters(cfg, base_params, rng)      # the base's weights + fresh adapters (B = 0)
    base, adapters = split(params)                     # frozen base, trainable adapters
    params = merge(base, adapters)                     # the same arrays, no copy
    ref = adapters_off(params)                         # the base's function (B = 0): the KL reference
    base_cfg, merged = fold(cfg, params)               # W + A·B·scale, no adapters: save_hf exports it

With `lora.dropout` > 0, a training step passes `dropout_key(cfg, its key)` as the "dropout" rng of
its forward pass (r1jax.train.logprobs.hidden_with_aux); every other pass runs without dropout.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from r1jax.config import LoRAConfig, ModelConfig

ADAPTER_KEYS = ("lora_a", "lora_b")
EXPERT_SUFFIXES = ("_lora_a", "_lora_b")  # a routed expert weight's adapters: `{name}_lora_a`, `{name}_lora_b`
DROPOUT_STREAM = 0x4C6F5241  # folded into a step's key for the LoRA dropout key (any constant, fixed forever)


def _is_tree(x: Any) -> bool:
    return isinstance(x, dict)


def is_adapter(key: str) -> bool:
    """Whether a params key names an adapter leaf (a Dense's `lora_a`/`lora_b`, a routed expert's `{name}_lora_a`/…)."""
    return key in ADAPTER_KEYS or key.endswith(EXPERT_SUFFIXES)


def split(params: dict) -> tuple[dict, dict]:
    """(base, adapters): two nested dicts, the adapter leaves in the second, everything else in the first."""
    base, adapters = {}, {}
    for key, value in params.items():
        if is_adapter(key):
            adapters[key] = value
        elif _is_tree(value):
            b, a = split(value)
            base[key] = b
            if a:
                adapters[key] = a
        else:
            base[key] = value
    return base, adapters


def merge(base: dict, adapters: dict) -> dict:
    """Inverse of `split`: the base tree with the adapter leaves put back (the same arrays, no copy)."""
    out = dict(base)
    for key, value in adapters.items():
        if _is_tree(value):
            if key not in out or not _is_tree(out[key]):
                raise ValueError(f"adapter subtree {key!r} has no module of that name in the base params")
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def count(adapters: dict) -> int:
    """Parameters in a tree (e.g. the trainable adapters)."""
    return sum(int(x.size) for x in jax.tree.leaves(adapters))


def add_adapters(cfg: ModelConfig, base_params: dict, rng: jax.Array) -> dict:
    """`base_params` (a model without adapters, same layout) plus fresh adapters as `cfg.lora` places them."""
    if not cfg.lora.rank:
        raise ValueError("add_adapters: cfg.lora.rank is 0 (no adapters to add)")
    return merge(base_params, init_adapters(cfg, rng))


@functools.lru_cache(maxsize=16)
def _adapter_init(cfg: ModelConfig):
    """The jitted init of `cfg`'s adapters, once per config."""
    from r1jax.model import init_params

    return jax.jit(lambda r: split(init_params(cfg, r))[1])


def init_adapters(cfg: ModelConfig, rng: jax.Array) -> dict:
    """Fresh adapters only (A kaiming-uniform, B zeros); the base's init is traced but not kept (XLA drops it)."""
    return _adapter_init(cfg)(rng)


def abstract_adapters(cfg: ModelConfig) -> dict:
    """ShapeDtypeStructs of `cfg`'s adapters (nothing allocated): a checkpoint template, a memory plan."""
    return jax.eval_shape(_adapter_init(cfg), jax.random.key(0))


def adapters_off(params: dict) -> dict:
    """The same params with every B (`lora_b`, `{name}_lora_b`) zero: the adapted model computes the base's function."""
    return {key: jnp.zeros_like(value) if key == "lora_b" or key.endswith("_lora_b")
            else adapters_off(value) if _is_tree(value) else value for key, value in params.items()}


def dropout_key(cfg: ModelConfig, key: jax.Array | int, *data: int | jax.Array) -> jax.Array | None:
    """The "dropout" rng of a training forward pass: `key` (an int: a seed) folded with each of `data` (a step,
    a micro-batch) and DROPOUT_STREAM; None when `cfg` has no LoRA dropout (nothing is traced then)."""
    if not (cfg.lora.rank and cfg.lora.dropout):
        return None
    key = key if isinstance(key, jax.Array) else jax.random.key(key)
    for x in data + (DROPOUT_STREAM,):
        key = jax.random.fold_in(key, x)
    return key


def fold(cfg: ModelConfig, params: dict) -> tuple[ModelConfig, dict]:
    """(the config without adapters, params with each kernel W + A·B·scale, each routed expert's W_e + A_e·B_e·scale):
    the merged model, for save_hf."""
    scale = cfg.lora.scale

    def walk(tree: dict) -> dict:
        out = {}
        for key, value in tree.items():
            if is_adapter(key):
                continue
            if _is_tree(value) and "lora_a" in value:
                out[key] = {k: v for k, v in value.items() if k not in ADAPTER_KEYS}
                out[key]["kernel"] = _folded(value["kernel"], value["lora_a"], value["lora_b"], scale)
            elif f"{key}_lora_a" in tree:
                out[key] = _folded_experts(value, tree[f"{key}_lora_a"], tree[f"{key}_lora_b"], scale)
            elif _is_tree(value):
                out[key] = walk(value)
            else:
                out[key] = value
        return out

    return dataclasses.replace(cfg, lora=LoRAConfig()), walk(params)


def _folded(kernel: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """kernel + A·B·scale for A [(L,) in…, r] and B [(L,) r, out…] (L: a scanned stack's layer axis), in f32."""
    stacked = (a.ndim - 1) + (b.ndim - 1) == kernel.ndim + 1
    if not stacked and (a.ndim - 1) + (b.ndim - 1) != kernel.ndim:
        raise ValueError(f"adapter shapes {a.shape} · {b.shape} do not fit kernel {kernel.shape}")
    a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
    if stacked:
        layers, rank = a.shape[0], a.shape[-1]
        delta = jnp.einsum("lir,lro->lio", a32.reshape(layers, -1, rank), b32.reshape(layers, rank, -1))
    else:
        delta = a32.reshape(-1, a.shape[-1]) @ b32.reshape(b.shape[0], -1)
    return (kernel.astype(jnp.float32) + scale * delta.reshape(kernel.shape)).astype(kernel.dtype)


def _folded_experts(w: jax.Array, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """W_e + A_e·B_e·scale for W [(L,) X, in, out], A [(L,) X, in, r], B [(L,) X, r, out], in f32."""
    if a.shape[:-1] != w.shape[:-1] or b.shape[:-2] + b.shape[-1:] != w.shape[:-2] + w.shape[-1:]:
        raise ValueError(f"expert adapter shapes {a.shape} · {b.shape} do not fit weight {w.shape}")
    delta = jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b.astype(jnp.float32))
    return (w.astype(jnp.float32) + scale * delta).astype(w.dtype)
