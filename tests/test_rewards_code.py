"""Code reward: extraction, test parsing, JSONL loading and honest scores (attacks: test_rewards_code_attacks.py)."""
import json
import os

import pytest

from r1jax.data.jsonl import DatasetError
from r1jax.rewards import RewardPool
from r1jax.rewards.code import CodeReward, extract_code, load_code_tasks, parse_tests
from r1jax.rewards.code_checks import decode_value, parse_asserts
from r1jax.rewards.sandbox import (
    SandboxLimits,
    isolation_level,
)
from code_sandbox_helpers import *  # noqa: F401,F403  limits, leftover checks, _run, fenced


# ------------------------------------------------------------------ extraction and parsing


def test_extract_code_takes_the_last_python_or_untagged_block():
    text = "```python\nprint(1)\n```\nthen\n```cpp\nint main(){}\n```\n```\n  print(2)\n```\n```python\nprint(3)"
    assert extract_code(text) == "print(2)"  # the last python block is unterminated; cpp is skipped
    assert extract_code("no code here") is None
    assert extract_code("```Python\nx = 1\n```") == "x = 1"
    assert extract_code("```py\nx = 2\n```\n```bash\nls\n```") == "x = 2"


def test_asserts_become_probes_compared_outside_the_sandbox():
    setup, checks = parse_asserts(
        "import math\nassert f(1) == 2\nassert 3 == f(2)\nassert f(0) is None\nassert not g(4)\nassert g(5)\n"
        "assert math.isclose(h(1), 0.5, rel_tol=1e-3)\nassert abs(h(2) - 1.5) < 1e-6\n"
        "assert f(3) == set((1, 2)) and f(4) in [1, 2]\nassert True\n")
    assert setup == "import math"
    assert [(c.probe, c.op) for c in checks] == [
        ("f(1)", "=="), ("f(2)", "=="), ("f(0)", "is"), ("g(4)", "falsy"), ("g(5)", "truthy"),
        ("h(1)", "isclose"), ("h(2)", "absdiff<"), ("f(3)", "=="), ("f(4)", "in")]
    assert checks[1].probe_left is False and checks[7].expected == {1, 2}
    assert checks[5].passes(0.5004) and not checks[5].passes(0.6) and not checks[5].passes("x")
    assert checks[6].passes(1.5) and not checks[6].passes(1.6)


def test_humaneval_check_candidate_is_renamed_to_the_entry_point():
    source = "METADATA = {}\n\ndef check(candidate):\n    import math\n    assert candidate([1]) == 1\n\ncheck(total)\n"
    setup, checks = parse_asserts(source)
    assert checks[0].probe == "total([1])" and "METADATA" in setup and "import math" in setup
    assert parse_asserts(source.replace("check(total)\n", ""), "other")[1][0].probe == "other([1])"


@pytest.mark.parametrize("source", [
    "assert f(1) == g(1)",  # both sides computed in the sandbox
    "assert bool(f(1) == 2)",  # the comparison would run in the sandbox
    "assert 1 < f(1) < 3",  # chained
    "assert f(1) is 5",
    "assert f(1) == 2 ** 10",  # no powers in expected values
    "assert f(1) == list(range(10000000))",  # too long an expected value
    "x = 1",  # nothing tested
])
def test_unsupported_asserts_are_refused(source):
    with pytest.raises(ValueError):
        parse_asserts(source)


def test_spec_errors_are_clear():
    with pytest.raises(ValueError, match="unknown tests spec keys"):
        parse_tests({"input": ["1"]})
    with pytest.raises(ValueError, match="equal length"):
        parse_tests({"inputs": ["1"], "outputs": []})
    with pytest.raises(ValueError, match="no tests"):
        parse_tests({"inputs": [], "outputs": []})
    with pytest.raises(ValueError, match="isolation"):
        SandboxLimits(isolation="docker")


def test_decode_value_inverts_the_tagged_encoding():
    from r1jax.rewards.sandbox_child import encode_value

    value = [1, 2.5, "s", None, True, (1, (2,)), {1: [b"x"]}, {3}, frozenset({4}), 1 + 2j, 10 ** 30]
    assert decode_value(json.loads(json.dumps(encode_value(value)))) == value


def test_fixture_tasks_load_in_every_layout():
    tasks = load_code_tasks(FIXTURE)
    assert len(tasks) >= 10 and all(t.solution for t in tasks)
    assert {k for t in tasks for k in t.tests} == {"inputs", "outputs", "asserts", "entry_point"}
    assert tasks[0].columns() == {"tests": tasks[0].tests}


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "p", "inputs": ["1"]', "malformed JSON"),
    ('{"inputs": ["1"], "outputs": ["1"]}', "needs a non-empty prompt"),
    ('{"prompt": "p"}', "no tests"),
    ('{"prompt": "p", "test_list": ["assert f(1) == g(2)"]}', "line 1: unsupported assert"),
    ('{"prompt": "p", "input_output": "{\\"fn_name\\": \\"f\\", \\"inputs\\": [], \\"outputs\\": []}"}', "fn_name"),
])
def test_loader_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "inputs": ["1"], "outputs": ["1"]}\n\n' + line + "\n")
    with pytest.raises(DatasetError, match=f"bad.jsonl:3: .*{message}"):
        load_code_tasks(path)


# ------------------------------------------------------------------ honest programs


def test_reference_solutions_score_1_and_wrong_programs_0():
    tasks = load_code_tasks(FIXTURE)
    reward = CodeReward(limits=FAST, workers=2)
    tests = [t.tests for t in tasks]
    assert reward(["p"] * len(tasks), [fenced(t.solution) for t in tasks], tests=tests) == [1.0] * len(tasks)
    wrong = fenced("print('nope')\ndef add(a, b):\n    return None")
    assert reward(["p"] * len(tasks), [wrong] * len(tasks), tests=tests) == [0.0] * len(tasks)


def test_partial_solutions_score_the_fraction_passed():
    partial = fenced("a, b = map(int, input().split())\nprint(abs(a) + abs(b))")  # wrong on -5 5
    hangs = fenced("a, b = map(int, input().split())\nwhile a < 0: pass\nprint(a + b)")  # -5 5 times out
    add = fenced("def add(a, b):\n    return a + b if a > 0 else 1")  # wrong on add(-1, 1)
    scores = CodeReward(limits=FAST)(["p"] * 3, [partial, hangs, "no code"], tests=[SUM_TESTS] * 3)
    assert scores == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert CodeReward(limits=FAST)(["p"], [add], tests=[ADD_TESTS]) == pytest.approx([2 / 3])
    assert CodeReward(limits=FAST, all_or_nothing=True)(["p"], [partial], tests=[SUM_TESTS]) == [0.0]
    syntax_error = fenced("def add(a, b) return a + b")
    assert CodeReward(limits=FAST)(["p"], [syntax_error], tests=[ADD_TESTS]) == [0.0]


def test_reward_runs_in_a_reward_pool():
    tasks = load_code_tasks(FIXTURE)[:4]
    completions = [fenced(t.solution) for t in tasks[:2]] + [fenced("print('x')")] * 2
    reward = CodeReward(limits=FAST)
    with RewardPool(num_workers=2, timeout_s=60) as pool:
        scores = pool.score(reward, ["p"] * 4, completions, tests=[t.tests for t in tasks])
    assert scores.values == [1.0, 1.0, 0.0, 0.0] and (scores.errors, scores.timeouts) == (0, 0)


def test_a_non_root_trainer_is_told_once_what_is_weaker(monkeypatch, caplog):
    from r1jax.rewards import sandbox

    _need("userns")
    monkeypatch.setattr(sandbox, "_levels", {})
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    with caplog.at_level("WARNING", logger="r1jax.rewards.sandbox"):
        assert isolation_level() == isolation_level() == "userns"
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["code sandbox runs at level 'userns'"]


def test_root_trainers_get_the_root_level():
    if os.geteuid() != 0:
        pytest.skip("not root")
    assert isolation_level() == "root"
