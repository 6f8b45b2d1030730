"""Test stand-ins for collectives XLA:CPU does not implement (not product code).

`gathered_ragged_all_to_all` gives jax.lax.ragged_all_to_all's result from all_gathers, so the
expert-parallel all-to-all dispatch's bookkeeping runs and is checked on CPU
(`moe_parallel.parallel_expert_ffn(..., collective=gathered_ragged_all_to_all)`).
"""
import jax
import jax.numpy as jnp


def gathered_ragged_all_to_all(operand: jax.Array, output: jax.Array, input_offsets: jax.Array,
                               send_sizes: jax.Array, output_offsets: jax.Array, recv_sizes: jax.Array, *,
                               axis_name) -> jax.Array:
    """jax.lax.ragged_all_to_all's result (one slice per device) from all_gathers: dense traffic, any backend.

    For testing the all-to-all bookkeeping where the real collective is unimplemented (CPU).
    """
    del recv_sizes  # implied by the senders' send_sizes
    me = jax.lax.axis_index(axis_name)
    operands_SxNxE = jax.lax.all_gather(operand, axis_name)
    start_S = jax.lax.all_gather(input_offsets, axis_name)[:, me]  # each sender's slice for me
    size_S = jax.lax.all_gather(send_sizes, axis_name)[:, me]
    land_S = jax.lax.all_gather(output_offsets, axis_name)[:, me]
    row_R = jnp.arange(output.shape[0])
    inside_RxS = (row_R[:, None] >= land_S[None, :]) & (row_R[:, None] < (land_S + size_S)[None, :])
    sender_R = jnp.argmax(inside_RxS, axis=1)
    source_R = jnp.clip(start_S[sender_R] + row_R - land_S[sender_R], 0, operand.shape[0] - 1)
    got_RxE = operands_SxNxE[sender_R, source_R]
    hit_R = jnp.any(inside_RxS, axis=1).reshape((-1,) + (1,) * (output.ndim - 1))
    return jnp.where(hit_R, got_RxE, output)
