"""Accuracy reward: the final answer equals the gold answer (DeepSeek-R1, arXiv 2501.12948, Sec. 2.2.2).

The answer is the last `<answer>…</answer>` (else the last `\\boxed{}`); equivalence is
exact/numeric first, then math-verify (symbolic, sets, equations such as `x = 2` vs `2`).
"""
from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from math_verify import parse, verify

from r1jax.text import final_answer

MAX_ANSWER_CHARS = 1000  # longer answers score 0 without parsing
MAX_NESTING = 8  # deeper bracket nesting scores 0: math-verify's parser slows down ~exponentially
DEFAULT_TIMEOUT_S = 5  # math-verify's own timeout; it uses signal.alarm, so main thread only

_NUMBER_RE = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)")
_FRAC_RE = re.compile(r"([-+]?)\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}")
_SLASH_RE = re.compile(r"([-+]?\d+)/(-?\d+)")
_SPACE_RE = re.compile(r"\s+|\\[,;:! ]")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\{(.*)\}", re.DOTALL)
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(,\d{3})+(\.\d*)?")


def accuracy_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    answer: Sequence[Any] | None = None,
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    **_: Any,
) -> list[float]:
    """1.0 where the completion's final answer matches column `answer`, else 0.0 (also when absent)."""
    if answer is None:
        raise ValueError("accuracy_reward needs the dataset column 'answer' (gold answer strings)")
    if len(answer) != len(completions):
        raise ValueError(f"column 'answer' has {len(answer)} rows but completions has {len(completions)}")
    return [float(is_correct(final_answer(c), str(g), timeout_s)) for c, g in zip(completions, answer)]


def is_correct(pred: str | None, gold: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> bool:
    """Whether `pred` is equivalent to `gold`; False for a missing, huge or over-nested answer.

    math-verify times out with signal.alarm, which only works in a process's main thread; off
    the main thread it runs without a timeout (run rewards in a `RewardPool` to bound them).
    """
    if not pred or not _within_limits(pred) or not _within_limits(gold):
        return False
    p, g = normalize_answer(pred), normalize_answer(gold)
    if p is None or g is None:
        return False
    if p == g:
        return True
    p_num, g_num = as_fraction(p), as_fraction(g)
    if p_num is not None and g_num is not None:
        if p_num == g_num:
            return True
        if p_num.denominator == 1 and g_num.denominator == 1:
            return False  # distinct integers: no need for sympy
    on_main_thread = threading.current_thread() is threading.main_thread()
    seconds = math.ceil(timeout_s) if on_main_thread and timeout_s else None  # signal.alarm takes ints
    return _math_verify(pred, gold, seconds)


def _within_limits(text: str) -> bool:
    if len(text) > MAX_ANSWER_CHARS:
        return False
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest <= MAX_NESTING


def normalize_answer(answer: str | None) -> str | None:
    """Canonical voting key: no `$`/`\\boxed{}` wrapping, spaces or thousands commas; numbers as exact fractions.

    "3.0" → "3", "0.5" / "1/2" / "\\frac{1}{2}" → "1/2"; None for a missing or blank answer.
    """
    if answer is None:
        return None
    text, previous = answer.replace("\u2212", "-"), None
    while text != previous:  # peel `$…$` and `\boxed{…}` in any order and depth
        previous = text = text.strip().strip("$").strip()
        if (m := _BOXED_RE.fullmatch(text)) and _balanced(m[1]):
            text = m[1]
    text = _SPACE_RE.sub("", text).rstrip(".")
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    value = as_fraction(text)
    return str(value) if value is not None else (text or None)


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            return False
    return depth == 0


def as_fraction(text: str) -> Fraction | None:
    """Exact value of an integer, decimal, `a/b` or `\\frac{a}{b}`; None otherwise."""
    text = text.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d*)?", text) else text
    try:
        if _NUMBER_RE.fullmatch(text):
            return Fraction(text)
        if m := _SLASH_RE.fullmatch(text):
            return Fraction(int(m[1]), int(m[2]))
        if m := _FRAC_RE.fullmatch(text):
            return Fraction(int(m[2]), int(m[3])) * (-1 if m[1] == "-" else 1)
    except ZeroDivisionError:
        return None
    return None


def _math_verify(pred: str, gold: str, timeout_s: int | None) -> bool:
    gold_parsed = _parse(gold, timeout_s)
    pred_parsed = _parse(pred, timeout_s)
    if not gold_parsed or not pred_parsed:
        return False
    try:
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s))
    except Exception:  # noqa: BLE001 - a sympy failure is a wrong answer, not a crash
        return False


def _parse(text: str, timeout_s: int | None) -> list:
    """math-verify needs `$…$` to read LaTeX such as sets `\\{1,2\\}`; plain text is the fallback."""
    wrapped = text if "$" in text or text.startswith(("\\(", "\\[")) else f"${text}$"
    try:
        return parse(wrapped, parsing_timeout=timeout_s) or parse(text, parsing_timeout=timeout_s)
    except Exception:  # noqa: BLE001
        return []
