"""Tests for r1jax.display: highlighted completions for notebooks."""
import json
import re

import pytest

from r1jax.display import (Html, compare_html, count_reflections, highlight, read_records, records_html,
                           reflections_html)

COMPLETION = ("<think> 3 + 4 = 8.\nWait, 3 + 4 is not 8; let me recheck. 3 + 4 = 7. </think> "
              "<answer> 7 </answer>")


def _record(pid, completion, correct=True, answer="7"):
    return {"id": pid, "task": "arithmetic", "question": "What is 3 + 4?", "gold": "7", "completions": [completion],
            "answers": [answer], "correct": [correct], "lengths": [10], "truncated": [False],
            "well_formed": [True], "voted": answer, "voted_correct": correct}


def _text(html_str):
    """Visible text of an HTML fragment (tags dropped, entities kept)."""
    return re.sub(r"<[^>]+>", "", html_str)


def test_highlight_keeps_the_text_and_marks_think_answer_and_reflection():
    out = highlight(COMPLETION)
    assert isinstance(out, Html) and out._repr_html_() == str(out)
    assert _text(out) == COMPLETION.replace("<", "&lt;").replace(">", "&gt;")
    marked = re.findall(r"<mark[^>]*>(.*?)</mark>", out)
    assert marked == ["Wait, 3 + 4 is not 8; let me recheck."]
    assert out.count("border-left") == 2  # one think block, one answer block


def test_highlight_escapes_model_markup():
    out = highlight("<script>alert(1)</script> <answer> 1 </answer>")
    assert "<script>" not in out and "&lt;script&gt;" in out


def test_highlight_of_malformed_text_still_shows_everything():
    text = "The answer is 7. <think> unclosed"
    assert _text(highlight(text)) == text.replace("<", "&lt;").replace(">", "&gt;")


def test_highlight_replaces_control_characters():
    assert "\x07" not in highlight("a\x07b\nc") and "\n" in highlight("a\x07b\nc")


def test_count_reflections_is_case_insensitive():
    assert count_reflections([COMPLETION, "no", "LET ME RECHECK"]) == 2


def test_tables_show_question_gold_and_correctness(tmp_path):
    before = [_record("a", "The answer is 8.", correct=False, answer=None), _record("b", COMPLETION)]
    after = [_record("b", COMPLETION), _record("a", COMPLETION)]
    path = tmp_path / "final_eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in after))
    assert read_records(path) == after
    table = compare_html(before, after, n=1, labels=("base", "after GRPO"))
    assert "base" in table and "after GRPO" in table and "✗" in table and "✓" in table
    assert table.count("<tr>") == 2 and "no answer" in table  # header + one problem
    assert "What is 3 + 4?" in records_html(after, n=5)
    assert "<mark" in reflections_html(after) and "no completion" in reflections_html(before[:1])
    with pytest.raises(ValueError):
        compare_html(before, [_record("c", COMPLETION)])
