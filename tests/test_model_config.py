"""ModelConfig and RopeScaling: validation messages, canonical dtypes, the tiny preset."""
import dataclasses

import jax.numpy as jnp
import pytest

from r1jax.config import ModelConfig, RopeScaling


def test_tiny_preset_is_valid_hashable_and_overridable():
    cfg = ModelConfig.tiny(num_layers=3)
    assert cfg.num_layers == 3 and cfg.num_heads % cfg.num_kv_heads == 0
    assert hash(cfg) == hash(ModelConfig.tiny(num_layers=3)) and cfg == ModelConfig.tiny(num_layers=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.num_layers = 4


def test_dtypes_are_stored_by_canonical_name():
    cfg = ModelConfig.tiny(param_dtype=jnp.bfloat16, dtype=jnp.dtype("float32"))
    assert (cfg.param_dtype, cfg.dtype) == ("bfloat16", "float32")
    assert cfg == ModelConfig.tiny(param_dtype="bfloat16")


@pytest.mark.parametrize("overrides, message", [
    (dict(num_heads=4, num_kv_heads=3), "multiple of num_kv_heads"),
    (dict(head_dim=7), "head_dim=7 must be even"),
    (dict(vocab_size=0), "vocab_size=0 must be a positive int"),
    (dict(mlp_dim=2.5), "mlp_dim=2.5 must be a positive int"),
    (dict(rope_theta=0.0), "rope_theta"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(dtype="int32"), "dtype='int32' must be a floating dtype"),
    (dict(param_dtype="nonsense"), "param_dtype='nonsense' is not a dtype"),
    (dict(rope_scaling={"rope_type": "yarn"}), "rope_scaling must be a RopeScaling"),
])
def test_invalid_model_configs_raise_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.tiny(**overrides)


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="dynamic", factor=2.0), "kind='dynamic' is not one of"),
    (dict(kind="linear", factor=0.0), "factor=0.0 must be > 0"),
    (dict(kind="yarn", factor=4.0), "needs original_max_len > 0"),
    (dict(kind="llama3", factor=8.0, original_max_len=8192, low_freq_factor=4.0, high_freq_factor=1.0),
     "high_freq_factor > low_freq_factor"),
    (dict(kind="yarn", factor=4.0, original_max_len=4096, beta_fast=1.0, beta_slow=32.0), "beta_fast > beta_slow"),
    (dict(kind="yarn", factor=4.0, original_max_len=4096, attention_factor=-1.0), "attention_factor"),
])
def test_invalid_rope_scaling_raises_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RopeScaling(**kwargs)
