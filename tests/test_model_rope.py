"""RoPE: relative-position property, exact default frequencies, scaling rules (values vs transformers in test_hf)."""
import math

import jax
import numpy as np
import pytest

from r1jax.config import RopeScaling
from r1jax.model.rope import apply_rope, default_inv_freq, rope_frequencies


def test_default_frequencies_are_theta_to_the_minus_2i_over_d():
    np.testing.assert_allclose(default_inv_freq(8, 10000.0), [1.0, 0.1, 0.01, 0.001], rtol=1e-6)


@pytest.mark.parametrize("scaling", [None, RopeScaling("llama3", 8.0, 16), RopeScaling("yarn", 4.0, 16)])
def test_rotated_dot_products_depend_only_on_the_position_offset(scaling):
    inv_freq, factor = rope_frequencies(16, 10000.0, scaling)
    q, k = np.asarray(jax.random.normal(jax.random.key(0), (2, 1, 1, 16)))

    def score(pos_q, pos_k):
        rq = apply_rope(q[None], np.array([[pos_q]]), inv_freq, factor)
        rk = apply_rope(k[None], np.array([[pos_k]]), inv_freq, factor)
        return float((rq * rk).sum())

    np.testing.assert_allclose(score(7, 3), score(104, 100), rtol=1e-4)
    assert abs(score(7, 3) - score(7, 5)) > 1e-3


def test_rotation_keeps_the_norm_up_to_the_attention_factor():
    x = np.asarray(jax.random.normal(jax.random.key(1), (1, 3, 2, 8)))
    positions = np.array([[0, 5, 1000]])
    inv_freq, _ = rope_frequencies(8, 10000.0, None)
    np.testing.assert_allclose(np.linalg.norm(apply_rope(x, positions, inv_freq), axis=-1),
                               np.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(apply_rope(x, positions * 0, inv_freq, 1.5), 1.5 * x, rtol=1e-6)


def test_llama3_keeps_high_frequencies_and_divides_low_ones():
    base = default_inv_freq(128, 500000.0)
    scaled, factor = rope_frequencies(128, 500000.0, RopeScaling("llama3", 8.0, 8192))
    wavelen = 2 * math.pi / base
    assert factor == 1.0
    np.testing.assert_array_equal(scaled[wavelen < 8192 / 4], base[wavelen < 8192 / 4])
    np.testing.assert_allclose(scaled[wavelen > 8192], base[wavelen > 8192] / 8, rtol=1e-6)
    medium = (wavelen >= 8192 / 4) & (wavelen <= 8192)
    assert medium.any() and ((scaled[medium] < base[medium]) & (scaled[medium] > base[medium] / 8)).all()


def test_yarn_interpolates_slow_dims_and_scales_attention():
    base = default_inv_freq(64, 10000.0)
    scaled, factor = rope_frequencies(64, 10000.0, RopeScaling("yarn", 16.0, 2048))
    assert factor == pytest.approx(0.1 * math.log(16.0) + 1)
    np.testing.assert_allclose(scaled[:4], base[:4], rtol=1e-6)  # fast dims: unchanged
    np.testing.assert_allclose(scaled[-4:], base[-4:] / 16, rtol=1e-6)  # slow dims: divided by factor
    _, explicit = rope_frequencies(64, 10000.0, RopeScaling("yarn", 16.0, 2048, attention_factor=1.25))
    assert explicit == 1.25
