"""LoRA adapters ⇄ Hugging Face PEFT folders (adapter_config.json + adapter_model.safetensors).

    save_peft("/out/adapter", cfg, params)              # loadable by peft.PeftModel.from_pretrained
    lora_cfg, adapters = load_peft("/out/adapter", base_cfg)
    params = lora.merge(base_params, adapters)           # with dataclasses.replace(base_cfg, lora=lora_cfg)

r1jax's `lora_a` [in…, r] is PEFT's `lora_A.weight` [r, in] transposed and `lora_b` [r, out…] is
`lora_B.weight` [out, r] transposed; module names come from r1jax.hf.tensor_table, and the scale
alpha/r (alpha/√r with use_rslora) is PEFT's. Either params layout (unrolled or scanned) goes in and
comes out. Not mapped: routed MoE experts (r1jax adapts them, but PEFT has no standard key layout for
them: export with targets that leave them out, or fold the adapters and save the merged model), MLA
projections whose rows carry DeepSeek-V3's interleaved RoPE, the LM head and the embedding. No torch
at run time.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from r1jax.config import LoRAConfig, ModelConfig
from r1jax.errors import UsageError
from r1jax.hf import HFFileError, _open_tensors, _read_json, tensor_table
from r1jax.lora import EXPERT_SUFFIXES, split
from r1jax.model.transformer import convert_layout, init_params, unstack_layers

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModelForCausalLM → LoraModel → the transformers model
_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")
_NO_ADAPTERS = "the LM head and the embedding carry no adapters in r1jax"
_ROUTED = ("routed MoE experts have no standard PEFT key layout: adapt targets without them (e.g. 'attention', "
           "or a regex that leaves out mlp/wi_gate, mlp/wi_up and mlp/wo), or save the merged model "
           "(lora.fold, then hf.save_hf)")
_UNSUPPORTED = {  # adapter_config.json field → what r1jax lacks when it is set (truthy)
    "use_dora": "DoRA (weight-decomposed LoRA) is not supported",
    "lora_bias": "a bias on lora_B is not supported",
    "modules_to_save": "fully trained extra modules are not supported",
    "rank_pattern": "per-module ranks are not supported (one rank for every adapter)",
    "alpha_pattern": "per-module alphas are not supported (one alpha for every adapter)",
    "fan_in_fan_out": "Conv1D-style [in, out] base weights (GPT-2) are not supported",
    "layer_replication": "layer replication is not supported",
    "trainable_token_indices": "trainable token embeddings are not supported",
    "target_parameters": "adapters on raw parameters (e.g. fused experts) are not supported",
}


@dataclasses.dataclass(frozen=True)
class _Module:
    """One HF weight matrix; `ours`: r1jax's module path ("layers_0/attn/q"); `refused`: why no adapter fits it."""

    ours: str  # a routed expert's: its stacked weight's path ("layers_1/mlp/wi_gate"), shared by the X experts
    hf: str
    hf_shape: tuple[int, ...]  # [out, in]
    adapter: tuple[tuple[int, ...], tuple[int, ...]] | None  # r1jax's (in…, out…) where a Dense can carry LoRA
    refused: str = ""


def _modules(cfg: ModelConfig) -> list[_Module]:
    """Every weight matrix of a checkpoint of `cfg` (r1jax.hf.tensor_table), with where r1jax's adapters sit."""
    shapes = _adapter_shapes(dataclasses.replace(cfg, lora=LoRAConfig(), scan_layers=False))
    out = []
    for t in tensor_table(cfg):
        if not t.hf_name.endswith(".weight") or len(t.hf_shape) != 2:
            continue
        ours = "/".join(t.path if t.expert is not None else t.path[:-1])
        refused = (_ROUTED if t.expert is not None
                   else _NO_ADAPTERS if not ours.startswith("layers_")
                   else "r1jax has no adaptable projection there" if ours not in shapes
                   else "MLA rows in DeepSeek-V3's interleaved RoPE order are not mapped yet" if t.rows is not None
                   else "")
        out.append(_Module(ours, t.hf_name.removesuffix(".weight"), t.hf_shape, shapes.get(ours), refused))
    return out


@functools.cache
def _adapter_shapes(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Module path → (in…, out…) of each projection of unrolled `cfg` that can carry an adapter (traced only)."""
    probe = dataclasses.replace(cfg, lora=LoRAConfig(rank=1, targets="."))
    shapes = split(jax.eval_shape(functools.partial(init_params, probe), jax.random.key(0)))[1]
    return {path: (node["lora_a"].shape[:-1], node["lora_b"].shape[1:]) for path, node in _adapted(shapes).items()}


# ---------------------------------------------------------------- export


def save_peft(folder: str | Path, cfg: ModelConfig, params_or_adapters: Any, base_model_name_or_path: str = "") -> None:
    """Writes adapter_config.json and adapter_model.safetensors as peft's save_pretrained names them."""
    if not cfg.lora.rank:
        raise UsageError("save_peft: cfg.lora.rank is 0 (no adapters to export)")
    rank, modules = cfg.lora.rank, _modules(cfg)
    by_ours = {m.ours: m for m in modules}
    tensors = {}
    for path, node in _adapted(split(nn.unbox(params_or_adapters))[1]).items():
        module = by_ours.get(path)
        if module is None or module.refused:
            raise UsageError(f"save_peft: adapters on {path} cannot be exported "
                             f"({module.refused if module else 'no HF module of that name'})")
        in_shape, out_shape = module.adapter
        shapes = tuple(tuple(np.shape(node.get(k))) for k in ("lora_a", "lora_b"))
        if shapes != (in_shape + (rank,), (rank,) + out_shape):
            raise UsageError(f"save_peft: {path} has lora_a {shapes[0]} and lora_b {shapes[1]}, expected "
                             f"{in_shape + (rank,)} and {(rank,) + out_shape} (rank {rank})")
        a_rxI = np.asarray(node["lora_a"]).reshape(-1, rank).T
        b_OxR = np.asarray(node["lora_b"]).reshape(rank, -1).T
        tensors[f"{PREFIX}{module.hf}.lora_A.weight"] = np.ascontiguousarray(a_rxI)
        tensors[f"{PREFIX}{module.hf}.lora_B.weight"] = np.ascontiguousarray(b_OxR)
    if not tensors:
        raise UsageError("save_peft: the params hold no lora_a/lora_b adapters")
    adapted = {m.hf for m in modules if f"{PREFIX}{m.hf}.lora_A.weight" in tensors}
    alpha = cfg.lora.alpha
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path or None,
        "revision": None, "r": rank, "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": cfg.lora.dropout, "use_rslora": cfg.lora.rslora,
        "target_modules": _target_modules(modules, adapted),
        "exclude_modules": None, "bias": "none", "lora_bias": False, "use_dora": False, "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None,
        "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, folder / WEIGHTS_FILE, metadata={"format": "pt"})


def _adapted(adapters: dict) -> dict[str, dict]:
    """Module path in the unrolled layout ("layers_0/attn/q", "layers_1/mlp/wi_gate") → its {"lora_a", "lora_b"}."""
    out = {}

    def walk(tree: dict, path: tuple[str, ...]) -> None:
        if "lora_a" in tree or "lora_b" in tree:
            out["/".join(path)] = tree
            return
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, path + (key,))
            elif key.endswith(EXPERT_SUFFIXES):  # a routed expert weight's: {name}_lora_a, {name}_lora_b
                out.setdefault("/".join(path + (key[:-len("_lora_a")],)), {})[key[-len("lora_a"):]] = value

    walk(unstack_layers(jax.device_get(adapters)), ())
    return out


def _target_modules(modules: list[_Module], adapted: set[str]) -> list[str] | str:
    """PEFT's target_modules: the adapted modules' last names, or a regex of their full names if those over-select."""
    leaf = lambda name: name.rsplit(".", 1)[-1]  # noqa: E731
    names = {leaf(m) for m in adapted}
    if all(m.hf in adapted for m in modules if leaf(m.hf) in names):
        return sorted(names)
    return "(" + "|".join(re.escape(m) for m in sorted(adapted)) + ")"  # peft: re.fullmatch on module names


# ---------------------------------------------------------------- import


def load_peft(folder: str | Path, cfg: ModelConfig) -> tuple[LoRAConfig, dict]:
    """(LoRAConfig, adapters in cfg's layout) from a PEFT LoRA folder, so that merge(base, adapters) is peft's model.

    lora_dropout becomes LoRAConfig.dropout (it acts only in the SFT and GRPO updates: the adapted function
    is the same whatever it is).
    """
    folder = Path(folder)
    config_file, weights_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    config = _read_json(config_file)
    if not isinstance(config, dict):
        raise HFFileError(f"{config_file}: not a JSON object")
    modules = _modules(cfg)
    rank, alpha, rslora, dropout = _check_config(config, config_file, modules)
    by_hf, by_ours = {m.hf: m for m in modules}, {m.ours: m for m in modules}
    found: dict[str, dict[str, np.ndarray]] = {}
    for name, x in _read_tensors(weights_file).items():
        match = _KEY.fullmatch(name)
        if match is None:
            raise HFFileError(f"{weights_file}: tensor {name!r} is not a LoRA weight "
                              f"({PREFIX}<module>.lora_A.weight or .lora_B.weight)")
        module = by_hf.get(match[1])
        if module is None or module.refused:
            why = (module.refused if module else _NO_ADAPTERS if match[1] in ("lm_head", "model.embed_tokens")
                   else "no such module in this model")
            raise HFFileError(f"{weights_file}: tensor {name!r} cannot be placed ({why})")
        out_size, in_size = module.hf_shape
        expected = (rank, in_size) if match[2] == "A" else (out_size, rank)
        if x.shape != expected:
            raise HFFileError(f"{weights_file}: tensor {name!r} has shape {x.shape}, expected {expected} (r={rank})")
        found.setdefault(module.ours, {})["lora_a" if match[2] == "A" else "lora_b"] = x
    if not found:
        raise HFFileError(f"{weights_file}: holds no LoRA tensors")
    for path, pair in found.items():
        if len(pair) != 2:
            raise HFFileError(f"{weights_file}: {by_ours[path].hf} has lora_{'A' if 'lora_a' in pair else 'B'} "
                              "without its partner (lora_A and lora_B come in pairs)")
    relative = sorted({path.split("/", 1)[1] for path in found})
    lora_cfg = LoRAConfig(rank=rank, alpha=alpha, rslora=rslora, dropout=dropout,
                          targets="/(" + "|".join(re.escape(p) for p in relative) + ")$")
    placed = {m.ours for m in modules if m.adapter is not None and lora_cfg.adapts(m.ours)}
    if placed != set(found):
        missing = sorted(placed - set(found))[0]
        raise HFFileError(f"{weights_file}: adapters sit on some layers only ({by_ours[missing].hf} has "
                          "none); r1jax gives every layer the same adapted projections")
    dtype = jnp.dtype(cfg.param_dtype)
    flat: dict[str, Any] = {f"layers_{i}": {} for i in range(cfg.num_layers)}
    for path, pair in found.items():
        in_shape, out_shape = by_ours[path].adapter
        node = flat
        for key in path.split("/"):
            node = node.setdefault(key, {})
        node["lora_a"] = np.ascontiguousarray(pair["lora_a"].T.reshape(in_shape + (rank,)).astype(dtype))
        node["lora_b"] = np.ascontiguousarray(pair["lora_b"].T.reshape((rank,) + out_shape).astype(dtype))
    return lora_cfg, {k: v for k, v in convert_layout(flat, cfg).items() if jax.tree.leaves(v)}


def _check_config(config: dict, file: Path, modules: list[_Module]) -> tuple[int, float, bool, float]:
    """(r, lora_alpha, use_rslora, lora_dropout) from adapter_config.json; an error naming the field for what
    r1jax cannot load."""
    def need(ok: bool, field: str, why: str) -> None:
        if not ok:
            raise HFFileError(f"{file}: {field}={config.get(field)!r}: {why}")

    need(config.get("peft_type") == "LORA", "peft_type", "only LoRA adapters are read")
    need(config.get("task_type") in (None, "CAUSAL_LM"), "task_type", "only CAUSAL_LM adapters are read")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    need(isinstance(rank, int) and not isinstance(rank, bool) and rank > 0, "r", "must be an int > 0")
    need(isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0, "lora_alpha", "must be > 0")
    dropout = config.get("lora_dropout", 0.0)
    need(isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0 <= dropout < 1, "lora_dropout",
         "must be in [0, 1)")
    need(config.get("bias", "none") == "none", "bias", "only bias='none' is supported")
    for field, why in _UNSUPPORTED.items():
        need(not config.get(field), field, why)
    targets = config.get("target_modules")
    if isinstance(targets, list):  # names peft matched by suffix; a regex string is checked through the tensors
        placeable = [m.hf for m in modules if not m.refused]
        for name in targets:
            need(any(h == name or h.endswith("." + name) for h in placeable), "target_modules",
                 f"r1jax cannot place an adapter on {name!r} (it adapts: "
                 f"{', '.join(sorted({h.rsplit('.', 1)[-1] for h in placeable}))})")
    return rank, float(alpha), bool(config.get("use_rslora", False)), float(dropout)


def _read_tensors(file: Path) -> dict[str, np.ndarray]:
    """All tensors of adapter_model.safetensors; an error naming the file when it is absent or unreadable."""
    if not file.exists():
        bin_file = file.with_name("adapter_model.bin")
        hint = f" (only {bin_file.name}, a pickle: re-save with safe_serialization=True)" if bin_file.exists() else ""
        raise HFFileError(f"{file}: not found{hint}")
    with _open_tensors(file) as f:
        return {name: f.get_tensor(name) for name in f.keys()}
