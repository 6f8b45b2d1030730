"""The transformer: causality, padding invariance, cache ≡ full forward, gradients, precision, axis names."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.config import ModelConfig, RopeScaling
from r1jax.model import (Transformer, init_cache, init_params, param_logical_axes, positions_from_mask,
                         repeat_cache)

CFG = ModelConfig.tiny()
LENGTHS = (9, 5, 2)  # real tokens per row
WIDTH = 9


@pytest.fixture(scope="module")
def boxed_params():
    """model.init's params, still boxed with logical axis names (initialized once: random init compiles slowly)."""
    return jax.jit(Transformer(CFG).init)(jax.random.key(0), tokens(1, 3), arange_positions(1, 3))["params"]


@pytest.fixture(scope="module")
def params(boxed_params):
    return nn.unbox(boxed_params)


@functools.cache
def run(cfg, method="__call__"):
    """Jitted model.apply(params, tokens, positions, mask, cache, method=method), one per config and method."""
    return jax.jit(lambda p, *args: Transformer(cfg).apply({"params": p}, *args, method=method))


def forward(p, ids, positions=None, mask=None, cfg=CFG):
    """Logits of a cache-free pass (mask all True by default), jitted."""
    positions = arange_positions(*ids.shape) if positions is None else positions
    mask = np.ones(ids.shape, bool) if mask is None else mask
    return run(cfg)(p, ids, positions, mask)[0]


def tokens(batch, length, seed=1, vocab=CFG.vocab_size):
    return np.asarray(jax.random.randint(jax.random.key(seed), (batch, length), 1, vocab))


def arange_positions(batch, length):
    return np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))


def padded(rows, side):
    """Rows of different lengths padded with 0 to WIDTH on `side`: (tokens, mask)."""
    ids, mask = np.zeros((len(rows), WIDTH), np.int32), np.zeros((len(rows), WIDTH), bool)
    for b, row in enumerate(rows):
        sl = slice(WIDTH - len(row), WIDTH) if side == "left" else slice(0, len(row))
        ids[b, sl], mask[b, sl] = row, True
    return ids, mask


def test_params_carry_logical_axis_names(boxed_params):
    leaves = jax.tree.leaves(boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) and len(x.names) == x.value.ndim for x in leaves)
    specs = param_logical_axes(CFG)
    assert tuple(specs["embed"]["embedding"]) == ("vocab", "embed")
    assert tuple(specs["layers_0"]["attn"]["q"]["kernel"]) == ("embed", "heads", "head_dim")
    assert tuple(specs["layers_0"]["attn"]["k"]["kernel"]) == ("embed", "kv_heads", "head_dim")
    assert tuple(specs["layers_1"]["attn"]["o"]["kernel"]) == ("heads", "head_dim", "embed")
    assert tuple(specs["layers_1"]["mlp"]["down"]["kernel"]) == ("mlp", "embed")
    assert tuple(specs["lm_head"]["kernel"]) == ("embed", "vocab")
    plain_shapes = jax.eval_shape(functools.partial(init_params, CFG), jax.random.key(0))
    assert jax.tree.structure(specs) == jax.tree.structure(plain_shapes)
    boxed_shapes = jax.tree.map(lambda x: x.value.shape, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert jax.tree.map(lambda x: x.shape, plain_shapes) == boxed_shapes


def test_boxed_and_plain_params_give_the_same_logits(boxed_params, params):
    t, pos, mask = tokens(3, WIDTH), arange_positions(3, WIDTH), np.ones((3, WIDTH), bool)
    logits_boxed, cache = run(CFG)(boxed_params, t, pos, mask)
    logits_plain = forward(params, t)
    assert cache is None and logits_boxed.shape == (3, WIDTH, CFG.vocab_size) and logits_boxed.dtype == jnp.float32
    np.testing.assert_array_equal(logits_boxed, logits_plain)


def test_changing_a_future_token_changes_no_earlier_logit(params):
    t = tokens(3, WIDTH)
    changed = t.copy()
    changed[:, 5] = (changed[:, 5] + 1) % CFG.vocab_size
    before, after = forward(params, t), forward(params, changed)
    np.testing.assert_array_equal(before[:, :5], after[:, :5])
    assert np.abs(before[:, 5:] - after[:, 5:]).min(axis=-1).max() > 0  # the change is seen from t=5 on


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_rows_give_the_logits_of_unpadded_rows(params, side):
    full = tokens(len(LENGTHS), WIDTH)
    rows = [full[b, :n] for b, n in enumerate(LENGTHS)]
    ids, mask = padded(rows, side)
    logits = forward(params, ids, positions_from_mask(mask), mask)
    assert np.isfinite(logits).all()
    unpadded = forward(params, full)  # by causality, row b's first n logits are those of row b cut at n
    for b, n in enumerate(LENGTHS):
        np.testing.assert_allclose(logits[b][mask[b]], unpadded[b, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_decoding_with_the_cache_equals_the_full_forward(params, side):
    steps = 4
    full = tokens(len(LENGTHS), WIDTH + steps, seed=2)  # row b: prompt full[b, :n_b], then generated tokens
    ids, mask = padded([full[b, :n] for b, n in enumerate(LENGTHS)], side)
    lengths = np.asarray(LENGTHS, np.int32)
    cache = init_cache(CFG, len(LENGTHS), WIDTH + steps + 3)
    prefill, cache = run(CFG)(params, ids, positions_from_mask(mask), mask, cache)
    decoded = []
    for t in range(steps):
        next_BX1 = full[np.arange(len(LENGTHS)), lengths + t][:, None]
        logits, cache = run(CFG)(params, next_BX1, (lengths + t)[:, None], np.ones((len(LENGTHS), 1), bool), cache)
        decoded.append(logits[:, 0])
    assert int(cache.index) == WIDTH + steps
    unpadded = forward(params, full)
    for b, n in enumerate(LENGTHS):
        np.testing.assert_allclose(prefill[b][mask[b]], unpadded[b, :n], atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.stack([d[b] for d in decoded]), unpadded[b, n:n + steps], atol=1e-5, rtol=0)


def test_prefill_in_chunks_equals_one_prefill(params):
    t, pos, mask = tokens(3, WIDTH, seed=4), arange_positions(3, WIDTH), np.ones((3, WIDTH), bool)
    whole = forward(params, t)
    cache = init_cache(CFG, 3, 12)
    first, cache = run(CFG)(params, t[:, :5], pos[:, :5], mask[:, :5], cache)
    second, cache = run(CFG)(params, t[:, 5:], pos[:, 5:], mask[:, 5:], cache)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, atol=1e-5, rtol=0)
    assert cache.valid_BxS[:, :WIDTH].all() and not cache.valid_BxS[:, WIDTH:].any()


def test_repeated_cache_decodes_like_repeated_prompts(params):
    group = 3
    ids, mask = padded([tokens(1, n, seed=5)[0] for n in (6, 3)], "left")
    next_tokens = tokens(2 * group, 1, seed=6)
    next_positions = np.repeat(np.array([[6], [3]], np.int32), group, axis=0)
    step_mask = np.ones((2 * group, 1), bool)
    fwd = run(CFG)
    _, cache = fwd(params, ids, positions_from_mask(mask), mask, init_cache(CFG, 2, WIDTH + 1))
    shared, _ = fwd(params, next_tokens, next_positions, step_mask, repeat_cache(cache, group))
    rep_ids, rep_mask = np.repeat(ids, group, axis=0), np.repeat(mask, group, axis=0)
    rep_cache = init_cache(CFG, 2 * group, WIDTH + 1)
    _, rep_cache = fwd(params, rep_ids, positions_from_mask(rep_mask), rep_mask, rep_cache)
    separate, _ = fwd(params, next_tokens, next_positions, step_mask, rep_cache)
    np.testing.assert_allclose(shared, separate, atol=1e-5, rtol=0)


def test_hidden_then_logits_in_chunks_equals_call(params):
    t, pos, mask = tokens(3, WIDTH, seed=7), arange_positions(3, WIDTH), np.ones((3, WIDTH), bool)
    logits = forward(params, t)
    hidden, _ = run(CFG, "hidden")(params, t, pos, mask)
    assert hidden.shape == (3, WIDTH, CFG.embed_dim)
    chunks = [run(CFG, "logits")(params, hidden[:, i:i + 3]) for i in range(0, WIDTH, 3)]
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), logits, atol=1e-6, rtol=0)


def test_jit_equals_no_jit(params):
    t, pos = tokens(3, WIDTH, seed=8), arange_positions(3, WIDTH)
    eager, _ = Transformer(CFG).apply({"params": params}, t, pos)
    jitted = forward(params, t)
    np.testing.assert_allclose(eager, jitted, atol=1e-5, rtol=0)


def loss_fn(cfg, p, ids, mask):
    logits, _ = Transformer(cfg).apply({"params": p}, ids, positions_from_mask(mask), mask)
    logp = jax.nn.log_softmax(logits[:, :-1])
    nll = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(nll * mask[:, 1:]) / jnp.sum(mask[:, 1:])


@pytest.fixture(scope="module")
def padded_batch():
    return padded([tokens(1, n, seed=9)[0] for n in LENGTHS], "left")


@pytest.fixture(scope="module")
def loss_and_grads(params, padded_batch):
    ids, mask = padded_batch
    return jax.jit(jax.value_and_grad(lambda p: loss_fn(CFG, p, ids, mask)))(params)


def test_gradients_are_finite_and_reach_every_param(loss_and_grads):
    for path, g in jax.tree_util.tree_leaves_with_path(loss_and_grads[1]):
        assert np.isfinite(g).all(), path
        assert np.abs(g).max() > 0, path


def test_remat_gives_the_same_loss_and_gradients(params, padded_batch, loss_and_grads):
    ids, mask = padded_batch
    remat = dataclasses.replace(CFG, remat=True)
    loss, grads = loss_and_grads
    assert "remat" in str(jax.make_jaxpr(lambda p: loss_fn(remat, p, ids, mask))(params))
    assert "remat" not in str(jax.make_jaxpr(lambda p: loss_fn(CFG, p, ids, mask))(params))
    loss_r, grads_r = jax.jit(jax.value_and_grad(lambda p: loss_fn(remat, p, ids, mask)))(params)
    np.testing.assert_allclose(loss, loss_r, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), grads, grads_r)


def test_mixed_precision_keeps_params_and_cache_dtypes_and_f32_logits(params):
    cfg = dataclasses.replace(CFG, param_dtype="bfloat16", dtype=jnp.bfloat16)
    shapes = jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(shapes))
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    t, pos, mask = tokens(3, WIDTH, seed=11), arange_positions(3, WIDTH), np.ones((3, WIDTH), bool)
    logits, cache = run(cfg)(p16, t, pos, mask, init_cache(cfg, 3, WIDTH))
    assert logits.dtype == jnp.float32 and cache.layers[0].k_BxKxDxS.dtype == jnp.bfloat16
    # bf16 compute on the f32 params stays near the f32 result
    logits16 = forward(params, t, cfg=dataclasses.replace(CFG, dtype="bfloat16"))
    logits32 = forward(params, t)
    assert np.abs(logits16 - logits32).max() < 0.1 * np.abs(logits32).max()
    assert np.abs(logits16 - logits32).max() > 0  # it really computed in bf16


def test_tied_embeddings_have_no_head_and_reuse_the_table(params):
    cfg = dataclasses.replace(CFG, tie_embeddings=True)
    assert "lm_head" not in jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))
    p = {k: v for k, v in params.items() if k != "lm_head"}
    hidden, _ = run(cfg, "hidden")(p, tokens(3, WIDTH), arange_positions(3, WIDTH), np.ones((3, WIDTH), bool))
    logits = run(cfg, "logits")(p, hidden)
    np.testing.assert_allclose(logits, np.einsum("ble,ve->blv", hidden, p["embed"]["embedding"]), atol=1e-5)


def test_packed_segments_equal_separate_rows(params):
    a, b = tokens(1, 5, seed=12)[0], tokens(1, 3, seed=13)[0]
    packed = np.concatenate([a, b, [0]])[None]
    segment_ids = np.array([[1] * 5 + [2] * 3 + [0]])
    positions = np.array([[0, 1, 2, 3, 4, 0, 1, 2, 0]])
    logits, _ = jax.jit(lambda p: Transformer(CFG).apply({"params": p}, packed, positions,
                                                         segment_ids=segment_ids))(params)
    # by causality, the first n logits of a row starting with x are those of x alone
    alone = forward(params, np.concatenate([packed, np.concatenate([b, a, [0]])[None]]))
    np.testing.assert_allclose(logits[0, :5], alone[0, :5], atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits[0, 5:8], alone[1, :3], atol=1e-5, rtol=0)


def test_rope_scaling_changes_logits_only_through_frequencies(params):
    t, pos = tokens(3, WIDTH, seed=14), arange_positions(3, WIDTH) * 7
    base = forward(params, t, pos)
    scaled = forward(params, t, pos, cfg=dataclasses.replace(CFG, rope_scaling=RopeScaling("linear", factor=7.0)))
    unscaled_positions = forward(params, t, pos // 7)
    np.testing.assert_allclose(scaled, unscaled_positions, atol=1e-5, rtol=0)  # linear: positions / factor
    assert np.abs(scaled - base).max() > 1e-3


def test_bad_shapes_are_errors_naming_the_argument(params):
    model = Transformer(CFG)
    with pytest.raises(ValueError, match="positions shape"):
        model.apply({"params": params}, tokens(2, 4), arange_positions(2, 3))
    with pytest.raises(ValueError, match="mask shape"):
        model.apply({"params": params}, tokens(2, 4), arange_positions(2, 4), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="segment_ids"):
        model.apply({"params": params}, tokens(2, 4), arange_positions(2, 4), None, init_cache(CFG, 2, 4),
                    np.ones((2, 4), np.int32))


def test_runs_sharded_under_logical_axis_rules(params):
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rules = [("batch", "data"), ("heads", "model"), ("mlp", "model"), ("vocab", "model")]
    t, pos = tokens(4, 6, seed=15), arange_positions(4, 6)
    expected = forward(params, t)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        shardings = nn.logical_to_mesh_sharding(param_logical_axes(CFG), mesh, rules)
        sharded = jax.device_put(params, shardings)
        logits, _ = jax.jit(lambda p: Transformer(CFG).apply({"params": p}, t, pos))(sharded)
    assert sharded["layers_0"]["mlp"]["up"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, "model")
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)


def test_attention_skipping_causally_masked_blocks_changes_nothing():
    # 10 query slots in blocks of 4 (the last one short), padding and two packed segments
    from r1jax.model.attention import attention_mask, grouped_attention
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 10, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, 2, 10, 8)), jnp.float32) for _ in range(2))
    segments = jnp.asarray([[1] * 6 + [2] * 4, [0, 0] + [1] * 8])
    allowed = attention_mask(segments != 0, jnp.int32(0), 10, segments)

    def run(block):
        return lambda q, k, v: grouped_attention(q, k, v, allowed, 0.3, block)

    real = np.asarray(segments != 0)  # outputs at padding queries are garbage either way
    np.testing.assert_allclose(np.asarray(run(4)(q, k, v))[real], np.asarray(run(None)(q, k, v))[real], atol=1e-6)
    loss = lambda f: lambda *a: (f(*a) ** 2 * real[:, :, None, None]).sum()  # noqa: E731
    for a, b in zip(jax.grad(loss(run(4)), (0, 1, 2))(q, k, v), jax.grad(loss(run(None)), (0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(a, b, atol=1e-5)
