"""The portable paged attention (r1jax.model.paged.paged_attention) on its own: against dense attention
over each row's tokens, rows of any length side by side, and a row's result its own."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.model import paged

PAGE, K, G, D = 4, 2, 3, 8


def _pool(pages: int, seed: int = 0):
    k_key, v_key = jax.random.split(jax.random.key(seed))
    return (jax.random.normal(k_key, (pages, K, PAGE, D), jnp.float32),
            jax.random.normal(v_key, (pages, K, PAGE, D), jnp.float32))


def _table(lengths, new, width: int, shards: int, seed: int = 1):
    """Each row gets `width` distinct pages of its shard's run (local ids ≥ 1), in shuffled order."""
    rows = len(lengths)
    per = rows // shards
    rng = np.random.default_rng(seed)
    pages = np.concatenate([1 + rng.permutation(per * width).reshape(per, width) for _ in range(shards)])
    return paged.PageTable(jnp.asarray(pages.astype(np.int32)), jnp.asarray(lengths, jnp.int32),
                           jnp.asarray(new, jnp.int32), shards=shards)


def _dense(q_BxLxKxGxD, k_pool, v_pool, table, shards):
    """Row by row in numpy: keys and values gathered from its pages, causal from its first new token."""
    q = np.asarray(q_BxLxKxGxD, np.float64)
    rows, length = q.shape[:2]
    per = rows // shards
    out = np.zeros(q.shape)
    for b in range(rows):
        base = (b // per) * (k_pool.shape[0] // shards)
        ids = base + np.asarray(table.pages_BxM[b])
        k = np.asarray(k_pool)[ids].transpose(1, 0, 2, 3).reshape(K, -1, D)  # K×(M·N)×D in token order
        v = np.asarray(v_pool)[ids].transpose(1, 0, 2, 3).reshape(K, -1, D)
        start, new = int(table.lengths_B[b]), int(table.new_B[b])
        for t in range(new):
            s = np.einsum("kgd,ksd->kgs", q[b, t], k[:, :start + t + 1]) * 0.5
            p = np.exp(s - s.max(-1, keepdims=True))
            out[b, t] = np.einsum("kgs,ksd->kgd", p / p.sum(-1, keepdims=True), v[:, :start + t + 1])
    return out


@pytest.mark.parametrize("length,shards", [(1, 1), (3, 1), (1, 2)])
def test_paged_attention_is_dense_attention_over_each_rows_own_pages(length, shards):
    # 8 rows: idle ones (no new token), short ones, and one far longer than the rest, so the loop's
    # steps take every prefix size (all rows, ½, ¼, ⅛ of them)
    width = 9
    lengths = [0, 1, 3, 35 - length, 5, 0, 12, 7]
    new = [0, length, length, length, max(1, length - 1), 0, length, length]
    table = _table(lengths, new, width, shards)
    k_pool, v_pool = _pool(shards * (1 + 8 // shards * width))  # shard d's run: its own null page and 1 …

    def read_page(page_R):
        return paged.read_pages(k_pool, page_R, shards), paged.read_pages(v_pool, page_R, shards)

    q = jax.random.normal(jax.random.key(2), (8, length, K, G, D), jnp.float32)
    out = np.asarray(jax.jit(lambda q, t: paged.paged_attention(q, read_page, t, PAGE, 0.5))(q, table))
    want = _dense(q, k_pool, v_pool, table, shards)
    real = np.arange(length)[None, :] < np.asarray(new)[:, None]
    np.testing.assert_allclose(out[real], want[real], atol=2e-5)
    assert not out[np.asarray(new) == 0].any()  # idle rows: zeros, nothing read


def test_a_rows_attention_is_bitwise_the_same_whatever_the_other_rows_hold():
    # the engine's determinism rests on this: a sample's tokens may not depend on what else is in flight
    width = 9
    k_pool, v_pool = _pool(1 + 8 * width)

    def read_page(page_R):
        return k_pool[page_R], v_pool[page_R]

    run = jax.jit(lambda q, t: paged.paged_attention(q, read_page, t, PAGE, 0.5))
    q = jax.random.normal(jax.random.key(3), (8, 1, K, G, D), jnp.float32)
    alone = _table([9, 0, 0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0], width, 1)
    crowded = alone.replace(lengths_B=jnp.asarray([9, 30, 2, 17, 33, 5, 0, 21], jnp.int32),
                            new_B=jnp.ones((8,), jnp.int32))
    a, b = np.asarray(run(q, alone)), np.asarray(run(q, crowded))
    np.testing.assert_array_equal(a[0], b[0])
