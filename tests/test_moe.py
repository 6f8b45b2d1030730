"""MoE: router math by hand, dropless dispatch ≡ dense reference, cost scaling, balancing bias, aux losses."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.config import ModelConfig, MoEConfig
from r1jax.model import (MoE, Transformer, block_parts, expert_ffn, init_params, is_moe_layer, moe_aux,
                         param_logical_axes, positions_from_mask, route, router_bias_mask, update_router_bias)
from r1jax.model.layers import Mlp
from r1jax.model import router

# jitted: one compile each instead of one per eager op
route = jax.jit(route, static_argnums=2)
mask_groups = jax.jit(router.mask_groups, static_argnums=(1, 2))
seq_balance_loss = jax.jit(router.seq_balance_loss)
switch_loss = jax.jit(router.switch_loss)

V3 = MoEConfig(num_experts=8, top_k=2, expert_dim=16, num_shared_experts=1, norm_topk_prob=True,
               routed_scaling_factor=2.5, num_groups=4, topk_groups=2, first_k_dense=1, seq_aux_alpha=0.1,
               switch_aux_coef=0.01)
CFG = ModelConfig.tiny(moe=V3)  # layer 0 dense, layer 1 MoE


def random_params(cfg, seed=0):
    """Params of init_params' structure drawn with numpy (compiling the random init of a model is slow)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))

    def draw(path, s):
        if path[-1].key == "router_bias":
            return np.zeros(s.shape, np.float32)
        if path[-1].key == "scale":
            return (1 + 0.1 * rng.standard_normal(s.shape)).astype(np.float32)
        fan_in = s.shape[-2] if len(s.shape) == 3 and path[-1].key in ("wi_gate", "wi_up", "wo") else s.shape[0]
        return (rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def logit(p):
    return float(np.log(p / (1 - p)))


# ---------------------------------------------------------------- router math by hand


def test_bias_changes_the_choice_but_not_the_gate_weights():
    moe = MoEConfig(num_experts=4, top_k=2, expert_dim=4, routed_scaling_factor=2.5)
    scores = np.array([0.9, 0.8, 0.3, 0.1])
    logits_1xX = jnp.asarray([[logit(s) for s in scores]])
    gates, experts, s = route(logits_1xX, jnp.zeros(4), moe)
    assert sorted(experts[0].tolist()) == [0, 1]
    np.testing.assert_allclose(s[0], scores, rtol=1e-6)
    by_expert = dict(zip(experts[0].tolist(), gates[0].tolist()))
    np.testing.assert_allclose([by_expert[0], by_expert[1]], [2.5 * 0.9 / 1.7, 2.5 * 0.8 / 1.7], rtol=1e-6)
    # biases -0.1 on expert 1 and +0.75 on expert 3 make 3 win (biased 0.85 > 0.7)...
    gates, experts, _ = route(logits_1xX, jnp.asarray([0.0, -0.1, 0.0, 0.75]), moe)
    by_expert = dict(zip(experts[0].tolist(), gates[0].tolist()))
    assert sorted(by_expert) == [0, 3]
    # ...but its gate comes from its unbiased score 0.1
    np.testing.assert_allclose([by_expert[0], by_expert[3]], [2.5 * 0.9 / 1.0, 2.5 * 0.1 / 1.0], rtol=1e-6)


def test_group_limited_routing_masks_other_groups_at_minus_infinity():
    # 8 experts in 4 groups of 2; group score = sum of its top-2: g0 1.0, g1 0.95+0.0=0.95, g2 1.2, g3 0.3
    choice = jnp.asarray([[0.5, 0.5, 0.95, 0.0, 0.6, 0.6, 0.2, 0.1]])
    masked = np.asarray(mask_groups(choice, 4, 2))
    kept = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)  # groups 0 and 2
    np.testing.assert_array_equal(masked[0], np.where(kept, np.asarray(choice[0]), -np.inf))
    moe = MoEConfig(num_experts=8, top_k=2, expert_dim=4, num_groups=4, topk_groups=2, norm_topk_prob=False)
    logits = jnp.asarray([[logit(float(p)) for p in np.clip(choice[0], 0.01, 0.99)]])
    _, experts, _ = route(logits, jnp.zeros(8), moe)
    assert sorted(experts[0].tolist()) == [4, 5]  # expert 2 has the best single score but its group is masked
    _, experts, _ = route(logits, jnp.zeros(8), dataclasses.replace(moe, num_groups=1, topk_groups=1))
    assert 2 in experts[0].tolist()


@pytest.mark.parametrize("renormalize", [False, True])
def test_softmax_top_k_router_with_optional_renormalization(renormalize):
    moe = MoEConfig(num_experts=4, top_k=2, expert_dim=4, router="softmax", norm_topk_prob=renormalize)
    probs = np.array([0.1, 0.5, 0.15, 0.25])
    gates, experts, scores = route(jnp.log(jnp.asarray([probs])), jnp.zeros(4), moe)
    np.testing.assert_allclose(scores[0], probs, rtol=1e-6)
    assert experts[0].tolist() == [1, 3]
    expected = [0.5, 0.25] if not renormalize else [0.5 / 0.75, 0.25 / 0.75]
    np.testing.assert_allclose(gates[0], expected, rtol=1e-6)


def test_moe_layers_are_placed_by_first_k_dense_dense_layers_and_sparse_step():
    assert [is_moe_layer(V3, i) for i in range(3)] == [False, True, True]
    qwen = MoEConfig(num_experts=4, top_k=1, expert_dim=4, dense_layers=(3,), sparse_step=2)
    assert [i for i in range(8) if is_moe_layer(qwen, i)] == [1, 5, 7]
    assert [block_parts(CFG, i)[1] for i in range(3)] == [Mlp, MoE, MoE]
    assert not is_moe_layer(None, 5)


# ---------------------------------------------------------------- dispatch


def dense_reference(x_TxE, experts_TxK, gates_TxK, wg_XxExM, wu_XxExM, wo_XxMxE):
    """Every expert on every token, combined by a [T, X] gate matrix: the test reference for dispatch."""
    h_XxTxM = nn.silu(jnp.einsum("te,xem->xtm", x_TxE, wg_XxExM)) * jnp.einsum("te,xem->xtm", x_TxE, wu_XxExM)
    out_XxTxE = jnp.einsum("xtm,xme->xte", h_XxTxM, wo_XxMxE)
    tokens = x_TxE.shape[0]
    combine_TxX = jnp.zeros((tokens, wg_XxExM.shape[0])).at[jnp.arange(tokens)[:, None], experts_TxK].add(gates_TxK)
    return jnp.einsum("tx,xte->te", combine_TxX, out_XxTxE)


def dispatch_case(tokens, experts, top_k, seed, skew=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, 8)).astype(np.float32)
    weights = [0.3 * rng.standard_normal(shape).astype(np.float32)
               for shape in ((experts, 8, 6), (experts, 8, 6), (experts, 6, 8))]
    scores = rng.standard_normal((tokens, experts))
    if skew:  # most tokens on expert 0, experts 1 and 2 get none
        scores[:, 0] += 5.0
        scores[:, 1:3] -= 5.0
    routed = np.argsort(-scores, axis=1)[:, :top_k].astype(np.int32)
    gates = rng.uniform(0.1, 1.0, (tokens, top_k)).astype(np.float32)
    return x, routed, gates, weights


@pytest.mark.parametrize("backend", ["blocked", "ragged_dot"])
@pytest.mark.parametrize("tokens, experts, top_k, skew", [(12, 4, 2, False), (9, 8, 3, True), (5, 16, 1, False)])
def test_dropless_dispatch_equals_the_dense_reference_in_values_and_gradients(backend, tokens, experts, top_k, skew):
    x, routed, gates, weights = dispatch_case(tokens, experts, top_k, seed=tokens, skew=skew)
    ours = functools.partial(expert_ffn, backend=backend)

    def loss(fn, x, gates, *w):
        return jnp.sum(jnp.sin(fn(x, routed, gates, *w)))

    np.testing.assert_allclose(jax.jit(ours)(x, routed, gates, *weights),
                               jax.jit(dense_reference)(x, routed, gates, *weights), atol=1e-5, rtol=1e-5)
    grads = jax.jit(jax.grad(functools.partial(loss, ours), argnums=(0, 1, 2, 3, 4)))(x, gates, *weights)
    expected = jax.jit(jax.grad(functools.partial(loss, dense_reference), argnums=(0, 1, 2, 3, 4)))(x, gates, *weights)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def compiled_flops(num_experts, ffn):
    """FLOPs XLA reports for one compiled forward + backward step of the expert layer (T=256, K=2, E=64, M=128)."""
    moe = MoEConfig(num_experts=num_experts, top_k=2, expert_dim=128, router="softmax")
    cfg = ModelConfig.tiny(embed_dim=64, moe=moe)
    x_TxE = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
    w = [jnp.zeros((num_experts, 64, 128)), jnp.zeros((num_experts, 64, 128)), jnp.zeros((num_experts, 128, 64))]
    router_ExX = jnp.zeros((64, num_experts))

    def loss(x_TxE, router_ExX, *w):
        gates, experts, _ = route(x_TxE @ router_ExX, jnp.zeros(num_experts), cfg.moe)
        return jnp.mean(ffn(x_TxE, experts, gates, *w) ** 2)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))
    return step.lower(x_TxE, router_ExX, *w).compile().cost_analysis()["flops"]


def test_compiled_cost_grows_with_active_experts_not_total_experts():
    blocked = functools.partial(expert_ffn, backend="blocked")
    small, large = compiled_flops(8, blocked), compiled_flops(64, blocked)
    ideal = 3 * (3 * 2 * 256 * 2 * 64 * 128)  # fwd + 2× bwd of three matmuls over T·K rows
    assert large < 1.15 * small and small < 2.5 * ideal, (small, large, ideal)
    # the measurement does see total-expert cost when there is one: every expert on every token
    assert compiled_flops(64, dense_reference) > 10 * large


# ---------------------------------------------------------------- balancing


def test_bias_update_moves_against_the_load_and_gamma_zero_freezes_it():
    params = random_params(dataclasses.replace(CFG, num_layers=3))
    load = jnp.asarray([[4.0, 1.0, 2.0, 2.0, 0.0, 3.0, 2.0, 2.0], [2.0] * 8])  # mean 2
    new = update_router_bias(params, load, 0.01)
    np.testing.assert_allclose(new["layers_1"]["mlp"]["router_bias"], [-0.01, 0.01, 0, 0, 0.01, -0.01, 0, 0])
    np.testing.assert_array_equal(new["layers_2"]["mlp"]["router_bias"], np.zeros(8))
    assert new["layers_1"]["mlp"]["router_bias"].dtype == jnp.float32
    jax.tree.map(np.testing.assert_array_equal, update_router_bias(params, load, 0.0), params)
    assert new["layers_1"]["mlp"]["wi_gate"] is params["layers_1"]["mlp"]["wi_gate"]  # nothing else touched
    with pytest.raises(ValueError, match="3 rows for 2 MoE layers"):
        update_router_bias(params, jnp.zeros((3, 8)), 0.01)


def test_the_bias_gets_no_gradient_and_the_mask_marks_only_it():
    mask = router_bias_mask(random_params(dataclasses.replace(CFG, num_layers=3)))
    marked = [jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_leaves_with_path(mask) if m]
    assert marked == ["['layers_1']['mlp']['router_bias']", "['layers_2']['mlp']['router_bias']"]
    layer = MoE(CFG)
    x = np.random.default_rng(2).standard_normal((2, 6, CFG.embed_dim)).astype(np.float32)
    params = jax.tree_util.tree_map_with_path(  # a bias that changes routing
        lambda p, v: np.linspace(-1, 1, v.shape[0]) if p[-1].key == "router_bias" else v,
        random_params(CFG)["layers_1"]["mlp"])

    def loss(p):
        y, state = layer.apply({"params": p}, x, mutable=["intermediates"])
        return jnp.mean(y ** 2) + moe_aux(CFG, {"layers_1": {"mlp": state["intermediates"]}})[0]

    grads = jax.jit(jax.grad(loss))(params)
    assert not np.any(grads["router_bias"]) and np.any(grads["router"]) and np.any(grads["wi_gate"])


def test_seq_balance_loss_by_hand():
    # one sequence of 2 real tokens (+1 pad), 4 experts, K=1
    scores = jnp.asarray([[[0.6, 0.2, 0.1, 0.1], [0.2, 0.2, 0.4, 0.2], [9.0, 0.0, 0.0, 1.0]]])
    experts = jnp.asarray([[[0], [2], [3]]])
    mask = jnp.asarray([[True, True, False]])
    f = np.array([1, 0, 1, 0]) * 4 / (1 * 2)  # X/(K·T)·count
    p = (np.array([0.6, 0.2, 0.1, 0.1]) + np.array([0.2, 0.2, 0.4, 0.2])) / 2
    np.testing.assert_allclose(seq_balance_loss(scores, experts, mask), np.sum(f * p), rtol=1e-6)
    # two sequences: the mean of their losses; an all-pad row is ignored
    two = seq_balance_loss(jnp.concatenate([scores, scores[:, ::-1]]), jnp.concatenate([experts, experts]),
                           jnp.asarray([[True, True, False], [False, False, False]]))
    np.testing.assert_allclose(two, np.sum(f * p), rtol=1e-6)


def test_switch_loss_by_hand():
    probs = jnp.asarray([[0.7, 0.1, 0.1, 0.1], [0.1, 0.6, 0.2, 0.1], [0.4, 0.4, 0.1, 0.1]])
    experts = jnp.asarray([[0, 2], [1, 2], [0, 1]])
    valid = jnp.asarray([True, True, False])
    f = np.array([1, 1, 2, 0]) / 2
    p = np.array([0.8, 0.7, 0.3, 0.2]) / 2
    np.testing.assert_allclose(switch_loss(probs, experts, valid), 4 * np.sum(f * p), rtol=1e-6)
    balanced = switch_loss(jnp.full((4, 4), 0.25), jnp.asarray([[0], [1], [2], [3]]), jnp.ones(4, bool))
    np.testing.assert_allclose(balanced, 1.0, rtol=1e-6)  # its minimum: X · Σ (1/X)·(1/X)·X


# ---------------------------------------------------------------- the layer in the model


@functools.cache
def run(cfg, mutable=False):
    def f(p, *args):
        return Transformer(cfg).apply({"params": p}, *args, mutable=["intermediates"] if mutable else False)
    return jax.jit(f)


def test_statistics_are_sown_only_when_asked_and_skip_padding():
    params = random_params(CFG, 3)
    ids = np.random.default_rng(4).integers(0, 64, (3, 7))
    mask = np.ones((3, 7), bool)
    mask[1, :3] = False
    mask[2, 5:] = False
    pos = positions_from_mask(mask)
    plain, _ = run(CFG)(params, ids, pos, mask)
    (logits, _), state = run(CFG, True)(params, ids, pos, mask)
    np.testing.assert_array_equal(plain, logits)
    aux, stats = moe_aux(CFG, state["intermediates"])
    assert stats["expert_load"].shape == (1, 8)
    np.testing.assert_array_equal(stats["expert_load"].sum(1), [2 * mask.sum()])  # K per real token
    expected = 0.1 * np.mean(stats["seq_balance_loss"]) + 0.01 * np.mean(stats["switch_loss"])
    np.testing.assert_allclose(aux, expected, rtol=1e-6)
    load = np.asarray(stats["expert_load"])
    np.testing.assert_allclose(stats["load_max_violation"], load.max(1) / load.mean(1) - 1, rtol=1e-6)
    assert moe_aux(ModelConfig.tiny(), {})[0] == 0


def test_remat_keeps_outputs_and_statistics():
    params = random_params(CFG, 3)
    ids = np.random.default_rng(5).integers(0, 64, (3, 7))
    pos, mask = positions_from_mask(np.ones((3, 7), bool)), np.ones((3, 7), bool)
    (a, _), sa = run(CFG, True)(params, ids, pos, mask)
    (b, _), sb = run(dataclasses.replace(CFG, remat=True), True)(params, ids, pos, mask)
    np.testing.assert_allclose(a, b, atol=1e-6)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), sa, sb)


def test_padded_rows_give_the_logits_of_unpadded_rows_and_experts_have_their_axis():
    specs = param_logical_axes(CFG)
    assert tuple(specs["layers_1"]["mlp"]["wi_gate"]) == ("expert", "embed", "mlp")
    assert tuple(specs["layers_1"]["mlp"]["wo"]) == ("expert", "mlp", "embed")
    assert tuple(specs["layers_1"]["mlp"]["router"]) == ("embed", "expert")
    assert tuple(specs["layers_1"]["mlp"]["router_bias"]) == ("expert",)
    params = random_params(CFG, 6)
    full = np.random.default_rng(7).integers(1, 64, (3, 7))
    lengths = np.array([7, 4, 2])
    ids, mask = np.zeros((3, 7), np.int64), np.zeros((3, 7), bool)
    for b, n in enumerate(lengths):  # left padded
        ids[b, 7 - n:], mask[b, 7 - n:] = full[b, :n], True
    unpadded, _ = run(CFG)(params, full, positions_from_mask(np.ones_like(mask)), np.ones_like(mask))
    logits, _ = run(CFG)(params, ids, positions_from_mask(mask), mask)
    for b, n in enumerate(lengths):  # dropless: a token's output never depends on the rest of the batch
        np.testing.assert_allclose(logits[b][mask[b]], unpadded[b, :n], atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_experts=8, top_k=9, expert_dim=4), "top_k=9 must be <= num_experts=8"),
    (dict(num_experts=8, top_k=2, expert_dim=4, num_groups=3), "num_groups=3 must divide"),
    (dict(num_experts=8, top_k=5, expert_dim=4, num_groups=4, topk_groups=2), "top_k=5 must be <= the experts"),
    (dict(num_experts=8, top_k=2, expert_dim=4, router="relu"), "router='relu'"),
    (dict(num_experts=8, top_k=2, expert_dim=4, dispatch="scan"), "dispatch='scan'"),
    (dict(num_experts=8, top_k=2, expert_dim=0), "expert_dim=0 must be a positive int"),
])
def test_invalid_moe_configs_raise_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MoEConfig(**kwargs)
