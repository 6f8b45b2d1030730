"""Saved rollouts: a lossless round trip (per-token values to float16), atomic files that a resume drops
and rewrites, a schedule of saved steps, and token pieces that join to the decoded text."""
import os

import numpy as np
import pytest

from r1jax.errors import UsageError
from r1jax.report.capture import RolloutRecorder
from r1jax.report.rollouts import (RolloutLog, drop_from, load_record, read_rollouts, rollout_path, save_record,
                                   saved_steps, token_pieces)

from report_helpers import record


def _rec(step=3):
    texts = ["<think> 1 + 2 = 3 </think> <answer> 3 </answer>", "<answer> 4 </answer>", "3", "héllo 中文"]
    return record(step, texts, ["3"], {"accuracy": [1.0, 0.0, 0.0, 0.0], "format": [1.0, 0.0, 0.0, 0.0]},
                  kl_beta=0.01)


def test_a_saved_step_reads_back_the_same(tmp_path):
    rec = _rec()
    rec.tokens["logp"] = np.where(rec.token_mask_NxT(), -1.2345678, 0.0).astype(np.float32)
    path = save_record(tmp_path, rec)
    assert path == rollout_path(tmp_path, 3) and os.listdir(tmp_path / "rollouts") == ["00000003.npz"]
    back = load_record(path)
    for field in ("phase", "phase_step", "step", "group_size", "prompts", "answers", "texts", "token_text",
                  "reward_names", "info"):
        assert getattr(back, field) == getattr(rec, field), field
    for field in ("piece_end_NxT", "tokens_NxT", "lengths_N", "truncated_N", "rewards_N", "values_KxN",
                  "weights_K", "advantages_N"):
        np.testing.assert_array_equal(getattr(back, field), getattr(rec, field))
    assert set(back.tokens) == {"logp", "old_logp", "ref_logp", "ratio", "entropy"}
    np.testing.assert_allclose(back.tokens["logp"], rec.tokens["logp"], rtol=1e-3)  # float16 on disk
    assert back.tokens["logp"][0, 0] != rec.tokens["logp"][0, 0]


def test_files_are_named_by_step_and_partial_writes_are_ignored(tmp_path):
    for step in (7, 2, 11):
        save_record(tmp_path, _rec(step))
    (tmp_path / "rollouts" / "00000012.npz.tmp").write_bytes(b"half a file")  # a crash mid-write
    assert saved_steps(tmp_path) == [2, 7, 11]
    assert [r.step for r in read_rollouts(tmp_path)] == [2, 7, 11]
    assert [r.step for r in read_rollouts(tmp_path, until_step=7)] == [2, 7]


def test_a_resume_drops_the_steps_it_will_run_again(tmp_path):
    for step in (5, 6, 7, 8):
        save_record(tmp_path, _rec(step))
    assert drop_from(tmp_path, 7) == 2 and saved_steps(tmp_path) == [5, 6]
    RolloutRecorder(str(tmp_path), RolloutLog(every=0), "rl", steps=10, start_step=6, enabled=True)
    assert saved_steps(tmp_path) == [5]  # even with saving now off, the stale step goes
    RolloutRecorder(str(tmp_path), RolloutLog(), "rl", steps=10, start_step=0, enabled=False)
    assert saved_steps(tmp_path) == [5]  # only the writing process deletes


def test_a_broken_file_is_an_error_that_names_it(tmp_path):
    path = tmp_path / "rollouts" / "00000001.npz"
    path.parent.mkdir()
    path.write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="00000001.npz: not a saved rollout file"):
        read_rollouts(tmp_path)


def test_rollout_log_saves_every_nth_step_and_the_last():
    assert [s for s in range(10) if RolloutLog(every=4).saves(s, 10)] == [0, 4, 8, 9]
    assert [s for s in range(3) if RolloutLog(every=1).saves(s, 3)] == [0, 1, 2]
    assert not any(RolloutLog(every=0).saves(s, 10) for s in range(10))
    with pytest.raises(ValueError, match="RolloutLog.every=-1"):
        RolloutLog(every=-1)
    with pytest.raises(ValueError, match="RolloutLog.max_rows=0"):
        RolloutLog(max_rows=0)


def test_token_pieces_join_to_the_text_and_wait_for_whole_characters():
    text = "héllo 中文 ok"
    ids = list(text.encode("utf-8"))  # a byte-level tokenizer: one token per byte
    decode = lambda xs: bytes(xs).decode("utf-8", errors="replace")  # noqa: E731
    joined, ends = token_pieces(decode, ids)
    assert joined == text and len(ends) == len(ids) and ends[-1] == len(text)
    pieces = np.diff(np.concatenate([[0], ends]))
    assert pieces.tolist()[:4] == [1, 0, 1, 1]  # "h", then é's first byte shows nothing, its second shows é
    assert (pieces >= 0).all() and pieces.sum() == len(text)


def test_token_pieces_keep_sentencepiece_spaces(tmp_path):
    from r1jax.tokenizer import Tokenizer

    tok = Tokenizer.train(iter(["<think> 3 + 4 = 7 </think> <answer> 7 </answer> wait, let me recheck"] * 50),
                          vocab_size=300)
    text = "<think> 3 + 4 = 7, wait </think> <answer> 7 </answer> ü"
    ids = tok.encode(text)
    joined, _ = token_pieces(tok.decode, ids)
    assert joined == tok.decode(ids)
