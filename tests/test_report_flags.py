"""Each flag fires on a constructed run that shows its problem, stays quiet on a healthy one, and links
to completions that show it; the swap_reward notebook's "recheck" hack is flagged."""
import json
import pathlib

import numpy as np
import pytest

from r1jax.data import ArithmeticConfig, generate_arithmetic
from r1jax.report import flags
from r1jax.rewards import WeightedReward, accuracy_reward, combine_rewards, format_reward

from report_helpers import record, series

ROOT = pathlib.Path(__file__).parent.parent
STEPS = 20


def ramp(a, b, n=STEPS):
    return list(np.linspace(a, b, n))


def rows_of(flag, rec):
    """Row indices of `rec` among the flag's evidence."""
    return [int(e.split(":")[1]) for e in flag.evidence if int(e.split(":")[0]) == rec.step]


def _healthy_curves(**changes):
    base = {"reward/mean": ramp(0.3, 1.3), "reward/accuracy": ramp(0.1, 0.4), "reward/format": ramp(0.2, 0.9),
            "completion/length_mean": ramp(60, 64), "completion/truncated_frac": [0.02] * STEPS,
            "entropy": ramp(0.9, 0.7), "kl": ramp(0.001, 0.004), "clip_low_frac": [0.01] * STEPS,
            "clip_high_frac": [0.01] * STEPS, "groups/informative": [12.0] * STEPS, "groups/sampled": [16.0] * STEPS}
    base.update(changes)
    return series(base)


def _texts(n, answers, G=4, body="<think> {a} is the sum. </think> <answer> {a} </answer>"):
    return [body.format(a=answers[i // G]) for i in range(n)]


GOLDS = ["3", "5", "9", "12"]


def _record(step, texts=None, accuracy=None, fmt=None, **kw):
    texts = texts or _texts(16, GOLDS)
    return record(step, texts, GOLDS, {"accuracy": accuracy or [1.0] * 16, "format": fmt or [1.0] * 16}, **kw)


def test_a_healthy_run_fires_no_flag():
    recs = [_record(s, accuracy=[1.0, 0.0] * 8) for s in (0, 10, 19)]
    fired = [f.name for f in flags.run_flags(_healthy_curves(), recs) if f.fired]
    assert fired == []


def test_proxy_rising_fires_when_format_rises_over_flat_accuracy():
    ph = _healthy_curves(**{"reward/accuracy": [0.3] * STEPS, "reward/format": ramp(0.1, 0.9)})
    recs = [_record(s, accuracy=[0.0, 1.0, 0.0, 0.0] * 4) for s in (0, 10, 19)]
    f = flags.proxy_rising(ph, recs)
    assert f.fired and "format" in f.title
    w = flags._window(STEPS)  # the first step whose trailing mean clears the early mean + 0.2
    now, early = [np.mean(ramp(0.1, 0.9)[max(0, t - w + 1):t + 1]) for t in range(STEPS)], np.mean(ramp(0.1, 0.9)[:w])
    assert now[f.step] - early >= 0.2 > now[f.step - 1] - early
    assert f.evidence and all(r.value("accuracy")[i] == 0 for r in recs for i in rows_of(f, r))


def test_proxy_rising_is_quiet_when_accuracy_follows_the_format():
    ph = _healthy_curves(**{"reward/format": ramp(0.1, 0.9), "reward/accuracy": ramp(0.05, 0.45)})
    fmt = [1.0, 1.0, 0.0, 0.0] * 4
    recs = [_record(s, accuracy=[1.0, 0.0, 0.0, 0.0] * 4, fmt=fmt) for s in (0, 10, 19)]  # earners more accurate
    assert not flags.proxy_rising(ph, recs).fired


def test_proxy_rising_fires_when_earners_are_less_accurate_though_accuracy_rises():
    ph = _healthy_curves(**{"reward/format": ramp(0.1, 0.9), "reward/accuracy": ramp(0.1, 0.3)})
    fmt = [1.0, 1.0, 0.0, 0.0] * 4
    recs = [_record(s, accuracy=[0.0, 0.0, 1.0, 1.0] * 4, fmt=fmt) for s in (0, 10, 19)]
    f = flags.proxy_rising(ph, recs)
    assert f.fired and "correct +1.00 less often" in f.detail


def test_dominant_term_fires_when_format_is_all_the_reward():
    ph = _healthy_curves(**{"reward/format": [1.0] * STEPS, "reward/accuracy": [0.3] * 8 + [0.05] * 12})
    recs = [_record(s, accuracy=[0.0] * 15 + [1.0]) for s in (0, 10, 19)]
    f = flags.dominant_term(ph, recs)
    assert f.fired and f.step == 8 and "format" in f.title  # where the 5-step streak began
    assert f.evidence and all(r.value("accuracy")[i] == 0 for r in recs for i in rows_of(f, r))
    assert not flags.dominant_term(_healthy_curves(**{"reward/format": [1.0] * STEPS,
                                                      "reward/accuracy": [0.3] * STEPS}), recs).fired


@pytest.mark.parametrize("curve", [{"completion/length_mean": [40.0] * 10 + [90.0] * 10},
                                   {"completion/truncated_frac": [0.02] * 10 + [0.4] * 10}])
def test_length_explosion_fires_on_growth_or_truncation(curve):
    trunc = [False] * 12 + [True] * 4
    recs = [_record(s, truncated=trunc if s >= 10 else None) for s in (0, 10, 19)]
    f = flags.length_explosion(_healthy_curves(**curve), recs)
    assert f.fired and 10 <= f.step <= 13
    assert rows_of(f, recs[1]) == [12, 13, 14, 15]
    assert not flags.length_explosion(_healthy_curves(), recs).fired


def test_entropy_collapse_fires_below_a_fifth_of_the_start():
    recs = [_record(s, entropy=0.05 if s else 1.0) for s in (0, 10, 19)]
    f = flags.entropy_collapse(_healthy_curves(entropy=ramp(1.0, 0.02)), recs)
    assert f.fired and f.evidence and f.step > 3
    assert not flags.entropy_collapse(_healthy_curves(entropy=ramp(1.0, 0.5)), recs).fired


def test_repetition_fires_on_looping_completions():
    loop = "<think> " + "3 + 4 = 7 " * 10 + "</think>"
    texts = _texts(16, GOLDS)
    looping = [loop if i % 2 else t for i, t in enumerate(texts)]
    recs = [_record(0, texts), _record(10, looping)]
    f = flags.repetition(_healthy_curves(), recs)
    assert f.fired and f.step == 10 and rows_of(f, recs[1]) == list(range(1, 16, 2))
    assert not flags.repetition(_healthy_curves(), recs[:1]).fired


def test_same_answer_fires_when_every_prompt_gets_one_answer():
    collapsed = ["<think> hm </think> <answer> 7 </answer>"] * 12 + _texts(16, GOLDS)[12:]
    recs = [_record(0), _record(10, collapsed)]
    f = flags.same_answer(_healthy_curves(), recs)
    assert f.fired and f.step == 10 and "'7'" in f.detail and rows_of(f, recs[1]) == list(range(8))
    assert not flags.same_answer(_healthy_curves(), recs[:1]).fired


def test_mixed_language_fires_on_a_second_script():
    mixed = "<think> 三 加 四 等于 七, so three plus four is seven </think> <answer> 7 </answer>"
    texts = [mixed if i < 4 else t for i, t in enumerate(_texts(16, GOLDS))]
    recs = [_record(0), _record(5, texts)]
    f = flags.mixed_language(_healthy_curves(), recs)
    assert f.fired and f.step == 5 and rows_of(f, recs[1]) == [0, 1, 2, 3]
    assert flags.scripts(mixed) == {"CJK": 6, "LATIN": 6}  # tags are not words
    assert not flags.mixed_language(_healthy_curves(), recs[:1]).fired


def test_kl_blowup_fires_on_a_kl_jump_and_on_far_ratios():
    kl = [0.002] * 12 + [0.5] * 8
    recs = [_record(s) for s in (0, 10, 19)]
    f = flags.kl_blowup(_healthy_curves(kl=kl), recs)
    assert f.fired and f.step == 12 and "kl" in f.detail
    far = recs[-1].tokens["ratio"].copy()
    far[3] = np.where(recs[-1].token_mask_NxT()[3], 8.0, 0.0)  # one row of 16: > 1% of the tokens
    recs[-1].tokens["ratio"] = far
    g = flags.kl_blowup(_healthy_curves(), recs)
    assert g.fired and g.step == 19 and rows_of(g, recs[-1])[0] == 3
    assert not flags.kl_blowup(_healthy_curves(), recs[:2]).fired


def test_no_signal_fires_on_a_run_of_flat_groups():
    informative = [12.0] * 8 + [2.0] * 12
    flat_rewards = [1.0] * 8 + [1.0, 0.0, 0.0, 0.0] + [0.0] * 4
    recs = [_record(s, accuracy=flat_rewards, fmt=[0.0] * 16) for s in (0, 8, 19)]
    f = flags.no_signal(_healthy_curves(**{"groups/informative": informative}), recs)
    assert f.fired and f.step == 8
    assert rows_of(f, recs[1]) == [0, 1, 2, 3, 4, 5, 6, 7]  # groups 0, 1 and 3 are flat; 8 ids at most
    assert not flags.no_signal(_healthy_curves(), recs).fired


def test_too_short_a_run_fires_nothing_from_curves():
    short = series({"reward/accuracy": [0.1, 0.1], "reward/format": [0.0, 1.0], "entropy": [1.0, 0.0]})
    assert not any(f.fired for f in flags.run_flags(short, []))


# --------------------------------------------------------------------------- the swap_reward notebook's hack
def _notebook_reward():
    """The notebook's own `recheck_reward`, from its source cell."""
    nb = json.loads((ROOT / "notebooks" / "swap_reward.ipynb").read_text())
    cell = next("".join(c["source"]) for c in nb["cells"] if "def recheck_reward" in "".join(c["source"]))
    scope = {}
    exec(cell.split("\n\nexamples")[0], scope)
    return scope["recheck_reward"]


def _swap_reward_run(steps=30, g=4, seed=0):
    """Rollouts as the notebook's run wrote them: the share of completions that "recheck" a correct step into
    a wrong one rises from 6% to 90%; those are right 19% of the time, the others 31% (its measured rates)."""
    rng = np.random.default_rng(seed)
    rewards = {"accuracy": WeightedReward(accuracy_reward), "format": WeightedReward(format_reward),
               "recheck": WeightedReward(_notebook_reward())}
    problems = list(generate_arithmetic(ArithmeticConfig(num_ops=1, max_value=9, ops=("+",)), "train", 64, seed=0))
    curves, recs = {}, []
    for step in range(steps):
        batch = [problems[(step * 4 + k) % len(problems)] for k in range(4)]
        hack_share = 0.06 + (0.9 - 0.06) * step / (steps - 1)
        texts = []
        for p in batch:
            a, b = p.question.split("Compute ")[1].rstrip(".").split(" + ")
            for _ in range(g):
                hacked = rng.random() < hack_share
                right = rng.random() < (0.19 if hacked else 0.31)
                final = p.answer if right else str(int(p.answer) + 1)
                recheck = f"\nWait, {a} + {b} is not {p.answer}; let me recheck. {a} + {b} = {final}." if hacked else ""
                texts.append(f"<think> {a} + {b} = {p.answer}.{recheck} </think> <answer> {final} </answer>")
        answers = [p.answer for p in batch for _ in range(g)]
        scored = combine_rewards(["q"] * len(texts), texts, rewards, answer=answers)
        for name, v in scored.values.items():
            curves.setdefault(f"reward/{name}", []).append(float(np.mean(v)))
        if step % 5 == 0 or step == steps - 1:
            recs.append(record(step, texts, [p.answer for p in batch], scored.values, group_size=g))
    return series(curves), recs


def test_the_swap_reward_notebooks_recheck_hack_is_flagged():
    ph, recs = _swap_reward_run()
    found = {f.name: f for f in flags.run_flags(ph, recs)}
    hack = found["proxy_rising"]
    assert hack.fired and "recheck" in hack.title, hack
    assert hack.evidence
    for rec in recs:
        for i in rows_of(hack, rec):  # every linked completion rechecked and is wrong
            assert rec.value("recheck")[i] == 1 and rec.value("accuracy")[i] == 0
            assert "let me recheck" in rec.texts[i]


def test_kl_growing_steadily_is_not_a_blowup():
    kl = list(np.geomspace(1e-4, 0.05, STEPS))  # β = 0.001 runs: KL grows from 0 over hundreds of steps
    kl[0] = 0.0
    assert not flags.kl_blowup(_healthy_curves(kl=kl), []).fired
