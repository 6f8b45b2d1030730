"""Language-consistency reward: share of target-language words in the chain of thought.

DeepSeek-R1 (arXiv 2501.12948, Sec. 2.3.2): reward = (target-language words in the CoT) / (words
in the CoT). Words are found by script: a run of letters is a word ("en" counts Latin-letter
runs), each Han character is a word ("zh"). Digits, punctuation, math symbols and Greek letters
are not words. A CoT with no words scores 0.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_GREEK = "\u0370-\u03ff\u1f00-\u1fff"
# Latin letters: ASCII, Latin-1 letters (skipping × and ÷), Latin Extended-A/B, Extended Additional.
_LATIN = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff"

# One Han character, or a run of letters of any other script (\w minus digits and underscore).
_WORD_RE = re.compile(rf"[{_HAN}]|[^\W\d_{_HAN}{_GREEK}]+")

# A word is in language L when it fully matches LANGUAGES[L]. Add a script here to support more.
LANGUAGES: dict[str, re.Pattern[str]] = {
    "en": re.compile(rf"[{_LATIN}]+"),
    "zh": re.compile(rf"[{_HAN}]"),
}


def language_reward(
    prompts: Sequence[str],
    completions: Sequence[str],
    language: Sequence[str] | None = None,
    **_: Any,
) -> list[float]:
    """Share of words in the CoT written in column `language` (per-row code, default "en")."""
    if language is not None and len(language) != len(completions):
        raise ValueError(f"column 'language' has {len(language)} rows but completions has {len(completions)}")
    codes = language if language is not None else ["en"] * len(completions)
    return [language_share(chain_of_thought(c), code) for c, code in zip(completions, codes)]


def chain_of_thought(completion: str) -> str:
    """The `<think>` part: up to the first `</think>` (after the `<think>` before it, if any); else all."""
    end = completion.find("</think>")
    if end < 0:
        start = completion.find("<think>")
        return completion if start < 0 else completion[start + len("<think>") :]
    start = completion.rfind("<think>", 0, end)
    return completion[(start + len("<think>")) if start >= 0 else 0 : end]


def language_share(text: str, code: str) -> float:
    """Fraction of the words in `text` that belong to language `code`; 0.0 if there are no words."""
    pattern = LANGUAGES.get(code)
    if pattern is None:
        raise ValueError(f"unknown language {code!r} in column 'language'; supported: {sorted(LANGUAGES)}")
    words = _WORD_RE.findall(text)
    if not words:
        return 0.0
    return sum(pattern.fullmatch(w) is not None for w in words) / len(words)
