"""r1jax.reasoning: stated steps, slips, self-corrections and lenient answers, against the generator's truth."""
import math
import random

import numpy as np
import pytest

from r1jax.data import Problem, generate_arithmetic, worked_solution
from r1jax.data.arithmetic import ArithmeticConfig
from r1jax.evaluate import ProblemRecord, lenient_correctness, record_metrics
from r1jax.reasoning import check_trace, lenient_answer, stated_steps


def test_steps_are_one_operation_equations_checked_exactly():
    text = "(3 + 4) * 2 = 14; 10 / 4 = 5/2, 7 = 7, x = 3, 1 / 0 = 2, 12 - 15 = -3. So 1 + 2 + 3 = 7. 6 * 7 = 41."
    steps = stated_steps(text)
    assert [s.expression for s in steps] == ["10 / 4", "12 - 15", "6 * 7"]
    assert [s.slip for s in steps] == [False, False, True]
    assert text[steps[-1].start:steps[-1].end] == "6 * 7 = 41"


@pytest.mark.parametrize("error_rate, recheck_rate, slips, corrected", [(0, 0, 0, 0), (1, 0, 1, 0), (0, 1, 1, 1)])
def test_worked_solutions_show_the_slips_and_rechecks_they_were_made_with(error_rate, recheck_rate, slips,
                                                                         corrected):
    problems = generate_arithmetic(ArithmeticConfig(num_ops=2, max_value=9, ops=("+", "-"), allow_negative=False),
                                   "train", 40, 0)
    for i, p in enumerate(problems):
        solution = worked_solution(p, random.Random(i), error_rate, recheck_rate)
        for text in (solution.render(), f" {solution.reasoning}\nThe answer is {solution.answer}."):
            trace = check_trace(text)
            assert len(trace.steps) == 2 + corrected, text  # one per operation (and the fix); not the summary
            assert (trace.slips, trace.corrected) == (slips, corrected), text
            assert (trace.rechecks > 0) == bool(recheck_rate), text
            assert lenient_answer(text) == solution.answer


def test_lenient_answer_reads_the_tag_then_the_prose_then_the_last_number():
    assert lenient_answer("<think> 2 + 2 = 4 </think> <answer> 4 </answer> 9") == "4"
    assert lenient_answer("so \\boxed{12}") == "12"
    assert lenient_answer("2 + 5 = 7. The answer is 7. Then 3") == "7"
    assert lenient_answer("first 3, then -8") == "-8"
    assert lenient_answer("So 14 - 13 + 6 = 7.\nThe answer is 14 - 13 + 6.") == "14 - 13 + 6"  # a Countdown equation
    assert lenient_answer("The answer is 3.5.") == "3.5"
    assert lenient_answer("no digits here") is None


def test_lenient_correctness_keeps_strict_scores_and_scores_the_prose():
    problems = [Problem(id="p", task="arithmetic", question="4 + 4?", answer="8")]
    texts = ["<think> </think> <answer> 7 </answer> The answer is 8.", "4 + 4 = 8. The answer is 8.",
             "4 + 4 = 9", "nothing"]
    strict = np.array([[False, False, False, False]])
    answers, correct, failed = lenient_correctness(problems, ["q"], texts, 4, strict)
    assert answers == ["7", "8", "9", None] and correct.tolist() == [False, True, False, False] and failed == 0


def _record(correct, well_formed, lenient, steps, slips, corrected, rechecked):
    k = len(correct)
    return ProblemRecord(id="p", task="t", question="q", gold="1", completions=[""] * k, answers=[None] * k,
                         correct=correct, lengths=[10] * k, truncated=[False] * k, well_formed=well_formed,
                         voted=None, voted_correct=False, lenient_answers=[None] * k, lenient_correct=lenient,
                         steps=steps, slips=slips, corrected=corrected, rechecked=rechecked)


def test_reasoning_metrics_by_hand():
    records = [_record([True, False], [True, True], [True, True], [2, 2], [0, 1], [0, 1], [False, True]),
               _record([False, False], [False, True], [True, False], [3, 1], [2, 0], [0, 0], [False, False])]
    m = record_metrics(records, 2)
    assert m["pass@1"] == 0.25 and m["lenient_pass@1"] == 0.75
    assert m["accuracy_well_formed"] == pytest.approx(1 / 3)  # 1 correct among 3 well-formed
    assert m["slip_rate"] == pytest.approx(3 / 8) and m["slipped"] == 0.5
    assert m["self_correction_rate"] == pytest.approx(1 / 3) and m["recheck_rate"] == 0.25
    none = record_metrics([_record([True], [False], [True], [0], [0], [0], [False])], 1)
    assert math.isnan(none["accuracy_well_formed"]) and math.isnan(none["self_correction_rate"])
    assert math.isnan(none["slip_rate"])
