"""Hugging Face checkpoints (Qwen2/Qwen2.5, Llama-3, Qwen3-MoE, DeepSeek-V3) ⇄ r1jax params and ModelConfig.

    cfg, params = load_hf("/ckpt/Qwen2.5-1.5B", param_dtype="bfloat16", dtype="bfloat16")
    save_hf("/out/my-model", cfg, params)            # loadable by transformers

A folder holds config.json and model.safetensors, or shards listed in
model.safetensors.index.json. Params come back as host numpy arrays in the
layout of `r1jax.model.init_params` (device_put them, with shardings, as needed).
Names and shapes are checked before any tensor is read. No torch at run time.
Via safetensors (numpy). MoE checkpoints store one tensor per expert; r1jax
stacks them on a leading expert axis. DeepSeek-V3's interleaved RoPE dims
(rope_interleave) are permuted to r1jax's rotate-half layout on import and
back on export; its multi-token-prediction layers are not read, nor are
FP8-quantized checkpoints (dequantize them first).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from r1jax.config import ModelConfig
from r1jax.errors import UsageError
from r1jax.hf_config import (  # noqa: F401  re-exported: the config.json half of the converter
    ARCHITECTURES, architecture, config_from_hf, config_to_hf, rope_scaling_from_hf)
from r1jax.model.moe import is_moe_layer
from r1jax.model.transformer import convert_layout, unstack_layers

INDEX_FILE, SINGLE_FILE = "model.safetensors.index.json", "model.safetensors"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some older checkpoints saved


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One HF tensor and where it lives in r1jax params; `transposed`: HF stores [out, in].

    `expert`: index on the leading expert axis of a stacked r1jax param; `rows`: HF
    row rows[j] becomes row j before the transpose; `keep_f32`: stored in f32 always.
    """

    hf_name: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    hf_shape: tuple[int, ...]
    transposed: bool
    expert: int | None = None
    rows: tuple[int, ...] | None = None
    keep_f32: bool = False

    def to_r1jax(self, x: np.ndarray) -> np.ndarray:
        x = x if self.rows is None else x[np.asarray(self.rows)]
        return np.ascontiguousarray(x.T.reshape(self.shape) if self.transposed else x.reshape(self.shape))

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        x = x.reshape(self.hf_shape[::-1]).T if self.transposed else x.reshape(self.hf_shape)
        return np.ascontiguousarray(x if self.rows is None else x[np.argsort(self.rows)])


def tensor_table(cfg: ModelConfig, rope_interleave: bool = True) -> list[_Tensor]:
    """Every tensor a checkpoint of `cfg` holds (a tied head is not stored); `rope_interleave`: MLA's layout."""
    e, h, k, d, m, v = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
    table = [_Tensor("model.embed_tokens.weight", ("embed", "embedding"), (v, e), (v, e), False),
             _Tensor("model.norm.weight", ("final_norm", "scale"), (e,), (e,), False)]
    if not cfg.tie_embeddings:
        table.append(_Tensor("lm_head.weight", ("lm_head", "kernel"), (e, v), (v, e), True))
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", f"layers_{i}"
        table += [
            _Tensor(hf + "input_layernorm.weight", (ours, "attn_norm", "scale"), (e,), (e,), False),
            _Tensor(hf + "post_attention_layernorm.weight", (ours, "mlp_norm", "scale"), (e,), (e,), False),
        ]
        if is_moe_layer(cfg.moe, i):
            table += _moe_tensors(cfg, hf + "mlp.", (ours, "mlp"))
        else:
            table += _swiglu_tensors(hf + "mlp.", (ours, "mlp"), e, m)
        if cfg.mla is not None:
            table += _mla_tensors(cfg, hf + "self_attn.", (ours, "attn"), rope_interleave)
            continue
        table += [
            _Tensor(hf + "self_attn.q_proj.weight", (ours, "attn", "q", "kernel"), (e, h, d), (h * d, e), True),
            _Tensor(hf + "self_attn.k_proj.weight", (ours, "attn", "k", "kernel"), (e, k, d), (k * d, e), True),
            _Tensor(hf + "self_attn.v_proj.weight", (ours, "attn", "v", "kernel"), (e, k, d), (k * d, e), True),
            _Tensor(hf + "self_attn.o_proj.weight", (ours, "attn", "o", "kernel"), (h, d, e), (e, h * d), True),
        ]
        if cfg.qk_norm:
            table += [_Tensor(hf + f"self_attn.{n}_norm.weight", (ours, "attn", f"{n}_norm", "scale"), (d,), (d,),
                              False) for n in ("q", "k")]
        if cfg.qkv_bias:
            table += [
                _Tensor(hf + "self_attn.q_proj.bias", (ours, "attn", "q", "bias"), (h, d), (h * d,), False),
                _Tensor(hf + "self_attn.k_proj.bias", (ours, "attn", "k", "bias"), (k, d), (k * d,), False),
                _Tensor(hf + "self_attn.v_proj.bias", (ours, "attn", "v", "bias"), (k, d), (k * d,), False),
            ]
        if cfg.out_bias:
            table.append(_Tensor(hf + "self_attn.o_proj.bias", (ours, "attn", "o", "bias"), (e,), (e,), False))
    return table


def _swiglu_tensors(hf: str, ours: tuple[str, ...], e: int, m: int, expert: int | None = None) -> list[_Tensor]:
    """gate/up/down_proj of one SwiGLU (an expert's: slices of the stacked wi_gate, wi_up, wo)."""
    names = ("gate", "up", "down") if expert is None else ("wi_gate", "wi_up", "wo")
    paths = [ours + ((n, "kernel") if expert is None else (n,)) for n in names]
    return [_Tensor(hf + "gate_proj.weight", paths[0], (e, m), (m, e), True, expert),
            _Tensor(hf + "up_proj.weight", paths[1], (e, m), (m, e), True, expert),
            _Tensor(hf + "down_proj.weight", paths[2], (m, e), (e, m), True, expert)]


def _moe_tensors(cfg: ModelConfig, hf: str, ours: tuple[str, ...]) -> list[_Tensor]:
    """Router (and DeepSeek's e_score_correction_bias), one SwiGLU per expert, shared experts."""
    moe, e = cfg.moe, cfg.embed_dim
    table = [_Tensor(hf + "gate.weight", ours + ("router",), (e, moe.num_experts), (moe.num_experts, e), True)]
    if moe.router == "sigmoid":
        table.append(_Tensor(hf + "gate.e_score_correction_bias", ours + ("router_bias",), (moe.num_experts,),
                             (moe.num_experts,), False, keep_f32=True))
    for j in range(moe.num_experts):
        table += _swiglu_tensors(hf + f"experts.{j}.", ours, e, moe.expert_dim, expert=j)
    if moe.num_shared_experts:
        table += _swiglu_tensors(hf + "shared_experts.", ours + ("shared",), e, moe.num_shared_experts * moe.expert_dim)
    return table


def _deinterleave(width: int, start: int, rope: int, blocks: int = 1) -> tuple[int, ...]:
    """Row order that turns each block's interleaved RoPE pairs [start, start+rope) into rotate-half layout."""
    order = list(range(start)) + list(range(start, start + rope, 2)) + list(range(start + 1, start + rope, 2))
    order += list(range(start + rope, width))
    return tuple(b * width + j for b in range(blocks) for j in order)


def _mla_tensors(cfg: ModelConfig, hf: str, ours: tuple[str, ...], rope_interleave: bool) -> list[_Tensor]:
    """DeepSeek-V3 attention: q (LoRA or not), kv_a_proj_with_mqa, kv_b_proj, o_proj and the latent norms."""
    mla, e, h = cfg.mla, cfg.embed_dim, cfg.num_heads
    qd, c, r = mla.qk_nope_dim + mla.qk_rope_dim, mla.kv_lora_rank, mla.qk_rope_dim
    q_rows = _deinterleave(qd, mla.qk_nope_dim, r, h) if rope_interleave else None
    kv_rows = _deinterleave(c + r, c, r) if rope_interleave else None
    if mla.q_lora_rank is None:
        table = [_Tensor(hf + "q_proj.weight", ours + ("q", "kernel"), (e, h, qd), (h * qd, e), True, rows=q_rows)]
    else:
        ql = mla.q_lora_rank
        table = [_Tensor(hf + "q_a_proj.weight", ours + ("q_a", "kernel"), (e, ql), (ql, e), True),
                 _Tensor(hf + "q_a_layernorm.weight", ours + ("q_norm", "scale"), (ql,), (ql,), False),
                 _Tensor(hf + "q_b_proj.weight", ours + ("q_b", "kernel"), (ql, h, qd), (h * qd, ql), True,
                         rows=q_rows)]
    kv = mla.qk_nope_dim + mla.v_head_dim
    return table + [
        _Tensor(hf + "kv_a_proj_with_mqa.weight", ours + ("kv_a", "kernel"), (e, c + r), (c + r, e), True,
                rows=kv_rows),
        _Tensor(hf + "kv_a_layernorm.weight", ours + ("kv_norm", "scale"), (c,), (c,), False),
        _Tensor(hf + "kv_b_proj.weight", ours + ("kv_b", "kernel"), (c, h, kv), (h * kv, c), True),
        _Tensor(hf + "o_proj.weight", ours + ("o", "kernel"), (h, mla.v_head_dim, e), (e, h * mla.v_head_dim), True),
    ]


# ---------------------------------------------------------------- tensors


def check_tensors(cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """ValueError naming each missing, unexpected or wrongly shaped tensor."""
    table = {t.hf_name: t for t in tensor_table(cfg)}
    problems = [f"missing tensor {n!r}" for n in table if n not in shapes]
    for name, shape in shapes.items():
        if name.endswith(_IGNORED_SUFFIXES) or _is_mtp_layer(cfg, name):
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


def _is_mtp_layer(cfg: ModelConfig, name: str) -> bool:
    """DeepSeek-V3's multi-token-prediction module: model.layers.{i >= num_layers}, not part of the model."""
    match = re.match(r"model\.layers\.(\d+)\.", name)
    return cfg.mla is not None and match is not None and int(match.group(1)) >= cfg.num_layers


def _build_params(cfg: ModelConfig, read: Any, rope_interleave: bool = True) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for t in tensor_table(cfg, rope_interleave):
        node = params
        for key in t.path[:-1]:
            node = node.setdefault(key, {})
        dtype = np.dtype(np.float32) if t.keep_f32 else jnp.dtype(cfg.param_dtype)
        value = t.to_r1jax(read(t.hf_name).astype(dtype))
        if t.expert is None:
            node[t.path[-1]] = value
        else:  # experts stacked on a leading axis
            node.setdefault(t.path[-1], np.zeros((cfg.moe.num_experts, *t.shape), dtype))[t.expert] = value
    if cfg.moe is not None and cfg.moe.router == "softmax":  # no bias in the checkpoint: start balanced
        for i in range(cfg.num_layers):
            if is_moe_layer(cfg.moe, i):
                params[f"layers_{i}"]["mlp"]["router_bias"] = np.zeros((cfg.moe.num_experts,), np.float32)
    return convert_layout(params, cfg)  # stacked per scanned layer group when cfg.scan_layers


def params_to_hf(cfg: ModelConfig, params: Any, dtype: Any = None) -> dict[str, np.ndarray]:
    """HF-named numpy tensors (in `dtype`, default cfg.param_dtype) from r1jax params (plain or boxed)."""
    params = unstack_layers(jax.device_get(nn.unbox(params)))
    out = {}
    for t in tensor_table(cfg):
        node = params
        for key in t.path:
            if key not in node:
                raise ValueError(f"params lack {'/'.join(t.path)} (for {t.hf_name})")
            node = node[key]
        expected = t.shape if t.expert is None else (cfg.moe.num_experts, *t.shape)
        if tuple(node.shape) != expected:
            raise ValueError(f"param {'/'.join(t.path)} has shape {tuple(node.shape)}, expected {expected}")
        node = node if t.expert is None else node[t.expert]
        out_dtype = np.float32 if t.keep_f32 else jnp.dtype(dtype or cfg.param_dtype)
        out[t.hf_name] = t.to_hf(np.asarray(node).astype(out_dtype))
    if cfg.moe is not None and cfg.moe.router == "softmax":
        for i in range(cfg.num_layers):
            if is_moe_layer(cfg.moe, i) and np.any(np.asarray(params[f"layers_{i}"]["mlp"]["router_bias"])):
                raise ValueError(f"layers_{i} has a nonzero router_bias, which a softmax-router (Qwen3-MoE) "
                                 "checkpoint cannot store")
    return out


# ---------------------------------------------------------------- folders


class HFFileError(UsageError):
    """A Hugging Face folder's file that r1jax cannot read; the message names the file."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise HFFileError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFFileError(f"{path}: not valid JSON ({e})") from None


@contextlib.contextmanager
def _open_tensors(file: Path):
    """safetensors' safe_open, its errors (a truncated or corrupt file) naming the file."""
    try:
        handle = safe_open(file, framework="np")
    except FileNotFoundError:
        raise HFFileError(f"{file}: not found (listed in {INDEX_FILE}?)") from None
    except Exception as e:  # safetensors raises its own SafetensorError
        raise HFFileError(f"{file}: not a readable safetensors file ({e}); re-download or re-export it") from None
    with handle as f:
        yield f


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name → the safetensors file holding it (index.json if present, else model.safetensors)."""
    if (folder / INDEX_FILE).exists():
        index = _read_json(folder / INDEX_FILE)
        if not isinstance(index.get("weight_map"), dict):
            raise HFFileError(f"{folder / INDEX_FILE}: no 'weight_map' object")
        return {name: folder / file for name, file in index["weight_map"].items()}
    if (folder / SINGLE_FILE).exists():
        with _open_tensors(folder / SINGLE_FILE) as f:
            return {name: folder / SINGLE_FILE for name in f.keys()}
    raise FileNotFoundError(f"{folder} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def load_hf(folder: str | Path, **overrides: Any) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, params) from a local HF folder; `overrides` go to the ModelConfig (e.g. param_dtype)."""
    folder = Path(folder)
    hf_config = _read_json(folder / "config.json")
    try:
        cfg = config_from_hf(hf_config, **overrides)
    except (ValueError, KeyError, TypeError) as e:
        raise HFFileError(f"{folder / 'config.json'}: {e if not isinstance(e, KeyError) else f'no field {e}'}"
                          ) from None
    files = _tensor_files(folder)
    shapes = {}
    for file in sorted(set(files.values())):
        with _open_tensors(file) as f:
            for name in f.keys():
                if files.get(name) == file:
                    shapes[name] = tuple(f.get_slice(name).get_shape())
    missing_in_files = sorted(set(files) - set(shapes))
    if missing_in_files:
        raise HFFileError(f"{folder / INDEX_FILE} lists tensors absent from their files: {missing_in_files}")
    try:
        check_tensors(cfg, shapes)
    except ValueError as e:
        raise HFFileError(f"{folder}: {e}") from None
    with contextlib.ExitStack() as stack:
        handles = {file: stack.enter_context(_open_tensors(file)) for file in set(files.values())}

        def read(name):
            try:
                return handles[files[name]].get_tensor(name)
            except Exception as e:  # a file cut short after its header
                raise HFFileError(f"{files[name]}: cannot read tensor {name!r} ({e})") from None

        params = _build_params(cfg, read, bool(hf_config.get("rope_interleave", True)))
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
