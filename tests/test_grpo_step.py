"""The jitted GRPO update on a tiny model: chunked log-probs, gradients, skipping bad steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax.config import GRPOConfig, ModelConfig, OptimizerConfig, SamplingSettings
from r1jax.model import Transformer, init_params
from r1jax.rl.grpo import grpo_objective
from r1jax.rl.grpo_step import GRPOBatch, make_grpo_step, make_logps_fn
from r1jax.train.logprobs import completion_logps
from r1jax.train.optim import init_train_state, learning_rate_schedule, make_optimizer

CFG = ModelConfig.tiny(vocab_size=40)
MODEL = Transformer(CFG)


def _batch(params, rows=4, prompt_len=5, length=6, seed=0, ref_params=None) -> GRPOBatch:
    rng = np.random.default_rng(seed)
    prompt_len_B = rng.integers(2, prompt_len + 1, rows)
    prompt_mask = np.arange(prompt_len)[None] >= (prompt_len - prompt_len_B)[:, None]
    prompt = np.where(prompt_mask, rng.integers(2, CFG.vocab_size, (rows, prompt_len)), 0)
    comp_len_B = rng.integers(1, length + 1, rows)
    comp_mask = np.arange(length)[None] < comp_len_B[:, None]
    completion = np.where(comp_mask, rng.integers(2, CFG.vocab_size, (rows, length)), 0)
    batch = GRPOBatch(
        prompt_BxP=jnp.asarray(prompt, jnp.int32), prompt_mask_BxP=jnp.asarray(prompt_mask),
        completion_BxT=jnp.asarray(completion, jnp.int32), completion_mask_BxT=jnp.asarray(comp_mask),
        loss_mask_BxT=jnp.asarray(comp_mask, jnp.float32), old_logps_BxT=jnp.zeros((rows, length)),
        ref_logps_BxT=jnp.zeros((rows, length)), advantages_B=jnp.asarray(rng.normal(size=rows), jnp.float32))
    logps = make_logps_fn(MODEL, chunk=4)
    return batch.replace(old_logps_BxT=logps(params, batch),
                         ref_logps_BxT=logps(params if ref_params is None else ref_params, batch))


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


def test_chunked_logps_equal_full_logits(params):
    b = _batch(params)
    full_S = jnp.concatenate([b.prompt_BxP, b.completion_BxT], 1)
    mask_S = jnp.concatenate([b.prompt_mask_BxP, b.completion_mask_BxT], 1)
    pos_S = jnp.maximum(jnp.cumsum(mask_S, 1) - 1, 0)
    logits, _ = MODEL.apply({"params": params}, full_S, pos_S, mask_S)
    logp_all = jax.nn.log_softmax(logits, -1)[:, 4:-1]  # slot P-1 … P+T-2 predict the completion
    want = jnp.take_along_axis(logp_all, b.completion_BxT[..., None], -1)[..., 0]
    for chunk in (1, 4, 6, 64):
        got, ent = completion_logps(MODEL, params, b.prompt_BxP, b.prompt_mask_BxP, b.completion_BxT,
                                    b.completion_mask_BxT, chunk=chunk, with_entropy=True)
        m = np.asarray(b.completion_mask_BxT)
        np.testing.assert_allclose(np.asarray(got)[m], np.asarray(want)[m], atol=1e-5)
        assert (np.asarray(ent)[m] > 0).all()


def test_chunked_gradient_equals_unchunked(params):
    b = _batch(params)

    def total(p, chunk):
        lp, _ = completion_logps(MODEL, p, b.prompt_BxP, b.prompt_mask_BxP, b.completion_BxT,
                                 b.completion_mask_BxT, chunk=chunk)
        return (lp * b.loss_mask_BxT).sum()

    g1, g6 = jax.grad(total)(params, 1), jax.grad(total)(params, 6)
    for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g6)):
        np.testing.assert_allclose(a, c, atol=1e-5)


def _grpo_loss(p, b, **kw):
    lp, _ = completion_logps(MODEL, p, b.prompt_BxP, b.prompt_mask_BxP, b.completion_BxT, b.completion_mask_BxT, 4)
    return grpo_objective(lp, b.old_logps_BxT, b.ref_logps_BxT, b.advantages_B, b.loss_mask_BxT, **kw)[0]


def test_loss_gradient_matches_finite_differences(params):
    # f32 throughout (logits and the loss are f32 by design): central differences with h = 1e-3
    b = _batch(params, ref_params=jax.tree.map(lambda x: x * 1.05, params))
    p = jax.tree.map(lambda x: x * 0.9, params)  # away from old: ratios ≠ 1, some clipped
    loss = jax.jit(lambda q: _grpo_loss(q, b, kl_beta=0.1, eps_low=0.05, eps_high=0.08))
    grads = jax.grad(loss)(p)
    leaves, treedef = jax.tree.flatten(p)
    gleaves = jax.tree.leaves(grads)
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(40):
        i = rng.integers(len(leaves))
        idx = tuple(rng.integers(s) for s in leaves[i].shape)
        g = float(gleaves[i][idx])
        if abs(g) < 5e-3:
            continue
        bump = lambda d: jax.tree.unflatten(  # noqa: E731
            treedef, [x.at[idx].add(d) if j == i else x for j, x in enumerate(leaves)])
        fd = (float(loss(bump(1e-3))) - float(loss(bump(-1e-3)))) / 2e-3
        np.testing.assert_allclose(g, fd, rtol=3e-2, atol=5e-4)
        checked += 1
    assert checked >= 5


def test_ratio_one_gradient_is_plain_policy_gradient(params):
    b = _batch(params)  # old log-probs are the current policy's: ratio exactly 1

    def reinforce(p):  # −(1/B) Σ_i A_i · mean_t log π(o_i,t)
        lp, _ = completion_logps(MODEL, p, b.prompt_BxP, b.prompt_mask_BxP, b.completion_BxT,
                                 b.completion_mask_BxT, 4)
        per_seq = (lp * b.loss_mask_BxT).sum(1) / b.loss_mask_BxT.sum(1)
        return -(b.advantages_B * per_seq).mean()

    g_grpo = jax.grad(lambda p: _grpo_loss(p, b, kl_beta=0.0))(params)
    g_pg = jax.grad(reinforce)(params)
    for a, c in zip(jax.tree.leaves(g_grpo), jax.tree.leaves(g_pg)):
        np.testing.assert_allclose(a, c, atol=1e-6)


def _step_setup(params, **cfg_kw):
    gcfg = GRPOConfig(group_size=2, prompts_per_step=2, sampling=SamplingSettings(max_new_tokens=6), logprob_chunk=4,
                      **cfg_kw)
    tx = make_optimizer(OptimizerConfig(learning_rate=1e-2, grad_clip=1.0))
    return make_grpo_step(MODEL, tx, gcfg), init_train_state(jax.tree.map(jnp.copy, params), tx)


def test_update_step_lowers_loss_and_counts_updates(params):
    step, state = _step_setup(params, num_minibatches=2, inner_epochs=2, kl_beta=0.0)
    b = _batch(params)
    before = float(_grpo_loss(params, b, kl_beta=0.0))
    state, m = step(state, b)
    assert int(state.step) == 4 and float(m["updates"]) == 4 and float(m["skipped"]) == 0
    assert float(_grpo_loss(state.params, b, kl_beta=0.0)) < before
    assert np.isfinite(float(m["grad_norm"])) and "clip_high_frac" in m and "entropy" in m


def test_grad_accumulation_equals_one_big_batch(params):
    b = _batch(params)
    s1, st1 = _step_setup(params, grad_accum=1)
    s2, st2 = _step_setup(params, grad_accum=2)
    st1, _ = s1(st1, b)
    st2, _ = s2(st2, b)
    # gradients agree to ~1e-8; Adam's first step lr·g/(|g|+eps) magnifies that on entries with |g| ~ eps
    for a, c in zip(jax.tree.leaves(st1.params), jax.tree.leaves(st2.params)):
        np.testing.assert_allclose(a, c, atol=3e-6)


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm"])
def test_every_aggregation_gives_the_minibatch_gradient_whatever_the_accumulation(params, aggregation):
    """grad_accum 1 ≡ 2 ≡ 4 in the gradient itself (plain SGD, lr 1: the update is −g), with
    micro-batches holding very different numbers of tokens; and ≡ the loss of the whole batch."""
    b = _batch(params, rows=8, length=6, seed=3)
    lengths = np.asarray(b.loss_mask_BxT.sum(axis=1))
    dealt = [lengths[i::4].sum() for i in range(4)]
    assert max(dealt) > 1.5 * min(dealt), dealt  # token-mean per micro-batch would weigh them unevenly
    tx = optax.sgd(1.0)
    moved = []
    for accum in (1, 2, 4):
        gcfg = GRPOConfig(group_size=2, prompts_per_step=4, sampling=SamplingSettings(max_new_tokens=6),
                          logprob_chunk=4, grad_accum=accum, aggregation=aggregation, kl_beta=0.04)
        state, m = make_grpo_step(MODEL, tx, gcfg)(init_train_state(jax.tree.map(jnp.copy, params), tx), b)
        moved.append(jax.tree.map(lambda new, old: np.asarray(old - new), state.params, params))
        want = _grpo_loss(params, b, kl_beta=0.04, aggregation=aggregation)
        np.testing.assert_allclose(float(m["loss"]), float(want), rtol=1e-5, err_msg=f"grad_accum={accum}")
    for other in moved[1:]:
        for g1, g in zip(jax.tree.leaves(moved[0]), jax.tree.leaves(other)):
            np.testing.assert_allclose(g, g1, rtol=1e-4, atol=1e-7)
    assert max(float(np.abs(g).max()) for g in jax.tree.leaves(moved[0])) > 1e-4  # the gradient is not zero


def test_non_finite_loss_skips_the_update(params):
    step, state = _step_setup(params)
    b = _batch(params)
    b = b.replace(advantages_B=b.advantages_B.at[0].set(jnp.nan))
    state, m = step(state, b)
    assert float(m["skipped"]) == 1 and int(state.skipped) == 1 and int(state.step) == 0
    for a, c in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, c)


def test_schedule_warmup_then_cosine():
    sched = learning_rate_schedule(OptimizerConfig(learning_rate=1.0, warmup_steps=10, decay_steps=100,
                                                   end_lr_ratio=0.1))
    assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(0.5)
    assert float(sched(10)) == pytest.approx(1.0)
    assert float(sched(60)) == pytest.approx(0.55, abs=1e-3)
    assert float(sched(110)) == pytest.approx(0.1)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="GRPOConfig.kl_estimator"):
        GRPOConfig(kl_estimator="k9")
    with pytest.raises(ValueError, match="num_minibatches"):
        GRPOConfig(group_size=3, prompts_per_step=1, num_minibatches=2)
    with pytest.raises(ValueError, match="OptimizerConfig.learning_rate"):
        OptimizerConfig(learning_rate=0.0)
