"""Blockwise attention with an online softmax and its own backward pass: memory linear in length, any backend.

FlashAttention (arXiv 2205.14135, Algorithm 1; the backward as FlashAttention-2, arXiv 2307.08691,
Algorithm 2) written with `lax.fori_loop` over blocks, so it runs wherever XLA does and is the
reference the platform kernels are tested against. Forward: for each block of query slots, a loop
over the key blocks it can see keeps the running row max m, the running sum l and the unnormalized
output o; it stores the output and the log-sum-exp m + log l per query row, never the [L, S]
probabilities. Backward: for each key block, a loop over the query blocks that see it rebuilds
p = exp(s − lse), accumulates dk, dv for that key block and adds the block's share of dq.

Causality works on slots: a query at slot `q_offset + l` sees key slot s iff s <= that slot and
`valid_BxS[b, s]` (and, for packed rows, the same segment id). Key blocks after a query block's last
slot are skipped, forward and backward (about half the work of a long causal row); so are the
empty cache slots after the last query during a prefill.

Shape legend: B batch, K kv heads, G query heads per kv head, L query slots, S key slots, D query/key
dim, V value dim, R = L·G query rows per kv head ordered position-major (row = l·G + g), and bq, bk
the query slots and key slots of a block.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

F32 = jnp.float32


def blockwise_attention(q_BxLxKxGxD: jax.Array, k_BxKxSxD: jax.Array, v_BxKxSxV: jax.Array,
                        valid_BxS: jax.Array, q_offset: jax.Array, scale: float,
                        segment_ids_BxL: jax.Array | None = None, block_q: int = 512, block_k: int = 512
                        ) -> jax.Array:
    """softmax(q·kᵀ·scale over the visible keys)·v, out B×L×K×G×V in q's dtype (scores and softmax in f32).

    `q_offset` (int32 scalar) is the slot of query 0 (a cache's write index, 0 without a cache);
    `segment_ids_BxL` (packed rows, queries and keys on the same slots) limits keys to the query's segment.
    A query that sees no key at all gets zeros (and no gradient).
    """
    batch, length, kv_heads, groups, dim = q_BxLxKxGxD.shape
    slots = k_BxKxSxD.shape[2]
    if segment_ids_BxL is not None and slots != length:
        raise ValueError(f"segment_ids need queries and keys on the same slots, got L={length}, S={slots}")
    bq, bk = min(block_q, length), min(block_k, slots)
    pad_l, pad_s = -length % bq, -slots % bk
    q_BxKxRxD = jnp.pad(q_BxLxKxGxD, ((0, 0), (0, pad_l), (0, 0), (0, 0), (0, 0))).transpose(0, 2, 1, 3, 4)
    q_BxKxRxD = q_BxKxRxD.reshape(batch, kv_heads, (length + pad_l) * groups, dim)
    k_BxKxSxD = jnp.pad(k_BxKxSxD, ((0, 0), (0, 0), (0, pad_s), (0, 0)))
    v_BxKxSxV = jnp.pad(v_BxKxSxV, ((0, 0), (0, 0), (0, pad_s), (0, 0)))
    valid_BxS = jnp.pad(valid_BxS.astype(bool), ((0, 0), (0, pad_s)))
    if segment_ids_BxL is None:
        seg_q_BxL = seg_k_BxS = jnp.zeros((batch, 1), jnp.int32)  # one segment: never masks
    else:
        seg_q_BxL = jnp.pad(segment_ids_BxL.astype(jnp.int32), ((0, 0), (0, pad_l)))
        seg_k_BxS = jnp.pad(segment_ids_BxL.astype(jnp.int32), ((0, 0), (0, pad_s)))
    out_BxKxRxV = _flash(q_BxKxRxD, k_BxKxSxD, v_BxKxSxV, valid_BxS, jnp.asarray(q_offset, jnp.int32),
                         seg_q_BxL, seg_k_BxS, float(scale), bq, bk, groups)
    out = out_BxKxRxV.reshape(batch, kv_heads, length + pad_l, groups, -1).transpose(0, 2, 1, 3, 4)
    return out[:, :length]


# ------------------------------------------------------------------ blocks


def _rows(x, i, rows):
    return jax.lax.dynamic_slice_in_dim(x, i * rows, rows, axis=2)


def _visible(i, j, bq, bk, q_offset, valid_BxS, seg_q_BxL, seg_k_BxS):
    """allowed_Bx1xbqx1xbk for query block i and key block j (broadcast over kv heads and groups)."""
    q_slot_Q = q_offset + i * bq + jnp.arange(bq, dtype=jnp.int32)
    k_slot_S = j * bk + jnp.arange(bk, dtype=jnp.int32)
    valid_Bxbk = jax.lax.dynamic_slice_in_dim(valid_BxS, j * bk, bk, axis=1)
    allowed = (k_slot_S[None, None, :] <= q_slot_Q[None, :, None]) & valid_Bxbk[:, None, :]
    if seg_q_BxL.shape[1] > 1:  # packed rows
        seg_q = jax.lax.dynamic_slice_in_dim(seg_q_BxL, i * bq, bq, axis=1)
        seg_k = jax.lax.dynamic_slice_in_dim(seg_k_BxS, j * bk, bk, axis=1)
        allowed &= seg_q[:, :, None] == seg_k[:, None, :]
    return allowed[:, None, :, None, :]


def _scores(q_BxKxRxD, k_BxKxbkxD, scale, groups):
    """s_BxKxbqxGxbk in f32."""
    s = jnp.einsum("bkqd,bksd->bkqs", q_BxKxRxD, k_BxKxbkxD, preferred_element_type=F32) * scale
    batch, kv_heads, rows, bk = s.shape
    return s.reshape(batch, kv_heads, rows // groups, groups, bk)


def _flat(x_BxKxbqxGxbk):
    batch, kv_heads, bq, groups, bk = x_BxKxbqxGxbk.shape
    return x_BxKxbqxGxbk.reshape(batch, kv_heads, bq * groups, bk)


def _key_blocks_needed(q_offset, last_q_slot_rel, bk, num_k_blocks):
    """Key blocks 0 … n−1 hold every slot up to the query slot q_offset + last_q_slot_rel."""
    return jnp.clip((q_offset + last_q_slot_rel) // bk + 1, 0, num_k_blocks)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def _flash(q, k, v, valid, q_offset, seg_q, seg_k, scale, bq, bk, groups):
    return _flash_fwd(q, k, v, valid, q_offset, seg_q, seg_k, scale, bq, bk, groups)[0]


def _flash_fwd(q_BxKxRxD, k_BxKxSxD, v_BxKxSxV, valid_BxS, q_offset, seg_q_BxL, seg_k_BxS, scale, bq, bk, groups):
    batch, kv_heads, rows, _ = q_BxKxRxD.shape
    value_dim = v_BxKxSxV.shape[-1]
    num_q, num_k = rows // (bq * groups), k_BxKxSxD.shape[2] // bk
    mask_args = (bq, bk, q_offset, valid_BxS, seg_q_BxL, seg_k_BxS)

    def query_block(i, outs):
        out_BxKxRxV, lse_BxKxR = outs
        q_blk = _rows(q_BxKxRxD, i, bq * groups)

        def key_block(j, carry):
            m_BxKxbqxG, l_BxKxbqxG, o_BxKxbqxGxV = carry
            s = _scores(q_blk, _rows(k_BxKxSxD, j, bk), scale, groups)
            allowed = _visible(i, j, *mask_args)
            m_new = jnp.maximum(m_BxKxbqxG, jnp.max(jnp.where(allowed, s, -jnp.inf), axis=-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            p = jnp.where(allowed, jnp.exp(s - m_safe[..., None]), 0.0)
            alpha = jnp.exp(m_BxKxbqxG - m_safe)  # 0 while the row has seen no key
            pv = jnp.einsum("bkqs,bksv->bkqv", _flat(p).astype(v_BxKxSxV.dtype), _rows(v_BxKxSxV, j, bk),
                            preferred_element_type=F32)
            o_new = o_BxKxbqxGxV * alpha[..., None] + pv.reshape(o_BxKxbqxGxV.shape)
            return m_new, l_BxKxbqxG * alpha + jnp.sum(p, axis=-1), o_new

        shape = (batch, kv_heads, bq, groups)
        init = (jnp.full(shape, -jnp.inf, F32), jnp.zeros(shape, F32), jnp.zeros(shape + (value_dim,), F32))
        needed = _key_blocks_needed(q_offset, (i + 1) * bq - 1, bk, num_k)
        m, l, o = jax.lax.fori_loop(0, needed, key_block, init)
        seen = l > 0
        o = o / jnp.where(seen, l, 1.0)[..., None]
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)  # inf: p = exp(s − lse) = 0
        start = (0, 0, i * bq * groups)
        out_BxKxRxV = jax.lax.dynamic_update_slice(
            out_BxKxRxV, o.reshape(batch, kv_heads, bq * groups, value_dim).astype(out_BxKxRxV.dtype), start + (0,))
        lse_BxKxR = jax.lax.dynamic_update_slice(lse_BxKxR, lse.reshape(batch, kv_heads, bq * groups), start)
        return out_BxKxRxV, lse_BxKxR

    outs = (jnp.zeros((batch, kv_heads, rows, value_dim), q_BxKxRxD.dtype), jnp.zeros((batch, kv_heads, rows), F32))
    out_BxKxRxV, lse_BxKxR = jax.lax.fori_loop(0, num_q, query_block, outs)
    res = (q_BxKxRxD, k_BxKxSxD, v_BxKxSxV, valid_BxS, q_offset, seg_q_BxL, seg_k_BxS, out_BxKxRxV, lse_BxKxR)
    return out_BxKxRxV, res


def _flash_bwd(scale, bq, bk, groups, res, dout_BxKxRxV):
    q_BxKxRxD, k_BxKxSxD, v_BxKxSxV, valid_BxS, q_offset, seg_q_BxL, seg_k_BxS, out_BxKxRxV, lse_BxKxR = res
    batch, kv_heads, rows, dim = q_BxKxRxD.shape
    num_q, num_k = rows // (bq * groups), k_BxKxSxD.shape[2] // bk
    mask_args = (bq, bk, q_offset, valid_BxS, seg_q_BxL, seg_k_BxS)
    dtype = q_BxKxRxD.dtype
    delta_BxKxR = jnp.sum(dout_BxKxRxV.astype(F32) * out_BxKxRxV.astype(F32), axis=-1)
    block_rows = bq * groups

    def key_block(j, grads):
        dq_BxKxRxD, dk_BxKxSxD, dv_BxKxSxV = grads
        k_blk, v_blk = _rows(k_BxKxSxD, j, bk), _rows(v_BxKxSxV, j, bk)

        def query_block(i, carry):
            dk_blk, dv_blk, dq_BxKxRxD = carry
            q_blk, dout_blk = _rows(q_BxKxRxD, i, block_rows), _rows(dout_BxKxRxV, i, block_rows)
            lse = jax.lax.dynamic_slice_in_dim(lse_BxKxR, i * block_rows, block_rows, axis=2)
            delta = jax.lax.dynamic_slice_in_dim(delta_BxKxR, i * block_rows, block_rows, axis=2)
            s = _flat(_scores(q_blk, k_blk, scale, groups))
            allowed = _flat(jnp.broadcast_to(_visible(i, j, *mask_args), (batch, kv_heads, bq, groups, bk)))
            p = jnp.where(allowed, jnp.exp(s - lse[..., None]), 0.0)
            dp = jnp.einsum("bkqv,bksv->bkqs", dout_blk, v_blk, preferred_element_type=F32)
            ds = (p * (dp - delta[..., None]) * scale).astype(dtype)
            dv_blk = dv_blk + jnp.einsum("bkqs,bkqv->bksv", p.astype(dtype), dout_blk, preferred_element_type=F32)
            dk_blk = dk_blk + jnp.einsum("bkqs,bkqd->bksd", ds, q_blk, preferred_element_type=F32)
            dq_blk = _rows(dq_BxKxRxD, i, block_rows) + jnp.einsum("bkqs,bksd->bkqd", ds, k_blk,
                                                                    preferred_element_type=F32)
            dq_BxKxRxD = jax.lax.dynamic_update_slice_in_dim(dq_BxKxRxD, dq_blk, i * block_rows, axis=2)
            return dk_blk, dv_blk, dq_BxKxRxD

        first = jnp.clip((j * bk - q_offset) // bq, 0, num_q)  # earlier query blocks end before key block j
        init = (jnp.zeros(k_blk.shape, F32), jnp.zeros(v_blk.shape, F32), dq_BxKxRxD)
        dk_blk, dv_blk, dq_BxKxRxD = jax.lax.fori_loop(first, num_q, query_block, init)
        dk_BxKxSxD = jax.lax.dynamic_update_slice_in_dim(dk_BxKxSxD, dk_blk.astype(dtype), j * bk, axis=2)
        dv_BxKxSxV = jax.lax.dynamic_update_slice_in_dim(dv_BxKxSxV, dv_blk.astype(v_BxKxSxV.dtype), j * bk, axis=2)
        return dq_BxKxRxD, dk_BxKxSxD, dv_BxKxSxV

    grads = (jnp.zeros(q_BxKxRxD.shape, F32), jnp.zeros(k_BxKxSxD.shape, k_BxKxSxD.dtype),
             jnp.zeros(v_BxKxSxV.shape, v_BxKxSxV.dtype))
    needed = _key_blocks_needed(q_offset, num_q * bq - 1, bk, num_k)
    dq_BxKxRxD, dk_BxKxSxD, dv_BxKxSxV = jax.lax.fori_loop(0, needed, key_block, grads)
    return dq_BxKxRxD.astype(dtype), dk_BxKxSxD, dv_BxKxSxV, None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)
