"""Answer extraction from model text."""
from r1jax.text import final_answer, last_answer_tag, last_boxed


def test_last_boxed_handles_nested_braces():
    assert last_boxed(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{1} then \boxed{\sqrt{x^{2}}}") == r"\sqrt{x^{2}}"


def test_last_boxed_unbalanced_falls_back_or_none():
    assert last_boxed(r"\boxed{3} and \boxed{\frac{1}{2}") == "3"
    assert last_boxed(r"\boxed{\frac{1}{2}") is None
    assert last_boxed("no box here") is None
    assert last_boxed(r"\boxed") is None


def test_last_answer_tag_takes_last_complete_span():
    assert last_answer_tag("<answer> 4 </answer> x <answer>5</answer>") == "5"
    assert last_answer_tag("<answer>5") is None
    assert last_answer_tag("<answer>\nmulti\nline\n</answer>") == "multi\nline"


def test_final_answer_prefers_tag_then_box():
    assert final_answer(r"<answer>\boxed{7}</answer>") == "7"
    assert final_answer(r"<think>\boxed{1}</think><answer>2</answer>") == "2"
    assert final_answer(r"the answer is \boxed{9}") == "9"
    assert final_answer("nothing") is None


def test_unicode_and_huge_text_are_fine():
    assert final_answer("<answer>ü→∞</answer>") == "ü→∞"
    big = "x" * 2_000_000 + r"\boxed{1}"
    assert final_answer(big) == "1"
