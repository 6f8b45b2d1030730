"""Evaluation metrics by hand (pass@k, pass@1, cons@k voting) and `evaluate` end to end on a tiny model."""
import json
import math
import os
import random

import jax
import numpy as np
import pytest

from r1jax.config import ModelConfig, SamplingSettings
from r1jax.data import (ArithmeticConfig, CountdownConfig, Problem, PromptTemplate, generate_arithmetic,
                        generate_countdown, load_jsonl)
from r1jax.engine import Engine
from r1jax.rewards import is_correct
from r1jax.evaluate import (EvalResult, evaluate, majority_vote, normalize_answer, pass_at_1, pass_at_k,
                            score_correctness)
from r1jax.model import init_params
from r1jax.sampling import Sampler
from r1jax.text import final_answer
from r1jax.tokenizer import Tokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "eval")
GSM8K = os.path.join(FIXTURES, "gsm8k_tiny.jsonl")
MATH500 = os.path.join(FIXTURES, "math500_tiny.jsonl")
TOY = PromptTemplate("toy", "Q: {prompt} A:")


# ----------------------------------------------------------------------------- metrics by hand
def test_pass_at_k_by_hand():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0  # n − c < k: every k-subset holds a correct sample
    assert pass_at_k(5, 5, 5) == 1.0


def test_pass_at_k_matches_binomial_formula():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_is_stable_for_large_n():
    assert pass_at_k(2000, 3, 1000) == pytest.approx(1 - 0.5**3, abs=1e-3)


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_pass_at_1_by_hand():
    assert pass_at_1([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]]) == pytest.approx(0.5)
    assert pass_at_1([[True], [False]]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pass_at_1([])


@pytest.mark.parametrize("forms,key", [
    (["1/2", "0.5", "\\frac{1}{2}", "\\dfrac{1}{2}", " $0.50$ ", "\\boxed{1/2}"], "1/2"),
    (["3", "3.0", "3.", "$\\boxed{3}$", "\\boxed{ 3 }", "+3"], "3"),
    (["2,200", "2200", "$2,200.00$"], "2200"),
    (["-\\frac{7}{4}", "-1.75", "−7/4"], "-7/4"),
])
def test_normalize_answer_groups_equal_values(forms, key):
    assert {normalize_answer(f) for f in forms} == {key}
    # one convention: the accuracy reward counts as right exactly what the vote groups together
    assert all(is_correct(a, b, timeout_s=None) for a in forms for b in forms)
    assert not any(is_correct(f, key + "1", timeout_s=None) for f in forms)


def test_normalize_answer_keeps_what_is_not_a_number():
    assert normalize_answer("(1,2)") == "(1,2)"  # a tuple, not a thousands comma
    assert normalize_answer("x = 5") == "x=5"
    assert normalize_answer("\\boxed{1}+\\boxed{2}") == "\\boxed{1}+\\boxed{2}"  # not one box
    assert normalize_answer("1/0") == "1/0"
    assert normalize_answer(None) is None and normalize_answer(" $ $ ") is None


def cons_at_k(answers_PxK, correct_answer_check) -> float:
    """The R1 paper's cons@k written out: accuracy of each problem's majority vote (a None vote is wrong)."""
    voted = [majority_vote(answers) for answers in answers_PxK]
    return float(np.mean([v is not None and bool(correct_answer_check(i, v)) for i, v in enumerate(voted)]))


def test_cons_at_k_votes_over_equivalent_forms():
    answers = [["1/2", "3", "0.5", "3", "\\frac{1}{2}"],  # 1/2 has 3 votes, 3 has 2
               ["7", "8", "8.0", None, None, None]]  # None wins: never correct
    golds = ["0.5", "8"]
    check = lambda i, a: normalize_answer(a) == normalize_answer(golds[i])  # noqa: E731
    assert majority_vote(answers[0]) == "1/2" and majority_vote(answers[1]) is None
    assert cons_at_k(answers, check) == pytest.approx(0.5)
    assert cons_at_k(answers, lambda i, a: True) == pytest.approx(0.5)  # None stays wrong


def test_majority_vote_breaks_ties_by_first_occurrence():
    assert majority_vote(["4", "5", "5.0", "4.0"]) == "4"
    assert majority_vote(["5.0", "4", "4", "5"]) == "5.0"
    assert majority_vote([None, "4"]) is None
    with pytest.raises(ValueError):
        majority_vote([])


# ----------------------------------------------------------------------------- correctness routing (no model)
def test_default_correctness_routes_by_task():
    countdown = Problem(id="c", task="countdown", question="reach 16", answer="(3+5)*2", numbers=(3, 5, 2),
                        target=16)
    problems = [Problem(id="g", task="gsm8k", question="q", answer="2200"),
                countdown,
                Problem(id="m", task="math", question="q", answer="\\frac{8}{21}")]
    completions = ["<answer>2,200</answer>", "<answer>72</answer>",
                   "<answer>2 * (5 + 3) = 16</answer>", "<answer>3 + 5 + 2</answer>",
                   "<answer>8/21</answer>", "no answer"]
    correct, failures = score_correctness(problems, ["p"] * 3, completions, k=2)
    assert failures == 0
    # "3 + 5 + 2" is well formed but wrong: countdown's format score 0.1 is not full marks
    assert correct.tolist() == [[True, False], [True, False], [True, False]]


# ----------------------------------------------------------------------------- evaluate on a tiny model
@pytest.fixture(scope="module")
def tiny():
    """(tokenizer, model config, params, sampler) shared by the end-to-end tests."""
    rng = random.Random(0)
    texts = [p.question for p in [*load_jsonl(GSM8K), *load_jsonl(MATH500), *_generated()]] * 2
    texts += [" ".join("".join(rng.choices("abcdefgh", k=rng.randint(1, 5))) for _ in range(8)) for _ in range(200)]
    tok = Tokenizer.train(texts, vocab_size=2048)
    cfg = ModelConfig.tiny(vocab_size=tok.vocab_size)
    sampler = Sampler(cfg, eos_id=tok.eos_id, pad_id=tok.pad_id, prompt_bucket=64)  # one prompt shape for all
    return tok, cfg, init_params(cfg, jax.random.key(0)), sampler


def _generated():
    return list(generate_arithmetic(ArithmeticConfig(), "test", 2) + generate_countdown(CountdownConfig(), "test", 2))


def has_i(prompts, completions, **_):
    return [float("i" in c) for c in completions]


def first_char(text):
    return text.strip()[:1] or None


def _toy_problems(n):
    return [Problem(id=f"toy-{i}", task="toy" if i % 2 else "toy2", question=q, answer="a")
            for i, q in enumerate(["abc", "bad", "cafe", "dh", "ga"][:n])]


def _run(tiny, problems, max_new_tokens=6, temperature=1.0, **kw):
    tok, cfg, params, sampler = tiny
    args = dict(k=4, template=TOY, rng=jax.random.key(1), sampler=sampler, correctness_fn=has_i,
                answer_fn=first_char, batch_size=2,
                settings=SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature))
    return evaluate(params, cfg, tok, problems, **{**args, **kw})


def _recompute(records, k):
    """Metrics from the per-problem records alone, written independently of r1jax.evaluate."""
    c = [sum(r["correct"]) for r in records]
    voted_correct = []
    for r in records:
        keys = [normalize_answer(a) for a in r["answers"]]
        counts = {key: keys.count(key) for key in keys}
        best = max(counts.values())
        winner = next(key for key in keys if counts[key] == best)
        voted_correct.append(winner is not None and r["correct"][keys.index(winner)])
    return {"pass@1": np.mean([x / k for x in c]),
            f"pass@{k}": np.mean([1 - math.comb(k - x, k) / math.comb(k, k) for x in c]),
            f"cons@{k}": np.mean(voted_correct),
            "length_mean": np.mean([n for r in records for n in r["lengths"]]),
            "truncated_frac": np.mean([t for r in records for t in r["truncated"]])}


def test_evaluate_metrics_follow_from_the_records(tiny, tmp_path):
    result = _run(tiny, _toy_problems(5))  # 3 batches of 2 prompts, the last padded
    assert isinstance(result, EvalResult) and len(result.records) == 5
    for r in result.records:
        assert len(r.completions) == len(r.answers) == len(r.correct) == 4
        assert r.correct == ["i" in c for c in r.completions]
        assert r.answers == [first_char(c) for c in r.completions]
        assert all(1 <= n <= 6 for n in r.lengths) and all(n == 6 for n, t in zip(r.lengths, r.truncated) if t)
    assert 0 < result.metrics["pass@1"] < 1, "the toy check should pass some samples and fail others"

    path = tmp_path / "out" / "eval.jsonl"
    result.write_jsonl(path)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == [f"toy-{i}" for i in range(5)]
    assert {"question", "gold", "answers", "correct", "completions", "voted"} <= set(records[0])
    for name, want in _recompute(records, 4).items():
        assert result.metrics[name] == pytest.approx(want), name
    answers = [r["answers"] for r in records]
    assert result.metrics[f"cons@{result.k}"] == pytest.approx(
        cons_at_k(answers, lambda i, a: records[i]["correct"][answers[i].index(a)]))
    for task in ("toy", "toy2"):
        mine = [r for r in records if r["task"] == task]
        for name, want in _recompute(mine, 4).items():
            assert result.by_task[task][name] == pytest.approx(want), (task, name)

    summary = result.summary()
    for name in ("pass@1", "pass@4", "cons@4", "format", "answered", "length_mean", "truncated_frac",
                 "toy/pass@1", "toy2/cons@4", "reward_failures"):
        assert isinstance(summary[name], float) and np.isfinite(summary[name]), name
    for name in ("lenient_pass@1", "accuracy_well_formed", "slip_rate", "slipped", "self_correction_rate",
                 "recheck_rate", "toy/slip_rate"):  # NaN where there is nothing to rate (no equations here)
        assert isinstance(summary[name], float), name
    assert all(len(r.lenient_correct) == len(r.slips) == len(r.rechecked) == 4 for r in result.records)


def test_evaluate_is_reproducible_from_rng(tiny):
    a, b = _run(tiny, _toy_problems(3)), _run(tiny, _toy_problems(3))
    assert [r.completions for r in a.records] == [r.completions for r in b.records]


def test_temperature_zero_gives_identical_samples(tiny):
    result = _run(tiny, _toy_problems(4), temperature=0.0)
    for r in result.records:
        assert len(set(r.completions)) == 1
    assert result.metrics[f"cons@{result.k}"] == pytest.approx(result.metrics["pass@1"])
    assert result.metrics[f"pass@{result.k}"] == pytest.approx(result.metrics["pass@1"])


def test_k_equal_one(tiny):
    result = _run(tiny, _toy_problems(3), k=1, answer_fn=lambda t: "x")
    assert set(result.summary()) >= {"pass@1", "cons@1"}
    assert all(len(r.correct) == 1 for r in result.records)
    assert result.metrics[f"cons@{result.k}"] == pytest.approx(result.metrics["pass@1"])


def test_jsonl_fixtures_load_and_evaluate(tiny):
    """GSM8K and MATH-500 records score with the default correctness (accuracy), routed per task."""
    result = _run(tiny, load_jsonl(GSM8K) + load_jsonl(MATH500), correctness_fn=None, answer_fn=final_answer)
    assert set(result.by_task) == {"gsm8k", "math"} and result.metrics["problems"] == 8.0
    assert [r.gold for r in result.records][:4] == ["72", "10", "2200", "5"]
    assert result.reward_failures == 0 and 0.0 <= result.metrics["pass@1"] <= 1.0
    from_path = _run(tiny, MATH500, correctness_fn=None, answer_fn=final_answer)
    assert set(from_path.by_task) == {"math"} and len(from_path.records) == 4


def test_generated_tasks_evaluate_with_their_own_correctness(tiny):
    """Arithmetic is scored by accuracy and countdown by the countdown reward, in one call."""
    problems = _generated()
    result = _run(tiny, problems, correctness_fn=None, answer_fn=final_answer)
    assert set(result.by_task) == {"arithmetic", "countdown"}
    assert [r.gold for r in result.records] == [p.answer for p in problems] and result.reward_failures == 0
    assert len(tiny[0].encode(TOY.render(problems[-1].question))) <= 64  # the shared compiled prompt shape


@pytest.mark.parametrize("kw,match", [(dict(k=0), "k must be"), (dict(batch_size=0), "batch_size"),
                                      (dict(max_new_tokens=0), "max_new_tokens")])
def test_bad_arguments_are_clear_errors(tiny, kw, match):
    with pytest.raises(ValueError, match=match):
        _run(tiny, _toy_problems(2), **kw)


def test_empty_problem_list_is_an_error(tiny):
    with pytest.raises(ValueError, match="at least one problem"):
        _run(tiny, [])


def test_the_engine_evaluates_like_the_static_sampler(tiny):
    tok, cfg, params, _ = tiny
    engine = Engine(cfg, pad_id=tok.pad_id, slots=4, page_size=8)
    static = _run(tiny, _toy_problems(5), temperature=0.0)
    paged = _run(tiny, _toy_problems(5), temperature=0.0, sampler=engine)
    assert [r.completions for r in paged.records] == [r.completions for r in static.records]
    assert paged.summary() == static.summary()


def test_cons_key_finds_the_overall_cons_at_k_whatever_k():
    from r1jax.evaluate import cons_key

    assert cons_key({"pass@1": 0.5, "arithmetic/cons@8": 0.2, "cons@8": 0.3}) == "cons@8"
    assert cons_key({"pass@1": 0.5, "arithmetic/cons@8": 0.2}) is None
