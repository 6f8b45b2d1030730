"""JSONL datasets: GSM8K and MATH layouts, auto-detection, unicode, and an error for every bad input."""
import json

import pytest

from r1jax.data import DatasetError, load_jsonl


def _write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rec(**fields):
    return json.dumps(fields, ensure_ascii=False)


def test_gsm8k_layout_takes_the_number_after_hashes_without_commas(tmp_path):
    path = _write(tmp_path, [
        _rec(question="Tom has 3 apples...", answer="3 + 4 = <<3+4=7>>7\n#### 7"),
        "",
        "   ",
        _rec(question="Big?", answer="It is a lot.\n#### 1,234,567"),
        _rec(question="Below zero?", answer="#### -5", id="custom-id"),
    ])
    problems = load_jsonl(path)
    assert [p.answer for p in problems] == ["7", "1234567", "-5"]
    assert [p.id for p in problems] == ["data-1", "data-4", "custom-id"]
    assert {p.task for p in problems} == {"gsm8k"}
    assert problems[0].reference == "3 + 4 = <<3+4=7>>7" and problems[2].reference is None
    assert problems[0].columns() == {"answer": "7"}


def test_math_layout_reads_boxed_solutions_and_answer_fields(tmp_path):
    path = _write(tmp_path, [
        _rec(problem="Half of one?", solution=r"It is $\boxed{\frac{1}{2}}$."),
        _rec(problem="Both?", solution=r"So \boxed{3}.", answer="3.0", unique_id="test/algebra/1.json"),
        _rec(problem="Answer only?", answer=r"\sqrt{2}"),
        _rec(problem="Int answer?", answer=12),
    ])
    problems = load_jsonl(path, task="math500")
    assert [p.answer for p in problems] == [r"\frac{1}{2}", "3.0", r"\sqrt{2}", "12"]
    assert problems[1].id == "test/algebra/1.json" and problems[1].reference == r"So \boxed{3}."
    assert {p.task for p in problems} == {"math500"}


def test_unicode_and_a_byte_order_mark_are_read_correctly(tmp_path):
    question = "Combien font 2 × 3 ? π ≈ 3.14, 中文 question, emoji 🧮"
    path = tmp_path / "u.jsonl"
    path.write_bytes(("\ufeff" + _rec(question=question, answer="Réponse: six.\n#### 6") + "\n").encode("utf-8"))
    (problem,) = load_jsonl(path)
    assert problem.question == question and problem.answer == "6" and problem.reference == "Réponse: six."
    escaped = _write(tmp_path, [json.dumps({"problem": "é?", "answer": "ü"})], name="esc.jsonl")
    assert load_jsonl(escaped)[0].answer == "ü"


@pytest.mark.parametrize("lines, layout, where, message", [
    ([_rec(question="a", answer="#### 1"), "{not json"], "auto", ":2:", "malformed JSON"),
    ([_rec(question="a", answer="#### 1"), "[1, 2]"], "auto", ":2:", "JSON object"),
    (["", _rec(question="a")], "gsm8k", ":2:", "missing field 'answer'"),
    ([_rec(question="a", answer="no marker here")], "auto", ":1:", "####"),
    ([_rec(question="a", answer="#### ")], "auto", ":1:", "nothing after"),
    ([_rec(problem="p", solution="no box")], "auto", ":1:", "boxed"),
    ([_rec(problem="p", solution=r"\boxed{1")], "auto", ":1:", "boxed"),
    ([_rec(problem="p", level="1")], "auto", ":1:", "'answer' or 'solution'"),
    ([_rec(problem="p", answer=["x"])], "auto", ":1:", "non-empty string"),
    ([_rec(problem="", answer="1")], "auto", ":1:", "non-empty string"),
    ([_rec(text="p", label="1")], "auto", ":1:", "layout"),
    ([_rec(problem="p", answer="1")], "gsm8k", ":1:", "missing field 'question'"),
    ([_rec(question="a", answer="#### 1", id="x"), _rec(question="b", answer="#### 2", id="x")],
     "auto", ":2:", "already used on line 1"),
])
def test_bad_records_name_file_and_line(tmp_path, lines, layout, where, message):
    path = _write(tmp_path, lines)
    with pytest.raises(DatasetError, match=message) as info:
        load_jsonl(path, layout=layout)
    assert f"{path}{where}" in str(info.value)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file_names_the_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match="no records") as info:
        load_jsonl(path)
    assert str(path) in str(info.value)


def test_unreadable_inputs_are_dataset_errors(tmp_path):
    bad_utf8 = tmp_path / "latin1.jsonl"
    bad_utf8.write_bytes(_rec(question="a", answer="#### 1").encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=f"{bad_utf8}:2: not valid UTF-8"):
        load_jsonl(bad_utf8)
    with pytest.raises(DatasetError, match="missing.jsonl"):
        load_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="layout"):
        load_jsonl(bad_utf8, layout="csv")
