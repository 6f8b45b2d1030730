"""Reward-hacking and instability flags: pure functions of one RL phase's metrics and saved rollouts.

Each detector returns a `Flag`: whether it fired, the global step where it first did, and the ids
(`"STEP:ROW"`, a saved rollout's row) of completions that show it. Curves are compared through
windows of w = max(3, n // 5) logged steps: "early" is the mean of the first w, "now" the trailing
mean of the last w up to a step. Thresholds are keyword arguments with the defaults below.
"""
from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from r1jax.report.rollouts import RolloutRecord
from r1jax.report.run import PhaseSeries
from r1jax.text import final_answer

MAX_EVIDENCE = 8
_TAG = re.compile(r"</?\w+>")


@dataclasses.dataclass(frozen=True)
class Flag:
    """One detector's verdict on a phase."""

    name: str
    title: str
    fired: bool
    step: int | None = None
    evidence: tuple[str, ...] = ()
    detail: str = ""


def rollout_id(rec: RolloutRecord, row: int) -> str:
    return f"{rec.step}:{row}"


def _window(n: int) -> int:
    return max(3, n // 5)


def _trailing(values: np.ndarray, w: int) -> np.ndarray:
    """Mean of the last w values up to each index (fewer at the start)."""
    c = np.cumsum(np.concatenate([[0.0], values]))
    i = np.arange(1, len(values) + 1)
    return (c[i] - c[np.maximum(i - w, 0)]) / np.minimum(i, w)


def _early_and_now(series: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, float, np.ndarray] | None:
    """(steps, early mean, trailing means) of a curve with at least 2·w points, else None."""
    if series is None:
        return None
    steps, values = series
    w = _window(len(values))
    if len(values) < 2 * w:
        return None
    return steps, float(values[:w].mean()), _trailing(values, w)


def _first(steps: np.ndarray, cond: np.ndarray) -> int | None:
    hit = np.flatnonzero(cond)
    return int(steps[hit[0]]) if len(hit) else None


def _streak_start(steps: np.ndarray, cond: np.ndarray, streak: int) -> int | None:
    """The step where `cond` first starts holding for `streak` logged steps running."""
    run = np.convolve(cond.astype(int), np.ones(streak, int), "full")[:len(cond)]
    done = np.flatnonzero(run >= streak)
    return int(steps[done[0] - streak + 1]) if len(done) else None


def _evidence(rollouts: Sequence[RolloutRecord], step: int | None,
              rows: Callable[[RolloutRecord], np.ndarray]) -> tuple[str, ...]:
    """Ids of rows that `rows(rec)` picks, from the saved steps at or after `step` (else the last before)."""
    if step is None or not rollouts:
        return ()
    after = [r for r in rollouts if r.step >= step]
    before = [r for r in rollouts if r.step < step][-1:]
    out: list[str] = []
    for rec in after + before:
        out += [rollout_id(rec, int(i)) for i in rows(rec)][:MAX_EVIDENCE - len(out)]
        if len(out) >= MAX_EVIDENCE:
            break
    return tuple(out)


def _rows_where(rec: RolloutRecord, earned: dict[str, bool]) -> np.ndarray:
    """Rows where each named reward is > 0 (True) or <= 0 (False); names the record lacks are skipped."""
    keep = np.ones(rec.rows, bool)
    for name, positive in earned.items():
        v = rec.value(name)
        if v is not None:
            keep &= (v > 0) == positive
    return np.flatnonzero(keep)


def _verdict(name: str, title: str, step: int | None, evidence: tuple[str, ...], detail: str) -> Flag:
    return Flag(name, title, step is not None, step, evidence if step is not None else (), detail)


def proxy_rising(ph: PhaseSeries, rollouts: Sequence[RolloutRecord], accuracy: str = "accuracy",
                 rise: float = 0.2, flat: float = 0.02, gap: float = 0.05, min_rows: int = 8) -> Flag:
    """A reward term other than accuracy (format, a "recheck" bonus) rises by >= `rise` while accuracy
    is flat or falling (rises by <= `flat`), or while the rows that earn it are less accurate than those
    that do not by >= `gap` (saved rollouts, >= `min_rows` rows on each side)."""
    title = "reward term rising while accuracy is flat or falling"
    acc = _early_and_now(ph.get(f"reward/{accuracy}"))
    if acc is None:
        return _verdict("proxy_rising", title, None, (), f"no reward/{accuracy} curve of enough steps")
    acc_steps, acc_early, acc_now = acc
    for term in ph.reward_terms():
        curve = _early_and_now(ph.get(f"reward/{term}")) if term != accuracy else None
        if curve is None:
            continue
        steps, early, now = curve
        k = _first(steps, now - early >= rise)
        if k is None:
            continue
        acc_delta = float(np.interp(k, acc_steps, acc_now)) - acc_early
        earners_gap = _accuracy_gap(rollouts, term, accuracy, min_rows)
        if acc_delta <= flat or (earners_gap is not None and earners_gap >= gap):
            detail = (f"{term} {early:.2f} → {float(np.interp(k, steps, now)):.2f} by step {k} while accuracy "
                      f"went {acc_early:.2f} → {acc_early + acc_delta:.2f}")
            if earners_gap is not None:
                detail += f"; saved rows that earn {term} are correct {earners_gap:+.2f} less often"
            ev = _evidence(rollouts, k, lambda r: _rows_where(r, {term: True, accuracy: False}))
            return _verdict("proxy_rising", f"{term} rising while accuracy is not", k, ev, detail)
    return _verdict("proxy_rising", title, None, (), "no term rose while accuracy stayed flat")


def _accuracy_gap(rollouts: Sequence[RolloutRecord], term: str, accuracy: str, min_rows: int) -> float | None:
    """accuracy(rows with term == 0) − accuracy(rows with term > 0) over every saved row."""
    pairs = [(r.value(term), r.value(accuracy)) for r in rollouts]
    pairs = [(t, a) for t, a in pairs if t is not None and a is not None]
    if not pairs:
        return None
    t, a = (np.concatenate(x) for x in zip(*pairs))
    if (t > 0).sum() < min_rows or (t <= 0).sum() < min_rows:
        return None
    return float((a[t <= 0] > 0).mean() - (a[t > 0] > 0).mean())


def dominant_term(ph: PhaseSeries, rollouts: Sequence[RolloutRecord], share: float = 0.85,
                  streak: int = 5) -> Flag:
    """One reward term is >= `share` of Σ|weight · mean| over the terms, `streak` logged steps running
    (weights from the saved rollouts, else 1)."""
    title = "one reward term dominates the total"
    weights = dict(zip(rollouts[0].reward_names, rollouts[0].weights_K.tolist())) if rollouts else {}
    terms = [t for t in ph.reward_terms() if ph.get(f"reward/{t}") is not None]
    if len(terms) < 2:
        return _verdict("dominant_term", title, None, (), "fewer than two reward terms")
    steps = ph.get(f"reward/{terms[0]}")[0]
    parts = np.stack([np.abs(weights.get(t, 1.0) * np.interp(steps, *ph.get(f"reward/{t}"))) for t in terms])
    shares = parts / np.maximum(parts.sum(axis=0), 1e-12)
    for i, term in enumerate(terms):
        k = _streak_start(steps, (shares[i] >= share) & (parts.sum(axis=0) > 0), streak)
        if k is not None:
            alone = {t: t == term for t in terms}
            ev = _evidence(rollouts, k, lambda r: _rows_where(r, alone))
            return _verdict("dominant_term", f"{term} dominates the total reward", k, ev,
                            f"{term} is ≥ {share:.0%} of the weighted reward for {streak} steps from step {k}")
    return _verdict("dominant_term", title, None, (), f"no term reached {share:.0%} for {streak} steps")


def length_explosion(ph: PhaseSeries, rollouts: Sequence[RolloutRecord], growth: float = 1.5,
                     truncated: float = 0.2, truncated_rise: float = 0.15) -> Flag:
    """Mean completion length grows to >= `growth` × its early mean, or the truncated share reaches
    >= max(`truncated`, early share + `truncated_rise`)."""
    title = "length exploding or truncation surging"
    length = _early_and_now(ph.get("completion/length_mean"))
    trunc = _early_and_now(ph.get("completion/truncated_frac"))
    hits = []
    if length is not None:
        steps, early, now = length
        hits.append((_first(steps, now >= growth * max(early, 1.0)), f"length {early:.1f} → ≥ {growth}×"))
    if trunc is not None:
        steps, early, now = trunc
        hits.append((_first(steps, now >= max(truncated, early + truncated_rise)),
                     f"truncated share {early:.2f} → ≥ {max(truncated, early + truncated_rise):.2f}"))
    hits = [(k, why) for k, why in hits if k is not None]
    if not hits:
        return _verdict("length_explosion", title, None, (), "length and truncation stayed near their start")
    k, why = min(hits)
    ev = _evidence(rollouts, k, lambda r: np.flatnonzero(r.truncated_N) if r.truncated_N.any()
                   else np.argsort(-r.lengths_N)[:3])
    return _verdict("length_explosion", title, k, ev, f"{why} at step {k}")


def entropy_collapse(ph: PhaseSeries, rollouts: Sequence[RolloutRecord], drop: float = 0.2,
                     floor: float = 0.0) -> Flag:
    """Token entropy (trailing mean) falls to <= `drop` × its early mean; `floor` > 0 also fires below that
    many nats (off by default: a policy can start low, as the tiny base does at 0.05 nats)."""
    title = "entropy collapse"
    curve = _early_and_now(ph.get("entropy"))
    if curve is None:
        return _verdict("entropy_collapse", title, None, (), "no entropy curve of enough steps")
    steps, early, now = curve
    k = _first(steps, (now <= drop * early) | (now < floor))
    ev = _evidence(rollouts, k, lambda r: np.argsort(_row_mean(r, "entropy"))[:3])
    detail = f"entropy {early:.3f} → {float(now[-1]):.3f} nats per token"
    return _verdict("entropy_collapse", title, k, ev, detail + (f"; below the line at step {k}" if k else ""))


def _row_mean(rec: RolloutRecord, field: str) -> np.ndarray:
    mask = rec.token_mask_NxT()
    return (rec.tokens[field] * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)


def repeated_ngrams(rec: RolloutRecord, n: int = 4) -> np.ndarray:
    """Per row: share of its token n-grams that repeat an earlier one (0 with fewer than 2n tokens)."""
    out = np.zeros(rec.rows)
    for i in range(rec.rows):
        ids = rec.tokens_NxT[i, :rec.lengths_N[i]].tolist()
        grams = [tuple(ids[j:j + n]) for j in range(len(ids) - n + 1)]
        if len(ids) >= 2 * n:
            out[i] = 1.0 - len(set(grams)) / len(grams)
    return out


def repetition(ph: PhaseSeries, rollouts: Sequence[RolloutRecord], n: int = 4, row_share: float = 0.5,
               rows: float = 0.25) -> Flag:
    """>= `rows` of a saved step's completions repeat >= `row_share` of their token `n`-grams."""
    title = "repeated n-grams"
    for rec in rollouts:
        rep = repeated_ngrams(rec, n) >= row_share
        if rep.mean() >= rows:
            return _verdict("repetition", title, rec.step, _evidence([rec], rec.step, lambda r: np.flatnonzero(rep)),
                            f"{rep.mean():.0%} of completions repeat ≥ {row_share:.0%} of their {n}-grams")
    return _verdict("repetition", title, None, (), "no saved step had repetitive completions")


def same_answer(ph: PhaseSeries, rollouts: Sequence[RolloutRecord], share: float = 0.5,
                min_golds: int = 3) -> Flag:
    """One final answer is >= `share` of a saved step's answered rows, across prompts with >= `min_golds`
    different gold answers."""
    title = "one answer for every prompt"
    for rec in rollouts:
        answers = [final_answer(t) for t in rec.texts]
        answers = [a.strip() if a else None for a in answers]
        counts = Counter(a for a in answers if a)
        golds = {rec.answers[i // rec.group_size] for i, a in enumerate(answers) if a}
        if not counts or len(golds) < min_golds:
            continue
        top, count = counts.most_common(1)[0]
        if count / sum(counts.values()) >= share:
            ev = _evidence([rec], rec.step, lambda r: np.flatnonzero([a == top for a in answers]))
            return _verdict("same_answer", title, rec.step, ev,
                            f"answer {top!r} in {count} of {sum(counts.values())} answered rows ({len(golds)} golds)")
    return _verdict("same_answer", title, None, (), "answers follow the prompts")


def scripts(text: str) -> Counter:
    """Words per script (LATIN, CJK, CYRILLIC, …) outside tags such as <think>: a Han character is a word,
    other words are letter runs."""
    counts: Counter = Counter()
    last = None
    for ch in _TAG.sub(" ", text):
        script = unicodedata.name(ch, "?").split(" ")[0] if ch.isalpha() else None
        if script is not None and (script != last or script == "CJK"):
            counts[script] += 1
        last = script
    return counts


def mixed_language(ph: PhaseSeries, rollouts: Sequence[RolloutRecord], minority: float = 0.1,
                   rows: float = 0.1) -> Flag:
    """>= `rows` of a saved step's completions have a second script with >= `minority` of their words
    (and at least 2)."""
    title = "mixed languages"
    for rec in rollouts:
        mixed = np.zeros(rec.rows, bool)
        for i, text in enumerate(rec.texts):
            common = scripts(text).most_common(2)
            if len(common) == 2:
                mixed[i] = common[1][1] >= max(2, minority * sum(scripts(text).values()))
        if mixed.mean() >= rows:
            ev = _evidence([rec], rec.step, lambda r: np.flatnonzero(mixed))
            return _verdict("mixed_language", title, rec.step, ev, f"{mixed.mean():.0%} of completions mix scripts")
    return _verdict("mixed_language", title, None, (), "one script per completion")


def kl_blowup(ph: PhaseSeries, rollouts: Sequence[RolloutRecord], kl_max: float = 1.0, jump: float = 10.0,
              kl_floor: float = 0.01, clip_max: float = 0.3, ratio_far: float = 3.0, far_tokens: float = 0.01) -> Flag:
    """`kl` or the sampler–trainer `rollout/kl_k3` above `kl_max`, or above `jump` × the median of the 5
    steps before (at least 3) and `kl_floor`; clipped token share above `clip_max`; or in a saved step
    >= `far_tokens` of the tokens with a ratio outside [1/`ratio_far`, `ratio_far`]."""
    title = "KL or ratio blow-up"
    hits = []
    for key in ("kl", "rollout/kl_k3"):
        if ph.get(key) is None:
            continue
        steps, values = ph.get(key)
        median = np.array([np.median(values[max(0, i - 5):i]) if i >= 3 else np.inf for i in range(len(values))])
        bad = (values > kl_max) | ((values > jump * median) & (values > kl_floor))
        if (k := _first(steps, bad)) is not None:
            hits.append((k, f"{key} {float(values[steps == k][0]):.3g} at step {k}"))
    clips = [ph.get(k) for k in ("clip_low_frac", "clip_high_frac", "clip_dual_frac") if ph.get(k) is not None]
    if clips:
        steps = clips[0][0]
        total = sum(np.interp(steps, *c) for c in clips)
        if (k := _first(steps, total > clip_max)) is not None:
            hits.append((k, f"clipped tokens {float(total[steps == k][0]):.2f} at step {k}"))
    for rec in rollouts:
        mask, ratio = rec.token_mask_NxT(), rec.tokens["ratio"]
        far = mask & ((ratio > ratio_far) | (ratio < 1.0 / ratio_far))
        if far.sum() >= far_tokens * max(mask.sum(), 1):
            hits.append((rec.step, f"{far.sum() / max(mask.sum(), 1):.1%} of tokens with ratio beyond ×{ratio_far}"))
            break
    if not hits:
        return _verdict("kl_blowup", title, None, (), "KL, clipping and ratios stayed in range")
    k, why = min(hits)

    def worst(r: RolloutRecord) -> np.ndarray:
        far = np.abs(np.log(np.maximum(r.tokens["ratio"], 1e-6))) * r.token_mask_NxT()
        return np.argsort(-far.max(axis=1))[:4]
    return _verdict("kl_blowup", title, k, _evidence(rollouts, k, worst), why)


def no_signal(ph: PhaseSeries, rollouts: Sequence[RolloutRecord], share: float = 0.5, streak: int = 3) -> Flag:
    """>= `share` of the sampled groups have zero reward spread (no advantage: nothing to learn from),
    `streak` logged steps running (`groups/informative` over `groups/sampled`)."""
    title = "groups with zero reward spread"
    informative, sampled = ph.get("groups/informative"), ph.get("groups/sampled")
    if informative is None or sampled is None:
        return _verdict("no_signal", title, None, (), "no groups/informative curve")
    steps = informative[0]
    flat = 1.0 - informative[1] / np.maximum(np.interp(steps, *sampled), 1.0)
    k = _streak_start(steps, flat >= share, streak)

    def flat_rows(r: RolloutRecord) -> np.ndarray:
        spread = np.ptp(r.rewards_N.reshape(-1, r.group_size), axis=1)
        return np.flatnonzero(np.repeat(spread == 0, r.group_size))
    return _verdict("no_signal", title, k, _evidence(rollouts, k, flat_rows),
                    f"{flat.max():.0%} of groups flat at worst" + (f"; ≥ {share:.0%} from step {k}" if k else ""))


DETECTORS: tuple[Callable[[PhaseSeries, Sequence[RolloutRecord]], Flag], ...] = (
    proxy_rising, dominant_term, length_explosion, entropy_collapse, repetition, same_answer, mixed_language,
    kl_blowup, no_signal)


def run_flags(ph: PhaseSeries, rollouts: Sequence[RolloutRecord]) -> list[Flag]:
    """Every detector on one phase (its metrics and its saved rollouts, ascending by step)."""
    return [detect(ph, list(rollouts)) for detect in DETECTORS]
