"""The engine's platform-kernel path (ModelConfig.paged_attention='tpu_ragged') on CPU.

jax's TPU ragged paged attention is a Pallas kernel that runs on a TPU only; its pure-jax reference runs
eagerly (a Python loop over sequences). So: a jittable kernel of the same contract is checked against
that reference, then stands in for the TPU kernel, and the engine must give the portable path's tokens
and log-probs, on one device and under meshes that split the rows, the page pool and the kv heads.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.config import MLAConfig, ModelConfig
from r1jax.engine import Engine, SamplingSettings
from r1jax.model import init_params
from r1jax.model import paged

ref_ragged_paged_attention = pytest.importorskip(
    "jax.experimental.pallas.ops.tpu.ragged_paged_attention").ref_ragged_paged_attention

CFG = ModelConfig.tiny(vocab_size=48)
PROMPTS = [[5, 9, 14, 3], [7, 22], [30, 31, 32, 33, 34, 35, 36], [11], [40, 2, 7, 9, 13, 17, 21, 25, 29, 33, 37]]


def contract_kernel(q_TxHxD, kv_PxNx2KxD, kv_lens_S, pages_SxM, cu_q_lens, num_seqs, *, sm_scale=1.0):
    """ragged_paged_attention's contract in plain jnp (static shapes, so it jits): query t of sequence s
    sits at position kv_lens[s] − q_len(s) + (t − cu_q_lens[s]) and sees the keys up to it."""
    tokens, heads, dim = q_TxHxD.shape
    seqs, width = pages_SxM.shape
    page_size, kv_heads = kv_PxNx2KxD.shape[1], kv_PxNx2KxD.shape[2] // 2
    t_T = jnp.arange(tokens)
    seq_T = jnp.clip(jnp.searchsorted(cu_q_lens, t_T, side="right") - 1, 0, seqs - 1)
    q_len_T = cu_q_lens[seq_T + 1] - cu_q_lens[seq_T]
    pos_T = kv_lens_S[seq_T] - q_len_T + (t_T - cu_q_lens[seq_T])
    rows_SxMNx2KxD = kv_PxNx2KxD[pages_SxM].reshape(seqs, width * page_size, 2 * kv_heads, dim)
    k_TxSxKxD, v_TxSxKxD = rows_SxMNx2KxD[seq_T, :, 0::2], rows_SxMNx2KxD[seq_T, :, 1::2]
    group = heads // kv_heads
    k_TxSxHxD, v_TxSxHxD = jnp.repeat(k_TxSxKxD, group, axis=2), jnp.repeat(v_TxSxKxD, group, axis=2)
    s_TxHxS = jnp.einsum("thd,tshd->ths", q_TxHxD, k_TxSxHxD, preferred_element_type=jnp.float32) * sm_scale
    visible_TxS = jnp.arange(width * page_size)[None, :] <= pos_T[:, None]
    p_TxHxS = jax.nn.softmax(jnp.where(visible_TxS[:, None], s_TxHxS, -1e30), axis=-1)
    out = jnp.einsum("ths,tshd->thd", p_TxHxS, v_TxSxHxD.astype(jnp.float32))
    live_T = t_T < cu_q_lens[num_seqs[0]]
    return jnp.where(live_T[:, None, None], out, 0).astype(q_TxHxD.dtype)


def test_the_stand_in_kernel_keeps_the_tpu_kernels_contract():
    rng = np.random.default_rng(0)
    heads, kv_heads, dim, page_size, width, pool_pages = 4, 2, 8, 4, 3, 16
    q_lens, kv_lens = np.array([3, 1, 0, 5]), np.array([7, 12, 2, 5])  # a prefill chunk, a decode, idle, a prompt
    cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    pages = rng.permutation(np.arange(1, pool_pages))[:4 * width].reshape(4, width).astype(np.int32)
    q = rng.standard_normal((int(cu[-1]) + 2, heads, dim)).astype(np.float32)  # 2 unused trailing rows
    kv = rng.standard_normal((pool_pages, page_size, 2 * kv_heads, dim)).astype(np.float32)
    args = (jnp.asarray(q), jnp.asarray(kv), jnp.asarray(kv_lens, jnp.int32), jnp.asarray(pages), jnp.asarray(cu),
            jnp.array([4], jnp.int32))
    want = ref_ragged_paged_attention(*args, sm_scale=0.3)
    got = jax.jit(lambda *a: contract_kernel(*a, sm_scale=0.3))(*args)
    np.testing.assert_allclose(np.asarray(got)[:cu[-1]], np.asarray(want)[:cu[-1]], atol=1e-5)
    assert not np.asarray(got)[cu[-1]:].any()


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(paged, "tpu_ragged_kernel", lambda: contract_kernel)


def _generate(cfg, params, slots, temperature=0.0):
    engine = Engine(cfg, pad_id=0, slots=slots, page_size=4, prefill_chunk=6, prefill_rows=2, decode_steps=4)
    out = engine.generate(params, PROMPTS, jax.random.key(3), group_size=2,
                          settings=SamplingSettings(max_new_tokens=9, temperature=temperature))
    rows = [np.asarray(out.tokens_BxT[b, :int(out.lengths_B[b])]).tolist() for b in range(out.tokens_BxT.shape[0])]
    return rows, np.asarray(out.logps_BxT), engine


@pytest.mark.parametrize("mesh_spec, slots", [(None, 3), ("2x4", 8), ("data=2,tensor=2,fsdp=2", 4)])
def test_the_kernel_path_gives_the_portable_paths_tokens(stand_in, mesh_spec, slots):
    from r1jax import sharding

    kernel_cfg = ModelConfig.tiny(vocab_size=48, paged_attention="tpu_ragged")
    params = init_params(CFG, jax.random.key(0))
    want, want_logps, _ = _generate(CFG, params, slots, temperature=0.8)
    mesh = sharding.make_mesh(mesh_spec) if mesh_spec else sharding.single_device_mesh()
    with sharding.use_mesh(mesh):
        got, got_logps, engine = _generate(kernel_cfg, sharding.shard_params(params, mesh, kernel_cfg), slots,
                                           temperature=0.8)
        state = engine._init(9, 3, 5, len(engine.pools))
    assert got == want
    np.testing.assert_allclose(got_logps, want_logps, atol=2e-5)
    assert all((pool.refs == 0).all() for pool in engine.pools)
    pools = jax.tree.leaves(state.cache.layers)  # one (P, N, 2K, D) array per layer: keys and values interleaved
    assert len(pools) == CFG.num_layers and pools[0].shape == (9 * len(engine.pools), 4, 2 * CFG.num_kv_heads, 8)
    assert pools[0].sharding.shard_shape(pools[0].shape)[0] == 9  # each device its own shard's pages
    if mesh_spec == "data=2,tensor=2,fsdp=2":  # the kernel's shard_map splits whole (k, v) head pairs over tensor
        assert paged.logical.logical_to_spec(("kv_heads",), dict(mesh.shape), (CFG.num_kv_heads,))[0] == "tensor"


def test_the_kernel_path_is_a_checked_setting():
    with pytest.raises(ValueError, match="paged_attention='splash' must be one of"):
        ModelConfig.tiny(paged_attention="splash")
    with pytest.raises(ValueError, match="MLA's latent cache has no such kernel"):
        ModelConfig.tiny(paged_attention="tpu_ragged",
                         mla=MLAConfig(kv_lora_rank=12, qk_nope_dim=6, qk_rope_dim=4, v_head_dim=10))
