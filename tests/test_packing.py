"""SFT rows: completion-only loss masks, first-fit packing layout, overlong policy, resumable data order."""
import numpy as np
import pytest

from r1jax.data import ArithmeticConfig, PromptTemplate, generate_arithmetic, worked_solutions
from r1jax.data.packing import (Cursor, Example, PackedBatch, batches, batches_per_epoch, encode_examples,
                                first_fit, pack, pad_rows)
from r1jax.tokenizer import Tokenizer

SHORT = PromptTemplate(name="short", text="Q: {prompt}\nA:")


@pytest.fixture(scope="module")
def pairs():
    problems = generate_arithmetic(ArithmeticConfig(num_ops=2), "train", 24, seed=3)
    completions = [s.render() for s in worked_solutions(problems)]
    return [(SHORT.render(p.question), c) for p, c in zip(problems, completions)]


@pytest.fixture(scope="module")
def tok(pairs):
    return Tokenizer.train([p + c for p, c in pairs], vocab_size=360)


def _examples(n, seed=0, lo=3, hi=20):
    """Random examples: a prompt of 1..len-1 tokens (mask 0), then completion tokens (mask 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(lo, hi + 1))
        prompt = int(rng.integers(1, length))
        out.append(Example(rng.integers(4, 60, length).astype(np.int32),
                           (np.arange(length) >= prompt).astype(np.float32)))
    return out


def _segments(batch: PackedBatch):
    """Every (ids, loss_mask, positions) segment of every row, checking the row layout on the way."""
    out = []
    for tok_L, seg_L, pos_L, mask_L in zip(*batch):
        real = int((seg_L != 0).sum())
        assert (seg_L[real:] == 0).all() and (tok_L[real:] == 0).all() and (mask_L[real:] == 0).all()
        ids = seg_L[:real]
        assert ids[0] == 1 and (np.diff(ids) >= 0).all() and (np.diff(ids) <= 1).all()  # 1, 1, 2, 2, 2, 3 …
        for s in range(1, ids.max() + 1):
            sel = seg_L == s
            np.testing.assert_array_equal(pos_L[sel], np.arange(sel.sum()))
            out.append((tok_L[sel], mask_L[sel]))
    return out


def test_encode_examples_masks_prompt_and_keeps_completion_and_eos(tok, pairs):
    examples = encode_examples(tok, pairs[:5])
    for (prompt, completion), (ids_L, mask_L) in zip(pairs, examples):
        n_prompt = 1 + len(tok.encode(prompt))
        assert ids_L[0] == tok.bos_id and ids_L[-1] == tok.eos_id
        assert (mask_L[:n_prompt] == 0).all() and (mask_L[n_prompt:] == 1).all()
        assert tok.decode(ids_L[:n_prompt]) == prompt and tok.decode(ids_L[mask_L == 1]) == completion
    ids_L, mask_L = encode_examples(tok, pairs[:1], add_bos=False, add_eos=False)[0]
    assert ids_L[0] != tok.bos_id and ids_L[-1] != tok.eos_id and mask_L[-1] == 1


def test_first_fit_puts_each_item_in_the_lowest_row_with_room():
    assert first_fit([5, 4, 3, 3, 2, 1], 6) == [[0, 5], [1, 4], [2, 3]]
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 33, 300).tolist()
    free, naive = [], []
    for i, n in enumerate(lengths):  # the O(n²) definition
        row = next((r for r, f in enumerate(free) if f >= n), len(free))
        if row == len(free):
            free.append(32)
            naive.append([])
        free[row] -= n
        naive[row].append(i)
    assert first_fit(lengths, 32) == naive
    with pytest.raises(ValueError):
        first_fit([3, 33], 32)


def test_pack_keeps_every_example_once_in_valid_rows():
    examples = _examples(60, seed=1)
    packed, stats = pack(examples, seq_len=32)
    padded, pad_stats = pad_rows(examples, seq_len=32)
    got = sorted((ids.tolist(), m.tolist()) for ids, m in _segments(packed))
    want = sorted((e.ids_L.tolist(), np.r_[0.0, e.loss_mask_L[1:]].tolist()) for e in examples)
    assert got == want
    assert sorted((i.tolist(), m.tolist()) for i, m in _segments(padded)) == want
    assert stats.kept == pad_stats.kept == 60 and pad_stats.rows == 60
    assert stats.rows < 30 and stats.fill > 0.9 > pad_stats.fill
    assert stats.tokens == pad_stats.tokens == sum(len(e.ids_L) for e in examples)
    assert stats.loss_tokens == packed.loss_mask_BxL.sum() == padded.loss_mask_BxL.sum()
    assert all(x.dtype == np.int32 for x in packed[:3]) and packed.loss_mask_BxL.dtype == np.float32


def test_segment_first_token_is_never_a_target():
    ids = np.arange(4, 10, dtype=np.int32)
    packed, stats = pack([Example(ids, np.ones(6, np.float32))] * 2, seq_len=16)
    np.testing.assert_array_equal(packed.loss_mask_BxL[0, :12], [0, 1, 1, 1, 1, 1] * 2)
    assert stats.loss_tokens == 10


def test_overlong_examples_are_dropped_or_truncated_and_counted():
    examples = _examples(10, seed=2, lo=3, hi=10) + [Example(np.arange(4, 44, dtype=np.int32),
                                                             np.r_[np.zeros(5), np.ones(35)].astype(np.float32))]
    packed, stats = pack(examples, seq_len=16)
    assert (stats.kept, stats.dropped_overlong, stats.truncated) == (10, 1, 0)
    assert not any(len(ids) > 10 for ids, _ in _segments(packed))
    packed, stats = pack(examples, seq_len=16, overlong="truncate")
    assert (stats.kept, stats.dropped_overlong, stats.truncated) == (11, 0, 1)
    cut = [ids for ids, _ in _segments(packed) if len(ids) == 16]
    assert len(cut) == 1 and cut[0].tolist() == list(range(4, 20))
    prompt_only = Example(np.arange(4, 44, dtype=np.int32), np.r_[np.zeros(20), np.ones(20)].astype(np.float32))
    _, stats = pad_rows([prompt_only], seq_len=16, overlong="truncate")  # its completion is cut off entirely
    assert (stats.kept, stats.truncated, stats.dropped_empty) == (0, 1, 1)
    with pytest.raises(ValueError):
        pack(examples, seq_len=16, overlong="wrap")


def _run(packed, batch_size, seed, cursor=Cursor(), epochs=3):
    return [(b.tokens_BxL.copy(), c) for b, c in batches(packed, batch_size, seed, *cursor, epochs=epochs)]


def test_data_order_resumes_exactly_from_any_cursor():
    packed, _ = pad_rows(_examples(23, seed=3), seq_len=20)
    full = _run(packed, 4, seed=7)
    per_epoch = batches_per_epoch(packed, 4)
    assert per_epoch == 5 and len(full) == 15
    assert full[4][1] == Cursor(1, 0) and full[5][1] == Cursor(1, 1) and full[-1][1] == Cursor(3, 0)
    for k in (0, 3, 4, 5, 11, 14):
        rest = _run(packed, 4, seed=7, cursor=full[k][1])
        assert len(rest) == len(full) - k - 1
        for (a, ca), (b, cb) in zip(rest, full[k + 1:]):
            np.testing.assert_array_equal(a, b)
            assert ca == cb


def test_each_epoch_is_a_fresh_permutation_of_rows():
    packed, _ = pad_rows(_examples(16, seed=4), seq_len=20)
    packed = packed._replace(tokens_BxL=np.arange(16, dtype=np.int32)[:, None].repeat(20, 1))  # row id as token
    order = lambda seed, epoch: np.concatenate([b.tokens_BxL[:, 0] for b, _ in batches(packed, 4, seed, epoch)])
    assert sorted(order(0, 0)) == list(range(16))
    assert not np.array_equal(order(0, 0), order(0, 1))
    assert not np.array_equal(order(0, 0), order(1, 0))
    np.testing.assert_array_equal(order(5, 2), order(5, 2))
    with pytest.raises(ValueError):
        next(batches(packed, 32, seed=0))
