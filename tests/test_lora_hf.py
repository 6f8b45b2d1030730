"""PEFT LoRA adapters (r1jax.lora_hf): parity with peft's logits (committed fixtures), round trips, errors."""
import dataclasses
import functools
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from r1jax import hf, lora, lora_hf
from r1jax.config import LoRAConfig, MLAConfig, ModelConfig, MoEConfig
from r1jax.errors import UsageError
from r1jax.model import Transformer, positions_from_mask

FIXTURES = Path(__file__).parent / "fixtures"
PEFT = FIXTURES / "peft"
BASE = FIXTURES / "hf" / "qwen2"
ALL_LINEAR = {"q", "k", "v", "o", "gate", "up", "down"}


@functools.cache
def base(scan: bool = False):
    return hf.load_hf(BASE, scan_layers=scan)


@functools.cache
def forward_fn(cfg):
    return jax.jit(lambda p, ids, positions, mask: Transformer(cfg).apply({"params": p}, ids, positions, mask)[0])


def adapted_logits(cfg, params, ids, mask):
    return np.asarray(forward_fn(cfg)(params, ids, positions_from_mask(mask), mask))


def load_adapted(name, scan=False):
    base_cfg, base_params = base(scan)
    lora_cfg, adapters = lora_hf.load_peft(PEFT / name, base_cfg)
    return dataclasses.replace(base_cfg, lora=lora_cfg), lora.merge(base_params, adapters)


@pytest.mark.parametrize("name, scan", [("qwen2_r4", False), ("qwen2_r4", True), ("qwen2_r2_rslora", False)],
                         ids=["r4-unrolled", "r4-scanned", "r2-rslora"])
def test_adapted_logits_match_peft(name, scan):
    cfg, params = load_adapted(name, scan)
    assert ("scan_0_2" in params) == scan
    ref = np.load(PEFT / name / "reference.npz")
    ids = ref["ids"]
    np.testing.assert_allclose(adapted_logits(cfg, params, ids, ids > -1), ref["logits"], atol=1e-4, rtol=0)
    base_cfg, base_params = base(scan)  # the adapters matter
    assert np.abs(adapted_logits(base_cfg, base_params, ids, ids > -1) - ref["logits"]).max() > 1.0
    if "left_ids" in ref.files:
        ids, mask = ref["left_ids"], ref["left_mask"]
        np.testing.assert_allclose(adapted_logits(cfg, params, ids, mask)[mask], ref["left_logits"][mask],
                                   atol=1e-4, rtol=0)


def test_adapter_config_maps_to_a_lora_config_adapting_exactly_those_modules():
    cfg, params = load_adapted("qwen2_r4")
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.rslora, cfg.lora.scale) == (4, 8.0, False, 2.0)
    _, adapters = lora.split(params)
    assert set(adapters["layers_0"]["attn"]) | set(adapters["layers_1"]["mlp"]) == ALL_LINEAR
    q = adapters["layers_0"]["attn"]["q"]
    assert q["lora_a"].shape == (64, 4) and q["lora_b"].shape == (4, 4, 16)  # A [E, r], B [r, heads, head_dim]
    rs_cfg, rs_params = load_adapted("qwen2_r2_rslora")
    assert rs_cfg.lora.rslora and rs_cfg.lora.scale == pytest.approx(4 / 2 ** 0.5)
    assert [m for m in ("layers_1/attn/q", "layers_1/attn/k", "layers_1/attn/v", "layers_1/mlp/down",
                        "layers_1/mlp/up") if rs_cfg.lora.adapts(m)] == ["layers_1/attn/q", "layers_1/attn/v",
                                                                        "layers_1/mlp/down"]


@pytest.mark.parametrize("name", ["qwen2_r4", "qwen2_r2_rslora"])
def test_export_writes_peft_tensors_byte_for_byte_and_reads_back(name, tmp_path):
    cfg, params = load_adapted(name, scan=True)  # exported from the scanned layout
    lora_hf.save_peft(tmp_path, cfg, params, base_model_name_or_path="tests/fixtures/hf/qwen2")
    written, original = load_file(tmp_path / lora_hf.WEIGHTS_FILE), load_file(PEFT / name / lora_hf.WEIGHTS_FILE)
    assert set(written) == set(original)
    for key, value in original.items():
        assert written[key].dtype == value.dtype and written[key].tobytes() == value.tobytes(), key
    ours, theirs = (json.loads((f / lora_hf.CONFIG_FILE).read_text()) for f in (tmp_path, PEFT / name))
    for field in ("peft_type", "task_type", "r", "lora_alpha", "use_rslora", "bias", "base_model_name_or_path"):
        assert ours[field] == theirs[field], field
    assert sorted(ours["target_modules"]) == sorted(theirs["target_modules"])
    lora_cfg, adapters = lora_hf.load_peft(tmp_path, base()[0])  # unrolled this time
    assert lora_cfg == cfg.lora
    _, exported = lora.split(params)
    jax.tree.map(np.testing.assert_array_equal, adapters, hf.unstack_layers(exported))


def test_folded_then_saved_as_a_checkpoint_gives_peft_logits(tmp_path):
    cfg, params = load_adapted("qwen2_r4")
    merged_cfg, merged = lora.fold(cfg, params)
    hf.save_hf(tmp_path, merged_cfg, merged)  # f32: the merged weights are not bf16-exact
    cfg2, params2 = hf.load_hf(tmp_path)
    ref = np.load(PEFT / "qwen2_r4" / "reference.npz")
    ids = ref["ids"]
    np.testing.assert_allclose(adapted_logits(cfg2, params2, ids, ids > -1), ref["logits"], atol=1e-4, rtol=0)


def copy_adapter(dest, name="qwen2_r4"):
    for file in (lora_hf.CONFIG_FILE, lora_hf.WEIGHTS_FILE):
        shutil.copy(PEFT / name / file, dest / file)
    return dest


def edit_config(folder, **changes):
    config = json.loads((folder / lora_hf.CONFIG_FILE).read_text())
    config.update(changes)
    (folder / lora_hf.CONFIG_FILE).write_text(json.dumps(config))


def test_missing_or_malformed_adapter_files_are_errors_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match=rf"{lora_hf.CONFIG_FILE}: not found"):
        lora_hf.load_peft(tmp_path, base()[0])
    folder = copy_adapter(tmp_path)
    (folder / lora_hf.CONFIG_FILE).write_text('{"r": 4,')
    with pytest.raises(ValueError, match=rf"{lora_hf.CONFIG_FILE}: not valid JSON"):
        lora_hf.load_peft(folder, base()[0])
    edit_config(copy_adapter(tmp_path), r="4")
    with pytest.raises(ValueError, match=rf"{lora_hf.CONFIG_FILE}: r='4': must be an int > 0"):
        lora_hf.load_peft(folder, base()[0])
    edit_config(copy_adapter(tmp_path), r=4)
    (folder / lora_hf.WEIGHTS_FILE).rename(folder / "adapter_model.bin")
    with pytest.raises(ValueError, match=rf"{lora_hf.WEIGHTS_FILE}: not found \(only adapter_model.bin"):
        lora_hf.load_peft(folder, base()[0])
    (folder / lora_hf.WEIGHTS_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ValueError, match=rf"{lora_hf.WEIGHTS_FILE}: not a readable safetensors file"):
        lora_hf.load_peft(folder, base()[0])


@pytest.mark.parametrize("changes, message", [
    (dict(use_dora=True), "use_dora=True: DoRA"),
    (dict(bias="all"), "bias='all'"),
    (dict(modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(rank_pattern={"q_proj": 8}), "rank_pattern"),
    (dict(peft_type="IA3"), "peft_type='IA3'"),
    (dict(target_modules=["q_proj", "lm_head"]), "cannot place an adapter on 'lm_head'"),
])
def test_unsupported_options_are_errors_naming_the_field(changes, message, tmp_path):
    edit_config(copy_adapter(tmp_path), **changes)
    with pytest.raises(ValueError, match=message):
        lora_hf.load_peft(tmp_path, base()[0])


def test_dropout_is_read_into_the_config_and_bad_values_name_the_field(tmp_path):
    edit_config(copy_adapter(tmp_path), lora_dropout=0.1)
    assert lora_hf.load_peft(tmp_path, base()[0])[0].dropout == 0.1
    edit_config(tmp_path, lora_dropout=1.5)
    with pytest.raises(ValueError, match="lora_dropout=1.5: must be in"):
        lora_hf.load_peft(tmp_path, base()[0])


def edit_tensors(folder, edit):
    tensors = load_file(folder / lora_hf.WEIGHTS_FILE)
    edit(tensors)
    save_file(tensors, folder / lora_hf.WEIGHTS_FILE)


def test_tensors_that_cannot_be_placed_are_errors_naming_them(tmp_path):
    folder = copy_adapter(tmp_path)
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    edit_tensors(folder, lambda t: t.update({"base_model.model.lm_head.lora_A.weight": np.zeros((4, 64), np.float32)}))
    with pytest.raises(ValueError, match="'base_model.model.lm_head.lora_A.weight' cannot be placed .*LM head"):
        lora_hf.load_peft(folder, base()[0])
    copy_adapter(tmp_path)
    edit_tensors(folder, lambda t: t.update({q + ".lora_B.weight": t[q + ".lora_B.weight"][:, :2]}))
    with pytest.raises(ValueError, match=rf"'{q}.lora_B.weight' has shape \(64, 2\), expected \(64, 4\)"):
        lora_hf.load_peft(folder, base()[0])
    copy_adapter(tmp_path)
    up_1 = "base_model.model.model.layers.1.mlp.up_proj"
    edit_tensors(folder, lambda t: [t.pop(k) for k in list(t) if k.startswith(up_1)])
    with pytest.raises(ValueError, match="some layers only .*layers.1.mlp.up_proj has none"):
        lora_hf.load_peft(folder, base()[0])


def test_export_refuses_what_peft_cannot_hold_here():
    with pytest.raises(ValueError, match="rank is 0"):
        lora_hf.save_peft("/nonexistent", base()[0], base()[1])
    cfg = ModelConfig.tiny(mla=MLAConfig(kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_head_dim=8, q_lora_rank=8),
                           lora=LoRAConfig(rank=2))
    adapters = lora.init_adapters(cfg, jax.random.key(0))
    with pytest.raises(ValueError, match="layers_0/attn/kv_a cannot be exported .*interleaved RoPE"):
        lora_hf.save_peft("/nonexistent", cfg, adapters)
    moe = ModelConfig.tiny(moe=MoEConfig(num_experts=4, top_k=2, expert_dim=16), lora=LoRAConfig(rank=2))
    with pytest.raises(UsageError, match=r"layers_0/mlp/wi_gate cannot be exported \(routed MoE experts have no "
                                         r"standard PEFT key layout: adapt targets without them .* save the merged"):
        lora_hf.save_peft("/nonexistent", moe, lora.init_adapters(moe, jax.random.key(0)))
