"""GRPO's pure functions against hand-computed numbers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import grpo
from r1jax.train.logprobs import target_logp


def test_paper_worked_example_advantages():
    adv = grpo.group_advantages(jnp.array([[1.0, 1.0, 2.0]]))
    np.testing.assert_allclose(adv, [[-0.7071, -0.7071, 1.4142]], atol=1e-3)


def test_equal_rewards_give_zero_advantage_not_nan():
    for mode in grpo.ADVANTAGE_MODES:
        adv = grpo.group_advantages(jnp.array([[0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]]), mode)
        assert np.isfinite(adv).all()
        if mode == "reinforce++":  # no group baseline: a flat group sits where the batch puts it
            assert (np.asarray(adv[0]) > 0).all()
        else:
            np.testing.assert_array_equal(adv[0], 0.0)
    for mode in ("batch-std", "reinforce++"):
        np.testing.assert_array_equal(grpo.group_advantages(jnp.zeros((3, 4)), mode), 0.0)


def test_rloo_and_reinforce_pp_against_their_definitions():
    rewards = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    # RLOO: each sample's baseline is the mean of the other samples of its group, by a loop
    loo = np.array([[r[i] - np.delete(r, i).mean() for i in range(len(r))] for r in rewards])
    np.testing.assert_allclose(grpo.group_advantages(jnp.asarray(rewards), "rloo"), loo, rtol=1e-5, atol=1e-6)
    flat = rewards.reshape(-1)
    np.testing.assert_allclose(grpo.group_advantages(jnp.asarray(rewards), "reinforce++"),
                               ((flat - flat.mean()) / flat.std()).reshape(rewards.shape), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 samples"):
        grpo.group_advantages(jnp.ones((3, 1)), "rloo")
    from r1jax.config import GRPOConfig
    with pytest.raises(ValueError, match="GRPOConfig.advantage='rloo' needs group_size >= 2"):
        GRPOConfig(group_size=1, advantage="rloo")


def test_advantage_modes_differ_as_defined():
    r = jnp.array([[0.0, 1.0], [0.0, 3.0]])
    np.testing.assert_allclose(grpo.group_advantages(r, "mean"), [[-0.5, 0.5], [-1.5, 1.5]])
    np.testing.assert_allclose(grpo.group_advantages(r, "std"), [[-1, 1], [-1, 1]], atol=1e-5)
    batch_std = float(np.std([0, 1, 0, 3]))
    np.testing.assert_allclose(grpo.group_advantages(r, "batch-std"),
                               np.array([[-0.5, 0.5], [-1.5, 1.5]]) / batch_std, atol=1e-5)
    with pytest.raises(ValueError, match="advantage mode"):
        grpo.group_advantages(r, "median")


def test_kl_estimators_by_hand():
    logp = jnp.array([[-1.0, -2.0]])
    ref = jnp.array([[-1.5, -1.0]])
    x = np.array([-0.5, 1.0])
    np.testing.assert_allclose(grpo.kl_penalty(logp, ref, "k1"), [-x], rtol=1e-6)
    np.testing.assert_allclose(grpo.kl_penalty(logp, ref, "k2"), [0.5 * x**2], rtol=1e-6)
    np.testing.assert_allclose(grpo.kl_penalty(logp, ref, "k3"), [np.exp(x) - x - 1], rtol=1e-6)
    assert float(grpo.kl_penalty(logp, logp, "k3").max()) == 0.0
    with pytest.raises(ValueError, match="KL estimator"):
        grpo.kl_penalty(logp, ref, "k4")


def test_k3_is_nonnegative_and_clamped():
    logp = jnp.linspace(-60, 0, 50)[None, :]
    kl = grpo.kl_penalty(logp, jnp.zeros_like(logp), "k3", clamp=10.0)
    assert np.isfinite(kl).all() and (kl >= 0).all() and float(kl.max()) <= 10.0


def test_clip_higher_bounds_by_hand():
    # ratios 0.5, 1.0, 1.5 with A = +1 and A = -1
    old = jnp.zeros((2, 3))
    logp = jnp.log(jnp.array([[0.5, 1.0, 1.5], [0.5, 1.0, 1.5]]))
    adv = jnp.array([1.0, -1.0])
    loss, info = grpo.clipped_policy_loss(logp, old, adv, eps_low=0.2, eps_high=0.28)
    # A>0: -min(ρ, clip(ρ)) -> ρ=0.5: -0.5 ; ρ=1: -1 ; ρ=1.5: -1.28
    # A<0: -min(-ρ, -clip(ρ)) = max(ρ, clip(ρ)) -> 0.8, 1, 1.5
    np.testing.assert_allclose(loss, [[-0.5, -1.0, -1.28], [0.8, 1.0, 1.5]], rtol=1e-5)
    np.testing.assert_array_equal(info["clip_high"], [[0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(info["clip_low"], [[0, 0, 0], [1, 0, 0]])


def test_dual_clip_caps_negative_advantage_loss():
    logp = jnp.log(jnp.array([[10.0, 1.0]]))
    loss, info = grpo.clipped_policy_loss(logp, jnp.zeros((1, 2)), jnp.array([-1.0]), dual_clip=3.0)
    np.testing.assert_allclose(loss, [[3.0, 1.0]], rtol=1e-5)
    np.testing.assert_array_equal(info["clip_dual"], [[1, 0]])
    with pytest.raises(ValueError, match="dual_clip"):
        grpo.clipped_policy_loss(logp, jnp.zeros((1, 2)), jnp.array([-1.0]), dual_clip=0.5)


def test_aggregation_modes_by_hand():
    values = jnp.array([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert float(grpo.aggregate(values, mask, "seq-mean-token-mean")) == pytest.approx((2.0 + 4.0) / 2)
    assert float(grpo.aggregate(values, mask, "token-mean")) == pytest.approx(10.0 / 4)
    assert float(grpo.aggregate(values, mask, "seq-mean-token-sum-norm")) == pytest.approx(10.0 / 8)
    assert float(grpo.aggregate(values, mask, "seq-mean-token-sum-norm", max_len=10)) == pytest.approx(0.5)
    assert float(grpo.aggregate(values, jnp.zeros_like(mask), "token-mean")) == 0.0
    with pytest.raises(ValueError, match="aggregation"):
        grpo.aggregate(values, mask, "sum")


def test_entropy_uniform_and_peaked():
    logits = jnp.stack([jnp.zeros(8), jnp.array([100.0] + [0.0] * 7)])[None]
    _, ent, _ = target_logp(logits, jnp.zeros((1, 2), jnp.int32), with_entropy=True)  # the update's entropy
    np.testing.assert_allclose(ent, [[np.log(8), 0.0]], atol=1e-5)


def test_objective_at_ratio_one_is_minus_mean_advantage_plus_kl():
    # old = new: ratio 1, loss per token is -A; ref = new: KL 0.
    logp = jnp.array([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]])
    adv = jnp.array([2.0, -1.0])
    mask = jnp.array([[1, 1, 0], [1, 1, 1]])
    loss, m = grpo.grpo_objective(logp, logp, logp, adv, mask)
    assert float(loss) == pytest.approx((-2.0 + 1.0) / 2)
    assert float(m["kl"]) == 0.0 and float(m["clip_low_frac"]) == 0.0
    # gradient w.r.t. logp at ratio 1 is the plain policy gradient -A_i/(|o_i|·B)
    g = jax.grad(lambda lp: grpo.grpo_objective(lp, logp, None, adv, mask)[0])(logp)
    np.testing.assert_allclose(g, [[-0.5, -0.5, 0.0], [1 / 6, 1 / 6, 1 / 6]], rtol=1e-5)
