"""The cache-free full forward pass that sampler tests compare against."""
import jax
import jax.numpy as jnp
import numpy as np

from r1jax.model import Transformer


def full_logps(cfg, params, sequences, width=32) -> np.ndarray:
    """log_softmax [N, width, V] of one cache-free forward over every sequence, right-padded to `width`
    (one compile; a causal model's earlier positions see none of the padding)."""
    if max(map(len, sequences)) > width:
        raise ValueError(f"a sequence is longer than width={width}")
    seq = np.zeros((len(sequences), width), np.int32)
    for i, s in enumerate(sequences):
        seq[i, :len(s)] = s
    positions = np.broadcast_to(np.arange(width), seq.shape)
    logits, _ = Transformer(cfg).apply({"params": params}, jnp.asarray(seq), jnp.asarray(positions))
    return np.asarray(jax.nn.log_softmax(logits, axis=-1))
