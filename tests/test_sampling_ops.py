"""Token choice draws from the distribution it claims, on a fixed logits table."""
import jax
import jax.numpy as jnp
import numpy as np

from r1jax.sampling_ops import choose_tokens, first_argmax, sample_categorical, top_k_mask, top_p_mask

PROBS = np.array([0.5, 0.25, 0.15, 0.07, 0.03])
LOGITS = jnp.log(jnp.asarray(PROBS, jnp.float32))


def _draw(n, temperature, top_p, top_k=None, seed=0):
    logits_BxV = jnp.broadcast_to(LOGITS, (n, PROBS.size))
    tokens, logp = jax.jit(choose_tokens, static_argnums=4)(
        logits_BxV, jax.random.key(seed), jnp.full((n,), temperature), jnp.full((n,), top_p), top_k)
    return np.asarray(tokens), np.asarray(logp)


def _chi2_ok(tokens, expected_p, n):
    """Pearson chi-square against expected_p, generous critical value (p ≈ 0.001, dof ≤ 4)."""
    counts = np.bincount(tokens, minlength=expected_p.size)
    support = expected_p > 0
    assert counts[~support].sum() == 0, f"sampled outside the support: {counts}"
    exp = expected_p[support] * n
    chi2 = ((counts[support] - exp) ** 2 / exp).sum()
    return chi2 < 18.5, (counts, chi2)


def test_temperature_one_matches_probs():
    n = 20000
    tokens, logp = _draw(n, 1.0, 1.0)
    ok, info = _chi2_ok(tokens, PROBS, n)
    assert ok, info
    np.testing.assert_allclose(logp, np.log(PROBS)[tokens], rtol=1e-5)


def test_temperature_two_flattens():
    n = 20000
    expected = PROBS ** 0.5 / (PROBS ** 0.5).sum()
    ok, info = _chi2_ok(_draw(n, 2.0, 1.0)[0], expected, n)
    assert ok, info


def test_top_p_keeps_the_nucleus_and_renormalizes():
    n = 20000
    # mass above token 2 is 0.75 < 0.8 -> kept; above token 3 is 0.90 -> dropped
    expected = np.array([0.5, 0.25, 0.15, 0, 0]) / 0.9
    ok, info = _chi2_ok(_draw(n, 1.0, 0.8)[0], expected, n)
    assert ok, info


def test_top_k_two():
    n = 20000
    expected = np.array([0.5, 0.25, 0, 0, 0]) / 0.75
    ok, info = _chi2_ok(_draw(n, 1.0, 1.0, top_k=2)[0], expected, n)
    assert ok, info


def test_temperature_zero_is_argmax_and_logp_is_raw_model():
    tokens, logp = _draw(64, 0.0, 0.5, top_k=3)
    assert (tokens == 0).all()
    np.testing.assert_allclose(logp, np.log(0.5), rtol=1e-5)


def test_per_row_temperature():
    logits = jnp.broadcast_to(LOGITS, (4000, 5))
    temps = jnp.tile(jnp.array([0.0, 1.0]), 2000)
    tokens, _ = choose_tokens(logits, jax.random.key(1), temps, jnp.ones(4000))
    tokens = np.asarray(tokens)
    assert (tokens[0::2] == 0).all()
    assert (tokens[1::2] != 0).mean() > 0.4


def test_masks_keep_at_least_the_best_token():
    logits = jnp.array([[3.0, 1.0, 0.0]])
    assert np.isfinite(np.asarray(top_p_mask(logits, jnp.array([0.0])))[0, 0])
    kept = np.asarray(top_k_mask(logits, 1)) > -1e29
    assert kept.tolist() == [[True, False, False]]


def test_inverse_cdf_sampler_matches_probs_across_blocks_and_skips_masked_tokens():
    # 300 tokens = 3 blocks of 128 (the last padded); every other token masked to -1e30
    rng = np.random.default_rng(0)
    logits = rng.normal(size=300).astype(np.float32) * 2
    logits[1::2] = -1e30
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    n = 40000
    tokens = np.asarray(jax.jit(sample_categorical)(jax.random.key(3), jnp.broadcast_to(logits, (n, 300))))
    assert (tokens % 2 == 0).all() and tokens.max() < 300
    counts = np.bincount(tokens, minlength=300)
    big = probs > 0.01  # chi-square on the well-populated tokens, the rest pooled
    exp = np.append(probs[big], probs[~big].sum()) * n
    got = np.append(counts[big], counts[~big].sum())
    chi2 = ((got - exp) ** 2 / exp).sum()
    assert chi2 < 3 * (big.sum() + 10), (chi2, big.sum())


def test_first_argmax_takes_the_first_maximum():
    x = jnp.array([[1.0, 3.0, 3.0, 0.0], [-1.0, -2.0, -1.0, -5.0]])
    assert first_argmax(x).tolist() == [1, 0]
