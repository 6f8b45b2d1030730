"""Pulling final answers out of model text: `<answer>` tags and `\\boxed{}` (nested braces)."""
from __future__ import annotations

import re

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def last_answer_tag(text: str) -> str | None:
    """Contents of the last complete `<answer>…</answer>` span, stripped; None if absent."""
    matches = _ANSWER_RE.findall(text)
    return matches[-1].strip() if matches else None


def last_boxed(text: str) -> str | None:
    """Contents of the last `\\boxed{…}` (or `\\fbox{…}`) with balanced braces; None if absent or unbalanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    while start >= 0:
        brace = text.find("{", start)
        head = text[start:brace] if brace >= 0 else ""
        if brace >= 0 and head.rstrip() in ("\\boxed", "\\fbox"):
            depth = 0
            for i in range(brace, len(text)):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[brace + 1 : i].strip()
            # Unbalanced: fall back to an earlier, complete box.
        start = max(text.rfind("\\boxed", 0, start), text.rfind("\\fbox", 0, start))
    return None


def final_answer(text: str) -> str | None:
    """The answer a completion commits to: the last `<answer>` tag, else the last `\\boxed{}`.

    A `\\boxed{}` inside the answer tag wins over the tag's raw text.
    """
    tagged = last_answer_tag(text)
    if tagged is not None:
        boxed = last_boxed(tagged)
        return boxed if boxed is not None else tagged
    return last_boxed(text)
