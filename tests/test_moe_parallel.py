"""Expert parallelism: the MoE layer with its experts split over mesh axes equals the one-device layer."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from collectives import gathered_ragged_all_to_all

from r1jax import sharding
from r1jax.config import ModelConfig, MoEConfig
from r1jax.model import MoE
from r1jax.model import moe_parallel
from r1jax.model.moe import blocked_ffn, expert_ffn, grouped_ffn, ragged_ffn

V3 = MoEConfig(num_experts=8, top_k=2, expert_dim=16, num_shared_experts=1, routed_scaling_factor=2.5,
               num_groups=4, topk_groups=2, seq_aux_alpha=0.1, switch_aux_coef=0.01)
QWEN = MoEConfig(num_experts=8, top_k=3, expert_dim=16, router="softmax", norm_topk_prob=False,
                 switch_aux_coef=0.01)
SHAPE = (3, 5)  # 15 tokens: never a multiple of the token shards, so padding is always exercised


def layer_params(cfg, seed=0):
    """Random params of an MoE layer (numpy draws; no initializer to compile)."""
    rng = np.random.default_rng(seed)
    x = jnp.zeros(SHAPE + (cfg.embed_dim,))
    shapes = jax.eval_shape(lambda: MoE(cfg).init(jax.random.key(0), x)["params"])
    shapes = jax.tree.map(lambda b: b.value if hasattr(b, "value") else b, shapes,
                          is_leaf=lambda b: hasattr(b, "value"))

    def draw(path, s):
        if path[-1].key == "router_bias":  # a bias that changes the choice
            return np.linspace(-0.2, 0.2, s.shape[0]).astype(np.float32)
        fan_in = s.shape[-2] if len(s.shape) == 3 else s.shape[0]
        return (rng.standard_normal(s.shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def layer_case(moe, seed=0):
    cfg = ModelConfig.tiny(moe=moe)
    x = np.random.default_rng(seed + 1).standard_normal(SHAPE + (cfg.embed_dim,)).astype(np.float32)
    mask = np.ones(SHAPE, bool)
    mask[1, :2] = False  # padding must stay out of the statistics
    return cfg, layer_params(cfg, seed), x, mask


def value_and_grads(cfg, params, x, mask):
    """(output, sown statistics), gradients wrt params and x of a loss on output and statistics."""
    def loss(p, x):
        y, state = MoE(cfg).apply({"params": p}, x, mask, mutable=["intermediates"])
        stats = state["intermediates"]
        return jnp.sum(jnp.sin(y)) + sum(jnp.sum(v[0]) for k, v in stats.items() if k != "expert_load"), (y, stats)
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    return out, grads


@functools.cache
def reference(moe):
    return value_and_grads(*layer_case(moe))


def mesh(spec):
    """A mesh from a named spec over the first devices it needs."""
    size = int(np.prod([int(part.split("=")[1]) for part in spec.split(",")]))
    return sharding.make_mesh(spec, jax.devices()[:size])


def assert_close(got, want):
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5), got, want)


def parallel_run(moe, spec):
    """value_and_grads under the mesh; checks the layer really went through shard_map."""
    cfg, params, x, mask = layer_case(moe)
    with sharding.use_mesh(mesh(spec)):
        ep = moe_parallel.expert_sharding(moe)
        assert ep is not None and ep.mode == moe.expert_parallel
        assert "shard_map" in str(jax.make_jaxpr(lambda p: MoE(cfg).apply({"params": p}, x, mask))(params))
        return value_and_grads(cfg, params, x, mask)


# ---------------------------------------------------------------- ring of experts


@pytest.mark.parametrize("moe, spec", [
    (V3, "expert=2"),
    (QWEN, "expert=4"),
    (V3, "expert=8"),
    (dataclasses.replace(QWEN, dispatch="ragged_dot"), "data=2,expert=4"),
])
def test_ring_expert_parallel_equals_one_device_in_values_statistics_and_gradients(moe, spec):
    assert_close(parallel_run(moe, spec), reference(dataclasses.replace(moe, expert_parallel="none", dispatch="auto")))


# ---------------------------------------------------------------- all-to-all


def dispatch_case(tokens=15, experts=8, top_k=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, 8)).astype(np.float32)
    routed = np.argsort(rng.standard_normal((tokens, experts)), axis=1)[:, :top_k].astype(np.int32)
    routed[: tokens // 2, 0] = 1  # skewed: one shard gets far more rows than the others
    gates = rng.uniform(0.1, 1.0, (tokens, top_k)).astype(np.float32)
    w = [0.3 * rng.standard_normal(s).astype(np.float32) for s in ((experts, 8, 6), (experts, 8, 6), (experts, 6, 8))]
    return x, routed, gates, w


@pytest.mark.parametrize("spec, backend", [("expert=4", "blocked"), ("data=2,expert=4", "ragged_dot")])
def test_all_to_all_bookkeeping_equals_one_device_with_a_gathered_stand_in(spec, backend):
    x, routed, gates, w = dispatch_case()
    ffn = functools.partial(expert_ffn, backend=backend)

    def loss(fn, x, gates, *w):
        y = fn(x, routed, gates, *w)
        return jnp.sum(jnp.sin(y)), y

    want = jax.jit(jax.value_and_grad(functools.partial(loss, ffn), argnums=(0, 1, 2, 3, 4), has_aux=True))(
        x, gates, *w)
    with sharding.use_mesh(mesh(spec)):
        ep = dataclasses.replace(moe_parallel.expert_sharding(V3), mode="all_to_all")
        parallel = functools.partial(moe_parallel.parallel_expert_ffn, ep, ffn=ffn, grouped=grouped_ffn(backend),
                                     collective=gathered_ragged_all_to_all)
        got = jax.jit(jax.value_and_grad(functools.partial(loss, parallel), argnums=(0, 1, 2, 3, 4),
                                         has_aux=True))(x, gates, *w)
    assert_close(got, want)


def test_all_to_all_with_ragged_all_to_all_equals_one_device():
    if jax.default_backend() == "cpu":
        pytest.skip("jax.lax.ragged_all_to_all is UNIMPLEMENTED on XLA:CPU (HLO ragged-all-to-all); "
                    "the CPU covers the all-to-all bookkeeping with gathered_ragged_all_to_all")
    if jax.device_count() < 2:
        pytest.skip("needs 2 or more devices")
    moe = dataclasses.replace(V3, expert_parallel="all_to_all")
    spec = f"expert={min(jax.device_count(), 8)}"
    assert_close(parallel_run(moe, spec), reference(dataclasses.replace(moe, expert_parallel="none")))


def test_gathered_stand_in_matches_the_documented_ragged_all_to_all_example():
    # the example of jax.lax.ragged_all_to_all's docstring, axis of size 2
    operand = np.array([[1, 2, 2], [3, 4, 0]], np.float32).reshape(6, 1)
    args = [np.array(a, np.int32).reshape(-1) for a in
            ([[0, 1], [0, 1]], [[1, 2], [1, 1]], [[0, 0], [1, 2]], [[1, 1], [2, 1]])]
    spec = jax.sharding.PartitionSpec("expert")
    with sharding.use_mesh(mesh("expert=2")):
        fn = jax.shard_map(functools.partial(gathered_ragged_all_to_all, axis_name="expert"),
                           in_specs=(spec,) * 6, out_specs=spec)
        out = jax.jit(fn)(operand, np.zeros((8, 1), np.float32), *args)
    np.testing.assert_array_equal(np.asarray(out).reshape(2, 4), [[1, 3, 0, 0], [2, 2, 4, 0]])


# ---------------------------------------------------------------- when it applies


def test_expert_parallelism_needs_a_mesh_an_expert_axis_and_divisible_experts():
    assert moe_parallel.expert_sharding(V3) is None  # no mesh
    with sharding.use_mesh(mesh("data=2,fsdp=4")):
        assert moe_parallel.expert_sharding(V3) is None  # no expert axis
    with sharding.use_mesh(mesh("data=2,expert=4")):
        ep = moe_parallel.expert_sharding(V3)
        assert (ep.expert_axes, ep.token_axes, ep.shards, ep.token_shards) == (("expert",), ("data", "expert"), 4, 8)
        assert moe_parallel.expert_sharding(dataclasses.replace(V3, expert_parallel="none")) is None
        # 6 experts do not split 4 ways: the rule table leaves them whole, and so does the layer, saying so
        with pytest.warns(UserWarning, match="num_experts=6 is not divisible by the mesh's expert axis of size 4"):
            assert moe_parallel.expert_sharding(dataclasses.replace(V3, num_experts=6, num_groups=1,
                                                                    topk_groups=1)) is None


def test_all_to_all_on_cpu_is_a_clear_error():
    if jax.default_backend() != "cpu":
        pytest.skip("XLA:CPU is the backend without ragged_all_to_all")
    with sharding.use_mesh(mesh("expert=8")):
        with pytest.raises(ValueError, match="expert_parallel='all_to_all' needs jax.lax.ragged_all_to_all"):
            moe_parallel.expert_sharding(dataclasses.replace(V3, expert_parallel="all_to_all"))


def test_expert_parallel_field_is_validated_and_round_trips():
    with pytest.raises(ValueError, match="MoEConfig.expert_parallel='scatter' must be one of"):
        dataclasses.replace(V3, expert_parallel="scatter")
    cfg = ModelConfig.tiny(moe=dataclasses.replace(V3, expert_parallel="all_to_all"))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    old = cfg.to_dict()
    del old["moe"]["expert_parallel"]  # configs saved before the field existed
    assert ModelConfig.from_dict(old).moe.expert_parallel == "ring"


# ---------------------------------------------------------------- a shard's share of the dispatch


@pytest.mark.parametrize("first_expert", [0, 2, 6])
def test_expert_ffn_with_a_slice_of_the_experts_adds_only_their_pairs(first_expert):
    rng = np.random.default_rng(first_expert)
    x = rng.standard_normal((10, 8)).astype(np.float32)
    experts = rng.integers(0, 8, (10, 2)).astype(np.int32)
    gates = rng.uniform(0.1, 1.0, (10, 2)).astype(np.float32)
    w = [0.3 * rng.standard_normal(s).astype(np.float32) for s in ((8, 8, 6), (8, 8, 6), (8, 6, 8))]
    ours = jax.jit(expert_ffn)  # blocked
    local = slice(first_expert, first_expert + 2)
    kept = np.where((experts >= local.start) & (experts < local.stop), gates, 0.0).astype(np.float32)
    got = ours(x, experts, gates, *(a[local] for a in w), first_expert=first_expert)
    np.testing.assert_allclose(got, ours(x, experts, kept, *w), atol=1e-5)


def test_blocked_ffn_gives_zero_after_the_groups_like_ragged_dot():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 8)).astype(np.float32)
    w = [0.3 * rng.standard_normal(s).astype(np.float32) for s in ((3, 8, 6), (3, 8, 6), (3, 6, 8))]
    sizes = jnp.asarray([2, 0, 5], jnp.int32)  # 7 of 12 rows in groups
    got = jax.jit(blocked_ffn)(x, sizes, *w)
    np.testing.assert_allclose(got, jax.jit(ragged_ffn)(x, sizes, *w), atol=1e-5)
    np.testing.assert_array_equal(got[7:], 0.0)
