"""Worked chain-of-thought solutions: correctness, controlled errors, self-corrections, R1 format."""
import random
import re
from fractions import Fraction

import pytest
from test_data_helpers import independent_eval

from r1jax.data import (RECHECK_PHRASE, ArithmeticConfig, CountdownConfig, Problem, check_countdown,
                        generate_arithmetic, generate_countdown, render_r1, worked_solution, worked_solutions)
from r1jax.text import final_answer

ARITH = generate_arithmetic(ArithmeticConfig(num_ops=3), "train", 200, seed=11)
COUNT = generate_countdown(CountdownConfig(), "train", 200, seed=11)
_STEP_RE = re.compile(r"^(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)\.")


def _step_lines(reasoning):
    """(left, op, right, stated) for every line that states one operation."""
    return [tuple(m.groups()) for m in map(_STEP_RE.match, reasoning.splitlines()) if m]


def _step_is_right(step):
    left, op, right, stated = step
    a, b = Fraction(int(left)), Fraction(int(right))
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
    return value == int(stated)


def _is_right_final(problem, answer):
    if problem.task == "countdown":
        value, _, literals = independent_eval(answer)
        return value == problem.target and sorted(literals) == sorted(problem.numbers)
    return answer == problem.answer


@pytest.mark.parametrize("problems", [ARITH, COUNT], ids=["arithmetic", "countdown"])
def test_correct_solutions_reach_the_gold_answer_with_right_steps(problems):
    for problem, solution in zip(problems, worked_solutions(problems, seed=0)):
        assert solution.is_correct and not solution.self_corrected
        assert _is_right_final(problem, solution.answer), (problem.question, solution.answer)
        steps = _step_lines(solution.reasoning)
        assert steps and all(map(_step_is_right, steps)), solution.reasoning
        assert RECHECK_PHRASE not in solution.reasoning


@pytest.mark.parametrize("problems", [ARITH, COUNT], ids=["arithmetic", "countdown"])
def test_error_rate_one_gives_wrong_finals_from_one_slip(problems):
    for problem, solution in zip(problems, worked_solutions(problems, seed=0, error_rate=1.0)):
        assert not solution.is_correct
        assert not _is_right_final(problem, solution.answer), (problem.question, solution.reasoning)
        if problem.task == "countdown":
            assert not check_countdown(solution.answer, problem.numbers, problem.target)
            assert sorted(independent_eval(solution.answer)[2]) == sorted(problem.numbers)
        wrong = [s for s in _step_lines(solution.reasoning) if not _step_is_right(s)]
        assert len(wrong) == 1, solution.reasoning


@pytest.mark.parametrize("problems", [ARITH, COUNT], ids=["arithmetic", "countdown"])
def test_error_rate_sets_the_share_of_wrong_finals(problems):
    solutions = [s for seed in (3, 4, 5) for s in worked_solutions(problems, seed=seed, error_rate=0.3)]
    wrong = [not _is_right_final(p, s.answer) for p, s in zip(problems * 3, solutions)]
    assert wrong == [not s.is_correct for s in solutions]
    assert 0.24 < sum(wrong) / len(wrong) < 0.36


@pytest.mark.parametrize("problems", [ARITH, COUNT], ids=["arithmetic", "countdown"])
def test_self_corrections_recheck_and_end_correct(problems):
    for problem, solution in zip(problems, worked_solutions(problems, seed=1, self_correct_rate=1.0)):
        assert solution.self_corrected and solution.is_correct
        assert _is_right_final(problem, solution.answer)
        lines = solution.reasoning.splitlines()
        at = next(i for i, line in enumerate(lines) if RECHECK_PHRASE in line)
        assert lines[at].startswith("Wait, ")
        assert not _step_is_right(_STEP_RE.match(lines[at - 1]).groups())  # the slip comes first
        fixed = re.search(r"let me recheck\. (-?\d+) ([-+*/]) (-?\d+) = (-?\d+)\.", lines[at]).groups()
        assert _step_is_right(fixed)


def test_mixed_rates_give_all_three_kinds():
    solutions = worked_solutions(ARITH, seed=5, error_rate=0.2, self_correct_rate=0.5)
    kinds = {(s.is_correct, s.self_corrected) for s in solutions}
    assert kinds == {(False, False), (True, True), (True, False)}


def test_solutions_are_deterministic_and_per_item():
    first = worked_solutions(ARITH, seed=2, error_rate=0.5, self_correct_rate=0.5)
    assert first == worked_solutions(ARITH, seed=2, error_rate=0.5, self_correct_rate=0.5)
    assert worked_solutions(ARITH[50:60], seed=2, error_rate=0.5, self_correct_rate=0.5) == first[50:60]
    assert first != worked_solutions(ARITH, seed=3, error_rate=0.5, self_correct_rate=0.5)
    rng_a, rng_b = random.Random(9), random.Random(9)
    assert worked_solution(COUNT[0], rng_a, 0.5) == worked_solution(COUNT[0], rng_b, 0.5)


def test_render_r1_is_the_paper_format_and_answers_extract():
    assert render_r1("a\nb", "42") == "<think> a\nb </think> <answer> 42 </answer>"
    assert render_r1("a", "42", think_prefilled=True) == "a </think> <answer> 42 </answer>"
    for problem, solution in zip(COUNT[:20], worked_solutions(COUNT[:20])):
        text = solution.render()
        assert re.fullmatch(r"<think> .+ </think> <answer> .+ </answer>", text, re.DOTALL)
        assert text.count("<think>") == 1 and final_answer(text) == solution.answer


def test_bad_requests_are_clear_errors():
    gsm = Problem(id="g-1", task="gsm8k", question="q", answer="3")
    with pytest.raises(ValueError, match="gsm8k"):
        worked_solution(gsm, random.Random(0))
    with pytest.raises(ValueError, match="error_rate"):
        worked_solutions(ARITH[:1], error_rate=1.5)
    with pytest.raises(ValueError, match="self_correct_rate"):
        worked_solutions(ARITH[:1], self_correct_rate=-0.1)
