"""config.json ⇄ ModelConfig for the Hugging Face families r1jax reads (see `r1jax.hf`)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from r1jax.config import MLAConfig, ModelConfig, MoEConfig, RopeScaling

ARCHITECTURES = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama", "Qwen3MoeForCausalLM": "qwen3_moe",
                 "DeepseekV3ForCausalLM": "deepseek_v3"}


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
