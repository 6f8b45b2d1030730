"""Procedural tasks: expression parser, arithmetic and Countdown generation, splits, Problem."""
import collections
import json
import os
import subprocess
import sys

import pytest
from test_data_helpers import independent_eval

from r1jax.data import (ArithmeticConfig, CountdownConfig, Problem, batch_columns, check_countdown,
                        generate_arithmetic, generate_countdown, split_of)
from r1jax.data.expressions import BinOp, Num, evaluate, parse, render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARITH = ArithmeticConfig(num_ops=3, min_value=1, max_value=20)
COUNTDOWN = CountdownConfig()


def _generate(task, split, num, seed):
    config = ARITH if task == "arithmetic" else COUNTDOWN
    generate = generate_arithmetic if task == "arithmetic" else generate_countdown
    return generate(config, split, num, seed)


# ------------------------------------------------------------------ expressions
@pytest.mark.parametrize("text, value", [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("8 - 3 - 2", 3), ("8 - (3 - 2)", 7),
    ("12 / 4 / 3", 1), ("7 / 2", 3.5), ("-3 + 5", 2), ("2 × 3 − 1 ÷ 2", 5.5), (" ( ( 4 ) ) ", 4),
])
def test_parse_respects_precedence_and_associativity(text, value):
    assert evaluate(parse(text)) == value


@pytest.mark.parametrize("text", ["2 ** 3", "__import__('os')", "1 +", "(1 + 2", "1 2", "1.5 + 1",
                                  "", "x", "1 + ()", "(" * 200 + "1" + ")" * 200])
def test_parse_rejects_what_is_not_integer_arithmetic(text):
    with pytest.raises(ValueError):
        parse(text)


def test_render_uses_minimal_parentheses_that_keep_the_value():
    assert render(BinOp("-", Num(1), BinOp("-", Num(2), Num(3)))) == "1 - (2 - 3)"
    assert render(BinOp("+", Num(1), BinOp("-", Num(2), Num(3)))) == "1 + 2 - 3"
    assert render(BinOp("*", BinOp("+", Num(1), Num(2)), Num(3))) == "(1 + 2) * 3"
    assert render(BinOp("/", Num(8), BinOp("*", Num(2), Num(2)))) == "8 / (2 * 2)"
    for problem in _generate("countdown", "train", 50, seed=3):
        tree = parse(problem.answer)
        assert evaluate(parse(render(tree))) == evaluate(tree)


# ------------------------------------------------------------------ configs and Problem
@pytest.mark.parametrize("make, message", [
    (lambda: ArithmeticConfig(num_ops=0), "num_ops"),
    (lambda: ArithmeticConfig(min_value=5, max_value=4), "min_value"),
    (lambda: ArithmeticConfig(ops=("+", "^")), "ops"),
    (lambda: ArithmeticConfig(test_fraction=1.0), "test_fraction"),
    (lambda: CountdownConfig(min_numbers=5, max_numbers=4), "min_numbers"),
    (lambda: CountdownConfig(min_number=0), "min_number"),
    (lambda: CountdownConfig(ops=("-",)), "ops"),
])
def test_configs_reject_bad_values_with_named_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_problem_validates_fields():
    with pytest.raises(ValueError, match="question"):
        Problem(id="a", task="t", question=" ", answer="1")
    with pytest.raises(ValueError, match="together"):
        Problem(id="a", task="countdown", question="q", answer="1", numbers=(1, 2))
    with pytest.raises(ValueError, match="numbers"):
        Problem(id="a", task="countdown", question="q", answer="1", numbers=(1, "2"), target=3)


def test_columns_follow_the_rewards_contract():
    arith = _generate("arithmetic", "train", 1, seed=0)[0]
    assert arith.columns() == {"answer": arith.answer}
    count = _generate("countdown", "train", 1, seed=0)[0]
    cols = count.columns()
    assert set(cols) == {"answer", "numbers", "target"}
    assert type(cols["numbers"]) is list and all(type(n) is int for n in cols["numbers"])
    assert type(cols["target"]) is int and cols["numbers"] == list(count.numbers)


def test_batch_columns_stack_rows_and_refuse_mixed_tasks():
    counts = _generate("countdown", "train", 3, seed=0)
    batch = batch_columns(counts)
    assert batch == {"answer": [p.answer for p in counts], "numbers": [list(p.numbers) for p in counts],
                     "target": [p.target for p in counts]}
    with pytest.raises(ValueError, match="differ"):
        batch_columns(counts + _generate("arithmetic", "train", 1, seed=0))


# ------------------------------------------------------------------ arithmetic
def test_arithmetic_gold_answers_match_an_independent_evaluator():
    for problem in _generate("arithmetic", "train", 300, seed=1):
        assert problem.question.startswith("Compute ") and problem.question.endswith(".")
        expression = problem.question[len("Compute "):-1]
        value, steps, literals = independent_eval(expression)
        assert problem.answer == str(value.numerator) and value.denominator == 1
        assert len(steps) == ARITH.num_ops
        assert all(s.denominator == 1 and abs(s) <= ARITH.max_abs_value for s in steps), expression
        assert all(ARITH.min_value <= n <= ARITH.max_value for n in literals)


def test_arithmetic_uses_every_allowed_op_and_respects_options():
    problems = generate_arithmetic(ARITH, "train", 200, seed=2)
    ops = collections.Counter(c for p in problems for c in p.question if c in "+-*/")
    assert set(ops) == set("+-*/")
    positive = ArithmeticConfig(num_ops=2, ops=("+", "-"), allow_negative=False)
    for problem in generate_arithmetic(positive, "train", 100, seed=0):
        _, steps, _ = independent_eval(problem.question[len("Compute "):-1])
        assert all(s >= 0 for s in steps) and "*" not in problem.question


# ------------------------------------------------------------------ countdown
def test_countdown_problems_are_solvable_and_well_formed():
    for problem in _generate("countdown", "train", 300, seed=1):
        assert 3 <= len(problem.numbers) <= 4
        assert COUNTDOWN.min_target <= problem.target <= COUNTDOWN.max_target
        assert problem.question == (
            f"Using the numbers {list(problem.numbers)}, create an equation that equals {problem.target}. "
            "You can use basic arithmetic operations (+, -, *, /) and each number can only be used once.")
        value, steps, literals = independent_eval(problem.answer)
        assert value == problem.target and sorted(literals) == sorted(problem.numbers)
        assert all(s > 0 and s.denominator == 1 for s in steps)
        assert check_countdown(problem.answer, problem.numbers, problem.target)


def test_check_countdown_rejects_reuse_omission_wrong_value_and_garbage():
    assert check_countdown("(75 - 25) * 2", [2, 25, 75], 100)
    assert check_countdown("2 * (75 - 25)", (75, 25, 2), 100)
    assert not check_countdown("75 + 25", [2, 25, 75], 100)            # 2 unused
    assert not check_countdown("(75 - 25) * 2 * 2", [2, 25, 75], 200)  # 2 twice
    assert not check_countdown("(75 - 25) * 2", [2, 25, 75], 101)      # wrong value
    assert not check_countdown("-2 + 75 + 25", [2, 25, 75], 98)        # unary minus
    assert not check_countdown("75 / (25 - 25) + 2", [25, 25, 75, 2], 1)
    assert not check_countdown("import os", [1], 1)


# ------------------------------------------------------------------ splits
@pytest.mark.parametrize("task", ["arithmetic", "countdown"])
def test_same_seed_same_items_other_seed_other_items(task):
    first, again = _generate(task, "train", 50, seed=7), _generate(task, "train", 50, seed=7)
    assert first == again
    assert [p.id for p in first] != [p.id for p in _generate(task, "train", 50, seed=8)]
    assert _generate(task, "train", 20, seed=7) == first[:20]  # a prefix: asking for more appends


@pytest.mark.parametrize("task", ["arithmetic", "countdown"])
def test_train_and_test_are_disjoint_and_deduplicated(task):
    train = _generate(task, "train", 400, seed=0)
    tests = _generate(task, "test", 60, seed=0) + _generate(task, "test", 60, seed=1)
    train_keys = [p.key for p in train]
    assert len(set(train_keys)) == len(train_keys)
    assert len({p.key for p in tests[:60]}) == 60
    assert not set(train_keys) & {p.key for p in tests}
    assert not {p.question for p in train} & {p.question for p in tests}
    assert len({p.id for p in train}) == len(train)
    fraction = ARITH.test_fraction if task == "arithmetic" else COUNTDOWN.test_fraction
    assert all(split_of(p.key, fraction) == "train" for p in train)
    assert all(split_of(p.key, fraction) == "test" for p in tests)


def test_split_of_puts_about_test_fraction_in_test():
    share = sum(split_of(f"k{i}", 0.1) == "test" for i in range(4000)) / 4000
    assert 0.08 < share < 0.12


def test_splits_are_the_same_in_another_process():
    code = ("import json; from r1jax.data import *; "
            "print(json.dumps([p.id for p in generate_arithmetic(ArithmeticConfig(), 'test', 30, 5)]"
            " + [p.question for p in generate_countdown(CountdownConfig(), 'train', 30, 5)]))")
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    here = ([p.id for p in generate_arithmetic(ArithmeticConfig(), "test", 30, 5)]
            + [p.question for p in generate_countdown(CountdownConfig(), "train", 30, 5)])
    assert json.loads(out) == here


def test_exhausted_task_space_is_a_clear_error():
    tiny = ArithmeticConfig(num_ops=1, min_value=1, max_value=2, ops=("+",))  # 4 distinct questions
    with pytest.raises(ValueError, match="found only"):
        generate_arithmetic(tiny, "train", 50, seed=0)
    with pytest.raises(ValueError, match="split"):
        generate_arithmetic(ARITH, "validation", 5)



def test_at_most_gives_the_whole_split_when_it_is_smaller():
    """A held-out set of 'at most N' is the whole test split of a small task, and starts as the exact N would."""
    task = ArithmeticConfig(num_ops=2, max_value=9, ops=("+", "-"), allow_negative=False)  # the tiny recipe's
    whole = generate_arithmetic(task, "test", 256, seed=0, at_most=True)
    keys = {p.key for p in whole}
    assert len(keys) == len(whole) < 256
    # other seeds draw in another order but find the same set: the split, not a sample of it
    assert {p.key for p in generate_arithmetic(task, "test", 256, seed=5, at_most=True)} == keys
    assert generate_arithmetic(task, "test", 64, seed=0) == whole[:64]
    assert not keys & {p.key for p in generate_arithmetic(task, "train", 500, seed=0)}
