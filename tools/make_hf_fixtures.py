"""Writes tests/fixtures/hf: tiny random Qwen2, Llama-3, Qwen3-MoE and DeepSeek-V3 checkpoints, inputs and logits.

Run once, offline, when the fixtures must change (tests never import torch):

    pip install torch==2.13.0 transformers safetensors
    python tools/make_hf_fixtures.py
    python tools/make_hf_fixtures.py --verify-export   # r1jax.hf.save_hf → transformers, logits compared

qwen2/: tied embeddings, q/k/v bias, YaRN rope, bf16 weights in one model.safetensors.
llama/: untied head, GQA with one kv head, head_dim ≠ hidden/heads, Llama-3 rope
        scaling, f32 weights sharded in two files with model.safetensors.index.json.
qwen3_moe/: q/k norm, softmax top-2 of 8 experts renormalized, a dense first layer
        (mlp_only_layers), bf16 weights, one tensor per expert (save_pretrained).
deepseek_v3/: MLA with q LoRA and interleaved RoPE, YaRN with mscale ≠ mscale_all_dim,
        sigmoid top-3 of 16 experts in 4 groups (2 kept) with a random nonzero
        e_score_correction_bias, routed_scaling_factor 2.5, 2 shared experts, a
        dense first layer (first_k_dense_replace), f32 weights.
Each folder has reference.npz: `ids` [B, L] (no padding) and the same rows left-
and right-padded (`left_ids`/`left_mask`, `right_ids`/`right_mask`) with
transformers' f32 eager logits for all three (padded rows run with position_ids
from the mask, as `generate` does). rope.npz holds transformers' inverse
frequencies for several llama3/yarn settings.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import safetensors.numpy
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "hf"
LENGTH, ROW_LENGTHS = 10, (10, 6, 3)

QWEN2 = transformers.Qwen2Config(
    vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-6, tie_word_embeddings=True,
    rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                     "original_max_position_embeddings": 8},
)
LLAMA = transformers.LlamaConfig(
    vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=1, head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
)
QWEN3_MOE = transformers.Qwen3MoeConfig(
    vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
    norm_topk_prob=True, mlp_only_layers=[0], max_position_embeddings=64, rms_norm_eps=1e-6,
    tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
)
DEEPSEEK_V3 = transformers.DeepseekV3Config(
    vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=8, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=4, n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=3,
    n_group=4, topk_group=2, first_k_dense_replace=1, norm_topk_prob=True, routed_scaling_factor=2.5,
    q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12, rope_interleave=True,
    max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False,
    rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "mscale": 1.0,
                     "mscale_all_dim": 0.8, "original_max_position_embeddings": 16},
)
ROPE_CASES = {  # name: (head_dim, rope dict in HF form, max_position_embeddings)
    "llama3_8b": (128, {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, 131072),
    "yarn_qwen": (128, {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0,
                        "original_max_position_embeddings": 32768}, 131072),
    "yarn_no_truncate": (64, {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 16.0, "beta_fast": 24.0,
                              "beta_slow": 2.0, "truncate": False, "original_max_position_embeddings": 2048},
                         32768),
    "yarn_mscale": (64, {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "mscale": 1.0,
                         "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096}, 163840),
    "yarn_attention_factor": (32, {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0,
                                   "attention_factor": 1.3, "original_max_position_embeddings": 512}, 1024),
}


def randomize_(model: torch.nn.Module, seed: int, bf16: bool) -> None:
    """Redraws every weight (norm scales ≠ 1, biases ≠ 0) so a mis-mapped tensor shows in the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):
                value = 1.0 + 0.2 * noise
            elif name.endswith("bias"):
                value = 0.2 * noise
            else:
                value = noise / math.sqrt(p.shape[-1]) * (2.0 if "embed" in name else 1.0)
            if bf16:  # exactly representable in bf16, so the bf16 checkpoint loses nothing
                value = value.to(torch.bfloat16).to(torch.float32)
            p.copy_(value)


def batches(vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    """Unpadded ids and the same rows cut to ROW_LENGTHS, left- and right-padded with id 0."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab_size, (len(ROW_LENGTHS), LENGTH)).astype(np.int32)
    left_ids, right_ids = np.zeros_like(ids), np.zeros_like(ids)
    left_mask, right_mask = np.zeros(ids.shape, bool), np.zeros(ids.shape, bool)
    for b, n in enumerate(ROW_LENGTHS):
        left_ids[b, LENGTH - n:], left_mask[b, LENGTH - n:] = ids[b, :n], True
        right_ids[b, :n], right_mask[b, :n] = ids[b, :n], True
    return dict(ids=ids, left_ids=left_ids, left_mask=left_mask, right_ids=right_ids, right_mask=right_mask)


def reference_logits(model: torch.nn.Module, ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """transformers' logits; padded rows get positions counted from their first real token."""
    with torch.no_grad():
        ids_t = torch.from_numpy(ids).long()
        if mask is None:
            return model(ids_t).logits.numpy().astype(np.float32)
        mask_t = torch.from_numpy(mask).long()
        positions = (mask_t.cumsum(-1) - 1).clamp(min=0)
        return model(ids_t, attention_mask=mask_t, position_ids=positions).logits.numpy().astype(np.float32)


def write_checkpoint(model: torch.nn.Module, folder: Path, bf16: bool, shards: int) -> None:
    """config.json plus safetensors as save_pretrained names them (tied head omitted), optionally sharded."""
    config = model.config
    config.dtype = "bfloat16" if bf16 else "float32"
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    state = {k: v.detach().to(torch.bfloat16 if bf16 else torch.float32).float().numpy() for k, v in
             model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight")
    if bf16:
        import ml_dtypes
        state = {k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}
    names = sorted(state)
    if shards == 1:
        safetensors.numpy.save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "model.safetensors").chmod(0o644)
        return
    weight_map = {}
    for i, part in enumerate(np.array_split(np.array(names), shards)):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        safetensors.numpy.save_file({k: state[k] for k in part}, folder / file, metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in state.values()))}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for file in folder.glob("*.safetensors"):
        file.chmod(0o644)


def save_moe_checkpoint(model: torch.nn.Module, folder: Path, bf16: bool) -> None:
    """save_pretrained, which writes MoE experts one tensor each, as published checkpoints store them."""
    model.config.architectures = [type(model).__name__]
    (model.to(torch.bfloat16) if bf16 else model).save_pretrained(folder)
    (folder / "generation_config.json").unlink(missing_ok=True)
    for file in folder.iterdir():
        file.chmod(0o644)
    if bf16:
        model.to(torch.float32)


def make_model(name: str, config: transformers.PretrainedConfig, cls: type, seed: int, bf16: bool,
               shards: int, moe: bool = False) -> None:
    """One fixture folder: checkpoint and reference.npz."""
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation="eager", dtype=torch.float32).eval()
    randomize_(model, seed, bf16)
    if moe:  # DeepSeek's balancing bias is a buffer: make it matter for the choice of experts
        gen = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for buffer_name, buffer in model.named_buffers():
                if buffer_name.endswith("e_score_correction_bias"):
                    buffer.copy_(0.1 * torch.randn(buffer.shape, generator=gen))
    data = batches(config.vocab_size, seed)
    data["logits"] = reference_logits(model, data["ids"], None)
    data["left_logits"] = reference_logits(model, data["left_ids"], data["left_mask"])
    data["right_logits"] = reference_logits(model, data["right_ids"], data["right_mask"])
    np.savez_compressed(folder / "reference.npz", **data)
    if moe:
        save_moe_checkpoint(model, folder, bf16)
    else:
        write_checkpoint(model, folder, bf16, shards)


def make_rope() -> None:
    """transformers' inverse frequencies and attention factor for each ROPE_CASES entry."""
    arrays, meta = {}, {}
    for name, (head_dim, rope, max_pos) in ROPE_CASES.items():
        config = transformers.LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                                          max_position_embeddings=max_pos, rope_parameters=dict(rope))
        inv_freq, factor = ROPE_INIT_FUNCTIONS[rope["rope_type"]](config, "cpu")
        arrays[name] = inv_freq.numpy().astype(np.float32)
        meta[name] = dict(head_dim=head_dim, rope=rope, max_position_embeddings=max_pos, attention_factor=factor)
    np.savez_compressed(OUT / "rope.npz", **arrays)
    (OUT / "rope.json").write_text(json.dumps(meta, indent=2))


def verify_export() -> None:
    """Checkpoints written by r1jax.hf.save_hf load in transformers and give r1jax's logits (not a fixture)."""
    sys.path.insert(0, str(ROOT))
    import jax
    from r1jax import hf
    from r1jax.config import MLAConfig, ModelConfig, MoEConfig, RopeScaling
    from r1jax.model import Transformer, init_params, positions_from_mask

    cases = {
        "qwen2-yarn": ModelConfig.tiny(qkv_bias=True, tie_embeddings=True, rope_scaling=RopeScaling(
            "yarn", 4.0, 16, beta_fast=16.0, beta_slow=2.0, truncate=False, attention_factor=1.2)),
        "llama-bias-llama3": ModelConfig.tiny(qkv_bias=True, out_bias=True, head_dim=16,
                                              rope_scaling=RopeScaling("llama3", 8.0, 16)),
        "llama-linear": ModelConfig.tiny(rope_scaling=RopeScaling("linear", 2.0)),
        "qwen3-moe": ModelConfig.tiny(num_layers=3, qk_norm=True, moe=MoEConfig(
            num_experts=8, top_k=2, expert_dim=16, router="softmax", norm_topk_prob=False, first_k_dense=1)),
        "deepseek-v3": ModelConfig.tiny(num_layers=3, rope_scaling=RopeScaling("yarn", 4.0, 16), mla=MLAConfig(
            kv_lora_rank=16, qk_nope_dim=8, qk_rope_dim=8, v_head_dim=12, q_lora_rank=None, mscale_all_dim=0.7),
            moe=MoEConfig(num_experts=8, top_k=2, expert_dim=16, num_shared_experts=1, num_groups=4, topk_groups=2,
                          routed_scaling_factor=2.5, first_k_dense=1)),
    }
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 64, (2, 12))
    mask = np.ones(ids.shape, bool)
    mask[1, :5] = False
    positions = np.array(positions_from_mask(mask))
    for name, cfg in cases.items():
        params = jax.tree.map(lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape).astype(np.float32),
                              init_params(cfg, jax.random.key(0)))
        if cfg.moe is not None and cfg.moe.router == "softmax":  # Qwen3-MoE checkpoints have no router bias
            params = jax.tree_util.tree_map_with_path(
                lambda path, x: np.zeros_like(x) if path[-1].key == "router_bias" else x, params)
        with tempfile.TemporaryDirectory() as folder:
            hf.save_hf(folder, cfg, params, max_shard_bytes=20_000)
            model = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager",
                                                                      dtype=torch.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask).long(),
                        position_ids=torch.from_numpy(positions)).logits.numpy()
        ours, _ = Transformer(cfg).apply({"params": params}, ids, positions, mask)
        err = float(np.abs(np.where(mask[..., None], np.asarray(ours) - ref, 0)).max())
        print(f"{name}: {type(model).__name__} max |Δlogit| = {err:.2e}")
        assert err < 1e-4, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify-export", action="store_true", help="check save_hf against transformers instead")
    if parser.parse_args().verify_export:
        verify_export()
        return
    OUT.mkdir(parents=True, exist_ok=True)
    make_model("qwen2", QWEN2, transformers.Qwen2ForCausalLM, seed=0, bf16=True, shards=1)
    make_model("llama", LLAMA, transformers.LlamaForCausalLM, seed=1, bf16=False, shards=2)
    make_model("qwen3_moe", QWEN3_MOE, transformers.Qwen3MoeForCausalLM, seed=2, bf16=True, shards=1, moe=True)
    make_model("deepseek_v3", DEEPSEEK_V3, transformers.DeepseekV3ForCausalLM, seed=3, bf16=False, shards=1,
               moe=True)
    make_rope()
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB) with transformers {transformers.__version__}, "
          f"torch {torch.__version__}")


if __name__ == "__main__":
    main()
