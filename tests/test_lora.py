"""LoRA adapters (r1jax.lora, ModelConfig.lora): placement, the base's function at init, folding, split/merge."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from r1jax import lora, sharding
from r1jax.config import LoRAConfig, MLAConfig, ModelConfig, MoEConfig
from r1jax.model import Transformer, init_params

DENSE = ModelConfig.tiny(vocab_size=48)
SCANNED = ModelConfig.tiny(vocab_size=48, num_layers=3, scan_layers=True, remat="full")
MOE_MLA = ModelConfig.tiny(vocab_size=48, moe=MoEConfig(num_experts=4, top_k=2, expert_dim=16, num_shared_experts=1),
                           mla=MLAConfig(kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_head_dim=8, q_lora_rank=8))
TOKENS = jnp.array([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]])
POSITIONS = jnp.broadcast_to(jnp.arange(5), (2, 5))


def _adapted(base_cfg, **kw):
    cfg = dataclasses.replace(base_cfg, lora=LoRAConfig(rank=4, **kw))
    base = init_params(base_cfg, jax.random.key(0))
    return cfg, base, lora.add_adapters(cfg, base, jax.random.key(1))


@functools.lru_cache(maxsize=None)
def _forward(cfg):
    return jax.jit(lambda params: Transformer(cfg).apply({"params": params}, TOKENS, POSITIONS)[0])


def _logits(cfg, params):
    return _forward(cfg)(params)


def _paths(tree):
    return {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("base_cfg", [DENSE, SCANNED, MOE_MLA], ids=["dense", "scanned", "moe-mla"])
def test_adapted_model_equals_the_base_at_step_0_and_folds_exactly_after_training(base_cfg):
    cfg, base, params = _adapted(base_cfg)
    np.testing.assert_array_equal(_logits(cfg, params), _logits(base_cfg, base))
    _, adapters = lora.split(params)
    bs = [x for k, x in jax.tree_util.tree_flatten_with_path(adapters)[0] if "lora_b" in jax.tree_util.keystr(k)]
    assert bs and all(float(jnp.abs(b).max()) == 0 for b in bs)  # B starts at zero
    # as after some training: every B nonzero
    trained = lora.merge(lora.split(params)[0], jax.tree.map(
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), adapters))
    adapted = _logits(cfg, trained)
    assert float(jnp.abs(adapted - _logits(base_cfg, base)).max()) > 1e-3  # the adapters do something
    base_cfg_back, folded = lora.fold(cfg, trained)
    assert base_cfg_back == base_cfg and _paths(folded) == _paths(base)
    np.testing.assert_allclose(_logits(base_cfg_back, folded), adapted, atol=1e-4)
    np.testing.assert_array_equal(_logits(cfg, lora.adapters_off(trained)), _logits(base_cfg, base))


def test_targets_select_the_projections():
    def adapted(cfg, **kw):
        _, adapters = lora.split(_adapted(cfg, **kw)[2])
        return {p.split("]")[-3].strip("['") for p in _paths(adapters)} if adapters else set()

    assert adapted(DENSE) == {"q", "k", "v", "o", "gate", "up", "down"}  # all-linear: not the LM head
    assert adapted(DENSE, targets="attention") == {"q", "k", "v", "o"}
    assert adapted(DENSE, targets="mlp") == {"gate", "up", "down"}
    assert adapted(DENSE, targets=r"attn/(q|v)$") == {"q", "v"}
    mla = adapted(MOE_MLA)
    assert {"q_a", "q_b", "kv_a", "o", "gate", "up", "down"} <= mla  # MLA and the shared expert; not routed experts
    _, adapters = lora.split(_adapted(MOE_MLA)[2])
    assert "shared" in adapters["layers_0"]["mlp"] and "wi_gate" not in adapters["layers_0"]["mlp"]


def test_split_and_merge_are_inverse_and_count_the_trainable_params():
    cfg, _, params = _adapted(DENSE)
    base, adapters = lora.split(params)
    assert all("lora" in p for p in _paths(adapters)) and not any("lora" in p for p in _paths(base))
    merged = lora.merge(base, adapters)
    assert _paths(merged) == _paths(params)
    assert all(x is y for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(params)))  # no copies
    # q: A [32, 4] + B [4, 4·8]; per layer q, k, v, o, gate, up, down
    per_layer = (32 * 4 + 4 * 32) + 2 * (32 * 4 + 4 * 16) + (32 * 4 + 4 * 32) + 2 * (32 * 4 + 4 * 64) + (64 * 4 + 4 * 32)
    assert lora.count(adapters) == 2 * per_layer
    with pytest.raises(ValueError, match="no module"):
        lora.merge(base, {"nowhere": adapters["layers_0"]})


def test_only_the_adapters_get_gradients_through_split():
    cfg, _, params = _adapted(DENSE)
    base, adapters = lora.split(params)
    adapters = jax.tree.map(lambda x: x + 0.01, adapters)  # B ≠ 0, so A gets a gradient too

    def loss(trainable):
        return jnp.mean(_logits(cfg, lora.merge(base, trainable)) ** 2)

    grads = jax.grad(loss)(adapters)
    assert jax.tree.structure(grads) == jax.tree.structure(adapters)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_scale_rslora_and_bad_settings():
    assert LoRAConfig(rank=16, alpha=32).scale == 2.0 and LoRAConfig(rank=16, alpha=32, rslora=True).scale == 8.0
    assert LoRAConfig().scale == 0.0 and not LoRAConfig().adapts("layers_0/attn/q")
    for kw, match in ((dict(rank=-1), "rank"), (dict(rank=4, alpha=0), "alpha"), (dict(rank=4, dropout=0.1), "dropout"),
                      (dict(rank=4, targets="(("), "not a regex")):
        with pytest.raises(ValueError, match=match):
            LoRAConfig(**kw)
    with pytest.raises(ValueError, match="rank is 0"):
        lora.add_adapters(DENSE, init_params(DENSE, jax.random.key(0)), jax.random.key(1))
    restored = ModelConfig.from_dict(dataclasses.replace(DENSE, lora=LoRAConfig(rank=8, targets="mlp")).to_dict())
    assert restored.lora == LoRAConfig(rank=8, targets="mlp")


def test_adapters_follow_their_projection_on_a_mesh():
    cfg = dataclasses.replace(DENSE, lora=LoRAConfig(rank=4))
    specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(cfg, sharding.make_mesh("2x4")))
    q = specs["layers_0"]["attn"]["q"]
    assert q["kernel"] == P("fsdp", None, None) and q["lora_a"] == P("fsdp", None)  # A splits like W's input
    assert specs["layers_0"]["mlp"]["down"]["lora_b"] == P(None, "fsdp")  # B like W's output


def test_adapters_on_the_runs_model_are_refused_they_belong_to_a_phase(tmp_path):
    from r1jax.errors import UsageError
    from r1jax.phases import Runner

    with pytest.raises(UsageError, match="belong to a training phase"):
        Runner(str(tmp_path), dataclasses.replace(DENSE, lora=LoRAConfig(rank=4)), [])
