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
import math
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

from r1jax.config import MLAConfig, ModelConfig, MoEConfig, RopeScaling
from r1jax.model.moe import is_moe_layer

ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama", "Qwen3MoeForCausalLM": "qwen3_moe",
                 "DeepseekV3ForCausalLM": "deepseek_v3"}
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
    if family == "qwen3_moe":
        fields.update(qk_norm=True, moe=_qwen3_moe_from_hf(hf))
    elif family == "deepseek_v3":
        fields.update(_deepseek_v3_from_hf(hf, rope))
    return ModelConfig(**{**fields, **overrides})


def _qwen3_moe_from_hf(hf: Mapping[str, Any]) -> MoEConfig | None:
    """Softmax top-k router, no shared experts, Switch aux loss (router_aux_loss_coef), no balancing bias."""
    num_experts = hf.get("num_experts") or hf.get("num_local_experts")  # transformers 5 writes the latter
    if not num_experts:
        return None
    return MoEConfig(
        num_experts=int(num_experts), top_k=int(hf["num_experts_per_tok"]),
        expert_dim=int(hf["moe_intermediate_size"]), router="softmax", norm_topk_prob=bool(hf.get("norm_topk_prob")),
        dense_layers=tuple(hf.get("mlp_only_layers") or ()), sparse_step=int(hf.get("decoder_sparse_step") or 1),
        bias_update_rate=0.0, switch_aux_coef=float(hf.get("router_aux_loss_coef") or 0.0))


def _deepseek_v3_from_hf(hf: Mapping[str, Any], rope: Mapping[str, Any]) -> dict[str, Any]:
    """MLA and DeepSeekMoE fields; balancing as in the paper (γ = 0.001, α = 1e-4)."""
    for key, supported in (("scoring_func", "sigmoid"), ("topk_method", "noaux_tc"), ("moe_layer_freq", 1)):
        if hf.get(key, supported) != supported:
            raise ValueError(f"unsupported {key}={hf[key]!r}; DeepSeek-V3 uses {supported!r}")
    if hf.get("attention_bias"):
        raise ValueError("unsupported attention_bias=True for DeepseekV3ForCausalLM")
    if hf.get("quantization_config"):
        raise ValueError("unsupported quantization_config (FP8 weights): dequantize the checkpoint to bf16 first")
    heads = int(hf["num_attention_heads"])
    mla = MLAConfig(kv_lora_rank=int(hf["kv_lora_rank"]), qk_nope_dim=int(hf["qk_nope_head_dim"]),
                    qk_rope_dim=int(hf["qk_rope_head_dim"]), v_head_dim=int(hf["v_head_dim"]),
                    q_lora_rank=None if hf.get("q_lora_rank") is None else int(hf["q_lora_rank"]),
                    mscale_all_dim=float(rope.get("mscale_all_dim") or 0.0))
    moe = MoEConfig(
        num_experts=int(hf.get("n_routed_experts") or hf["num_local_experts"]), top_k=int(hf["num_experts_per_tok"]),
        expert_dim=int(hf["moe_intermediate_size"]), num_shared_experts=int(hf.get("n_shared_experts") or 0),
        router="sigmoid", norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
        routed_scaling_factor=float(hf.get("routed_scaling_factor") or 1.0), num_groups=int(hf.get("n_group") or 1),
        topk_groups=int(hf.get("topk_group") or 1), first_k_dense=int(hf.get("first_k_dense_replace") or 0),
        bias_update_rate=0.001, seq_aux_alpha=1e-4)
    return dict(num_kv_heads=heads, head_dim=mla.qk_rope_dim, qkv_bias=False, out_bias=False, mla=mla, moe=moe)


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
    """config.json for transformers: DeepSeek-V3 with MLA, Qwen3-MoE with MoE, else Qwen2 when only q/k/v have a
    bias, else Llama (attention_bias)."""
    if architecture_name is None:
        architecture_name = ("DeepseekV3ForCausalLM" if cfg.mla is not None else
                             "Qwen3MoeForCausalLM" if cfg.moe is not None else
                             "Qwen2ForCausalLM" if cfg.qkv_bias and not cfg.out_bias else "LlamaForCausalLM")
    family = ARCHITECTURES.get(architecture_name)
    if family is None:
        raise ValueError(f"unsupported architecture {architecture_name!r}; supported: {sorted(ARCHITECTURES)}")
    if family in ("qwen3_moe", "deepseek_v3"):
        return _moe_config_to_hf(cfg, architecture_name, family)
    if cfg.moe is not None or cfg.mla is not None or cfg.qk_norm:
        raise ValueError(f"{architecture_name} has no MoE, MLA or q/k norm layers")
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


def _moe_config_to_hf(cfg: ModelConfig, architecture_name: str, family: str) -> dict[str, Any]:
    """config.json of a Qwen3-MoE or DeepSeek-V3 checkpoint; ValueError when cfg has no such layout."""
    moe, mla = cfg.moe, cfg.mla
    rope = None if cfg.rope_scaling is None else _rope_scaling_to_hf(cfg.rope_scaling)
    hf: dict[str, Any] = dict(
        architectures=[architecture_name], model_type=family, vocab_size=cfg.vocab_size, hidden_size=cfg.embed_dim,
        intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        hidden_act="silu", max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        rope_scaling=rope, tie_word_embeddings=cfg.tie_embeddings, torch_dtype=cfg.param_dtype, dtype=cfg.param_dtype,
        num_experts_per_tok=moe and moe.top_k, moe_intermediate_size=moe and moe.expert_dim)
    if family == "qwen3_moe":
        if (moe is None or mla is not None or not cfg.qk_norm or cfg.qkv_bias != cfg.out_bias or moe.router != "softmax"
                or moe.num_shared_experts or moe.num_groups != 1 or moe.routed_scaling_factor != 1.0):
            raise ValueError("Qwen3MoeForCausalLM needs MoE with a softmax router, no shared experts, no expert "
                             "groups, routed_scaling_factor 1, q/k norm, GQA and qkv_bias == out_bias")
        dense = sorted(set(moe.dense_layers) | set(range(min(moe.first_k_dense, cfg.num_layers))))
        hf.update(num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, attention_bias=cfg.qkv_bias,
                  use_sliding_window=False, num_experts=moe.num_experts, norm_topk_prob=moe.norm_topk_prob,
                  decoder_sparse_step=moe.sparse_step, mlp_only_layers=dense,
                  router_aux_loss_coef=moe.switch_aux_coef)
        return hf
    if (moe is None or mla is None or cfg.qk_norm or cfg.qkv_bias or cfg.out_bias or moe.router != "sigmoid"
            or moe.dense_layers or moe.sparse_step != 1):
        raise ValueError("DeepseekV3ForCausalLM needs MLA, MoE with a sigmoid router and only first_k_dense dense "
                         "layers, no biases and no q/k norm")
    if rope is not None and mla.mscale_all_dim:
        rope["mscale_all_dim"] = mla.mscale_all_dim
    hf.update(num_key_value_heads=cfg.num_heads, q_lora_rank=mla.q_lora_rank, kv_lora_rank=mla.kv_lora_rank,
              qk_nope_head_dim=mla.qk_nope_dim, qk_rope_head_dim=mla.qk_rope_dim, v_head_dim=mla.v_head_dim,
              n_routed_experts=moe.num_experts, n_shared_experts=moe.num_shared_experts,
              routed_scaling_factor=moe.routed_scaling_factor, n_group=moe.num_groups, topk_group=moe.topk_groups,
              first_k_dense_replace=moe.first_k_dense, norm_topk_prob=moe.norm_topk_prob, rope_interleave=True,
              attention_bias=False, scoring_func="sigmoid", topk_method="noaux_tc", num_nextn_predict_layers=0)
    return hf


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


def params_from_hf(cfg: ModelConfig, tensors: Mapping[str, np.ndarray], rope_interleave: bool = True
                   ) -> dict[str, Any]:
    """r1jax params (numpy, cfg.param_dtype) from HF-named tensors; names and shapes are checked first."""
    check_tensors(cfg, {name: tuple(x.shape) for name, x in tensors.items()})
    return _build_params(cfg, lambda name: np.asarray(tensors[name]), rope_interleave)


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
    hf_config = json.loads((folder / "config.json").read_text())
    cfg = config_from_hf(hf_config, **overrides)
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
        params = _build_params(cfg, lambda name: handles[files[name]].get_tensor(name),
                               bool(hf_config.get("rope_interleave", True)))
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
