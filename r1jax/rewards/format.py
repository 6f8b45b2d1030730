"""Format reward: `<think> … </think> <answer> … </answer>` (DeepSeek-R1, arXiv 2501.12948, Table 1, Sec. 2.2.2).

Plain string scans (str.count / str.find), linear in the completion: no backtracking regex.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def format_reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """1.0 for exactly `<think>…</think> <answer>…</answer>` with only whitespace around, else 0.0.

    A prompt ending in `<think>` (the template prefilled the tag) means the completion starts
    inside the think block. The answer must be non-blank; the think block may be empty.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"prompts has {len(prompts)} rows but completions has {len(completions)}")
    return [float(is_well_formed(c, prefilled=p.rstrip().endswith(THINK_OPEN))) for p, c in zip(prompts, completions)]


def is_well_formed(completion: str, prefilled: bool = False) -> bool:
    """Whether the text is one think block then one non-blank answer block, nothing else but whitespace."""
    text = THINK_OPEN + completion if prefilled else completion
    if any(text.count(tag) != 1 for tag in _TAGS):
        return False
    think_open, think_close = text.find(THINK_OPEN), text.find(THINK_CLOSE)
    answer_open, answer_close = text.find(ANSWER_OPEN), text.find(ANSWER_CLOSE)
    if not think_open < think_close < answer_open < answer_close:
        return False
    gaps = (
        text[:think_open],
        text[think_close + len(THINK_CLOSE) : answer_open],
        text[answer_close + len(ANSWER_CLOSE) :],
    )
    answer = text[answer_open + len(ANSWER_OPEN) : answer_close]
    return all(not gap.strip() for gap in gaps) and bool(answer.strip())
