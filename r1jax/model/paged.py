"""A paged KV cache: one pool of fixed-size pages shared by every decode slot, and attention that reads
only the pages a row has filled.

Each layer's cache is a pool of P pages of N token slots (`PagedKV` for grouped-query attention,
`PagedLatent` for MLA's latents). A row (a decode slot, or a prompt being prefilled) owns a list
of page ids, its page table; its token t sits at slot t % N of page `pages[t // N]`. Rows may share
pages read-only: the G samples of a prompt point at the prompt's full pages. Page 0 is the null
page: unused page-table entries and the writes of padding tokens go there, and it is never read
unmasked.

A call with L new tokens per row (`PageTable`: the page ids, how many tokens each row holds
already, how many of the L are real) writes the real tokens' keys and values into their pages,
then attends each query at position `lengths_B + l` to every slot up to itself. The attention is a
`lax.fori_loop` over page columns with an online softmax (as FlashAttention), each column folded into
only the rows that fill it: a decode step's cost follows the pages the rows have filled, not the
pool's size, the longest budget or the longest row in flight.

With `ModelConfig.paged_attention='tpu_ragged'` a layer keeps keys and values in one pool,
`PagedKVPairs` (each kv head's key then its value along the head axis, the layout jax's TPU ragged
paged attention kernel reads), and `ragged_kernel_attention` hands the call to that kernel: the
rows' real new tokens packed one after another, each row a sequence of `new_B` queries over
`lengths_B + new_B` keys. Under a mesh it runs per data shard and kv-head shard in `jax.shard_map`.
UNTESTED on a TPU: on CPU the tests run it with a jnp kernel of the same contract, checked against
jax's own reference (`ref_ragged_paged_attention`).

Shape legend: B rows, L new tokens per row, M pages per row (page-table width), P pages in the
pool, N slots per page, K kv heads, G query heads per kv head, D key dim, V value dim, C MLA latent
dim, R MLA RoPE dim, Q = G·L query rows per kv head.
"""
from __future__ import annotations

import functools
from typing import Callable

import flax
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from r1jax import logical

_MASKED = -1e30


@flax.struct.dataclass
class PageTable:
    """Where each row's tokens live in the pool, for one call of L new tokens per row."""

    pages_BxM: jax.Array  # int32: the row's page ids in token order (0, the null page, where unused)
    lengths_B: jax.Array  # int32: tokens the row's pages hold before this call (the first new token's position)
    new_B: jax.Array  # int32: how many of the L new tokens are real (they come first; the rest are padding)
    shards: int = flax.struct.field(pytree_node=False, default=1)  # page runs in the pool; ids are local to one


@flax.struct.dataclass
class PagedKV:
    """One layer's RoPE'd keys and values, by page."""

    k_PxKxNxD: jax.Array
    v_PxKxNxD: jax.Array
    logical_axes = {"k_PxKxNxD": ("pages", "kv_heads", "page_slot", "head_dim"),
                    "v_PxKxNxD": ("pages", "kv_heads", "page_slot", "head_dim")}  # a class constant


@flax.struct.dataclass
class PagedKVPairs:
    """One layer's RoPE'd keys and values by page in one array: head axis k₀, v₀, k₁, v₁, … (2K entries)."""

    kv_PxNx2KxD: jax.Array
    logical_axes = {"kv_PxNx2KxD": ("pages", "page_slot", "kv_heads", "head_dim")}  # a class constant


@flax.struct.dataclass
class PagedLatent:
    """One MLA layer's normalized KV latents and RoPE'd shared keys, by page."""

    latent_PxNxC: jax.Array
    k_rope_PxNxR: jax.Array
    logical_axes = {"latent_PxNxC": ("pages", "page_slot", "kv_lora"),
                    "k_rope_PxNxR": ("pages", "page_slot", "head_dim")}  # a class constant


def token_slots(table: PageTable, length: int, page_size: int) -> tuple[jax.Array, jax.Array]:
    """(page_BxL, slot_BxL): where each of the L new tokens is written; padding goes to the null page."""
    pos_BxL = table.lengths_B[:, None] + jnp.arange(length, dtype=jnp.int32)[None, :]
    real_BxL = jnp.arange(length, dtype=jnp.int32)[None, :] < table.new_B[:, None]
    column_BxL = jnp.minimum(pos_BxL // page_size, table.pages_BxM.shape[1] - 1)
    page_BxL = jnp.where(real_BxL, jnp.take_along_axis(table.pages_BxM, column_BxL, axis=1), 0)
    return page_BxL, jnp.where(real_BxL, pos_BxL % page_size, 0)


def by_shard(pool: jax.Array, shards: int, axis: int = 0) -> jax.Array:
    """The pool's page axis `axis` as (shards, pages per shard), the first over the data axes as rows are."""
    shape = pool.shape[:axis] + (shards, pool.shape[axis] // shards) + pool.shape[axis + 1:]
    names = (None,) * axis + ("batch",) + (None,) * (pool.ndim - axis)
    return logical.constrain(pool.reshape(shape), names)


def shard_pages(pool: jax.Array, shards: int, axis: int = 0) -> jax.Array:
    """The pool laid out as `by_shard` says (page runs over the data axes), in its own shape."""
    return by_shard(pool, shards, axis).reshape(pool.shape) if shards > 1 else pool


def _per_shard(fn: Callable, pool: jax.Array, shards: int, *rows: jax.Array) -> jax.Array:
    """fn(a shard's pool, that shard's rows of each of `rows`) on every shard; the pool back in its shape."""
    if shards == 1:
        return fn(pool, *rows)
    split = [r.reshape((shards, r.shape[0] // shards) + r.shape[1:]) for r in rows]
    out = jax.vmap(fn)(by_shard(pool, shards), *split)
    return out.reshape((-1,) + out.shape[2:])


def read_pages(pool: jax.Array, page_B: jax.Array, shards: int) -> jax.Array:
    """pool[page_B]: row b's page from its own shard's run (local ids)."""
    return _per_shard(lambda p, i: p[i], pool, shards, page_B)


def write_tokens(pool: jax.Array, new_BxLx: jax.Array, page_BxL: jax.Array, slot_BxL: jax.Array,
                 slot_axis: int, shards: int = 1) -> jax.Array:
    """`pool` with each new token's vector at (page, slot) of its row's shard; `slot_axis` is the pool's
    slot axis (1 or 2)."""
    def write(p, new, page, slot):
        if slot_axis == 1:  # P×N×…: the token's vector is the trailing dims
            return p.at[page, slot].set(new.astype(p.dtype))
        return p.at[page, :, slot].set(new.astype(p.dtype))  # P×K×N×D ← B×L×K×D

    return _per_shard(write, pool, shards, new_BxLx, page_BxL, slot_BxL)


def copy_pages(pool: jax.Array, from_A: jax.Array, to_A: jax.Array, shards: int, axis: int = 0) -> jax.Array:
    """`pool` with page to_A[a] a copy of page from_A[a], within row a's shard (A split as rows are);
    `axis` is the page axis (1 in a scanned group's stacked pools: copied a layer at a time, so that a
    backend which widens the scatter (XLA:CPU does bf16 in f32) needs room for one layer, not all)."""
    if axis == 1:
        def layer(i, p):
            return jax.lax.dynamic_update_index_in_dim(p, copy_pages(p[i], from_A, to_A, shards), i, 0)

        return jax.lax.fori_loop(0, pool.shape[0], layer, pool)

    def copy(p, src, dst):
        return p.at[dst].set(p[src])

    return _per_shard(copy, pool, shards, from_A, to_A)


def paged_attention(q_BxLxKxGxD: jax.Array, read_page: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
                    table: PageTable, page_size: int, scale: float) -> jax.Array:
    """softmax(q·kᵀ·scale over each query's own row up to its position)·v, out B×L×K×G×V in q's dtype.

    `read_page(page_R)` gives (k_RxKxNxD, v_RxKxNxV) of one page per entry, R split over the shards as
    rows are. Scores and softmax in f32; padding tokens (and rows with no new token) get zeros.

    Ragged: a loop over page columns folds column j into the online softmax (as FlashAttention) of
    only the rows that fill more than j pages. Each shard orders its rows longest first, so those
    rows are a prefix of the order. The first columns, while more than half the rows of the fullest
    shard need them, fold every row (no row gathers); each later one takes the shortest prefix of ½,
    ¼ or ⅛ of the rows that holds them. So the work follows the filled pages, not rows × the longest
    row, and a row's result depends on its own pages only.
    """
    batch, length, kv_heads, groups, dim = q_BxLxKxGxD.shape
    dtype, f32, shards = q_BxLxKxGxD.dtype, jnp.float32, table.shards
    rows, queries = batch // shards, length * groups
    width = table.pages_BxM.shape[1]
    q_SxBxKxQxD = q_BxLxKxGxD.transpose(0, 2, 1, 3, 4).reshape(shards, rows, kv_heads, queries, dim)
    new_L = jnp.arange(length, dtype=jnp.int32)
    q_pos_BxL = jnp.where(new_L[None, :] < table.new_B[:, None], table.lengths_B[:, None] + new_L[None, :], -1)
    q_pos_SxBxQ = jnp.repeat(q_pos_BxL, groups, axis=1).reshape(shards, rows, queries)  # padding: sees nothing
    pages_SxBxM = table.pages_BxM.reshape(shards, rows, width)
    filled_B = table.lengths_B + table.new_B
    cols_SxB = jnp.where(table.new_B > 0, jnp.minimum(-(-filled_B // page_size), width), 0).reshape(shards, rows)
    order_SxB = jnp.argsort(-cols_SxB, axis=1, stable=True).astype(jnp.int32)  # longest first
    prefixes = sorted({max(1, rows // d) for d in (8, 4, 2)} - {rows})  # row counts a later column may take

    def fold_rows(j, q_CxKxQxD, q_pos_CxQ, m_CxKxQ, l_CxKxQ, o_CxKxQxV, k_CxKxNxD, v_CxKxNxV):
        """Page column j (k, v: each row's page) into C rows' running max, sum and output."""
        s_CxKxQxN = jnp.einsum("ckqd,cknd->ckqn", q_CxKxQxD, k_CxKxNxD.astype(dtype),
                               preferred_element_type=f32) * scale
        slot_N = j * page_size + jnp.arange(page_size, dtype=jnp.int32)
        visible_Cx1xQxN = (slot_N[None, None, :] <= q_pos_CxQ[:, :, None])[:, None]
        s_CxKxQxN = jnp.where(visible_Cx1xQxN, s_CxKxQxN, _MASKED)
        m_new = jnp.maximum(m_CxKxQ, jnp.max(s_CxKxQxN, axis=-1))
        p_CxKxQxN = jnp.where(visible_Cx1xQxN, jnp.exp(s_CxKxQxN - m_new[..., None]), 0.0)
        alpha = jnp.exp(m_CxKxQ - m_new)
        o_new = o_CxKxQxV * alpha[..., None] + jnp.einsum(
            "ckqn,cknv->ckqv", p_CxKxQxN.astype(dtype), v_CxKxNxV.astype(dtype), preferred_element_type=f32)
        return m_new, l_CxKxQ * alpha + jnp.sum(p_CxKxQxN, axis=-1), o_new

    def read(page_SxC):
        k_RxKxNxD, v_RxKxNxV = read_page(page_SxC.reshape(-1))
        return (k_RxKxNxD.reshape(page_SxC.shape + k_RxKxNxD.shape[1:]),
                v_RxKxNxV.reshape(page_SxC.shape + v_RxKxNxV.shape[1:]))

    def every_row(j, carry):
        page_SxB = jax.lax.dynamic_index_in_dim(pages_SxBxM, j, 2, keepdims=False)
        return jax.vmap(functools.partial(fold_rows, j))(q_SxBxKxQxD, q_pos_SxBxQ, *carry, *read(page_SxB))

    def prefix(size, j, carry):
        """Column j into the first `size` rows of each shard's order; the others as they were."""
        row_SxC = order_SxB[:, :size]
        page_SxC = jax.vmap(lambda pages_BxM, row_C: pages_BxM[row_C, j])(pages_SxBxM, row_SxC)

        def one(row_C, q_BxKxQxD, q_pos_BxQ, m_BxKxQ, l_BxKxQ, o_BxKxQxV, k_CxKxNxD, v_CxKxNxV):
            folded = fold_rows(j, q_BxKxQxD[row_C], q_pos_BxQ[row_C], m_BxKxQ[row_C], l_BxKxQ[row_C],
                               o_BxKxQxV[row_C], k_CxKxNxD, v_CxKxNxV)
            return tuple(x.at[row_C].set(v) for x, v in zip((m_BxKxQ, l_BxKxQ, o_BxKxQxV), folded))

        return jax.vmap(one)(row_SxC, q_SxBxKxQxD, q_pos_SxBxQ, *carry, *read(page_SxC))

    def column(j, carry):
        branch = jnp.sum(jnp.asarray(prefixes[:-1], jnp.int32) < need_M[j])  # the shortest prefix that holds them
        return jax.lax.switch(branch, [functools.partial(prefix, size) for size in prefixes], j, carry)

    v_dim = jax.eval_shape(read_page, jnp.zeros((batch,), jnp.int32))[1].shape[-1]
    init = (jnp.full((shards, rows, kv_heads, queries), _MASKED, f32),
            jnp.zeros((shards, rows, kv_heads, queries), f32),
            jnp.zeros((shards, rows, kv_heads, queries, v_dim), f32))
    # column j is needed by need_M[j] rows of the fullest shard, fewer as j grows
    need_M = jnp.max(jnp.sum(cols_SxB[:, :, None] > jnp.arange(width, dtype=jnp.int32)[None, None, :], axis=1), axis=0)
    every = jnp.sum(need_M > prefixes[-1]) if prefixes else jnp.max(cols_SxB)
    carry = jax.lax.fori_loop(0, every, every_row, init)
    if prefixes:
        carry = jax.lax.fori_loop(every, jnp.max(cols_SxB), column, carry)
    _, l_SxBxKxQ, o_SxBxKxQxV = carry
    out_SxBxKxQxV = o_SxBxKxQxV / jnp.where(l_SxBxKxQ > 0, l_SxBxKxQ, 1.0)[..., None]
    return out_SxBxKxQxV.reshape(batch, kv_heads, length, groups, v_dim).transpose(0, 2, 1, 3, 4).astype(dtype)


def interleave_kv(k_BxLxKxD: jax.Array, v_BxLxKxD: jax.Array) -> jax.Array:
    """B×L×2K×D with each kv head's key then its value (PagedKVPairs' head order)."""
    batch, length, kv_heads, dim = k_BxLxKxD.shape
    return jnp.stack([k_BxLxKxD, v_BxLxKxD], axis=3).reshape(batch, length, 2 * kv_heads, dim)


def tpu_ragged_kernel() -> Callable:
    """jax's TPU ragged paged attention (Pallas); a function so that tests can stand another kernel in."""
    from jax.experimental.pallas.ops.tpu.ragged_paged_attention import ragged_paged_attention

    return ragged_paged_attention


def _packed_kernel_call(kernel: Callable, scale: float, q_BxLxHxD: jax.Array, kv_PxNx2KxD: jax.Array,
                        pages_BxM: jax.Array, lengths_B: jax.Array, new_B: jax.Array) -> jax.Array:
    """One shard: the rows' real new queries packed in order, the kernel called, its output unpacked."""
    batch, length, heads, dim = q_BxLxHxD.shape
    cu_q_lens = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(new_B, dtype=jnp.int32)])
    real_BxL = jnp.arange(length, dtype=jnp.int32)[None, :] < new_B[:, None]
    at_BxL = jnp.where(real_BxL, cu_q_lens[:-1, None] + jnp.arange(length, dtype=jnp.int32)[None, :], batch * length)
    packed_TxHxD = jnp.zeros((batch * length, heads, dim), q_BxLxHxD.dtype).at[at_BxL.reshape(-1)].set(
        q_BxLxHxD.reshape(-1, heads, dim), mode="drop")  # padding tokens go nowhere
    out_TxHxD = kernel(packed_TxHxD, kv_PxNx2KxD, lengths_B + new_B, pages_BxM, cu_q_lens,
                       jnp.array([batch], jnp.int32), sm_scale=scale)
    out_BxLxHxD = out_TxHxD[jnp.minimum(at_BxL, out_TxHxD.shape[0] - 1)]
    return jnp.where(real_BxL[:, :, None, None], out_BxLxHxD, 0).astype(q_BxLxHxD.dtype)


def ragged_kernel_attention(q_BxLxHxD: jax.Array, kv_PxNx2KxD: jax.Array, table: PageTable, scale: float,
                            kernel: Callable) -> jax.Array:
    """paged_attention's result through `kernel` (the contract of jax's ragged_paged_attention) over a
    PagedKVPairs pool whose pages already hold the new tokens; out B×L×H×D, zeros at padding tokens.

    With `table.shards` > 1 the rows and the pool's page runs split over the data axes as the pool's
    shards do, and heads over the kv-head axes, each device calling the kernel on its own piece.
    """
    call = functools.partial(_packed_kernel_call, kernel, scale)
    if table.shards == 1:
        return call(q_BxLxHxD, kv_PxNx2KxD, table.pages_BxM, table.lengths_B, table.new_B)
    rows = logical.axes_of("batch", q_BxLxHxD.shape[0]) or None
    heads = logical.axes_of("kv_heads", kv_PxNx2KxD.shape[2] // 2) or None  # whole (k, v) pairs
    on_rows, per_head = PartitionSpec(rows), PartitionSpec(rows, None, heads, None)
    return jax.shard_map(call, in_specs=(per_head, per_head, on_rows, on_rows, on_rows), out_specs=per_head)(
        q_BxLxHxD, kv_PxNx2KxD, table.pages_BxM, table.lengths_B, table.new_B)
