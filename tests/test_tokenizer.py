"""SentencePiece wrapper: lossless round trip, special tokens, batching, file errors."""
import random

import numpy as np
import pytest

from r1jax.tokenizer import REASONING_TAGS, Tokenizer, TokenizerError


def _corpus(n=400, seed=0):
    rng = random.Random(seed)
    words = ["compute", "the", "sum", "of", "and", "wait", "let", "me", "recheck", "so", "answer"]
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        yield (f"<think> {' '.join(rng.choices(words, k=6))}\n  {a} + {b} = {a + b}\n\n"
               f"</think> <answer> {a + b} </answer>")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(_corpus(), vocab_size=400)


@pytest.mark.parametrize("text", [
    "", " ", "  two leading spaces", "trailing  \n", "a\n\nb\r\n\tc", "1234567890",
    "日本語とEnglish 🙂 ∑ x²", "<think>x</think><answer> 3 </answer>", "   \n\n   ",
    "unseen ZQXJ chars ǅ", "\\boxed{\\frac{1}{2}}",
])
def test_decode_encode_is_identity(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_are_single_ids(tok):
    ids = {t: tok.encode(t) for t in REASONING_TAGS}
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len({v[0] for v in ids.values()}) == 4
    assert tok.encode("<think>")[0] == tok.token_id("<think>")
    assert len({tok.pad_id, tok.bos_id, tok.eos_id}) == 3
    assert tok.encode("x", add_bos=True, add_eos=True)[0] == tok.bos_id
    assert tok.encode("x", add_bos=True, add_eos=True)[-1] == tok.eos_id
    # pad/bos/eos never appear from plain text and decode to nothing
    assert tok.decode([tok.bos_id, *tok.encode("hi"), tok.eos_id, tok.pad_id]) == "hi"
    assert tok.pad_id not in tok.encode("<pad> <s> </s>")


def test_digits_are_split(tok):
    pieces = [tok.id_to_piece(i) for i in tok.encode("4096")]
    assert pieces == ["4", "0", "9", "6"]


def test_unknown_piece_raises(tok):
    with pytest.raises(TokenizerError, match="not a single token"):
        tok.token_id("<nonexistent>")


def test_encode_batch_pads_and_reports_lengths(tok):
    texts = ["a", "hello there", ""]
    ids, lengths = tok.encode_batch(texts, pad_to_multiple=8)
    assert ids.dtype == np.int32 and lengths.dtype == np.int32
    assert ids.shape[1] % 8 == 0 and ids.shape[0] == 3
    for i, t in enumerate(texts):
        assert list(ids[i, :lengths[i]]) == tok.encode(t)
        assert (ids[i, lengths[i]:] == tok.pad_id).all()
    assert tok.decode_batch(ids, lengths) == texts


def test_encode_batch_left_pad(tok):
    ids, lengths = tok.encode_batch(["a", "hello there"], left_pad=True, add_eos=True)
    assert ids[0, -1] == tok.eos_id and ids[0, 0] == tok.pad_id
    assert tok.decode_batch(ids, lengths, left_pad=True) == ["a", "hello there"]


def test_encode_batch_max_len(tok):
    with pytest.raises(TokenizerError, match="row 1"):
        tok.encode_batch(["a", "a much longer row of text"], max_len=3)
    ids, lengths = tok.encode_batch(["a", "a much longer row of text"], max_len=3, truncate=True)
    assert ids.shape == (2, 3) and lengths.tolist()[1] == 3


def test_save_load_roundtrip(tok, tmp_path):
    path = tmp_path / "sub" / "tok.model"
    tok.save(path)
    loaded = Tokenizer.load(path)
    text = "<think> 12 + 30 = 42\n</think> <answer>42</answer>"
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.vocab_size == tok.vocab_size
    assert not list(path.parent.glob("*.tmp-*"))


def test_missing_and_corrupt_files_are_clear_errors(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer.load(missing)
    corrupt = tmp_path / "bad.model"
    corrupt.write_bytes(b"\x00\x01 definitely not a protobuf \xff" * 10)
    with pytest.raises(TokenizerError, match="bad.model"):
        Tokenizer.load(corrupt)
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(TokenizerError, match="empty.model.*empty"):
        Tokenizer.load(empty)


def test_bad_training_input():
    with pytest.raises(TokenizerError, match="too small"):
        Tokenizer.train(_corpus(10), vocab_size=100)
    with pytest.raises(TokenizerError, match="#1 is int"):
        Tokenizer.train(iter(["ok text", 5]), vocab_size=300)
    with pytest.raises(TokenizerError):
        Tokenizer.train(iter([]), vocab_size=300)


def test_training_is_deterministic():
    a = Tokenizer.train(_corpus(200, seed=3), vocab_size=350)
    b = Tokenizer.train(_corpus(200, seed=3), vocab_size=350)
    text = "compute the sum 12 + 7 = 19"
    assert a.encode(text) == b.encode(text)
