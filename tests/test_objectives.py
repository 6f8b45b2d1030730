"""The policy-loss family, GDPO, entropy terms and rollout correction against numpy written from the papers."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from r1jax.config import GRPOConfig, SamplingSettings
from r1jax.model import init_params
from r1jax.rl import grpo, objectives
from r1jax.rl.grpo_step import epoch_order, make_grpo_step, make_logps_fn
from r1jax.train.optim import init_train_state

from test_grpo_step import CFG, MODEL, _batch

B, T = 6, 7


def _inputs(seed=0, spread=0.3):
    """Random log-probs near old ones (`spread` apart), advantages of both signs, a ragged mask."""
    rng = np.random.default_rng(seed)
    old = -rng.uniform(0.1, 3.0, (B, T)).astype(np.float32)
    logp = (old + rng.normal(0.0, spread, (B, T))).astype(np.float32)
    adv = rng.normal(size=B).astype(np.float32)
    lengths = rng.integers(1, T + 1, B)
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    return logp, old, adv, mask


def _grad(fn, logp, *args):
    """d/dlogp of the loss aggregated as the paper's 1/G Σ_i 1/|o_i| Σ_t (seq-mean-token-mean)."""
    mask = args[-1]
    return np.asarray(jax.grad(lambda lp: grpo.aggregate(fn(lp, *args)[0], mask))(jnp.asarray(logp)))


def _seq_mean(x, mask):
    return (x * mask).sum(1) / mask.sum(1)


def _per_token_weight(mask):
    """∂(seq-mean-token-mean)/∂(token value): 1/(B·|o_i|) on real tokens."""
    return mask / mask.sum(1, keepdims=True) / mask.shape[0]


# ------------------------------------------------------------------------------------------------ GSPO
def test_gspo_sequence_ratio_and_clip_against_the_paper():
    logp, old, adv, mask = _inputs(spread=1e-3)  # sequence ratios straddle GSPO's tiny clip range
    s = np.exp(_seq_mean(logp - old, mask))
    lo, hi = 1 - 3e-4, 1 + 4e-4
    want = np.maximum(-s * adv, -np.clip(s, lo, hi) * adv)
    loss, info = objectives.gspo_loss(logp, old, adv, mask)
    np.testing.assert_allclose(np.asarray(loss), np.broadcast_to(want[:, None], (B, T)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(info["ratio"])[:, 0], s, rtol=1e-6)
    # gradient: −A·s/|o_i| on every token of an unclipped sequence, 0 on a clipped one
    clipped = -np.clip(s, lo, hi) * adv > -s * adv
    assert clipped.any() and (~clipped).any()
    want_g = np.where(clipped, 0.0, -adv * s)[:, None] * _per_token_weight(mask)
    np.testing.assert_allclose(_grad(objectives.gspo_loss, logp, old, adv, mask), want_g, rtol=1e-4, atol=1e-7)


def test_gspo_token_equals_gspo_in_value_and_gradient_with_sequence_advantages():
    logp, old, adv, mask = _inputs(seed=1, spread=1e-3)
    seq, seq_info = objectives.gspo_loss(logp, old, adv, mask)
    tok, info = objectives.gspo_token_loss(logp, old, adv, mask)
    np.testing.assert_allclose(np.asarray(tok), np.asarray(seq), rtol=1e-6)
    np.testing.assert_allclose(_grad(objectives.gspo_token_loss, logp, old, adv, mask),
                               _grad(objectives.gspo_loss, logp, old, adv, mask), rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(info["clip_high"]), np.asarray(seq_info["clip_high"]))


# ----------------------------------------------------------------------------------------------- CISPO
def test_cispo_keeps_the_gradient_of_clipped_tokens():
    logp, old, adv, mask = _inputs(seed=2, spread=1.0)
    r = np.exp(logp - old)
    w = np.clip(r, 1 - 0.2, 1 + 0.28)
    loss, info = objectives.cispo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28)
    np.testing.assert_allclose(np.asarray(loss), -adv[:, None] * w, rtol=1e-5)  # value −sg(ρ̂)·A
    # gradient −sg(ρ̂)·A·∇log π on every token, clipped or not (MiniMax-M1)
    g = _grad(lambda *a: objectives.cispo_loss(*a, eps_low=0.2, eps_high=0.28), logp, old, adv, mask)
    np.testing.assert_allclose(g, -adv[:, None] * w * _per_token_weight(mask), rtol=1e-4, atol=1e-8)
    outside = ((r > 1.28) | (r < 0.8)) & (mask > 0)
    assert outside.sum() >= 3 and (np.abs(g[outside]) > 0).all()
    np.testing.assert_array_equal(np.asarray(info["clip_high"]), (r > 1.28).astype(np.float32))
    # the PPO clip zeroes exactly the tokens that push further out
    g_ppo = _grad(lambda lp, o, a, m: grpo.clipped_policy_loss(lp, o, a, 0.2, 0.28), logp, old, adv, mask)
    pushed_out = outside & (((r > 1.28) & (adv[:, None] > 0)) | ((r < 0.8) & (adv[:, None] < 0)))
    assert pushed_out.any() and (g_ppo[pushed_out] == 0).all()


# ------------------------------------------------------------------------------------------------ GMPO
def test_gmpo_geometric_mean_clipped_in_log_space():
    logp, old, adv, mask = _inputs(seed=3, spread=0.6)
    lr = logp - old
    sgn = np.sign(adv)[:, None]
    kept = sgn * np.minimum(sgn * lr, sgn * np.clip(lr, -0.4, 0.4))
    geo = np.exp(_seq_mean(kept, mask))
    loss, info = objectives.gmpo_loss(logp, old, adv, mask)
    np.testing.assert_allclose(np.asarray(loss)[:, 0], -adv * geo, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(info["ratio"])[:, 0], np.exp(_seq_mean(lr, mask)), rtol=1e-5)
    # ∂/∂log π_t = −A·geo/|o_i| where the token's own log-ratio is kept, 0 where its clip bound is
    free = sgn * lr <= sgn * np.clip(lr, -0.4, 0.4)
    assert (~free & (mask > 0)).any()
    want_g = np.where(free, -adv[:, None] * geo[:, None], 0.0) * mask / mask.sum(1, keepdims=True)
    g = jax.grad(lambda lp: (objectives.gmpo_loss(lp, old, adv, mask)[0][:, 0]).sum())(jnp.asarray(logp))
    np.testing.assert_allclose(np.asarray(g), want_g, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------------ SAPO
def test_sapo_soft_gate_value_and_gradient():
    logp, old, adv, mask = _inputs(seed=4, spread=0.5)
    r = np.exp(logp - old)
    tau = np.where(adv > 0, 1.0, 1.05)[:, None]
    sig = 1 / (1 + np.exp(-tau * (r - 1)))
    loss, _ = objectives.sapo_loss(logp, old, adv, mask)
    np.testing.assert_allclose(np.asarray(loss), -adv[:, None] * sig * 4 / tau, rtol=1e-5)
    # ∂f/∂ρ = 4σ(1−σ), ∂ρ/∂log π = ρ
    g = _grad(objectives.sapo_loss, logp, old, adv, mask)
    np.testing.assert_allclose(g, -adv[:, None] * 4 * sig * (1 - sig) * r * _per_token_weight(mask),
                               rtol=1e-4, atol=1e-8)
    # on-policy it is the plain policy gradient −A, like the clipped loss at ratio 1
    g1 = _grad(objectives.sapo_loss, old, old, adv, mask)
    np.testing.assert_allclose(g1, -adv[:, None] * _per_token_weight(mask), rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------------------------------------ GDPO
def test_gdpo_normalizes_each_reward_in_its_group_then_sums_then_batch_normalizes():
    rng = np.random.default_rng(5)
    r = rng.integers(0, 3, (3, 4, 5)).astype(np.float32)  # K rewards × P prompts × G samples
    r[:, 0] = r[:, 0, :1]  # prompt 0: every reward flat
    w = np.array([1.0, 0.5, 2.0], np.float32)
    eps = 1e-6
    normed = (r - r.mean(2, keepdims=True)) / (r.std(2, keepdims=True) + eps)
    summed = (w[:, None, None] * normed).sum(0)
    want = (summed - summed.mean()) / (summed.std() + eps)
    got = grpo.gdpo_advantages(jnp.asarray(r), jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got)[0], 0.0)
    np.testing.assert_allclose(np.asarray(grpo.gdpo_advantages(jnp.asarray(r), jnp.asarray(w), batch_norm=False)),
                               summed, rtol=1e-5, atol=1e-6)
    # two rewards summed first collapse (0,1) and (1,0) into one advantage; GDPO keeps them apart
    two = jnp.asarray([[[0.0, 1.0, 1.0, 0.0]], [[1.0, 0.0, 1.0, 1.0]]])
    assert len(set(np.round(np.asarray(grpo.gdpo_advantages(two, jnp.asarray([1.0, 2.0])))[0], 4))) == 3
    one = grpo.group_advantages(jnp.asarray(r[0]), "gdpo")  # one component: std, then the batch std
    np.testing.assert_allclose(np.asarray(one), np.asarray(grpo.gdpo_advantages(jnp.asarray(r[:1]))), rtol=1e-6)


# --------------------------------------------------------------------------------- entropy, Clip-Cov, KL-Cov
def test_entropy_bonus_subtracts_coef_times_token_entropy():
    logp, old, adv, mask = _inputs(seed=6)
    ent = np.random.default_rng(6).uniform(0, 2, (B, T)).astype(np.float32)
    base, _ = grpo.grpo_objective(logp, old, None, adv, mask)
    loss, _ = grpo.grpo_objective(logp, old, None, adv, mask, entropy_BxT=ent, entropy_coef=0.01)
    assert float(loss) == pytest.approx(float(base) - 0.01 * _seq_mean(ent, mask).mean(), rel=1e-5)
    g = jax.grad(lambda e: grpo.grpo_objective(logp, old, None, adv, mask, entropy_BxT=e, entropy_coef=0.01)[0])(ent)
    np.testing.assert_allclose(np.asarray(g), -0.01 * _per_token_weight(mask), rtol=1e-5, atol=1e-9)


def test_token_covariance_is_centred_over_the_real_tokens():
    logp, _, adv, mask = _inputs(seed=7)
    m = mask > 0
    adv_bt = np.broadcast_to(adv[:, None], (B, T))
    want = (logp - logp[m].mean()) * (adv_bt - adv_bt[m].mean())
    got = np.asarray(objectives.token_covariance(logp, adv, mask))
    np.testing.assert_allclose(got[m], want[m], rtol=1e-5, atol=1e-6)


def test_clip_cov_stops_the_gradient_of_random_high_covariance_tokens():
    logp, old, adv, mask = _inputs(seed=8, spread=0.1)
    cov = objectives.token_covariance(logp, adv, mask)
    cov_np = np.asarray(cov)
    low, high = np.quantile(cov_np[mask > 0], [0.3, 0.95])
    candidates = (mask > 0) & (cov_np > low) & (cov_np < high)
    fraction = 0.1  # ⌊0.1·N⌋ tokens
    count = max(1, int(np.floor(fraction * mask.sum())))
    assert candidates.sum() > count

    def loss(lp, key):
        pg, _ = grpo.clipped_policy_loss(lp, old, adv)
        pg, info = objectives.clip_cov(pg, cov, mask, key, fraction, low, high)
        return grpo.aggregate(pg, mask), info["clip_cov"]

    (value, chosen), g = jax.value_and_grad(loss, has_aux=True)(jnp.asarray(logp), jax.random.key(1))
    chosen = np.asarray(chosen) > 0
    assert chosen.sum() == count and (chosen <= candidates).all()
    g_plain = _grad(lambda lp, o, a, m: grpo.clipped_policy_loss(lp, o, a), logp, old, adv, mask)
    np.testing.assert_array_equal(np.asarray(g)[chosen], 0.0)
    np.testing.assert_allclose(np.asarray(g)[~chosen], g_plain[~chosen], rtol=1e-6)
    assert float(value) == pytest.approx(float(grpo.aggregate(grpo.clipped_policy_loss(logp, old, adv)[0], mask)))
    again = np.asarray(loss(jnp.asarray(logp), jax.random.key(1))[1]) > 0
    np.testing.assert_array_equal(again, chosen)  # the key decides which
    others = [np.asarray(loss(jnp.asarray(logp), jax.random.key(k))[1]) > 0 for k in range(2, 6)]
    assert any((other != chosen).any() for other in others)


def test_kl_cov_penalizes_the_top_covariance_tokens():
    logp, old, adv, mask = _inputs(seed=9)
    cov = np.asarray(objectives.token_covariance(logp, adv, mask))
    count = max(1, int(np.floor(0.2 * mask.sum())))
    top = np.argsort(-np.where(mask > 0, cov, -np.inf), axis=None)[:count]
    chosen_want = np.zeros(B * T, bool)
    chosen_want[top] = True
    chosen_want = chosen_want.reshape(B, T)
    pg = np.random.default_rng(9).normal(size=(B, T)).astype(np.float32)
    out, info = objectives.kl_cov(pg, cov, logp, old, mask, fraction=0.2, coef=0.5)
    np.testing.assert_array_equal(np.asarray(info["kl_cov"]) > 0, chosen_want)
    np.testing.assert_allclose(np.asarray(out), pg + np.where(chosen_want, 0.5 * np.abs(logp - old), 0.0), rtol=1e-6)


# --------------------------------------------------------------------------------------- rollout correction
def test_rollout_importance_weights_by_mode():
    _, trainer, _, mask = _inputs(seed=10)
    sampler = trainer + np.random.default_rng(10).normal(0.0, 0.8, (B, T)).astype(np.float32)
    w = np.exp(trainer - sampler)
    w_seq = np.exp(((trainer - sampler) * mask).sum(1, keepdims=True)) * np.ones((1, T))
    lo, hi = 0.5, 2.0
    cases = {"tis-token": (np.minimum(w, hi), np.ones_like(w)), "tis-seq": (np.minimum(w_seq, hi), np.ones_like(w)),
             "mis-token": (w * ((w >= lo) & (w <= hi)), ((w >= lo) & (w <= hi)).astype(np.float32)),
             "mis-seq": (w_seq * ((w_seq >= lo) & (w_seq <= hi)), ((w_seq >= lo) & (w_seq <= hi)).astype(np.float32)),
             "none": (np.ones_like(w), np.ones_like(w))}
    for mode, (want_w, want_keep) in cases.items():
        got_w, got_keep = objectives.rollout_is_weights(trainer, sampler, mask, mode, lo, hi)
        np.testing.assert_allclose(np.asarray(got_w), want_w, rtol=1e-4, err_msg=mode)
        np.testing.assert_array_equal(np.asarray(got_keep), want_keep, err_msg=mode)
    assert 0 < cases["mis-token"][1].mean() < 1  # the random case drops some tokens and keeps others
    # weights carry no gradient into the trainer's log-probs
    g = jax.grad(lambda t: objectives.rollout_is_weights(t, sampler, mask, "tis-token")[0].sum())(jnp.asarray(trainer))
    np.testing.assert_array_equal(np.asarray(g), 0.0)
    m = objectives.rollout_mismatch(sampler, trainer, mask)
    x = trainer - sampler
    assert float(m["rollout/logp_abs_diff"]) == pytest.approx(np.abs(x)[mask > 0].mean(), rel=1e-5)
    assert float(m["rollout/kl_k3"]) == pytest.approx((np.exp(x) - x - 1)[mask > 0].mean(), rel=1e-5)


def test_objective_weights_only_the_policy_term():
    logp, old, adv, mask = _inputs(seed=11)
    w = np.random.default_rng(11).uniform(0.5, 2.0, (B, T)).astype(np.float32)
    pg, _ = grpo.clipped_policy_loss(logp, old, adv)
    kl = grpo.kl_penalty(logp, old - 0.1, "k3")
    loss, m = grpo.grpo_objective(logp, old, old - 0.1, adv, mask, kl_beta=0.1, is_weights_BxT=w)
    want = grpo.aggregate(np.asarray(pg) * w + 0.1 * np.asarray(kl), mask)
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert float(m["pg_loss"]) == pytest.approx(float(grpo.aggregate(np.asarray(pg) * w, mask)), rel=1e-5)


# ------------------------------------------------------------------------------------------- configuration
def test_config_choices_validate_and_name_the_field():
    assert objectives.POLICY_LOSSES == ("ppo-clip", "gspo", "gspo-token", "cispo", "gmpo", "sapo")
    bad = [(dict(policy_loss="ppo"), "policy_loss='ppo'"), (dict(cov_mode="clip"), "cov_mode"),
           (dict(rollout_is="tis"), "rollout_is='tis'"), (dict(advantage="gdp"), "advantage"),
           (dict(policy_loss="gspo", dual_clip=3.0), "dual_clip applies"),
           (dict(gspo_eps_low=-1e-4), "gspo_eps_low"), (dict(cispo_eps_low=1.5), "cispo_eps_low"),
           (dict(sapo_tau_neg=0.0), "sapo_tau"), (dict(entropy_coef=-0.1), "entropy_coef"),
           (dict(clip_cov_fraction=0.0), "clip_cov_fraction"),
           (dict(clip_cov_low=5.0, clip_cov_high=1.0), "clip_cov_low"),
           (dict(rollout_is_high=0.9), "rollout_is_high"),
           (dict(rollout_is="tis-token", recompute_old_logps=False), "needs recompute_old_logps")]
    for kw, message in bad:
        with pytest.raises(ValueError, match=f"GRPOConfig.*{message}"):
            GRPOConfig(**kw)
    for name in objectives.POLICY_LOSSES:  # every name builds its function
        assert callable(objectives.configured_policy_loss(GRPOConfig(policy_loss=name)))


def test_later_epochs_deal_new_minibatches_from_the_key():
    key = jax.random.key(7)
    np.testing.assert_array_equal(epoch_order(key, 0, 8), np.arange(8))
    first, second = np.asarray(epoch_order(key, 1, 8)), np.asarray(epoch_order(key, 2, 8))
    assert sorted(first) == list(range(8)) and (first != np.arange(8)).any() and (first != second).any()
    np.testing.assert_array_equal(epoch_order(key, 1, 8), first)  # deterministic given (key, epoch)
    # strided dealing of epoch 1's order (minibatch k: positions k, k + 2, …) gives other row sets than epoch 0's
    epoch0 = {frozenset(range(k, 8, 2)) for k in range(2)}
    epoch1 = {frozenset(first[k::2].tolist()) for k in range(2)}
    assert epoch1 != epoch0


# ----------------------------------------------------------------------- the jitted update with each variant
@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def offpolicy_batch(params):
    """Old log-probs from other params (ratios ≠ 1) and sampler log-probs from a third set (a mismatch)."""
    b = _batch(params, rows=4)
    logps = make_logps_fn(MODEL, chunk=4)
    return b.replace(old_logps_BxT=logps(jax.tree.map(lambda x: x * 0.9, params), b),
                     sampler_logps_BxT=logps(jax.tree.map(lambda x: x * 0.93, params), b))


VARIANTS = [dict(policy_loss="gspo", gspo_eps_low=0.01, gspo_eps_high=0.01, entropy_coef=0.01),
            dict(policy_loss="gspo-token", rollout_is="mis-seq", rollout_is_low=0.01, rollout_is_high=100.0),
            dict(policy_loss="cispo", cov_mode="clip-cov", clip_cov_fraction=0.2, clip_cov_low=-1e9),
            dict(policy_loss="gmpo", cov_mode="kl-cov", kl_cov_fraction=0.2),
            dict(policy_loss="sapo", rollout_is="tis-token")]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "+".join(f"{v[k]}" for k in v if isinstance(v[k], str)))
def test_update_step_trains_with_each_policy_loss(params, offpolicy_batch, variant):
    gcfg = GRPOConfig(group_size=2, prompts_per_step=2, sampling=SamplingSettings(max_new_tokens=6), logprob_chunk=8,
                      kl_beta=0.0, **variant)
    tx = optax.sgd(0.1)
    state, m = make_grpo_step(MODEL, tx, gcfg)(init_train_state(jax.tree.map(jnp.copy, params), tx), offpolicy_batch,
                                               jax.random.key(0))
    assert float(m["skipped"]) == 0 and all(np.isfinite(float(v)) for v in m.values())
    moved = max(float(jnp.abs(a - c).max()) for a, c in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)))
    assert moved > 0
    assert float(m["rollout/logp_abs_diff"]) > 0 and float(m["rollout/kl_k3"]) > 0  # logged always
    if "cov_mode" in variant:
        assert float(m[f"{variant['cov_mode'].replace('-', '_')}_frac"]) > 0
    if "rollout_is" in variant:
        assert 0 < float(m["rollout/is_weight_mean"]) and "rollout/is_dropped_frac" in m


def test_a_loss_function_of_your_own_and_deterministic_epochs(params, offpolicy_batch):
    """policy_loss=fn replaces the configured loss; with 2 epochs the result is a function of the key."""
    calls = []

    def reinforce(logp_BxT, old_logp_BxT, advantages_B, mask_BxT):
        calls.append(1)
        return -advantages_B[:, None] * logp_BxT, {}

    gcfg = GRPOConfig(group_size=2, prompts_per_step=2, sampling=SamplingSettings(max_new_tokens=6), logprob_chunk=8,
                      kl_beta=0.0, inner_epochs=2, num_minibatches=2)
    tx = optax.sgd(0.1)
    step = make_grpo_step(MODEL, tx, gcfg, policy_loss=reinforce)

    def run(key):
        state, m = step(init_train_state(jax.tree.map(jnp.copy, params), tx), offpolicy_batch, key)
        return jax.tree.leaves(state.params), m

    a, m = run(jax.random.key(1))
    b, _ = run(jax.random.key(1))
    c, _ = run(jax.random.key(2))
    assert calls and float(m["updates"]) == 4 and "clip_high_frac" not in m
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))  # epoch 2's minibatches came from the key
