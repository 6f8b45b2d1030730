"""LoRA adapters (r1jax.lora, ModelConfig.lora): placement, the base's function at init, folding, split/merge,
routed MoE experts' adapters on every dispatch backend, LoRA dropout in the training steps."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from collectives import gathered_ragged_all_to_all
from jax.sharding import PartitionSpec as P

from r1jax import lora, sharding
from r1jax.config import GRPOConfig, LoRAConfig, MLAConfig, ModelConfig, MoEConfig, SamplingSettings
from r1jax.data.packing import Example, pack
from r1jax.model import MoE, Transformer, init_params, moe_parallel
from r1jax.model.layers import Dense, lora_dropout
from r1jax.model.moe import AdaptedExperts, expert_ffn, grouped_ffn
from r1jax.rl.grpo_step import GRPOBatch, make_grpo_step, make_logps_fn
from r1jax.train.optim import init_train_state
from r1jax.train.sft_step import make_sft_step

DENSE = ModelConfig.tiny(vocab_size=48)
SCANNED = ModelConfig.tiny(vocab_size=48, num_layers=3, scan_layers=True, remat="full")
MOE_MLA = ModelConfig.tiny(vocab_size=48, moe=MoEConfig(num_experts=4, top_k=2, expert_dim=16, num_shared_experts=1),
                           mla=MLAConfig(kv_lora_rank=8, qk_nope_dim=8, qk_rope_dim=4, v_head_dim=8, q_lora_rank=8))
MOE_SCANNED = ModelConfig.tiny(vocab_size=48, num_layers=3, scan_layers=True, remat="full",
                               moe=MoEConfig(num_experts=4, top_k=2, expert_dim=16, dispatch="ragged_dot"))
ROUTED = {"wi_gate_lora_a", "wi_gate_lora_b", "wi_up_lora_a", "wi_up_lora_b", "wo_lora_a", "wo_lora_b"}
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


@pytest.mark.parametrize("base_cfg", [DENSE, SCANNED, MOE_MLA, MOE_SCANNED],
                         ids=["dense", "scanned", "moe-mla", "moe-scanned"])
def test_adapted_model_equals_the_base_at_step_0_and_folds_exactly_after_training(base_cfg):
    cfg, base, params = _adapted(base_cfg)
    np.testing.assert_array_equal(_logits(cfg, params), _logits(base_cfg, base))
    _, adapters = lora.split(params)
    if base_cfg.moe is not None:  # all-linear: the routed experts too, each expert its own A and B
        mlp = adapters["scan_0_3" if base_cfg.scan_layers else "layers_0"]["mlp"]
        assert ROUTED <= set(mlp) and mlp["wo_lora_b"].shape[-3:] == (4, 4, 32)
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
    assert {"q_a", "q_b", "kv_a", "o", "gate", "up", "down"} <= mla  # MLA and the shared expert

    def routed(**kw):
        return set(lora.split(_adapted(MOE_MLA, **kw)[2])[1]["layers_0"].get("mlp", {})) & ROUTED

    assert routed() == ROUTED and routed(targets="mlp") == ROUTED and routed(targets="attention") == set()
    assert routed(targets=r"mlp/wo$") == {"wo_lora_a", "wo_lora_b"}
    assert "wi_gate" not in lora.split(_adapted(MOE_MLA)[2])[1]["layers_0"]["mlp"]  # the base weight stays in the base


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
    assert LoRAConfig(rank=4, dropout=0.1).dropout == 0.1
    for kw, match in ((dict(rank=-1), "rank"), (dict(rank=4, alpha=0), "alpha"), (dict(rank=4, dropout=1.0), "dropout"),
                      (dict(rank=4, dropout=-0.1), "dropout"), (dict(rank=4, dropout="0.1"), r"dropout='0.1' must be"),
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
    moe = dataclasses.replace(MOE_MLA, mla=None, lora=LoRAConfig(rank=4))
    mlp = jax.tree.map(lambda s: s.spec, sharding.param_shardings(moe, sharding.make_mesh("expert=2,fsdp=4")))
    mlp = mlp["layers_0"]["mlp"]
    assert mlp["wi_gate"] == P("expert", "fsdp", None) and mlp["wi_gate_lora_a"] == P("expert", "fsdp", None)
    assert mlp["wo"] == P("expert", None, "fsdp") and mlp["wo_lora_b"] == P("expert", None, "fsdp")


def test_adapters_on_the_runs_model_are_refused_they_belong_to_a_phase(tmp_path):
    from r1jax.errors import UsageError
    from r1jax.phases import Runner

    with pytest.raises(UsageError, match="belong to a training phase"):
        Runner(str(tmp_path), dataclasses.replace(DENSE, lora=LoRAConfig(rank=4)), [])


# ---------------------------------------------------------------- routed MoE experts


def _moe_layer_case(dispatch="auto", targets=r"(wi_gate|wi_up|wo)$", dropout=0.0, seed=0):
    """(adapted cfg, a lone MoE layer's params, every leaf random and nonzero, x_BxLxE): routed experts adapted only."""
    moe = MoEConfig(num_experts=8, top_k=2, expert_dim=16, num_shared_experts=1, dispatch=dispatch)
    cfg = ModelConfig.tiny(moe=moe, lora=LoRAConfig(rank=4, alpha=8.0, targets=targets, dropout=dropout))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 5, cfg.embed_dim)).astype(np.float32)
    shapes = nn.unbox(jax.eval_shape(lambda: MoE(cfg).init(jax.random.key(0), x)["params"]))

    def draw(s):  # std 0.5/√fan-in: outputs O(1), so float32 results in other summation orders compare tightly
        fan_in = s.shape[-2] if len(s.shape) > 1 else 1
        return (0.5 * rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)

    return cfg, jax.tree.map(draw, shapes), x


def _merged_experts(cfg, params):
    """The MoE layer's params without routed adapters, each W_e + A_e·B_e·scale by numpy."""
    out = {k: v for k, v in params.items() if not lora.is_adapter(k)}
    for name in ("wi_gate", "wi_up", "wo"):
        a, b = np.asarray(params[f"{name}_lora_a"], np.float64), np.asarray(params[f"{name}_lora_b"], np.float64)
        out[name] = (params[name] + cfg.lora.scale * np.einsum("xir,xro->xio", a, b)).astype(np.float32)
    return out


def _moe_loss(cfg, params, x, rngs=None):
    return jnp.sum(jnp.sin(MoE(cfg).apply({"params": params}, x, rngs=rngs)))


@pytest.mark.parametrize("dispatch", ["ragged_dot", "blocked"])
def test_routed_expert_adapters_equal_the_merged_weights_in_values_and_gradients(dispatch):
    cfg, params, x = _moe_layer_case(dispatch)
    base_cfg = dataclasses.replace(cfg, lora=LoRAConfig())
    assert ROUTED <= set(params) and "shared" in params and "lora_a" not in str(jax.tree.structure(params["shared"]))
    merged = _merged_experts(cfg, params)
    y = jax.jit(lambda p: MoE(cfg).apply({"params": p}, x))(params)
    np.testing.assert_allclose(y, jax.jit(lambda p: MoE(base_cfg).apply({"params": p}, x))(merged), atol=1e-5)
    assert float(jnp.abs(y - MoE(base_cfg).apply({"params": {k: v for k, v in params.items()
                                                             if not lora.is_adapter(k)}}, x)).max()) > 1e-2
    # dL/dA_e = dL/dW'_e · B_eᵀ · s and dL/dB_e = A_eᵀ · dL/dW'_e · s, W' = W + A·B·s
    grads = jax.jit(jax.grad(functools.partial(_moe_loss, cfg)))(params, x)
    merged_grads = jax.jit(jax.grad(functools.partial(_moe_loss, base_cfg)))(merged, x)
    for name in ("wi_gate", "wi_up", "wo"):
        g_w, a, b = merged_grads[name], params[f"{name}_lora_a"], params[f"{name}_lora_b"]
        close = functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-5)
        close(grads[name], g_w)
        close(grads[f"{name}_lora_a"], cfg.lora.scale * np.einsum("xio,xro->xir", g_w, b))
        close(grads[f"{name}_lora_b"], cfg.lora.scale * np.einsum("xir,xio->xro", a, g_w))
    _, folded = lora.fold(cfg, params)  # lora.fold merges the same way
    jax.tree.map(functools.partial(np.testing.assert_allclose, atol=1e-6), folded, merged)


@pytest.mark.parametrize("spec, dispatch", [("expert=4", "blocked"), ("data=2,expert=4", "ragged_dot")])
def test_routed_expert_adapters_split_over_an_expert_mesh_equal_one_device(spec, dispatch):
    cfg, params, x = _moe_layer_case(dispatch)
    value_and_grad = jax.jit(jax.value_and_grad(functools.partial(_moe_loss, cfg)))
    want = value_and_grad(params, x)
    size = int(np.prod([int(part.split("=")[1]) for part in spec.split(",")]))
    with sharding.use_mesh(sharding.make_mesh(spec, jax.devices()[:size])):
        assert moe_parallel.expert_sharding(cfg.moe).mode == "ring"
        got = jax.jit(jax.value_and_grad(functools.partial(_moe_loss, cfg)))(params, x)
        # the all-to-all exchange, its bookkeeping with the gathered stand-in for ragged_all_to_all
        ep = dataclasses.replace(moe_parallel.expert_sharding(cfg.moe), mode="all_to_all")
        rng = np.random.default_rng(5)
        x_TxE, routed = x.reshape(-1, x.shape[-1]), rng.integers(0, 8, (15, 2)).astype(np.int32)
        gates = rng.uniform(0.1, 1.0, (15, 2)).astype(np.float32)
        weights = [AdaptedExperts(params[n], params[f"{n}_lora_a"], params[f"{n}_lora_b"], cfg.lora.scale)
                   for n in ("wi_gate", "wi_up", "wo")]
        ffn = functools.partial(expert_ffn, backend=dispatch)
        all_to_all = jax.jit(lambda key, *w: moe_parallel.parallel_expert_ffn(
            ep, x_TxE, routed, gates, *w, ffn=ffn, grouped=grouped_ffn(dispatch),
            collective=gathered_ragged_all_to_all, dropout_key=key))
        parallel = all_to_all(None, *weights)
        dropped = [dataclasses.replace(w, dropout=0.3) for w in weights]  # each shard draws its own masks
        with_dropout = [all_to_all(jax.random.key(k), *dropped) for k in (0, 0, 1)]
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5), got, want)
    np.testing.assert_allclose(parallel, jax.jit(ffn)(x_TxE, routed, gates, *weights), atol=2e-5)
    np.testing.assert_array_equal(with_dropout[0], with_dropout[1])
    assert float(jnp.abs(with_dropout[0] - parallel).max()) > 1e-3
    assert float(jnp.abs(with_dropout[0] - with_dropout[2]).max()) > 1e-3


# ---------------------------------------------------------------- dropout


def test_lora_dropout_drops_the_rate_and_rescales_the_rest():
    x = jnp.ones((200_000,))
    y = lora_dropout(x, 0.3, jax.random.key(0))
    assert abs(float(jnp.mean(y == 0)) - 0.3) < 0.01 and np.allclose(y[y != 0], 1 / 0.7)
    assert lora_dropout(x, 0.3, None) is x and lora_dropout(x, 0.0, jax.random.key(0)) is x


def test_dense_dropout_is_unbiased_and_only_with_a_dropout_rng():
    cfg = dataclasses.replace(DENSE, lora=LoRAConfig(rank=4, dropout=0.5, targets=""))  # "": a lone Dense
    layer = Dense(cfg, (16,), ("embed", "mlp"))
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    params = jax.tree.map(lambda v: v + 0.3, nn.unbox(layer.init(jax.random.key(0), x)["params"]))  # B ≠ 0
    no_dropout = layer.apply({"params": params}, x)
    off = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, dropout=0.0))
    np.testing.assert_array_equal(no_dropout, Dense(off, (16,), ("embed", "mlp")).apply({"params": params}, x))
    keys = jax.random.split(jax.random.key(1), 4000)
    ys = jax.jit(jax.vmap(lambda k: layer.apply({"params": params}, x, rngs={"dropout": k})))(keys)
    assert float(jnp.abs(ys[0] - no_dropout).max()) > 1e-2 and not np.array_equal(ys[0], ys[1])
    # E[dropout(x)] = x: the mean over keys is the no-dropout output, within 5 standard errors
    err = np.abs(np.mean(ys, 0) - no_dropout)
    assert np.all(err <= 5 * np.std(ys, 0) / np.sqrt(len(keys)) + 1e-6), err.max()


@pytest.mark.parametrize("base_cfg", [SCANNED, MOE_MLA], ids=["scanned", "moe-mla"])
def test_model_dropout_needs_a_dropout_rng_and_is_reproducible(base_cfg):
    cfg, _, params = _adapted(base_cfg)
    base, adapters = lora.split(params)
    params = lora.merge(base, jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape),
                                           adapters))
    drop_cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, dropout=0.3))
    forward = jax.jit(lambda p, key: Transformer(drop_cfg).apply({"params": p}, TOKENS, POSITIONS,
                                                                 rngs={"dropout": key})[0])
    np.testing.assert_array_equal(_logits(drop_cfg, params), _logits(cfg, params))  # no rng: no dropout
    a, b, c = (forward(params, jax.random.key(k)) for k in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - _logits(cfg, params)).max()) > 1e-3 and float(jnp.abs(a - c).max()) > 1e-4


def test_every_projection_of_every_scanned_layer_draws_its_own_mask(monkeypatch):
    from r1jax.model import layers

    keys = []
    record = lambda key: keys.append(tuple(np.asarray(key)))  # noqa: E731

    def recording_dropout(x, rate, key):
        if key is not None:
            jax.debug.callback(record, jax.random.key_data(key))
        return lora_dropout(x, rate, key)

    monkeypatch.setattr(layers, "lora_dropout", recording_dropout)
    cfg = dataclasses.replace(SCANNED, lora=LoRAConfig(rank=4, dropout=0.1))  # scanned, rematerialized
    params = lora.add_adapters(cfg, init_params(SCANNED, jax.random.key(0)), jax.random.key(1))
    jax.block_until_ready(Transformer(cfg).apply({"params": params}, TOKENS, POSITIONS,
                                                 rngs={"dropout": jax.random.key(2)})[0])
    jax.effects_barrier()
    assert len(keys) == 3 * 7 and len(set(keys)) == len(keys)  # 3 layers × q, k, v, o, gate, up, down


def test_routed_expert_dropout_needs_a_dropout_rng_and_splits_over_an_expert_mesh():
    cfg, params, x = _moe_layer_case(dropout=0.3)
    off_cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, dropout=0.0))
    apply = jax.jit(lambda p, key: MoE(cfg).apply({"params": p}, x, rngs={"dropout": key}))
    no_dropout = MoE(off_cfg).apply({"params": params}, x)
    np.testing.assert_array_equal(MoE(cfg).apply({"params": params}, x), no_dropout)
    a, b = apply(params, jax.random.key(0)), apply(params, jax.random.key(0))
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - no_dropout).max()) > 1e-3
    with sharding.use_mesh(sharding.make_mesh("expert=4", jax.devices()[:4])):
        split = jax.jit(lambda p, key: MoE(cfg).apply({"params": p}, x, rngs={"dropout": key}))
        np.testing.assert_allclose(MoE(cfg).apply({"params": params}, x), no_dropout, atol=2e-5)
        c, d = split(params, jax.random.key(0)), split(params, jax.random.key(0))
    np.testing.assert_array_equal(c, d)
    assert float(jnp.abs(c - no_dropout).max()) > 1e-3


def _grpo_batch(cfg, params, rows=4, prompt_len=5, length=6):
    rng = np.random.default_rng(0)
    prompt_mask = np.arange(prompt_len)[None] >= (prompt_len - rng.integers(2, prompt_len + 1, rows))[:, None]
    comp_mask = np.arange(length)[None] < rng.integers(1, length + 1, rows)[:, None]
    batch = GRPOBatch(
        prompt_BxP=jnp.asarray(np.where(prompt_mask, rng.integers(2, cfg.vocab_size, (rows, prompt_len)), 0),
                               jnp.int32),
        prompt_mask_BxP=jnp.asarray(prompt_mask),
        completion_BxT=jnp.asarray(np.where(comp_mask, rng.integers(2, cfg.vocab_size, (rows, length)), 0), jnp.int32),
        completion_mask_BxT=jnp.asarray(comp_mask), loss_mask_BxT=jnp.asarray(comp_mask, jnp.float32),
        old_logps_BxT=jnp.zeros((rows, length)), ref_logps_BxT=jnp.zeros((rows, length)),
        advantages_B=jnp.asarray(rng.normal(size=rows), jnp.float32))
    logps = make_logps_fn(Transformer(cfg), chunk=4)(params, batch)  # no dropout: the old policy's log-probs
    return batch.replace(old_logps_BxT=logps, ref_logps_BxT=logps)


@pytest.mark.parametrize("kind", ["grpo", "sft"])
def test_a_training_step_with_dropout_is_deterministic_and_draws_its_masks_from_its_key(kind):
    tx = optax.sgd(1.0)  # not Adam: its first update is about sign(g), blind to the masks

    def run(dropout, key=0):
        cfg, _, params = _adapted(MOE_MLA, dropout=dropout)
        frozen, adapters = lora.split(params)
        state = init_train_state(jax.tree.map(jnp.copy, adapters), tx)
        if kind == "grpo":
            gcfg = GRPOConfig(group_size=2, prompts_per_step=2, sampling=SamplingSettings(max_new_tokens=6),
                              logprob_chunk=4, grad_accum=2)
            state, metrics = make_grpo_step(Transformer(cfg), tx, gcfg)(state, _grpo_batch(cfg, params),
                                                                        jax.random.key(key), frozen)
        else:
            rng = np.random.default_rng(0)
            examples = [Example(rng.integers(4, 48, n).astype(np.int32), (np.arange(n) >= 2).astype(np.float32))
                        for n in (9, 12, 7, 10)]
            batch = pack(examples, seq_len=16)[0]
            state, metrics = make_sft_step(Transformer(cfg), tx, chunk=8, seed=key)(state, batch, frozen)
        assert float(metrics["skipped"]) == 0
        return adapters, state.params

    adapters, a = run(0.3)
    _, b = run(0.3)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(adapters)))
    jax.tree.map(np.testing.assert_array_equal, a, b)  # the same key: the same masks, the same update
    for other in (run(0.0)[1], run(0.3, key=1)[1]):  # without dropout, or from another key: another update
        assert any(not np.allclose(x, y, atol=1e-7) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(other)))
