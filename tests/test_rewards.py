"""Hand-checked values of the built-in rewards, and their behaviour on bad input."""
import functools
import threading
import time

import pytest

from r1jax.rewards import (
    accuracy_reward,
    chain_of_thought,
    countdown_reward,
    format_reward,
    is_correct,
    language_reward,
    make_countdown_reward,
    parse_equation,
)

MB = 1 << 20


def _acc(pred: str, gold: str) -> float:
    return accuracy_reward(["q"], [f"<think>...</think> <answer>{pred}</answer>"], answer=[gold])[0]


# ---------------------------------------------------------------- accuracy


@pytest.mark.parametrize(
    "pred, gold",
    [
        ("0.5", "1/2"),
        ("\\frac{1}{2}", "0.5"),
        ("1/2", "\\frac{1}{2}"),
        ("3.0", "3"),
        ("x = 2", "2"),
        ("\\{2,1\\}", "\\{1,2\\}"),
        ("\\{2, 1\\}", "\\{1,2\\}"),
        ("\\dfrac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}"),
        ("1,000", "1000"),
    ],
)
def test_accuracy_accepts_equivalent_answers(pred, gold):
    assert _acc(pred, gold) == 1.0


@pytest.mark.parametrize(
    "pred, gold",
    [("942", "941"), ("0.51", "1/2"), ("x = 3", "2"), ("\\{1,3\\}", "\\{1,2\\}"), ("-3", "3")],
)
def test_accuracy_rejects_different_answers(pred, gold):
    assert _acc(pred, gold) == 0.0


def test_accuracy_reads_last_answer_tag_then_boxed():
    completions = [
        "<answer>1</answer> wait <answer>2</answer>",  # last tag wins
        "so \\boxed{1} no, \\boxed{2}",  # last box wins
        "<answer>the result is \\boxed{2}</answer>",  # box inside the tag
        "the answer is 2",  # no tag, no box
        "",
        "\\boxed{2",  # unbalanced brace
    ]
    assert accuracy_reward(["q"] * 6, completions, answer=["2"] * 6) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


def test_accuracy_ignores_unknown_columns_and_accepts_numeric_gold():
    assert accuracy_reward(["q"], ["<answer>7</answer>"], answer=[7], level=["hard"]) == [1.0]


def test_accuracy_names_missing_answer_column():
    with pytest.raises(ValueError, match="'answer'"):
        accuracy_reward(["q"], ["<answer>1</answer>"])


def test_accuracy_scores_huge_and_pathological_answers_zero_quickly():
    # the time bounds in this file are this process's CPU seconds: another job on the machine does not count
    start = time.process_time()
    huge = "1" * MB
    assert _acc(huge, huge) == 0.0  # over the length cap, even though equal
    assert _acc("(" * 30 + "1" + ")" * 30, "1") == 0.0  # over the nesting cap
    assert accuracy_reward(["q"], ["x" * MB + "<answer>" + "{" * 5000], answer=["1"]) == [0.0]
    assert time.process_time() - start < 2.0


@pytest.mark.parametrize(
    "weird, expected",
    [("\ud800", 0.0), ("½", 0.0), ("∞", 0.0), ("𝟙", 0.0), ("\u202e12", 0.0), ("\x00", 0.0), ("🙂", 0.0), ("12\u200b", 1.0)],
)
def test_accuracy_survives_weird_unicode(weird, expected):
    assert _acc(weird, "12") == expected


def test_accuracy_times_out_on_exploding_expressions_in_main_thread():
    start = time.process_time()
    assert accuracy_reward(["q"], ["<answer>9!!!!!!</answer>"], answer=["1"], timeout_s=1) == [0.0]
    assert time.process_time() - start < 3.0


def test_accuracy_off_the_main_thread_matches_main_thread():
    preds = ["\\{2,1\\}", "x = 2", "941", "\\frac{1}{2}"]
    golds = ["\\{1,2\\}", "2", "942", "0.5"]
    completions = [f"<answer>{p}</answer>" for p in preds]
    main = accuracy_reward(["q"] * 4, completions, answer=golds)
    result = {}
    thread = threading.Thread(target=lambda: result.update(v=accuracy_reward(["q"] * 4, completions, answer=golds)))
    thread.start()
    thread.join(timeout=60)
    assert main == [1.0, 1.0, 0.0, 1.0]
    assert result["v"] == main


def test_is_correct_treats_missing_prediction_as_wrong():
    assert not is_correct(None, "1")
    assert is_correct("1", "1")


# ---------------------------------------------------------------- format

GOOD = "<think>\n2 + 2 is 4.\n</think>\n<answer>4</answer>\n"


@pytest.mark.parametrize(
    "completion, expected",
    [
        (GOOD, 1.0),
        ("  <think></think><answer>4</answer>", 1.0),  # empty think is allowed
        ("<think>a</think> <answer>4</answer> trailing text", 0.0),
        ("Sure! <think>a</think> <answer>4</answer>", 0.0),
        ("<think>a</think> so <answer>4</answer>", 0.0),
        ("<think>a</think> <answer>4</answer><answer>5</answer>", 0.0),
        ("<think>a</think><think>b</think><answer>4</answer>", 0.0),
        ("<answer>4</answer><think>a</think>", 0.0),
        ("<think>a <answer>4</answer></think>", 0.0),
        ("<think>a</think> <answer>  </answer>", 0.0),
        ("<answer>4</answer>", 0.0),
        ("<think>a</think>", 0.0),
        ("", 0.0),
    ],
)
def test_format_reward(completion, expected):
    assert format_reward(["Question. Assistant:"], [completion]) == [expected]


def test_format_reward_with_prefilled_think_tag():
    prompt = "User: 2+2? Assistant: <think>\n"
    assert format_reward([prompt], ["2 + 2 is 4.</think> <answer>4</answer>"]) == [1.0]
    assert format_reward([prompt], [GOOD]) == [0.0]  # a second <think>
    assert format_reward(["Assistant:"], ["2 + 2 is 4.</think> <answer>4</answer>"]) == [0.0]


def test_format_reward_is_linear_on_megabyte_completions():
    start = time.process_time()
    long_good = "<think>" + "wait, " * (MB // 6) + "</think><answer>4</answer>"
    assert format_reward(["p"] * 3, [long_good, "<think>" * (MB // 7), "<" * MB]) == [1.0, 0.0, 0.0]
    assert time.process_time() - start < 1.0


# ---------------------------------------------------------------- language


def test_language_reward_is_share_of_target_words_in_cot():
    completions = [
        "<think>The answer is simple</think><answer>中文</answer>",  # answer part ignored
        "<think>The answer 是 42</think><answer>42</answer>",
        "<think>1 + 2 = 3, θ = π/2</think><answer>3</answer>",  # no words
        "plain text, no tags",
        "prefilled café thinking</think><answer>x</answer>",
        "<think>Let θ be π/2</think>",  # Greek letters are math symbols, not words
    ]
    assert language_reward(["p"] * 6, completions) == [1.0, 2 / 3, 0.0, 1.0, 1.0, 1.0]


def test_language_reward_counts_each_han_character_as_a_word():
    completion = "<think>我们计算 x + 1 then</think>"
    assert language_reward(["p"], [completion], language=["zh"]) == [4 / 6]
    assert language_reward(["p"], [completion], language=["en"]) == [2 / 6]


def test_language_reward_names_unknown_language():
    with pytest.raises(ValueError, match="'fr'"):
        language_reward(["p"], ["bonjour"], language=["fr"])


def test_chain_of_thought_handles_missing_and_unclosed_tags():
    assert chain_of_thought("<think>a</think>b") == "a"
    assert chain_of_thought("x<think>a") == "a"
    assert chain_of_thought("a</think><think>b</think>") == "a"
    assert chain_of_thought("all") == "all"


def test_language_reward_on_megabyte_completion():
    start = time.process_time()
    assert language_reward(["p"], ["<think>" + "word 中 " * (MB // 7)]) == [0.5]
    assert time.process_time() - start < 2.0


# ---------------------------------------------------------------- countdown

NUMS, TARGET = [3, 5, 2], 13


def _cd(answer: str, numbers=NUMS, target=TARGET, **kwargs) -> float:
    return countdown_reward(["p"], [f"<think>..</think><answer>{answer}</answer>"], numbers=[numbers], target=[target], **kwargs)[0]


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("3*5-2", 1.0),
        ("(3 * 5) - 2 = 13", 1.0),
        ("3 \\times 5 - 2", 1.0),
        ("5×3-2", 1.0),
        ("3*5-2 = 14", 0.1),  # claims the wrong target
        ("(5-2)*3", 0.1),  # wrong value
        ("3*5", 0.1),  # a number missing
        ("3*5-2+2-2", 0.1),  # a number reused
        ("3*5-2.0", 1.0),  # 2.0 is the number 2
        ("2++3", 0.0),
        ("(3*5-2", 0.0),
        ("3*5-2)", 0.0),
        ("__import__('os')", 0.0),
        ("3**5-2", 0.0),
        ("", 0.0),
        ("13", 0.1),
    ],
)
def test_countdown_scores(answer, expected):
    assert _cd(answer) == expected


def test_countdown_is_exact_and_division_by_zero_is_wrong():
    assert _cd("6/4*2", numbers=[6, 4, 2], target=3) == 1.0
    assert _cd("(1/3)*3*7", numbers=[1, 3, 3, 7], target=7) == 1.0
    assert _cd("1/0", numbers=[1, 0], target=1) == 0.1
    assert _cd("1+0", numbers=[1, 0], target=1) == 1.0
    assert _cd("-2+5", numbers=[2, 5], target=3) == 1.0


def test_countdown_without_answer_or_with_huge_input_scores_zero():
    huge = "1+" * MB + "1"
    deep = "(" * 200 + "3" + ")" * 200
    out = countdown_reward(["p"] * 3, ["no answer", f"<answer>{huge}</answer>", f"<answer>{deep}</answer>"],
                           numbers=[NUMS] * 3, target=[TARGET] * 3)
    assert out == [0.0, 0.0, 0.0]


def test_countdown_format_score_is_configurable():
    assert _cd("(5-2)*3", format_score=0.0) == 0.0
    wrong = ["<answer>(5-2)*3</answer>"]
    assert make_countdown_reward(0.25)(["p"], wrong, numbers=[NUMS], target=[TARGET]) == [0.25]
    assert functools.partial(countdown_reward, format_score=0.5)(["p"], wrong, numbers=[NUMS], target=[TARGET]) == [0.5]


def test_countdown_names_missing_column():
    with pytest.raises(ValueError, match="'target'"):
        countdown_reward(["p"], ["<answer>1</answer>"], numbers=[[1]])


def test_parse_equation_reports_numbers_in_order():
    value, used, claimed = parse_equation("(7 - 2) * 3 = 15")
    assert (value, [int(u) for u in used], claimed) == (15, [7, 2, 3], 15)
