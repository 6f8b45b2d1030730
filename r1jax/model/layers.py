"""Building blocks shared by blocks: RMSNorm, SwiGLU MLP, token embedding, logical-axis helpers.

Shape legend: B batch, L length, E embed_dim, M mlp_dim, V vocab_size.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from r1jax import logical
from r1jax.config import ModelConfig

Initializer = nn.initializers.Initializer


def kernel_init(*axes: str) -> Initializer:
    """Fan-in scaled truncated normal, boxed with logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"), axes)


def zeros_init(*axes: str) -> Initializer:
    """Zeros (biases), boxed with logical axis names."""
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def constrain(x: jax.Array, *axes: str) -> jax.Array:
    """Logical sharding constraint on an activation (r1jax.logical's rule table); a no-op without a mesh."""
    return logical.constrain(x, axes)


def matmul_2d(x: jax.Array, kernel: jax.Array, num_in: int = 1, preferred_element_type=None) -> jax.Array:
    """x's last `num_in` axes contracted with kernel's first `num_in`, as one [rows, in] × [in, out] matmul.

    Flattening (free for row-major arrays) leaves every dot of the backward pass with one
    contracting axis; XLA:CPU gives a dot contracting two axes (batch and length) a transposed
    copy of its operand, which cost ~20% of a training step.
    """
    lead, inner, out = x.shape[:x.ndim - num_in], kernel.shape[:num_in], kernel.shape[num_in:]
    size = lambda dims: int(np.prod(dims, dtype=np.int64))  # noqa: E731
    y = jnp.dot(x.reshape(size(lead), size(inner)), kernel.reshape(size(inner), size(out)),
                preferred_element_type=preferred_element_type)
    return y.reshape(lead + out)


def lora_dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """PEFT's lora_dropout of an adapter's input: x / (1 − rate) where kept, 0 where dropped; x without a key."""
    if key is None or not rate:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def lora_dropout_key(module: nn.Module) -> jax.Array | None:
    """A fresh key of the "dropout" rng for `module`'s adapters, or None: no LoRA dropout, or applied without one."""
    if not module.cfg.lora.dropout or not module.has_rng("dropout"):
        return None
    return module.make_rng("dropout")


class RMSNorm(nn.Module):
    """Root-mean-square norm (arXiv 1910.07467) computed in f32, returned in the compute dtype."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxE: jax.Array) -> jax.Array:
        """Normalizes the last axis (any leading axes)."""
        scale_E = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                             (x_BxLxE.shape[-1],), self.cfg.param_dtype)
        x = x_BxLxE.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.cfg.norm_eps)
        scale = scale_E.astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
        return (x * scale).astype(self.cfg.dtype)


class Dense(nn.Module):
    """x · kernel contracting x's last `num_in` axes into `features`; kernel axes named `axes` (inputs, outputs)."""

    cfg: ModelConfig
    features: tuple[int, ...]
    axes: tuple[str, ...]
    num_in: int = 1
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, n = self.cfg, self.num_in
        shape = tuple(x.shape[-n:]) + tuple(self.features)
        # Full-rank init (no flatten-and-reshape), so boxed names always match the value's rank.
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=tuple(range(n)),
                                                out_axis=tuple(range(n, len(shape))))
        kernel = self.param("kernel", nn.with_logical_partitioning(init, self.axes), shape, cfg.param_dtype)
        y = matmul_2d(x.astype(cfg.dtype), kernel.astype(cfg.dtype), n)
        if cfg.lora.adapts("/".join(self.path)):
            y = y + self._lora(x, n)
        if self.use_bias:
            bias = self.param("bias", zeros_init(*self.axes[n:]), tuple(self.features), cfg.param_dtype)
            y = y + bias.astype(cfg.dtype).reshape((1,) * (y.ndim - bias.ndim) + bias.shape)
        return y

    def _lora(self, x: jax.Array, n: int) -> jax.Array:
        """LoRA's dropout(x)·A·B·scale (arXiv 2106.09685): A [in…, r] kaiming-uniform (PEFT's), B [r, out…] 0."""
        cfg, r = self.cfg, self.cfg.lora.rank
        in_shape = tuple(x.shape[-n:])
        init_a = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=tuple(range(n)), out_axis=n)
        a = self.param("lora_a", nn.with_logical_partitioning(init_a, self.axes[:n] + ("lora_rank",)),
                       in_shape + (r,), cfg.param_dtype)
        b = self.param("lora_b", zeros_init("lora_rank", *self.axes[n:]), (r,) + tuple(self.features),
                       cfg.param_dtype)
        x = lora_dropout(x.astype(cfg.dtype), cfg.lora.dropout, lora_dropout_key(self))
        h = matmul_2d(x, a.astype(cfg.dtype), n)
        return (matmul_2d(h, b.astype(cfg.dtype), 1) * cfg.lora.scale).astype(cfg.dtype)


class Mlp(nn.Module):
    """SwiGLU feed-forward (arXiv 2002.05202): down(silu(gate(x)) · up(x))."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxE: jax.Array, mask_BxL: jax.Array | None = None) -> jax.Array:
        """`mask_BxL` is unused (token-wise); it is part of the MLP-class call signature."""
        del mask_BxL
        cfg = self.cfg
        gate_BxLxM = Dense(cfg, (cfg.mlp_dim,), ("embed", "mlp"), name="gate")(x_BxLxE)
        up_BxLxM = Dense(cfg, (cfg.mlp_dim,), ("embed", "mlp"), name="up")(x_BxLxE)
        h_BxLxM = constrain(nn.silu(gate_BxLxM) * up_BxLxM, "batch", "length", "mlp")
        return Dense(cfg, (cfg.embed_dim,), ("mlp", "embed"), name="down")(h_BxLxM)


class Embed(nn.Module):
    """Token embedding table [V, E]; `attend` reuses it as a tied output head."""

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        # std 1/sqrt(E): unit-scale logits at init when the table doubles as the head.
        init = nn.initializers.normal(stddev=cfg.embed_dim ** -0.5)
        self.embedding = self.param("embedding", nn.with_logical_partitioning(init, ("vocab", "embed")),
                                    (cfg.vocab_size, cfg.embed_dim), cfg.param_dtype)

    def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, tokens_BxL, axis=0).astype(self.cfg.dtype)

    def attend(self, x_BxLxE: jax.Array) -> jax.Array:
        """Logits x · tableᵀ in f32."""
        return matmul_2d(x_BxLxE, self.embedding.astype(self.cfg.dtype).T, preferred_element_type=jnp.float32)


class LMHead(nn.Module):
    """Untied output projection [E, V]; logits in f32."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxE: jax.Array) -> jax.Array:
        cfg = self.cfg
        kernel_ExV = self.param("kernel", kernel_init("embed", "vocab"), (cfg.embed_dim, cfg.vocab_size),
                                cfg.param_dtype)
        return matmul_2d(x_BxLxE, kernel_ExV.astype(cfg.dtype), preferred_element_type=jnp.float32)
