"""Rotary position embedding (RoPE) with linear, Llama-3 and YaRN frequency scaling.

Rotate-half layout (the Hugging Face Qwen2/Llama convention): dim i pairs with
dim i + D/2. Frequencies are built in numpy float32 at trace time, as
transformers builds them, so imported checkpoints see the same angles.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.config import RopeScaling


def default_inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """θ^(-2i/D) for i < D/2 (RoFormer, arXiv 2104.09864, eq. 15)."""
    return (1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))).astype(np.float32)


def _llama3_inv_freq(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
    """Llama 3.1: keep high frequencies, divide low ones by factor, interpolate smoothly in between."""
    low_freq_wavelen = s.original_max_len / s.low_freq_factor
    high_freq_wavelen = s.original_max_len / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def _yarn_inv_freq(inv_freq: np.ndarray, head_dim: int, theta: float, s: RopeScaling) -> np.ndarray:
    """YaRN (arXiv 2309.00071, eq. 18-20): interpolate dims that rotate < beta_slow times, keep those > beta_fast."""

    def correction_dim(num_rotations: float) -> float:
        return head_dim * math.log(s.original_max_len / (num_rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(s.beta_fast), correction_dim(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: extrapolate (original frequency), 0: interpolate (frequency / factor)
    return (inv_freq / s.factor * (1 - keep) + inv_freq * keep).astype(np.float32)


def yarn_default_attention_factor(factor: float) -> float:
    """YaRN's 0.1·ln(s) + 1 temperature, applied to cos and sin (arXiv 2309.00071, eq. 22)."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> tuple[np.ndarray, float]:
    """Inverse frequencies [head_dim/2] (float32) and the factor that multiplies cos and sin."""
    inv_freq = default_inv_freq(head_dim, theta)
    if scaling is None:
        return inv_freq, 1.0
    if scaling.kind == "linear":
        return (inv_freq / scaling.factor).astype(np.float32), 1.0
    if scaling.kind == "llama3":
        return _llama3_inv_freq(inv_freq, scaling), 1.0
    if scaling.kind == "yarn":
        attention_factor = scaling.attention_factor
        if attention_factor is None:
            attention_factor = yarn_default_attention_factor(scaling.factor)
        return _yarn_inv_freq(inv_freq, head_dim, theta, scaling), float(attention_factor)
    raise ValueError(f"unknown rope scaling kind {scaling.kind!r}")


def apply_rope(x_BxLxHxD: jax.Array, positions_BxL: jax.Array, inv_freq: np.ndarray,
               attention_factor: float = 1.0) -> jax.Array:
    """Rotates each head vector by its token's position; computed in f32, returned in x's dtype."""
    angles_BxLxF = positions_BxL.astype(jnp.float32)[:, :, None] * jnp.asarray(inv_freq)[None, None, :]
    angles_BxLx1xD = jnp.concatenate([angles_BxLxF, angles_BxLxF], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles_BxLx1xD) * attention_factor, jnp.sin(angles_BxLx1xD) * attention_factor
    x = x_BxLxHxD.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rotated * sin).astype(x_BxLxHxD.dtype)
