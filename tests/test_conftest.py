"""The test environment itself: 8 CPU devices, rank promotion raises."""
import jax
import jax.numpy as jnp
import pytest


def test_eight_cpu_devices():
    assert jax.device_count() == 8
    assert all(d.platform == "cpu" for d in jax.devices())


def test_rank_promotion_raises():
    with pytest.raises(ValueError, match="rank"):
        jnp.ones((2, 3)) + jnp.ones((3,))
