"""Hugging Face checkpoints (Qwen2/Qwen2.5, Llama-3) ⇄ r1jax params and ModelConfig, via safetensors (numpy).

    cfg, params = load_hf("/ckpt/Qwen2.5-1.5B", param_dtype="bfloat16", dtype="bfloat16")
    save_hf("/out/my-model", cfg, params)            # loadable by transformers

A folder holds config.json and model.safetensors, or shards listed in
model.safetensors.index.json. Params come back as host numpy arrays in the
layout of `r1jax.model.init_params` (device_put them, with shardings, as needed).
Names and shapes are checked before any tensor is read. No torch at run time.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from r1jax.config import ModelConfig, RopeScaling

ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}
INDEX_FILE, SINGLE_FILE = "model.safetensors.index.json", "model.safetensors"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some older checkpoints saved


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One HF tensor and where it lives in r1jax params; `transposed`: HF stores [out, in]."""

    hf_name: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    hf_shape: tuple[int, ...]
    transposed: bool

    def to_r1jax(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.T.reshape(self.shape) if self.transposed else x.reshape(self.shape))

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        if self.transposed:
            return np.ascontiguousarray(x.reshape(self.hf_shape[::-1]).T)
        return np.ascontiguousarray(x.reshape(self.hf_shape))


def tensor_table(cfg: ModelConfig) -> list[_Tensor]:
    """Every tensor a checkpoint of `cfg` holds (a tied head is not stored)."""
    e, h, k, d, m, v = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    table = [_Tensor("model.embed_tokens.weight", ("embed", "embedding"), (v, e), (v, e), False),
             _Tensor("model.norm.weight", ("final_norm", "scale"), (e,), (e,), False)]
    if not cfg.tie_embeddings:
        table.append(_Tensor("lm_head.weight", ("lm_head", "kernel"), (e, v), (v, e), True))
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", f"layers_{i}"
        table += [
            _Tensor(hf + "input_layernorm.weight", (ours, "attn_norm", "scale"), (e,), (e,), False),
            _Tensor(hf + "self_attn.q_proj.weight", (ours, "attn", "q", "kernel"), (e, h, d), (h * d, e), True),
            _Tensor(hf + "self_attn.k_proj.weight", (ours, "attn", "k", "kernel"), (e, k, d), (k * d, e), True),
            _Tensor(hf + "self_attn.v_proj.weight", (ours, "attn", "v", "kernel"), (e, k, d), (k * d, e), True),
            _Tensor(hf + "self_attn.o_proj.weight", (ours, "attn", "o", "kernel"), (h, d, e), (e, h * d), True),
            _Tensor(hf + "post_attention_layernorm.weight", (ours, "mlp_norm", "scale"), (e,), (e,), False),
            _Tensor(hf + "mlp.gate_proj.weight", (ours, "mlp", "gate", "kernel"), (e, m), (m, e), True),
            _Tensor(hf + "mlp.up_proj.weight", (ours, "mlp", "up", "kernel"), (e, m), (m, e), True),
            _Tensor(hf + "mlp.down_proj.weight", (ours, "mlp", "down", "kernel"), (m, e), (e, m), True),
        ]
        if cfg.qkv_bias:
            table += [
                _Tensor(hf + "self_attn.q_proj.bias", (ours, "attn", "q", "bias"), (h, d), (h * d,), False),
                _Tensor(hf + "self_attn.k_proj.bias", (ours, "attn", "k", "bias"), (k, d), (k * d,), False),
                _Tensor(hf + "self_attn.v_proj.bias", (ours, "attn", "v", "bias"), (k, d), (k * d,), False),
            ]
        if cfg.out_bias:
            table.append(_Tensor(hf + "self_attn.o_proj.bias", (ours, "attn", "o", "bias"), (e,), (e,), False))
    return table


# ---------------------------------------------------------------- config.json


def architecture(hf: Mapping[str, Any]) -> str:
    """The checkpoint's architecture name; ValueError naming it when unsupported."""
    names = hf.get("architectures") or []
    name = names[0] if names else {v: k for k, v in ARCHITECTURES.items()}.get(hf.get("model_type"))
    if name not in ARCHITECTURES:
        found = name or names or hf.get("model_type")
        raise ValueError(f"unsupported architecture {found!r}; supported: {sorted(ARCHITECTURES)}")
    return name


def rope_scaling_from_hf(rope: Mapping[str, Any] | None, max_position_embeddings: int) -> RopeScaling | None:
    """RopeScaling from HF `rope_scaling` / `rope_parameters` (None or 'default': no scaling)."""
    if not rope:
        return None
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return None
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"unsupported partial_rotary_factor={rope['partial_rotary_factor']}")
    original = rope.get("original_max_position_embeddings") or max_position_embeddings
    if kind == "linear":
        return RopeScaling("linear", factor=float(rope["factor"]))
    if kind == "llama3":
        return RopeScaling("llama3", factor=float(rope["factor"]), original_max_len=int(original),
                           low_freq_factor=float(rope["low_freq_factor"]),
                           high_freq_factor=float(rope["high_freq_factor"]))
    if kind == "yarn":
        factor = rope.get("factor") or max_position_embeddings / original
        attention_factor = rope.get("attention_factor")
        mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
        if attention_factor is None and mscale and mscale_all_dim:
            def get_mscale(scale: float, m: float) -> float:
                return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
        return RopeScaling("yarn", factor=float(factor), original_max_len=int(original),
                           beta_fast=float(rope.get("beta_fast") or 32.0),
                           beta_slow=float(rope.get("beta_slow") or 1.0),
                           truncate=bool(rope.get("truncate", True)),
                           attention_factor=None if attention_factor is None else float(attention_factor))
    raise ValueError(f"unsupported rope scaling type {kind!r}; supported: default, linear, llama3, yarn")


def config_from_hf(hf: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """ModelConfig from a parsed config.json; `overrides` (param_dtype, dtype, remat, …) win."""
    family = ARCHITECTURES[architecture(hf)]
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act={hf['hidden_act']!r}; only silu (SwiGLU)")
    if hf.get("mlp_bias"):
        raise ValueError("unsupported mlp_bias=True")
    if hf.get("use_sliding_window"):
        raise ValueError("unsupported use_sliding_window=True (sliding-window attention)")
    if any(t != "full_attention" for t in hf.get("layer_types") or []):
        raise ValueError(f"unsupported layer_types={hf['layer_types']} (only full_attention)")
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"unsupported partial_rotary_factor={hf['partial_rotary_factor']}")
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    max_len = int(hf.get("max_position_embeddings", 4096))
    heads = int(hf["num_attention_heads"])
    attention_bias = bool(hf.get("attention_bias", False))
    fields = dict(
        vocab_size=int(hf["vocab_size"]), embed_dim=int(hf["hidden_size"]), num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads, num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads), mlp_dim=int(hf["intermediate_size"]),
        rope_theta=float(hf.get("rope_theta") or rope.get("rope_theta") or 10_000.0),
        rope_scaling=rope_scaling_from_hf(rope, max_len),
        qkv_bias=True if family == "qwen2" else attention_bias,
        out_bias=False if family == "qwen2" else attention_bias,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), max_len=max_len,
    )
    return ModelConfig(**{**fields, **overrides})


def _rope_scaling_to_hf(s: RopeScaling) -> dict[str, Any]:
    out: dict[str, Any] = {"rope_type": s.kind, "factor": s.factor}
    if s.kind == "llama3":
        out.update(low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                   original_max_position_embeddings=s.original_max_len)
    elif s.kind == "yarn":
        out.update(beta_fast=s.beta_fast, beta_slow=s.beta_slow, truncate=s.truncate,
                   original_max_position_embeddings=s.original_max_len)
        if s.attention_factor is not None:
            out["attention_factor"] = s.attention_factor
    return out


def config_to_hf(cfg: ModelConfig, architecture_name: str | None = None) -> dict[str, Any]:
    """config.json for transformers: Qwen2 when only q/k/v have a bias, else Llama (attention_bias)."""
    if architecture_name is None:
        architecture_name = "Qwen2ForCausalLM" if cfg.qkv_bias and not cfg.out_bias else "LlamaForCausalLM"
    family = ARCHITECTURES.get(architecture_name)
    if family is None:
        raise ValueError(f"unsupported architecture {architecture_name!r}; supported: {sorted(ARCHITECTURES)}")
    if family == "qwen2" and not (cfg.qkv_bias and not cfg.out_bias):
        raise ValueError("Qwen2ForCausalLM needs qkv_bias=True and out_bias=False")
    if family == "llama" and cfg.qkv_bias != cfg.out_bias:
        raise ValueError("LlamaForCausalLM biases all of q, k, v, o or none: qkv_bias must equal out_bias")
    hf: dict[str, Any] = dict(
        architectures=[architecture_name], model_type=family, vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim,
        intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, hidden_act="silu",
        max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        rope_scaling=None if cfg.rope_scaling is None else _rope_scaling_to_hf(cfg.rope_scaling),
        tie_word_embeddings=cfg.tie_embeddings, torch_dtype=cfg.param_dtype, dtype=cfg.param_dtype,
    )
    if family == "llama":
        hf.update(attention_bias=cfg.qkv_bias, mlp_bias=False)
    else:
        hf.update(use_sliding_window=False)
    return hf


# ---------------------------------------------------------------- tensors


def check_tensors(cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """ValueError naming each missing, unexpected or wrongly shaped tensor."""
    table = {t.hf_name: t for t in tensor_table(cfg)}
    problems = [f"missing tensor {n!r}" for n in table if n not in shapes]
    for name, shape in shapes.items():
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        if name == "lm_head.weight" and cfg.tie_embeddings:  # some tied checkpoints store the head anyway
            expected = (cfg.vocab_size, cfg.embed_dim)
        elif name in table:
            expected = table[name].hf_shape
        else:
            problems.append(f"unexpected tensor {name!r} {tuple(shape)}")
            continue
        if tuple(shape) != expected:
            problems.append(f"tensor {name!r} has shape {tuple(shape)}, expected {expected}")
    if problems:
        raise ValueError("checkpoint does not match the config: " + "; ".join(problems))


def params_from_hf(cfg: ModelConfig, tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """r1jax params (numpy, cfg.param_dtype) from HF-named tensors; names and shapes are checked first."""
    check_tensors(cfg, {name: tuple(x.shape) for name, x in tensors.items()})
    return _build_params(cfg, lambda name: np.asarray(tensors[name]))


def _build_params(cfg: ModelConfig, read: Any) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for t in tensor_table(cfg):
        node = params
        for key in t.path[:-1]:
            node = node.setdefault(key, {})
        node[t.path[-1]] = t.to_r1jax(read(t.hf_name).astype(jnp.dtype(cfg.param_dtype)))
    return params


def params_to_hf(cfg: ModelConfig, params: Any, dtype: Any = None) -> dict[str, np.ndarray]:
    """HF-named numpy tensors (in `dtype`, default cfg.param_dtype) from r1jax params (plain or boxed)."""
    params = jax.device_get(nn.unbox(params))
    out = {}
    for t in tensor_table(cfg):
        node = params
        for key in t.path:
            if key not in node:
                raise ValueError(f"params lack {'/'.join(t.path)} (for {t.hf_name})")
            node = node[key]
        if tuple(node.shape) != t.shape:
            raise ValueError(f"param {'/'.join(t.path)} has shape {tuple(node.shape)}, expected {t.shape}")
        out[t.hf_name] = t.to_hf(np.asarray(node).astype(jnp.dtype(dtype or cfg.param_dtype)))
    return out


# ---------------------------------------------------------------- folders


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name → the safetensors file holding it (index.json if present, else model.safetensors)."""
    if (folder / INDEX_FILE).exists():
        weight_map = json.loads((folder / INDEX_FILE).read_text())["weight_map"]
        return {name: folder / file for name, file in weight_map.items()}
    if (folder / SINGLE_FILE).exists():
        with safe_open(folder / SINGLE_FILE, framework="np") as f:
            return {name: folder / SINGLE_FILE for name in f.keys()}
    raise FileNotFoundError(f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def load_hf(folder: str | Path, **overrides: Any) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, params) from a local HF folder; `overrides` go to the ModelConfig (e.g. param_dtype)."""
    folder = Path(folder)
    cfg = config_from_hf(json.loads((folder / "config.json").read_text()), **overrides)
    files = _tensor_files(folder)
    shapes = {}
    for file in sorted(set(files.values())):
        with safe_open(file, framework="np") as f:
            for name in f.keys():
                if files.get(name) == file:
                    shapes[name] = tuple(f.get_slice(name).get_shape())
    missing_in_files = sorted(set(files) - set(shapes))
    if missing_in_files:
        raise ValueError(f"index lists tensors absent from their files: {missing_in_files}")
    check_tensors(cfg, shapes)
    with contextlib.ExitStack() as stack:
        handles = {file: stack.enter_context(safe_open(file, framework="np")) for file in set(files.values())}
        params = _build_params(cfg, lambda name: handles[files[name]].get_tensor(name))
    return cfg, params


def save_hf(folder: str | Path, cfg: ModelConfig, params: Any, *, dtype: Any = None,
            max_shard_bytes: int | None = None, architecture_name: str | None = None) -> None:
    """Writes config.json and safetensors (sharded with an index when over `max_shard_bytes`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf_config = config_to_hf(cfg, architecture_name)
    tensors = params_to_hf(cfg, params, dtype)
    if dtype is not None:
        hf_config["torch_dtype"] = hf_config["dtype"] = jnp.dtype(dtype).name
    (folder / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, x in tensors.items():
        if max_shard_bytes is not None and shards[-1] and size + x.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = x
        size += x.nbytes
    if len(shards) == 1:
        save_file(shards[0], folder / SINGLE_FILE, metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file, metadata={"format": "pt"})
        weight_map.update({name: file for name in shard})
    index = {"metadata": {"total_size": sum(x.nbytes for x in tensors.values())}, "weight_map": weight_map}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
