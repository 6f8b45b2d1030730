"""The jitted sampler against the model's full forward pass."""
import jax
import numpy as np
import pytest

from r1jax.config import ModelConfig, SamplingSettings
from r1jax.model import init_params
from r1jax.sampling import Sampler

from forward_reference import full_logps

PAD, EOS = 0, 1
CFG = ModelConfig.tiny(vocab_size=48)
PROMPTS = [[5, 9, 14, 3], [7, 22], [30, 31, 32, 33, 34, 35, 36], [11]]


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def sampler():
    return Sampler(CFG, eos_id=EOS, pad_id=PAD, prompt_bucket=8)


def _row(out, b):
    n = int(out.lengths_B[b])
    return np.asarray(out.tokens_BxT[b, :n]).tolist()


def test_greedy_is_argmax_of_full_forward_at_every_step(params, sampler):
    out = sampler.sample(params, PROMPTS, jax.random.key(1), max_new_tokens=12, temperature=0.0)
    full = full_logps(CFG, params, [prompt + _row(out, b) for b, prompt in enumerate(PROMPTS)])
    for b, prompt in enumerate(PROMPTS):
        completion, logp = _row(out, b), full[b]
        for t, token in enumerate(completion):
            assert token == int(np.argmax(logp[len(prompt) - 1 + t])), (b, t)
            np.testing.assert_allclose(out.logps_BxT[b, t], logp[len(prompt) - 1 + t, token], atol=1e-5)


def test_sampled_logps_are_raw_model_logprobs(params, sampler):
    out = sampler.sample(params, PROMPTS, jax.random.key(2), group_size=3, max_new_tokens=8,
                         temperature=0.7, top_p=0.9)
    full = full_logps(CFG, params, [PROMPTS[b // 3] + _row(out, b) for b in range(len(PROMPTS) * 3)])
    for b in range(len(PROMPTS) * 3):
        prompt, completion, logp = PROMPTS[b // 3], _row(out, b), full[b]
        want = [logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(completion)]
        np.testing.assert_allclose(np.asarray(out.logps_BxT[b, :len(completion)]), want, atol=1e-5)
        assert (np.asarray(out.logps_BxT[b, len(completion):]) == 0).all()


def test_mixed_prompt_lengths_match_single_prompt_runs(params, sampler):
    batch = sampler.sample(params, PROMPTS, jax.random.key(3), max_new_tokens=10, temperature=0.0)
    for b, prompt in enumerate(PROMPTS):
        alone = sampler.sample(params, [prompt], jax.random.key(3), max_new_tokens=10, temperature=0.0)
        assert _row(batch, b) == _row(alone, 0)


def test_group_samples_share_prefill_but_differ(params, sampler):
    greedy = sampler.sample(params, PROMPTS[:2], jax.random.key(4), group_size=4, max_new_tokens=6,
                            temperature=0.0)
    rows = [_row(greedy, b) for b in range(8)]
    assert rows[0:4] == [rows[0]] * 4 and rows[4:8] == [rows[4]] * 4
    assert rows[0] == _row(sampler.sample(params, PROMPTS[:1], jax.random.key(9), max_new_tokens=6,
                                          temperature=0.0), 0)
    hot = sampler.sample(params, PROMPTS[:1], jax.random.key(4), group_size=8, max_new_tokens=6,
                         temperature=1.5)
    assert len({tuple(_row(hot, b)) for b in range(8)}) > 1


def test_eos_ends_a_row_and_max_length_truncates(params):
    probe = Sampler(CFG, eos_id=EOS, pad_id=PAD, prompt_bucket=8)
    first = probe.sample(params, PROMPTS, jax.random.key(5), max_new_tokens=10, temperature=0.0)
    row0 = _row(first, 0)
    eos = row0[2]  # make row 0's third greedy token the end of sequence
    s = Sampler(CFG, eos_id=eos, pad_id=PAD, prompt_bucket=8)
    out = s.sample(params, PROMPTS, jax.random.key(5), max_new_tokens=10, temperature=0.0)
    cut = row0.index(eos) + 1
    assert _row(out, 0) == row0[:cut] and int(out.lengths_B[0]) == cut
    assert not bool(out.truncated_B[0])
    assert (np.asarray(out.tokens_BxT[0, cut:]) == PAD).all()
    for b in range(len(PROMPTS)):
        row = _row(out, b)
        if eos not in row:
            assert len(row) == 10 and bool(out.truncated_B[b])
        else:
            assert row[-1] == eos and row.count(eos) == 1 and not bool(out.truncated_B[b])


def test_generate_takes_every_setting_and_the_settings_stop_ids(params, sampler):
    greedy = sampler.sample(params, PROMPTS, jax.random.key(5), max_new_tokens=10, temperature=0.0)
    stop = _row(greedy, 0)[2]  # a stop id of the settings, on top of the sampler's eos
    out = sampler.generate(params, PROMPTS, jax.random.key(5),
                           settings=SamplingSettings(max_new_tokens=10, temperature=0.0, stop_ids=(stop,)))
    for b in range(len(PROMPTS)):
        row = _row(greedy, b)
        cut = row.index(stop) + 1 if stop in row else len(row)
        assert _row(out, b) == row[:cut]
        assert bool(out.truncated_B[b]) == (stop not in row and bool(greedy.truncated_B[b]))
    # top-k 1 at any temperature is greedy; the settings' budget bounds every row
    top1 = sampler.generate(params, PROMPTS, jax.random.key(6),
                            settings=SamplingSettings(max_new_tokens=6, temperature=1.5, top_k=1))
    assert [_row(top1, b) for b in range(len(PROMPTS))] == [_row(greedy, b)[:6] for b in range(len(PROMPTS))]


def test_same_bucket_does_not_compile_again(params):
    s = Sampler(CFG, eos_id=EOS, pad_id=PAD, prompt_bucket=8)
    compiled = lambda: {"prefill": s._prefill._cache_size(), "decode": s._decode._cache_size()}  # noqa: E731
    s.sample(params, [[3, 4, 5], [6]], jax.random.key(0), max_new_tokens=4, temperature=1.0)
    before = compiled()
    s.sample(params, [[3, 4, 5, 6, 7, 8, 9], [6, 2]], jax.random.key(1), max_new_tokens=4,
             temperature=[0.0, 1.0], top_p=0.9)
    assert compiled() == before == {"prefill": 1, "decode": 1}  # jax's own compile cache: no new program
    s.sample(params, [[3] * 9, [6]], jax.random.key(1), max_new_tokens=4)  # next bucket
    assert compiled()["prefill"] == 2


def test_stream_gives_the_same_tokens(params, sampler):
    rng = jax.random.key(6)
    out = sampler.sample(params, PROMPTS, rng, group_size=2, max_new_tokens=7, temperature=1.0)
    streamed = np.stack([tok for tok, _ in sampler.stream(params, PROMPTS, rng, group_size=2,
                                                          max_new_tokens=7, temperature=1.0)], axis=1)
    np.testing.assert_array_equal(streamed, np.asarray(out.tokens_BxT)[:, :streamed.shape[1]])


def test_bad_requests_are_clear_errors(params, sampler):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sampler.sample(params, [[1], []], jax.random.key(0), max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature has shape"):
        sampler.sample(params, [[1], [2]], jax.random.key(0), max_new_tokens=2, temperature=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="top_p"):
        sampler.sample(params, [[1]], jax.random.key(0), max_new_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampler.sample(params, [[1]], jax.random.key(0), max_new_tokens=0)


def test_stop_ids_end_rows_like_eos(params):
    probe = Sampler(CFG, eos_id=EOS, pad_id=PAD, prompt_bucket=8)
    first = probe.sample(params, PROMPTS, jax.random.key(5), max_new_tokens=10, temperature=0.0)
    stops = (_row(first, 0)[2], _row(first, 1)[3])
    s = Sampler(CFG, eos_id=EOS, pad_id=PAD, prompt_bucket=8, stop_ids=stops)
    out = s.sample(params, PROMPTS, jax.random.key(5), max_new_tokens=10, temperature=0.0)
    for b in range(len(PROMPTS)):
        row = _row(first, b)
        cut = next((t + 1 for t, x in enumerate(row) if x in (EOS, *stops)), None)
        assert _row(out, b) == (row if cut is None else row[:cut])
        assert bool(out.truncated_B[b]) == (cut is None)
