"""r1jax: reproduce and extend DeepSeek-R1 in JAX."""

__version__ = "0.1.0"
