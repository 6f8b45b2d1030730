"""The continuous-batching engine over a paged KV cache against the static sampler and the full forward pass."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.config import MLAConfig, ModelConfig
from r1jax.engine import Engine, SamplingSettings
from r1jax.model import Transformer, init_params
from r1jax.sampling import Sampler
from r1jax.sampling_ops import top_k_mask, top_k_mask_rows

from forward_reference import full_logps

PAD = 0
CFG = ModelConfig.tiny(vocab_size=48)
# lengths around the page size (4): within one page, exactly one, across pages, across prefill chunks (6)
PROMPTS = [[5, 9, 14, 3], [7, 22], [30, 31, 32, 33, 34, 35, 36], [11], [40, 2, 7, 9, 13, 17, 21, 25, 29, 33, 37]]
GREEDY = SamplingSettings(max_new_tokens=10, temperature=0.0)


def _engine(cfg=CFG, slots=3, **kw):
    return Engine(cfg, pad_id=PAD, slots=slots, page_size=4, prefill_chunk=6, prefill_rows=2, decode_steps=4, **kw)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


def _rows(out):
    return [np.asarray(out.tokens_BxT[b, :int(out.lengths_B[b])]).tolist() for b in range(out.tokens_BxT.shape[0])]


@pytest.mark.parametrize("variant", ["gqa", "mla_scan"])
def test_greedy_tokens_and_logps_equal_the_static_sampler(params, variant):
    cfg, p = CFG, params
    if variant != "gqa":  # MLA's latent pages in a scanned group (stacked pools)
        cfg = ModelConfig.tiny(vocab_size=48, scan_layers=True,
                               mla=MLAConfig(kv_lora_rank=12, qk_nope_dim=6, qk_rope_dim=4, v_head_dim=10))
        p = init_params(cfg, jax.random.key(1))
    static = Sampler(cfg, eos_id=-1, pad_id=PAD, prompt_bucket=4).sample(
        p, PROMPTS, jax.random.key(0), group_size=2, max_new_tokens=10, temperature=0.0)
    engine = _engine(cfg)  # 3 slots for 10 rows: slots are refilled as rows end
    out = engine.generate(p, PROMPTS, jax.random.key(0), group_size=2, settings=GREEDY)
    assert _rows(out) == _rows(static)
    np.testing.assert_allclose(np.asarray(out.logps_BxT), np.asarray(static.logps_BxT), atol=2e-5)
    assert np.asarray(out.truncated_B).all() and (np.asarray(out.lengths_B) == 10).all()
    assert engine.pool.in_use == 0


def test_sampled_logps_are_raw_model_logprobs_with_per_row_settings(params):
    out = _engine().generate(params, PROMPTS[:3], jax.random.key(2), group_size=2,
                             settings=SamplingSettings(max_new_tokens=8, temperature=0.7, top_p=0.9, top_k=5),
                             temperature=[0.7, 1.3, 0.0], top_k=[5, 0, 0])
    rows = _rows(out)
    logps = full_logps(CFG, params, [PROMPTS[b // 2] + row for b, row in enumerate(rows)])
    for b, completion in enumerate(rows):
        prompt, logp = PROMPTS[b // 2], logps[b]
        np.testing.assert_allclose(np.asarray(out.logps_BxT[b, :len(completion)]),
                                   [logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(completion)], atol=2e-5)
        if b // 2 == 2:  # temperature 0 for prompt 2: greedy
            assert completion == [int(np.argmax(logp[len(prompt) - 1 + t])) for t in range(len(completion))]
        if b // 2 == 0:  # top-k 5: every token among the 5 most likely
            for t, tok in enumerate(completion):
                assert tok in np.argsort(-logp[len(prompt) - 1 + t])[:5]
    assert rows[0] != rows[1] or rows[2] != rows[3]  # samples of a prompt differ


def test_tokens_depend_on_the_request_only_not_on_slots_or_order(params):
    settings = SamplingSettings(max_new_tokens=9, temperature=1.0, stop_ids=(3, 17))
    rng = jax.random.key(7)
    few = _engine(slots=2).generate(params, PROMPTS, rng, group_size=3, settings=settings)
    many = _engine(slots=8).generate(params, PROMPTS, rng, group_size=3, settings=settings)
    order = [3, 0, 4, 2, 1]
    shuffled = _engine(slots=2).generate(params, [PROMPTS[i] for i in order], rng, group_size=3, settings=settings)
    assert _rows(few) == _rows(many)
    by_prompt = {i: _rows(shuffled)[3 * k:3 * k + 3] for k, i in enumerate(order)}
    assert [row for i in range(len(PROMPTS)) for row in by_prompt[i]] == _rows(few)
    np.testing.assert_array_equal(np.asarray(few.logps_BxT), np.asarray(many.logps_BxT))
    # at 64 rows XLA:CPU's matmuls take another path and round differently (by up to ~2e-6 in a log-prob,
    # measured): the tokens are still the same, the log-probs equal to float rounding
    wide = _engine(slots=64).generate(params, PROMPTS, rng, group_size=3, settings=settings)
    assert _rows(wide) == _rows(few)
    np.testing.assert_allclose(np.asarray(wide.logps_BxT), np.asarray(few.logps_BxT), atol=1e-5)


def test_stop_tokens_budgets_and_page_accounting(params):
    probe = _engine().generate(params, PROMPTS, jax.random.key(0), group_size=1, settings=GREEDY)
    first = _rows(probe)
    stops = (first[0][2], first[2][4])  # two stop ids: rows end early, at the first of them
    budgets = [10, 10, 10, 3, 6]
    engine = _engine(slots=2, num_pages=14)  # a pool too small for every row at once
    out = engine.generate(params, PROMPTS, jax.random.key(0), group_size=1,
                          settings=dataclasses.replace(GREEDY, stop_ids=stops), budgets=budgets)
    for b, row in enumerate(_rows(out)):
        cut = next((t + 1 for t, tok in enumerate(first[b]) if tok in stops), None)
        if cut is not None and cut <= budgets[b]:
            assert row == first[b][:cut] and not bool(out.truncated_B[b]), b
        else:
            assert row == first[b][:budgets[b]] and bool(out.truncated_B[b]), b
        assert (np.asarray(out.tokens_BxT[b, len(row):]) == PAD).all()
        assert (np.asarray(out.logps_BxT[b, len(row):]) == 0).all()
    pool = engine.pool
    assert (pool.refs == 0).all() and sorted(pool.free) == list(range(1, 14))  # nothing leaked or held twice


def test_group_prompt_pages_are_written_once(params):
    engine = _engine(slots=2)
    calls = []
    real = engine._prefill
    engine._prefill = lambda *a: calls.append(np.asarray(a[5]).sum()) or real(*a)
    engine.generate(params, [PROMPTS[4]], jax.random.key(0), group_size=4,
                    settings=SamplingSettings(max_new_tokens=3))
    assert sum(calls) == len(PROMPTS[4])  # 11 prompt tokens prefilled once for 4 samples


def test_first_token_distribution_matches_the_model(params):
    """Chi-square of 600 first tokens (one key per sample) against softmax(logits / T) of the full forward."""
    prompt, temperature, n = [5, 9, 14, 3], 1.5, 600
    out = _engine(slots=64).generate(params, [prompt], jax.random.key(3), group_size=n,
                                     settings=SamplingSettings(max_new_tokens=1, temperature=temperature))
    logits, _ = Transformer(CFG).apply({"params": params}, jnp.asarray([prompt]), jnp.arange(4)[None])
    p = np.asarray(jax.nn.softmax(logits[0, -1] / temperature))
    counts = np.bincount(np.asarray(out.tokens_BxT[:, 0]), minlength=CFG.vocab_size)
    big = p * n >= 5
    expected = np.append(p[big] * n, p[~big].sum() * n)
    observed = np.append(counts[big], counts[~big].sum())
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 2.0 * len(expected) + 20, (chi2, len(expected))


def test_top_k_per_row_matches_the_shared_filter():
    logits = jax.random.normal(jax.random.key(0), (3, 20))
    rows = np.asarray(top_k_mask_rows(logits, jnp.asarray([3, 0, 7])))
    np.testing.assert_array_equal(rows[0], np.asarray(top_k_mask(logits, 3))[0])
    np.testing.assert_array_equal(rows[1], np.asarray(logits)[1])
    np.testing.assert_array_equal(rows[2], np.asarray(top_k_mask(logits, 7))[2])


def test_bad_requests_are_clear_errors(params):
    engine = _engine()
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate(params, [[1], []], jax.random.key(0), settings=GREEDY)
    with pytest.raises(ValueError, match="budgets"):
        engine.generate(params, [[1]], jax.random.key(0), settings=GREEDY, budgets=[11])
    with pytest.raises(ValueError, match="num_pages=3"):
        _engine(num_pages=3).generate(params, [[1] * 9], jax.random.key(0), settings=GREEDY)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        SamplingSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(max_new_tokens=1, top_p=1.5)
    with pytest.raises(ValueError, match="slots=0"):
        Engine(CFG, pad_id=PAD, slots=0)
    # an id outside the vocabulary would index the embedding table silently (clamped): both samplers refuse it
    static = Sampler(CFG, eos_id=-1, pad_id=PAD)
    for sampler in (engine, static):
        with pytest.raises(ValueError, match=r"prompt 1 holds token 48 at position 2, outside .* \[0, 48\)"):
            sampler.generate(params, [[1], [2, 3, 48]], jax.random.key(0), settings=GREEDY)
        with pytest.raises(ValueError, match="token -1 at position 0"):
            sampler.generate(params, [[-1, 2]], jax.random.key(0), settings=GREEDY)
        with pytest.raises(ValueError, match="stop id 99 is outside"):
            sampler.generate(params, [[1]], jax.random.key(0), settings=dataclasses.replace(GREEDY, stop_ids=(99,)))


@pytest.mark.parametrize("slots", [4, 8])
def test_runs_under_a_mesh_with_the_same_tokens_and_a_pool_per_data_shard(params, slots):
    from r1jax import sharding

    settings = SamplingSettings(max_new_tokens=5, temperature=0.0)
    prompts = PROMPTS if slots == 8 else PROMPTS[:3]
    want = _rows(_engine(slots=slots).generate(params, prompts, jax.random.key(0), group_size=2, settings=settings))
    mesh = sharding.make_mesh("2x4")
    shards = {4: 2, 8: 8}[slots]  # 4 slots split over 'data' (2) only; 8 over data × fsdp
    with sharding.use_mesh(mesh):
        placed = sharding.shard_params(params, mesh, CFG)
        engine = _engine(slots=slots)
        got = _rows(engine.generate(placed, prompts, jax.random.key(0), group_size=2, settings=settings))
        state = engine._init(9, 3, 5, shards)  # (pages per shard, pages per row, new tokens, shards)
    assert got == want
    assert len(engine.pools) == shards and all((pool.refs == 0).all() for pool in engine.pools)
    assert sum(pool.peak > 0 for pool in engine.pools) == min(shards, len(prompts))  # every shard took a prompt
    for x in (state.tokens_SxT, state.live_S, state.cache.pages_BxM):  # slots split over the data axes
        assert x.sharding.shard_shape(x.shape)[0] == x.shape[0] // shards, x.sharding
    for pool in jax.tree.leaves(state.cache.layers):  # and the pool with them: each device holds its shard's pages
        assert pool.shape[0] == 9 * shards and pool.sharding.shard_shape(pool.shape)[0] == 9, pool.sharding
