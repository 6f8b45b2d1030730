"""Writes tests/fixtures/peft: PEFT LoRA adapters on the tiny Qwen2 of tests/fixtures/hf/qwen2, inputs and logits.

Run once, offline, when the fixtures must change (tests never import torch or peft):

    pip install torch==2.13.0 transformers peft safetensors
    python tools/make_peft_fixture.py
    python tools/make_peft_fixture.py --verify-export   # r1jax.lora_hf.save_peft → peft, logits compared

qwen2_r4/: r=4, lora_alpha=8 on q/k/v/o/gate/up/down_proj; reference.npz holds `ids` [B, L] and
           peft's f32 eager `logits`, and the same rows left-padded (`left_ids`, `left_mask`,
           `left_logits`, positions from the mask as `generate` counts them).
qwen2_r2_rslora/: r=2, lora_alpha=4, use_rslora, on q_proj, v_proj and down_proj only; `ids`, `logits`.
Every lora_A and lora_B is redrawn (fixed seed) so that each adapter moves the logits.
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import peft
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_hf_fixtures import batches, reference_logits  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "tests" / "fixtures" / "hf" / "qwen2"
OUT = ROOT / "tests" / "fixtures" / "peft"
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VARIANTS = {  # folder: (LoraConfig keywords, seed, with a left-padded batch)
    "qwen2_r4": (dict(r=4, lora_alpha=8, target_modules=ALL_LINEAR), 10, True),
    "qwen2_r2_rslora": (dict(r=2, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"]),
                        11, False),
}


def base_model(folder: Path = BASE) -> torch.nn.Module:
    """A transformers checkpoint in f32 with eager attention."""
    return transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager",
                                                             dtype=torch.float32).eval()


def randomize_adapters_(model: torch.nn.Module, seed: int) -> None:
    """Redraws lora_A [r, in] and lora_B [out, r] (B ≠ 0), scaled so each adapter shifts its output by O(0.1-1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]) * 0.3)


def make_variant(name: str, kwargs: dict, seed: int, padded: bool) -> None:
    """One fixture folder: the adapter as save_pretrained writes it, plus reference.npz."""
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    config = peft.LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **kwargs)
    model = peft.get_peft_model(base_model(), config).eval()
    randomize_adapters_(model, seed)
    model.peft_config["default"].base_model_name_or_path = str(BASE.relative_to(ROOT))  # not this machine's path
    model.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)  # peft's model card template
    data = batches(model.config.vocab_size, seed)
    ref = {"ids": data["ids"], "logits": reference_logits(model, data["ids"], None)}
    if padded:
        ref.update(left_ids=data["left_ids"], left_mask=data["left_mask"],
                   left_logits=reference_logits(model, data["left_ids"], data["left_mask"]))
    base_logits = reference_logits(base_model(), data["ids"], None)
    print(f"{name}: adapters move the logits by up to {np.abs(ref['logits'] - base_logits).max():.3f}")
    np.savez_compressed(folder / "reference.npz", **ref)
    for file in folder.iterdir():
        file.chmod(0o644)


def verify_export() -> None:
    """Adapters written by r1jax.lora_hf.save_peft load in peft and give r1jax's logits (not a fixture)."""
    sys.path.insert(0, str(ROOT))
    import dataclasses

    import jax
    from r1jax import hf, lora, lora_hf
    from r1jax.config import LoRAConfig
    from r1jax.model import Transformer, positions_from_mask

    cases = {  # HF fixture folder, LoRAConfig
        "qwen2 all-linear": ("qwen2", LoRAConfig(rank=4, alpha=8.0)),
        "llama attention rslora": ("llama", LoRAConfig(rank=3, alpha=5.0, rslora=True, targets="attention")),
        "llama layer 1 only": ("llama", LoRAConfig(rank=2, alpha=4.0, targets=r"layers_1/(attn|mlp)/")),
        # MoE models without MLP adapters: peft 0.21 on transformers 5 reads gate/up/down_proj as the fused routed
        # experts there, so adapters on a dense layer's MLP or on shared experts are dropped on peft's side
        "qwen3-moe attention": ("qwen3_moe", LoRAConfig(rank=2, alpha=4.0, targets="attention")),
        "deepseek-v3 q_a, o": ("deepseek_v3", LoRAConfig(rank=2, alpha=4.0, targets=r"attn/(q_a|o)$")),
    }
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 90, (2, 12))
    mask = np.ones(ids.shape, bool)
    mask[1, :5] = False
    positions = np.array(positions_from_mask(mask))
    for name, (fixture, lora_cfg) in cases.items():
        base_cfg, base = hf.load_hf(ROOT / "tests" / "fixtures" / "hf" / fixture)
        cfg = dataclasses.replace(base_cfg, lora=lora_cfg)
        adapters = jax.tree.map(lambda x: 0.1 * rng.standard_normal(x.shape).astype(np.float32),
                                lora.init_adapters(cfg, jax.random.key(0)))
        ours, _ = Transformer(cfg).apply({"params": lora.merge(base, adapters)}, ids, positions, mask)
        with tempfile.TemporaryDirectory() as folder:
            lora_hf.save_peft(folder, cfg, adapters)
            model = peft.PeftModel.from_pretrained(base_model(ROOT / "tests" / "fixtures" / "hf" / fixture),
                                                   folder).eval()
            targets = model.peft_config["default"].target_modules
        with torch.no_grad():
            ref = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask).long(),
                        position_ids=torch.from_numpy(positions)).logits.numpy()
        n_lora = sum(1 for n, _ in model.named_parameters() if ".lora_A." in n)
        err = float(np.abs(np.where(mask[..., None], np.asarray(ours) - ref, 0)).max())
        print(f"{name}: {n_lora} adapted modules, target_modules={targets}, max |Δlogit| = {err:.2e}")
        assert err < 1e-4, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify-export", action="store_true", help="check save_peft against peft instead")
    if parser.parse_args().verify_export:
        verify_export()
        return
    for name, (kwargs, seed, padded) in VARIANTS.items():
        make_variant(name, kwargs, seed, padded)
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"wrote {OUT} ({total / 1024:.0f} KiB) with peft {peft.__version__}, transformers "
          f"{transformers.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
